"""The BPF engine and the guest latency collectors against real block I/O and real scheduling.

Cross-checks: vcheck's I/O count per op against /proc/diskstats for the same window (plain
writes, fsync flushes, FUA writes on a device without FUA), its percentiles against an exact
per-event capture of the same I/Os, and `bpftool prog show` for leaks. Every test runs on
each BPF path, forced with VCHECK_BPF_PATH (CO-RE through libbpf, and bcc).
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.rig.common import VCHECK, require_root, vcheck_programs
from tests.rig.io import (background_writes, cpu_hogs, direct_writes, dsync_writes, fsync_writes, loop_filesystem, preallocated,
                          loop_device, root_device)
from vcheck import probes
from vcheck.collectors import disk
from vcheck.collectors.base import CollectContext, CollectRequest
from vcheck.collectors.disk import BlockLatencyCollector, parse_diskstats
from vcheck.histogram import RELATIVE_ERROR
from vcheck.observations import ObservationStore
from vcheck.procfs import HostRoots

pytestmark = pytest.mark.rig


@pytest.fixture(params=probes.PATHS, autouse=True)
def bpf_path(request, monkeypatch) -> str:
    """The path every program of the test (and of a vcheck it starts) must take."""
    monkeypatch.setenv(probes.PATH_ENV, request.param)
    return request.param


@pytest.fixture
def no_programs_before():
    require_root()
    assert vcheck_programs() == [], "a vchk_ program was loaded before the test"


def block_collector(threshold: float | None = None) -> tuple[BlockLatencyCollector, ObservationStore]:
    store = ObservationStore()
    req = CollectRequest(frozenset({"block.latency"}), 5.0, 1.0,
                         {"block.latency": threshold} if threshold is not None else {})
    return BlockLatencyCollector(CollectContext(HostRoots(), store), req), store


def completed_by_op(device: str) -> dict[str, int]:
    return parse_diskstats(Path("/proc/diskstats").read_text())[device].by_op()


def measure(device: str, work, threshold: float | None = None) -> tuple[dict[str, int], ObservationStore]:
    """/proc/diskstats' completed I/Os per op of `device` while `work()` runs, and what the
    block collector filed for the same window."""
    c, store = block_collector(threshold)
    c.start()
    try:
        before = completed_by_op(device)
        c.begin(time.monotonic())
        work()
        after = completed_by_op(device)
        c.stop(1.0)
    finally:
        c.close()
    assert [b["path"] for b in store.bpf_costs] == [os.environ[probes.PATH_ENV]], store.bpf_costs
    return {op: after[op] - before[op] for op in after}, store


def timed_by_op(store: ObservationStore, device: str) -> dict[str, int]:
    return {o.label_dict["op"]: o.histogram.count for o in store.for_metric("block.latency")
            if o.label_dict.get("device") == device and "op" in o.label_dict}


def assert_counts_match(delta: dict[str, int], timed: dict[str, int]) -> None:
    # the I/O is on a device of the test's own: only its journal's own writes can land between
    # the reads of /proc/diskstats and of the BPF maps. diskstats counts a write-zeroes request
    # (rwbs "N", vcheck's op "other") as a write
    timed = {**timed, "write": timed.get("write", 0) + timed.get("other", 0)}
    for op, n in delta.items():
        assert abs(timed.get(op, 0) - n) <= max(2, n // 200), (op, timed, delta)


def test_io_count_equals_diskstats_delta(no_programs_before):
    with loop_filesystem() as (dev, mnt):
        def work() -> None:
            direct_writes(1500, directory=mnt)
            os.sync()
            time.sleep(0.2)

        delta, store = measure(dev, work)
    assert delta["write"] >= 1500
    assert_counts_match(delta, timed_by_op(store, dev))
    # the collector holds its own count against diskstats: what it timed and what it says it
    # did not time cover every write the kernel counted (its reads bracket the test's)
    writes = [o for o in store.for_metric("block.latency") if o.label_dict == {"device": dev, "op": "write"}]
    assert writes[0].histogram.count + writes[0].unseen >= delta["write"]
    assert (writes[0].unseen > 0) == any("never timed" in n for n in writes[0].notes), writes[0].notes


FSYNCS = 100


@pytest.mark.parametrize("io_start", [True, False], ids=["block_io_start", "no_block_io_start"])
def test_flushes_are_timed_and_counts_hold_under_fsync(no_programs_before, monkeypatch, io_start):
    """An fsync is a flush request ("FF": issued at sector 0, completed at sector -1) and an
    empty preflush write the flush completes without issuing it: diskstats counts one flush
    and one write, and so must vcheck, also on kernels without block:block_io_start."""
    if not io_start:
        monkeypatch.setattr(disk, "BLOCK_TRACEPOINTS",
                            tuple(a for a in disk.BLOCK_TRACEPOINTS if a.event != "block_io_start"))
    with loop_filesystem() as (dev, mnt):   # its own device: the count is the test's alone
        with preallocated(mnt, FSYNCS) as target:
            delta, store = measure(dev, lambda: fsync_writes(FSYNCS, target=target), threshold=1e-9)
    assert delta["flush"] >= FSYNCS and delta["write"] >= 2 * FSYNCS, delta
    assert_counts_match(delta, timed_by_op(store, dev))

    obs = {o.label_dict["op"]: o for o in store.for_metric("block.latency")
           if o.label_dict.get("device") == dev and "op" in o.label_dict}
    flush = obs["flush"]
    assert flush.histogram.count >= FSYNCS
    assert 0 < flush.histogram.percentile(0.5).value <= flush.histogram.max().value
    assert all(e["op"] == "flush" and e["latency"] > 0 for e in flush.events)
    assert len(flush.events) >= FSYNCS     # every I/O is over a 1 ns threshold: all are evidence
    # the empty preflush writes a flush completes: how many an fsync makes is the file
    # system's business (ext4 merges some); each one there must be timed, and is shown once:
    # folded into the flush that served it, or on its own where no flush completed with it
    served = [e for e in obs["write"].events if e["bytes"] == 0]
    folded = [e for e in flush.events if e.get("parts")]
    assert len(served) + len(folded) >= FSYNCS // 2 and all(e["latency"] >= 0 for e in served)
    assert all("empty preflush write" in e["parts"] for e in folded)
    if io_start:   # the task that asked for the flush, not the kworker that issued it
        mine = [e for e in flush.events + served if e["comm"] == "vcheck-fsync"]
        assert len(mine) >= 0.9 * (len(flush.events) + len(served)) - 5, [e["comm"] for e in flush.events[:10]]
    for o in obs.values():
        assert not any("in flight when the window" in n for n in o.notes), o.notes


def test_slowest_rows_show_each_fsync_once(no_programs_before):
    """Without an outlier threshold the evidence is the 20 slowest I/Os. Under fsync load the
    empty preflush write completes right after its flush, timed from the same issue: it must
    not take a row of its own beside the flush (one slow fsync shown twice)."""
    with loop_filesystem() as (dev, mnt):
        with preallocated(mnt, FSYNCS) as target:
            delta, store = measure(dev, lambda: fsync_writes(FSYNCS, target=target))
    assert delta["flush"] >= FSYNCS, delta     # the kernel's own count: the load was fsyncs
    rows = sorted((e for o in store.for_metric("block.latency") if o.label_dict.get("device") == dev
                   for e in o.events), key=lambda e: -e["latency"])
    assert 0 < len(rows) <= disk.SLOWEST_KEPT, len(rows)
    flushes = [e for e in rows if e["op"] == "flush"]
    empty = [e for o in store.for_metric("block.latency") for e in o.events if e["op"] == "write" and not e["bytes"]]
    # the flushes carry their preflush writes where the collector saw them
    assert flushes and (any(e.get("parts") for e in flushes) or not empty), rows
    for e in rows:
        if e["op"] == "write" and e["bytes"] == 0:
            # issued at the flush's instant, completed right after it: the same fsync
            twin = [f for f in flushes if 0 <= e["time"] - f["time"] <= disk.PREFLUSH_SLACK
                    and abs((e["time"] - e["latency"]) - (f["time"] - f["latency"])) <= disk.ISSUE_SLACK]
            assert not twin, (e, twin)


def test_fua_writes_without_device_fua_count_once(no_programs_before):
    """A loop device has a write cache but no FUA: an O_DSYNC write is data, a post-flush, and
    then a second, empty completion of the same request, which is not a new I/O. The writes
    start at block 0, where that empty completion looks most like an fsync's."""
    with loop_device() as dev:
        delta, store = measure(dev, lambda: dsync_writes(dev, 50))
    assert delta["write"] >= 50 and delta["flush"] >= 50, delta
    assert_counts_match(delta, timed_by_op(store, dev))


