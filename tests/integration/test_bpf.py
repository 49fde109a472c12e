"""The BPF engine and the guest latency collectors against real block I/O and real scheduling.

Cross-checks: vcheck's I/O count per op against /proc/diskstats for the same window (plain
writes, fsync flushes, FUA writes on a device without FUA), its percentiles against an exact
per-event capture of the same I/Os, and `bpftool prog show` for leaks (of the test's own runs:
ProgramLedger). Every test runs on
each BPF path, forced with VCHECK_BPF_PATH (CO-RE through libbpf, and bcc).
"""
from __future__ import annotations

import collections
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.rig.common import RIG_MARK_ENV, VCHECK, require_root, vcheck_programs
from tests.rig.io import (background_writes, cpu_hogs, device_writes, direct_writes, dsync_writes, fsync_writes,
                          loop_device, loop_filesystem, preallocated, root_device, sync_fs)
from vcheck import probes
from vcheck.collectors import disk
from vcheck.collectors.base import CollectContext, CollectRequest
from vcheck.collectors.disk import BlockLatencyCollector, parse_diskstats
from vcheck.histogram import RELATIVE_ERROR
from vcheck.model import EVENTS_LEFT_OUT
from vcheck.observations import ObservationStore
from vcheck.procfs import HostRoots

pytestmark = pytest.mark.rig


@pytest.fixture(params=probes.PATHS, autouse=True)
def bpf_path(request, monkeypatch) -> str:
    """The path every program of the test (and of a vcheck it starts) must take."""
    monkeypatch.setenv(probes.PATH_ENV, request.param)
    return request.param


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


def test_io_count_equals_diskstats_delta(own_programs):
    with loop_filesystem() as (dev, mnt):
        def work() -> None:
            direct_writes(1500, directory=mnt)
            sync_fs(mnt)
            time.sleep(0.2)

        delta, store = measure(dev, work)
    assert delta["write"] >= 1500
    assert_counts_match(delta, timed_by_op(store, dev))
    # the collector holds its own count against diskstats: what it timed and what it says it
    # did not time cover every write the kernel counted (its reads bracket the test's)
    writes = [o for o in store.for_metric("block.latency") if o.label_dict == {"device": dev, "op": "write"}]
    assert writes[0].histogram.count + writes[0].unseen >= delta["write"]
    assert (writes[0].unseen > 0) == any("never timed" in n for n in writes[0].notes), writes[0].notes


def not_in_evidence(o) -> int:
    """How many I/Os over the threshold the collector says its evidence of `o` lacks (its note)."""
    found = [int(m.group(1)) for n in o.notes
             if (m := re.match(r"(\d+) of the \d+ \w+ I/Os on \S+ over the outlier threshold", n))]
    assert len(found) <= 1, o.notes
    return found[0] if found else 0


def folded_writes(rows: list[dict]) -> list[float]:
    """The latencies of the empty preflush writes folded into the flush rows shown."""
    return [x for e in rows for x in e.get("preflush_latency", [])]


FSYNCS = 100


@pytest.mark.parametrize("io_start", [True, False], ids=["block_io_start", "no_block_io_start"])
def test_flushes_are_timed_and_counts_hold_under_fsync(own_programs, monkeypatch, io_start):
    """An fsync is a flush request ("FF": issued at sector 0, completed at sector -1) and, when
    no journal commit flushed for it, an empty preflush write the flush completes without
    issuing it: diskstats counts one flush and one write, and so must vcheck, also on kernels
    without block:block_io_start. How many fsyncs ext4 serves by a journal commit depends on
    the machine's timing (a write in a new clock tick changes mtime); what vcheck decides does
    not: every I/O over the 1 ns threshold is in the evidence once, or counted as left out."""
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
    flush, write = obs["flush"], obs["write"]
    assert flush.histogram.count >= FSYNCS
    assert 0 < flush.histogram.percentile(0.5).value <= flush.histogram.max().value
    assert all(e["op"] == "flush" and e["latency"] > 0 for e in flush.events)
    # each I/O once: a flush as its row, an empty preflush write folded into the flush that
    # served it or as a row of its own; or the note says how many the evidence lacks
    assert len(flush.events) + not_in_evidence(flush) == flush.histogram.count, flush.notes
    folded = folded_writes(flush.events)
    assert len(write.events) + len(folded) + not_in_evidence(write) == write.histogram.count, write.notes
    assert all("empty preflush write" in e["parts"] for e in flush.events if e.get("parts"))
    assert all(x >= 0 for x in folded)
    if io_start:
        # the task that asked for the flush, never the kworker that issued it: the fsync
        # writer (its empty preflush write) or its file system's journal (a commit's preflush).
        # Another process's sync(2) asks for a flush of every file system, this one too: such
        # a flush is that process's (the suite itself only ever calls syncfs)
        asked = {"vcheck-fsync", f"jbd2/{dev}-8"}
        named = collections.Counter(e["comm"] for e in flush.events)
        assert not any(comm.startswith("kworker/") for comm in named), named
        assert sum(named[c] for c in asked) >= 0.9 * len(flush.events), named
        assert {e["comm"] for e in write.events if e["bytes"]} <= asked
    for o in obs.values():
        assert not any("in flight when the window" in n for n in o.notes), o.notes


