"""The pytest11 plugin: policy YAML files become test items; one sampling session per run.

``pytest policies/x.yaml`` and ``vcheck run policies/x.yaml`` go through these same hooks.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import pytest

from .catalog import Catalog
from .collectors.base import Unavailable
from .items import STATE_KEY, CheckItem, PolicyFile
from .observations import ObservationStore
from .policy import Check, Policy, load_policy
from .procfs import HostRoots
from .session import SamplingSession, plan
from .units import UnitError, format_duration, parse_duration

LAYER_MARKERS = {
    "guest": "checks on the VM guest layer (this node's own /proc, block devices, scheduler)",
    "hypervisor": "checks on the KVM hypervisor layer (VMs, vCPU threads, KVM exits)",
    "container": "checks on the container layer (cgroups, runtimes, namespaces)",
}


@dataclass
class RunState:
    """Everything one run shares between hooks (kept on config.stash, never global)."""

    catalog: Catalog
    roots: HostRoots
    window_override: float | None = None
    policies: dict[Path, Policy] = field(default_factory=dict)
    policy_errors: list[str] = field(default_factory=list)
    discovered: dict[tuple[str, str], list[Mapping[str, str]] | None] = field(default_factory=dict)
    store: ObservationStore | None = None
    session: SamplingSession | None = None
    started: float = field(default_factory=time.time)
    replay: ObservationStore | None = None      # --replay: judge a saved run instead of sampling
    baseline: ObservationStore | None = None    # --baseline: regress: checks compare against it
    waivers: list = field(default_factory=list)
    timed_out: bool = False

    def load_policy(self, path: Path) -> Policy:
        path = Path(path)
        if path not in self.policies:
            p = load_policy(path, self.catalog, display=_display(path))
            if self.window_override:
                p = replace(p, checks=tuple(_with_window(c, self.window_override) for c in p.checks))
            self.policies[path] = p
        return self.policies[path]

    def entities_for(self, check: Check) -> list[Mapping[str, str] | None]:
        """Entities this check makes items for, discovered cheaply at collection time."""
        spec = check.metric
        # an entity is named by its labels up to the finest one per: asks for, so per: vcpu
        # makes items web1-vcpu0 and db1-vcpu0, never one "vcpu0" for both VMs
        depth = [spec.item_labels.index(p) for p in check.per if p in spec.item_labels]
        if not depth:
            return [None]
        keys = list(spec.item_labels[: max(depth) + 1])
        cache_key = (spec.collector, spec.name)
        if cache_key not in self.discovered and self.replay is not None:
            # a replay judges the entities the saved run observed, not today's
            self.discovered[cache_key] = [{**o.info, **o.label_dict} for o in self.replay.for_metric(spec.name)]
        if cache_key not in self.discovered:
            try:
                self.discovered[cache_key] = list(self.catalog.collectors[spec.collector].discover(self.roots, spec.name))
            except (Unavailable, OSError):
                self.discovered[cache_key] = None
        found = self.discovered[cache_key] or []
        out: list[Mapping[str, str]] = []
        for d in found:
            if not all(s.matches(d.get(s.label)) for s in check.select if s.label in d):
                continue
            proj = {k: str(d[k]) for k in keys if k in d}
            if len(proj) == len(keys) and proj not in out:
                out.append(proj)
        return out or [None]


def _with_window(c: Check, window: float) -> Check:
    return replace(c, window=window, interval=min(c.interval, window))


def _display(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("vcheck", "vcheck node checks")
    g.addoption("--json", dest="vcheck_json", metavar="PATH", help="write the versioned JSON report here")
    g.addoption("--window", dest="vcheck_window", metavar="DURATION",
                help="observe every check for this long instead of its policy window (e.g. 5s)")
    g.addoption("--vcheck-progress", dest="vcheck_progress", choices=("auto", "on", "off"), default="auto",
                help="show sampling progress (auto: only on a terminal outside CI)")
    g.addoption("--replay", dest="vcheck_replay", metavar="REPORT",
                help="judge the policies on the observations saved in a JSON report instead of sampling")
    g.addoption("--baseline", dest="vcheck_baseline", metavar="REPORT",
                help="judge regress: checks against the observations of this earlier JSON report")
    g.addoption("--waivers", dest="vcheck_waivers", metavar="FILE", help="waiver file (known failures)")
    g.addoption("--prom-textfile", dest="vcheck_prom", metavar="PATH",
                help="write Prometheus text format here (node_exporter textfile collector)")
    g.addoption("--vcheck-timeout", dest="vcheck_timeout", metavar="DURATION",
                help="bound the whole run; past it, stop, detach, report as interrupted, exit 2")


def pytest_configure(config: pytest.Config) -> None:
    for name, desc in LAYER_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {desc}")
    window = None
    if config.option.vcheck_window:
        try:
            window = parse_duration(config.option.vcheck_window)
        except UnitError as exc:
            raise pytest.UsageError(f"--window: {exc}") from None
    state = RunState(catalog=Catalog(), roots=HostRoots.from_env(), window_override=window)
    from .report.json_report import ReportFormatError, read_report, store_from_report

    try:
        if config.option.vcheck_replay:
            state.replay = store_from_report(read_report(config.option.vcheck_replay))
        if config.option.vcheck_baseline:
            state.baseline = store_from_report(read_report(config.option.vcheck_baseline))
    except ReportFormatError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.option.vcheck_waivers:
        from .errors import UsageError as VUsageError
        from .waivers import load_waivers

        try:
            state.waivers = load_waivers(config.option.vcheck_waivers)
        except VUsageError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.stash[STATE_KEY] = state


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix in (".yaml", ".yml") and (
            parent.session.isinitpath(file_path) or file_path.parent.name == "policies"):
        return PolicyFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_finish(session: pytest.Session) -> None:
    errors = session.config.stash[STATE_KEY].policy_errors
    if errors:
        raise pytest.UsageError(*errors)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Sample once for all selected items, before any of them is judged."""
    config = session.config
    if config.option.collectonly:
        return
    items = [i for i in session.items if isinstance(i, CheckItem)]
    if not items:
        return
    state = config.stash[STATE_KEY]
    if state.replay is not None:
        state.store = state.replay
        return
    the_plan = plan([i.check for i in items], state.catalog)
    show = _progress_printer(config, the_plan.window)
    state.session = SamplingSession(the_plan, state.catalog, state.roots, progress=show)
    try:
        state.store = state.session.run()
    finally:
        state.session = None
        if show:
            show.finish()
    if state.store.window.interrupted:
        why = "--timeout reached" if state.timed_out else "sampling interrupted"
        pytest.exit(f"vcheck: {why} after {state.store.window.duration:.1f}s of sampling; "
                    "every collector was stopped and detached", returncode=2)


