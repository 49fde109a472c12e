"""The report writers as one pytest plugin, in the manner of pytest's own junitxml: registered
in pytest_configure, fed by the report hooks (each item's result rides on its TestReport as
plain data) and by what the run pushes to it (observations, policies), writing at session end.
It never reaches back into items or the run's state.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

import pytest

from ..errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_OUTPUT, OutputError
from .json_report import RunFacts, build_report, dump_chunks
from .output import pending_signal, read_previous, write_output
from .prometheus import render


@dataclass(frozen=True)
class Output:
    """One file to write from the finished report."""

    path: str
    render: Callable[[dict[str, Any], "ReportRecorder"], bytes | Iterable[bytes]]


def json_output(path: str) -> Output:
    return Output(path, lambda report, rec: dump_chunks(report))     # streamed to the file as encoded


def prometheus_output(path: str) -> Output:
    def make(report: dict[str, Any], rec: ReportRecorder) -> bytes:
        # the previous file carries the last success time across failing runs
        return render(report, time.time() - rec.started, read_previous(path)).encode()
    return Output(path, make)


class ReportRecorder:
    def __init__(self, outputs: list[Output], started: float | None = None):
        self.outputs = outputs
        self.started = time.time() if started is None else started
        self.results: dict[str, dict[str, Any]] = {}
        self.facts = RunFacts()
        self.failed: list[str] = []

    # --- what the run pushes -------------------------------------------------------------
    def collected(self, records: list[dict[str, Any]]) -> None:
        """Every item, in collection order, as not yet run (an interrupted run keeps them so)."""
        self.results = {r["id"]: r for r in records}

    def observed(self, facts: RunFacts) -> None:
        self.facts = facts

    # --- pytest hooks --------------------------------------------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = getattr(report, "vcheck_result", None)
        if record is not None:
            self.results[record["id"]] = record

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        pending = pending_signal()
        if pending and not self.facts.interrupted_by:
            # a signal held since the verdicts were in: the report says so, and the run ends 2
            self.facts = replace(self.facts, interrupted_by=pending)
            exitstatus = session.exitstatus = EXIT_INTERRUPTED
        report = build_report(list(self.results.values()), self.facts, int(exitstatus))
        for out in self.outputs:
            try:
                write_output(out.path, out.render(report, self))
            except OutputError as exc:
                # one line per output that failed; the others are still written
                self.failed.append(str(exc))
                print(f"vcheck: {exc}", file=sys.stderr)
        if self.failed and session.exitstatus == EXIT_OK:
            session.exitstatus = EXIT_OUTPUT


RECORDER_KEY: pytest.StashKey[ReportRecorder] = pytest.StashKey()
