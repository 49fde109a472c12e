"""A blind check never passes or skips: every shipped policy, run against a real VM that is busy
in guest mode without a single exit (kvm_exit never fires for it here), judges its KVM-exit
items inconclusive, whatever per:/select: the check uses, and the run fails."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.rig.common import REPO, VCHECK

pytestmark = pytest.mark.rig

SHIPPED = sorted((REPO / "policies").glob("*.yaml"))


def test_every_shipped_policy_is_inconclusive_for_a_spinning_vm(spinning_vm, tmp_path):
    report = tmp_path / "r.json"
    # the exit checks only: a 3 s window cannot judge the packs' for: 60s checks (refused, exit 4)
    r = subprocess.run(VCHECK + ["run", *map(str, SHIPPED), "--window", "3s", "-m", "hypervisor", "-k", "exit",
                                 "--json", str(report)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stdout + r.stderr
    results = json.loads(report.read_text())["results"]
    exits = [x for x in results if x["metric"] in ("kvm.exit.latency", "kvm.exit.rate")
             and (x["labels"] or {}).get("vm") == spinning_vm.name]
    assert exits, [x["nodeid"] for x in results]
    for x in exits:
        assert x["outcome"] == "error" and "inconclusive" in x["reason"], x
        assert "kvm_exit" in json.dumps(x["entities"]), x
    # the same data judged per VM without a reason label, and through a select on reason
    policy = tmp_path / "per.yaml"
    policy.write_text("policy: per\ndefaults: {window: 3s}\nchecks:\n"
                      "  - {id: by-vm, metric: kvm.exit.latency, per: vm, expect: 'p99 < 100us'}\n"
                      "  - {id: sel, metric: kvm.exit.latency, select: {reason: 'EPT_VIOLATION'}, expect: 'p99 < 1s'}\n"
                      "  - {id: node, metric: kvm.exit.rate, expect: 'max < 1000000'}\n")
    r = subprocess.run(VCHECK + ["run", str(policy), "--json", str(report)], capture_output=True, text=True,
                       timeout=180, cwd=tmp_path)
    outcomes = {x["nodeid"].split("::")[1]: x["outcome"] for x in json.loads(report.read_text())["results"]}
    assert outcomes[f"by-vm[{spinning_vm.name}]"] == "error", outcomes
    assert all(o in ("error", "fail") for o in outcomes.values()), outcomes
