"""vcheck's own cost (issue 13), measured on both BPF paths, rounds interleaved.

    .venv/bin/python benchmarks/bench_cost.py [--rounds R] [--window S] [--exits N]
                                              [--fio-seconds S] [--only run,kvm,io]

Prints, side by side:
  1. the default pack (`vcheck run --window 5s`) forced onto each path (VCHECK_BPF_PATH=core,
     =bcc): wall - window (goal <= 0.5 s, BPF load included), peak RSS of the process
     (goal <= 80 MB), and the report's own cost figures (first sample after start, per program
     path and load seconds);
  2. tinykvm userspace exits/s untraced vs with bpf/kvm_exits.c attached (goal: traced >= 0.95
     of untraced), then, in a separate pass with kernel.bpf_stats_enabled, the time each
     program spends per invocation;
  3. 4 KiB O_DIRECT random-read IOPS untraced vs vcheck's block collector vs a per-event tracer
     (bpftrace printing every I/O; goal: vcheck >= 0.98 of untraced).
Modes alternate within each round so machine drift (±5 % here) hits all alike; medians and
each round's figures are printed. Run as root, on an otherwise quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_bpf  # noqa: E402
import bench_hypervisor  # noqa: E402
from vcheck.probes import BpfProgram  # noqa: E402
from vcheck.collectors.base import CollectContext, CollectRequest  # noqa: E402
from vcheck.collectors.disk import BlockLatencyCollector  # noqa: E402
from vcheck.observations import ObservationStore  # noqa: E402
from vcheck.procfs import HostRoots  # noqa: E402
from vcheck.collectors.kvm import SOURCE, TRACEPOINTS  # noqa: E402

PATHS = ("core", "bcc")


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def rounds_text(xs: list[float], fmt: str) -> str:
    return ", ".join(format(x, fmt) for x in xs)


# --- 1. the default pack -----------------------------------------------------------------------
def run_default_pack(path: str, window: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        # the default pack's collectors and checks, without the for: that a short window cannot
        # judge (vcheck refuses --window shorter than a for:)
        pack = Path(tmp) / "node-conformance.yaml"
        pack.write_text("".join(ln for ln in (REPO / "policies" / "node-conformance.yaml").read_text()
                                .splitlines(keepends=True) if not ln.strip().startswith("for:")))
        env = {**os.environ, "VCHECK_BPF_PATH": path}
        started = time.time()
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "vcheck.cli", "run", str(pack), "--window", f"{window:g}s",
                                 "--json", str(report)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                cwd=tmp, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if proc.returncode not in (0, 1) or not report.exists():
            raise RuntimeError(f"vcheck run (VCHECK_BPF_PATH={path}) exited {proc.returncode}: {err[-800:]}")
        data = json.loads(report.read_text())
        cost = data["cost"]
    # from the exec to the window's first sample, by this process's clock (the report's own
    # figure rests on the kernel's boot time, which /proc gives in whole seconds)
    return {"over": wall - window, "rss": ru.ru_maxrss / 1024, "startup": data["window"]["start"] - started,
            "bpf": cost.get("bpf") or []}


def bench_run(rounds: int, window: float) -> None:
    print(f"1. default pack, `vcheck run --window {window:g}s`, {rounds} interleaved rounds "
          "(goal: wall - window <= 0.5 s, peak RSS <= 80 MB)")
    res: dict[str, list[dict]] = {p: [] for p in PATHS}
    for _ in range(rounds):
        for p in PATHS:
            res[p].append(run_default_pack(p, window))
    print(f"  {'path':5s} {'wall - window':>14s} {'peak RSS':>10s} {'first sample':>13s}   BPF programs (path, load s)")
    for p in PATHS:
        rs = res[p]
        progs = {}
        for r in rs:
            for b in r["bpf"]:
                progs.setdefault((b.get("program"), b.get("path")), []).append(b.get("load_seconds") or 0.0)
        prog_text = ", ".join(f"{name} {path} {med(v):.2f}" for (name, path), v in sorted(progs.items()))
        startups = [r["startup"] for r in rs if r["startup"] is not None]
        print(f"  {p:5s} {med([r['over'] for r in rs]):12.2f} s {med([r['rss'] for r in rs]):7.0f} MB "
              f"{med(startups):11.2f} s   {prog_text}")
        print(f"        rounds: wall - window {rounds_text([r['over'] for r in rs], '.2f')} s; "
              f"RSS {rounds_text([r['rss'] for r in rs], '.0f')} MB")


# --- 2. KVM exits --------------------------------------------------------------------------------
def bpf_stats(prefix: str) -> dict[str, tuple[int, int]]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["name"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0)) for p in json.loads(out)
            if p.get("name", "").startswith(prefix)}


def bench_kvm(rounds: int, exits: int) -> None:
    print(f"\n2. KVM userspace exits (tinykvm port I/O), {rounds} interleaved rounds of {exits} exits "
          "(goal: traced >= 0.95 of untraced)")
    with tempfile.TemporaryDirectory() as tmp:
        exe = bench_hypervisor.build_tinykvm(Path(tmp))
        vm = bench_hypervisor.start_vm(exe)
        try:
            bench_hypervisor.exits_per_second(vm, exits // 4)   # warm up
            plain, traced = [], []
            prog = BpfProgram(SOURCE, TRACEPOINTS).load()
            path = prog.path
            prog.close()
            for _ in range(rounds):
                plain.append(bench_hypervisor.exits_per_second(vm, exits))
                prog = BpfProgram(SOURCE, TRACEPOINTS).load()
                try:
                    traced.append(bench_hypervisor.exits_per_second(vm, exits))
                finally:
                    prog.close()
            p, q = med(plain), med(traced)
            paired = med([b / a for a, b in zip(plain, traced)])
            print(f"  untraced {p:10,.0f} exits/s")
            print(f"  traced   {q:10,.0f} exits/s  ratio {q / p:.3f}, per round {paired:.3f}  "
                  f"(about {(1 / q - 1 / p) * 1e9:.0f} ns per exit; kvm_exits.c via {path})")
            print(f"  rounds: untraced {rounds_text(plain, ',.0f')}; traced {rounds_text(traced, ',.0f')}")

            # in-kernel time per program, from the kernel's own BPF statistics (costs a little itself)
            sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
            old = sysctl.read_text().strip()
            sysctl.write_text("1")
            prog = BpfProgram(SOURCE, TRACEPOINTS).load()
            try:
                bench_hypervisor.exits_per_second(vm, exits)
                stats = bpf_stats("vchk_kvm")
            finally:
                prog.close()
                sysctl.write_text(old)
            per_exit = sum(ns for ns, _ in stats.values()) / exits
            print("  time inside each program (bpf_stats): " + ", ".join(
                f"{n} {ns / cnt:.0f} ns x {cnt / exits:.2f}/exit" for n, (ns, cnt) in sorted(stats.items()) if cnt)
                + f"; {per_exit:.0f} ns per exit in all")
        finally:
            vm.kill()
            vm.wait()


# --- 3. block I/O ---------------------------------------------------------------------------------
def bench_io(rounds: int, seconds: float) -> None:
    workload = ("--rw=randread",)
    print(f"\n3. 4 KiB O_DIRECT random reads (fio psync), {rounds} interleaved rounds of {seconds:g} s "
          "(goal: vcheck >= 0.98 of untraced)")
    bench_bpf.prepare_file()
    modes = {"no tracing": bench_bpf.fio_iops, "vcheck block collector": bench_bpf.with_vcheck,
             "per-event tracer (bpftrace)": bench_bpf.with_per_event_tracer}
    res: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for name, run in modes.items():
            res[name].append(run(seconds, workload))
    base = med(res["no tracing"])
    for name, vals in res.items():
        paired = med([v / b for v, b in zip(vals, res["no tracing"])])   # each round against its own baseline
        print(f"  {name:30s} {med(vals):9.0f} IOPS  ratio {med(vals) / base:.3f}, per round {paired:.3f}  "
              f"(rounds: {rounds_text(vals, '.0f')})")
    # in-kernel time per I/O, from the kernel's own BPF statistics (noise-free, costs a little itself)
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = sysctl.read_text().strip()
    sysctl.write_text("1")
    store = ObservationStore()
    c = BlockLatencyCollector(CollectContext(HostRoots(), store),
                              CollectRequest(frozenset({"block.latency"}), seconds, 1.0, {"block.latency": 0.01}))
    try:
        c.start()
        c.begin(time.monotonic())
        iops = bench_bpf.fio_iops(seconds, workload)
        stats = bpf_stats("vchk_blk")
        c.stop(seconds)
    finally:
        c.close()
        sysctl.write_text(old)
    n = iops * seconds
    print("  time inside each program (bpf_stats): " + ", ".join(
        f"{name} {ns / cnt:.0f} ns x {cnt / n:.2f}/IO" for name, (ns, cnt) in sorted(stats.items()) if cnt)
        + f"; {sum(ns for ns, _ in stats.values()) / n:.0f} ns per I/O in all")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--exits", type=int, default=200000)
    ap.add_argument("--fio-seconds", type=float, default=4.0)
    ap.add_argument("--only", default="run,kvm,io", help="comma-separated subset of run,kvm,io")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_cost: run as root (BPF, KVM)", file=sys.stderr)
        return 2
    only = set(args.only.split(","))
    if "run" in only:
        bench_run(args.rounds, args.window)
    if "kvm" in only:
        bench_kvm(args.rounds, args.exits)
    if "io" in only:
        bench_io(args.rounds, args.fio_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
