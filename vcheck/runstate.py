"""What one run shares between pytest hooks: kept on config.stash, never global."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import pytest

from .catalog import Catalog
from .errors import Unavailable
from .observations import ObservationStore
from .policy import Check, Policy, load_policy
from .procfs import HostRoots
from .selection import item_entities
from .session import SamplingSession
from .waivers import Waiver


@dataclass
class RunState:
    catalog: Catalog
    roots: HostRoots
    window_override: float | None = None
    policies: dict[Path, Policy] = field(default_factory=dict)
    policy_errors: list[str] = field(default_factory=list)
    discovered: dict[tuple[str, str], list[Mapping[str, str]] | None] = field(default_factory=dict)
    python_checks: dict[tuple[str, str], Check] = field(default_factory=dict)   # (file, function) -> its @observe
    store: ObservationStore | None = None
    session: SamplingSession | None = None
    started: float = field(default_factory=time.time)
    replay: ObservationStore | None = None      # --replay: judge a saved run instead of sampling
    baseline: ObservationStore | None = None    # --baseline: regress: checks compare against it
    waivers: list[Waiver] = field(default_factory=list)
    interrupted_by: str | None = None           # "--timeout", "SIGTERM", "SIGINT"
    terminating: bool = False                   # a signal already ended the run: ignore more
    collecting: bool = False                    # pytest swallows exceptions raised while collecting
    stop_requested: bool = False                # a signal came while collecting: end at the next step

    def load_policy(self, path: Path) -> Policy:
        path = Path(path)
        if path not in self.policies:
            p = load_policy(path, self.catalog, display=shown_path(path))
            if self.window_override:
                p = replace(p, checks=tuple(_with_window(c, self.window_override) for c in p.checks))
            self.policies[path] = p
        return self.policies[path]

    def too_short(self, check: Check, where: str) -> str | None:
        """Why --window cannot judge this check (it could only end inconclusive), as the
        'FILE:LINE:COL: ...' line that refuses the run before sampling; None when it can."""
        if self.window_override and check.for_ and check.for_ > self.window_override:
            return (f"{where}: check {check.id}: --window {self.window_override:g}s is shorter than its for: "
                    f"{check.for_:g}s; give a window of at least {check.for_:g}s")
        return None

    def entities_for(self, check: Check) -> list[dict[str, str] | None]:
        """Entities this check makes items for, discovered cheaply at collection time (a replay
        judges the entities the saved run observed, not today's)."""
        spec = check.metric
        key = (spec.collector, spec.name)
        if key not in self.discovered:
            if self.replay is not None:
                self.discovered[key] = [{**o.info, **o.label_dict} for o in self.replay.for_metric(spec.name)]
            else:
                try:
                    self.discovered[key] = list(self.catalog.collectors[spec.collector].discover(self.roots, spec.name))
                except (Unavailable, OSError, ValueError, LookupError):
                    # the session reports the real reason; an item per node still judges it
                    self.discovered[key] = None
        return item_entities(check, self.discovered[key])


def _with_window(c: Check, window: float) -> Check:
    return replace(c, window=window, interval=min(c.interval, window))


def shown_path(path: Path) -> str:
    """A policy's path as errors and skips name it: relative to where vcheck runs when it can be."""
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


STATE_KEY: pytest.StashKey[RunState] = pytest.StashKey()
