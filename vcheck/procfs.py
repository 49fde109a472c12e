"""Where the host's /proc, /sys and cgroup tree are.

A vcheck in a DaemonSet reads the host through bind mounts (``/host/proc``); tests point
these at recorded trees. Collectors read the host only through these roots; the report's own
node facts (``report/node.py``) describe the machine vcheck itself runs on.
"""
from __future__ import annotations

import errno

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostRoots:
    proc: Path = Path("/proc")
    sys: Path = Path("/sys")
    cgroup: Path = Path("/sys/fs/cgroup")
    run: Path = Path("/run")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "HostRoots":
        env = os.environ if environ is None else environ
        root = env.get("VCHECK_HOST_ROOT", "")
        def pick(var: str, default: str) -> Path:
            return Path(env.get(var) or (root.rstrip("/") + default if root else default))
        return cls(proc=pick("VCHECK_PROC", "/proc"), sys=pick("VCHECK_SYS", "/sys"),
                   cgroup=pick("VCHECK_CGROUP", "/sys/fs/cgroup"), run=pick("VCHECK_RUN", "/run"))


PROC_READ_LIMIT = 16 << 20   # far above any /proc or /sys file vcheck reads; VCHECK_PROC may point anywhere


def read_text(path: Path | str) -> str:
    """A /proc or /sys file, bounded: one over PROC_READ_LIMIT is an OSError, as an unreadable one."""
    # os.read in pieces until EOF: a buffered f.read(PROC_READ_LIMIT + 1) allocates the whole
    # limit on every call (33 us for an 8-byte cgroup file, against 7 us this way)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts, total = [], 0
        while True:
            piece = os.read(fd, 65536)
            if not piece:
                break
            total += len(piece)
            if total > PROC_READ_LIMIT:
                raise OSError(errno.EFBIG, f"larger than {PROC_READ_LIMIT >> 20} MiB", str(path))
            parts.append(piece)
    finally:
        os.close(fd)
    return (parts[0] if len(parts) == 1 else b"".join(parts)).decode("utf-8", "replace")
