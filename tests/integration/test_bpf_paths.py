"""The two ways to load a BPF program (CO-RE through libbpf, bcc) against each other and
against the kernel's own account: same I/Os, same counts, same bucketing; the choice between
them made and explained; nothing left loaded.

Both paths watch the same I/Os at once, on a loop device of the test's own (no other process
writes there, so neither sees an I/O the other missed). Each program reads the clock itself, one
after the other on every event, so one I/O's two latencies differ by the microseconds between
the two programs' clock reads: the comparison is exact where the paths must agree exactly (which I/Os, how
many, how each latency is bucketed, sums and maxima against the I/Os themselves) and bounded
where the clock reads differ.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.rig.common import VCHECK, ProgramLedger, require_root
from tests.rig.io import dsync_writes, loop_device
from vcheck import probes
from vcheck.collectors.base import CollectContext, CollectRequest
from vcheck.collectors.disk import BLOCK_TRACEPOINTS, BlockLatencyCollector
from vcheck.collectors.kvm import KVM_METRICS, KvmExitCollector
from vcheck.histogram import bucket_index
from vcheck.observations import ObservationStore
from vcheck.procfs import HostRoots

pytestmark = pytest.mark.rig


@pytest.fixture
def quiet(own_programs: ProgramLedger):
    yield
    own_programs.assert_none_left()   # waits out the RCU grace period a detached program is freed after


def start_collector(path: str, monkeypatch) -> tuple[BlockLatencyCollector, ObservationStore]:
    monkeypatch.setenv(probes.PATH_ENV, path)
    store = ObservationStore()
    c = BlockLatencyCollector(CollectContext(HostRoots(), store),
                              CollectRequest(frozenset({"block.latency"}), 5.0, 1.0, {"block.latency": 1e-9}))
    c.start()
    return c, store


def loop_io(dev: str) -> None:
    """Reads, plain writes and FUA writes (data, post-flush, empty completion) on /dev/DEV."""
    for cmd in (["dd", "if=/dev/zero", f"of=/dev/{dev}", "bs=4k", "count=150", "oflag=direct"],
                ["dd", f"if=/dev/{dev}", "of=/dev/null", "bs=4k", "count=150", "iflag=direct"],
                ["dd", "if=/dev/zero", f"of=/dev/{dev}", "bs=64k", "count=20", "seek=100", "oflag=direct"]):
        subprocess.run(cmd, check=True, capture_output=True)
    dsync_writes(dev, 30, seek=2000)   # all of it stays under the 1000 I/Os kept as evidence


def test_core_and_bcc_see_the_same_ios_and_bucket_them_alike(quiet, monkeypatch):
    with loop_device() as dev:
        core, core_store = start_collector("core", monkeypatch)
        try:
            bcc, bcc_store = start_collector("bcc", monkeypatch)
            try:
                assert core._prog.path == "core" and bcc._prog.path == "bcc"
                t0 = time.monotonic()
                core.begin(t0)
                bcc.begin(t0)
                loop_io(dev)
                time.sleep(0.2)
                core.stop(1.0)
                bcc.stop(1.0)
            finally:
                bcc.close()
        finally:
            core.close()

    def by_op(store: ObservationStore) -> dict:
        return {o.label_dict["op"]: o for o in store.for_metric("block.latency")
                if o.label_dict.get("device") == dev and "op" in o.label_dict}

    a, b = by_op(core_store), by_op(bcc_store)
    assert set(a) == set(b) and {"read", "write", "flush"} <= set(a), (sorted(a), sorted(b))
    for op in a:
        ha, hb = a[op].histogram, b[op].histogram
        assert ha.count == hb.count > 0, (op, ha.count, hb.count)
        for o, ops in ((a[op], a), (b[op], b)):   # every I/O is over a 1 ns threshold: all are in the events
            lat = [round(e["latency"] * 1e9) for e in o.events]
            if op == "write":    # an fsync's empty preflush write is shown folded into its flush's row
                lat += [round(x * 1e9) for f in ops["flush"].events for x in f.get("preflush_latency", [])]
            assert len(lat) == o.histogram.count, (op, len(lat), o.histogram.count)
            want: dict[int, int] = {}
            for v in lat:
                want[bucket_index(v)] = want.get(bucket_index(v), 0) + 1
            assert o.histogram.buckets == want, op           # bucketed exactly as vcheck/histogram.py
            assert o.histogram.sum == pytest.approx(sum(lat), abs=len(lat))
            assert o.histogram.max_exact == max(lat)
        # the same I/Os: paired by sector in completion order, latencies a clock read apart
        ea = sorted((e["sector"], e["time"], e["latency"]) for e in a[op].events)
        eb = sorted((e["sector"], e["time"], e["latency"]) for e in b[op].events)
        assert [s for s, _, _ in ea] == [s for s, _, _ in eb], op
        apart = sorted(abs(x[2] - y[2]) for x, y in zip(ea, eb))
        # the later program's clock reads trail by the earlier one's run (a ring buffer wake-up
        # included): microseconds, against I/Os of tens to hundreds of microseconds
        assert apart[len(apart) // 2] < 50e-6 and apart[int(len(apart) * 0.95)] < 200e-6, (op, apart[-5:])


def run_report(tmp_path: Path, env: dict, on_missing: str = "pass") -> tuple[subprocess.CompletedProcess, dict]:
    """A one-second run of a block.latency check (an idle disk has no data: on_missing says)."""
    policy = tmp_path / "p.yaml"
    policy.write_text("policy: paths\ndefaults: {window: 1s, interval: 1s}\nchecks:\n"
                      f"  - {{id: lat, metric: block.latency, expect: 'p99 < 100s', on_missing: {on_missing}}}\n")
    report = tmp_path / "r.json"
    proc = subprocess.run(VCHECK + ["run", str(policy), "--json", str(report)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, **env})
    return proc, json.loads(report.read_text())


def test_kernel_without_btf_falls_back_to_bcc_and_says_so(quiet, tmp_path, monkeypatch):
    monkeypatch.delenv(probes.PATH_ENV, raising=False)
    env = {"VCHECK_BTF": str(tmp_path / "no-btf-here")}
    proc, report = run_report(tmp_path, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    costs = report["cost"]["bpf"]
    assert costs and all(c["path"] == "bcc" for c in costs), costs
    assert all(f"no kernel BTF at {env['VCHECK_BTF']}" in c["path_reason"] for c in costs), costs
    assert "block_latency.c via bcc" in proc.stdout   # the terminal's cost line

    doctor = subprocess.run(VCHECK + ["doctor"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **env})
    assert f"bcc: no kernel BTF at {env['VCHECK_BTF']}" in doctor.stdout, doctor.stdout
    assert "kernel BTF" in doctor.stdout and "compiled by bcc" in doctor.stdout


def test_forcing_core_without_btf_fails_with_the_reason(quiet, tmp_path):
    env = {"VCHECK_BTF": str(tmp_path / "no-btf-here"), probes.PATH_ENV: "core"}
    proc, report = run_report(tmp_path, env, on_missing="fail")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (result,) = report["results"]
    assert result["outcome"] == "fail" and "VCHECK_BPF_PATH=core but no kernel BTF" in result["reason"], result


def test_default_run_loads_core_without_importing_bcc(quiet, tmp_path, monkeypatch):
    """With BTF and built objects a run takes the CO-RE path for every program and never
    imports bcc (its import alone is ~75 MB)."""
    monkeypatch.delenv(probes.PATH_ENV, raising=False)
    # cli.main, not the command's entry (which ends the process at once with os._exit)
    probe = ("import sys\nfrom vcheck.cli import main\n"
             "main(['run', sys.argv[1], '--json', sys.argv[2]])\n"
             "print('BCC_IMPORTED' if 'bcc' in sys.modules else 'NO_BCC')\n")
    policy = tmp_path / "p.yaml"
    policy.write_text("policy: paths\ndefaults: {window: 1s, interval: 1s}\nchecks:\n"
                      "  - {id: lat, metric: block.latency, expect: 'p99 < 100s'}\n"
                      "  - {id: rq, metric: sched.runq.latency, expect: 'p99 < 100s'}\n")
    report = tmp_path / "r.json"
    proc = subprocess.run([VCHECK[0], "-c", probe, str(policy), str(report)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert "NO_BCC" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    costs = json.loads(report.read_text())["cost"]["bpf"]
    assert costs and all(c["path"] == "core" for c in costs), costs
    # how long the loads took is the machine's to decide (benchmarks/bench_cost.py prints it);
    # that each was measured and said is the code's
    assert all(isinstance(c["load_seconds"], float) and c["load_seconds"] >= 0 for c in costs), costs


@pytest.mark.parametrize("path", probes.PATHS)
def test_kvm_exits_counted_and_timed_exactly_on_each_path(quiet, tiny_vm, monkeypatch, path):
    """tinykvm makes exactly n port-I/O exits, then one parking exit: each path counts n + 1
    userspace exits and port-I/O exits and times every one of them to the next KVM_RUN."""
    monkeypatch.setenv(probes.PATH_ENV, path)
    tiny, n = tiny_vm(), 5000
    store = ObservationStore()
    c = KvmExitCollector(CollectContext(HostRoots(), store),
                         CollectRequest(frozenset(m.name for m in KVM_METRICS), 1.0, 1.0))
    c.start()
    try:
        c.begin(time.monotonic())
        tiny.exits(n)
        time.sleep(0.1)
        c.sample(1.0)
        c.stop(1.0)
    finally:
        c.close()
    assert [b["path"] for b in store.bpf_costs] == [path]

    def one(metric: str, **labels: str):
        (o,) = [o for o in store.for_metric(metric) if o.label_dict == {"vm": tiny.name, **labels}]
        return o

    assert sum(one("kvm.pio.rate", port="0x10").values) == n
    assert sum(one("kvm.pio.rate", port="0x11").values) == 1
    assert sum(one("kvm.userspace_exit.rate", reason="KVM_EXIT_IO").values) == n + 1
    h = one("kvm.userspace_exit.latency", reason="KVM_EXIT_IO").histogram
    assert h.count == n + 1 and 0 < h.percentile(0.5).value < 0.01


def test_an_object_libbpf_refuses_falls_back_to_bcc_with_both_reasons(quiet, tmp_path, monkeypatch):
    """BTF that libbpf cannot use (here: a file that is not BTF) makes the CO-RE load fail at
    run time; unforced, the program is compiled by bcc instead and the note says why."""
    junk = tmp_path / "vmlinux"
    junk.write_bytes(b"not BTF at all")
    monkeypatch.setenv("VCHECK_BTF", str(junk))
    monkeypatch.delenv(probes.PATH_ENV, raising=False)
    prog = probes.BpfProgram("block_latency.c", BLOCK_TRACEPOINTS)
    try:
        prog.load()
        assert prog.path == "bcc" and prog.path_reason.startswith("the CO-RE object did not load")
        assert any("compiled by bcc, not loaded as CO-RE: the CO-RE object did not load" in n for n in prog.notes)
    finally:
        prog.close()
    monkeypatch.setenv(probes.PATH_ENV, "core")   # forced: the failure is the answer
    with pytest.raises(probes.BpfUnavailable, match=r"block_latency.c \(CO-RE\) failed"):
        probes.BpfProgram("block_latency.c", BLOCK_TRACEPOINTS).load()
