"""Gates across runs and nodes, with real runs: one identity per result wherever vcheck was
started from, merges that count nodes, compares that judge what the reports were made with."""
from __future__ import annotations

import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.rig.common import VCHECK

pytestmark = pytest.mark.rig

FLEET = """policy: fleet
checks:
  - id: cpu-headroom
    metric: cpu.idle
    per: cpu
    expect: ">= 0%"
    window: 2s
  - id: steady
    metric: cpu.steal
    per: cpu
    expect: "< 50%"
    window: 2s
    for: 1s
"""
OTHER = "policy: other\nchecks:\n  - {id: idle, metric: cpu.idle, expect: '>= 0%', window: 1s}\n"


def vcheck(*args: str, cwd: Path, node: str = "n1", labels: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "VCHECK_NODE_NAME": node, "VCHECK_NODE_LABELS": labels}
    r = subprocess.run(VCHECK + list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=180)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same policy run from three directories, as three nodes; JSON and JUnit."""
    top = tmp_path_factory.mktemp("gates")
    (top / "fleet").mkdir()
    (top / "fleet" / "fleet.yaml").write_text(FLEET)
    (top / "elsewhere").mkdir()
    out = {}
    for node, cwd, policy in (("n1", top / "fleet", "fleet.yaml"), ("n2", top, "fleet/fleet.yaml"),
                              ("n3", top / "elsewhere", str(top / "fleet" / "fleet.yaml"))):
        r = vcheck("run", policy, "--json", str(top / f"{node}.json"), "--junitxml", str(top / f"{node}.xml"),
                   "--prom-textfile", str(top / f"{node}.prom"), cwd=cwd, node=node, labels=f"zone=z{node[-1]}")
        assert r.returncode == 0, r.stdout + r.stderr
        out[node] = top
    return top


def _ids(path: Path) -> set[str]:
    return {r["id"] for r in json.loads(path.read_text())["results"]}


def test_a_results_identity_does_not_depend_on_where_vcheck_started(runs):
    ids = [_ids(runs / f"{n}.json") for n in ("n1", "n2", "n3")]
    assert ids[0] == ids[1] == ids[2]
    assert all(i.startswith(("fleet::cpu-headroom[", "fleet::steady[")) for i in ids[0])
    for n in ("n1", "n2", "n3"):
        cases = ET.parse(runs / f"{n}.xml").getroot().iter("testcase")
        assert {f"{c.get('classname')}::{c.get('name')}" for c in cases} == ids[0]


def test_merge_counts_nodes_and_keeps_junit_labels(runs):
    r = vcheck("merge", *(str(runs / f"{n}.json") for n in ("n1", "n2")), str(runs / "n3.xml"),
               "--domain-label", "zone", "--json", str(runs / "fleet.json"), "--html", str(runs / "fleet.html"),
               cwd=runs)
    assert r.returncode == 0, r.stdout + r.stderr
    fleet = json.loads((runs / "fleet.json").read_text())
    assert {n["name"]: n["labels"].get("zone") for n in fleet["nodes"]} == {"n1": "z1", "n2": "z2", "n3": "z3"}
    page = (runs / "fleet.html").read_text()
    columns = set(re.findall(r'<th class="vc-check" title="([^"]*)"', page))
    assert columns == {"fleet::cpu-headroom", "fleet::steady"}   # one column per check, JSON and JUnit alike
    # the same node twice (the same file, or its JSON and its JUnit) is refused
    for twice in ([str(runs / "n1.json")] * 2, [str(runs / "n1.json"), str(runs / "n1.xml")]):
        r = vcheck("merge", *twice, cwd=runs)
        assert r.returncode == 4 and "already in" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_merge_refuses_reports_of_different_policies_unless_asked(runs, tmp_path):
    (tmp_path / "other.yaml").write_text(OTHER)
    r = vcheck("run", "other.yaml", "--json", str(tmp_path / "o.json"), cwd=tmp_path, node="n9")
    assert r.returncode == 0, r.stdout + r.stderr
    r = vcheck("merge", str(runs / "n1.json"), str(tmp_path / "o.json"), cwd=tmp_path)
    assert r.returncode == 4 and "--allow-mixed-policies" in r.stderr, r.stderr
    r = vcheck("merge", str(runs / "n1.json"), str(tmp_path / "o.json"), "--allow-mixed-policies", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compare_judges_the_policy_the_reports_were_made_with(runs, tmp_path):
    r = vcheck("compare", str(runs / "n1.json"), str(runs / "n1.json"), "--json", str(tmp_path / "c.json"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _ids(tmp_path / "c.json") == _ids(runs / "n1.json")      # the fleet policy, not the bundled pack
    r = vcheck("compare", str(runs / "n1.json"), str(runs / "n2.json"), cwd=tmp_path)
    assert r.returncode == 4 and "--allow-different-nodes" in r.stderr, r.stderr
    r = vcheck("compare", str(runs / "n1.json"), str(runs / "n2.json"), "--allow-different-nodes", cwd=tmp_path)
    assert r.returncode == 0 and "comparing different nodes" in r.stderr, r.stdout + r.stderr
    # the policy file moved away: the text the report carries is judged
    moved = json.loads((runs / "n1.json").read_text())
    for p in moved["policies"]:
        p["path"] = str(tmp_path / "gone.yaml")
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    r = vcheck("compare", str(tmp_path / "moved.json"), str(tmp_path / "moved.json"), "--json",
               str(tmp_path / "m.json"), cwd=tmp_path)
    assert r.returncode == 0 and _ids(tmp_path / "m.json") == _ids(runs / "n1.json"), r.stdout + r.stderr


def test_what_can_only_end_inconclusive_is_refused_before_sampling(runs, tmp_path):
    r = vcheck("run", str(runs / "fleet" / "fleet.yaml"), "--window", "0.5s", cwd=tmp_path)
    assert r.returncode == 4 and "fleet.yaml:8:" in r.stderr and "for: 1s" in r.stderr, r.stderr
    r = vcheck("explain", str(runs / "n1.json"), "no-such-check", cwd=tmp_path)
    assert r.returncode == 4 and "fleet::cpu-headroom[" in r.stderr, r.stderr


def test_sustained_checks_export_their_figure_and_thresholds(runs):
    prom = (runs / "n1.prom").read_text()
    value = [ln for ln in prom.splitlines() if ln.startswith("vcheck_check_value{") and 'check="steady"' in ln]
    threshold = [ln for ln in prom.splitlines() if ln.startswith("vcheck_check_threshold{") and 'check="steady"' in ln]
    assert any('statistic="sustained 1s"' in ln for ln in value), prom
    assert any('statistic="sustained 1s"' in ln and ln.endswith(" 50") for ln in threshold), prom
    assert any('statistic="longest violation"' in ln and ln.endswith(" 1") for ln in threshold), prom
