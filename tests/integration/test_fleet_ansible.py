"""The upgrade gate rolled by the real `ansible-playbook` (Debian's ansible-core) over real sshd
instances on loopback ports, keys made here; each sshd answers as a different node
(VCHECK_NODE_NAME set for its sessions). deploy/ansible/vcheck-gate.yml runs `vcheck run` on
each host, fetches the JSON reports and gates each batch with `vcheck merge` on the controller."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.rig.common import REPO, rig_fail

pytestmark = pytest.mark.rig

PLAYBOOK = REPO / "deploy" / "ansible" / "vcheck-gate.yml"
VCHECK_BIN = str(Path(sys.executable).parent / "vcheck")

PASSING = """\
policy: ops
defaults: {window: 1s, interval: 1s}
checks:
  - {id: idle-ok, metric: cpu.idle, expect: "<= 100%"}
"""

STRICT = """\
policy: strict
defaults: {window: 1s, interval: 1s}
checks:
  - {id: never, metric: cpu.idle, expect: "< 0%"}
"""


def inventory(rig, tmp_path: Path, policies: list[str], waivers: Path, failing: str,
              unreachable: list[str] = ()) -> Path:
    """Hosts in the order given, all with the same policies; every host but FAILING waives the
    strict check (its known failure), so FAILING is the node that fails. An unreachable host
    points at a loopback port nobody listens on."""
    hosts = {}
    for h in rig.hosts:
        hosts[h.node] = {"ansible_port": h.port, "vcheck_node_labels": f"zone={'a' if h.node in ('n1', 'n2') else 'b'}"}
        if h.node != failing:
            hosts[h.node]["vcheck_waivers"] = str(waivers)
    for name in unreachable:
        hosts[name] = {"ansible_port": _closed_port()}
    inv = {"all": {"hosts": hosts, "vars": {
        "ansible_host": "127.0.0.1", "ansible_user": "root", "ansible_ssh_private_key_file": str(rig.key),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={rig.known_hosts} -o StrictHostKeyChecking=yes "
                                   "-o IdentitiesOnly=yes -o ConnectTimeout=5",
        "ansible_python_interpreter": "/usr/bin/python3", "vcheck_bin": VCHECK_BIN,
        "vcheck_controller_bin": VCHECK_BIN, "vcheck_become": False, "vcheck_policies": policies}}}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))   # hosts in this order
    return path


def _closed_port() -> int:
    from tests.rig.fleet import free_port
    return free_port()


def playbook(tmp_path: Path, inv: Path, reports: Path, **extra: object) -> subprocess.CompletedProcess:
    exe = shutil.which("ansible-playbook")
    if exe is None:
        rig_fail("ansible-playbook is not installed (scripts/setup.sh installs ansible-core)")
    env = {**os.environ, "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
           "ANSIBLE_REMOTE_TMP": str(tmp_path / "ansible-remote"), "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "cp"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_CONFIG": str(tmp_path / "no-ansible.cfg")}
    extra_vars = {"vcheck_reports_dir": str(reports), **extra}
    return subprocess.run([exe, "-i", str(inv), str(PLAYBOOK), "-e", json.dumps(extra_vars)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)


@pytest.fixture
def policies(tmp_path) -> list[str]:
    out = []
    for name, text in (("ops", PASSING), ("strict", STRICT)):
        (tmp_path / f"{name}.yaml").write_text(text)
        out.append(str(tmp_path / f"{name}.yaml"))
    return out


@pytest.fixture
def waivers(tmp_path) -> Path:
    path = tmp_path / "waivers.yaml"
    path.write_text("waivers:\n  - check: strict::never\n    justification: known, INC-7\n    expires: 2999-01-01\n")
    return path


def test_the_gate_stops_the_roll_at_the_batch_that_fails_it(sshd_hosts, policies, waivers, tmp_path):
    rig = sshd_hosts(["n1", "n2", "n3", "n4", "n5"])
    inv = inventory(rig, tmp_path, policies, waivers, failing="n3")
    reports = tmp_path / "roll"
    upgrade = tmp_path / "upgrade.yml"      # the operator's upgrade, on each host of a batch before its check
    upgraded = tmp_path / "upgraded"
    upgraded.mkdir()
    upgrade.write_text(f"- ansible.builtin.copy: {{dest: '{upgraded}/{{{{ inventory_hostname }}}}', content: done}}\n")
    r = playbook(tmp_path, inv, reports, vcheck_serial=2, vcheck_max_failing_nodes="0",
                 vcheck_upgrade_tasks=str(upgrade))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    # batch 1 (n1, n2) passed the gate; batch 2 (n3, n4) failed it; batch 3 (n5) never ran
    assert "fleet: 0 of 2 nodes failing (allowed 0)" in out
    assert "fleet: 1 of 4 nodes failing (allowed 0) - GATE FAILED: n3" in out
    assert sorted(p.name for p in (reports / "nodes").iterdir()) == ["n1.json", "n2.json", "n3.json", "n4.json"]
    assert sorted(p.name for p in upgraded.iterdir()) == ["n1", "n2", "n3", "n4"]     # n5 was not upgraded
    # each host answered as its own node, with its labels
    for name in ("n1", "n2", "n3", "n4"):
        node = json.loads((reports / "nodes" / f"{name}.json").read_text())["node"]
        assert node["hostname"] == name and node["labels"]["zone"] in ("a", "b")
        outcomes = {r["check"]: r["outcome"] for r in json.loads((reports / "nodes" / f"{name}.json").read_text())["results"]}
        assert outcomes == {"idle-ok": "pass", "never": "fail" if name == "n3" else "waived"}   # the host's waivers
    fleet = json.loads((reports / "fleet.json").read_text())
    assert {n["name"]: n["failing"] for n in fleet["nodes"]} == {"n1": False, "n2": False, "n3": True, "n4": False}
    assert fleet["gate"]["passed"] is False


def test_hosts_without_a_report_count_as_failing_and_are_named(sshd_hosts, policies, waivers, tmp_path):
    rig = sshd_hosts(["n1", "n2", "n3", "n4"])
    inv = inventory(rig, tmp_path, policies, waivers, failing="n3", unreachable=["gone1"])
    doc = yaml.safe_load(inv.read_text())
    doc["all"]["hosts"]["n4"]["vcheck_bin"] = "/nonexistent/vcheck"      # n4's run leaves no report
    inv.write_text(yaml.safe_dump(doc, sort_keys=False))
    reports = tmp_path / "roll"
    # two failing nodes allowed: batch 2 goes on with n3 failing and n4 reportless; batch 3's
    # unreachable host is the third, and the gate (over every host so far) fails
    r = playbook(tmp_path, inv, reports, vcheck_serial=2, vcheck_max_failing_nodes="2")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "fleet: 2 of 4 nodes failing (allowed 2): n3, n4" in out
    assert "fleet: 3 of 5 nodes failing (allowed 2) - GATE FAILED: gone1, n3, n4" in out
    fleet = {n["name"]: n for n in json.loads((reports / "fleet.json").read_text())["nodes"]}
    assert fleet["gone1"]["failing"] and fleet["gone1"]["failed"][0].startswith("ansible::unreachable: Failed to connect")
    assert fleet["n4"]["failing"] and fleet["n4"]["failed"][0].startswith("ansible::no report: vcheck run exited ")
    assert "/nonexistent/vcheck" in fleet["n4"]["failed"][0]
