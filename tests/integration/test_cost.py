"""vcheck states its own cost, and the figures are what the kernel says of the same process."""
from __future__ import annotations

import json
import resource
import subprocess
import time

import pytest

from tests.rig.common import VCHECK

pytestmark = pytest.mark.rig


def test_report_cost_agrees_with_getrusage_of_the_same_process(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("policy: c\nchecks:\n  - {id: u, metric: cpu.user, expect: '<= 100%', window: 2s}\n")
    report, prom = tmp_path / "r.json", tmp_path / "r.prom"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    r = subprocess.run(VCHECK + ["run", str(policy), "--json", str(report), "--prom-textfile", str(prom)],
                       capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r.returncode == 0, r.stdout + r.stderr
    cost = json.loads(report.read_text())["cost"]
    child_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # the report is written before the process ends: its figure is at most the final one
    assert 0.9 * cost["cpu_seconds"] <= child_cpu and cost["cpu_seconds"] >= 0.9 * child_cpu - 0.2
    # the children's ru_maxrss is the largest of every child this test process ever waited for
    assert 10 << 20 < cost["max_rss_bytes"] <= after.ru_maxrss * 1024
    window_start = json.loads(report.read_text())["window"]["start"]
    assert 0 < cost["startup_seconds"] <= window_start - started + 0.5
    assert "vcheck's own cost:" in r.stdout
    text = prom.read_text()
    for name in ("vcheck_run_cpu_seconds", "vcheck_run_max_rss_bytes", "vcheck_run_startup_seconds"):
        assert f"\n{name}{{" in text
