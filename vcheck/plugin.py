"""The pytest11 plugin: policy YAML files become test items; one sampling session per run.

``pytest policies/x.yaml`` and ``vcheck run policies/x.yaml`` go through these same hooks.
"""
from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from pathlib import Path

import pytest

from .catalog import Catalog
from .cost import run_cost, summary_line
from .errors import ReportFormatError, UsageError
from .evidence import printable
from . import pycheck
from .items import CheckItem, PolicyFile
from .model import LAYERS
from .procfs import HostRoots
from .report.json_report import RunFacts, read_report, store_from_report
from .report.output import ENDING_SIGNALS
from .report.recorder import RECORDER_KEY, ReportRecorder, json_output, prometheus_output
from .pycheck import containers, observed, vcheck_entity, vcheck_node, vms  # noqa: F401 (fixtures)
from .runstate import STATE_KEY, RunState, shown_path
from .selection import entity_name
from .session import SamplingSession, plan
from .terminal import VcheckTerminal, place_skip
from .units import UnitError, format_duration, parse_duration
from .waivers import covering, load_waivers, unmatched

LAYER_MARKERS = {
    "guest": "checks on the VM guest layer (this node's own /proc, block devices, scheduler)",
    "hypervisor": "checks on the KVM hypervisor layer (VMs, vCPU threads, KVM exits)",
    "container": "checks on the container layer (cgroups, runtimes, namespaces)",
}
assert set(LAYER_MARKERS) == set(LAYERS)


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
    g.addoption("--vcheck-cli", dest="vcheck_cli", action="store_true", default=False,
                help=argparse.SUPPRESS)   # set by the vcheck command line only
    g.addoption("--vcheck-timeout", dest="vcheck_timeout", metavar="DURATION",
                help="bound the whole run; past it, stop, detach, report as interrupted, exit 2")


MAX_TIMEOUT = 7 * 86400.0   # a bound beyond a week is a typo, not a bound


def pytest_configure(config: pytest.Config) -> None:
    for name, desc in LAYER_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {desc}")
    config.addinivalue_line("markers", "vcheck_observe(metric, per, select, window, interval): what a Python "
                                       "check observes (vcheck.observe)")
    window = _duration_option(config.option.vcheck_window, "--window")
    _duration_option(config.option.vcheck_timeout, "--timeout")
    state = RunState(catalog=Catalog(), roots=HostRoots.from_env(), window_override=window)
    preloaded = next((p.reports for p in config.pluginmanager.get_plugins()      # cli.Preloaded
                      if getattr(p, "NAME", None) == "vcheck-preloaded"), {})

    def saved(path: str) -> dict:
        return preloaded[path] if path in preloaded else read_report(path)
    try:
        if config.option.vcheck_replay:
            path = config.option.vcheck_replay
            state.replay = store_from_report(saved(path), path, checked=True)
        if config.option.vcheck_baseline:
            path = config.option.vcheck_baseline
            state.baseline = store_from_report(saved(path), path, checked=True)
        if config.option.vcheck_waivers:
            state.waivers = load_waivers(config.option.vcheck_waivers)
    except (ReportFormatError, UsageError) as exc:
        raise usage_error(str(exc)) from None
    config.stash[STATE_KEY] = state
    config.stash[_PREVIOUS_OTHER] = {}
    if not config.pluginmanager.has_plugin("vcheck-terminal"):
        config.pluginmanager.register(VcheckTerminal(), "vcheck-terminal")
    outputs = []
    if config.option.vcheck_json:
        outputs.append(json_output(config.option.vcheck_json))
    if config.option.vcheck_prom:
        outputs.append(prometheus_output(config.option.vcheck_prom))
    if outputs:
        recorder = ReportRecorder(outputs, started=state.started)
        config.stash[RECORDER_KEY] = recorder
        config.pluginmanager.register(recorder, "vcheck-report")


def usage_error(*lines: str) -> pytest.UsageError:
    """A usage error as vcheck says it: each line once on stderr, 'vcheck: FILE:LINE:COL: ...'
    (pytest's own 'ERROR: ' form is not printed: the error carries no text of its own)."""
    for line in dict.fromkeys(lines):
        print(printable(f"vcheck: {line}"), file=sys.stderr)
    return pytest.UsageError()


