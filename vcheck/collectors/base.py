"""The collector contract.

A run creates each needed collector once, then the session drives it::

    discover()          at collection time: the entities items are made for (cheap)
    start()             attach / take a baseline; raise Unavailable if it cannot run here
    begin(t0)           the window starts now (all collectors have started): drop whatever
                        was counted during start-up, so every collector covers the same window
    sample(t)           every `interval` seconds during the window, in the collector's own thread
    stop(t)             end of window: final read (BPF maps), detach
    close()             always called, also after errors and SIGTERM; must be idempotent

Collectors write into the shared ObservationStore and never judge anything.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Mapping

from ..errors import Unavailable
from ..model import MetricSpec
from ..policy import Selector
from ..probes import Attach
from ..observations import ObservationStore
from ..procfs import HostRoots


__all__ = ["CollectContext", "CollectRequest", "Collector", "Needs", "Unavailable"]


@dataclass
class CollectRequest:
    metrics: frozenset[str]
    window: float
    interval: float
    # smallest outlier threshold (base unit) per metric from count(> X) assertions, so a
    # collector that captures events knows which ones to keep as evidence
    outlier_thresholds: dict[str, float] = field(default_factory=dict)
    # every asking check's select: (a collector of a tree, like cgroups, walks as deep as needed)
    selections: list[tuple[Selector, ...]] = field(default_factory=list)


@dataclass
class CollectContext:
    roots: HostRoots
    store: ObservationStore


@dataclass(frozen=True)
class Needs:
    """What a collector needs of the node, declared once (node_exporter's registerCollector):
    `vcheck doctor` checks exactly this, for every collector in the catalogue."""

    files: tuple[tuple[str, str, str], ...] = ()    # (root: proc|sys|cgroup|run, path under it, what it gives)
    program: tuple[str, tuple[Attach, ...], tuple[str, ...]] | None = None   # BPF: source, attach points, cflags
    what: str = ""                                   # a program's row in the doctor ("block.latency (BPF)")


class Collector(ABC):
    name: ClassVar[str]
    METRICS: ClassVar[tuple[MetricSpec, ...]]
    NEEDS: ClassVar[Needs] = Needs()

    def __init__(self, ctx: CollectContext, request: CollectRequest):
        self.ctx = ctx
        self.request = request
        self.store = ctx.store
        self.roots = ctx.roots

    @classmethod
    def diagnose(cls, roots: HostRoots) -> list[tuple[str, str, str]]:
        """Doctor rows beyond NEEDS (what discovery finds): (what, status ok|no|n/a, detail)."""
        return []

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        """Entities (their discoverable labels) for items of `metric`. Empty: none here."""
        return []

    def start(self) -> None:  # noqa: B027 - optional hook
        """Take the baseline sample (called once, before the window starts)."""

    def begin(self, t0: float) -> None:  # noqa: B027
        """The window starts at time.monotonic() == t0; reset counts gathered while others started."""

    @abstractmethod
    def sample(self, t: float) -> None:
        """Called every interval; t is seconds since the window start."""

    def stop(self, t: float) -> None:  # noqa: B027
        """Final read at the end of the window."""

    def close(self) -> None:  # noqa: B027
        """Release everything (BPF programs, sockets). Idempotent; called on every exit path."""

    @property
    def polls(self) -> bool:
        """Whether sample() needs calling every interval (BPF collectors read once at the end)."""
        return True
