"""What the guest BPF programs cost: start-up, and time added per I/O and per context switch.

    .venv/bin/python benchmarks/bench_bpf.py [--ios N] [--rounds R]

Prints, for bpf/block_latency.c and bpf/runq_latency.c:
  * compile + attach time (what a run pays once);
  * per-I/O cost: N O_DIRECT 4 KiB writes timed with and without the block program attached
    (median of R rounds each, interleaved so drift hits both alike);
  * per-switch cost: a pipe ping-pong between two processes (two context switches per round
    trip), with and without the run-queue program.
Run as root on an otherwise quiet machine; the differences are small against the noise of a
shared virtual disk, so read them with the spread printed beside them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vcheck.bpf import BpfProgram  # noqa: E402
from vcheck.collectors.disk import BLOCK_TRACEPOINTS  # noqa: E402
from vcheck.collectors.sched import RUNQ_TRACEPOINTS  # noqa: E402

BLOCK = 4096


def timed_direct_writes(n: int, directory: str = "/var/tmp") -> float:
    """Seconds per O_DIRECT write of one aligned block."""
    import mmap

    fd, name = tempfile.mkstemp(prefix="vcheck-bench-", dir=directory)
    os.close(fd)
    buf = mmap.mmap(-1, BLOCK)          # page-aligned, as O_DIRECT wants
    fd = os.open(name, os.O_WRONLY | os.O_DIRECT)
    try:
        t = time.perf_counter()
        for i in range(n):
            os.pwrite(fd, buf, (i % 256) * BLOCK)
        return (time.perf_counter() - t) / n
    finally:
        os.close(fd)
        os.unlink(name)


def timed_pingpong(rounds: int) -> float:
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


def compare(name: str, source: str, attach, measure, rounds: int) -> None:
    t = time.monotonic()
    prog = BpfProgram(source, attach).load()
    load_s = time.monotonic() - t
    prog.close()
    without, with_prog = [], []
    for _ in range(rounds):
        without.append(measure())
        prog = BpfProgram(source, attach).load()
        try:
            with_prog.append(measure())
        finally:
            prog.close()
    base, traced = statistics.median(without), statistics.median(with_prog)
    spread = statistics.pstdev(without) if len(without) > 1 else 0.0
    print(f"{name}: compile+attach {load_s:.2f} s")
    print(f"  untraced {base * 1e6:8.2f} us   traced {traced * 1e6:8.2f} us   "
          f"added {(traced - base) * 1e6:+7.2f} us ({(traced / base - 1) * 100:+.1f} %)   "
          f"untraced spread (stdev) {spread * 1e6:.2f} us")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ios", type=int, default=3000)
    ap.add_argument("--switches", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_bpf: run as root (BPF)", file=sys.stderr)
        return 2
    compare(f"block_latency.c, per O_DIRECT {BLOCK // 1024} KiB write", "block_latency.c",
            BLOCK_TRACEPOINTS, lambda: timed_direct_writes(args.ios), args.rounds)
    compare("runq_latency.c, per pipe round trip (2 switches)", "runq_latency.c",
            RUNQ_TRACEPOINTS, lambda: timed_pingpong(args.switches), args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
