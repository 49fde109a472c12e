"""``vcheck`` command line. ``run`` hands over to pytest.main with the plugin's options, so
``vcheck run x.yaml`` and ``pytest x.yaml`` collect the same items.

Exit codes are pytest's: 0 passed, 1 a check failed or was inconclusive (or a fleet gate
failed), 2 interrupted (SIGINT, SIGTERM, --timeout), 3 internal error, 4 usage error (bad
policy, option, waiver file or report file), 5 nothing collected; and vcheck's own: 6 another
run holds --lock, 7 the checks passed but an output could not be written.

``vcheck`` is hermetic: it loads its own plugin and the policies named, never a conftest.py,
an ini file's options, PYTEST_ADDOPTS or another installed pytest plugin (it runs as root).
``pytest policies/x.yaml`` keeps pytest's rules: whoever runs pytest chose them.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, NoReturn, Sequence

from .catalog import Catalog
from .errors import EXIT_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_NO_TESTS, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, \
    OutputError, \
    PolicyError, ReportFormatError, SignalInterrupt
from .evidence import printable
from .files import raise_descriptor_limit
from .policy import load_policy
from .units import UNIT_LABEL

DEFAULT_PACK = "node-conformance.yaml"


def bundled_policy(name: str = DEFAULT_PACK) -> Path:
    return Path(str(resources.files("vcheck.policies").joinpath(name)))


def _bundled(arg: str) -> str:
    """`policies/NAME.yaml` and `checks/NAME.py` name the shipped files wherever vcheck is
    installed, unless such a path exists where vcheck runs."""
    folder, _, name = arg.partition("/")
    if os.path.exists(arg) or folder not in ("policies", "checks") or not name or "/" in name:
        return arg
    shipped = Path(str(resources.files(f"vcheck.{folder}").joinpath(name)))
    return str(shipped) if shipped.is_file() else arg


def _policies(args: argparse.Namespace) -> list[str]:
    return [_bundled(p) for p in args.policies] or [str(bundled_policy())]


def _validate_all(paths: Sequence[str], catalog: Catalog, quiet: bool = True) -> int:
    """Load every policy; print each error as one line on stderr. Returns an exit code."""
    status = 0
    for p in paths:
        if not os.path.exists(p):       # anything else (a device, a directory) load_policy names
            print(printable(f"vcheck: {p}: no such policy file"), file=sys.stderr)
            status = EXIT_USAGE
            continue
        if p.endswith(".py") and Path(p).is_file():
            continue      # a Python check file: imported and validated at collection
        try:
            pol = load_policy(p, catalog)
        except PolicyError as exc:
            print(printable(f"vcheck: {exc}"), file=sys.stderr)
            status = EXIT_USAGE
            continue
        if not quiet:
            n = len(pol.checks)
            print(f"{p}: ok, policy {pol.name} with {n} {'check' if n == 1 else 'checks'}")
    return status


# pytest's own plugins a policy run has no use for (each costs start-up time): doctests,
# pastebin uploads, py.path fixtures, --stepwise, and the unraisable-exception warnings, whose
# full garbage collection after the session takes seconds once a replay holds millions of objects
NOT_NEEDED = ("-p", "no:doctest", "-p", "no:pastebin", "-p", "no:legacypath", "-p", "no:stepwise",
              "-p", "no:unraisableexception")


def _pytest_args(args: argparse.Namespace, private: Path) -> list[str]:
    """pytest's arguments for a hermetic run: an empty ini of our own (no pytest.ini, tox.ini or
    pyproject.toml options from above the policies), no conftest.py, only vcheck's plugin.
    xunit1 keeps file/line on <testcase> so CI can point at the policy line; system-out carries
    the evidence of passing checks (failures carry it in <failure>)."""
    import socket

    host = os.environ.get("VCHECK_NODE_NAME") or socket.gethostname()
    ini = private / "vcheck-pytest.ini"
    ini.write_text("[pytest]\n")
    policies = _policies(args)
    # node ids are relative to where vcheck runs when the policies are below it (as pytest
    # names them from a project), else to the policies' common directory
    common = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in policies])
    cwd = os.getcwd()
    rootdir = cwd if os.path.commonpath([cwd, common]) == cwd else common
    out = list(policies) + ["-c", str(ini), "--rootdir", rootdir, "--noconftest", "-p", "vcheck.plugin", "--vcheck-cli",
                            "-p", "no:cacheprovider", *NOT_NEEDED, "-rfs", "--no-header", "-o", "junit_family=xunit1",
                            "-o", "junit_logging=system-out", "-o", f"junit_suite_name={host}"]
    if getattr(args, "junitxml", None):
        out.append(f"--junitxml={private / 'junit.xml'}")
    if getattr(args, "html", None):
        out += _html_args(private)
    if getattr(args, "json", None):
        out.append(f"--json={args.json}")
    for opt, flag in (("replay", "--replay"), ("baseline", "--baseline"), ("waivers", "--waivers"),
                      ("prom_textfile", "--prom-textfile"), ("timeout", "--vcheck-timeout")):
        if getattr(args, opt, None):
            out.append(f"{flag}={getattr(args, opt)}")
    if getattr(args, "k", None):
        out += ["-k", args.k]
    if getattr(args, "m", None):
        out += ["-m", args.m]
    if getattr(args, "window", None):
        out.append(f"--window={args.window}")
    # a line per check with its figure at the end by default; -q: one character per check only
    if getattr(args, "quiet", False):
        out.append("-q")
    elif getattr(args, "verbose", 0):
        out.append("-" + "v" * args.verbose)
    return out + list(getattr(args, "pytest_args", []) or [])


HTML_REPORT = "report.html"


def _html_args(private: Path) -> list[str]:
    """pytest-html and vcheck's evidence for it, named: autoloading is off in a hermetic run
    (pytest-html needs pytest-metadata's environment table; `-p pytest_html` alone loads
    neither). The page is one self-contained file, written privately and then moved."""
    return ["-p", "pytest_metadata.plugin", "-p", "pytest_html.plugin", "-p", "vcheck.report.html",
            f"--html={private / HTML_REPORT}", "--self-contained-html"]


_STDOUT_NAMES = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")


@contextlib.contextmanager
def _reports_own_stdout(args: argparse.Namespace, names: Sequence[str]) -> Iterator[None]:
    """When a report goes to standard output, it has standard output to itself: the terminal
    text goes to standard error meanwhile, so `--json /dev/stdout > r.json` is valid JSON."""
    if not any(getattr(args, n, None) in _STDOUT_NAMES for n in names):
        yield
        return
    sys.stdout.flush()
    terminal, sys.stdout = sys.stdout, sys.stderr    # the report is written to descriptor 1 itself
    try:
        yield
    finally:
        sys.stdout = terminal


def pytest_hookimpl(**kw):  # noqa: ANN201 - pytest imported lazily (vcheck's start-up stays cheap)
    import pytest

    return pytest.hookimpl(**kw)


@contextlib.contextmanager
def _private_dir(prefix: str) -> Iterator[Path]:
    """A private temporary directory, removed on the way out whatever ends the run: it is made
    with the ending signals held, and they are let through only once the removal is armed."""
    from .report.output import ENDING_SIGNALS

    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, ENDING_SIGNALS)
    except (OSError, ValueError):
        old = None
    path = None
    try:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        yield path
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


class ShownPaths:
    """JUnit and HTML are written privately, then moved where the operator asked: the lines
    pytest's junitxml and pytest-html print name the operator's paths, not the private ones."""

    def __init__(self, junitxml: str | None, html: str | None):
        self.junitxml, self.html = junitxml, html

    @pytest_hookimpl(tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: object, config: object) -> None:
        from _pytest.junitxml import xml_key

        xml = config.stash.get(xml_key, None)          # type: ignore[attr-defined]
        if xml is not None and self.junitxml:
            xml.logfile = self.junitxml
        for plugin in config.pluginmanager.get_plugins():   # type: ignore[attr-defined]
            if self.html and hasattr(plugin, "_report_path"):
                plugin._report_path = Path(os.path.abspath(self.html))


class Preloaded:
    """Saved reports the command line already read and checked (once: a pipe or /dev/stdin can
    be read only once, and pytest's capture puts /dev/null on stdin), handed to the plugin."""

    NAME = "vcheck-preloaded"

    def __init__(self, reports: dict[str, dict]):
        self.reports = reports


def _preload(paths: Sequence[str | None]) -> Preloaded | int:
    """Each saved report named, read and checked now; a bad one is one line and exit 4."""
    from .report.json_report import read_report

    reports = {}
    for path in paths:
        if path is None:
            continue
        try:
            reports[path] = read_report(path)
        except ReportFormatError as exc:
            print(printable(f"vcheck: {exc}"), file=sys.stderr)
            return EXIT_USAGE
    return Preloaded(reports)


def _hermetic_pytest(args: argparse.Namespace, extra: Sequence[str] = (),
                     argv: Callable[[Path], list[str]] | None = None, judging: bool = True,
                     preloaded: Preloaded | None = None, plugins: Sequence[object] = ()) -> int:
    """Run pytest on the policies without anything the operator did not name; JUnit and HTML go
    to a private directory first and are then written to their place like every other output.
    `argv` replaces the policies' arguments; with judging=False (a saved report drawn) failed
    items are no failure of the command."""
    with _private_dir("vcheck-") as private:
        return _pytest_in(private, args, extra, argv, judging, preloaded, plugins)


def _pytest_in(private: Path, args: argparse.Namespace, extra: Sequence[str],
               argv: Callable[[Path], list[str]] | None, judging: bool, preloaded: Preloaded | None,
               plugins: Sequence[object]) -> int:
    import pytest

    saved = {k: os.environ.pop(k) for k in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS") if k in os.environ}
    autoload = os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    try:
        if preloaded is None:
            loaded = _preload([getattr(args, "replay", None), getattr(args, "baseline", None)])
            if isinstance(loaded, int):
                return loaded
            preloaded = loaded
        rc = int(pytest.main((argv or (lambda p: _pytest_args(args, p)))(private) + list(extra),
                             plugins=[preloaded, ShownPaths(getattr(args, "junitxml", None),
                                                            getattr(args, "html", None)), *plugins]))
        if not judging and rc == EXIT_FAILED:
            rc = EXIT_OK
        from .report.output import write_output

        for name, target in (("junit.xml", getattr(args, "junitxml", None)), (HTML_REPORT, getattr(args, "html", None))):
            made = private / name
            if not target or not made.exists():
                continue
            data = made.read_bytes()
            if name == "junit.xml":
                from .report.junit import with_vcheck_words

                data = with_vcheck_words(data)
            try:
                write_output(target, data)
            except OutputError as exc:
                print(printable(f"vcheck: {exc}"), file=sys.stderr)
                rc = EXIT_OUTPUT if rc == EXIT_OK else rc
        return rc
    finally:
        os.environ.update(saved)
        if autoload is None:
            os.environ.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
        else:
            os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = autoload


def _take_lock(path: str) -> int | None:
    """An exclusive flock on PATH (a regular file, never followed through a symlink), held until
    the process ends; None if another run holds it. Raises OSError or ValueError."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, 0o644)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ValueError("not a regular file")
    if st.st_nlink != 1:      # a hard link to some other file: never truncated or written
        os.close(fd)
        raise ValueError(f"it has {st.st_nlink} hard links; a lock file must be vcheck's own")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _lock_holder(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return "?"
    try:
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    return text if text.isdigit() else "?"


def cmd_run(args: argparse.Namespace) -> int:
    if args.lock:
        try:
            lock_fd = _take_lock(args.lock)
        except OSError as exc:
            reason = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            print(printable(f"vcheck: cannot use lock file {args.lock}: {reason}"), file=sys.stderr)
            return EXIT_USAGE
        except ValueError as exc:
            print(printable(f"vcheck: cannot use lock file {args.lock}: {exc}"), file=sys.stderr)
            return EXIT_USAGE
        if lock_fd is None:
            print(printable(f"vcheck: another run holds the lock {args.lock} (pid {_lock_holder(args.lock)}); "
                            "not starting"), file=sys.stderr)
            return EXIT_LOCKED
    deadline = _start_timeout(args.timeout)
    if isinstance(deadline, int):
        return deadline
    status = _validate_all(_policies(args), Catalog())       # a policy FIFO that never writes: bounded
    if status:
        return status
    loaded = _preload([args.replay, args.baseline])          # so is a --replay FIFO
    if isinstance(loaded, int):
        return loaded
    if args.baseline:
        said = _baseline_fits(args, loaded.reports[args.baseline])
        if isinstance(said, int):
            return said
        for line in said:
            print(printable(f"vcheck: {line}"), file=sys.stderr)
    if deadline is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        left = deadline - time.monotonic()
        args.timeout = f"{max(left, 0.001):.3f}s"           # the session's own timer takes the rest
    return _hermetic_pytest(args, preloaded=loaded)


def _baseline_fits(args: argparse.Namespace, baseline: dict) -> list[str] | int:
    """A baseline is of this node and of the policies judged now, as compare's pair is; the
    operator may say otherwise (--allow-different-*), and the output then says so."""
    import socket

    catalog = Catalog()
    now = {"node": {"hostname": os.environ.get("VCHECK_NODE_NAME") or socket.gethostname()},
           "policies": [{"name": p.name, "sha256": p.sha256} for p in
                        (load_policy(path, catalog) for path in _policies(args) if not path.endswith(".py"))]}
    named = argparse.Namespace(before=args.baseline, after="this run",
                               allow_different_nodes=args.allow_different_nodes,
                               allow_different_policies=args.allow_different_policies)
    return _same_run_kind(named, baseline, now)


def _start_timeout(text: str | None) -> float | None | int:
    """--timeout bounds the run from its start: until the session's own timer takes over, an
    alarm ends the run (exit 2) wherever it waits. Returns the deadline, or an exit code."""
    if text is None:
        return None
    from .units import UnitError, parse_duration

    try:
        seconds = parse_duration(text)
    except UnitError as exc:
        print(printable(f"vcheck: --timeout: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    if not 0 < seconds <= 7 * 86400:
        print(printable(f"vcheck: --timeout {text}: must be more than 0 and at most 7d"), file=sys.stderr)
        return EXIT_USAGE
    try:
        signal.signal(signal.SIGALRM, _timeout_reached)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    except ValueError:      # not the main thread: the session's timer alone
        return None
    return time.monotonic() + seconds


def _timeout_reached(signum: int, frame: object) -> None:
    raise SignalInterrupt("--timeout")


def cmd_compare(args: argparse.Namespace) -> int:
    """Judge AFTER (its thresholds, and regress: against BEFORE) without sampling anything."""
    loaded = _preload([args.before, args.after])       # each read once: <(...) works
    if isinstance(loaded, int):
        return loaded
    before, after = loaded.reports[args.before], loaded.reports[args.after]
    said = _same_run_kind(args, before, after)
    if isinstance(said, int):
        return said
    for line in said:
        print(printable(f"vcheck: {line}"), file=sys.stderr)
    with _private_dir("vcheck-compare-") as private:
        if not args.policies:        # judge what the reports were made with, not the default pack
            recorded = _recorded_policies(args.after, after, private)
            if isinstance(recorded, int):
                return recorded
            args.policies = recorded
        status = _validate_all(_policies(args), Catalog())
        if status:
            return status
        args.replay, args.baseline = args.after, args.before
        return _hermetic_pytest(args, preloaded=loaded)


def _policy_set(report: dict) -> set[tuple[str, str]]:
    return {(str(p.get("name")), str(p.get("sha256"))) for p in report.get("policies") or []}


def _same_run_kind(args: argparse.Namespace, before: dict, after: dict) -> list[str] | int:
    """A before/after pair is of one node and one policy set, or the operator says otherwise
    (and the output then says so). Returns the lines to say, or an exit code."""
    said = []
    a, b = (before.get("node") or {}).get("hostname"), (after.get("node") or {}).get("hostname")
    if a != b:
        if not args.allow_different_nodes:
            print(printable(f"vcheck: {args.before} is of node {a}, {args.after} of node {b}; compare a node with "
                            "itself, or give --allow-different-nodes"), file=sys.stderr)
            return EXIT_USAGE
        said.append(f"comparing different nodes: {a} (before) and {b} (after), as --allow-different-nodes asks")
    pa, pb = _policy_set(before), _policy_set(after)
    if pa != pb:
        names = lambda ps: ", ".join(f"{n} ({h[:8]})" for n, h in sorted(ps)) or "none"   # noqa: E731
        if not args.allow_different_policies:
            print(printable(f"vcheck: {args.before} was made with {names(pa)}, {args.after} with {names(pb)}; "
                            "compare runs of one policy set, or give --allow-different-policies"), file=sys.stderr)
            return EXIT_USAGE
        said.append(f"comparing runs of different policies: {names(pa)} (before) and {names(pb)} (after), "
                    "as --allow-different-policies asks")
    return said


def _recorded_policies(path: str, report: dict, private: Path) -> list[str] | int:
    """The policy files a report was made with: the file where it still has the recorded sha256,
    else the text the report carries (when it hashes to the same), else a usage error."""
    import hashlib

    out = []
    for p in report.get("policies") or []:
        name, sha, where = str(p.get("name")), str(p.get("sha256")), str(p.get("path") or "")
        try:
            if where and hashlib.sha256(Path(where).read_bytes()).hexdigest() == sha:
                out.append(where)
                continue
        except OSError:
            pass
        source = p.get("source")
        if isinstance(source, str) and hashlib.sha256(source.encode()).hexdigest() == sha:
            copy = private / f"{name}.yaml"
            copy.write_text(source)
            out.append(str(copy))
            continue
        print(printable(f"vcheck: {path}: policy {name} (sha256 {sha[:12]}) is no longer at {where or '?'} and the "
                        "report does not carry its text; name the policy file to judge with"), file=sys.stderr)
        return EXIT_USAGE
    if not out:
        print(printable(f"vcheck: {path}: the report names no policy; name the policy file to judge with"),
              file=sys.stderr)
        return EXIT_USAGE
    return out


def _failing_nodes_spec(text: str) -> str:
    """A count (3) or a share of the fleet (2%): finite, not negative, a share at most 100%."""
    import math

    s = text.strip()
    try:
        if s.endswith("%"):
            share = float(s[:-1])
            if math.isfinite(share) and 0 <= share <= 100:
                return s
        elif int(s) >= 0:
            return s
    except ValueError:
        pass
    raise ValueError(f"--max-failing-nodes {text!r}: expected a count like 3 or a share like 2% (0-100%)")


def cmd_report(args: argparse.Namespace) -> int:
    """An HTML report from a saved JSON report: a hermetic pytest session whose items replay the
    saved results (nothing is sampled or judged again), drawn as `vcheck run --html` draws them."""
    from .report.json_report import dumps, read_report

    try:
        report = read_report(args.report)
    except ReportFormatError as exc:
        print(printable(f"vcheck: {exc}"), file=sys.stderr)
        return EXIT_USAGE

    def argv(private: Path) -> list[str]:
        saved = private / "saved-report.json"      # read once: the report may come from a pipe
        saved.write_bytes(dumps(report))
        ini = private / "vcheck-pytest.ini"
        ini.write_text("[pytest]\n")
        # no terminal reporter: the saved verdicts are drawn, not run; one line says what was written
        return [str(saved), "-c", str(ini), "--rootdir", str(private), "--noconftest", "-p", "no:cacheprovider",
                "-p", "no:terminal", "-p", "no:warnings", *_html_args(private), f"--vcheck-render={saved}"]

    rc = _hermetic_pytest(args, argv=argv, judging=False)
    if rc == EXIT_NO_TESTS and not report.get("results"):
        rc = EXIT_OK            # a report with no results (a run cut short) still has a page: written
    if rc == EXIT_OK:
        counts: dict[str, int] = {}
        for r in report.get("results") or []:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        print(printable(f"vcheck: wrote {args.html}: {len(report.get('results') or [])} items ("
                        + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) + f") of {args.report}"))
        return EXIT_OK
    return rc


def cmd_merge(args: argparse.Namespace) -> int:
    import json

    from .report.join import render as render_joins
    from .report.merge import fleet_html, fleet_json, fleet_junit, gate, guest_host_joins, load_node_reports
    from .report.output import write_outputs

    spec = None
    if args.max_failing_nodes is not None:
        try:
            spec = _failing_nodes_spec(args.max_failing_nodes)
        except ValueError as exc:
            print(printable(f"vcheck: {exc}"), file=sys.stderr)
            return EXIT_USAGE
    try:
        nodes = load_node_reports(args.reports, keep=bool(args.html), mixed_policies=args.allow_mixed_policies)
    except ReportFormatError as exc:
        print(printable(f"vcheck: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    g = gate(nodes, spec, args.domain_label)
    for line in g.lines:
        print(line)
    for line in render_joins(*guest_host_joins(nodes)):    # guests beside the hosts that run them
        print(printable(line))
    rc = EXIT_OK if g.passed else EXIT_FAILED
    outputs = []
    if args.json:
        outputs.append((args.json, (json.dumps(fleet_json(nodes, g, spec, args.domain_label), indent=1) + "\n").encode()))
    if args.junitxml:
        outputs.append((args.junitxml, fleet_junit(nodes)))
    if args.html:
        outputs.append((args.html, fleet_html(nodes, g, args.domain_label)))
    return write_outputs(outputs, rc)


def cmd_gate(args: argparse.Namespace) -> int:
    """merge's fleet gate on the fleet's current vcheck series in Prometheus (report/gate_prometheus.py)."""
    from .report.gate_prometheus import GateQuery, run_gate
    from .units import UnitError, parse_duration

    try:
        spec = _failing_nodes_spec(args.max_failing_nodes) if args.max_failing_nodes is not None else None
        q = GateQuery(args.prometheus, args.domain_label, parse_duration(args.stale_after),
                      parse_duration(args.lookback), parse_duration(args.timeout, maximum=3600),
                      mixed_policies=args.allow_mixed_policies)
    except (ValueError, UnitError) as exc:
        print(printable(f"vcheck: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    return run_gate(q, spec, args.json, args.junitxml, args.html)


def cmd_explain(args: argparse.Namespace) -> int:
    """Symptom -> entity -> culprit -> owner, from the saved report alone (no sampling)."""
    from .report.explain import explain
    from .report.json_report import read_report

    try:
        report = read_report(args.report)
    except ReportFormatError as exc:
        print(printable(f"vcheck: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    from .report.explain import known_ids, select

    if args.item is not None and not select(report, args.item):
        print(printable(f"vcheck: {args.report}: no result is named {args.item!r}; it holds "
                        f"{known_ids(report)}"), file=sys.stderr)
        return EXIT_USAGE
    print(explain(report, args.item))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Policies are loaded and checked; Python check files are imported and collected as a run
    would (unknown metric, bad window, an import error: the same FILE:LINE errors as run)."""
    paths = _policies(args)
    status = _validate_all(paths, Catalog(), quiet=False)
    checks = [p for p in paths if p.endswith(".py") and Path(p).is_file()]
    for path in checks:
        counted = _Collected()
        one = argparse.Namespace(**{**vars(args), "policies": [path], "quiet": True})
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):   # pytest's listing: not ours
            rc = _hermetic_pytest(one, ["--collect-only"], plugins=[counted])
        if rc == EXIT_OK:
            print(f"{path}: ok, {counted.items} Python check item{'s' if counted.items != 1 else ''}")
        elif rc == EXIT_NO_TESTS:
            print(printable(f"vcheck: {path}: no check in it (test_ functions)"), file=sys.stderr)
            status = status or EXIT_USAGE
        else:
            status = status or rc
    return status


class _Collected:
    """How many items a collection made (vcheck validate on a Python check file)."""

    def __init__(self) -> None:
        self.items = 0
        self.names: list[tuple[str, str]] = []

    def pytest_collection_finish(self, session) -> None:
        from .model import LAYERS

        self.items = len(session.items)
        self.names = [(printable(i.nodeid), next((m.name for m in i.iter_markers() if m.name in LAYERS), ""))
                      for i in session.items]


def cmd_list(args: argparse.Namespace) -> int:
    """The items a run would judge on this node, one identity a line, with its layer."""
    status = _validate_all(_policies(args), Catalog())
    if status:
        return status
    counted = _Collected()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):     # pytest's own listing
        rc = _hermetic_pytest(argparse.Namespace(**{**vars(args), "quiet": True}), ["--collect-only"],
                              plugins=[counted])
    for name, layer in counted.names:
        print(f"{name}  ({layer})" if layer else name)
    if rc in (EXIT_OK, EXIT_NO_TESTS):
        print(f"{counted.items} {'item' if counted.items == 1 else 'items'}")
    return rc


