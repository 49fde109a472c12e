"""The container boundary: how vcheck, root on the host, reads a container's files and runs code
inside it without the container being able to reach back.

- A read resolves every component of the path inside the container's root (``openat2`` with
  ``RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS``), so a planted ``/etc/x -> /etc/shadow`` names the
  container's file, never the host's. The file is opened ``O_PATH`` first and taken only when it
  is a regular file (a FIFO, a socket or a device is refused before anything opens it for
  reading: no hang, no side effect of opening a device), and the read stops at the cap.
- A command or a callable runs in a process tree that holds only the descriptors it needs
  (everything else is closed after the fork), sits in the container's cgroups (so the
  container's limits and accounting apply, not vcheck's), and is the init of a fresh PID
  namespace nested in the container's: when that init ends, for whatever reason, the kernel
  kills and reaps everything it started (a forked daemon, a ``sleep`` left by a shell). Every
  level dies with its parent (``PR_SET_PDEATHSIG``), so nothing outlives vcheck either.
  Output is read as it comes and cut at the cap.

The process tree::

    vcheck ── joiner (host PID ns: joins cgroups and namespaces)
                └─ supervisor (the container's PID ns: unshares a new one, keeps the deadline)
                     └─ init (PID 1 of the nested namespace: runs the callable, or forks and
                          └─ command   execs the command and reaps until it ends)
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .files import read_up_to, wait_ready
from .procfs import HostRoots, read_text

NAMESPACES = ("cgroup", "ipc", "uts", "net", "mnt", "pid")   # joined in this order: pid applies to children
_CLONE_NEW = {"mnt": 0x00020000, "uts": 0x04000000, "ipc": 0x08000000, "net": 0x40000000,
              "pid": 0x20000000, "cgroup": 0x02000000}
_CLONE_FS = 0x00000200
_PR_SET_PDEATHSIG = 1
_PR_SET_NO_NEW_PRIVS = 38
_SYS_OPENAT2 = 437                     # x86_64 and aarch64 share the number
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_NOBODY = 65534
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE = 3.0                       # past the deadline, how long the tree has to be gone


class BoundaryError(OSError):
    """A container file or command vcheck refuses or could not reach; str() says which and why."""


class ContainerCallError(RuntimeError):
    """A command or callable run inside a container could not start, failed, timed out, or
    returned what is not JSON."""


# --- reading a file as the container sees it ---------------------------------------------


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _openat2(libc: ctypes.CDLL, dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    fd = libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            raise BoundaryError(err, "this kernel has no openat2 (5.6+): vcheck will not read container "
                                     "files through paths the container controls")
        raise BoundaryError(err, f"{path}: {os.strerror(err)}")
    return fd


def read_in_root(roots: HostRoots, pid: int, path: str, limit: int) -> tuple[bytes, bool]:
    """The first `limit` bytes of `path` as process `pid` sees it, and whether there was more.
    Every symlink, absolute or relative, resolves inside that process's root."""
    libc = ctypes.CDLL(None, use_errno=True)
    root = os.open(roots.proc / str(pid) / "root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        handle = _openat2(libc, root, path, os.O_PATH | os.O_CLOEXEC, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    finally:
        os.close(root)
    try:
        st = os.fstat(handle)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else \
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
            raise BoundaryError(errno.EINVAL, f"{path}: {kind} in the container; only regular files are read")
        # reopen our own O_PATH handle for reading: the same inode, never a new path walk
        fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(handle)
    try:
        data = read_up_to(fd, limit)
    finally:
        os.close(fd)
    return data[:limit], len(data) > limit


# --- running code in the container ---------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How a contained run ended, as the parent saw it."""

    stdout: bytes
    stderr: bytes
    returncode: int | None      # None: killed (timeout, cap) or never started
    timed_out: bool = False
    truncated: bool = False
    error: str | None = None     # set-up failed (namespace gone, cgroup refused, exec failed)


def cgroup_procs_files(roots: HostRoots, pid: int) -> list[Path]:
    """The cgroup.procs file of every cgroup `pid` is in: one on v2, one per mounted v1 hierarchy."""
    found: dict[str, Path] = {}
    for line in read_text(roots.proc / str(pid) / "cgroup").splitlines():
        hid, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if hid == "0" and controllers == "":
            candidates = [roots.cgroup, roots.cgroup / "unified"]
        else:
            names = [controllers, *controllers.split(",")]
            candidates = [roots.cgroup / n.removeprefix("name=") for n in names if n]
        for base in candidates:
            procs = base / rel / "cgroup.procs"
            if procs.is_file():
                found.setdefault(os.path.realpath(procs), procs)
                break
    if not found:
        raise BoundaryError(errno.ENOENT, f"no cgroup of pid {pid} found under {roots.cgroup}")
    return list(found.values())


def _close_all_but(keep: Sequence[int]) -> None:
    low = 3
    for fd in sorted(set(k for k in keep if k >= 3)):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def _self_pidfd() -> int:
    """A pidfd of this process, taken before a fork so the child can tell whether it still lives
    (getppid() cannot: it reads 0 across PID namespaces whether or not the parent is there)."""
    fd = os.pidfd_open(os.getpid())
    os.set_inheritable(fd, False)
    return fd


def _die_with_parent(libc: ctypes.CDLL, parent_pidfd: int) -> None:
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    ended = wait_ready([parent_pidfd], 0)
    os.close(parent_pidfd)
    if ended:                            # the parent died before the line above
        os._exit(125)


def _drop_privileges(libc: ctypes.CDLL) -> None:
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    os.setgroups([])
    os.setgid(_NOBODY)
    os.setuid(_NOBODY)


def _say(ctl: int, what: str, text: str = "") -> None:
    try:
        os.write(ctl, (json.dumps({what: text}) + "\n").encode())
    except OSError:
        pass


def _on_sigterm_signal(child: int, sig: int) -> None:
    """SIGTERM to this level sends `sig` to the level below (each level reaps its own child)."""
    def handler(signum: int, frame: object) -> None:
        try:
            os.kill(child, sig)
        except OSError:
            pass
    signal.signal(signal.SIGTERM, handler)


def _wait_for(child: int) -> int:
    while True:
        try:
            return os.waitpid(child, 0)[1]
        except InterruptedError:
            continue


def run_contained(roots: HostRoots, pid: int, init: Callable[[int, int, int], int], *, timeout: float,
                  max_output: int) -> Outcome:
    """Run `init(stdout_fd, stderr_fd, ctl_fd)` as PID 1 of a PID namespace nested in pid's, inside
    its cgroups and namespaces; its return value is its exit status. Reads both outputs as they
    come; past `timeout` or `max_output` bytes the whole tree is killed and reaped."""
    libc = ctypes.CDLL(None, use_errno=True)       # resolved before the fork (dlopen in a child can deadlock)
    procs = cgroup_procs_files(roots, pid)
    ns_paths = {ns: str(roots.proc / str(pid) / "ns" / ns) for ns in NAMESPACES}
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
    parent = _self_pidfd()
    joiner = os.fork()
    if joiner == 0:                                   # pragma: no cover - runs in the child
        _joiner(libc, parent, procs, ns_paths, init, timeout, devnull, out_w, err_w, ctl_w)
    for fd in (out_w, err_w, ctl_w, devnull, parent):
        os.close(fd)
    return _collect(joiner, out_r, err_r, ctl_r, timeout, max_output)


def _joiner(libc: ctypes.CDLL, parent: int, procs: list[Path], ns_paths: dict[str, str],
            init: Callable[[int, int, int], int], timeout: float, devnull: int, out_w: int, err_w: int,
            ctl_w: int) -> None:                     # pragma: no cover - runs in the child
    status = 126
    try:
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with_parent(libc, parent)
        _close_all_but((devnull, out_w, err_w, ctl_w))
        for std in (0, 1, 2):                        # vcheck's terminal and report streams stay vcheck's
            os.dup2(devnull, std)
        os.close(devnull)
        for p in procs:                               # into the container's cgroups before anything else
            fd = os.open(p, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.write(fd, b"0\n")
            finally:
                os.close(fd)
        if libc.unshare(_CLONE_FS) != 0:            # a private fs_struct: setns(mnt) requires it
            raise OSError(ctypes.get_errno(), "unshare(CLONE_FS)")
        fds = {ns: os.open(ns_paths[ns], os.O_RDONLY | os.O_CLOEXEC) for ns in NAMESPACES}
        for ns in NAMESPACES:
            if libc.setns(fds[ns], _CLONE_NEW[ns]) != 0:
                raise OSError(ctypes.get_errno(), f"setns({ns}): {os.strerror(ctypes.get_errno())}")
            os.close(fds[ns])
        os.chdir("/")
        me = _self_pidfd()
        supervisor = os.fork()
        if supervisor == 0:
            _supervisor(libc, me, init, timeout, out_w, err_w, ctl_w)
        for fd in (out_w, err_w, me):
            os.close(fd)
        _on_sigterm_signal(supervisor, signal.SIGTERM)
        status = os.waitstatus_to_exitcode(_wait_for(supervisor))
        status = status if status >= 0 else 128 - status
    except BaseException as exc:
        _say(ctl_w, "error", f"cannot enter the container: {exc}")
    os._exit(status)


def _supervisor(libc: ctypes.CDLL, parent: int, init: Callable[[int, int, int], int], timeout: float,
                out_w: int, err_w: int, ctl_w: int) -> None:   # pragma: no cover - runs in the child
    """In the container's PID namespace: a nested one whose init takes everything with it."""
    status = 126
    try:
        _die_with_parent(libc, parent)
        deadline = time.monotonic() + timeout
        if libc.unshare(_CLONE_NEW["pid"]) != 0:
            raise OSError(ctypes.get_errno(), f"unshare(CLONE_NEWPID): {os.strerror(ctypes.get_errno())}")
        me = _self_pidfd()
        first = os.fork()
        if first == 0:
            code = 126
            try:
                _die_with_parent(libc, me)
                code = init(out_w, err_w, ctl_w)
            except BaseException as exc:
                _say(ctl_w, "error", f"{type(exc).__name__}: {exc}")
            os._exit(code)
        for fd in (out_w, err_w, me):
            os.close(fd)
        _on_sigterm_signal(first, signal.SIGKILL)
        pidfd = os.pidfd_open(first)
        while True:
            left = deadline - time.monotonic()
            try:
                ready = wait_ready([pidfd], max(left, 0))
            except InterruptedError:
                continue
            if ready:
                break
            if left <= 0:
                os.kill(first, signal.SIGKILL)        # init gone: the kernel kills and reaps the rest
                _wait_for(first)
                _say(ctl_w, "timeout")
                os._exit(124)
        code = os.waitstatus_to_exitcode(_wait_for(first))
        _say(ctl_w, "exit", str(code))
        status = 0
    except BaseException as exc:
        _say(ctl_w, "error", f"cannot start inside the container: {exc}")
    os._exit(status)


def _collect(joiner: int, out_r: int, err_r: int, ctl_r: int, timeout: float, max_output: int) -> Outcome:
    """The parent's half: read as output comes, stop at the cap, kill past the deadline."""
    deadline = time.monotonic() + timeout + KILL_GRACE
    bufs: dict[int, list[bytes]] = {out_r: [], err_r: [], ctl_r: []}
    size = 0
    open_fds = [out_r, err_r, ctl_r]
    truncated = killed = False
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                killed = True
                break
            ready = wait_ready(open_fds, left)
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    open_fds.remove(fd)
                    continue
                if fd == ctl_r:
                    if sum(map(len, bufs[ctl_r])) < 1 << 16:
                        bufs[ctl_r].append(chunk)
                    continue
                room = max_output - size
                bufs[fd].append(chunk[:room])
                size += min(len(chunk), room)
                if len(chunk) > room:
                    truncated = True
            if truncated:
                break
    finally:
        if open_fds:                 # cut short (cap, deadline, or vcheck itself interrupted)
            _end(joiner)
        else:
            _wait_for(joiner)
        for fd in (out_r, err_r, ctl_r):
            os.close(fd)
    status: dict[str, str] = {}
    for line in b"".join(bufs[ctl_r]).decode("utf-8", "replace").splitlines():
        try:
            said = json.loads(line)
        except ValueError:
            continue
        if isinstance(said, dict):
            status.update({k: str(v) for k, v in said.items()})
    code = int(status["exit"]) if "exit" in status and not truncated else None
    return Outcome(b"".join(bufs[out_r]), b"".join(bufs[err_r]), code,
                   timed_out=killed or "timeout" in status, truncated=truncated, error=status.get("error"))


def _end(joiner: int) -> None:
    """Kill the tree from the top: the joiner kills the supervisor, whose init's end takes the
    rest; past a grace period the joiner is killed and the death signals do the same."""
    try:
        os.kill(joiner, signal.SIGTERM)
    except OSError:
        return
    end = time.monotonic() + KILL_GRACE
    while time.monotonic() < end:
        try:
            done, _ = os.waitpid(joiner, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)
    os.kill(joiner, signal.SIGKILL)
    _wait_for(joiner)


# --- what runs as init ---------------------------------------------------------------------


def exec_init(argv: Sequence[str], privileged: bool, libc: ctypes.CDLL | None = None) -> Callable[[int, int, int], int]:
    """An init that runs argv (no shell) with stdout/stderr on the pipes and reaps until it ends;
    unprivileged (nobody, no new privileges) unless the check opted in."""
    lib = libc or ctypes.CDLL(None, use_errno=True)
    args = [str(a) for a in argv]

    def init(out_w: int, err_w: int, ctl_w: int) -> int:    # pragma: no cover - runs in the child
        me = _self_pidfd()
        command = os.fork()
        if command == 0:
            try:
                _die_with_parent(lib, me)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                _close_all_but((ctl_w,))
                if not privileged:
                    _drop_privileges(lib)
                os.execvpe(args[0], args, {"PATH": SAFE_PATH})
            except BaseException as exc:
                _say(ctl_w, "error", f"cannot run {args[0]}: {exc.strerror if isinstance(exc, OSError) else exc}")
            os._exit(127)
        for fd in (out_w, err_w, me):
            os.close(fd)
        while True:                          # PID 1 reaps whatever ends until the command does
            try:
                done, st = os.waitpid(-1, 0)
            except ChildProcessError:
                return 127
            except InterruptedError:
                continue
            if done == command:
                code = os.waitstatus_to_exitcode(st)
                return code if code >= 0 else 128 - code
    return init


def call_init(fn: Callable[..., Any], args: tuple, privileged: bool,
              libc: ctypes.CDLL | None = None) -> Callable[[int, int, int], int]:
    """An init that runs fn(*args) and writes {"ok": result} or {"error": text} as strict JSON."""
    lib = libc or ctypes.CDLL(None, use_errno=True)

    def init(out_w: int, err_w: int, ctl_w: int) -> int:    # pragma: no cover - runs in the child
        os.close(err_w)
        if not privileged:
            _drop_privileges(lib)
        try:
            data = json.dumps({"ok": fn(*args)}, allow_nan=False).encode()
        except ValueError as exc:
            if "Out of range float" in str(exc):
                msg = "the callable's result holds NaN or Infinity, which are not JSON data"
            else:
                msg = f"the callable's result is not JSON data: {exc}"
            data = json.dumps({"error": msg}).encode()
        except TypeError as exc:
            data = json.dumps({"error": f"the callable's result is not JSON data: {exc}"}).encode()
        except BaseException as exc:
            data = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(out_w, view):]
        return 0
    return init


def parse_call_result(out: Outcome, timeout: float, max_output: int, pid: int) -> Any:
    """The callable's result from a contained run, or ContainerCallError saying what happened."""
    if out.truncated:
        raise ContainerCallError(f"the callable's result is larger than the cap of {max_output} bytes")
    if out.timed_out:
        raise ContainerCallError(f"timed out after {timeout:g}s inside pid {pid}'s namespaces; "
                                 "everything it started was killed")
    if out.error:
        raise ContainerCallError(out.error)

    def refuse(name: str) -> Any:
        raise ValueError(name)
    try:
        payload = json.loads(out.stdout or b"{}", parse_constant=refuse)
    except ValueError:
        raise ContainerCallError("the callable's result is not JSON data") from None
    if not isinstance(payload, dict):
        raise ContainerCallError("the callable's result is not JSON data")
    if "error" in payload:
        raise ContainerCallError(str(payload["error"]))
    if "ok" not in payload:
        raise ContainerCallError("the callable ended without a result")
    return payload["ok"]
