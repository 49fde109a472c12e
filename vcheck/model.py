"""The model every layer shares: what a metric is, which layers and outcomes exist.

It sits at the bottom of the import graph so that collectors (which declare metrics), the
policy loader (which resolves them) and the catalogue (which gathers them) all depend on it
and never on each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Layer(StrEnum):
    HYPERVISOR = "hypervisor"
    GUEST = "guest"
    CONTAINER = "container"


LAYERS: tuple[str, ...] = tuple(layer.value for layer in Layer)


class OnMissing(StrEnum):
    """What a check means when its metric has no data on this node."""

    FAIL = "fail"
    SKIP = "skip"
    PASS = "pass"


# A guest metric comes from the node's own /proc: when it is missing something is broken, so
# fail. A node need not host VMs or containers: skip.
# info key (+ the op or other part) under which a source says how many events its evidence
# should hold and does not (its budget spent, its buffer full): a Python check reading the
# events then cannot pass on them (observe.Observed.events)
EVENTS_LEFT_OUT = "events_left_out."

DEFAULT_ON_MISSING = {Layer.GUEST: OnMissing.FAIL, Layer.HYPERVISOR: OnMissing.SKIP,
                      Layer.CONTAINER: OnMissing.SKIP}


class Kind(StrEnum):
    SERIES = "series"               # sampled values
    DISTRIBUTION = "distribution"   # an in-kernel histogram over the window


class Outcome(StrEnum):
    """A check's verdict (what pytest reports)."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"        # inconclusive: the window was too thin, or the source blind
    WAIVED = "waived"
    NOT_RUN = "not-run"


class EntityOutcome(StrEnum):
    """One entity's part of a verdict."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    MISSING = "missing"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    layer: str                # a Layer
    dimension: str            # units.PERCENT, TIME, ...
    kind: str                 # a Kind
    labels: tuple[str, ...]   # identity labels of an entity (cpu, device, vm, reason, ...)
    entity: str               # the entity kind, for humans: "cpu", "device", "vm"...
    natural_stat: str         # statistic used when an expect string names none
    source: str               # where the figure comes from
    description: str
    collector: str = ""       # filled in by the catalogue
    # labels known before sampling (items are made per these); others (exit reason, op) are
    # only seen in the data and are judged inside an item, each separately
    discoverable: tuple[str, ...] | None = None
    # labels an entity may carry for select: but that are not identity (namespace, pod, vm name)
    attributes: tuple[str, ...] = ()
    # a sample exists only for intervals with activity (no I/O: no await); few samples then
    # mean an idle entity, not a thin window, and are never judged inconclusive
    sparse: bool = False
    # a label whose values are paths in a tree (a cgroup): per: makes items down to a depth,
    # the default or as deep as a select: glob on it reaches
    hierarchy: str | None = None

    @property
    def item_labels(self) -> tuple[str, ...]:
        return self.labels if self.discoverable is None else self.discoverable

    @property
    def data_only_labels(self) -> tuple[str, ...]:
        """Identity labels seen only in the data (an exit reason, an I/O op), never at discovery."""
        return tuple(k for k in self.labels if k not in self.item_labels)


class MetricLookup(Protocol):
    """What the policy loader needs of a catalogue."""

    def get(self, name: str) -> MetricSpec | None: ...

    def suggest(self, name: str) -> str: ...
