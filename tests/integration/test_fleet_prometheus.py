"""The cron mode across a fleet, on the real servers: node_exporters on loopback ports, each
with its own textfile directory written by real `vcheck run` invocations under different node
names and labels; a real Prometheus scraping them with the shipped rules; its HTTP API shows
the failing node's alert and the fleet gate, and `vcheck gate --prometheus` decides as
`vcheck merge` does on the same runs' JSON reports."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.rig.common import VCHECK
from tests.rig.fleet import rfc3339, tuned_rules

pytestmark = pytest.mark.rig

PASSING = """\
policy: ops
defaults: {window: 1s, interval: 1s}
checks:
  - {id: idle-ok, metric: cpu.idle, expect: "<= 100%"}
"""

FAILING = """\
policy: ops
defaults: {window: 1s, interval: 1s}
checks:
  - {id: idle-ok, metric: cpu.idle, expect: "<= 100%"}
  - {id: never, metric: cpu.idle, per: cpu, expect: "< 0%"}
"""

NODES = (("n1", "a"), ("n2", "a"), ("n3", "b"), ("n4", "b"))


def vcheck(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(VCHECK + list(args), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def observed(policy_file, tmp_path) -> Path:
    """One real run's observations; each node's runs below judge them again (--replay), so
    four nodes cost one window."""
    report = tmp_path / "observed.json"
    r = vcheck("run", str(policy_file(PASSING, "observe.yaml")), "--json", str(report))
    assert r.returncode == 0, r.stdout + r.stderr
    return report


def run_node(name: str, zone: str, policy: Path, observed: Path, textfile: Path, report: Path, *args: str) -> int:
    """`vcheck run` as a node's cron job runs it: the textfile for node_exporter and the JSON."""
    r = vcheck("run", str(policy), "--replay", str(observed), "--prom-textfile", str(textfile), "--json", str(report),
               *args, env={"VCHECK_NODE_NAME": name, "VCHECK_NODE_LABELS": f"zone={zone},rack=r-{name}"})
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r.returncode


def waiver_file(path: Path, expires: str) -> Path:
    path.write_text(f"waivers:\n  - check: ops::never\n    justification: known, INC-7\n    expires: {expires}\n")
    return path


