"""The host's cgroup layer (systemd-cgtop's view) against real v1 cgroups made by the test: a
quota'd hog is throttled and named, its idle sibling is not; figures match the cgroup's own
files."""
from __future__ import annotations

import json
import os
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


# --- v1 cgroups in some controllers only ------------------------------------------------------

PART = "vcheck-cgpart"
MEM_TASK = "import time\nx = bytearray(100 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\ntime.sleep(3600)"


def _join(pid: int, name: str, controllers: tuple[str, ...]) -> None:
    for c in controllers:
        (ROOT / c / PART / name / "cgroup.procs").write_text(str(pid))


@pytest.fixture
def partial_cgroups():
    """/vcheck-cgpart/cpuonly (cpu only, 10% quota, a busy loop), /vcheck-cgpart/nomem (cpu,
    cpuacct, blkio; three tasks holding ~100 MiB; not in memory nor pids) and
    /vcheck-cgpart/memonly (memory and pids only, one sleeper): a v1 node's trees disagree."""
    require_root()
    layout = {"cpuonly": ("cpu",), "nomem": ("cpu", "cpuacct", "blkio"), "memonly": ("memory", "pids")}
    for name, controllers in layout.items():
        for c in controllers:
            (ROOT / c / PART / name).mkdir(parents=True, exist_ok=True)
    (ROOT / "cpu" / PART / "cpuonly" / "cpu.cfs_quota_us").write_text("10000")
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]
    _join(procs[0].pid, "cpuonly", layout["cpuonly"])
    for code in (MEM_TASK, "import time; time.sleep(3600)", "import time; time.sleep(3600)"):
        procs.append(subprocess.Popen([sys.executable, "-c", code]))
        _join(procs[-1].pid, "nomem", layout["nomem"])
    procs.append(subprocess.Popen([sys.executable, "-c", "import time\nx = bytearray(8 << 20)\ntime.sleep(3600)"]))
    _join(procs[-1].pid, "memonly", layout["memonly"])
    time.sleep(1.0)   # the 100 MiB are touched
    yield layout
    for p in procs:
        p.kill()
        p.wait()
    time.sleep(0.2)
    remove_cgroup_tree(PART)


def _cpu_stat(name: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in (ROOT / "cpu" / PART / name / "cpu.stat").read_text().splitlines())}


def test_each_figure_comes_from_the_controller_that_holds_the_cgroup(partial_cgroups, tmp_path):
    policy = tmp_path / "cg.yaml"
    sel = f'select: {{cgroup: "/{PART}/*"}}'
    policy.write_text(f"""\
policy: cgpart
defaults: {{window: 3s, interval: 1s}}
checks:
  - {{id: throttled, metric: cgroup.cpu.throttled, per: cgroup, {sel}, expect: "< 5%"}}
  - {{id: cpu, metric: cgroup.cpu, per: cgroup, {sel}, expect: "< 400%"}}
  - {{id: mem, metric: cgroup.memory, per: cgroup, {sel}, expect: "< 1GiB"}}
  - {{id: pids, metric: cgroup.pids, per: cgroup, {sel}, expect: "< 100"}}
""")
    report = tmp_path / "r.json"
    before = _cpu_stat("cpuonly")
    r = subprocess.run(VCHECK + ["run", str(policy), "--json", str(report)], capture_output=True, text=True,
                       timeout=120)
    after = _cpu_stat("cpuonly")
    assert "Traceback" not in r.stderr, r.stderr
    results = {x["nodeid"].split("::")[1]: x for x in json.loads(report.read_text())["results"]}
    # every cgroup of every tree is an item: memonly is in no cpu tree and still listed
    for check in ("throttled", "cpu", "mem", "pids"):
        for name in partial_cgroups:
            assert f"{check}[/{PART}/{name}]" in results, (check, name, sorted(results))

    def res(check: str, name: str) -> dict:
        return results[f"{check}[/{PART}/{name}]"]

    # cpuonly: throttling from its own cpu.stat; no CPU time, because cpuacct does not hold it
    kernel = 100.0 * (after["nr_throttled"] - before["nr_throttled"]) / max(1, after["nr_periods"] - before["nr_periods"])
    thr = res("throttled", "cpuonly")
    assert kernel > 50, f"the kernel throttled the 10% hog in only {kernel:.1f}% of periods"
    assert thr["outcome"] == "fail", thr
    assert abs(thr["entities"][0]["series"]["mean"] - kernel) < 20, (thr["entities"][0]["series"], kernel)
    assert res("cpu", "cpuonly")["outcome"] == "fail"
    assert "not in the cpuacct hierarchy" in res("cpu", "cpuonly")["reason"]
    # nomem: 3 tasks, ~100 MiB, but in neither memory nor pids: no zero that passes
    for check, controller in (("mem", "memory"), ("pids", "pids")):
        got = res(check, "nomem")
        assert got["outcome"] != "pass" and f"not in the {controller} hierarchy" in got["reason"], got
    assert res("cpu", "nomem")["outcome"] == "pass"
    # memonly: its memory figure is its own file's
    stat = dict(line.split() for line in (ROOT / "memory" / PART / "memonly" / "memory.stat").read_text().splitlines())
    working = int((ROOT / "memory" / PART / "memonly" / "memory.usage_in_bytes").read_text()) - int(stat["total_inactive_file"])
    measured = res("mem", "memonly")["entities"][0]["series"]["mean"]
    assert abs(measured - working) <= max(1 << 20, 0.1 * working), (measured, working)
    assert res("pids", "memonly")["entities"][0]["series"]["max"] == 1.0
    assert "not in the cpu hierarchy" in res("throttled", "memonly")["reason"]


# --- blkio counters that count only under a throttle rule ------------------------------------