def test_percentiles_agree_with_exact_capture(no_programs_before):
    """With an outlier threshold of 1 ns every I/O is also streamed as an event: exact values.

    On the shared root disk the kernel now and then completes a write without running the
    probe (seen on 6.18: completions in softirq on top of another task); the collector must
    then say how many, from /proc/diskstats, rather than judge as if it had seen them all."""
    dev = root_device()
    c, store = block_collector(threshold=1e-9)
    c.start()
    try:
        c.begin(time.monotonic())
        direct_writes(800)
        c.stop(1.0)
    finally:
        c.close()
    obs = [o for o in store.for_metric("block.latency") if o.label_dict == {"device": dev, "op": "write"}]
    assert len(obs) == 1
    hist, events = obs[0].histogram, obs[0].events
    assert hist.count + obs[0].unseen >= 800, "a write was neither timed nor counted as untimed"
    assert hist.count >= 400
    if obs[0].unseen:
        assert any(f"{obs[0].unseen} write completions" in n for n in obs[0].notes), obs[0].notes
    # an fsync's empty preflush write (a journal commit's) is shown folded into its flush
    folded = [x for o in store.for_metric("block.latency") if o.label_dict == {"device": dev, "op": "flush"}
              for e in o.events for x in e.get("preflush_latency", [])]
    assert len(events) + len(folded) == hist.count, "every write must have been captured exactly once"
    exact = sorted([e["latency"] for e in events] + folded)
    for q in (0.5, 0.9, 0.99):
        truth = exact[max(1, math.ceil(q * len(exact))) - 1]
        est = hist.percentile(q)
        assert est.low <= truth < est.high + 1e-12
        assert abs(est.value - truth) / truth <= RELATIVE_ERROR + 1e-9
    assert hist.max().value == pytest.approx(exact[-1], rel=1e-9)
    assert all(e["comm"] for e in events) and any(e["comm"] == "dd" for e in events)