def test_prometheus_alerts_on_the_failing_node_and_gates_the_fleet(node_exporters, prometheus_server, policy_file,
                                                                     observed, tmp_path):
    # one policy set on every node; the check "never" fails everywhere and is waived (a known
    # failure) until n3's waiver expires
    policy = policy_file(FAILING, "ops.yaml")
    waived = waiver_file(tmp_path / "waivers.yaml", "2999-01-01")
    expired = waiver_file(tmp_path / "expired.yaml", (dt.date.today() - dt.timedelta(days=1)).isoformat())
    exporters = node_exporters(len(NODES) + 1)       # the last one's node never ran vcheck
    reports = {}
    for (name, zone), ne in zip(NODES, exporters):
        reports[name] = tmp_path / f"{name}.json"
        assert run_node(name, zone, policy, observed, ne.textfile, reports[name], "--waivers", str(waived)) == 0
    prom = prometheus_server([ne.target for ne in exporters],
                             tuned_rules(stale_after=120, max_failing_ratio=0.25))
    prom.wait_for("the four nodes' vcheck series",
                  lambda: len(prom.query("vcheck:node_failing == 0")) == 4 and prom.query("vcheck:fleet_nodes"))
    assert prom.alerts("VcheckCheckFailing") == [] and prom.alerts("VcheckFleetGate") == []

    assert prom.query('vcheck_check_status{outcome="waived"} == 0')      # waived: said, not alerted
    # n3's waiver has expired: its next run fails, and its alert fires, from the change (not before it)
    changed = time.time()
    assert run_node("n3", "b", policy, observed, exporters[2].textfile, reports["n3"], "--waivers", str(expired)) == 1
    changed = min(changed, exporters[2].textfile.stat().st_mtime)
    alerts = prom.wait_for("n3's VcheckCheckFailing alert", lambda: prom.alerts("VcheckCheckFailing"))
    assert {a["labels"]["node"] for a in alerts} == {"n3"}
    cpus = {r["entity"] for r in json.loads(reports["n3"].read_text())["results"] if r["check"] == "never"}
    assert cpus and {a["labels"]["entity"] for a in alerts} == cpus
    assert all(a["labels"]["check"] == "never" and a["labels"]["instance"] == exporters[2].target for a in alerts)
    active_at = min(rfc3339(a["activeAt"]) for a in alerts)
    assert active_at >= changed - 1.0, (active_at, changed)     # became active after the textfile changed
    print(f"\nVcheckCheckFailing active {active_at - changed:.2f} s after n3's textfile changed (scrape and "
          "evaluation interval 1 s)")

    # the gate: zone b has 1 of 2 nodes failing (50% > 25%); zone a and the fleet (25%) do not
    domain = prom.wait_for("the zone b gate alert", lambda: prom.alerts("VcheckDomainGate"))
    assert {(a["labels"]["key"], a["labels"]["value"]) for a in domain} >= {("zone", "b")}
    assert ("zone", "a") not in {(a["labels"]["key"], a["labels"]["value"]) for a in domain}
    assert prom.alerts("VcheckFleetGate") == []
    ratio = {(s["metric"]["key"], s["metric"]["value"]): float(s["value"][1])
             for s in prom.query("vcheck:domain_failing_ratio")}
    assert ratio[("zone", "a")] == 0 and ratio[("zone", "b")] == 0.5 and ratio[("rack", "r-n3")] == 1

    # vcheck gate on Prometheus and vcheck merge on the same runs' reports decide alike; the
    # node_exporter without vcheck is a fifth node, failing, named by its address
    gate = vcheck("gate", "--prometheus", prom.url, "--max-failing-nodes", "25%", "--domain-label", "zone",
                  "--json", str(tmp_path / "gate.json"), "--junitxml", str(tmp_path / "gate.xml"),
                  "--html", str(tmp_path / "gate.html"))
    merge = vcheck("merge", *[str(reports[n]) for n, _ in NODES], "--max-failing-nodes", "25%",
                   "--domain-label", "zone", "--json", str(tmp_path / "merge.json"))
    assert merge.returncode == 1 and gate.returncode == 1, gate.stdout + gate.stderr
    g, m = json.loads((tmp_path / "gate.json").read_text()), json.loads((tmp_path / "merge.json").read_text())
    silent = exporters[-1].target
    assert {n["name"] for n in g["nodes"] if n["failing"]} == {n["name"] for n in m["nodes"] if n["failing"]} | {silent}
    assert "zone=b: 1 of 2 nodes failing (allowed 0) - GATE FAILED: n3" in gate.stdout
    assert "zone=b: 1 of 2 nodes failing (allowed 0) - GATE FAILED: n3" in merge.stdout
    assert "zone=a: 0 of 2 nodes failing (allowed 0)" in gate.stdout
    assert f"(no label): 1 of 1 nodes failing (allowed 0) - GATE FAILED: {silent}" in gate.stdout
    junit = (tmp_path / "gate.xml").read_text()
    assert '<testsuite name="n3"' in junit and f"ops::never[{min(cpus)}]" in junit
    page = (tmp_path / "gate.html").read_text()
    assert "gate FAILED" in page and 'data-node="n3"' in page and "<h2>zone=b</h2>" in page
    n3 = next(n for n in g["nodes"] if n["name"] == "n3")
    assert n3["failed"] == sorted(f"ops::never[{cpu}]" for cpu in cpus) == \
        sorted(next(n for n in m["nodes"] if n["name"] == "n3")["failed"])
    assert n3["counts"] == {"pass": 1, "fail": len(cpus)} == next(n for n in m["nodes"] if n["name"] == "n3")["counts"]

    # n4's textfile is old (node_exporter's mtime): its result is stale, and the gate fails it
    old = time.time() - 3600
    os.utime(exporters[3].textfile, (old, old))
    stale = prom.wait_for("n4's VcheckResultStale alert", lambda: prom.alerts("VcheckResultStale"))
    assert {a["labels"]["node"] for a in stale} == {"n4"}
    # n2's node_exporter stops: its series go, and it still counts, as failing
    exporters[1].stop()
    prom.wait_for("n2 gone", lambda: prom.query('up{instance="%s"} == 0' % exporters[1].target))
    gate = vcheck("gate", "--prometheus", prom.url, "--max-failing-nodes", "1", "--json", str(tmp_path / "gate2.json"))
    assert gate.returncode == 1, gate.stdout + gate.stderr
    failed = {n["name"]: n["failed"] for n in json.loads((tmp_path / "gate2.json").read_text())["nodes"] if n["failing"]}
    assert set(failed) == {"n2", "n3", "n4", silent}, failed
    assert failed["n2"][0].startswith("(no vcheck series now") and failed["n4"][0].startswith("(stale:")
    prom.wait_for("the rules counting n2 as failing", lambda: prom.query("vcheck:node_failing{node='n2'} == 1"))


