"""Hypervisor: KVM exits per VM and reason through BPF (``bpf/kvm_exits.c``), what ``perf kvm
stat`` and ``kvmexits.bt`` show by hand.

VMs come from the hypervisor collector's discovery (a process holding a kvm-vm fd), so an exit
is filed under the VM's name. Exit reasons are named from the kernel's own tables, read from
the ``kvm:kvm_exit`` format file (VMX when the event's ``isa`` is 1, SVM otherwise), so a
kernel that adds a reason names it without a vcheck release.

A tracepoint can exist and never fire (nested KVM under PVM does not trace kvm_exit). When a
VM made userspace, port-I/O or MMIO exits (each a hardware exit) or was busy, yet kvm_exit saw
none, its kvm.exit.* observations are marked *blind*: the judge makes such a check
inconclusive instead of passing it on zero samples. Elsewhere zero is a sample: every rate
series has a value for every interval of the window.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

from ..probes import Attach, BpfProgram, tracefs_root
from ..model import MetricSpec
from ..histogram import Histogram
from ..observations import Observation, ObservationStore
from ..procfs import HostRoots, read_text
from ..units import RATE, TIME
from .base import Collector, Needs
from .hypervisor import CLK_TCK, discover_vms, parse_stat

# Raw tracepoints except kvm_exit, whose reason exists only in its record; kvm_fpu(1) marks
# the start of each KVM_RUN (so only vCPU threads are traced, never the host's other ioctls).
TRACEPOINTS = (
    Attach("kvm", "kvm_exit", "vchk_kvm_exit"),
    Attach("kvm", "kvm_entry", "vchk_kvm_entry", raw=True),
    Attach("kvm", "kvm_userspace_exit", "vchk_kvm_uexit", raw=True),
    Attach("kvm", "kvm_fpu", "vchk_kvm_run", optional=True, raw=True),
    Attach("kvm", "kvm_pio", "vchk_kvm_pio", raw=True),
    Attach("kvm", "kvm_mmio", "vchk_kvm_mmio", raw=True),
)
SOURCE = "kvm_exits.c"
KIND_EXIT, KIND_USERSPACE = 0, 1
MMIO_TYPES = {0: "unsatisfied-read", 1: "read", 2: "write"}
TOP_ADDRESSES = 16          # per VM: MMIO addresses with a series of their own; later ones sum as "other"
BUSY_CPU_PERCENT = 1.0      # a VM using more CPU than this must have exited at least once
RATE_METRICS = ("kvm.exit.rate", "kvm.userspace_exit.rate", "kvm.pio.rate", "kvm.mmio.rate")


def _spec(name: str, kind: str, dimension: str, labels: tuple[str, ...], desc: str, source: str) -> MetricSpec:
    return MetricSpec(name=name, layer="hypervisor", dimension=dimension, kind=kind, labels=labels,
                      discoverable=("vm",), entity="vm", natural_stat="p99" if kind == "distribution" else "max",
                      source=source, description=desc, attributes=("pid",))


KVM_METRICS = (
    _spec("kvm.exit.latency", "distribution", TIME, ("vm", "reason"),
          "kvm_exit -> kvm_entry per VM and exit reason (VMX or SVM name): in-kernel handling "
          "plus any trip to the VMM", "BPF kvm:kvm_exit -> kvm:kvm_entry"),
    _spec("kvm.exit.rate", "series", RATE, ("vm", "reason"), "exits per second per VM and reason",
          "BPF kvm:kvm_exit"),
    _spec("kvm.userspace_exit.latency", "distribution", TIME, ("vm", "reason"),
          "time the VMM held a vCPU for device emulation: kvm_userspace_exit -> its next KVM_RUN "
          "of the same thread, per KVM_EXIT_* reason",
          "BPF kvm:kvm_userspace_exit -> kvm:kvm_fpu(1) (the next KVM_RUN)"),
    _spec("kvm.userspace_exit.rate", "series", RATE, ("vm", "reason"),
          "exits to the VMM per second per VM and KVM_EXIT_* reason", "BPF kvm:kvm_userspace_exit"),
    _spec("kvm.pio.rate", "series", RATE, ("vm", "port"), "port I/O exits per second per VM and port",
          "BPF kvm:kvm_pio"),
    _spec("kvm.mmio.rate", "series", RATE, ("vm", "address"),
          f"MMIO exits per second per VM and guest-physical address (top {TOP_ADDRESSES}, rest as other)",
          "BPF kvm:kvm_mmio"),
)


# --- reason names ------------------------------------------------------------------------
_SYMBOL = re.compile(r'\{\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*,\s*(?:"KVM_EXIT_"\s*)?"([A-Za-z0-9_]+)"\s*\}')


@dataclass(frozen=True)
class ReasonNames:
    vmx: Mapping[int, str]
    svm: Mapping[int, str]
    userspace: Mapping[int, str]

    def exit_reason(self, isa: int, code: int) -> str:
        table, prefix = (self.vmx, "VMX") if isa == 1 else (self.svm, "SVM")
        return table.get(code, f"{prefix}_{code:#x}")

    def userspace_reason(self, code: int) -> str:
        if code >= 1000:
            return "restart" if code == 1004 else f"error_errno{code - 1000}"
        return self.userspace.get(code, f"KVM_EXIT_{code}")


def _symbols(text: str) -> dict[int, str]:
    return {int(v, 0) & 0xFFFFFFFF: name for v, name in _SYMBOL.findall(text)}


def parse_exit_tables(format_text: str) -> tuple[dict[int, str], dict[int, str]]:
    """(vmx, svm) from the kvm_exit format file: `(REC->isa == 1) ? __print_symbolic(VMX...)
    : __print_symbolic(SVM...)`."""
    fmt = format_text[format_text.find("print fmt:"):]
    parts = fmt.split("__print_symbolic(")
    if len(parts) < 3:
        return {}, {}
    vmx = _symbols(parts[1])
    svm = _symbols(parts[2].split("__print_flags")[0])
    return vmx, svm


def parse_userspace_table(format_text: str) -> dict[int, str]:
    fmt = format_text[format_text.find("print fmt:"):]
    return {k: f"KVM_EXIT_{v}" if not v.startswith("KVM_EXIT_") else v for k, v in _symbols(fmt).items()}


def load_reason_names() -> ReasonNames:
    root = tracefs_root()
    vmx: dict[int, str] = {}
    svm: dict[int, str] = {}
    user: dict[int, str] = {}
    if root is not None:
        try:
            vmx, svm = parse_exit_tables(read_text(root / "events/kvm/kvm_exit/format"))
            user = parse_userspace_table(read_text(root / "events/kvm/kvm_userspace_exit/format"))
        except OSError:
            pass
    return ReasonNames(vmx, svm, user)


# --- the collector -----------------------------------------------------------------------
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]   # (metric, sorted labels)


def _process_cpu_ticks(roots: HostRoots, pid: int) -> int | None:
    try:
        return parse_stat(read_text(roots.proc / str(pid) / "stat"))[0]
    except (OSError, IndexError, ValueError):
        return None


class IntervalRates:
    """Per-interval rates from cumulative event counts. Zero is a sample: every series gets one
    for every interval of the window, those before its first event backfilled as zeros, so a
    late starter's mean is its true mean and its coverage is the window's."""

    def __init__(self, store: ObservationStore, info: Callable[[Mapping[str, str]], Mapping[str, str]]):
        self.store = store
        self.info = info
        self.intervals: list[tuple[float, float]] = []   # (end time, span) of every sample
        self.last: dict[SeriesKey, int] = {}
        self._held: dict[SeriesKey, Observation] = {}    # each series, found by its labels once
        self._covered: set[tuple[str, str]] = set()      # (metric, vm) with a series of their own

    def sample(self, t: float, counts: Mapping[SeriesKey, int]) -> None:
        span = t - (self.intervals[-1][0] if self.intervals else 0.0)
        if span <= 0:
            return
        for key in counts:
            if key not in self.last:
                self.last[key] = 0
                self._covered.add((key[0], dict(key[1]).get("vm", "")))
                for ti, si in self.intervals:
                    self._add(key, ti, 0.0, si)
        for key, prev in self.last.items():
            n = max(counts.get(key, prev), prev)
            self._add(key, t, (n - prev) / span, span)
            self.last[key] = n
        self.intervals.append((t, span))

    def covers(self, metric: str, vm: str) -> bool:
        return (metric, vm) in self._covered

    def zeros(self, metric: str, labels: Mapping[str, str]) -> Observation:
        """A series of zeros, one per interval: an entity known to have had no event."""
        o = self.store.series(metric, labels, self.info(labels))
        for t, span in self.intervals:
            self.store.add_sample(metric, labels, t, 0.0, span)
        return o

    def _add(self, key: SeriesKey, t: float, value: float, span: float) -> None:
        o = self._held.get(key)
        if o is None:
            labels = dict(key[1])
            o = self._held[key] = self.store.series(key[0], labels, self.info(labels))
        self.store.append(o, t, value, span)


@dataclass(frozen=True)
class ExitsSeen:
    """A VM's exits in the window as the tracepoints other than kvm_exit saw them."""

    userspace: int = 0
    pio: int = 0
    mmio: int = 0

    def __bool__(self) -> bool:
        return bool(self.userspace or self.pio or self.mmio)

    def __str__(self) -> str:
        kinds = [f"{n} {k}" for k, n in (("userspace", self.userspace), ("pio", self.pio),
                                         ("mmio", self.mmio)) if n]
        return "/".join(kinds)


