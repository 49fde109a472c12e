"""Real block I/O and CPU contention for the guest-layer rig.

Raw reads of /dev/vda are refused on these machines (EPERM), so I/O goes to a file on the root
filesystem, which lives on /dev/vda, with O_DIRECT so every write reaches the device.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .common import rig_fail

IO_DIR = Path("/var/tmp")


def root_device() -> str:
    """Name of the whole disk holding IO_DIR (e.g. vda), from the st_dev of the directory."""
    dev = os.stat(IO_DIR).st_dev
    sys_path = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    if (sys_path / "partition").exists():
        sys_path = sys_path.parent
    return sys_path.name


def direct_writes(count: int, block: str = "4k") -> subprocess.CompletedProcess:
    """`count` O_DIRECT writes of `block` bytes each, to a scratch file that is removed after."""
    fd, name = tempfile.mkstemp(prefix="vcheck-io-", dir=IO_DIR)
    os.close(fd)
    try:
        proc = subprocess.run(["dd", "if=/dev/zero", f"of={name}", f"bs={block}", f"count={count}",
                               "oflag=direct", "conv=notrunc"], capture_output=True, text=True)
        if proc.returncode != 0:
            rig_fail("dd with O_DIRECT failed", proc.stderr.strip())
        return proc
    finally:
        os.unlink(name)


@contextmanager
def background_writes(seconds: float, block: str = "4k") -> Iterator[subprocess.Popen]:
    """O_DIRECT writes for about `seconds`, in a child process (fio, time-based)."""
    fd, name = tempfile.mkstemp(prefix="vcheck-fio-", dir=IO_DIR)
    os.close(fd)
    cmd = ["fio", "--name=vcheck-rig", f"--filename={name}", "--rw=randwrite", f"--bs={block}",
           "--size=16m", "--direct=1", "--ioengine=psync", "--time_based", f"--runtime={seconds}s",
           "--output-format=terse"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except FileNotFoundError:
        rig_fail("fio is not installed (scripts/setup.sh installs it)")
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        os.unlink(name)


@contextmanager
def cpu_hogs(cpu: int, n: int) -> Iterator[list[subprocess.Popen]]:
    """n busy loops pinned to one CPU, so tasks there queue behind each other."""
    code = "import os,sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cpu)]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
