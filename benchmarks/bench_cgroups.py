"""Cost of one sample of the host's cgroup layer on a node with many cgroups.

    .venv/bin/python benchmarks/bench_cgroups.py [--cgroups N] [--rounds R]

Makes N real (empty) cgroups under /vcheck-bench-cg in every v1 controller the collector
reads (or in the v2 tree), asks for them with select {cgroup: "/vcheck-bench-cg/*"}, and times
the collector's start() (the walk) and sample() (every cgroup's files read and turned into
figures). Prints the walk, the median sample in total and per cgroup. Everything it made is
removed afterwards. Run as root.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.rig.common import remove_cgroup_tree  # noqa: E402
from vcheck.catalog import Catalog  # noqa: E402
from vcheck.collectors.base import CollectContext, CollectRequest  # noqa: E402
from vcheck.collectors.cgroups import CGROUP_METRICS, CgroupCollector, cgroup_mode  # noqa: E402
from vcheck.observations import ObservationStore  # noqa: E402
from vcheck.policy import load_policy_bytes  # noqa: E402
from vcheck.procfs import HostRoots  # noqa: E402

TOP = "vcheck-bench-cg"
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio")


def make(roots: HostRoots, n: int) -> None:
    bases = [roots.cgroup] if cgroup_mode(roots.cgroup) == "v2" else [roots.cgroup / c for c in V1_CONTROLLERS]
    for base in bases:
        for i in range(n):
            (base / TOP / f"cg{i}").mkdir(parents=True, exist_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cgroups", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    roots = HostRoots()
    policy = load_policy_bytes(f"policy: b\nchecks:\n  - {{id: c, metric: cgroup.cpu, per: cgroup, "
                               f"select: {{cgroup: '/{TOP}/*'}}, expect: '< 100%'}}\n".encode(), "bench", Catalog())
    make(roots, args.cgroups)
    try:
        req = CollectRequest(frozenset(m.name for m in CGROUP_METRICS), 60.0, 1.0,
                             selections=[policy.checks[0].select])
        c = CgroupCollector(CollectContext(roots, ObservationStore()), req)
        t = time.perf_counter()
        c.start()
        walk = time.perf_counter() - t
        c.begin(time.monotonic())
        samples = []
        for k in range(1, args.rounds + 1):
            time.sleep(0.2)
            t = time.perf_counter()
            c.sample(float(k))
            samples.append(time.perf_counter() - t)
        c.close()
        med = statistics.median(samples)
        print(f"cgroups sampled: {len(c._paths)} (made {args.cgroups}; {cgroup_mode(roots.cgroup)})")
        print(f"walk (start): {walk * 1000:.1f} ms")
        print(f"one sample: median {med * 1000:.1f} ms over {args.rounds} rounds, "
              f"{med / len(c._paths) * 1e6:.0f} us per cgroup")
    finally:
        remove_cgroup_tree(TOP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
