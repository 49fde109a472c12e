"""The containers dimension of bench_scale.py: the container layer's cost with n real containers.

    sudo .venv/bin/python benchmarks/scale_containers.py [--sizes 50,200,500] [--rounds 5]
    (bench_scale.py --only containers runs the same with 50/200/500, --quick 10/25/50)

The containers are made through the CRI API of a real containerd (the test rig's own:
tests/rig/containerd.py, on a private socket, root and state directory, with its locally built
busybox image), as a kubelet makes them: pods of PER_POD containers each (`sleep 3600`, one
runc container and cgroup each, under /vcheck-bench-ctr). Sizes are reached by adding to the
containers already running. For each size, in a process of its own (its peak RSS is the
measuring process's), with vcheck finding the containers through that CRI socket alone:
  discovery  ContainerCollector.start(): CRI list, /proc/PID/cgroup, namespaces of each
  sample     one sample of all 17 container metrics, median of --rounds: wall and CPU time
  floor      the kernel's part: the same kept-open files read by pread, nothing parsed, in the
             order a sample reads them, as long after the last read as a sample comes (CPU time);
             and one file type at a time (the least a file can cost)
The growth exponent is fitted on the marginal cost, above one container's.
Every pod, container, shim and cgroup is removed afterwards, also on an error, Ctrl-C or
SIGTERM. Run as root.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PER_POD = 5
CGROUP_PARENT = "vcheck-bench-ctr"


def kernel_floor(plans: list, rounds: int = 3, gap: float = 0.2) -> tuple[float, dict[str, float], int]:
    """The kernel's part of a sample: CPU seconds of pread alone (nothing parsed) per entity, over
    the files of `plans` (cgroups.V1Files/V2Files) that exist, opened here once (as many
    entities as half the descriptor limit allows) and read in the order a sample reads them,
    `gap` after the last read as a sample finds them (median of `rounds`, after a pass that
    is not timed); per file type the best of `rounds` passes over that type alone, one after
    the other (its least), seconds per file; and how many entities were measured."""
    from vcheck.collectors.cgroups import fd_budget
    budget, groups = fd_budget(), []
    try:
        for plan in plans:
            paths = plan.files()
            if sum(map(len, groups)) + len(paths) > budget:
                break
            group = []
            for path in paths:
                try:
                    group.append((path.rsplit("/", 1)[1], os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
                except FileNotFoundError:
                    continue          # absent (a controller not enabled): a sample reads none
            groups.append(group)
        pread = os.pread
        fds = [[fd for _, fd in group] for group in groups]
        passes = []
        for k in range(rounds + 1):
            time.sleep(gap)
            t = time.thread_time()
            for group in fds:
                for fd in group:
                    pread(fd, 65536, 0)
            if k:
                passes.append(time.thread_time() - t)
        by_name: dict[str, list[int]] = {}
        for group in groups:
            for name, fd in group:
                by_name.setdefault(name, []).append(fd)
        least = {}
        for name, same in by_name.items():
            best = 1e9
            for _ in range(rounds):
                t = time.thread_time()
                for fd in same:
                    pread(fd, 65536, 0)
                best = min(best, time.thread_time() - t)
            least[name] = best / len(same)
        return statistics.median(passes) / max(len(groups), 1), least, len(groups)
    finally:
        for group in groups:
            for _, fd in group:
                os.close(fd)


def child(rounds: int) -> None:
    """One size, in its own process: discovery, `rounds` samples, the kernel floor; one JSON line."""
    from vcheck.collectors.base import CollectContext, CollectRequest
    from vcheck.collectors.containers.collector import CONTAINER_METRICS, ContainerCollector
    from vcheck.observations import ObservationStore
    from vcheck.procfs import HostRoots

    c = ContainerCollector(CollectContext(HostRoots(), ObservationStore()),
                           CollectRequest(frozenset(m.name for m in CONTAINER_METRICS), 60.0, 1.0))
    t = time.perf_counter()
    c.start()
    discovery = time.perf_counter() - t
    c.begin(time.monotonic())
    walls, cpus = [], []
    for k in range(1, rounds + 1):
        time.sleep(0.2)
        t, u = time.perf_counter(), time.thread_time()
        c.sample(k * 0.2)
        walls.append(time.perf_counter() - t)
        cpus.append(time.thread_time() - u)
    c.close()
    plans = [p for p in c._plans.values() if p is not None]
    floor, warm, _ = kernel_floor(plans)
    n = len(c._containers)
    print(json.dumps({"containers": n, "gone": len(c._gone), "discovery": discovery, "wall": statistics.median(walls),
                      "cpu": statistics.median(cpus), "floor": floor, "floor_files": warm,
                      "files": len(plans[0].files()) if plans else 0,
                      "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(socket: Path, rounds: int) -> dict:
    env = {**os.environ, "VCHECK_CRI_SOCKETS": str(socket), "VCHECK_RUNC_ROOT": "/nonexistent-vcheck-bench",
           "VCHECK_CONTAINERD_STATE": "/nonexistent-vcheck-bench"}
    out = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(rounds)], capture_output=True,
                         text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"containers child exited {out.returncode}: {out.stderr[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def kill_under(prefix: Path) -> None:
    """SIGKILL the processes this benchmark started whose command line names `prefix`."""
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") if pid.isdigit() else ""
            if str(prefix) in cmd:
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def grow(rt, to: int, made: list[str]) -> None:
    """Pods of PER_POD containers through CRI until `to` containers run."""
    from tests.rig.containerd import container_spec
    while len(made) < to:
        k = min(PER_POD, to - len(made))
        pod = f"bench-{len(made) // PER_POD}"
        _, ids = rt.run_pod(pod, "bench", [container_spec(f"c{len(made) + i}", ["sleep", "3600"]) for i in range(k)],
                            cgroup_parent=f"/{CGROUP_PARENT}/pod{uuid.uuid4()}")
        made.extend(ids)


def bench(sizes: list[int], rounds: int) -> dict:
    """Every size against one containerd; everything removed after, whatever happens."""
    from bench_scale import exponent
    from tests.rig.common import remove_cgroup_tree
    from tests.rig.containerd import start_containerd, stop_containerd

    print(f"\ncontainers: one sample of the container layer with n real runc containers made through CRI "
          f"by a real containerd ({PER_POD} per pod, `sleep`), found through that CRI socket")
    before = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # SIGTERM unwinds: cleanup runs
    prefix = Path(tempfile.mkdtemp(prefix="vcheck-bench-ctr-", dir="/var/tmp"))
    rt = None
    made: list[str] = []
    try:
        rt = start_containerd(prefix)
        grow(rt, 1, made)
        base = measure(rt.socket, rounds)      # the trivial size: what a sample costs whatever n is
        rows, per = [], {}
        print(f"  {'containers':>10s} {'started':>8s} {'discovery':>10s} {'sample':>9s} {'per ctr':>9s} "
              f"{'CPU':>9s} {'per ctr':>9s} {'kernel floor':>13s} {'peak RSS':>9s}")
        for n in sizes:
            t = time.perf_counter()
            grow(rt, n, made)
            started = time.perf_counter() - t
            r = measure(rt.socket, rounds)
            if r["containers"] != n or r["gone"]:
                raise RuntimeError(f"vcheck found {r['containers']} containers ({r['gone']} gone), {n} run")
            print(f"  {n:>10,d} {started:7.0f}s {r['discovery'] * 1e3:8.0f}ms {r['wall'] * 1e3:7.1f}ms "
                  f"{r['wall'] / n * 1e6:6.1f}us {r['cpu'] * 1e3:7.1f}ms {r['cpu'] / n * 1e6:6.1f}us "
                  f"{r['floor'] * 1e6:10.1f}us {r['rss']:7.0f}MB")
            rows.append((n, r["wall"], r["rss"]))
            per[n] = r
        files = per[sizes[-1]]["floor_files"]
        print(f"  kernel floor at {sizes[-1]}: {per[sizes[-1]]['floor'] * 1e6:.1f} us per container for its "
              f"{per[sizes[-1]]['files']} files, each read once in sample order; one file type at a time, us per file: "
              + ", ".join(f"{k} {v * 1e6:.2f}" for k, v in sorted(files.items(), key=lambda kv: -kv[1])))
        def k(key: str) -> float:
            return exponent(sizes, [per[n][key] - base[key] for n in sizes])
        def text(key: str) -> str:
            return "flat" if math.isnan(k(key)) else f"{k(key):.2f}"
        print(f"  one container: sample {base['wall'] * 1e3:.2f} ms (CPU {base['cpu'] * 1e3:.2f} ms), discovery "
              f"{base['discovery'] * 1e3:.0f} ms, {base['rss']:.0f} MB; growth exponent above it: sample "
              f"{text('wall')} (CPU time {text('cpu')}), discovery {text('discovery')}, peak RSS {text('rss')}")
        return {"rows": rows, "time_exponent": k("cpu"), "memory_exponent": k("rss")}
    finally:
        if rt is not None:
            # every pod and container through CRI, containerd, its shims, mounts, our cgroups (not
            # the test rig's: a test may be running)
            stop_containerd(rt, CGROUP_PARENT)
        else:                         # containerd started but the rig failed before handing it over
            kill_under(prefix)
            shutil.rmtree(prefix, ignore_errors=True)
            remove_cgroup_tree(CGROUP_PARENT)
        signal.signal(signal.SIGTERM, before)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50,200,500")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.rounds)
        return 0
    if os.geteuid() != 0:
        print("scale_containers: run as root (containerd, runc, cgroups)", file=sys.stderr)
        return 2
    bench([int(s) for s in args.sizes.split(",")], args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
