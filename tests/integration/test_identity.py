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
