"""Which entities a check is about: the one selection rule, used both when items are made and
when an item picks its observations.

A check names entities with ``per:`` (one item per entity) and ``select:`` (which entities).
Two kinds of label meet here:

* labels known before sampling (a VM, a CPU, a device, a container and its attributes): an
  entity that lacks one cannot match a ``select:`` on it (a negation does match), and an
  observation that lacks a ``per:`` label of that kind is not that entity (a node-wide total
  is not cpu3);
* labels seen only in the data (an exit reason, an I/O op): an entity observed without one
  (a VM whose tracepoint never fired, a device with no I/O) cannot be excluded by them. It
  stays in, so a blind or empty entity is judged (inconclusive, or on_missing) instead of
  vanishing from the verdict.
"""
from __future__ import annotations

import functools
from typing import Iterable, Mapping, Sequence

from .model import MetricSpec
from .observations import Observation, ObservationStore
from .policy import Check, Selector

Labels = Mapping[str, str]


def entity_name(labels: Labels, keys: Iterable[str] | None = None) -> str:
    """'cpu3', 'vda', 'web1-EXTERNAL_INTERRUPT': values joined, numeric ones prefixed by their label."""
    keys = list(keys) if keys is not None else sorted(labels)
    parts = []
    for k in keys:
        v = labels.get(k)
        if not v:               # absent or empty (a VM with no namespace): no '-trial'
            continue
        parts.append(f"{k}{v}" if v.isdigit() else v)
    return "-".join(parts) or "node"


def entity_of(labels: Labels, metric_labels: Iterable[str]) -> str:
    """An entity's one name everywhere (item, verdict, `observed`, explain): the metric's own
    labels first, in the catalogue's order, then any others sorted ('trial-vcpu0')."""
    first = [k for k in metric_labels if k in labels]
    return entity_name(labels, first + sorted(set(labels) - set(first)))


DEFAULT_TREE_DEPTH = 2     # /system.slice/nginx.service
MAX_TREE_DEPTH = 8


def tree_depth(label: str, selections: Iterable[Sequence[Selector]]) -> int:
    """How deep items of a hierarchical label go: the default, or as deep as a select: glob on
    it reaches ('/machine.slice/*/*' is 2 levels below the root: depth 3)."""
    depth = DEFAULT_TREE_DEPTH
    for select in selections:
        for s in select:
            if s.label == label and not s.negate:
                depth = max(depth, *(len([p for p in alt.split("/") if p]) for alt in s.alternatives))
    return min(depth, MAX_TREE_DEPTH)


@functools.lru_cache(maxsize=256)
def _select_depth(label: str, select: tuple[Selector, ...]) -> int:
    """tree_depth of one check's select: (asked once per entity of a check judging thousands)."""
    return tree_depth(label, [select])


def selected(check: Check, entity: Labels) -> bool:
    """Whether `entity` (identity labels and descriptive attributes) passes the check's select:."""
    tree = check.metric.hierarchy
    if tree and entity.get(tree) is not None:
        if len([p for p in entity[tree].split("/") if p]) > _select_depth(tree, tuple(check.select)):
            return False
    data_only = check.metric.data_only_labels
    for s in check.select:
        value = entity.get(s.label)
        if value is None and s.label in data_only:
            continue   # not knowable for this entity: it cannot be excluded by it
        if not s.matches(value):
            return False
    return True


def item_keys(check: Check) -> tuple[str, ...]:
    """The labels an item of this check is named by: the discoverable labels down to the finest
    one per: asks for, so per: vcpu makes web1-vcpu0 and db1-vcpu0, never one 'vcpu0' for both."""
    spec = check.metric
    depth = [spec.item_labels.index(p) for p in check.per if p in spec.item_labels]
    return tuple(spec.item_labels[: max(depth) + 1]) if depth else ()


def item_entities(check: Check, discovered: Sequence[Labels] | None) -> list[dict[str, str] | None]:
    """One entry per item: the entity's identity labels, or None for a single node-wide item."""
    keys = item_keys(check)
    if not keys:
        return [None]
    out: list[dict[str, str] | None] = []
    seen: set[tuple[str, ...]] = set()
    for d in discovered or ():
        if not selected(check, d):
            continue
        proj = {k: str(d[k]) for k in keys if k in d}
        key = tuple(proj.values())
        if len(proj) == len(keys) and key not in seen:
            seen.add(key)
            out.append(proj)
    return out or [None]


def _has_per_labels(spec: MetricSpec, per: tuple[str, ...], labels: Labels) -> bool:
    return all(p in labels or p in spec.data_only_labels for p in per)


def observations_for(check: Check, observations: ObservationStore | Iterable[Observation],
                     item_labels: Labels | None) -> list[Observation]:
    """The observations an item judges. From a store, only the item's own are looked at (its
    index by label), so judging every item costs what they observed, not items x observations."""
    spec = check.metric
    if isinstance(observations, ObservationStore):
        obs = observations.matching(spec.name, item_labels)
    else:
        obs = [o for o in observations if o.metric == spec.name]
    if not check.per and not check.select:
        # the node-wide figure; with select:, the chosen entities are judged one by one
        aggregate = [o for o in obs if not o.labels]
        if aggregate:
            return aggregate
    picked = []
    for o in obs:
        labels = o.label_dict
        if not labels:
            continue
        if not _has_per_labels(spec, check.per, labels):
            continue
        if item_labels and any(labels.get(k) != v for k, v in item_labels.items()):
            continue
        if not selected(check, {**o.info, **labels}):
            continue
        picked.append(o)
    return picked
