"""The pieces of the operational features that need no node: the regress grammar, waiver
files, the Prometheus rendering, the fleet gate arithmetic, and the deploy manifests."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vcheck.expr import ExprError, parse_regress
from vcheck.report.merge import NodeResult, allowed_failures, gate
from vcheck.report.prometheus import previous_last_success, render
from vcheck.units import PERCENT, TIME

REPO = Path(__file__).resolve().parents[2]


def test_regress_relative_and_absolute():
    r = parse_regress("p99 +20%", TIME)
    assert r.relative and r.limit(1.0) == pytest.approx(1.2)
    r = parse_regress("mean +2", PERCENT)           # percentage points for a percent metric
    assert not r.relative and r.limit(5.0) == 7.0
    r = parse_regress("p99 +50us", TIME)
    assert r.limit(0.001) == pytest.approx(0.00105)


@pytest.mark.parametrize("text, words", [
    ("p99 20%", "expected '<stat>"),
    ("count +1", "not a statistic"),
    ("p99 +5MiB", "does not fit a time metric"),
    ("p99 +5parsec", "unknown unit"),
])
def test_regress_errors(text, words):
    with pytest.raises(ExprError, match=words):
        parse_regress(text, TIME)


def test_regress_in_a_policy_names_file_line_and_column(tmp_path):
    from vcheck.catalog import Catalog
    from vcheck.errors import PolicyError
    from vcheck.policy import load_policy

    p = tmp_path / "p.yaml"
    p.write_text("policy: p\nchecks:\n  - id: c\n    metric: cpu.user\n    expect: '< 50%'\n    regress: 'p99 +5ms'\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(p, Catalog())
    assert str(exc.value).startswith(f"{p}:6:") and "does not fit" in str(exc.value)


REPORT = {"node": {"hostname": 'we"ird'}, "exit_status": 1, "window": {"interrupted": False},
          "results": [{"policy": "p", "check": "c", "metric": "cpu.user", "entity": "cpu0", "outcome": "fail",
                       "entities": [{"entity": "cpu0", "outcome": "fail", "measurements": [
                           {"statistic": "max", "measured": 97.5, "threshold": 90.0}]}]}]}


def test_prometheus_rendering_escapes_and_carries_last_success():
    previous = 'vcheck_last_success_timestamp_seconds{node="x"} 1700000000\n'
    text = render(REPORT, 3.5, previous, now=1800000000)
    assert 'node="we\\"ird"' in text
    assert 'vcheck_check_value{policy="p",check="c",entity="cpu0",node="we\\"ird",metric="cpu.user",statistic="max"} 97.5' in text
    assert previous_last_success(text) == 1700000000
    assert previous_last_success(render({**REPORT, "exit_status": 0}, 1.0, previous, now=1800000000)) == 1800000000
    for line in text.splitlines():
        assert line.startswith("#") or line.split()[-1].replace(".", "", 1).replace("e+", "").isdigit()


def test_fleet_gate_arithmetic():
    assert allowed_failures("2%", 100) == 2 and allowed_failures("2%", 49) == 0 and allowed_failures("3", 10) == 3
    nodes = [NodeResult("a", "", {"zone": "1"}), NodeResult("b", "", {"zone": "1"}, failed=["x"]),
             NodeResult("c", "", {"zone": "2"})]
    assert gate(nodes, "1", None).passed
    assert not gate(nodes, "0", None).passed
    g = gate(nodes, "50%", "zone")
    assert g.passed and any("zone=1: 1 of 2" in line for line in g.lines)


def test_deploy_manifests_are_complete():
    ds = yaml.safe_load((REPO / "deploy/daemonset.yaml").read_text())
    job = yaml.safe_load((REPO / "deploy/job.yaml").read_text())
    for doc, kind in ((ds, "DaemonSet"), (job, "Job")):
        assert doc["kind"] == kind
        spec = doc["spec"]["template"]["spec"]
        assert spec["hostPID"] is True
        c = spec["containers"][0]
        caps = set(c["securityContext"]["capabilities"]["add"])
        assert {"BPF", "PERFMON"} <= caps and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert c["securityContext"].get("privileged", False) is False
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        for path in ("/host/proc", "/host/sys", "/host/run", "/sys/kernel/tracing", "/lib/modules"):
            assert path in mounts
        assert mounts["/host/proc"]["readOnly"] is True
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["VCHECK_HOST_ROOT"] == "/host"
        volumes = {v["name"] for v in spec["volumes"]}
        assert {m["name"] for m in c["volumeMounts"]} <= volumes
    text = (REPO / "deploy/daemonset.yaml").read_text()
    for cap in ("BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_ADMIN"):
        line = next(line for line in text.splitlines() if line.strip().startswith(f"- {cap}"))
        assert "#" in line, f"capability {cap} has no comment saying why"
    assert "python3-bpfcc" in (REPO / "deploy/Containerfile").read_text()
