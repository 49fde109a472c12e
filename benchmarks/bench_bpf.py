"""What vcheck's guest BPF programs cost.

    .venv/bin/python benchmarks/bench_bpf.py [--seconds S] [--rounds R]

Prints:
  1. compile + attach time of every program a default run loads (block_latency.c and
     runq_latency.c, compiled one after the other as a run does; target: under 2 s);
  2. 4 KiB O_DIRECT random-read IOPS (fio, psync, one job, on a file on the root disk) with
     no tracing, with vcheck's block collector attached (sampling every second, as in a run),
     and with a per-event tracer attached: biosnoop's method on the same tracepoints (bpftrace
     printing every completed I/O; libbpf-tools' biosnoop needs kprobes, absent on this
     kernel). Modes are interleaved round by round so drift hits all alike; medians and ratios
     are printed (target: vcheck costs <= 2 % of IOPS and less than the per-event tracer).
     The same for random writes each followed by fsync: the flush path (a flush and an empty
     preflush write per fsync);
  3. the run-queue program's cost per context switch: a pipe ping-pong between two processes,
     with and without runq_latency.c attached (with culprits, as a run builds it);
  4. the cost of culprit tracking (who had the CPU during each wait): context switches per
     second of a ping-pong pinned to one CPU (every switch-in of it ends a wait, so every one
     walks the CPU's history) with no tracing, with runq_latency.c as built before culprits
     (histogram only), with culprits (as sched.runq.latency runs), and as the hypervisor
     collector runs it (watching 2 tids of the ping-pong, no histogram); then 4 ping-pongs
     crowding one CPU, so waits span several slices. Interleaved rounds, medians, ratios and
     the added time per switch. ``--only culprits`` runs this part alone.
Run as root, on an otherwise quiet machine.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vcheck.probes import BpfProgram  # noqa: E402
from vcheck.collectors.base import CollectContext, CollectRequest  # noqa: E402
from vcheck.collectors.disk import BLOCK_TRACEPOINTS, BlockLatencyCollector  # noqa: E402
from vcheck.collectors.sched import CULPRIT_FLAGS, RUNQ_TRACEPOINTS, WATCH_FLAGS  # noqa: E402
from vcheck.observations import ObservationStore  # noqa: E402
from vcheck.procfs import HostRoots  # noqa: E402

DATA_FILE = Path("/var/tmp/vcheck-bench-randread")
FILE_MIB = 256
PER_EVENT_TRACER = (
    "tracepoint:block:block_rq_issue { @start[args->dev, args->sector] = nsecs; }\n"
    "tracepoint:block:block_rq_complete /@start[args->dev, args->sector]/ {\n"
    "  printf(\"%d %s %llu %u %llu\\n\", args->dev, args->rwbs, args->sector, args->nr_sector,\n"
    "         (nsecs - @start[args->dev, args->sector]) / 1000);\n"
    "  delete(@start[args->dev, args->sector]); }\n"
)


def compile_times() -> None:
    total = 0.0
    for source, attach, flags in (("block_latency.c", BLOCK_TRACEPOINTS, ()),
                                  ("runq_latency.c", RUNQ_TRACEPOINTS, CULPRIT_FLAGS)):   # as a run builds them
        t = time.monotonic()
        prog = BpfProgram(source, attach, cflags=flags).load()
        dt = time.monotonic() - t
        prog.close()
        total += dt
        print(f"  {source:18s} compile+attach {dt:.2f} s")
    print(f"  all programs of a default run: {total:.2f} s (target < 2 s)")


def prepare_file() -> None:
    if DATA_FILE.exists() and DATA_FILE.stat().st_size == FILE_MIB << 20:
        return
    subprocess.run(["dd", "if=/dev/urandom", f"of={DATA_FILE}", "bs=1M", f"count={FILE_MIB}",
                    "oflag=direct", "status=none"], check=True)


WORKLOADS = {   # title -> fio options
    "4 KiB O_DIRECT random reads": ("--rw=randread",),
    "4 KiB O_DIRECT random writes, each followed by fsync (flush path)": ("--rw=randwrite", "--fsync=1"),
}


def fio_iops(seconds: float, workload: tuple[str, ...]) -> float:
    out = subprocess.run(["fio", "--name=bench", f"--filename={DATA_FILE}", *workload, "--bs=4k",
                          "--direct=1", "--ioengine=psync", "--time_based", f"--runtime={seconds}s",
                          "--output-format=json"], capture_output=True, text=True, check=True).stdout
    job = json.loads(out)["jobs"][0]
    return float(job["read"]["iops"] + job["write"]["iops"])


def with_vcheck(seconds: float, workload: tuple[str, ...]) -> float:
    store = ObservationStore()
    c = BlockLatencyCollector(CollectContext(HostRoots(), store),
                              CollectRequest(frozenset({"block.latency"}), seconds, 1.0, {"block.latency": 0.01}))
    c.start()
    stop = threading.Event()

    def poll() -> None:
        k = 1
        while not stop.wait(1.0):
            c.sample(float(k))
            k += 1

    try:
        c.begin(time.monotonic())
        t = threading.Thread(target=poll, daemon=True)
        t.start()
        iops = fio_iops(seconds, workload)
        stop.set()
        t.join()
        c.stop(seconds)
    finally:
        c.close()
    return iops


def with_per_event_tracer(seconds: float, workload: tuple[str, ...]) -> float:
    tracer = subprocess.Popen(["bpftrace", "-e", PER_EVENT_TRACER], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3.0)          # bpftrace compiles and attaches before it traces
        if tracer.poll() is not None:
            raise RuntimeError(f"bpftrace failed: {tracer.stderr.read().strip()}")
        return fio_iops(seconds, workload)
    finally:
        tracer.terminate()
        tracer.wait()


def pingpong(rounds: int, cpu: int | None = None, on_start=None) -> float:
    """Seconds per round trip between two processes over pipes (2 context switches), both on
    `cpu` if given (then each switch-in ends a wait). on_start(tids) runs once both exist."""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    before = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        pid = os.fork()
        if pid == 0:
            for _ in range(rounds + 1):
                os.read(a_r, 1)
                os.write(b_w, b"x")
            os._exit(0)
        if on_start is not None:
            on_start([os.getpid(), pid])
        os.write(a_w, b"x")          # warm-up round: both tasks have run once
        os.read(b_r, 1)
        t = time.perf_counter()
        for _ in range(rounds):
            os.write(a_w, b"x")
            os.read(b_r, 1)
        elapsed = time.perf_counter() - t
        os.waitpid(pid, 0)
    finally:
        os.sched_setaffinity(0, before)
        for f in (a_r, a_w, b_r, b_w):
            os.close(f)
    return elapsed / rounds


def pinned_pingpong(rounds: int, cpu: int, on_start=None) -> float:
    """Context switches per second of a ping-pong pinned to `cpu`."""
    return 2 / pingpong(rounds, cpu, on_start)


def crowded_pingpong(rounds: int, cpu: int, pairs: int = 4) -> float:
    """Switches per second of `pairs` ping-pongs sharing one CPU: a woken task queues behind
    the other pairs, so a wait spans several slices and the history walk is longer."""
    t = time.perf_counter()
    kids = []
    for _ in range(pairs):
        pid = os.fork()
        if pid == 0:
            os.sched_setaffinity(0, {cpu})
            pinned_pingpong(rounds, cpu)
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)
    return 2 * rounds * pairs / (time.perf_counter() - t)


CULPRIT_MODES = {"no tracing": None, "runq histogram only": (),
                 "runq + culprits (sched.runq.latency)": CULPRIT_FLAGS,
                 "vCPU culprits (2 watched tids)": WATCH_FLAGS}


def traced_rate(flags: tuple[str, ...] | None, workload) -> float:
    """workload(on_start) with runq_latency.c built with `flags` attached (None: untraced);
    in the vCPU mode the workload's two tasks are the watched tids. Checks the program charged
    something, so a rate is never that of a program that did nothing."""
    if flags is None:
        return workload(None)
    prog = BpfProgram("runq_latency.c", RUNQ_TRACEPOINTS, cflags=flags).load()

    def watch(tids: list[int]) -> None:
        for tid in tids:
            prog["watched"][ctypes.c_uint32(tid)] = ctypes.c_uint8(1)

    try:
        rate = workload(watch if flags == WATCH_FLAGS else None)
        assert not flags or any(v.ns for v in prog["culprits"].values()), f"{flags}: nothing was charged"
        return rate
    finally:
        prog.close()


def culprit_cost(rounds: int, switches: int) -> None:
    workloads = {
        f"ping-pong pinned to CPU 0, {rounds} interleaved rounds of {switches} switches":
            (CULPRIT_MODES, lambda on_start: pinned_pingpong(switches // 2, cpu=0, on_start=on_start)),
        f"4 ping-pongs crowding CPU 0 (waits span several slices), {rounds} interleaved rounds":
            ({m: f for m, f in CULPRIT_MODES.items() if f != WATCH_FLAGS},
             lambda on_start: crowded_pingpong(switches // 8, cpu=0)),
    }
    for title, (modes, workload) in workloads.items():
        rates: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(rounds):
            for name, flags in modes.items():
                rates[name].append(traced_rate(flags, workload))
        _print_rates(title, rates)


def print_medians(results: dict[str, list[float]], unit: str, width: int, against: dict[str, str]) -> None:
    """One row per mode: its median, its ratio to each mode named in `against`, its rounds."""
    med = {name: statistics.median(vals) for name, vals in results.items()}
    for name, vals in results.items():
        ratios = "  ".join(f"{label} {med[name] / med[base]:.3f}" for label, base in against.items())
        print(f"  {name:{width}s} {med[name]:9.0f}{unit}  {ratios}  (rounds: {', '.join(f'{v:.0f}' for v in vals)})")


def _print_rates(title: str, rates: dict[str, list[float]]) -> None:
    base = statistics.median(rates["no tracing"])
    hist = statistics.median(rates["runq histogram only"])
    print(f"\nculprit tracking: context switches per second, {title} (median)")
    print_medians(rates, "/s", 40, {"vs untraced": "no tracing", "vs histogram only": "runq histogram only"})
    with_culprits = statistics.median(rates["runq + culprits (sched.runq.latency)"])
    print(f"  with culprits / histogram only: {with_culprits / hist:.3f} (switch rate ratio), "
          f"{(1 / with_culprits - 1 / hist) * 1e9:+.0f} ns per switch; "
          f"with culprits / untraced: {with_culprits / base:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="fio run time per mode and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--switches", type=int, default=20000)
    ap.add_argument("--only", choices=("culprits",), help="run one part alone")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_bpf: run as root (BPF)", file=sys.stderr)
        return 2
    if args.only == "culprits":
        culprit_cost(max(args.rounds, 5), max(args.switches, 100000))
        return 0

    print("compile + attach")
    compile_times()

    prepare_file()
    modes = {"no tracing": fio_iops, "vcheck block collector": with_vcheck,
             "per-event tracer (biosnoop method)": with_per_event_tracer}
    for title, workload in WORKLOADS.items():
        results: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for name, run in modes.items():
                results[name].append(run(args.seconds, workload))
        print(f"\n{title}, {args.rounds} interleaved rounds of {args.seconds:g} s (median IOPS)")
        print_medians(results, " IOPS", 36, {"ratio": "no tracing"})

    print("\nrun-queue program, pipe round trip (2 context switches), median of 5")
    plain, traced = [], []
    for _ in range(5):
        plain.append(pingpong(args.switches))
        prog = BpfProgram("runq_latency.c", RUNQ_TRACEPOINTS, cflags=CULPRIT_FLAGS).load()
        try:
            traced.append(pingpong(args.switches))
        finally:
            prog.close()
    p, t = statistics.median(plain), statistics.median(traced)
    print(f"  untraced {p * 1e6:.2f} us   traced {t * 1e6:.2f} us   ratio {t / p:.3f}")
    culprit_cost(max(args.rounds, 5), max(args.switches, 100000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