def test_slowest_rows_show_each_fsync_once(own_programs):
    """Without an outlier threshold the evidence is each device's 20 slowest I/Os, whatever
    the other disks do. Under fsync load the empty preflush write completes right after its
    flush, timed from the same issue: it must not take a row of its own beside the flush (one
    slow fsync shown twice)."""
    with loop_filesystem() as (dev, mnt):
        with preallocated(mnt, FSYNCS) as target:
            delta, store = measure(dev, lambda: fsync_writes(FSYNCS, target=target))
    assert delta["flush"] >= FSYNCS, delta     # the kernel's own count: the load was fsyncs
    mine = [o for o in store.for_metric("block.latency") if o.label_dict.get("device") == dev]
    rows = sorted((e for o in mine for e in o.events), key=lambda e: -e["latency"])
    lost = [n for o in mine for n in o.notes if "ring buffer full" in n]
    # the device's own rows, as many as kept: its I/Os are hundreds (or the loss is said)
    assert len(rows) == disk.SLOWEST_KEPT or lost, (len(rows), [o.notes for o in mine])
    assert {e["device"] for e in rows} == {dev}
    # the first row is the device's slowest I/O: the exact maximum the kernel side kept
    slowest = max(o.histogram.max().value for o in mine if o.histogram and o.histogram.count)
    assert max([rows[0]["latency"]] + folded_writes(rows)) == pytest.approx(slowest, rel=1e-9) or lost
    flushes = [e for e in rows if e["op"] == "flush"]
    assert all("empty preflush write" in e["parts"] for e in flushes if e.get("parts"))
    for e in rows:
        if e["op"] == "write" and e["bytes"] == 0:
            # issued at the flush's instant, completed right after it: the same fsync
            twin = [f for f in flushes if 0 <= e["time"] - f["time"] <= disk.PREFLUSH_SLACK
                    and abs((e["time"] - e["latency"]) - (f["time"] - f["latency"])) <= disk.ISSUE_SLACK]
            assert not twin, (e, twin)


def test_evidence_over_the_threshold_says_how_many_it_left_out(own_programs, monkeypatch):
    """Evidence keeps the first OVER_THRESHOLD_KEPT I/Os over a check's threshold per device;
    the rest are counted by the kernel side and the note says how many. Each device has its
    own budget: the loop device's backing writes on the root disk do not crowd it out."""
    monkeypatch.setattr(disk, "OVER_THRESHOLD_KEPT", 50)
    with loop_device() as dev:
        delta, store = measure(dev, lambda: device_writes(dev, 300), threshold=1e-9)
    assert delta["write"] >= 300, delta
    write = [o for o in store.for_metric("block.latency") if o.label_dict == {"device": dev, "op": "write"}][0]
    n = write.histogram.count
    # the 50 first over the threshold, and the slowest 20 among them or not
    assert 50 <= len(write.events) <= 50 + disk.SLOWEST_KEPT, len(write.events)
    assert not_in_evidence(write) == n - 50, write.notes
    assert any(f"{n - 50} of the {n} write I/Os on {dev} over the outlier threshold" in x for x in write.notes)
    assert write.info[EVENTS_LEFT_OUT + "write"] == str(n - 50)   # what a Python check reading the events meets
    assert all(e["device"] == dev for e in write.events)


def test_fua_writes_without_device_fua_count_once(own_programs):
    """A loop device has a write cache but no FUA: an O_DSYNC write is data, a post-flush, and
    then a second, empty completion of the same request, which is not a new I/O. The writes
    start at block 0, where that empty completion looks most like an fsync's."""
    with loop_device() as dev:
        delta, store = measure(dev, lambda: dsync_writes(dev, 50))
    assert delta["write"] >= 50 and delta["flush"] >= 50, delta
    assert_counts_match(delta, timed_by_op(store, dev))


def test_percentiles_agree_with_exact_capture(own_programs, monkeypatch):
    """With an outlier threshold of 1 ns every I/O is also streamed as an event: exact values.

    On the shared root disk the kernel now and then completes a write without running the
    probe (seen on 6.18: completions in softirq on top of another task); the collector must
    then say how many, from /proc/diskstats, rather than judge as if it had seen them all."""
    dev = root_device()
    monkeypatch.setattr(disk, "OVER_THRESHOLD_KEPT", 100_000)   # the capture is the point: keep every I/O
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
    folded = folded_writes([e for o in store.for_metric("block.latency")
                            if o.label_dict == {"device": dev, "op": "flush"} for e in o.events])
    # the root disk is shared: other runs' writes land in the window too, and the evidence
    # may lack some of them (past the per-device budget, or the ring buffer full): then the
    # collector says how many, and the exact capture bounds each percentile by rank
    missing = not_in_evidence(obs[0])
    assert len(events) + len(folded) + missing == hist.count, "every write captured once or counted as left out"
    exact = sorted([e["latency"] for e in events] + folded)
    assert len(exact) >= 400, (len(exact), obs[0].notes)   # a capture, not a count of what is missing
    for q in (0.5, 0.9, 0.99):
        rank = max(1, math.ceil(q * hist.count)) - 1          # 0-based, among all the writes timed
        low = exact[rank - missing] if rank - missing >= 0 else 0.0
        high = exact[rank] if rank < len(exact) else math.inf
        est = hist.percentile(q)
        assert est.low <= high and low < est.high + 1e-12, (q, est, low, high)
        nearest = min(max(est.value, low), high)
        assert abs(est.value - nearest) / nearest <= RELATIVE_ERROR + 1e-9
    assert hist.max().value == pytest.approx(exact[-1], rel=1e-9) if not missing else hist.max().value >= exact[-1]
    assert all(e["comm"] for e in events) and any(e["comm"] == "dd" for e in events)


