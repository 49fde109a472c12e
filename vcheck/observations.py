"""What a sampling session observed: series and distributions per metric and entity.

Collectors write here; items only read. The store is the seam between the two halves of a
run, and what the JSON report saves and a replay loads back.
"""
from __future__ import annotations

import array
import threading
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from .histogram import Histogram

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: hashable identity


class Series(array.array):
    """A sampled series as 8-byte floats (a list holds a pointer and a 24-byte float object per
    sample: 1,000 cgroups x 10 figures over an hour at 1 s are 108 M samples). Reads, appends
    and compares with a list like a list."""

    def __new__(cls, values: Iterable[float] = ()) -> "Series":
        return super().__new__(cls, "d", values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple)):
            return len(self) == len(other) and self.tolist() == list(other)
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __getitem__(self, i):  # type: ignore[override]
        got = super().__getitem__(i)
        return Series(got) if isinstance(i, slice) else got    # a slice is a Series too

    def clear(self) -> None:
        del self[:]

    def __repr__(self) -> str:
        return repr(self.tolist())


def labels_of(d: Mapping[str, object]) -> Labels:
    return tuple(sorted((str(k), str(v)) for k, v in d.items()))


@dataclass
class Observation:
    """One metric for one entity over the window."""

    metric: str
    labels: Labels
    info: dict[str, str] = field(default_factory=dict)      # descriptive, e.g. pid, cmdline
    # a live run's series are Series (compact); a replay's, the lists its report was parsed into
    times: Sequence[float] = field(default_factory=Series)   # sample end times (s since window start)
    values: Sequence[float] = field(default_factory=Series)  # in the metric's base unit
    spans: Sequence[float] = field(default_factory=Series)   # seconds each sample covers
    # what a sample's mean stands for, where that is not its span: the I/Os a per-interval mean
    # latency averages over (so the window's mean is I/O-weighted, as iostat's await); empty
    # when every sample weighs its span
    weights: Sequence[float] = field(default_factory=Series)
    histogram: Histogram | None = None
    events: list[dict] = field(default_factory=list)        # outliers: slowest I/Os, longest exits
    notes: list[str] = field(default_factory=list)
    gone_at: float | None = None                            # entity vanished at this time
    gone_reason: str = ""
    label: str = ""                                         # how the source names it ("sum of ...")
    # the source could not see this entity although it should have (a tracepoint that never
    # fires while the VM is busy): no verdict but "fail" may be drawn from it; says why
    blind: str = ""
    # events the kernel's own counters saw in the window that the probe never timed (a block
    # completion /proc/diskstats counts but no BPF program ran for): their values are unknown,
    # so a verdict must hold whatever they were (within unseen_seconds, the kernel's own time)
    unseen: int = 0
    unseen_seconds: float | None = None   # all the unseen together took at most this; None: unbounded
    # who took the CPU while this entity waited (bpf/runq_latency.c): dicts with pid, comm,
    # share (0-1 of the entity's wait), wait (s), owner, describe, cgroup, nspid; largest first
    culprits: list[dict] = field(default_factory=list)

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    def covered(self) -> float:
        return sum(self.spans)


@dataclass
class Window:
    start_wall: float = 0.0   # epoch seconds when sampling began
    start: float = 0.0        # monotonic
    duration: float = 0.0     # actually observed
    planned: float = 0.0
    interrupted: bool = False
    startup: float | None = None   # seconds from the process's start to the window's (a live run's)


