"""Python checks: the pytest-style half of vcheck.

A test function declares what it observes; the run's one sampling session covers it together
with the YAML checks; the function receives the observations and asserts with plain ``assert``::

    from vcheck import observe, quantity

    @observe("cpu.user", per="cpu", window="5s")
    def test_user_time(observed):
        assert observed.max < quantity("50%")      # one item per CPU: cpu0, cpu1, ...

    @observe("block.latency", per="device")
    def test_slow_ios(observed):
        assert observed.count_over(quantity("10ms")) <= 5

``observed`` is the entity's :class:`Observed`: ``min max mean last sum count p50 p90 p95 p99
p999``, ``percentile(q)`` and ``count_over(x)``, in the metric's base unit (seconds, bytes,
percent), as the YAML grammar computes them. The node model is there too, as fixtures
discovered once per run by the same code the collectors use: ``vcheck_node``, ``vms``,
``containers`` (with ``run()`` inside a container's namespaces) and ``cgroups``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pytest

from .histogram import Histogram
from .model import EVENTS_LEFT_OUT
from .units import format_value, parse_quantity

MARKER = "vcheck_observe"


def observe(metric: str, *, per: str | Sequence[str] | None = None, select: dict[str, Any] | None = None,
            window: str = "60s", interval: str = "1s") -> pytest.MarkDecorator:
    """Declare what a test function observes (validated at collection time, like a policy)."""
    return getattr(pytest.mark, MARKER)(metric=metric, per=per, select=select, window=window, interval=interval)


def quantity(text: str) -> float:
    """A written quantity ('10ms', '50%', '2GiB') in its dimension's base unit."""
    return parse_quantity(text)


