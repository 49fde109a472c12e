"""Guest scheduler: run-queue latency (wakeup -> running) per CPU and for the node, through BPF.

The figure a noisy neighbour moves inside a VM: how long a runnable task waited for a CPU.
The BPF half is ``bpf/runq_latency.c``; this module only reads its per-CPU histograms at the
end of the window and files them (the all-CPU figure is their merge).
"""
from __future__ import annotations

from typing import Mapping

from ..bpf import Attach, BpfProgram
from ..model import MetricSpec
from ..histogram import Histogram
from ..procfs import HostRoots
from ..units import TIME
from .base import Collector
from .guest import CpuStatCollector

RUNQ_TRACEPOINTS = (
    Attach("sched", "sched_wakeup", "vchk_rq_wakeup"),
    Attach("sched", "sched_wakeup_new", "vchk_rq_wakeup_new"),
    Attach("sched", "sched_switch", "vchk_rq_switch"),
)

RUNQ_METRICS = (
    MetricSpec(name="sched.runq.latency", layer="guest", dimension=TIME, kind="distribution",
               labels=("cpu",), entity="cpu", natural_stat="p99",
               source="BPF sched:sched_wakeup[_new] / preemption -> sched:sched_switch (bpf/runq_latency.c)",
               description="time a runnable task waited on a run queue before it ran (runqlat), "
                           "charged to the CPU it ran on"),
)


class RunqLatencyCollector(Collector):
    name = "guest.runq.bpf"
    METRICS = RUNQ_METRICS

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        return CpuStatCollector.discover(roots, metric)

    def start(self) -> None:
        self._prog: BpfProgram | None = None
        self._prog = BpfProgram("runq_latency.c", RUNQ_TRACEPOINTS).load()
        for n in self._prog.notes:
            self.store.note(self.name, n)

    def begin(self, t0: float) -> None:
        self._prog.clear("hist", "stats")

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
        self.close()
        source = {"source": "BPF sched tracepoints"}
        node = Histogram(scale=1e-9)
        for cpu, h in sorted(per_cpu.items()):
            self.store.set_histogram("sched.runq.latency", {"cpu": str(cpu)}, h, source)
            node = node.merge(h)
        self.store.set_histogram("sched.runq.latency", {}, node, source)

    def close(self) -> None:
        prog, self._prog = getattr(self, "_prog", None), None
        if prog is not None:
            prog.close()
