"""The VMs dimension of bench_scale.py: the hypervisor layer's cost with n real qemu/KVM guests.

    sudo .venv/bin/python benchmarks/scale_vms.py [--sizes 4,16,64] [--vcpus 8] [--rounds 5] [--spin]
    (bench_scale.py --only vms runs the same with 4/16/64 guests, --quick 2/4/8)

Each guest is a real `qemu-system-x86_64 -accel kvm` process (32 MB, no disk, 8 vCPUs) whose
BIOS is a few instructions of our own (TICK_BIOS): CPU 0 programs the 8259 PIC and the PIT for
100 Hz, then halts; each tick it writes port 0x80 (an exit to qemu) and acknowledges the PIC
(an exit handled by KVM). The other vCPUs wait for a start-up IPI that never comes: their
threads sit in ioctl(KVM_RUN), as an idle SMP guest's do. So the guests idle, as most VMs on a
dense host do, and keep this 2-CPU machine's CPUs for the measuring; every guest still makes
KVM exits each second, so the kvm_exit program's maps hold entries for every VM. With --spin
CPU 0 of each guest spins in guest mode instead (`jmp $`): that measures the contention.

For each size, in a process of its own (its peak RSS is the measuring process's):
  discovery   discover_vms(): the /proc walk that finds VMs and their vCPU threads
  sample      one sample of every hypervisor-layer metric (vm.*, vcpu.*), median of --rounds
  kvm sample  one sample of the kvm_exit collector (BPF maps read into rates), median
  kvm stop    its end-of-window read (histograms, quiet VMs' zeros)
Every guest is killed afterwards, also on an error, Ctrl-C or SIGTERM (and, through
PR_SET_PDEATHSIG, if this process itself is killed). Run as root.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GUEST_PREFIX = f"vcheck-scale-{os.getpid()}-vm"   # this run's guests, told apart from any other's
GUEST_MB = 32
HOST_MB_PER_GUEST = 96      # what one guest may take of the host (qemu's own ~35 MB RSS + its RAM)
START_TIMEOUT = 30.0

# 16-bit code at F000:E000 (assembled with `as --32`, .code16):
#   cli; ds = ss = 0; sp = 0x7000; IVT[8] = F000:E047 (the tick handler)
#   ecx = 0x1b; rdmsr; ax &= 0xf7ff; wrmsr        hardware-disable the LAPIC: the PIC delivers
#   8259: ICW1 0x11, ICW2 0x08, ICW3 0x04, ICW4 0x01, mask 0xfe (IRQ0 only)
#   PIT channel 0 mode 2, divisor 11932 (100 Hz); sti
#   idle: hlt; jmp idle
#   handler (E047): out 0x80, al; out 0x20, 0x20 (EOI); iret
TICK_CODE = bytes.fromhex(
    "fa31c08ed88ed0bc0070c706200047e0c706220000f066b91b0000000f3225fff70f30b011e620b008e621b004"
    "e621b001e621b0fee621b034e643b09ce640b02ee640fbf4ebfde680b020e620cf")
CODE_AT = 0xE000
RESET_VECTOR = 0xFFF0
FAR_JUMP = bytes([0xEA, CODE_AT & 0xFF, CODE_AT >> 8, 0x00, 0xF0])   # jmp F000:E000
SPIN = b"\xeb\xfe"                                                   # jmp $


def bios_image(spin: bool) -> bytes:
    """A 64 KiB BIOS: the tick-and-halt code above, or one `jmp $` at the reset vector."""
    image = bytearray(64 * 1024)
    if spin:
        image[RESET_VECTOR:RESET_VECTOR + 2] = SPIN
    else:
        image[CODE_AT:CODE_AT + len(TICK_CODE)] = TICK_CODE
        image[RESET_VECTOR:RESET_VECTOR + len(FAR_JUMP)] = FAR_JUMP
    return bytes(image)


# --- guests ---------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the qemu child before exec: SIGKILL when the benchmark dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


def _vcpu_threads(pid: int) -> int:
    n = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                if Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith("CPU "):
                    n += 1
            except OSError:
                continue
    except OSError:
        pass
    return n


class Guests:
    """n qemu guests, killed on leaving the block (any way out)."""

    def __init__(self, n: int, vcpus: int, bios: Path):
        self.n, self.vcpus, self.bios = n, vcpus, bios
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Guests":
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise RuntimeError("qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)")
        try:
            for i in range(self.n):
                self.procs.append(subprocess.Popen(
                    [qemu, "-accel", "kvm", "-bios", str(self.bios), "-name", f"guest={GUEST_PREFIX}{i},debug-threads=on",
                     "-m", str(GUEST_MB), "-smp", str(self.vcpus), "-display", "none", "-monitor", "none",
                     "-nodefaults"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent))
            deadline = time.monotonic() + START_TIMEOUT + self.n * 0.5
            for p in self.procs:
                while _vcpu_threads(p.pid) < self.vcpus:
                    if p.poll() is not None:
                        raise RuntimeError(f"qemu (pid {p.pid}) exited {p.returncode} before its vCPUs started")
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"qemu (pid {p.pid}) did not start {self.vcpus} vCPU threads in time")
                    time.sleep(0.05)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
        self.procs.clear()


class _Interrupted(KeyboardInterrupt):
    pass


def _raise_interrupt(signum, frame):
    raise _Interrupted(f"signal {signum}")


def fits(n: int) -> bool:
    """Whether n more guests fit in the memory the host has available (with 1 GB to spare)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024 - 1024 >= n * HOST_MB_PER_GUEST
    return True


