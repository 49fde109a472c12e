"""The node as a model for Python checks: its VMs and containers, discovered lazily and once,
by the collectors' own discovery code (no second implementation), read-only.

``ContainerView.run()`` is the seed's ``nsenter`` step: a command in a container's namespaces,
argv only (no shell), with a timeout and a cap on output. By default it runs as nobody with no
new privileges, so a check can look but not change anything; ``privileged=True`` is the opt-in.
"""
from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

from .collectors.cgroups import CgroupSample, cgroup_mode, proc_cgroups, read_container
from .collectors.containers.container import Container
from .collectors.containers.discovery import discover_containers, host_namespaces, namespace_ids, nspid
from .collectors.vms import VM, discover_vms
from .errors import Unavailable
from .procfs import HostRoots, read_text

MAX_OUTPUT = 64 * 1024
NAMESPACES = ("mnt", "uts", "ipc", "net", "pid", "cgroup")
_NSENTER_FLAG = {"mnt": "--mount", "uts": "--uts", "ipc": "--ipc", "net": "--net", "pid": "--pid", "cgroup": "--cgroup"}


@dataclass(frozen=True)
class RunResult:
    """A command run inside a container, as evidence."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    truncated: bool = False

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}  (exit {self.returncode})\n{self.stdout}{self.stderr}"


@dataclass
class VcpuView:
    index: int
    tid: int
    name: str

    @property
    def affinity(self) -> frozenset[int]:
        """Host CPUs this vCPU thread may run on (sched_getaffinity of its thread)."""
        return frozenset(os.sched_getaffinity(self.tid))


@dataclass
class VmView:
    vm: VM
    vcpus: list[VcpuView] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.vm.name

    @property
    def pid(self) -> int:
        return self.vm.pid

    @property
    def pinned(self) -> bool:
        """Every vCPU is confined to fewer host CPUs than the host has."""
        total = os.cpu_count() or 1
        return bool(self.vcpus) and all(len(v.affinity) < total for v in self.vcpus)


@dataclass
class ContainerView:
    container: Container
    roots: HostRoots
    cgroup_paths: dict[str, str] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)
    nspid: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.container.name

    @property
    def pod(self) -> str:
        return self.container.pod

    @property
    def namespace(self) -> str:
        return self.container.namespace

    @property
    def pid(self) -> int:
        return self.container.pid

    @property
    def entity(self) -> str:
        return "-".join(x for x in (self.namespace, self.pod, self.name) if x)

    @cached_property
    def host_namespaces(self) -> dict[str, str]:
        return host_namespaces(self.roots)

    def cgroup(self) -> CgroupSample:
        """The container's cgroup figures now (CPU quota, memory limit, pids ...)."""
        return read_container(self.roots, cgroup_mode(self.roots.cgroup), self.cgroup_paths)

    def run(self, argv: Sequence[str], *, timeout: float = 10.0, privileged: bool = False,
            max_output: int = MAX_OUTPUT) -> RunResult:
        """Run argv in the container's namespaces (mount, uts, ipc, net, pid, cgroup). No shell: argv is
        passed as is. Unprivileged (nobody, no new privileges) unless the check opts in."""
        if isinstance(argv, str) or not argv:
            raise TypeError("run() takes an argv list such as ['cat', '/etc/hostname'], never a shell string")
        # no_new_privs is set before nsenter and inherited; nsenter drops to nobody after joining
        # the namespaces, so the command cannot write what root owns in the container
        cmd = ([] if privileged else ["setpriv", "--no-new-privs"]) + \
            ["nsenter", f"--target={self.pid}", *(_NSENTER_FLAG[n] for n in NAMESPACES)]
        if not privileged:
            cmd += ["--setuid=65534", "--setgid=65534"]
        cmd += ["--", *(str(a) for a in argv)]
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                               env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"")[:max_output].decode("utf-8", "replace")
            return RunResult(tuple(argv), -1, out, f"timed out after {timeout:g}s\n", True)
        truncated = len(p.stdout) > max_output or len(p.stderr) > max_output
        return RunResult(tuple(argv), p.returncode, p.stdout[:max_output].decode("utf-8", "replace"),
                         p.stderr[:max_output].decode("utf-8", "replace"), truncated)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0, privileged: bool = False,
             max_output: int = MAX_OUTPUT) -> Any:
        """fn(*args) inside the container's namespaces (mount, uts, ipc, net, cgroup; pid for the
        process it runs in), in a child process: as nobody with no new privileges unless the
        check opts in. The result must be JSON data (no objects cross back); an exception in fn
        is raised here as ContainerCallError with its message."""
        return run_in_namespaces(self.pid, fn, args, timeout=timeout, privileged=privileged,
                                 max_output=max_output)

    def read(self, path: str, *, max_output: int = MAX_OUTPUT) -> str:
        """A file as the container sees it (through its root, no command run)."""
        target = self.roots.proc / str(self.pid) / "root" / path.lstrip("/")
        with open(target, "rb") as f:
            return f.read(max_output).decode("utf-8", "replace")


