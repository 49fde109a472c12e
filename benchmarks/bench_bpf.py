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
     with and without runq_latency.c attached.
Run as root, on an otherwise quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vcheck.bpf import BpfProgram  # noqa: E402
from vcheck.collectors.base import CollectContext, CollectRequest  # noqa: E402
from vcheck.collectors.disk import BLOCK_TRACEPOINTS, BlockLatencyCollector  # noqa: E402
from vcheck.collectors.sched import RUNQ_TRACEPOINTS  # noqa: E402
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
    for source, attach in (("block_latency.c", BLOCK_TRACEPOINTS), ("runq_latency.c", RUNQ_TRACEPOINTS)):
        t = time.monotonic()
        prog = BpfProgram(source, attach).load()
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


def pingpong(rounds: int) -> float:
    """Seconds per round trip between two processes over pipes (2 context switches)."""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for _ in range(rounds):
            os.read(a_r, 1)
            os.write(b_w, b"x")
        os._exit(0)
    t = time.perf_counter()
    for _ in range(rounds):
        os.write(a_w, b"x")
        os.read(b_r, 1)
    elapsed = time.perf_counter() - t
    os.waitpid(pid, 0)
    for f in (a_r, a_w, b_r, b_w):
        os.close(f)
    return elapsed / rounds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="fio run time per mode and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--switches", type=int, default=20000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_bpf: run as root (BPF)", file=sys.stderr)
        return 2

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
        base = statistics.median(results["no tracing"])
        print(f"\n{title}, {args.rounds} interleaved rounds of {args.seconds:g} s (median IOPS)")
        for name, vals in results.items():
            med = statistics.median(vals)
            print(f"  {name:36s} {med:9.0f} IOPS  ratio {med / base:.3f}  "
                  f"(rounds: {', '.join(f'{v:.0f}' for v in vals)})")

    print("\nrun-queue program, pipe round trip (2 context switches), median of 5")
    plain, traced = [], []
    for _ in range(5):
        plain.append(pingpong(args.switches))
        prog = BpfProgram("runq_latency.c", RUNQ_TRACEPOINTS).load()
        try:
            traced.append(pingpong(args.switches))
        finally:
            prog.close()
    p, t = statistics.median(plain), statistics.median(traced)
    print(f"  untraced {p * 1e6:.2f} us   traced {t * 1e6:.2f} us   ratio {t / p:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
