"""Reading files whose path comes from the operator or from a saved run: bounded in size,
regular files and pipes only, never blocking on a FIFO with no writer, so a hostile path (a
device, /dev/zero, a FIFO) cannot wedge or exhaust a run."""
from __future__ import annotations

import os
import resource
import select
import stat
from typing import Sequence


def describe_kind(st: os.stat_result) -> str:
    """'a FIFO', 'a block device': what a path is, for a one-line refusal."""
    m = st.st_mode
    return ("a regular file" if stat.S_ISREG(m) else "a directory" if stat.S_ISDIR(m) else
            "a block device" if stat.S_ISBLK(m) else "a character device" if stat.S_ISCHR(m) else "a socket" if stat.S_ISSOCK(m) else
            "a FIFO" if stat.S_ISFIFO(m) else "a symbolic link" if stat.S_ISLNK(m) else "not a regular file")


def read_up_to(fd: int, limit: int) -> bytes:
    """At most limit + 1 bytes from fd, read in pieces (never the whole of a huge file in memory):
    one byte more than the limit says there was more."""
    chunks, total = [], 0
    while total <= limit:
        chunk = os.read(fd, min(1 << 20, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_bounded(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """At most `limit` bytes of a regular file, FIFO or pipe (read once: process substitution
    works); refuses directories and devices, and a file over the limit. Raises OSError or
    ValueError with a message that names what was wrong."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            raise ValueError(f"{what} is {describe_kind(st)}, not a file")
        if stat.S_ISFIFO(st.st_mode):
            os.set_blocking(fd, True)
        data = read_up_to(fd, limit)
        if len(data) > limit:
            raise ValueError(f"{what} is larger than {limit // (1 << 20) or 1} MiB")
        return data
    finally:
        os.close(fd)


def wait_ready(fds: Sequence[int], timeout: float | None, write: bool = False) -> list[int]:
    """Those of fds ready to read (or to write) within timeout seconds (None: no limit); a
    hang-up or an error counts as ready, and the read or write that follows says which.
    poll(2), never select(2): select cannot take a descriptor numbered 1024 or more, and a run
    that keeps thousands of cgroup files open hands such numbers to its pipes and pidfds."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLOUT if write else select.POLLIN)
    return [fd for fd, _ in poller.poll(None if timeout is None else max(0.0, timeout) * 1000)]


MAX_DESCRIPTORS = 1 << 16


def raise_descriptor_limit() -> int:
    """Lift this process's soft limit on open files to its hard limit (at most 65,536): the
    collectors keep a share of it open to re-read cgroup and /proc files with pread, and cron's
    or a shell's soft limit of 1,024 would leave them none. vcheck waits on descriptors with
    poll(2) only (wait_ready), so numbers past 1,024 are safe. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, MAX_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return want
        except (ValueError, OSError):
            pass
    return soft