def test_gate_refuses_to_pass_without_an_answer(prometheus_server, node_exporters, silent_server, trickling_server,
                                                tmp_path):
    # a Prometheus that never answers, or never finishes its answer: one line, exit 4, bounded
    for url in (silent_server, trickling_server):
        t = time.monotonic()
        r = vcheck("gate", "--prometheus", url, "--timeout", "1s", "--max-failing-nodes", "100%")
        assert r.returncode == 4 and r.stdout == "" and "Traceback" not in r.stderr
        assert r.stderr.strip() == f"vcheck: Prometheus at {url}: no answer within 1s (--timeout)"
        assert time.monotonic() - t < 60
    # nothing listening
    (ne,) = node_exporters(1)
    port = ne.port
    ne.stop()
    r = vcheck("gate", "--prometheus", f"http://127.0.0.1:{port}")
    assert r.returncode == 4 and "cannot connect" in r.stderr and r.stderr.count("\n") == 1
    # something that is not Prometheus' API (node_exporter's own web server)
    (ne,) = node_exporters(1)
    r = vcheck("gate", "--prometheus", f"http://{ne.target}")
    assert r.returncode == 4 and "the answer is not JSON" in r.stderr and r.stderr.count("\n") == 1
    # a real Prometheus that holds no vcheck series: nothing to gate, exit 5
    prom = prometheus_server([ne.target])
    prom.wait_for("a scrape", lambda: prom.query("up == 1"))
    r = vcheck("gate", "--prometheus", prom.url, "--max-failing-nodes", "100%")
    assert r.returncode == 5 and "holds no vcheck series" in r.stderr and r.stdout == ""