WRITER = """
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
i = 0
while True:
    os.pwrite(fd, buf, (i % 16) << 20)
    i += 1
    time.sleep(0.05)
"""


def _blkio_bytes(name: str, dev: str) -> int:
    text = (ROOT / "blkio" / PART / name / "blkio.throttle.io_service_bytes").read_text()
    return sum(int(p[2]) for p in (line.split() for line in text.splitlines())
               if len(p) == 3 and p[0] == dev and p[1] in ("Read", "Write"))


def test_blkio_zero_without_a_throttle_rule_is_blind_and_counted_with_one(tmp_path):
    """A writer on a loop device no throttle rule ever touched: blkio counts nothing, vcheck
    says its figure is blind (not 0 B/s). With a rule set (a limit far above the writer), the
    same check fails on the bytes blkio now counts, and they match the cgroup's own file."""
    require_root()
    from tests.rig.io import fresh_loop_device
    policy = tmp_path / "io.yaml"
    policy.write_text(f"""\
policy: cgio
defaults: {{window: 3s, interval: 1s}}
checks:
  - {{id: io, metric: cgroup.io.bytes, per: cgroup, select: {{cgroup: "/{PART}/writer"}}, expect: "< 1KiB"}}
""")
    (ROOT / "blkio" / PART / "writer").mkdir(parents=True, exist_ok=True)
    try:
        with fresh_loop_device() as loop:
            dev = f"{os.major(os.stat('/dev/' + loop).st_rdev)}:{os.minor(os.stat('/dev/' + loop).st_rdev)}"
            procs = (ROOT / "blkio" / PART / "writer" / "cgroup.procs")
            writer = subprocess.Popen(["sh", "-c", f'echo $$ > {procs} && exec "$0" -c "$1" "$2"',
                                       sys.executable, WRITER, f"/dev/{loop}"])
            try:
                for phase in ("no rule", "rule"):
                    if phase == "rule":
                        (ROOT / "blkio" / PART / "writer" / "blkio.throttle.write_bps_device").write_text(
                            f"{dev} {1 << 40}")
                    report = tmp_path / f"{phase}.json"
                    before, t0 = _blkio_bytes("writer", dev), time.monotonic()
                    r = subprocess.run(VCHECK + ["run", str(policy), "--json", str(report)], capture_output=True,
                                       text=True, timeout=120)
                    counted, elapsed = _blkio_bytes("writer", dev) - before, time.monotonic() - t0
                    assert "Traceback" not in r.stderr, r.stderr
                    data = json.loads(report.read_text())
                    (res,) = [x for x in data["results"] if x["check"] == "io"]
                    if counted == 0:
                        # the kernel's own file did not move while the writer wrote: blind, said so
                        assert phase == "no rule", "blkio counted nothing under a throttle rule"
                        assert res["outcome"] == "error", res
                        assert "blkio counted none" in res["reason"] and "throttle rule" in res["reason"], res
                    else:
                        assert res["outcome"] == "fail", res
                        mean = res["entities"][0]["series"]["mean"]
                        window = (data.get("window") or {}).get("observed") or 3.0
                        # vcheck's bytes in its window are a part of what the file counted over the run
                        assert 0 < mean * window <= counted * 1.1 + (1 << 20), (mean, window, counted)
                        assert mean >= 0.3 * counted / elapsed, (mean, counted, elapsed)
            finally:
                writer.kill()
                writer.wait()
    finally:
        time.sleep(0.1)
        remove_cgroup_tree(PART)


def test_kept_open_files_give_fresh_figures_and_a_removed_cgroup_is_gone(cgroup_pair):
    """Each sample re-reads the cgroup files through descriptors kept open (pread at offset 0):
    the hog's CPU keeps moving sample after sample (a stale read would give 0 %), only the files
    cgroup.cpu needs are open, and a cgroup removed mid-window is reported gone, not errored."""
    from vcheck.catalog import Catalog
    from vcheck.collectors.base import CollectContext, CollectRequest
    from vcheck.collectors.cgroups import CgroupCollector
    from vcheck.observations import ObservationStore
    from vcheck.policy import load_policy_bytes
    from vcheck.procfs import HostRoots

    (ROOT / "cpu" / TOP / "spare").mkdir()
    for c in CONTROLLERS[1:]:
        (ROOT / c / TOP / "spare").mkdir()
    policy = load_policy_bytes(f"policy: t\nchecks:\n  - {{id: c, metric: cgroup.cpu, per: cgroup, "
                               f"select: {{cgroup: '/{TOP}/*'}}, expect: '< 100%'}}\n".encode(), "t", Catalog())
    store = ObservationStore()
    c = CgroupCollector(CollectContext(HostRoots(), store),
                        CollectRequest(frozenset({"cgroup.cpu"}), 60.0, 1.0, selections=[policy.checks[0].select]))
    c.start()
    c.begin(time.monotonic())
    try:
        for k in (1, 2, 3):
            time.sleep(0.4)
            c.sample(float(k))
            if k == 2:
                for ctl in CONTROLLERS:
                    (ROOT / ctl / TOP / "spare").rmdir()
        opened = sorted({Path(p).name for p in c._files._fds})
    finally:
        c.close()
    hog = store.matching("cgroup.cpu", {"cgroup": f"/{TOP}/hog"})[0]
    assert len(hog.values) == 3 and all(v > 0.5 for v in hog.values), hog.values      # a stale read: 0
    spare = store.matching("cgroup.cpu", {"cgroup": f"/{TOP}/spare"})[0]
    assert spare.gone_at == 3.0 and "was removed" in spare.gone_reason and len(spare.values) == 2
    assert opened == ["cpuacct.usage"]
