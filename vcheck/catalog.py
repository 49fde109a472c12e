"""The metric catalogue: every metric vcheck can judge, and which collector observes it.

Each collector module declares its metrics next to the code that measures them (one obvious
place for the computation *and* its description); this module gathers them into one lookup
and is what ``vcheck metrics`` prints.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .collectors.base import Collector

LAYERS = ("hypervisor", "guest", "container")

# Default on_missing per layer. A guest metric comes from the node's own /proc: when it is
# missing something is broken, so fail. A node need not host VMs or containers: skip.
DEFAULT_ON_MISSING = {"guest": "fail", "hypervisor": "skip", "container": "skip"}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    layer: str
    dimension: str            # units.PERCENT, TIME, ...
    kind: str                 # "series" (sampled values) or "distribution" (histogram)
    labels: tuple[str, ...]   # identity labels of an entity (cpu, device, vm, reason, ...)
    entity: str               # the entity kind, for humans: "cpu", "device", "vm"...
    natural_stat: str         # statistic used when an expect string names none
    source: str               # where the figure comes from
    description: str
    collector: str = ""       # filled in by the registry
    # labels known before sampling (items are made per these); others (exit reason, op) are
    # only seen in the data and are judged inside an item, each separately
    discoverable: tuple[str, ...] | None = None
    # labels an entity may carry for select: but that are not identity (namespace, pod, vm name)
    attributes: tuple[str, ...] = ()
    # a sample exists only for intervals with activity (no I/O: no await); few samples then
    # mean an idle entity, not a thin window, and are never judged inconclusive
    sparse: bool = False

    @property
    def item_labels(self) -> tuple[str, ...]:
        return self.labels if self.discoverable is None else self.discoverable


# Every collector: module under vcheck.collectors -> its collector classes. Adding a layer is
# one line here. Imports are cheap: no collector loads BPF or talks to a runtime on import.
COLLECTOR_MODULES: dict[str, tuple[str, ...]] = {
    "guest": ("CpuStatCollector", "PressureCollector"),
    "disk": ("DiskStatsCollector", "BlockLatencyCollector"),
    "sched": ("RunqLatencyCollector",),
    "hypervisor": ("HypervisorCollector",),
    "kvm": ("KvmExitCollector",),
    "containers.collector": ("ContainerCollector",),
}


def collector_classes() -> tuple[type["Collector"], ...]:
    import importlib

    classes = []
    for modname, names in COLLECTOR_MODULES.items():
        mod = importlib.import_module(f"vcheck.collectors.{modname}")
        classes.extend(getattr(mod, n) for n in names)
    return tuple(classes)


class Catalog:
    """Name -> MetricSpec, built from the collectors."""

    def __init__(self, classes: tuple[type["Collector"], ...] | None = None):
        self.collectors: dict[str, type[Collector]] = {}
        self.metrics: dict[str, MetricSpec] = {}
        for cls in classes if classes is not None else collector_classes():
            self.collectors[cls.name] = cls
            for spec in cls.METRICS:
                if spec.name in self.metrics:
                    raise RuntimeError(f"metric {spec.name} declared twice")
                self.metrics[spec.name] = _with_collector(spec, cls.name)

    def get(self, name: str) -> MetricSpec | None:
        return self.metrics.get(name)

    def suggest(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self.metrics), n=1)
        return f" (did you mean {close[0]}?)" if close else " (see `vcheck metrics`)"

    def collector_for(self, metric: str) -> type["Collector"]:
        return self.collectors[self.metrics[metric].collector]


def _with_collector(spec: MetricSpec, collector: str) -> MetricSpec:
    from dataclasses import replace

    return replace(spec, collector=collector)