def test_gate_says_when_two_vcheck_versions_or_two_targets_report(node_exporters, prometheus_server, policy_file,
                                                                    observed, tmp_path):
    passing = policy_file(PASSING, "pass.yaml")
    a, b, c = node_exporters(3)
    run_node("n1", "a", passing, observed, a.textfile, tmp_path / "n1.json")
    run_node("n2", "a", passing, observed, b.textfile, tmp_path / "n2.json")
    # n2's file as an older vcheck wrote it (its version label)
    text = b.textfile.read_text()
    tmp = b.textdir / ".vcheck.prom.tmp"          # node_exporter reads *.prom only
    tmp.write_text(text.replace('version="', 'version="0.0.1-old'))
    tmp.rename(b.textfile)
    # a third target serving n1's file as well (a node scraped twice)
    shutil.copy(a.textfile, c.textdir / ".vcheck.prom.tmp")
    (c.textdir / ".vcheck.prom.tmp").rename(c.textfile)
    prom = prometheus_server([a.target, b.target, c.target])
    prom.wait_for("two versions", lambda: len(prom.query("count by (version) (vcheck_run_info)")) == 2
                  and len(prom.query("vcheck_run_timestamp_seconds")) == 3)
    r = vcheck("gate", "--prometheus", prom.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fleet: 0 of 2 nodes failing" in r.stdout
    assert "come from 2 vcheck versions" in r.stderr and "0.0.1-old" in r.stderr
    assert f"node n1 is reported by 2 targets ({', '.join(sorted([a.target, c.target]))})" in r.stderr


def test_gate_refuses_mixed_policy_sets_as_merge_does(node_exporters, prometheus_server, policy_file, observed,
                                                      tmp_path):
    a, b = node_exporters(2)
    run_node("n1", "a", policy_file(PASSING, "ops.yaml"), observed, a.textfile, tmp_path / "n1.json")
    other = tmp_path / "other"
    other.mkdir()
    run_node("n2", "a", policy_file(PASSING.replace("defaults:", "description: another version\ndefaults:"), "other/ops.yaml"), observed, b.textfile,
             tmp_path / "n2.json")
    prom = prometheus_server([a.target, b.target])
    prom.wait_for("both nodes", lambda: len(prom.query("vcheck_run_info")) == 2)
    gate = vcheck("gate", "--prometheus", prom.url)
    merge = vcheck("merge", str(tmp_path / "n1.json"), str(tmp_path / "n2.json"))
    assert gate.returncode == merge.returncode == 4 and gate.stdout == "", gate.stderr + merge.stderr
    assert "was judged with policies ops (" in gate.stderr and "node n1" in gate.stderr and "node n2" in gate.stderr
    assert "or give --allow-mixed-policies" in gate.stderr and gate.stderr.count("\n") == 1
    gate = vcheck("gate", "--prometheus", prom.url, "--allow-mixed-policies")
    merge = vcheck("merge", str(tmp_path / "n1.json"), str(tmp_path / "n2.json"), "--allow-mixed-policies")
    assert gate.returncode == merge.returncode == 0 and "fleet: 0 of 2 nodes failing" in gate.stdout


THIN = FAILING + '  - {id: thin, metric: cpu.idle, expect: "<= 100%", for: 5s, window: 5s}\n'


def test_gate_and_merge_agree_on_every_way_a_node_fails(node_exporters, prometheus_server, policy_file, observed,
                                                        tmp_path):
    """One node per way, one policy set (which checks a node runs is chosen with -k): passing, a
    failed check, a waived failure, an inconclusive check, an interrupted run, nothing judged.
    `vcheck gate` on their series and `vcheck merge` on the same runs' reports fail the same
    nodes, naming the same items and run-level reasons, line for line."""
    policy = str(policy_file(THIN, "ops.yaml"))
    waivers = waiver_file(tmp_path / "waivers.yaml", "2999-01-01")
    replay = ["--replay", str(observed)]
    runs = {"ok": ([*replay, "-k", "idle-ok"], 0),
            "fail": ([*replay, "-k", "idle-ok or never"], 1),
            "waived": ([*replay, "-k", "not thin", "--waivers", str(waivers)], 0),
            "thin": ([*replay, "-k", "idle-ok or thin"], 1),
            "cut": (["-k", "idle-ok", "--window", "5s", "--timeout", "1s"], 2),      # a real window, cut short
            "empty": ([*replay, "-k", "nothing-matches"], 5)}
    exporters = dict(zip(runs, node_exporters(len(runs))))
    for name, (args, expected) in runs.items():
        r = vcheck("run", policy, *args, "--prom-textfile", str(exporters[name].textfile),
                   "--json", str(tmp_path / f"{name}.json"),
                   env={"VCHECK_NODE_NAME": name})
        assert r.returncode == expected, (name, r.stdout[-500:], r.stderr[-500:])
    prom = prometheus_server([ne.target for ne in exporters.values()], tuned_rules(stale_after=300, max_failing_ratio=0.5))
    prom.wait_for("six nodes", lambda: prom.query("vcheck:fleet_nodes == 6"))
    gate = vcheck("gate", "--prometheus", prom.url, "--max-failing-nodes", "50%", "--json", str(tmp_path / "gate.json"))
    merge = vcheck("merge", *[str(tmp_path / f"{n}.json") for n in sorted(runs)], "--max-failing-nodes", "50%",
                   "--json", str(tmp_path / "merge.json"))
    assert gate.returncode == merge.returncode == 1, gate.stdout + gate.stderr + merge.stdout + merge.stderr
    assert gate.stdout.splitlines()[0] == merge.stdout.splitlines()[0] == \
        "fleet: 4 of 6 nodes failing (allowed 3) - GATE FAILED: cut, empty, fail, thin"

    def verdicts(path: Path) -> dict[str, tuple[bool, list[str]]]:       # items as policy::check[entity]
        return {n["name"]: (n["failing"], sorted(n["failed"])) for n in json.loads(path.read_text())["nodes"]}
    assert verdicts(tmp_path / "gate.json") == verdicts(tmp_path / "merge.json")
    assert verdicts(tmp_path / "gate.json")["thin"] == (True, ["ops::thin"])
    assert verdicts(tmp_path / "gate.json")["cut"] == (True, ["(run interrupted)"])
    assert verdicts(tmp_path / "gate.json")["empty"] == (True, ["(exit 5: nothing collected)"])
    # the rules count the same nodes
    failing = {s["metric"]["node"] for s in prom.query("vcheck:node_failing == 1")}
    assert failing == {"cut", "empty", "fail", "thin"}
