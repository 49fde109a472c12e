"""How often the kernel completes a block I/O without running vcheck's probe (the `unseen`
I/Os of block.latency), on the disk that holds /var/tmp.

    .venv/bin/python benchmarks/bench_unseen.py [--runs N] [--writes W] [--path core|bcc]

Each run: the block collector as a run builds it, W O_DIRECT 4 KiB writes by dd, and the
collector's own reckoning against /proc/diskstats. Prints every run (timed, unseen, and the
time diskstats says the unseen took at most) and the share of runs and of writes. Run as
root; the figure depends on what else the machine runs (on this sandbox, completions in softirq
on top of one other task are the ones skipped).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.rig.io import direct_writes, root_device  # noqa: E402
from vcheck.collectors.base import CollectContext, CollectRequest  # noqa: E402
from vcheck.collectors.disk import BlockLatencyCollector  # noqa: E402
from vcheck.observations import ObservationStore  # noqa: E402
from vcheck.probes import PATH_ENV  # noqa: E402
from vcheck.procfs import HostRoots  # noqa: E402


def one_run(writes: int, device: str) -> tuple[int, int, float]:
    """(timed, unseen, unseen_seconds) of the device's writes over one window."""
    store = ObservationStore()
    c = BlockLatencyCollector(CollectContext(HostRoots(), store),
                              CollectRequest(frozenset({"block.latency"}), 5.0, 1.0, {}))
    c.start()
    try:
        c.begin(time.monotonic())
        direct_writes(writes)
        c.stop(1.0)
    finally:
        c.close()
    o = next((o for o in store.for_metric("block.latency") if o.label_dict == {"device": device, "op": "write"}),
             None)
    if o is None or o.histogram is None:
        return 0, 0, 0.0
    return o.histogram.count, o.unseen, o.unseen_seconds or 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--writes", type=int, default=800)
    ap.add_argument("--path", choices=("core", "bcc"), default="core")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_unseen: needs root (BPF)", file=sys.stderr)
        return 2
    os.environ[PATH_ENV] = args.path
    device = root_device()
    hit, timed_all, unseen_all = 0, 0, 0
    print(f"{args.runs} runs of {args.writes} O_DIRECT writes on {device}, BPF path {args.path}")
    for i in range(args.runs):
        timed, unseen, seconds = one_run(args.writes, device)
        timed_all += timed
        unseen_all += unseen
        hit += bool(unseen)
        print(f"  run {i}: {timed} timed, {unseen} unseen" +
              (f" (together at most {seconds * 1000:.3g} ms)" if unseen else ""), flush=True)
    total = timed_all + unseen_all
    print(f"runs with unseen writes: {hit} of {args.runs}; unseen: {unseen_all} of {total} "
          f"({unseen_all / total if total else 0:.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
