"""Real block I/O and CPU contention for the guest-layer rig.

Raw reads of /dev/vda are refused on these machines (EPERM), so I/O goes to a file on the root
filesystem, which lives on /dev/vda, with O_DIRECT so every write reaches the device; or to a
loop device of the rig's own over such a file.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import random
import subprocess
import sys
import tempfile
import time
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


def direct_writes(count: int, block: str = "4k", directory: Path = IO_DIR) -> subprocess.CompletedProcess:
    """`count` O_DIRECT writes of `block` bytes each, to a scratch file that is removed after."""
    fd, name = tempfile.mkstemp(prefix="vcheck-io-", dir=directory)
    os.close(fd)
    try:
        proc = subprocess.run(["dd", "if=/dev/zero", f"of={name}", f"bs={block}", f"count={count}",
                               "oflag=direct", "conv=notrunc"], capture_output=True, text=True)
        if proc.returncode != 0:
            rig_fail("dd with O_DIRECT failed", proc.stderr.strip())
        return proc
    finally:
        os.unlink(name)


FSYNC_WRITER = """
import mmap, os, sys
with open("/proc/self/comm", "w") as f:
    f.write(sys.argv[3])
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)   # page-aligned, as O_DIRECT wants
for i in range(int(sys.argv[2])):
    os.pwrite(fd, buf, i * 4096)
    os.fsync(fd)
os.close(fd)
"""


def fsync_writes(count: int, comm: str = "vcheck-fsync", directory: Path = IO_DIR,
                 target: Path | None = None) -> None:
    """`count` times: one 4 KiB O_DIRECT write, then fsync (a flush), from a child named `comm`;
    into `target` (see preallocated) or a new scratch file in `directory`."""
    if target is None:
        fd, name = tempfile.mkstemp(prefix="vcheck-fsync-", dir=directory)
        os.close(fd)
    else:
        name = str(target)
    try:
        proc = subprocess.run([sys.executable, "-c", FSYNC_WRITER, name, str(count), comm],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            rig_fail("O_DIRECT writes with fsync failed", proc.stderr.strip()[-500:])
    finally:
        if target is None:
            os.unlink(name)


def sync_fs(path: Path) -> None:
    """syncfs(2) on the file system holding `path`: that one only. sync(2) would also ask for
    flushes of every other file system, another test's too (its flushes then carry our name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            rig_fail(f"syncfs({path}) failed", os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)


@contextmanager
def preallocated(directory: Path, blocks: int) -> Iterator[Path]:
    """A file of `blocks` 4 KiB blocks already written and synced: overwriting it and fsyncing
    is a flush with no journal commit for the file's growth (what an fsync-heavy database does)."""
    fd, name = tempfile.mkstemp(prefix="vcheck-pre-", dir=directory)
    try:
        os.write(fd, b"\0" * 4096 * blocks)
        os.fsync(fd)
        os.close(fd)
        sync_fs(directory)
        yield Path(name)
    finally:
        os.unlink(name)


@contextmanager
def loop_device(mib: int = 64) -> Iterator[str]:
    """A loop device over a sparse file in IO_DIR; yields its name (loop3). A loop device
    has a write-back cache without FUA, so an O_DSYNC write to it is data plus a post-flush."""
    fd, name = tempfile.mkstemp(prefix="vcheck-loop-", dir=IO_DIR)
    os.close(fd)
    try:
        os.truncate(name, mib << 20)
        proc = subprocess.run(["losetup", "--find", "--show", name], capture_output=True, text=True)
        if proc.returncode != 0:
            rig_fail("losetup could not attach a loop device", proc.stderr.strip())
        dev = proc.stdout.strip()
        try:
            yield Path(dev).name
        finally:
            subprocess.run(["losetup", "--detach", dev], capture_output=True)
    finally:
        os.unlink(name)


