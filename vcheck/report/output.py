"""Writing and reading the files a run is told to use, as root, in directories others may write.

Writing: a regular file (or a new one) is replaced atomically: a temporary file with an
unpredictable name, created exclusively in the same directory (never through a symlink),
written, fsynced, given its mode through the descriptor, then renamed over the target, so a
reader never sees half a file and a failed run leaves the last good one byte-identical. A FIFO,
a terminal, /dev/null or a pipe behind /dev/stdout is written as a stream. Anything else that is
not a regular file (a directory, a block or other character device, a socket, a symlink to a
regular file) is refused, never replaced.

Reading: bounded in size, regular files and streams only, never blocking on a FIFO with no
writer, so a hostile path cannot wedge or exhaust a run.
"""
from __future__ import annotations

import errno
import os
import re
import signal
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import EXIT_OK, EXIT_OUTPUT, OutputError
from ..files import describe_kind as _kind, wait_ready

_NULL = (1, 3)                                        # /dev/null
_TTY_MAJORS = frozenset({4, 5, *range(136, 144)})     # virtual consoles, /dev/tty, ptys


def _streamable(st: os.stat_result) -> bool:
    if stat.S_ISFIFO(st.st_mode):
        return True
    if stat.S_ISCHR(st.st_mode):
        dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        return dev == _NULL or dev[0] in _TTY_MAJORS
    return False


# the signals that end a run (SIGTERM, Ctrl-C, a closed terminal): held while a file goes out,
# and from the verdicts on (plugin, cli.entry), where a pending one means exit 2
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def pending_signal() -> str | None:
    """The name of an ending signal held and pending on this thread, or None."""
    try:
        pending = signal.sigpending() & set(ENDING_SIGNALS)
    except (OSError, ValueError):
        return None
    return signal.Signals(min(pending)).name if pending else None


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM/SIGINT/SIGHUP wait until a file is complete (then act as usual), so a second signal
    cannot leave a temporary file behind or a report half-renamed."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, ENDING_SIGNALS)
    except (ValueError, OSError):   # not the main thread: nothing to hold
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def write_output(path: str | os.PathLike, data: bytes | Iterable[bytes], mode: int = 0o644) -> None:
    """Write `data` (bytes, or pieces of it made as they are written) to `path` as described
    above; raises OutputError naming the path and why."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = (data,)
    target = Path(path)
    fd = _inherited_fd(str(target))
    if fd is not None:          # /dev/stdout and friends: the descriptor the caller opened for us
        _write_fd(target, fd, data)
        return
    try:
        lst = os.lstat(target)
    except FileNotFoundError:
        lst = None
    except OSError as exc:
        raise OutputError(f"{target}: cannot write: {exc.strerror}") from None
    if lst is not None and stat.S_ISLNK(lst.st_mode):
        try:
            st = os.stat(target)
        except OSError as exc:
            raise OutputError(f"{target}: a symbolic link to nothing usable ({exc.strerror}); "
                              "give the real path") from None
        if not _streamable(st):
            raise OutputError(f"{target}: is a symbolic link (to {_kind(st)}); vcheck does not write "
                              "through links: give the real path")
        _write_stream(target, data)
        return
    if lst is not None and not stat.S_ISREG(lst.st_mode):
        if _streamable(lst):
            _write_stream(target, data)
            return
        raise OutputError(f"{target}: is {_kind(lst)}; vcheck writes reports only to regular files, "
                          "FIFOs and terminals")
    _replace_atomically(target, data, mode)


_FD_PATH = re.compile(r"/(?:dev/fd|proc/self/fd)/(\d+)\Z")


def _inherited_fd(path: str) -> int | None:
    """/dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N: a descriptor vcheck was given (a
    shell redirect, a pipe), written as it is, whatever it points at."""
    if path in ("/dev/stdout", "/dev/stderr"):
        return 1 if path == "/dev/stdout" else 2
    m = _FD_PATH.match(path)
    return int(m.group(1)) if m else None


STREAM_STALL = 60.0      # seconds a stream's reader may take nothing before vcheck gives up


def _write_all(fd: int, data: Iterable[bytes]) -> None:
    """All of `data` to a stream (short writes continued), signals held while it goes out. A
    reader that takes nothing cannot hold vcheck: the write waits in slices, and ends with an
    OutputError when a held signal is pending (SIGTERM, SIGINT, --timeout) or after
    STREAM_STALL seconds without progress."""
    with _signals_held():
        stalled_since = time.monotonic()
        for piece in data:
            view = memoryview(piece)
            while view:
                if wait_ready([fd], 0.2, write=True):
                    view = view[os.write(fd, view[:PIPE_CHUNK]):]
                    stalled_since = time.monotonic()
                    continue
                pending = pending_signal()
                if pending:
                    raise OutputError(f"interrupted by {pending} while the reader took nothing; cut short")
                if time.monotonic() - stalled_since > STREAM_STALL:
                    raise OutputError(f"the reader took nothing for {STREAM_STALL:.0f}s; cut short")


PIPE_CHUNK = 4096        # a pipe that polls writable has room for this much: the write never blocks





def _write_fd(target: Path, fd: int, data: Iterable[bytes]) -> None:
    try:
        os.fstat(fd)
        if fd == 1:
            sys.stdout.flush()
        _write_all(fd, data)
    except OSError as exc:
        raise OutputError(f"{target}: write failed: {exc.strerror}") from None


def _write_stream(target: Path, data: Iterable[bytes]) -> None:
    try:
        # O_NONBLOCK: a FIFO with no reader is an error now, not a run that hangs forever
        fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        why = "a FIFO with no reader" if exc.errno == errno.ENXIO else exc.strerror
        raise OutputError(f"{target}: cannot write: {why}") from None
    try:
        if not _streamable(os.fstat(fd)):     # swapped for something else since we looked
            raise OutputError(f"{target}: changed while being opened; not written")
        os.set_blocking(fd, True)
        _write_all(fd, data)
    except OSError as exc:
        raise OutputError(f"{target}: write failed: {exc.strerror}") from None
    finally:
        os.close(fd)


def _replace_atomically(target: Path, data: Iterable[bytes], mode: int) -> None:
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise OutputError(f"{target}: cannot write: directory {directory} does not exist")
    with _signals_held():
        try:
            # mkstemp: random name, O_CREAT|O_EXCL (never opens an existing file or a symlink), 0600
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise OutputError(f"{target}: cannot write in {directory}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                for piece in data:
                    f.write(piece)
                f.flush()
                os.fsync(f.fileno())
                os.fchmod(f.fileno(), mode)
            os.rename(tmp, target)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise OutputError(f"{target}: write failed: {exc.strerror}; the previous file is unchanged") from None
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def write_outputs(outputs: list[tuple[str, bytes]], rc: int) -> int:
    """Each (path, data) written as write_output does; a failure is one line on stderr and the
    others are still written. Returns rc, or 7 (EXIT_OUTPUT) when rc was 0 and one failed."""
    for path, data in outputs:
        try:
            write_output(path, data)
        except OutputError as exc:
            print(f"vcheck: {exc}", file=sys.stderr)
            rc = EXIT_OUTPUT if rc == EXIT_OK else rc
    return rc


def read_previous(path: str | os.PathLike, limit: int = 1 << 20) -> str | None:
    """The earlier content of an output file we are about to replace, if it is a regular file
    (never a device or FIFO: those are not ours to read), bounded, decoded leniently."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