def cmd_metrics(args: argparse.Namespace) -> int:
    """The catalogue in 100 columns: name, layer, unit and entity on one line, what it is below."""
    import textwrap

    cat = Catalog()
    wanted = (getattr(args, "filter", None) or "").lower()
    rows = []
    for name in sorted(cat.metrics):
        m = cat.metrics[name]
        layer = LAYER_SHOWN.get((m.layer, name.split(".", 1)[0]), m.layer)
        if wanted and wanted not in name.lower() and wanted not in layer.lower():
            continue
        unit = UNIT_LABEL.get(m.dimension, m.dimension) or "count"
        rows.append((name, layer, unit, ",".join(m.labels) or "node", m.description, m.source))
    if not rows:
        print(printable(f"vcheck: no metric matches {wanted!r}"), file=sys.stderr)
        return EXIT_USAGE
    width = max(len(r[0]) for r in rows)
    print(f"{'METRIC':<{width}}  {'LAYER':<20} {'UNIT':<8} PER")
    for name, layer, unit, per, description, source in rows:
        print(f"{name:<{width}}  {layer:<20} {unit:<8} {per}")
        for line in textwrap.wrap(f"{description} (from {source})", width=94):
            print(f"      {line}")
    return 0


# where a layer's name alone would mislead: the cgroup.* family reads the cgroups of the node vcheck
# runs on (its guest layer, `-m guest`), systemd units and pods alike
LAYER_SHOWN = {("guest", "cgroup"): "guest (node cgroups)"}