@contextmanager
def loop_filesystem(mib: int = 64) -> Iterator[tuple[str, Path]]:
    """An ext4 file system on a loop device of its own, mounted: (device name, mount point).
    I/O counted on it is the test's alone, whatever else the shared machine does to its disk."""
    with loop_device(mib) as dev:
        # initialised now, not by ext4's lazyinit thread after mount (its write-zeroes would be
        # I/O of the file system's own inside the test's window)
        mkfs = subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                               f"/dev/{dev}"], capture_output=True, text=True)
        if mkfs.returncode != 0:
            rig_fail("mkfs.ext4 on a loop device failed", mkfs.stderr.strip())
        mnt = Path(tempfile.mkdtemp(prefix="vcheck-mnt-", dir=IO_DIR))
        try:
            mount = subprocess.run(["mount", f"/dev/{dev}", str(mnt)], capture_output=True, text=True)
            if mount.returncode != 0:
                rig_fail("mounting the loop file system failed", mount.stderr.strip())
            try:
                yield dev, mnt
            finally:
                subprocess.run(["umount", str(mnt)], capture_output=True)
        finally:
            mnt.rmdir()


def device_writes(device: str, count: int, seek: int = 0, dsync: bool = False) -> None:
    """`count` 4 KiB O_DIRECT writes to /dev/DEVICE from block `seek` on; O_DSYNC too with
    dsync (FUA writes)."""
    proc = subprocess.run(["dd", "if=/dev/zero", f"of=/dev/{device}", "bs=4k", f"count={count}", f"seek={seek}",
                           "oflag=direct,dsync" if dsync else "oflag=direct", "status=none"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        rig_fail(f"dd with O_DIRECT{'|O_DSYNC' if dsync else ''} to /dev/{device} failed", proc.stderr.strip())


def dsync_writes(device: str, count: int, seek: int = 0) -> None:
    """`count` 4 KiB O_DIRECT|O_DSYNC writes to /dev/DEVICE from block `seek` on (FUA writes)."""
    device_writes(device, count, seek, dsync=True)


@contextmanager
def background_writes(seconds: float, block: str = "4k", cpus: str | None = None) -> Iterator[subprocess.Popen]:
    """O_DIRECT writes for about `seconds`, in a child process (fio, time-based); on `cpus`
    only when given (keeps its thousands of short wakeups off a CPU a test measures). The job
    runs as a thread of fio (--thread): a forked job is a session of its own, which killing
    fio leaves writing to the end of its runtime."""
    fd, name = tempfile.mkstemp(prefix="vcheck-fio-", dir=IO_DIR)
    os.close(fd)
    cmd = ["fio", "--name=vcheck-rig", f"--filename={name}", "--rw=randwrite", f"--bs={block}",
           "--size=16m", "--direct=1", "--ioengine=psync", "--thread", "--time_based", f"--runtime={seconds}s",
           "--output-format=terse"] + ([f"--cpus_allowed={cpus}"] if cpus else [])
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


LOOP_CTL_ADD, LOOP_CTL_REMOVE = 0x4C80, 0x4C81


@contextmanager
def fresh_loop_device(mib: int = 32) -> Iterator[str]:
    """A loop device made for this test (LOOP_CTL_ADD at an unused index) and removed after, so
    its request queue is new: no blk-throttle rule was ever set on it. loop_device() reuses
    loop0.. whose queues keep whatever earlier tests did to them."""
    ctl = os.open("/dev/loop-control", os.O_RDWR)
    try:
        for _ in range(20):
            index = random.randrange(4096, 1 << 19)
            try:
                index = fcntl.ioctl(ctl, LOOP_CTL_ADD, index)
                break
            except OSError:
                continue
        else:
            rig_fail("LOOP_CTL_ADD found no free loop index")
        node = Path(f"/dev/loop{index}")
        for _ in range(100):      # devtmpfs makes the node asynchronously
            if node.exists():
                break
            time.sleep(0.01)
        fd, name = tempfile.mkstemp(prefix="vcheck-loop-", dir=IO_DIR)
        os.close(fd)
        try:
            os.truncate(name, mib << 20)
            proc = subprocess.run(["losetup", str(node), name], capture_output=True, text=True)
            if proc.returncode != 0:
                rig_fail(f"losetup could not attach {node}", proc.stderr.strip())
            try:
                yield node.name
            finally:
                subprocess.run(["losetup", "--detach", str(node)], capture_output=True)
        finally:
            os.unlink(name)
            for _ in range(50):
                try:
                    fcntl.ioctl(ctl, LOOP_CTL_REMOVE, index)
                    break
                except OSError:
                    time.sleep(0.05)
    finally:
        os.close(ctl)