def _on_sigterm(config: pytest.Config):
    """SIGTERM during the window ends sampling early (collectors detach on the way out);
    at any other moment it ends the run as interrupted (exit 2), like Ctrl-C."""
    def handler(signum, frame):
        state = config.stash.get(STATE_KEY, None)
        if state is not None and state.session is not None:
            state.session.stop()
        else:
            pytest.exit("vcheck: terminated by SIGTERM", returncode=2)
    return handler


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    import threading

    if threading.current_thread() is threading.main_thread():
        session.config.stash[_PREVIOUS_SIGTERM] = signal.signal(signal.SIGTERM, _on_sigterm(session.config))
    timeout = session.config.option.vcheck_timeout
    if timeout:
        try:
            seconds = parse_duration(timeout)
        except UnitError as exc:
            raise pytest.UsageError(f"--timeout: {exc}") from None
        state = session.config.stash[STATE_KEY]

        def expire() -> None:
            state.timed_out = True
            os.kill(os.getpid(), signal.SIGTERM)   # the same path as an operator's SIGTERM

        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        session.config.stash[_TIMER] = timer


def pytest_unconfigure(config: pytest.Config) -> None:
    timer = config.stash.get(_TIMER, None)
    if timer is not None:
        timer.cancel()
    previous = config.stash.get(_PREVIOUS_SIGTERM, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


_PREVIOUS_SIGTERM: pytest.StashKey = pytest.StashKey()
_TIMER: pytest.StashKey = pytest.StashKey()


class _Progress:
    def __init__(self, config: pytest.Config, window: float):
        self.config = config
        self.window = window
        self.capman = config.pluginmanager.getplugin("capturemanager")
        self.tw = config.get_terminal_writer()
        self.shown = False

    def __call__(self, elapsed: float, window: float, names: list[str]) -> None:
        left = max(window - elapsed, 0.0)
        line = f"vcheck: sampling {', '.join(names)} - {left:4.0f}s left of {format_duration(window)}"
        with self._uncaptured():
            self.tw.write("\r" + line.ljust(78))
            self.tw.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            with self._uncaptured():
                self.tw.write("\r" + " " * 78 + "\r")
                self.tw.flush()

    def _uncaptured(self):
        import contextlib
        return self.capman.global_and_fixture_disabled() if self.capman else contextlib.nullcontext()


def _progress_printer(config: pytest.Config, window: float) -> _Progress | None:
    mode = config.option.vcheck_progress
    if mode == "off" or (mode == "auto" and (not sys.stdout.isatty() or os.environ.get("CI"))):
        return None
    return _Progress(config, window)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = config.stash.get(STATE_KEY, None)
    json_path, prom_path = config.option.vcheck_json, config.option.vcheck_prom
    if state is None or state.policy_errors or not (json_path or prom_path):
        return
    from .report.json_report import build_report, write_report

    report = build_report(session, state, int(exitstatus))
    if state.timed_out and report.get("window"):
        report["window"]["interrupted"] = True
        report["interrupted_by"] = "--timeout"
    if json_path:
        write_report(json_path, report)
    if prom_path:
        from .report.atomic import write_atomic
        from .report.prometheus import render

        try:
            previous = Path(prom_path).read_text()
        except OSError:
            previous = None
        write_atomic(prom_path, render(report, time.time() - state.started, previous).encode())