def _duration_option(text: str | None, flag: str) -> float | None:
    if not text:
        return None
    try:
        seconds = parse_duration(text)
    except UnitError as exc:
        raise usage_error(f"{flag}: {exc}") from None
    if not 0 < seconds <= MAX_TIMEOUT:
        raise usage_error(f"{flag} {text}: must be more than 0 and at most 7d")
    return seconds


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix in (".yaml", ".yml") and (
            parent.session.isinitpath(file_path) or file_path.parent.name == "policies"):
        return PolicyFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector):
    """In `vcheck run` a directory is only a directory: never a package whose __init__.py runs."""
    if parent.config.option.vcheck_cli:
        return pytest.Dir.from_parent(parent, path=path)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector):
    """In `vcheck run` a check file is loaded alone (pycheck.CheckModule); plain pytest keeps
    pytest's own import rules."""
    if parent.config.option.vcheck_cli:
        return pycheck.CheckModule.from_parent(parent, path=module_path)
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    pycheck.generate_tests(metafunc)


@pytest.hookimpl(tryfirst=True)   # layer markers before -m deselects
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[STATE_KEY]
    for item in items:
        pycheck.attach(item, state)
        if pycheck.IS_CHECK_KEY in item.stash:
            item._nodeid = pycheck.identity(item)     # as a YAML item's: module::function[params]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A Python check file that does not import is a usage error (FILE:LINE: message), as a
    broken policy is, not pytest's 'interrupted'."""
    outcome = yield
    report = outcome.get_result()
    _stop_if_requested(collector.config)
    # only in `vcheck run`: plain pytest keeps its own rules for a test module that fails
    if report.failed and isinstance(collector, pytest.Module) and collector.config.option.vcheck_cli:
        text = str(report.longrepr or "")
        if pycheck.REFUSED_PREFIX in text:   # CheckModule's own one-line FILE:LINE errors
            errors = collector.config.stash[STATE_KEY].policy_errors
            errors.extend(text.split(pycheck.REFUSED_PREFIX, 1)[1].strip().splitlines())
            return
        why = next((ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")), text.strip()[-200:])
        line = next((ln.split("line ", 1)[1].split()[0].rstrip(",:") for ln in text.splitlines()
                     if ln.strip().startswith("File ") and "line " in ln), "1")
        collector.config.stash[STATE_KEY].policy_errors.append(
            f"{report.nodeid}:{line}: cannot import the check file: {printable(why)}")


def pytest_collectstart(collector: pytest.Collector) -> None:
    state = collector.config.stash.get(STATE_KEY, None)
    if state is not None:
        state.collecting = True


def _stop_if_requested(config: pytest.Config) -> None:
    """A signal that came while collecting ends the run here, as interrupted (exit 2): raised in
    a collector, pytest would have filed it as 'found no collectors' (a usage error)."""
    state = config.stash.get(STATE_KEY, None)
    if state is not None and state.stop_requested:
        state.collecting, state.stop_requested, state.terminating = False, False, True
        pytest.exit(f"vcheck: terminated by {state.interrupted_by} while collecting", returncode=2)


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    state = config.stash[STATE_KEY]
    _stop_if_requested(config)
    state.collecting = False
    for item in session.items:    # selected items only: -k and -m may leave a long for: out
        if isinstance(item, CheckItem):
            why = state.too_short(item.check, f"{shown_path(item.path)}:{item.check.line}:{item.check.col}")
            if why and why not in state.policy_errors:
                state.policy_errors.append(why)
    if state.policy_errors:
        raise usage_error(*state.policy_errors)
    known = {(p.name, c.id) for p in state.policies.values() for c in p.checks} | {
        (Path(str(i.path)).stem, getattr(i, "originalname", i.name)) for i in session.items
        if pycheck.IS_CHECK_KEY in i.stash}
    for w in unmatched(state.waivers, known):
        print(f"vcheck: {config.option.vcheck_waivers}:{w.line}: the waiver for {w.check!r} matches "
                  "no check of the policies in this run", file=sys.stderr)
    recorder = config.stash.get(RECORDER_KEY, None)
    if recorder is not None:
        recorder.collected([i.result_record() if isinstance(i, CheckItem) else pycheck.result_record(i, None)
                            for i in session.items if isinstance(i, CheckItem) or pycheck.IS_CHECK_KEY in i.stash])


_GC_PAUSED = pytest.StashKey[bool]()


def _pause_cyclic_gc(config: pytest.Config) -> None:
    """From the end of sampling until the run ends (judging, the reports) the cyclic garbage
    collector is off: those phases make millions of objects that all live until the end, and it
    scanned them again and again (a third of a 100,000-observation replay's CPU). Memory is
    still freed by reference counting; unconfigure turns the collector back on."""
    if gc.isenabled() and _GC_PAUSED not in config.stash:
        gc.disable()
        config.stash[_GC_PAUSED] = True


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Sample once for all selected items, before any of them is judged."""
    config = session.config
    if config.option.collectonly:
        return
    checks = [i.check if isinstance(i, CheckItem) else i.stash[pycheck.CHECK_KEY]
              for i in session.items if isinstance(i, CheckItem) or pycheck.CHECK_KEY in i.stash]
    if not checks:
        return
    state = config.stash[STATE_KEY]
    if state.replay is not None:
        state.store = state.replay
        _pause_cyclic_gc(config)
        return
    the_plan = plan(checks, state.catalog)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and config.get_verbosity() >= 0:
        reporter.write_line(f"vcheck: observing this node for {format_duration(the_plan.window)} "
                            f"({len(checks)} {'check' if len(checks) == 1 else 'checks'}: "
                            f"{', '.join(the_plan.collectors)})")
    show = _progress_printer(config, the_plan.window)
    state.session = SamplingSession(the_plan, state.catalog, state.roots, progress=show)
    try:
        state.store = state.session.run()
    except KeyboardInterrupt as exc:
        # the report still says what was observed until then, and that it was cut short
        state.store = state.session.store
        state.interrupted_by = state.interrupted_by or getattr(exc, "signame", "SIGINT")
        raise
    finally:
        state.session = None
        if show:
            show.finish()
    _pause_cyclic_gc(config)
    if state.store.window.interrupted or state.interrupted_by:      # a signal as the window closed, too
        state.interrupted_by = state.interrupted_by or "SIGTERM"
        why = "--timeout reached" if state.interrupted_by == "--timeout" else "sampling interrupted"
        state.terminating = True
        pytest.exit(f"vcheck: {why} after {state.store.window.duration:.1f}s of sampling; "
                    "every collector was stopped and detached", returncode=2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    # every report of a vcheck item carries the result's identity as its name: terminal, JUnit
    # (classname = policy, name = check[entity]) and pytest-html say it as the JSON report does
    if isinstance(item, CheckItem):
        rep.nodeid = item.identity
        rep.vcheck_item = True
        store = item.config.stash[STATE_KEY].store
        if rep.when == "call" and store is not None:
            # what the item was judged over, not the microseconds judging took (HTML, JUnit time)
            rep.duration = min(item.check.window, store.window.duration or item.check.window)
        rep.vcheck_result = item.result_record()
        place_skip(rep, shown_path(item.path), item.check.line)
    elif pycheck.IS_CHECK_KEY in item.stash:
        rep.nodeid = pycheck.identity(item)
        rep.vcheck_item = True
    if pycheck.IS_CHECK_KEY in item.stash and (rep.when == "call" or not rep.passed):
        if rep.failed:
            evidence = pycheck.evidence_section(item)
            if evidence:
                rep.sections.append(("vcheck evidence", evidence))
            _waive(item, rep)
        rep.vcheck_result = pycheck.result_record(item, rep)
        item.stash[_RECORD] = rep.vcheck_result
    elif pycheck.IS_CHECK_KEY in item.stash and rep.when == "teardown" and _RECORD in item.stash:
        # pytest-html draws an item's extras from its teardown report: the result rides there too,
        # so a Python item's page shows the same evidence as a YAML item's (and as `vcheck report`)
        rep.vcheck_result = item.stash[_RECORD]


def _waive(item: pytest.Item, rep: pytest.TestReport) -> None:
    """A Python check's failure covered by an unexpired waiver is reported as waived (xfail)."""
    import datetime

    labels = item.stash.get(pycheck.LABELS_KEY, None)
    w, _ = covering(item.config.stash[STATE_KEY].waivers, Path(str(item.path)).stem,
                    getattr(item, "originalname", item.name),
                    entity_name(labels, list(labels)) if labels else "node", datetime.date.today())
    if w is not None:
        rep.outcome = "skipped"
        rep.wasxfail = f"waived until {w.expires}: {w.justification}"


def _on_sigterm(config: pytest.Config):
    """SIGTERM during the window ends sampling early (collectors detach on the way out); at
    any other moment it ends the run as interrupted (exit 2), like Ctrl-C. Once the run is
    ending, further signals are ignored so they cannot break the reports being written."""
    def handler(signum, frame):
        state = config.stash.get(STATE_KEY, None)
        if state is None:
            return
        name = signal.Signals(signum).name
        if state.session is not None:
            state.interrupted_by = state.interrupted_by or name
            state.session.stop()
            return
        if state.terminating:
            _keep_pending(signum)
            return
        if state.collecting:
            state.interrupted_by = state.interrupted_by or name
            state.stop_requested = True
            return
        state.terminating = True
        state.interrupted_by = state.interrupted_by or name
        pytest.exit(f"vcheck: terminated by {name}", returncode=2)
    return handler


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    import threading

    if threading.current_thread() is threading.main_thread():
        handler = _on_sigterm(session.config)
        session.config.stash[_PREVIOUS_SIGTERM] = signal.signal(signal.SIGTERM, handler)
        if session.config.option.vcheck_cli:     # `vcheck run`: Ctrl-C and a closed terminal alike
            for sig in (signal.SIGINT, signal.SIGHUP):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    session.config.stash[_PREVIOUS_OTHER][sig] = signal.signal(sig, handler)
    seconds = _duration_option(session.config.option.vcheck_timeout, "--timeout")
    if seconds:
        state = session.config.stash[STATE_KEY]

        def expire() -> None:
            state.interrupted_by = state.interrupted_by or "--timeout"
            os.kill(os.getpid(), signal.SIGTERM)   # the same path as an operator's SIGTERM

        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        session.config.stash[_TIMER] = timer


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Hand the reporters what the run observed; they write after every other hook."""
    config = session.config
    state = config.stash.get(STATE_KEY, None)
    recorder = config.stash.get(RECORDER_KEY, None)
    if state is not None and config.option.vcheck_cli:
        _hold_ending_signals(config)
    if state is not None:
        _junit_properties(config, state)
    if state is None or recorder is None:
        return
    state.terminating = True
    if state.policy_errors:
        recorder.outputs = []   # a usage error writes nothing: the last good report stays
        return
    layer_of = {m.name: m.layer for m in state.catalog.metrics.values()}
    recorder.observed(RunFacts(
        store=state.store, layer_of=layer_of, interrupted_by=state.interrupted_by, cost=_cost(state),
        policies=[{"name": p.name, "path": str(path), "sha256": p.sha256, "source": p.source}
                  for path, p in state.policies.items()]))


def _junit_properties(config: pytest.Config, state: RunState) -> None:
    """The node's name, boot id and labels and the policies judged, as <properties> of the JUnit
    suite: `vcheck merge` reads them back, so a JUnit input is the same node as its JSON."""
    from _pytest.junitxml import xml_key

    from .report.node import node_facts

    xml = config.stash.get(xml_key, None)
    if xml is None:
        return
    node = node_facts()
    xml.add_global_property("vcheck.node", str(node.get("hostname", "")))
    xml.add_global_property("vcheck.boot_id", str(node.get("boot_id", "")))
    for key, value in sorted((node.get("labels") or {}).items()):
        xml.add_global_property(f"vcheck.label.{key}", str(value))
    for policy in state.policies.values():
        xml.add_global_property(f"vcheck.policy.{policy.name}", policy.sha256)


def _hold_ending_signals(config: pytest.Config) -> None:
    """The verdicts are in: from here a signal cannot cut a report short. It stays pending, and
    the vcheck command (cli.entry) ends with exit 2 for it once the reports are written; a report
    stream whose reader stalls is given up when one is pending (report/output.py)."""
    import threading

    # --timeout's timer keeps running: past it, its SIGTERM is pending, so a report stream whose
    # reader stalls is given up and the run ends with exit 2
    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, ENDING_SIGNALS)


def _keep_pending(signum: int) -> None:
    """A signal taken by another thread while the main thread holds these: pend it on the main
    thread, where cli.entry finds it."""
    import threading

    main = threading.main_thread()
    try:
        if threading.current_thread() is main and signum in signal.pthread_sigmask(signal.SIG_BLOCK, []):
            signal.pthread_kill(main.ident, signum)
    except (OSError, ValueError):
        pass


def _cost(state: RunState) -> dict | None:
    if state.store is None or state.replay is not None:
        return None        # a replay's cost is not the node's run
    return run_cost(state.store.window.startup, state.store.bpf_costs)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    cost = _cost(state) if state is not None else None
    if cost is not None:
        terminalreporter.write_line(summary_line(cost))


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.stash.get(_GC_PAUSED, False):
        del config.stash[_GC_PAUSED]
        gc.freeze()          # the run's results: not scanned by the collection enable() would start
        gc.enable()
    timer = config.stash.get(_TIMER, None)
    if timer is not None:
        timer.cancel()
    previous = config.stash.get(_PREVIOUS_SIGTERM, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    for sig, handler in config.stash.get(_PREVIOUS_OTHER, {}).items():
        signal.signal(sig, handler)
    recorder = config.stash.get(RECORDER_KEY, None)
    if recorder is not None and config.pluginmanager.is_registered(recorder):
        config.pluginmanager.unregister(recorder)


_PREVIOUS_SIGTERM: pytest.StashKey = pytest.StashKey()
_PREVIOUS_OTHER: pytest.StashKey[dict] = pytest.StashKey()
_RECORD: pytest.StashKey[dict] = pytest.StashKey()
_TIMER: pytest.StashKey = pytest.StashKey()
class _Progress:
    def __init__(self, config: pytest.Config, window: float):
        self.config = config
        self.window = window
        self.capman = config.pluginmanager.getplugin("capturemanager")
        self.tw = config.get_terminal_writer()
        self.shown = False
        self.lines_every = 0.0          # a terminal: one line redrawn; else a line every this often
        self.last_line = 0.0

    def __call__(self, elapsed: float, window: float, names: list[str]) -> None:
        left = max(window - elapsed, 0.0)
        line = f"vcheck: sampling {', '.join(names)} - {left:4.0f}s left of {format_duration(window)}"
        with self._uncaptured():
            if self.lines_every:        # a CI log: a whole line now and then, never a carriage return
                if elapsed - self.last_line >= self.lines_every and left > 0:
                    self.tw.line(f"vcheck: {format_duration(round(elapsed))} of {format_duration(window)} observed")
                    self.last_line = elapsed
                return
            self.tw.write("\r" + line.ljust(78))
            self.tw.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown and not self.lines_every:
            with self._uncaptured():
                self.tw.write("\r" + " " * 78 + "\r")
                self.tw.flush()

    def _uncaptured(self):
        import contextlib
        return self.capman.global_and_fixture_disabled() if self.capman else contextlib.nullcontext()


PROGRESS_LINE_EVERY = 10.0     # seconds between progress lines in a log (not a terminal)


def _progress_printer(config: pytest.Config, window: float) -> _Progress | None:
    mode = config.option.vcheck_progress
    if mode == "off" or config.get_verbosity() < 0:
        return None
    progress = _Progress(config, window)
    if mode == "auto" and (not sys.stdout.isatty() or os.environ.get("CI")):
        if window <= PROGRESS_LINE_EVERY:
            return None          # a short window needs no news
        progress.lines_every = PROGRESS_LINE_EVERY
    return progress
