"""The host's cgroup layer (systemd-cgtop's view) against real v1 cgroups made by the test: a
quota'd hog is throttled and named, its idle sibling is not; figures match the cgroup's own
files."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.rig.common import VCHECK, remove_cgroup_tree, require_root

pytestmark = pytest.mark.rig

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio")
TOP = "vcheck-cgrig"


@pytest.fixture
def cgroup_pair():
    """/vcheck-cgrig/hog (20% of a CPU, a busy loop inside) and /vcheck-cgrig/idle (a sleeper)."""
    require_root()
    procs = []
    for name in ("hog", "idle"):
        for c in CONTROLLERS:
            (ROOT / c / TOP / name).mkdir(parents=True, exist_ok=True)
    (ROOT / "cpu" / TOP / "hog" / "cpu.cfs_quota_us").write_text("20000")
    code = {"hog": "while True: pass", "idle": "import time\nx = bytearray(8 << 20)\ntime.sleep(3600)"}
    for name in ("hog", "idle"):
        p = subprocess.Popen([sys.executable, "-c", code[name]])
        procs.append(p)
        for c in CONTROLLERS:
            (ROOT / c / TOP / name / "cgroup.procs").write_text(str(p.pid))
    time.sleep(0.5)
    yield procs
    for p in procs:
        p.kill()
        p.wait()
    time.sleep(0.2)
    remove_cgroup_tree(TOP)


def test_throttled_cgroup_fails_and_its_sibling_does_not(cgroup_pair, tmp_path):
    policy = tmp_path / "cg.yaml"
    policy.write_text(f"""\
policy: cg
defaults: {{window: 3s, interval: 1s}}
checks:
  - {{id: throttled, metric: cgroup.cpu.throttled, per: cgroup, select: {{cgroup: "/{TOP}/*"}}, expect: "< 5%"}}
  - {{id: mem, metric: cgroup.memory, per: cgroup, select: {{cgroup: "/{TOP}/*"}}, expect: "< 1GiB"}}
  - {{id: pids, metric: cgroup.pids, per: cgroup, select: {{cgroup: "/{TOP}/*"}}, expect: "<= 1"}}
  - {{id: top, metric: cgroup.cpu, per: cgroup, expect: "<= 400%"}}
""")
    report = tmp_path / "r.json"
    r = subprocess.run(VCHECK + ["run", str(policy), "--json", str(report)], capture_output=True, text=True,
                       timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    results = {x["nodeid"].split("::")[1]: x for x in json.loads(report.read_text())["results"]}
    assert results[f"throttled[/{TOP}/hog]"]["outcome"] == "fail", results[f"throttled[/{TOP}/hog]"]
    assert results[f"throttled[/{TOP}/idle]"]["outcome"] == "pass"
    hog_cpu = results[f"throttled[/{TOP}/hog]"]["entities"][0]["info"]
    assert hog_cpu["cpu_limit"] == "0.2 CPU"
    # memory and pids agree with the cgroup's own files, read here independently
    stat = dict(line.split() for line in (ROOT / "memory" / TOP / "idle" / "memory.stat").read_text().splitlines())
    usage = int((ROOT / "memory" / TOP / "idle" / "memory.usage_in_bytes").read_text())
    working = usage - int(stat["total_inactive_file"])
    measured = results[f"mem[/{TOP}/idle]"]["entities"][0]["series"]["mean"]
    assert abs(measured - working) <= max(1 << 20, 0.1 * working), (measured, working)
    assert results[f"pids[/{TOP}/idle]"]["entities"][0]["series"]["max"] == 1.0
    # default depth: the tree's top two levels are items, nothing deeper
    assert f"top[/{TOP}]" in results and f"top[/{TOP}/hog]" in results
    assert not any(k.count("/") > 2 for k in results if k.startswith("top["))