def test_closing_detaches_while_the_process_lives(own_programs):
    c, _ = block_collector()
    c.start()
    assert len(own_programs.own(held_only=True)) >= 2
    c.close()
    c.close()  # idempotent
    own_programs.assert_none_left()


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


def test_outlier_check_fails_and_names_the_slow_ios(own_programs, run_vcheck, policy_file, bpf_path):
    dev = root_device()
    p = policy_file(OUTLIER_POLICY.replace("DEV", dev))
    # fio writes until the run ends (stopped then), however long a busy machine takes to start it
    with background_writes(120, cpus="0"), cpu_hogs(cpu=1, n=2):
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
    assert slow["device"] == dev and slow["latency"] > 1e-6 and (slow["bytes"] > 0 or slow["op"] == "flush"), slow
    # the terminal shows the slowest I/Os, whoever issued them (a journal commit may be slower
    # than any of fio's writes)
    assert "event: " in r.stdout and f"comm={slow['comm']}" in r.stdout, r.stdout[-4000:]
    # p99 < 10s: a pass, unless the kernel skipped the probe for completions whose time
    # (diskstats') could put p99 past 10 s: then no verdict, and the reason says so
    p99 = r.result("disk-p99")
    assert p99["outcome"] == "pass" or (p99["outcome"] == "error" and "never timed" in p99["reason"]
                                        and "on both sides of 10s" in p99["reason"]), p99
    # two busy loops on CPU 1: each waits its turn for several ms, hundreds of times. Counted,
    # not a percentile: the short waits of the I/O load's wakeups there can outnumber them
    runq = r.result("runq")
    assert runq["outcome"] == "fail", runq
    own_programs.assert_none_left()


def test_sigterm_mid_window_leaves_no_program(own_programs, policy_file, tmp_path):
    p = policy_file(OUTLIER_POLICY.replace("DEV", root_device()).replace("3s", "30s"))
    proc = subprocess.Popen(VCHECK + ["run", str(p), "--json", str(tmp_path / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        attached = own_programs.wait_for(5, timeout=60, alive=lambda: proc.poll() is None)
        assert len(attached) >= 5, "the run never attached its programs"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:   # it did not end: it must not outlive the test
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, out + err
    assert "Traceback" not in err
    own_programs.assert_none_left()


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


HOLD_PROGRAMS = """
import os, sys, time
from vcheck.collectors.base import CollectContext, CollectRequest
from vcheck.collectors.disk import BlockLatencyCollector
from vcheck.observations import ObservationStore
from vcheck.procfs import HostRoots
c = BlockLatencyCollector(CollectContext(HostRoots(), ObservationStore()),
                          CollectRequest(frozenset({"block.latency"}), 5.0, 1.0, {}))
c.start()
print(os.getpid(), flush=True)
time.sleep(120)
"""


def orphan_holding_programs(env: dict) -> int:
    """A process that loads block_latency.c and keeps it, detached from this one (setsid
    --fork: reparented, no longer a descendant); its pid once attached."""
    proc = subprocess.Popen(["setsid", "--fork", sys.executable, "-c", HOLD_PROGRAMS], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=Path(__file__).resolve().parents[2])
    line = proc.stdout.readline()
    proc.stdout.close()
    proc.wait()
    assert line.strip().isdigit(), f"the holder did not attach: {line!r}"
    return int(line)


def test_leak_check_tells_its_own_programs_from_a_concurrent_runs(own_programs):
    """A vcheck run by someone else (another CI job, an operator) is not the test's leak; a
    program the test's own run left behind is, even held by an orphan of it."""
    env = {k: v for k, v in os.environ.items() if k != RIG_MARK_ENV}
    stranger = orphan_holding_programs(env)
    try:
        assert not own_programs.own(held_only=True)
        leaked = orphan_holding_programs({**os.environ})   # bears the mark: the suite's own
        try:
            own = own_programs.own(held_only=True)
            assert {p.name for p in own} >= {"vchk_blk_issue", "vchk_blk_done"}
            assert all(p.holders == {leaked} for p in own), own
            with pytest.raises(AssertionError, match="left loaded"):
                own_programs.assert_none_left(wait=0.5)
        finally:
            os.kill(leaked, signal.SIGKILL)
        own_programs.assert_none_left()
        assert any(stranger in p.holders for p in vcheck_programs())   # still running, never ours
    finally:
        os.kill(stranger, signal.SIGKILL)
