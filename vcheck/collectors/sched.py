"""Guest scheduler: run-queue latency (wakeup -> running) per CPU and for the node, through BPF,
and who had the CPU while tasks waited (culprits).

The figure a noisy neighbour moves inside a VM: how long a runnable task waited for a CPU.
The BPF half is ``bpf/runq_latency.c``; this module reads its per-CPU histograms and the waits
it split among the tasks that ran meanwhile at the end of the window, and files them (the
all-CPU figure is their merge). The hypervisor collector uses the same program for vCPU threads.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..probes import Attach, BpfProgram, BpfUnavailable
from ..model import MetricSpec
from ..histogram import Histogram
from ..identity import Resolver
from ..procfs import HostRoots
from ..units import TIME
from .base import Collector, Needs
from .guest import CpuStatCollector

# raw under CO-RE: a classic tracepoint takes the kernel ~75 ms to detach, a raw one a few ms
RUNQ_TRACEPOINTS = (
    Attach("sched", "sched_wakeup", "vchk_rq_wakeup", raw_core=True),
    Attach("sched", "sched_wakeup_new", "vchk_rq_wakeup_new", raw_core=True),
    Attach("sched", "sched_switch", "vchk_rq_switch", raw_core=True),
)

CULPRIT_FLAGS = ("-DVCHK_CULPRITS",)                 # per-CPU victims, beside the histogram
# watched tids only (vCPU threads): VCHK_NO_HIST implies VCHK_WATCH in the source, so set-up
# prebuilds this variant under this name (a -DVCHK_WATCH beside it named one never built: bcc)
WATCH_FLAGS = ("-DVCHK_NO_HIST",)
UNATTRIBUTED = 0xFFFFFFFF   # bpf/runq_latency.c: the part of a wait older than the CPU's history
VICTIM_CPU, VICTIM_TASK = 0, 1   # bpf/runq_latency.c: whose wait a culprit's time is
RING_SLOTS = 64             # bpf/runq_latency.c: segments of history kept per CPU
SEGMENT_TASKS = 4           # bpf/runq_latency.c: distinct tasks one segment sums
SEGMENT_MS = 4              # bpf/runq_latency.c: a segment closes at its first switch after this
BCC_WALK = 32               # bpf/runq_latency.c: segments the bcc path walks back (no bpf_loop there)


def walked(prog: BpfProgram) -> int:
    """Segments of a CPU's history a wait is split over, on the path the program loaded by."""
    return RING_SLOTS if prog.path == "core" else BCC_WALK
CULPRITS_KEPT = 5           # per entity; the rest are summed in a note
CULPRIT_MIN_SHARE = 0.01    # smaller parts are summed in the note too (the largest is always kept)

Charges = dict[int, tuple[str, int]]   # culprit pid -> (comm, ns of the victim's wait)

RUNQ_METRICS = (
    MetricSpec(name="sched.runq.latency", layer="guest", dimension=TIME, kind="distribution",
               labels=("cpu",), entity="cpu", natural_stat="p99",
               source="BPF sched:sched_wakeup[_new] / preemption -> sched:sched_switch (bpf/runq_latency.c)",
               description="time a runnable task waited on a run queue before it ran (runqlat), "
                           "charged to the CPU it ran on; culprits: the tasks that had that CPU meanwhile"),
)


class RunqLatencyCollector(Collector):
    name = "guest.runq.bpf"
    METRICS = RUNQ_METRICS
    NEEDS = Needs(program=("runq_latency.c", RUNQ_TRACEPOINTS, CULPRIT_FLAGS), what="sched.runq.latency (BPF)")

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        return CpuStatCollector.discover(roots, metric)

    def start(self) -> None:
        self._prog: BpfProgram | None = None
        self._culprits = True
        try:
            self._prog = BpfProgram("runq_latency.c", RUNQ_TRACEPOINTS, cflags=CULPRIT_FLAGS,
                                    cost_sink=self.store.bpf_cost).load()
        except BpfUnavailable as exc:
            # the latency alone may still load (a verifier that rejects the history walk)
            self._prog = BpfProgram("runq_latency.c", RUNQ_TRACEPOINTS, cost_sink=self.store.bpf_cost).load()
            self._culprits = False
            self.store.note(self.name, f"run-queue culprits unavailable: {exc.reason}")
        for n in self._prog.notes:
            self.store.note(self.name, n)

    def begin(self, t0: float) -> None:
        self._prog.clear("hist", "stats", *(("culprits", "counters") if self._culprits else ()))

    def sample(self, t: float) -> None:
        """Nothing to poll: the histograms are read once at the end of the window."""

    @property
    def polls(self) -> bool:
        return False

    def stop(self, t: float) -> None:
        prog = self._prog
        if prog is None:
            return
        per_cpu = prog.histograms(lambda k: k.cpu)
        charges = read_charges(prog, VICTIM_CPU) if self._culprits else {}
        counters = prog.counters() if self._culprits else {}
        history = walked(prog)
        self.close()
        resolver = task_resolver(self.roots)
        source = {"source": "BPF sched tracepoints"}
        node = Histogram(scale=1e-9)
        for cpu, h in sorted(per_cpu.items()):
            o = self.store.set_histogram("sched.runq.latency", {"cpu": str(cpu)}, h, source)
            if cpu in charges:
                o.culprits, notes = culprits(charges[cpu], resolver, history=history)
                o.notes.extend(notes)
            node = node.merge(h)
        o = self.store.set_histogram("sched.runq.latency", {}, node, source)
        if charges:
            o.culprits, notes = culprits(merge_charges(charges.values()), resolver, history=history)
            o.notes.extend(notes)
        if counters.get("culprits_full"):
            self.store.note(self.name, f"{counters['culprits_full']} waits were not split among culprits: "
                                       "the culprit map was full")

    def close(self) -> None:
        prog, self._prog = getattr(self, "_prog", None), None
        if prog is not None:
            prog.close()


