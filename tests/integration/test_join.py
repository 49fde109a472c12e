"""Guest and host side by side: a host report with a real qemu VM (-uuid, -smbios serial) and a
guest report whose DMI identity carries that uuid are joined by `vcheck merge`; a guest no host
ran is listed as unjoined, never dropped. (This machine is a Firecracker guest without DMI, so
the guest side reads a sysfs tree laid out as the kernel does, through VCHECK_SYS.)"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.rig.common import VCHECK
from tests.rig.kvm import _qemu, _start_qemu, _stop

pytestmark = pytest.mark.rig

UUID = "5f1d3c6e-1111-2222-3333-444455556666"
HOST = "policy: host\ndefaults: {window: 1s, interval: 1s}\nchecks:\n" \
       "  - {id: delay, metric: vcpu.run_delay, per: vcpu, expect: '< 100%'}\n" \
       "  - {id: cpu, metric: vm.cpu, per: vm, expect: '>= 0%'}\n"
GUEST = "policy: guest\ndefaults: {window: 1s, interval: 1s}\nchecks:\n" \
        "  - {id: steal, metric: cpu.steal, expect: 'max < 0%'}\n"     # fails on purpose: joined failing


def run(policy: Path, report: Path, env: dict) -> None:
    r = subprocess.run(VCHECK + ["run", str(policy), "--json", str(report)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **env})
    assert "Traceback" not in r.stderr and report.exists(), r.stdout + r.stderr


def fake_sys(root: Path, uuid: str, serial: str) -> Path:
    dmi = root / "class" / "dmi" / "id"
    dmi.mkdir(parents=True)
    (dmi / "product_uuid").write_text(uuid.upper() + "\n")      # the kernel prints it upper-case
    (dmi / "product_serial").write_text(serial + "\n")
    return root


def test_merge_joins_a_guest_to_the_host_that_runs_it(tmp_path):
    vm = _start_qemu(_qemu(), "joined", 1, ("-uuid", UUID, "-smbios", "type=1,serial=S-42"))
    try:
        (tmp_path / "host.yaml").write_text(HOST)
        (tmp_path / "guest.yaml").write_text(GUEST)
        run(tmp_path / "host.yaml", tmp_path / "host.json", {"VCHECK_NODE_NAME": "hv1"})
    finally:
        _stop(vm)
    host = json.loads((tmp_path / "host.json").read_text())
    info = next(o["info"] for o in host["observations"] if o["metric"] == "vm.cpu" and o["labels"]["vm"] == "joined")
    assert info["uuid"] == UUID and info["serial"] == "S-42"
    run(tmp_path / "guest.yaml", tmp_path / "guest.json",
        {"VCHECK_NODE_NAME": "g1", "VCHECK_SYS": str(fake_sys(tmp_path / "sys1", UUID, "S-42"))})
    run(tmp_path / "guest.yaml", tmp_path / "lost.json",
        {"VCHECK_NODE_NAME": "g2", "VCHECK_SYS": str(fake_sys(tmp_path / "sys2", "0000-none", "nobody"))})
    assert json.loads((tmp_path / "guest.json").read_text())["node"]["vm_identity"]["product_uuid"] == UUID
    r = subprocess.run(VCHECK + ["merge", "--allow-mixed-policies", str(tmp_path / "host.json"), str(tmp_path / "guest.json"),
                                 str(tmp_path / "lost.json"), "--json", str(tmp_path / "fleet.json")],
                       capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr
    assert "guest g1 is VM joined on host hv1 (joined by product_uuid)" in r.stdout, r.stdout
    assert "guest failing: " in r.stdout and "host: delay[joined-vcpu0] pass" in r.stdout, r.stdout
    assert "guest g2: no host report ran it" in r.stdout
    fleet = json.loads((tmp_path / "fleet.json").read_text())
    assert fleet["joins"][0]["guest"] == "g1" and fleet["unjoined"] == ["g2"]
