"""The metric catalogue: every metric vcheck can judge, and which collector observes it.

Each collector module declares its metrics next to the code that measures them (one obvious
place for the computation *and* its description); this module gathers them into one lookup
and is what ``vcheck metrics`` prints.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import replace

from .collectors.base import Collector
from .model import MetricSpec

# Every collector: module under vcheck.collectors -> its collector classes. Adding a layer is
# one line here. Imports are cheap: no collector loads BPF or talks to a runtime on import.
COLLECTOR_MODULES: dict[str, tuple[str, ...]] = {
    "guest": ("CpuStatCollector", "PressureCollector"),
    "disk": ("DiskStatsCollector", "BlockLatencyCollector"),
    "sched": ("RunqLatencyCollector",),
    "hypervisor": ("HypervisorCollector",),
    "kvm": ("KvmExitCollector",),
    "cgroups": ("CgroupCollector",),
    "containers.collector": ("ContainerCollector",),
    "net": ("NetCollector", "ContainerNetCollector", "VmNetCollector"),
    "net_drops": ("NetDropsCollector",),
    "net_tcp": ("TcpLatencyCollector",),
}


def collector_classes() -> tuple[type[Collector], ...]:
    classes = []
    for modname, names in COLLECTOR_MODULES.items():
        mod = importlib.import_module(f"vcheck.collectors.{modname}")
        classes.extend(getattr(mod, n) for n in names)
    return tuple(classes)


class Catalog:
    """Name -> MetricSpec, built from the collectors."""

    def __init__(self, classes: tuple[type[Collector], ...] | None = None):
        self.collectors: dict[str, type[Collector]] = {}
        self.metrics: dict[str, MetricSpec] = {}
        for cls in classes if classes is not None else collector_classes():
            self.collectors[cls.name] = cls
            for spec in cls.METRICS:
                if spec.name in self.metrics:
                    raise RuntimeError(f"metric {spec.name} declared twice")
                self.metrics[spec.name] = replace(spec, collector=cls.name)

    def get(self, name: str) -> MetricSpec | None:
        return self.metrics.get(name)

    def suggest(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self.metrics), n=1)
        return f" (did you mean {close[0]}?)" if close else " (see `vcheck metrics`)"