def _cpu_text(cpu_pct: float | None) -> str:
    return f"{cpu_pct:.0f}%" if cpu_pct is not None else "?"


def blind_reason(vm: str, pid: int, vmm: str, cpu_pct: float | None, seen: ExitsSeen,
                 any_exit_event: bool) -> str | None:
    """Why kvm:kvm_exit must have missed this VM's exits, or None if it may really have had none.

    Each userspace, pio or mmio exit was a hardware exit, so any of them proves kvm_exit blind;
    without them, a VM busy in guest mode must still have exited (timer ticks at least)."""
    who = f"{vm} (pid {pid}, {vmm}, {_cpu_text(cpu_pct)} CPU)"
    cause = "exits are not traced on this host (nested KVM such as PVM does not emit kvm_exit)"
    if seen:
        return f"{seen} exits seen but no kvm_exit for {who}: {cause}"
    if cpu_pct is not None and cpu_pct >= BUSY_CPU_PERCENT:
        return (f"kvm:kvm_exit saw {'no event for this VM' if any_exit_event else 'no event at all'} "
                f"while {who} was busy: {cause}")
    return None


class KvmExitCollector(Collector):
    name = "hypervisor.kvm.bpf"
    METRICS = KVM_METRICS
    NEEDS = Needs(program=(SOURCE, TRACEPOINTS, ()), what="kvm exits (BPF)")

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        return [{"vm": vm.name} for vm in discover_vms(roots)]

    def start(self) -> None:
        self._prog: BpfProgram | None = None
        self._names = load_reason_names()
        self._vms: dict[int, tuple[str, str]] = {}
        self._pids: dict[str, int] = {}    # vm name -> pid: evidence names the pid of each VM
        self._discover()
        self._not_vms: set[int] = set()   # tgids seen in the maps that discovery did not find
        self._new_window()
        self._prog = BpfProgram(SOURCE, TRACEPOINTS, cost_sink=self.store.bpf_cost).load()
        for n in self._prog.notes:
            self.store.note(self.name, n)

    def _discover(self) -> None:
        """Add the VMs on this host right now: pid -> (vm name, VMM), and name -> pid."""
        for vm in discover_vms(self.roots):
            self._vms[vm.pid] = (vm.name, vm.vmm)
            self._pids.setdefault(vm.name, vm.pid)

    def _vm(self, pid: int) -> str:
        """The VM name of a tgid; a VM started mid-window is discovered once, not per sample."""
        if pid not in self._vms and pid not in self._not_vms:
            self._discover()
            if pid not in self._vms:
                self._not_vms.add(pid)
        entry = self._vms.get(pid)
        return entry[0] if entry else f"pid{pid}"

    def _pid_of(self, vm: str) -> str:
        pid = self._pids.get(vm)
        return str(pid) if pid is not None else ""

    def _info(self, labels: Mapping[str, str]) -> dict[str, str]:
        pid = self._pid_of(labels.get("vm", ""))
        return {"pid": pid} if pid else {}

    def _new_window(self) -> None:
        self._rates = IntervalRates(self.store, self._info)
        self._mmio_known: dict[str, list[int]] = {}   # per VM: addresses with their own series
        self._cpu0 = {pid: _process_cpu_ticks(self.roots, pid) for pid in self._vms}

    def begin(self, t0: float) -> None:
        self._prog.clear("hist", "stats", "exits", "pio", "mmio", "counters")
        self._new_window()

    # per-interval rates ------------------------------------------------------------------
    def _counts(self) -> dict[SeriesKey, int]:
        """Cumulative event counts per (rate metric, labels) since the window start."""
        out: dict[SeriesKey, int] = {}
        want = self.request.metrics

        def add(metric: str, labels: dict[str, str], n: int) -> None:
            key = (metric, tuple(sorted(labels.items())))
            out[key] = out.get(key, 0) + n

        if want & {"kvm.exit.rate", "kvm.userspace_exit.rate"}:
            for k, n in self._prog.totals("exits"):
                if k.kind == KIND_EXIT:
                    add("kvm.exit.rate", {"vm": self._vm(k.tgid),
                                          "reason": self._names.exit_reason(k.isa, k.reason)}, n)
                else:
                    add("kvm.userspace_exit.rate", {"vm": self._vm(k.tgid),
                                                    "reason": self._names.userspace_reason(k.reason)}, n)
        if "kvm.pio.rate" in want:
            for k, n in self._prog.totals("pio"):
                add("kvm.pio.rate", {"vm": self._vm(k.tgid), "port": f"{k.port:#x}"}, n)
        if "kvm.mmio.rate" in want:
            per_vm: dict[str, dict[int, int]] = {}
            for k, n in self._prog.totals("mmio"):
                by_gpa = per_vm.setdefault(self._vm(k.tgid), {})
                by_gpa[k.gpa] = by_gpa.get(k.gpa, 0) + n
            for vm, by_gpa in per_vm.items():
                # an address keeps its own series once it has one: no count moves to "other"
                known = self._mmio_known.setdefault(vm, [])
                for gpa, _ in sorted(by_gpa.items(), key=lambda kv: -kv[1]):
                    if gpa not in known and len(known) < TOP_ADDRESSES:
                        known.append(gpa)
                for gpa, n in by_gpa.items():
                    add("kvm.mmio.rate", {"vm": vm, "address": f"{gpa:#x}" if gpa in known else "other"}, n)
        return out

    def sample(self, t: float) -> None:
        self._rates.sample(t, self._counts())

    # end of window -------------------------------------------------------------------------
    def stop(self, t: float) -> None:
        prog = self._prog
        if prog is None:
            return
        hists = prog.histograms(self._hist_key)
        any_exit_event = prog.counters()["exit"] > 0
        exited, seen = self._exits_by_vm()
        self.close()

        for (metric, vm, reason), h in hists.items():
            if metric in self.request.metrics:
                self.store.set_histogram(metric, {"vm": vm, "reason": reason}, h,
                                         {"source": "BPF", **self._info({"vm": vm})})
        self._file_quiet_vms(t, exited, seen, any_exit_event)

    def _hist_key(self, k) -> tuple[str, str, str]:
        vm = self._vm(k.tgid)
        if k.kind == KIND_EXIT:
            return "kvm.exit.latency", vm, self._names.exit_reason(k.isa, k.reason)
        return "kvm.userspace_exit.latency", vm, self._names.userspace_reason(k.reason)

    def _exits_by_vm(self) -> tuple[set[str], dict[str, ExitsSeen]]:
        """VMs kvm_exit saw, and every VM's userspace/pio/mmio exit counts, for the window."""
        exited: set[str] = set()
        counts: dict[str, list[int]] = {}
        for k, n in self._prog.totals("exits"):
            vm = self._vm(k.tgid)
            if k.kind == KIND_EXIT:
                exited.add(vm)
            else:
                counts.setdefault(vm, [0, 0, 0])[0] += n
        for i, table in ((1, "pio"), (2, "mmio")):
            for k, n in self._prog.totals(table):
                counts.setdefault(self._vm(k.tgid), [0, 0, 0])[i] += n
        return exited, {vm: ExitsSeen(*c) for vm, c in counts.items()}

    def _file_quiet_vms(self, t: float, exited: set[str], seen: Mapping[str, ExitsSeen],
                        any_exit_event: bool) -> None:
        """Observations for every known VM that had no event for a metric: zeros where zero is
        the truth, blind where kvm_exit must have missed its exits."""
        want = self.request.metrics
        gone = []
        for pid, (vm, vmm) in self._vms.items():
            before, after = self._cpu0.get(pid), _process_cpu_ticks(self.roots, pid)
            if after is None:
                gone.append((vm, pid))
            cpu_pct = ((after - before) / CLK_TCK / t * 100
                       if before is not None and after is not None and t > 0 else None)
            blind = None if vm in exited else blind_reason(vm, pid, vmm, cpu_pct, seen.get(vm, ExitsSeen()),
                                                           any_exit_event)
            idle = f"no KVM exit for {vm} in the window; it used {_cpu_text(cpu_pct)} CPU (idle)"
            if "kvm.exit.latency" in want and vm not in exited:
                o = self.store.set_histogram("kvm.exit.latency", {"vm": vm}, Histogram(scale=1e-9),
                                             self._info({"vm": vm}))
                if blind:
                    o.blind = blind
                else:
                    o.notes.append(idle)
            for m in RATE_METRICS:
                if m not in want or self._rates.covers(m, vm):
                    continue
                if m == "kvm.exit.rate" and blind:
                    self.store.series(m, {"vm": vm}, self._info({"vm": vm})).blind = blind
                    continue
                o = self._rates.zeros(m, {"vm": vm})
                if m == "kvm.exit.rate":
                    o.notes.append(idle)
        for vm, pid in gone:
            self.store.mark_gone({"vm": vm}, t, f"VMM process {pid} exited")

    def close(self) -> None:
        prog, self._prog = getattr(self, "_prog", None), None
        if prog is not None:
            prog.close()