def cmd_doctor(args: argparse.Namespace) -> int:
    """Exit 0 when everything applicable can be observed, 1 when something cannot."""
    import json

    from .doctor import diagnose, render
    from .procfs import HostRoots

    rows = diagnose(HostRoots.from_env())
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print(render(rows))
    return 1 if any(r.status == "no" for r in rows) else 0


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes are usage errors: one line, exit 4 (argparse's 2 means
    'interrupted' in vcheck's table)."""

    def error(self, message: str) -> NoReturn:
        print(printable(f"{self.prog}: error: {message} (see {self.prog} --help)"), file=sys.stderr)
        sys.exit(EXIT_USAGE)


# pytest's options `vcheck run` passes on (anything else is vcheck's usage error): selection and
# stopping, and how much the terminal says. No plugin loading (-p), no ini overrides (-o).
PASSED_ON = {"-x": 0, "--exitfirst": 0, "--maxfail": 1, "--deselect": 1, "-r": 1, "--tb": 1, "-l": 0,
             "--showlocals": 0, "--co": 0, "--collect-only": 0, "--color": 1, "--durations": 1}


def _not_passed_on(extra: Sequence[str]) -> str | None:
    """The first argument `vcheck run` does not pass on to pytest, or None."""
    i = 0
    while i < len(extra):
        arg = extra[i]
        name, eq, _ = arg.partition("=")
        if name in PASSED_ON:
            i += 1 if eq or PASSED_ON[name] == 0 else 2
            continue
        if arg.startswith("-r") and len(arg) > 2 or arg.startswith("-x") and set(arg[1:]) <= {"x", "l"}:
            i += 1                   # -rfs, -xl: glued forms
            continue
        return arg
    return None


DESCRIPTION = """vcheck: evidence-backed health checks for a virtualized node, at every layer - the KVM
host, the VM guest and the containers inside. Policies (YAML, or Python check files) are judged
on one sampling window; every check passes, fails or is inconclusive, and says why."""

EXAMPLES = {
    "vcheck": """examples:
  vcheck run                                  the bundled node conformance pack (60 s)
  vcheck run my-policy.yaml --junitxml r.xml  your policy, JUnit for CI
  vcheck metrics cpu                          what can be checked (filtered)
  vcheck explain r.json                       why a saved run failed, top-down""",
    "run": """examples:
  vcheck run                                     the bundled node conformance pack
  vcheck run policy.yaml checks.py --json r.json the policy and Python checks, JSON report
  vcheck run --window 10s -k steal               shorter window, only checks matching 'steal'
  vcheck run --prom-textfile /var/lib/node_exporter/textfile/vcheck.prom   (cron)

pytest options passed on: -x/--exitfirst, --maxfail N, --deselect ID, -r CHARS, --tb STYLE,
-l/--showlocals, --co/--collect-only, --color WHEN, --durations N
exit codes: 0 passed, 1 a check failed or was inconclusive, 2 interrupted, 3 internal error,
4 usage error, 5 nothing to judge, 6 --lock held elsewhere, 7 an output could not be written""",
    "validate": "example:\n  vcheck validate policy.yaml checks.py     load and check them; nothing is sampled",
    "list": "example:\n  vcheck list policy.yaml                   the items a run would judge on this node",
    "metrics": "examples:\n  vcheck metrics                            every metric\n"
               "  vcheck metrics net                        the metrics whose name or layer holds 'net'",
    "compare": "example:\n  vcheck compare before.json after.json     judge AFTER against BEFORE with the policies "
               "both were made with",
    "merge": "example:\n  vcheck merge n*.json --max-failing-nodes 2% --domain-label zone --html fleet.html",
    "report": "example:\n  vcheck report r.json --html r.html        the page a run with --html would have written",
    "explain": "example:\n  vcheck explain r.json 'node-conformance::guest-cpu-steal[cpu3]'",
    "doctor": "example:\n  vcheck doctor                             what this node can observe, and why not",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="vcheck", description=DESCRIPTION, epilog=EXAMPLES["vcheck"],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"vcheck {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES.get(name),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    run = add("run", "sample the node once and judge the policies")
    run.add_argument("policies", nargs="*", metavar="POLICY",
                     help=f"policy files (.yaml) and Python check files (.py); default: the bundled {DEFAULT_PACK}")
    run.add_argument("--junitxml", metavar="FILE", help="write JUnit XML here")
    run.add_argument("--json", metavar="FILE", help="write the JSON report (observations included) here")
    run.add_argument("--html", metavar="FILE", help="write an HTML report (pytest-html, evidence drawn as plots) here")
    run.add_argument("-k", metavar="EXPR", help="only checks whose id matches (pytest -k)")
    run.add_argument("-m", metavar="LAYER", help="only checks of this layer: guest, hypervisor, container")
    run.add_argument("--window", metavar="DURATION", help="observe for this long instead of each policy's window")
    run.add_argument("--baseline", metavar="REPORT", help="judge regress: checks against this earlier JSON report "
                     "(of this node and these policies)")
    run.add_argument("--allow-different-nodes", action="store_true",
                     help="with --baseline: accept a baseline of another node (said in the output)")
    run.add_argument("--allow-different-policies", action="store_true",
                     help="with --baseline: accept a baseline made with other policies (said in the output)")
    run.add_argument("--replay", metavar="REPORT", help="judge on a saved run's observations instead of sampling")
    run.add_argument("--waivers", metavar="FILE", help="waiver file: known failures reported as waived until they expire")
    run.add_argument("--prom-textfile", metavar="PATH", help="write Prometheus text format (node_exporter textfile collector)")
    run.add_argument("--lock", metavar="PATH", help="exit at once (code 6) if another run holds this lock")
    run.add_argument("--timeout", metavar="DURATION", help="bound the whole run; past it: detach, report as interrupted, exit 2")
    run.add_argument("-v", "--verbose", action="count", default=0,
                     help="more detail per check (-vv: pytest's full detail)")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="one character per check instead of a line with its figure")
    run.set_defaults(func=cmd_run)

    val = add("validate", "load and check policies and Python check files; nothing is sampled")
    val.add_argument("policies", nargs="*", metavar="POLICY")
    val.set_defaults(func=cmd_validate)

    lst = add("list", "the items a run would judge")
    lst.add_argument("policies", nargs="*", metavar="POLICY")
    lst.set_defaults(func=cmd_list)

    met = add("metrics", "the metric catalogue")
    met.add_argument("filter", nargs="?", help="only metrics whose name or layer contains this")
    met.set_defaults(func=cmd_metrics)

    cmp_ = add("compare", "judge a saved run against an earlier one (regress: checks)")
    cmp_.add_argument("before", help="baseline JSON report")
    cmp_.add_argument("after", help="JSON report to judge")
    cmp_.add_argument("policies", nargs="*",
                      help="policies whose checks to judge (default: the ones AFTER was made with)")
    cmp_.add_argument("--allow-different-nodes", action="store_true",
                      help="compare reports of two different nodes (refused by default)")
    cmp_.add_argument("--allow-different-policies", action="store_true",
                      help="compare reports made with different policies (refused by default)")
    cmp_.add_argument("--json", metavar="FILE")
    cmp_.add_argument("--junitxml", metavar="FILE")
    cmp_.set_defaults(func=cmd_compare, junitxml=None)

    mrg = add("merge", "combine per-node reports (JSON or JUnit) into a fleet report and gate")
    mrg.add_argument("reports", nargs="+")
    mrg.add_argument("--json", metavar="FILE", help="write the fleet JSON report here")
    mrg.add_argument("--junitxml", metavar="FILE", help="write one JUnit file with a suite per node")
    mrg.add_argument("--html", metavar="FILE", help="write the fleet page: nodes x checks, failing cells link to evidence")
    mrg.add_argument("--max-failing-nodes", metavar="N|P%", help="fail when more nodes than this fail (e.g. 2%%)")
    mrg.add_argument("--domain-label", metavar="KEY", help="apply the gate within each value of this node label")
    mrg.add_argument("--allow-mixed-policies", action="store_true",
                     help="merge reports made with different policies (refused by default)")
    mrg.set_defaults(func=cmd_merge)

    gat = sub.add_parser("gate", help="the fleet gate of merge, on the fleet's vcheck series in Prometheus")
    gat.add_argument("--prometheus", metavar="URL", required=True, help="Prometheus' base URL, e.g. http://prometheus:9090")
    gat.add_argument("--max-failing-nodes", metavar="N|P%", help="fail when more nodes than this fail (e.g. 2%%)")
    gat.add_argument("--domain-label", metavar="KEY", help="apply the gate within each value of this node label")
    gat.add_argument("--stale-after", metavar="DURATION", default="15m", help="an older result fails its node (default 15m)")
    gat.add_argument("--lookback", metavar="DURATION", default="1h", help="a node gone within this long fails (default 1h)")
    gat.add_argument("--timeout", metavar="DURATION", default="10s", help="give up on Prometheus after this long: exit 4")
    gat.add_argument("--allow-mixed-policies", action="store_true",
                     help="gate nodes judged with different policy sets (refused by default, as in merge)")
    gat.add_argument("--json", metavar="FILE", help="write the fleet JSON report here")
    gat.add_argument("--junitxml", metavar="FILE", help="write one JUnit file with a suite per node")
    gat.add_argument("--html", metavar="FILE", help="write the fleet page")
    gat.set_defaults(func=cmd_gate)

    rep = add("report", "render a saved JSON report as HTML (no sampling, no judging)")
    rep.add_argument("report", help="a JSON report written by vcheck run --json")
    rep.add_argument("--html", metavar="FILE", required=True, help="write the HTML report here")
    rep.set_defaults(func=cmd_report)

    exp = add("explain", "the walk for a failing item of a saved report, top-down")
    exp.add_argument("report", help="a JSON report written by vcheck run --json")
    exp.add_argument("item", nargs="?", help="a nodeid or check id (default: every failing item)")
    exp.set_defaults(func=cmd_explain)

    doc = add("doctor", "what this node can observe, and why not where it cannot")
    doc.add_argument("--json", action="store_true", help="machine-readable rows")
    doc.set_defaults(func=cmd_doctor)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from . import EARLY_SIGNALS

    try:
        for sig, handler in ((signal.SIGTERM, _interrupt), (signal.SIGHUP, _interrupt),   # a closed terminal:
                             (signal.SIGINT, signal.default_int_handler)):            # end as Ctrl-C does
            if signal.getsignal(sig) is not signal.SIG_IGN:   # ignored by whoever started us (nohup): kept
                signal.signal(sig, handler)
    except ValueError:   # called from a thread (an embedding program): its signals are its own
        pass
    raise_descriptor_limit()      # pread on kept-open cgroup and /proc files needs descriptors
    if EARLY_SIGNALS:
        print(f"vcheck: interrupted by {signal.Signals(EARLY_SIGNALS[0]).name} while starting; "
              "nothing was sampled or written", file=sys.stderr)
        return EXIT_INTERRUPTED
    parser = build_parser()
    # `vcheck run` passes options it does not know on to pytest (-x, --lf, -p ...)
    args, extra = parser.parse_known_args(argv)
    for key, value in vars(args).items():
        if isinstance(value, str) and not value.strip() and key not in ("command",):
            parser.error(f"--{key.replace('_', '-')} was given an empty value")
    if extra:
        if getattr(args, "command", None) != "run":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        bad = _not_passed_on(extra)
        if bad:
            parser.error(f"unknown option {bad} for 'vcheck run'; 'vcheck run --help' lists the pytest options "
                         "it passes on")
        args.pytest_args = extra
    try:
        with _reports_own_stdout(args, ("json", "junitxml", "html", "prom_textfile")):
            return int(args.func(args))
    except KeyboardInterrupt as exc:
        why = getattr(exc, "signame", "SIGINT")
        print(f"vcheck: {'--timeout reached' if why == '--timeout' else 'interrupted by ' + why}"
              " before sampling; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `vcheck doctor | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:   # a bug: one line (VCHECK_DEBUG=1 shows the traceback), exit 3
        if os.environ.get("VCHECK_DEBUG"):
            raise
        print(printable(f"vcheck: internal error: {type(exc).__name__}: {str(exc)[:300]} (VCHECK_DEBUG=1 for "
                        "the traceback)"), file=sys.stderr)
        return EXIT_INTERNAL


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM outside the pytest session (while validating, while moving JUnit into place), and
    SIGHUP at any time, end the run the way Ctrl-C does: exit 2, one line, the report saying
    which signal (the plugin handles SIGTERM itself during the session)."""
    try:
        if signum in signal.pthread_sigmask(signal.SIG_BLOCK, []):
            # the run is ending and holds these (plugin._hold_ending_signals): another thread
            # took it; pend it on this thread for entry() instead of cutting a report short
            signal.pthread_kill(threading.main_thread().ident, signum)
            return
    except (OSError, ValueError):
        pass
    raise SignalInterrupt(signal.Signals(signum).name)


def entry() -> NoReturn:
    """The `vcheck` command: main(), then the last instruction too ends with exit 2 on a signal.
    From here on SIGTERM, SIGINT and SIGHUP are held (the plugin holds them already while the
    reports are written); one that came meanwhile is pending, and turns the exit code into 2."""
    from .report.output import ENDING_SIGNALS, pending_signal

    rc = main()
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, ENDING_SIGNALS)
    except (ValueError, OSError):
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    pending = pending_signal()
    if pending and rc != EXIT_INTERRUPTED:
        os.write(2, f"vcheck: interrupted by {pending} as the run ended; the reports "
                    "written are complete\n".encode())
        rc = EXIT_INTERRUPTED
    # at once: nothing after this decision (no interpreter teardown, no thread joins) can
    # take a signal that would then go unanswered; every file was closed and flushed above
    os._exit(rc)


if __name__ == "__main__":
    entry()