# --- culprits ------------------------------------------------------------------------------
def read_charges(prog: BpfProgram, kind: int) -> dict[int, Charges]:
    """The culprits map of bpf/runq_latency.c for one kind of victim, as {victim (a CPU or a
    tid): {culprit pid: (comm, ns)}}."""
    out: dict[int, Charges] = {}
    for k, v in prog["culprits"].items():
        if k.kind != kind:
            continue
        mine = out.setdefault(int(k.victim), {})
        comm, ns = mine.get(int(k.pid), ("", 0))
        mine[int(k.pid)] = (comm or v.comm.decode("utf-8", "replace"), ns + int(v.ns))
    return out


def merge_charges(parts: Iterable[Charges]) -> Charges:
    """Several victims' charges as one (the node's wait from every CPU's)."""
    out: Charges = {}
    for part in parts:
        for pid, (comm, ns) in part.items():
            prev = out.get(pid, ("", 0))
            out[pid] = (prev[0] or comm, prev[1] + ns)
    return out


def task_resolver(roots: HostRoots, vms: list | None = None) -> Any:
    """vcheck.identity's Resolver (one identity for any task), VMs already found passed on."""
    return Resolver(roots, vms=vms)


def culprit_entry(pid: int, comm: str, ns: int, total: int, resolver: Any) -> dict[str, Any]:
    """One culprit as evidence carries it (the shape `vcheck explain` reads)."""
    share = round(ns / total, 4) if total else 0.0
    if pid == 0:    # the CPU was idle while the task waited: it was being woken up
        return {"pid": 0, "comm": comm or "swapper", "share": share, "wait": ns / 1e9,
                "owner": "idle CPU", "describe": f"the idle task '{comm or 'swapper'}' (the CPU was waking up)",
                "cgroup": "", "nspid": []}
    ident = resolver.resolve(pid, comm)
    return {"pid": pid, "comm": ident.comm, "share": share, "wait": ns / 1e9, "owner": ident.owner,
            "describe": ident.describe(), "cgroup": ident.cgroup, "nspid": list(ident.nspid)}


def culprits(charges: Charges, resolver: Any, keep: int = CULPRITS_KEPT,
             history: int = RING_SLOTS) -> tuple[list[dict[str, Any]], list[str]]:
    """The top `keep` tasks by wait taken from the victim, each with its share of the whole wait,
    and notes on the rest (tasks not kept, wait older than the CPU's history)."""
    total = sum(ns for _, ns in charges.values())
    if total <= 0:
        return [], []
    ranked = sorted(((ns, pid, comm) for pid, (comm, ns) in charges.items() if pid != UNATTRIBUTED and ns > 0),
                    reverse=True)
    shown = [r for i, r in enumerate(ranked[:keep]) if i == 0 or r[0] >= CULPRIT_MIN_SHARE * total]
    out = [culprit_entry(pid, comm, ns, total, resolver) for ns, pid, comm in shown]
    notes = []
    rest = ranked[len(shown):]
    if rest:
        notes.append(f"{len(rest)} more tasks took {sum(ns for ns, _, _ in rest) / total:.1%} of the wait")
    lost = charges.get(UNATTRIBUTED, ("", 0))[1]
    if lost >= 0.001 * total:
        notes.append(f"{lost / total:.1%} of the wait is not attributed: it began before the CPU's kept "
                     f"history ({history} stretches of at most {SEGMENT_TASKS} distinct tasks or "
                     f"{SEGMENT_MS} ms each), or before vcheck attached")
    return out, notes