def test_closing_detaches_while_the_process_lives(no_programs_before):
    c, _ = block_collector()
    c.start()
    assert len(vcheck_programs()) >= 2
    c.close()
    c.close()  # idempotent
    assert vcheck_programs() == []


OUTLIER_POLICY = """\
policy: bpf-rig
defaults: {window: 3s, interval: 1s}
checks:
  - id: disk-outliers
    metric: block.latency
    per: device
    select: {device: DEV}
    expect: "count(> 1us) <= 0"
  - id: disk-p99
    metric: block.latency
    per: device
    select: {device: DEV}
    expect: "p99 < 10s"
  - id: runq
    metric: sched.runq.latency
    per: cpu
    select: {cpu: "1"}
    expect: "count(> 2ms) < 10"
"""


def test_outlier_check_fails_and_names_the_slow_ios(no_programs_before, run_vcheck, policy_file, bpf_path):
    dev = root_device()
    p = policy_file(OUTLIER_POLICY.replace("DEV", dev))
    with background_writes(8, cpus="0"), cpu_hogs(cpu=1, n=2):
        r = run_vcheck(str(p))
    assert r.returncode == 1, r.stdout + r.stderr
    costs = r.report["cost"]["bpf"]
    assert costs and all(b["path"] == bpf_path for b in costs), costs
    out = r.result("disk-outliers")
    assert out["outcome"] == "fail"
    events = [e for ent in out["entities"] for e in ent["events"]]
    assert events and any(e["comm"] == "fio" for e in events)
    slow = events[0]
    assert {"time", "device", "sector", "bytes", "op", "latency", "pid", "comm"} <= set(slow)
    assert slow["device"] == dev and slow["latency"] > 1e-6 and slow["bytes"] > 0
    # the terminal shows the slowest I/Os, whoever issued them (a journal commit may be slower
    # than any of fio's writes)
    assert "event: " in r.stdout and f"comm={slow['comm']}" in r.stdout, r.stdout[-4000:]
    assert r.result("disk-p99")["outcome"] == "pass"
    # two busy loops on CPU 1: each waits its turn for several ms, hundreds of times. Counted,
    # not a percentile: the short waits of the I/O load's wakeups there can outnumber them
    runq = r.result("runq")
    assert runq["outcome"] == "fail", runq
    assert vcheck_programs() == []


def test_sigterm_mid_window_leaves_no_program(no_programs_before, policy_file, tmp_path):
    p = policy_file(OUTLIER_POLICY.replace("DEV", root_device()).replace("3s", "30s"))
    proc = subprocess.Popen(VCHECK + ["run", str(p), "--json", str(tmp_path / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 20
    while len(vcheck_programs()) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(vcheck_programs()) >= 5, "the run never attached its programs"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, out + err
    assert "Traceback" not in err
    assert vcheck_programs() == []


def test_unprivileged_run_says_why_and_follows_on_missing():
    """As nobody, the BPF checks cannot run: on_missing decides, and the reason names the fix."""
    require_root()
    work = Path(tempfile.mkdtemp(prefix="vcheck-nobody-"))
    try:
        os.chmod(work, 0o777)
        policy = work / "p.yaml"
        policy.write_text("policy: nobody\ndefaults: {window: 1s, interval: 1s}\nchecks:\n"
                          "  - {id: lat, metric: block.latency, expect: 'p99 < 1s', on_missing: fail}\n"
                          "  - {id: runq, metric: sched.runq.latency, expect: 'p99 < 1s', on_missing: skip}\n")
        os.chmod(policy, 0o644)
        report = work / "r.json"
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                               *VCHECK, "run", str(policy), "--json", str(report)],
                              capture_output=True, text=True, cwd=work, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        results = {r["check"]: r for r in json.loads(report.read_text())["results"]}
        assert results["lat"]["outcome"] == "fail" and "not root" in results["lat"]["reason"]
        assert results["runq"]["outcome"] == "skip" and "CAP_BPF" in results["runq"]["reason"]
    finally:
        subprocess.run(["rm", "-rf", str(work)])
