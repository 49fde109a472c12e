"""One sampling session per run: plan the collectors from the compiled checks, run them all
concurrently for the longest window, and hand the observations to the items.

A run costs one window plus start-up, never the sum of its checks' windows.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .catalog import Catalog
from .collectors.base import CollectContext, Collector, CollectRequest, Unavailable
from .cost import process_age
from .expr import Outliers, leaves
from .observations import ObservationStore
from .policy import Check
from .procfs import HostRoots

Progress = Callable[[float, float, list[str]], None]  # (elapsed, window, collector names)


@dataclass
class Plan:
    requests: dict[str, CollectRequest] = field(default_factory=dict)
    window: float = 0.0

    @property
    def collectors(self) -> list[str]:
        return sorted(self.requests)


def plan(checks: Iterable[Check], catalog: Catalog) -> Plan:
    """Which collectors, which metrics, which interval; the window is the longest asked for."""
    p = Plan()
    for c in checks:
        spec = c.metric
        req = p.requests.get(spec.collector)
        if req is None:
            req = p.requests[spec.collector] = CollectRequest(frozenset(), c.window, c.interval)
        req.metrics = req.metrics | {spec.name}
        req.selections.append(c.select)
        req.window = max(req.window, c.window)
        req.interval = min(req.interval, c.interval)
        for leaf in leaves(c.expect):
            if isinstance(leaf, Outliers) and leaf.inner_op in (">", ">="):
                t = leaf.threshold.base_value
                req.outlier_thresholds[spec.name] = min(t, req.outlier_thresholds.get(spec.name, t))
        p.window = max(p.window, c.window)
    return p


class SamplingSession:
    """Runs the planned collectors. Every collector is closed on every exit path."""

    def __init__(self, the_plan: Plan, catalog: Catalog, roots: HostRoots,
                 progress: Progress | None = None, progress_every: float = 0.5):
        self.plan = the_plan
        self.catalog = catalog
        self.store = ObservationStore()
        self.ctx = CollectContext(roots=roots, store=self.store)
        self.progress = progress
        self.progress_every = progress_every
        self._stop = threading.Event()
        self._collectors: list[Collector] = []

    def stop(self) -> None:
        """Ask the window to end early (signal handlers, --timeout)."""
        self._stop.set()

    def run(self) -> ObservationStore:
        try:
            self._start_all()
            self._sample_window()
        except BaseException:
            w = self.store.window
            w.interrupted = True
            if w.start and not w.duration:
                w.duration = min(time.monotonic() - w.start, w.planned)
            raise
        finally:
            self._close_all()
        return self.store

    # -- phases ---------------------------------------------------------------------------
    def _start_all(self) -> None:
        """Start collectors concurrently (BPF compilation dominates start-up)."""
        pending = []
        for name in self.plan.collectors:
            cls = self.catalog.collectors[name]
            pending.append(cls(self.ctx, self.plan.requests[name]))
        started: list[Collector] = []
        lock = threading.Lock()

        def start(c: Collector) -> None:
            try:
                c.start()
            except Unavailable as exc:
                self.store.mark_unavailable(exc.metrics or c.request.metrics, exc.reason)
                _safe_close(c)
                return
            except Exception as exc:  # a broken collector must not take the others down
                self.store.mark_unavailable(c.request.metrics, f"{c.name} failed to start: {exc!r}")
                _safe_close(c)
                return
            with lock:
                started.append(c)

        # collectors are registered before starting so close() reaches them even if the
        # main thread is interrupted while a BPF program is being attached
        self._collectors = pending
        self._each_concurrently(start, "start")
        self._collectors = [c for c in pending if c in started]

    def _sample_window(self) -> None:
        window = self.plan.window
        t0 = time.monotonic()
        for c in self._collectors:
            try:
                c.begin(t0)
            except Exception as exc:
                self.store.note(c.name, f"could not reset at the window start: {exc!r}")
        self.store.window.start = t0
        self.store.window.start_wall = time.time()
        self.store.window.startup = process_age()     # the process's own clock: no wall-clock step in it
        self.store.window.planned = window
        threads = []
        for c in self._collectors:
            if c.polls:
                t = threading.Thread(target=self._poll, args=(c, t0, window), name=f"sample-{c.name}",
                                     daemon=True)
                t.start()
                threads.append(t)
        deadline = t0 + window
        names = [c.name for c in self._collectors]
        ctrl_c: KeyboardInterrupt | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            try:
                if self.progress:
                    self.progress(now - t0, window, names)
                self._stop.wait(min(self.progress_every, deadline - now))
            except KeyboardInterrupt as exc:
                # Ctrl-C ends the window like SIGTERM: collectors still give their final
                # read, so the report holds what was observed until now; then it propagates
                ctrl_c = exc
                self._stop.set()
        interrupted = self._stop.is_set()
        if not interrupted:
            # let every poller take its final sample at the end of the window
            grace = time.monotonic() + max((c.request.interval for c in self._collectors), default=0) + 1.0
            for t in threads:
                while t.is_alive() and time.monotonic() < grace and not self._stop.is_set():
                    t.join(0.05)
            interrupted = self._stop.is_set()
        self._stop.set()
        for t in threads:
            while t.is_alive():
                t.join(0.1)
        end = time.monotonic() - t0
        self.store.window.duration = min(end, window)
        self.store.window.interrupted = interrupted
        self._each_concurrently(lambda c: self._stop_one(c, end), "stop")
        if self.progress:
            self.progress(self.store.window.duration, window, names)
        if ctrl_c is not None:
            raise ctrl_c

    def _stop_one(self, c: Collector, end: float) -> None:
        try:
            c.stop(end)
        except Unavailable as exc:
            self.store.mark_unavailable(exc.metrics or c.request.metrics, exc.reason)
        except Exception as exc:
            self.store.mark_unavailable(c.request.metrics, f"{c.name} failed at the end of the window: {exc!r}")

    def _each_concurrently(self, fn: Callable[[Collector], None], phase: str) -> None:
        """fn on every collector, each in its own thread: BPF loads, final reads and detaching
        (a kernel grace period per BPF program) overlap instead of adding up. Joined in short
        waits, so Ctrl-C still reaches the main thread."""
        threads = [threading.Thread(target=fn, args=(c,), name=f"{phase}-{c.name}", daemon=True)
                   for c in self._collectors]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.1)

    def _poll(self, c: Collector, t0: float, window: float) -> None:
        interval = c.request.interval
        k = 1
        while True:
            due = t0 + k * interval
            if due > t0 + window + 1e-3:
                return
            if self._stop.is_set():
                return
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            try:
                c.sample(time.monotonic() - t0)
            except Unavailable as exc:
                self.store.mark_unavailable(exc.metrics or c.request.metrics, exc.reason)
                return
            except Exception as exc:
                why = f"{c.name} stopped sampling at +{time.monotonic() - t0:.1f}s: {exc!r}"
                self.store.note(c.name, why)
                self.store.mark_unavailable(c.request.metrics, why)   # kept only where no data came
                return
            # a slow read skips ticks rather than sampling back to back
            k = max(k + 1, int((time.monotonic() - t0) / interval) + 1)

    def _close_all(self) -> None:
        self._each_concurrently(_safe_close, "close")


def _safe_close(c: Collector) -> None:
    try:
        c.close()
    except Exception:  # closing must reach every collector
        pass
