"""The container boundary against a real runc container under containerd: planted links, FIFOs
and devices for container.read, commands and callables that leave processes behind, flood their
output or return what is not JSON for container.run/call."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from tests.rig.containerd import container_spec

pytestmark = pytest.mark.rig


def _processes_with(arg: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if arg.encode() in (d / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(d.name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def box(containerd):
    from vcheck.nodemodel import NodeModel
    from vcheck.procfs import HostRoots

    pod, _ = containerd.run_pod("edge", "shop", [container_spec("box", ["sleep", "3600"])])
    os.environ["VCHECK_CRI_SOCKETS"] = str(containerd.socket)
    try:
        yield next(c for c in NodeModel(HostRoots()).containers if c.name == "box")
    finally:
        os.environ.pop("VCHECK_CRI_SOCKETS", None)
        containerd.remove_pod(pod)


def _plant(box, rel: str) -> Path:
    """A path inside the container's root, reached from the host to plant things with."""
    return Path(f"/proc/{box.pid}/root") / rel.lstrip("/")


def test_read_resolves_every_link_inside_the_container(box, tmp_path):
    from vcheck.boundary import BoundaryError

    secret = tmp_path / "host-only-secret"
    secret.write_text("a host file no container may read\n")
    _plant(box, "/etc/mine").write_text("the container's own file\n")
    for name, target in (("abs", "/etc/mine"), ("up", "../../../../etc/mine"), ("host", str(secret)),
                         ("hostup", "../../../.." + str(secret)), ("root", "/"),
                         ("proc", f"/proc/{os.getpid()}/root{secret}")):
        link = _plant(box, f"/etc/{name}")
        link.unlink(missing_ok=True)
        os.symlink(target, link)
    assert box.read("/etc/abs") == "the container's own file\n"
    assert box.read("/etc/up") == "the container's own file\n"          # '..' stops at the container's /
    assert box.read("/etc/root/etc/mine") == "the container's own file\n"
    for path in ("/etc/host", "/etc/hostup", "/etc/proc", "/etc/root" + str(secret), "../../.." + str(secret)):
        with pytest.raises(OSError):
            box.read(path)               # not there in the container, or a magic link refused
    with pytest.raises(OSError):
        box.read("/etc/shadow")          # the busybox image has none; the host's must never come back


def test_read_refuses_fifos_and_devices_at_once_and_stops_at_the_cap(box):
    from vcheck.boundary import BoundaryError

    fifo = _plant(box, "/tmp/pipe")
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(BoundaryError, match="FIFO"):
        box.read("/tmp/pipe")
    with pytest.raises(BoundaryError, match="device|not a regular"):
        box.read("/dev/null")
    with pytest.raises(BoundaryError, match="directory"):
        box.read("/etc")
    assert time.monotonic() - start < 5
    _plant(box, "/tmp/big").write_bytes(b"x" * (1 << 20))
    assert len(box.read("/tmp/big", max_output=1000)) == 1000


def test_run_leaves_nothing_behind_after_a_timeout(box):
    marker = "3001"
    r = box.run(["sh", "-c", f"sleep {marker} & sleep {marker} & cat /tmp/pipe2; sleep {marker}"], timeout=0.5)
    assert r.returncode == -1 and "timed out" in r.stderr and r.truncated
    assert _processes_with(marker) == []           # killed and reaped before run() returned


def test_a_daemon_forked_by_a_callable_ends_with_the_call(box):
    def leave_a_daemon():
        if os.fork() == 0:
            os.setsid()
            os.execvp("sleep", ["sleep", "3002"])
        return "left"
    assert box.call(leave_a_daemon) == "left"
    assert _processes_with("3002") == []
    ok = box.run(["sh", "-c", "sleep 3003 & echo started"])
    assert ok.returncode == 0 and ok.stdout.strip() == "started"
    assert _processes_with("3003") == []


def test_the_child_holds_none_of_vchecks_files_and_sits_in_the_containers_cgroup(box, tmp_path):
    lock = tmp_path / "held.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)          # inheritable on purpose: the child must close it
    os.set_inheritable(fd, True)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        def open_files():
            out = []
            for n in os.listdir("/proc/self/fd"):
                try:
                    out.append(os.readlink(f"/proc/self/fd/{n}"))
                except OSError:
                    pass                                  # listdir's own descriptor, closed by now
            return sorted(out)
        seen = box.call(open_files)
        assert not any("held.lock" in s for s in seen)
        # stdin/stdout/stderr on /dev/null, the result pipe and the status pipe: nothing of vcheck's
        assert len(seen) == 5 and all(s == "/dev/null" or s.startswith("pipe:") for s in seen), seen
        groups = box.call(lambda: open("/proc/self/cgroup").read())
        # the same cgroups as the container's own process, seen through the same cgroup namespace
        assert groups == Path(f"/proc/{box.pid}/cgroup").read_text()
    finally:
        os.close(fd)
    fd2 = os.open(lock, os.O_RDWR)
    fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)      # nobody kept the lock
    os.close(fd2)


def test_output_is_cut_at_the_cap_while_it_comes(box):
    from vcheck.nodemodel import ContainerCallError

    start = time.monotonic()
    r = box.run(["yes"], max_output=4096, timeout=30)
    assert r.truncated and len(r.stdout) <= 4096 and "cut at 4096 bytes" in r.stderr
    assert time.monotonic() - start < 10
    with pytest.raises(ContainerCallError, match="larger than the cap of 1000 bytes"):
        box.call(lambda: "x" * 100_000, max_output=1000)
    with pytest.raises(ContainerCallError, match="NaN or Infinity"):
        box.call(lambda: [1.0, float("nan")])
    with pytest.raises(ContainerCallError, match="NaN or Infinity"):
        box.call(lambda: float("inf"))
    assert box.call(lambda: {"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}


def test_a_missing_command_is_said(box):
    r = box.run(["no-such-command"])
    assert r.returncode == 127 and "no-such-command" in r.stderr