# --- the measuring child ----------------------------------------------------------------------

def measure(rounds: int, prefix: str) -> dict:
    """In a process of its own, with the guests running: the figures of one size."""
    from vcheck.collectors.base import CollectContext, CollectRequest
    from vcheck.collectors.hypervisor import HYPERVISOR_METRICS, HypervisorCollector, discover_vms
    from vcheck.collectors.kvm import KVM_METRICS, KvmExitCollector
    from vcheck.observations import ObservationStore
    from vcheck.procfs import HostRoots

    roots = HostRoots()
    times, vms = [], []
    for _ in range(3):
        t = time.perf_counter()
        vms = discover_vms(roots)
        times.append(time.perf_counter() - t)
    out: dict = {"discovery": statistics.median(times), "vms": len(vms),
                 "vcpus": sum(len(v.vcpus) for v in vms),
                 "ours": sum(1 for v in vms if v.name.startswith(prefix)),
                 "processes": sum(1 for p in os.listdir("/proc") if p.isdigit())}

    paths: set[str] = set()

    def run(cls, metrics: frozenset[str], prefix: str) -> None:
        store = ObservationStore()
        c = cls(CollectContext(roots, store), CollectRequest(metrics, 60.0, 1.0))
        try:
            t = time.perf_counter()
            c.start()
            out[f"{prefix}start"] = time.perf_counter() - t
            c.begin(time.monotonic())
            t0 = time.monotonic()
            samples = []
            prog = getattr(c, "_prog", None)
            read0 = prog.entries_read if prog is not None else 0
            for _ in range(rounds):
                time.sleep(0.2)
                t = time.perf_counter()
                c.sample(time.monotonic() - t0)
                samples.append(time.perf_counter() - t)
            out[f"{prefix}sample"] = statistics.median(samples)
            if prog is not None:
                out[f"{prefix}entries"] = (prog.entries_read - read0) / rounds
            t = time.perf_counter()
            c.stop(time.monotonic() - t0)
            out[f"{prefix}stop"] = time.perf_counter() - t
            out[f"{prefix}series"] = sum(1 for o in store.all() if o.values or o.histogram is not None)
        finally:
            c.close()
        paths.update(f"{cost['program']} via {cost['path']}" for cost in store.bpf_costs)

    run(HypervisorCollector, frozenset(m.name for m in HYPERVISOR_METRICS), "")
    run(HypervisorCollector, frozenset({"vcpu.cpu"}), "cpu_")
    try:
        run(KvmExitCollector, frozenset(m.name for m in KVM_METRICS), "kvm_")
    except Exception as exc:   # BPF may be unavailable: the /proc figures stand alone
        out["kvm_error"] = str(getattr(exc, "reason", exc))
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["bpf"] = ", ".join(sorted(paths))
    return out


# --- the dimension ----------------------------------------------------------------------------

