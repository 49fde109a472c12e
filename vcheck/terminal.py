"""What an operator reads on the terminal: vcheck's own outcome words (PASS, FAIL,
INCONCLUSIVE, SKIP, WAIVED) through pytest's own reporting hooks, so `vcheck run` and
`pytest policy.yaml` read the same; one line per check with its figure and threshold; the
evidence of inconclusive and waived checks in sections of their own (pytest would call them
errors and xfails); skips placed at the policy line, never at the line of vcheck's code that
skipped.
"""
from __future__ import annotations

from typing import Any, Mapping

import pytest

from .evidence import printable
from .model import Outcome

# category (the summary line's count), letter (progress), word (verbose line)
_STATUS = {
    Outcome.PASS: ("passed", ".", "PASS"),
    Outcome.FAIL: ("failed", "F", "FAIL"),
    Outcome.ERROR: ("inconclusive", "I", "INCONCLUSIVE"),
    Outcome.SKIP: ("skipped", "s", "SKIP"),
    Outcome.WAIVED: ("waived", "w", "WAIVED"),
}
MAX_FIGURE = 60


def outcome_of(report: pytest.TestReport) -> str | None:
    """The verdict a report of a vcheck item stands for, or None for a phase that says nothing."""
    if report.when == "setup":
        if report.failed:
            return Outcome.ERROR
        if report.skipped:
            return Outcome.WAIVED if hasattr(report, "wasxfail") else Outcome.SKIP
        return None
    if report.when == "call":
        if report.skipped and hasattr(report, "wasxfail"):
            return Outcome.WAIVED
        return Outcome.FAIL if report.failed else Outcome.SKIP if report.skipped else Outcome.PASS
    return Outcome.ERROR if report.failed else None          # teardown: only a failure speaks


def figure(record: Mapping[str, Any] | None) -> str:
    """The measured figure and its threshold of the worst entity: 'max 0.4% (< 10%)'."""
    if not record:
        return ""
    order = {"fail": 0, "inconclusive": 1, "missing": 2, "pass": 3}
    entities = sorted(record.get("entities") or [], key=lambda e: order.get(e.get("outcome"), 9))
    for e in entities:
        # a for: check reads best by the level it held (its sustained figure), then how long
        ms = sorted(e.get("measurements") or [], key=lambda m: not str(m.get("statistic", "")).startswith("sustained"))
        for m in ms:
            if m.get("measured_text"):
                text = f"{m.get('statistic')} {m['measured_text']} ({m.get('threshold_text')})"
                if len(entities) > 1:
                    text = f"{e.get('entity')}: {text}"
                return printable(text)[:MAX_FIGURE]
    return ""


class VcheckTerminal:
    """Registered by the plugin for every run that holds vcheck items."""

    def __init__(self) -> None:
        self.verdicts: dict[str, tuple[str, str]] = {}    # identity -> (word, figure or reason)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_sessionstart(self, session: pytest.Session):
        """No 'test session starts' banner and no 'collected N items': vcheck announces what
        it observes, and for how long, in its own words."""
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            yield
            return
        write_sep = reporter.write_sep

        def without_banner(sep: str, title: str | None = None, **kw: Any) -> None:
            if title != "test session starts":
                write_sep(sep, title, **kw)

        reporter.write_sep = without_banner
        reporter.report_collect = lambda final=False: None
        try:
            yield
        finally:
            del reporter.write_sep          # the reporter's own again

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config):
        if not getattr(report, "vcheck_item", False):
            return None
        outcome = outcome_of(report)
        if outcome is None:
            return "", "", ""
        return _STATUS[outcome]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome = outcome_of(report) if getattr(report, "vcheck_item", False) else None
        if outcome is None:
            return
        record = getattr(report, "vcheck_result", None)
        detail = figure(record) if outcome in (Outcome.PASS, Outcome.FAIL) else ""
        self.verdicts[report.nodeid] = (_STATUS[outcome][2], detail or printable(_reason(report, record)))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Before pytest's summary: it finds each failing item's teardown report by scanning
        every passed report (failing x items: minutes at 100,000 items); it is handed an index
        made once instead. Runs inside pytest's own sessionfinish, before its summary."""
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or not hasattr(reporter, "_get_teardown_reports"):
            return
        index: dict[Any, list[Any]] = {}
        try:
            for rep in reporter.getreports(""):
                if rep.when == "teardown":
                    index.setdefault(rep.id, []).append(rep)
        except (AttributeError, TypeError):     # another pytest's reports: leave its scan be
            return
        reporter._get_teardown_reports = lambda node_id: index.get(node_id, [])

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        """One line per check (its verdict, figure and threshold), then the evidence of
        inconclusive checks and the reasons of waived ones: pytest lists only its own categories."""
        if self.verdicts and config.get_verbosity() >= 0:
            terminalreporter.write_sep("=", f"vcheck: {_plural(len(self.verdicts), 'check')}")
            width = min(max(len(k) for k in self.verdicts), 60)
            for name, (word, detail) in self.verdicts.items():
                terminalreporter.write_line(f"{word:<12} {printable(name):<{width}}  {detail}"[:200].rstrip())
        inconclusive = terminalreporter.stats.get("inconclusive", [])
        if inconclusive:
            terminalreporter.write_sep("=", "INCONCLUSIVE: vcheck could not decide these")
            for rep in inconclusive:
                terminalreporter.write_sep("_", rep.nodeid)
                terminalreporter.write_line(str(rep.longreprtext or "").rstrip())


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _reason(report: pytest.TestReport, record: Mapping[str, Any] | None) -> str:
    if record and record.get("reason"):
        return str(record["reason"])
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[-1]).removeprefix("Skipped: ")
    return str(getattr(report, "wasxfail", "") or "")


def place_skip(report: pytest.TestReport, path: str, line: int) -> None:
    """A skip shown at the policy line ('demo.yaml:3: no data ...'), not at vcheck's code."""
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        reason = str(report.longrepr[2])
        report.longrepr = (path, line, reason.removeprefix("Skipped: "))