@dataclass
class Observed:
    """What the session observed of one entity (or, for a node-wide item, of every entity it
    judged), with the YAML grammar's statistics."""

    metric: str
    dimension: str
    window: float
    entities: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    # what each sample weighs in a mean, as the judge weighs it: the I/Os a per-interval mean
    # latency averages over, else the seconds it covers (Observation.weights / .spans)
    weights: list[float] = field(default_factory=list)
    histogram: Histogram | None = None
    notes: list[str] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    unseen: int = 0   # events the kernel counted that the probe never timed (Observation.unseen)
    unseen_seconds: float | None = 0.0   # what they took together at most; None: unbounded
    # the evidence a YAML item on the same entity shows: who held the CPU while it waited, the
    # slowest events (what explain and the HTML pages draw for either kind of check)
    culprits: list[dict[str, Any]] = field(default_factory=list)
    recorded_events: list[dict[str, Any]] = field(default_factory=list)
    # events the source should have kept as evidence and could not (its budget was spent, its
    # buffer full): the observations' info model.EVENTS_LEFT_OUT*, summed
    events_left_out: int = 0

    @property
    def events(self) -> list[dict[str, Any]]:
        """The outliers as evidence. Incomplete, they cannot carry a verdict: an assert that
        finds nothing among them would pass on the very events left out."""
        if self.events_left_out:
            pytest.fail(f"vcheck: {self.metric} [{', '.join(self.entities) or 'node'}]: the evidence lacks "
                        f"{self.events_left_out} of its events (its notes say which): judge the histogram "
                        "(observed.count_over) instead", pytrace=False)
        return self.recorded_events

    def __repr__(self) -> str:
        what = f"{self.histogram.count} events" if self.histogram is not None else f"{len(self.values)} samples"
        return f"<{self.metric} [{', '.join(self.entities) or 'node'}]: {what} over {self.window:g}s>"

    # --- statistics ----------------------------------------------------------------------
    def _need(self) -> None:
        if not self.values and not (self.histogram and self.histogram.count):
            why = "; ".join(self.notes) or "no data in the window"
            pytest.fail(f"vcheck: {self.metric} for {', '.join(self.entities) or 'this node'}: {why}",
                        pytrace=False)

    def _stat(self, name: str) -> float:
        from .judge import DistributionView, SeriesView   # judging code is the one source of figures
        from .observations import Observation

        self._need()
        if self.histogram is not None:
            view: Any = DistributionView(self.histogram, self.unseen, self.unseen_seconds)
            span = view.bounds(name)
            if span is not None and span[0] != span[1]:
                # a plain number would let an assert pass on I/Os nobody timed
                pytest.fail(f"vcheck: {self.metric} [{', '.join(self.entities) or 'node'}]: {self.unseen} "
                            f"events were counted by the kernel but never timed, so {name} is only known "
                            f"to lie in [{span[0]:.6g}, {span[1]:.6g}]: judge observed.bounds({name!r})",
                            pytrace=False)
        else:
            weights = self.weights if len(self.weights) == len(self.values) else [1.0] * len(self.values)
            o = Observation(self.metric, (), times=self.times, values=self.values, spans=weights, weights=weights)
            view = SeriesView(o, float("inf"))
        value = view.stat(name, self.window).value
        if value is None:
            pytest.fail(f"vcheck: {self.metric}: no {name} in the window", pytrace=False)
        return value

    min = property(lambda self: self._stat("min"))
    max = property(lambda self: self._stat("max"))
    mean = property(lambda self: self._stat("mean"))
    last = property(lambda self: self._stat("last"))
    sum = property(lambda self: self._stat("sum"))
    count = property(lambda self: self._stat("count"))
    p50 = property(lambda self: self._stat("p50"))
    p90 = property(lambda self: self._stat("p90"))
    p95 = property(lambda self: self._stat("p95"))
    p99 = property(lambda self: self._stat("p99"))
    p999 = property(lambda self: self._stat("p999"))

    def count_over(self, threshold: float) -> float:
        """Samples (or events) above threshold: the grammar's count(> X). With events the
        kernel counted but the probe never timed, the larger bound: as many of them as their
        time allows may be over."""
        from .judge import DistributionView

        self._need()
        if self.histogram is not None:
            view = DistributionView(self.histogram, self.unseen, self.unseen_seconds)
            return float(view.count(">", threshold).value or 0) + (view.unseen_beyond(">", threshold)
                                                                  if self.unseen else 0)
        return float(sum(1 for v in self.values if v > threshold))

    def bounds(self, name: str) -> tuple[float, float]:
        """(low, high) that statistic `name` may take once the unseen events are counted in,
        whatever they took; (x, x) when nothing was unseen."""
        from .judge import DistributionView

        if self.histogram is not None and self.unseen:
            span = DistributionView(self.histogram, self.unseen, self.unseen_seconds).bounds(name)
            if span is not None:
                return span
        x = self._stat(name)
        return (x, x)

    def summary(self) -> str:
        """One line of evidence for a failing assert."""
        if self.histogram is not None and self.histogram.count:
            h = self.histogram
            return (f"{self.metric} [{', '.join(self.entities)}] over {self.window:g}s: {h.count} events, "
                    f"mean {format_value(h.mean(), self.dimension)}, max {format_value(h.max().value, self.dimension)}")
        if not self.values:
            return f"{self.metric} [{', '.join(self.entities) or 'node'}]: no samples ({'; '.join(self.notes)})"
        return (f"{self.metric} [{', '.join(self.entities)}] over {self.window:g}s: {len(self.values)} samples, "
                f"min {format_value(min(self.values), self.dimension)}, "
                f"mean {format_value(self._stat('mean'), self.dimension)}, "
                f"max {format_value(max(self.values), self.dimension)}")


def merge_observations(metric: str, dimension: str, window: float, parts: Iterable[tuple[str, Any]]) -> Observed:
    """One Observed from the item's observations (entity name, Observation) in the window."""
    from .evidence import merge_culprits

    out = Observed(metric, dimension, window)
    culprit_lists = []
    for name, o in parts:
        out.entities.append(name)
        culprit_lists.append(list(o.culprits))
        out.recorded_events.extend(o.events)
        out.events_left_out += sum(int(v) for k, v in o.info.items() if k.startswith(EVENTS_LEFT_OUT)
                                   and str(v).isdigit())
        out.info.update(o.info)
        out.notes.extend(n for n in o.notes if n not in out.notes)
        if o.blind:
            out.notes.append(o.blind)
        if o.unseen:
            out.unseen += o.unseen
            out.unseen_seconds = (None if out.unseen_seconds is None or o.unseen_seconds is None
                                  else out.unseen_seconds + o.unseen_seconds)
        if o.histogram is not None:
            out.histogram = o.histogram if out.histogram is None else out.histogram.merge(o.histogram)
        keep = [i for i, t in enumerate(o.times) if t <= window + 0.5]
        weights = o.weights if len(o.weights) == len(o.values) else o.spans
        out.values.extend(o.values[i] for i in keep)
        out.times.extend(o.times[i] for i in keep)
        out.weights.extend(weights[i] if i < len(weights) else 1.0 for i in keep)
    out.culprits = merge_culprits(culprit_lists)
    return out