class ContainerCallError(RuntimeError):
    """A callable run inside a container failed, timed out, or returned what is not JSON."""


_CLONE_NEW = {"mnt": 0x00020000, "uts": 0x04000000, "ipc": 0x08000000, "net": 0x40000000,
              "pid": 0x20000000, "cgroup": 0x02000000}
_PR_SET_NO_NEW_PRIVS = 38
_CLONE_FS = 0x00000200


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _enter(pid: int, privileged: bool, libc: ctypes.CDLL) -> None:
    """In a forked child: join the target's namespaces (pid last: it applies to the children).
    `libc` is resolved before the fork: dlopen in a child of a threaded process can deadlock."""
    # a library's fork handler (grpc's) may start threads in the child, which share its
    # fs_struct and make setns(mnt) refuse: take a private one first
    if libc.unshare(_CLONE_FS) != 0:
        raise OSError(ctypes.get_errno(), f"unshare(CLONE_FS): {os.strerror(ctypes.get_errno())}")
    fds = {ns: os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in _CLONE_NEW}
    for ns in ("cgroup", "ipc", "uts", "net", "mnt", "pid"):   # fds opened first: /proc changes with mnt
        if libc.setns(fds[ns], _CLONE_NEW[ns]) != 0:
            raise OSError(ctypes.get_errno(), f"setns({ns}): {os.strerror(ctypes.get_errno())}")
        os.close(fds[ns])
    os.chdir("/")
    if not privileged:
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)


def run_in_namespaces(pid: int, fn: Callable[..., Any], args: tuple, *, timeout: float, privileged: bool,
                      max_output: int) -> Any:
    """Fork; the child joins the namespaces, forks again (so it is inside the PID namespace too),
    runs fn and writes {"ok": result} or {"error": text} as JSON to a pipe; the parent waits at
    most `timeout` and kills the children past it."""
    libc = _libc()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:                                   # pragma: no cover - runs in the child
        status = 1
        try:
            os.close(r)
            _enter(pid, privileged, libc)
            inner = os.fork()
            if inner == 0:
                try:
                    payload = {"ok": fn(*args)}
                    data = json.dumps(payload).encode()
                except BaseException as exc:         # anything: it becomes the parent's error
                    data = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
                os.write(w, data[:max_output + 64])
                os._exit(0)
            status = os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1])
        except BaseException as exc:
            os.write(w, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        os._exit(status)
    os.close(w)
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(child, signal.SIGKILL)
                raise ContainerCallError(f"timed out after {timeout:g}s inside pid {pid}'s namespaces")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            if sum(map(len, chunks)) > max_output + 64:
                os.kill(child, signal.SIGKILL)
                raise ContainerCallError(f"result larger than {max_output} bytes")
    finally:
        os.close(r)
        try:
            os.waitpid(child, 0)
        except ChildProcessError:
            pass
    try:
        payload = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        raise ContainerCallError("the callable's result is not JSON data") from None
    if "error" in payload:
        raise ContainerCallError(payload["error"])
    if "ok" not in payload:
        raise ContainerCallError("the child ended without a result")
    return payload["ok"]


class NodeModel:
    """Facts about this node, discovered on first use and shared by every check of the run."""

    def __init__(self, roots: HostRoots):
        self.roots = roots
        self.notes: list[str] = []

    @cached_property
    def vms(self) -> list[VmView]:
        try:
            found = discover_vms(self.roots)
        except Unavailable as exc:
            self.notes.append(exc.reason)
            return []
        out = []
        for vm in found:
            views = []
            for v in vm.vcpus:
                try:
                    name = read_text(self.roots.proc / str(vm.pid) / "task" / str(v.tid) / "comm").strip()
                except OSError:
                    continue     # the thread ended since discovery
                views.append(VcpuView(v.index, v.tid, name))
            out.append(VmView(vm, views))
        return out

    @cached_property
    def containers(self) -> list[ContainerView]:
        found, notes = discover_containers(self.roots)
        self.notes.extend(notes)
        out = []
        for c in found:
            try:
                out.append(ContainerView(c, self.roots, proc_cgroups(self.roots, c.pid),
                                         namespace_ids(self.roots, c.pid), nspid(self.roots, c.pid)))
            except OSError:
                continue         # gone between discovery and now
        return out

    @property
    def host_cpus(self) -> int:
        return len(os.sched_getaffinity(0)) if Path("/proc/self").exists() else (os.cpu_count() or 1)
