"""Hypervisor layer costs: VM discovery time, and what the KVM exit program adds per exit.

    .venv/bin/python benchmarks/bench_hypervisor.py [--vms N] [--exits N] [--rounds R]

Prints:
  1. discover_vms() wall time with N real VMs (tinykvm, one vCPU each) among the host's other
     processes, median of 5, and per process scanned;
  2. tinykvm port-I/O exits per second (each one a round trip to the VMM) without tracing and
     with bpf/kvm_exits.c attached, interleaved rounds, as a ratio.
Run as root.
"""
from __future__ import annotations

import argparse
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

from vcheck.probes import BpfProgram  # noqa: E402
from vcheck.collectors.hypervisor import discover_vms  # noqa: E402
from vcheck.collectors.kvm import SOURCE, TRACEPOINTS  # noqa: E402
from vcheck.procfs import HostRoots  # noqa: E402


def build_tinykvm(workdir: Path) -> Path:
    exe = workdir / "tinykvm"
    subprocess.run([shutil.which("gcc") or "cc", "-O2", "-pthread", "-o", str(exe),
                    str(REPO / "tests/rig/tinykvm.c")], check=True)
    return exe


def start_vm(exe: Path) -> subprocess.Popen:
    p = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("ready")
    return p


def exits_per_second(vm: subprocess.Popen, n: int) -> float:
    t = time.perf_counter()
    vm.stdin.write(f"{n}\n")
    vm.stdin.flush()
    assert vm.stdout.readline().strip() == f"done {n}"
    return n / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=100)
    ap.add_argument("--exits", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_hypervisor: run as root (KVM, BPF)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_tinykvm(Path(tmp))
        vms = [start_vm(exe) for _ in range(args.vms)]
        try:
            roots = HostRoots()
            nproc = sum(1 for p in os.listdir("/proc") if p.isdigit())
            times = []
            for _ in range(5):
                t = time.perf_counter()
                found = discover_vms(roots)
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            print(f"discovery: {len(found)} VMs among {nproc} processes in {med * 1e3:.1f} ms "
                  f"({med / nproc * 1e6:.0f} us per process scanned, median of 5)")
            for vm in vms[1:]:
                vm.stdin.close()
                vm.wait()
            vms = vms[:1]

            plain, traced = [], []
            for _ in range(args.rounds):
                plain.append(exits_per_second(vms[0], args.exits))
                prog = BpfProgram(SOURCE, TRACEPOINTS).load()
                try:
                    traced.append(exits_per_second(vms[0], args.exits))
                finally:
                    prog.close()
            p, q = statistics.median(plain), statistics.median(traced)
            print(f"userspace exits/s: untraced {p:,.0f}, with kvm_exits.c {q:,.0f}, ratio {q / p:.3f} "
                  f"(about {(1 / q - 1 / p) * 1e9:.0f} ns added per exit)")
        finally:
            for vm in vms:
                vm.kill()
                vm.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
