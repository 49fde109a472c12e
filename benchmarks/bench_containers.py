"""Cost of one container-layer sample with many real containers running.

    .venv/bin/python benchmarks/bench_containers.py [--containers N]

Starts N real runc containers (busybox sleep, each in its own cgroup, sharing one read-only
rootfs), lets vcheck discover them from runc's state, then times the collector's sample():
every cgroup file of every container read and turned into figures. Prints discovery time and
the median sample time, in total and per container (target: under 1 ms per container).
Everything is removed afterwards. Run as root.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vcheck.collectors.base import CollectContext, CollectRequest  # noqa: E402
from vcheck.collectors.containers.collector import CONTAINER_METRICS, ContainerCollector  # noqa: E402
from vcheck.observations import ObservationStore  # noqa: E402
from vcheck.procfs import HostRoots  # noqa: E402
from tests.rig.common import remove_cgroup_tree  # noqa: E402

CGROUP_PARENT = "vcheck-bench"


def make_bundle(root: Path) -> Path:
    rootfs = root / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for d in ("proc", "dev", "sys", "tmp"):
        (rootfs / d).mkdir()
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    os.symlink("busybox", rootfs / "bin" / "sleep")
    subprocess.run(["runc", "spec", "--bundle", str(root)], check=True)
    return root


def start(n: int, work: Path) -> Path:
    bundle = make_bundle(work / "bundle")
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/sleep", "3600"]
    spec["root"] = {"path": str(bundle / "rootfs"), "readonly": True}
    state = work / "state"
    for i in range(n):
        b = work / f"b{i}"
        b.mkdir()
        spec["linux"]["cgroupsPath"] = f"/{CGROUP_PARENT}/c{i}"
        (b / "config.json").write_text(json.dumps(spec))
        subprocess.run(["runc", "--root", str(state), "run", "-d", "--bundle", str(b), f"bench-{i}"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return state


def cleanup(state: Path, n: int) -> None:
    for i in range(n):
        subprocess.run(["runc", "--root", str(state), "delete", "--force", f"bench-{i}"], capture_output=True)
    remove_cgroup_tree(CGROUP_PARENT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--containers", type=int, default=200)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_containers: run as root (runc, cgroups)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="vcheck-bench-", dir="/var/tmp"))
    state = work / "state"
    try:
        t = time.perf_counter()
        state = start(args.containers, work)
        print(f"started {args.containers} runc containers in {time.perf_counter() - t:.1f} s")
        os.environ["VCHECK_RUNC_ROOT"] = str(state)
        os.environ["VCHECK_CRI_SOCKETS"] = ""
        store = ObservationStore()
        c = ContainerCollector(CollectContext(HostRoots(), store),
                               CollectRequest(frozenset(m.name for m in CONTAINER_METRICS), 10.0, 1.0))
        t = time.perf_counter()
        c.start()
        found = len(c._containers)
        print(f"discovery (runc state, /proc, cgroup paths): {found} containers in "
              f"{(time.perf_counter() - t) * 1e3:.0f} ms")
        c.begin(time.monotonic())
        times = []
        for k in range(1, 6):
            time.sleep(0.2)
            t = time.perf_counter()
            c.sample(k * 0.2)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"one sample of all {len(CONTAINER_METRICS)} container metrics: {med * 1e3:.1f} ms, "
              f"{med / max(found, 1) * 1e3:.3f} ms per container (target < 1 ms; median of 5)")
    finally:
        cleanup(state, args.containers)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
