"""One identity for any host PID, resolved against real things: a qemu VM's vCPU thread, a
container under containerd, a process in a cgroup named like a systemd unit, an exited task."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.rig.common import remove_cgroup_tree
from tests.rig.containerd import container_spec
from vcheck.identity import Resolver
from vcheck.procfs import HostRoots

pytestmark = pytest.mark.rig


def test_vm_container_unit_and_exited(qemu_vm, containerd, monkeypatch):
    vm = qemu_vm("ident", smp=1)
    monkeypatch.setenv("VCHECK_CRI_SOCKETS", str(containerd.socket))
    containerd.run_pod("who", "shop", [container_spec("app", ["sleep", "3600"])])
    unit = Path("/sys/fs/cgroup/cpu/vcheck-ident/transcoder.service")
    unit.mkdir(parents=True, exist_ok=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    (unit / "cgroup.procs").write_text(str(sleeper.pid))
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        r = Resolver(HostRoots())
        vcpu = r.resolve(vm.vcpu_tids[0])
        assert vcpu.kind == "vm" and vcpu.owner == "VM ident, vCPU 0" and vcpu.labels == {"vm": "ident"}
        assert r.resolve(vm.pid).owner.startswith("VM ident, VMM")
        app = next(c for c in r.containers.values() if c.name == "app")
        ident = r.resolve(app.pid)
        assert ident.kind == "container" and ident.owner == "container shop/who/app"
        assert len(ident.nspid) == 2 and ident.nspid[0] == app.pid and "PID" in ident.describe()
        svc = r.resolve(sleeper.pid)
        assert svc.kind == "unit" and svc.unit == "transcoder.service"
        comm = Path(f"/proc/{sleeper.pid}/comm").read_text().strip()
        assert svc.describe() == f"pid {sleeper.pid} '{comm}' (unit transcoder.service)"
        assert r.resolve(gone.pid).kind == "exited"
        assert r.resolve(os.getpid()).kind in ("host", "cgroup", "unit")
    finally:
        sleeper.kill()
        sleeper.wait()
        time.sleep(0.1)
        remove_cgroup_tree("vcheck-ident")
        for pod in list(containerd.pods):
            containerd.remove_pod(pod)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_kernel_threads_by_their_flag_and_exited_tasks_say_so():
    """A zombie has an empty cmdline as a kernel thread does: the kernel's PF_KTHREAD flag tells
    them apart, and the zombie is named as exited."""
    zombie = subprocess.Popen(["true"])       # not waited for: a zombie until reaped
    try:
        deadline = time.monotonic() + 5
        while _state(zombie.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(zombie.pid) == "Z"
        assert Path(f"/proc/{zombie.pid}/cmdline").read_bytes() == b""   # what fooled the old test
        r = Resolver(HostRoots())
        z = r.resolve(zombie.pid)
        assert z.kind == "exited" and "zombie" in z.owner and "kernel thread" not in z.owner, z
        kthreadd = r.resolve(2)            # the kernel's thread creator, PID 2 on every Linux
        assert Path("/proc/2/comm").read_text().strip() == "kthreadd"
        assert kthreadd.owner == "kernel thread", kthreadd
        assert r.resolve(os.getpid()).owner != "kernel thread"
    finally:
        zombie.wait()


ISSUER = """
import mmap, os, sys
open('/proc/self/comm', 'w').write('vchk-brief')
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
buf = mmap.mmap(-1, 4096)
for i in range(3):
    os.pwrite(fd, buf, i * 4096)
"""


def test_slow_ios_of_a_short_lived_process_are_not_a_kernel_threads():
    """A process issues its I/O and exits before the window ends (left a zombie): the outlier
    rows name it as exited, never as a kernel thread."""
    from tests.rig.common import require_root
    from tests.rig.io import loop_device
    from vcheck.collectors.base import CollectContext, CollectRequest
    from vcheck.collectors.disk import BlockLatencyCollector
    from vcheck.observations import ObservationStore
    require_root()
    store = ObservationStore()
    c = BlockLatencyCollector(CollectContext(HostRoots(), store),
                              CollectRequest(frozenset({"block.latency"}), 3.0, 1.0, {"block.latency": 1e-9}))
    with loop_device() as dev:
        c.start()
        try:
            c.begin(time.monotonic())
            brief = subprocess.Popen([sys.executable, "-c", ISSUER, f"/dev/{dev}"])
            deadline = time.monotonic() + 10
            while _state(brief.pid) != "Z" and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.2)        # the collector resolves its submitters every 50 ms
            c.stop(1.0)
        finally:
            c.close()
            brief.wait()
    mine = [e for o in store.for_metric("block.latency") for e in o.events if e["pid"] == brief.pid]
    assert mine, [e["comm"] for o in store.for_metric("block.latency") for e in o.events][:10]
    for e in mine:
        assert "kernel thread" not in e["owner"], e
    assert any("exited" in e["owner"] for e in mine) or all(e["owner"].startswith(("host", "cgroup", "unit"))
                                                          for e in mine), mine