def _child(rounds: int) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", GUEST_PREFIX, "--rounds", str(rounds)],
                         capture_output=True, text=True, cwd=REPO)
    if res.returncode != 0:
        raise RuntimeError(f"the measuring process exited {res.returncode}: {res.stderr[-800:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_vms(sizes: list[int], rounds: int, vcpus: int = 8, spin: bool = False) -> dict:
    """Start each size's guests, measure in a child process, kill the guests; print the table."""
    from bench_scale import exponent

    if os.geteuid() != 0:
        print("\nVMs: not measured (run as root: KVM, /proc of other processes, BPF)")
        return {}
    if not os.path.exists("/dev/kvm"):
        print("\nVMs: not measured (no /dev/kvm on this machine)")
        return {}
    held = [n for n in sizes if fits(n)]
    print(f"\nVMs: one sample of the hypervisor layer with n real qemu/KVM guests ({vcpus} vCPUs, {GUEST_MB} MB "
          f"each; {'CPU 0 spinning in guest mode' if spin else 'idle: CPU 0 halts between 100 Hz timer ticks, the other vCPUs wait in KVM_RUN'}"
          "; each size in its own process)")
    if held != sizes:
        print(f"  sizes {', '.join(str(n) for n in sizes if n not in held)} left out: not enough free memory")
    print("  sample: every vm.* and vcpu.* figure; vcpu.cpu: that figure alone; kvm: the kvm_exit collector "
          "(its sample reads the BPF maps, entries = map entries read per sample; stop = its end of window, "
          "detaching included)")
    print(f"  {'VMs':>5s} {'vCPUs':>6s} {'discovery':>10s} {'sample':>9s} {'per VM':>8s} {'per vCPU':>9s} "
          f"{'vcpu.cpu':>9s} {'per vCPU':>9s} "
          f"{'kvm sample':>11s} {'entries':>8s} {'kvm stop':>9s} {'peak RSS':>9s}")
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    rows, found, per = [], [], {"discovery": [], "sample": [], "cpu_sample": [], "kvm_sample": [], "kvm_stop": []}
    try:
        with tempfile.TemporaryDirectory(prefix="vcheck-scale-vms-") as tmp:
            bios = Path(tmp) / "bios.bin"
            bios.write_bytes(bios_image(spin))
            with Guests(1, vcpus, bios):   # the trivial size: start-up, imports, BPF programs loaded
                base = _child(rounds)
            print(f"  (1 guest: peak RSS {base['rss']:.0f} MB, the BPF programs' loading included; "
                  "memory growth is fitted above it)")
            for n in held:
                with Guests(n, vcpus, bios):
                    time.sleep(0.5)
                    r = _child(rounds)
                if r["ours"] != n:
                    raise RuntimeError(f"discovery found {r['ours']} of the {n} guests started")
                kvm = (f"{r['kvm_sample'] * 1e3:9.2f}ms {r['kvm_entries']:8.0f} {r['kvm_stop'] * 1e3:7.1f}ms"
                       if "kvm_sample" in r else f"{'n/a':>11s} {'':>8s} {'':>9s}")
                print(f"  {r['vms']:>5d} {r['vcpus']:>6d} {r['discovery'] * 1e3:8.1f}ms {r['sample'] * 1e3:7.2f}ms "
                      f"{r['sample'] / r['vms'] * 1e6:6.0f}us {r['sample'] / max(r['vcpus'], 1) * 1e6:7.1f}us "
                      f"{r['cpu_sample'] * 1e3:7.2f}ms {r['cpu_sample'] / max(r['vcpus'], 1) * 1e6:7.1f}us "
                      f"{kvm} {r['rss']:7.0f}MB")
                rows.append((r["vms"], r["sample"], r["rss"]))
                found.append(r["vms"])
                found_procs, last = r["processes"], r
                for k in per:
                    if k in r:
                        per[k].append(r[k])
                if "kvm_error" in r:
                    print(f"        (kvm_exit collector not measured: {r['kvm_error']})")
                if r["vms"] != n:
                    print(f"        ({r['vms'] - n} VMs on this host besides the benchmark's are counted too)")
    except KeyboardInterrupt as exc:   # Ctrl-C, SIGTERM, SIGHUP: the guests are gone by now
        print(f"VMs: interrupted ({str(exc) or 'Ctrl-C'}): every guest stopped", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
    if len(rows) < 2:
        return {"rows": rows}
    fit = {k: exponent(found, v) for k, v in per.items() if len(v) == len(found)}
    print(f"  series filed at {found[-1]} VMs: {last['series']} (every VM 3, every vCPU 4: "
          f"{3 * last['vms'] + 4 * last['vcpus']}); BPF: {last['bpf'] or 'none loaded'}")
    marginal = [r[2] - base["rss"] for r in rows]
    names = {"cpu_sample": "vcpu.cpu sample", "kvm_sample": "kvm sample", "kvm_stop": "kvm stop"}
    if max(marginal) >= 0.05 * base["rss"]:
        fit["memory"] = exponent(found, marginal)
        memory = f"{fit['memory']:.2f}"
    else:   # MB-resolution noise on top of the programs' loading: a fit would be of the noise
        memory = (f"not fitted ({marginal[-1]:+.0f} MB at {found[-1]} VMs, under 5 % of the "
                  f"{base['rss']:.0f} MB peak the 1-guest run reaches)")
    print("  growth exponent: " + ", ".join(f"{names.get(k, k)} {v:.2f}" for k, v in fit.items() if k != "memory")
          + f", memory {memory}")
    print(f"  (memory: peak RSS above the 1-guest run's, {' / '.join(f'{m:+.0f}' for m in marginal)} MB; discovery "
          f"walks every process on the host, {found_procs} at the largest size; a sample is the median of {rounds})")
    return {"rows": rows, "exponents": fit}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="4,16,64")
    ap.add_argument("--vcpus", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--spin", action="store_true", help="CPU 0 of each guest spins instead of idling")
    ap.add_argument("--child", metavar="GUEST_PREFIX", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.rounds, args.child)))
        return 0
    bench_vms([int(s) for s in args.sizes.split(",")], args.rounds, args.vcpus, args.spin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