class ObservationStore:
    """Thread-safe: every collector runs in its own thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._obs: dict[tuple[str, Labels], Observation] = {}
        # the same observations by metric, and (built when first asked, dropped when the metric
        # gains an entity) by metric and label pair: an item finds its own observations without
        # scanning every other one, so judging a report is linear in its size
        self._by_metric: dict[str, dict[Labels, Observation]] = {}
        self._by_pair: dict[str, dict[tuple[str, str], list[Observation]]] = {}
        self.unavailable: dict[str, str] = {}   # metric -> why it cannot be observed here
        self.window = Window()
        self.collector_notes: dict[str, list[str]] = {}
        self.bpf_costs: list[dict] = []          # per BPF program: path taken, load seconds, ...

    # --- writing (collectors) ---------------------------------------------------------
    def series(self, metric: str, labels: Mapping[str, object], info: Mapping[str, str] | None = None
               ) -> Observation:
        key = (metric, labels_of(labels))
        with self._lock:
            o = self._obs.get(key)
            if o is None:
                o = self._obs[key] = Observation(metric, key[1])
                self._filed(o)
            if info:
                o.info.update(info)
            return o

    def add_sample(self, metric: str, labels: Mapping[str, object], t: float, value: float,
                   span: float, info: Mapping[str, str] | None = None, weight: float | None = None) -> None:
        o = self.series(metric, labels, info)
        with self._lock:
            o.times.append(t)
            o.values.append(value)
            o.spans.append(span)
            if weight is not None:
                o.weights.append(weight)

    def append(self, o: Observation, t: float, value: float, span: float) -> None:
        """add_sample on a series the collector already holds (from series()): a collector with
        thousands of entities skips finding it by its labels every sample."""
        with self._lock:
            o.times.append(t)
            o.values.append(value)
            o.spans.append(span)

    def set_histogram(self, metric: str, labels: Mapping[str, object], hist: Histogram,
                      info: Mapping[str, str] | None = None) -> Observation:
        o = self.series(metric, labels, info)
        with self._lock:
            o.histogram = hist
        return o

    def put(self, o: Observation) -> None:
        """File a whole observation (a replay loading a saved run)."""
        with self._lock:
            self._obs[(o.metric, o.labels)] = o
            self._filed(o)

    def _filed(self, o: Observation) -> None:
        """Keep the indexes in step with _obs (the lock is held)."""
        self._by_metric.setdefault(o.metric, {})[o.labels] = o
        self._by_pair.pop(o.metric, None)

    def mark_gone(self, labels_match: Mapping[str, str], t: float, reason: str) -> None:
        """Every observation whose labels include labels_match: the entity vanished at t."""
        with self._lock:
            metrics = list(self._by_metric)
        for metric in metrics:
            for o in self.matching(metric, labels_match):
                with self._lock:
                    if o.gone_at is None:
                        o.gone_at, o.gone_reason = t, reason

    def mark_unavailable(self, metrics: Iterable[str], reason: str) -> None:
        with self._lock:
            for m in metrics:
                self.unavailable.setdefault(m, reason)

    def bpf_cost(self, figures: dict) -> None:
        with self._lock:
            self.bpf_costs.append(dict(figures))

    def note(self, collector: str, text: str) -> None:
        with self._lock:
            self.collector_notes.setdefault(collector, []).append(text)

    # --- reading (items, reports) -----------------------------------------------------
    def for_metric(self, metric: str) -> list[Observation]:
        with self._lock:
            return list(self._by_metric.get(metric, {}).values())

    def matching(self, metric: str, labels: Mapping[str, str] | None = None) -> list[Observation]:
        """The observations of `metric` whose labels include every pair of `labels`, in the
        order they were filed; the cost is that of the fewest observations one pair names."""
        with self._lock:
            mine = self._by_metric.get(metric, {})
            if not labels:
                return list(mine.values())
            index = self._by_pair.get(metric)
            if index is None:
                index = self._by_pair[metric] = {}
                for o in mine.values():
                    for pair in o.labels:
                        index.setdefault(pair, []).append(o)
            lists = [index.get((str(k), str(v)), []) for k, v in labels.items()]
            fewest = min(lists, key=len)
        want = {(str(k), str(v)) for k, v in labels.items()}
        return [o for o in fewest if want.issubset(o.labels)]

    def all(self) -> list[Observation]:
        with self._lock:
            return list(self._obs.values())
