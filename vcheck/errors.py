"""Errors that end a run with a one-line message and a distinct exit code (pytest's codes,
and vcheck's own above them)."""
from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_TESTS = 0, 1, 2, 3, 4, 5
EXIT_LOCKED = 6          # --lock: another run holds it; nothing was touched
EXIT_OUTPUT = 7          # the checks passed but a report output could not be written


class VcheckError(Exception):
    exit_code = EXIT_INTERNAL


class PolicyError(VcheckError):
    """A policy that cannot be loaded; str() is 'FILE:LINE:COL: message' (1-based)."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, line: int, col: int, message: str):
        super().__init__(f"{path}:{line}:{col}: {message}")
        self.path, self.line, self.col, self.message = path, line, col, message


class UsageError(VcheckError):
    exit_code = EXIT_USAGE


class ReportFormatError(UsageError):
    """A saved report (replay, baseline, compare, merge) that is foreign, malformed or too big."""


class OutputError(VcheckError):
    """A report output that cannot be written; str() names the path and why."""

    exit_code = EXIT_OUTPUT


class Unavailable(VcheckError):
    """A source (a collector, some of its metrics, a BPF program) cannot observe this node; the
    message says why and what would fix it."""

    def __init__(self, reason: str, metrics: tuple[str, ...] | frozenset[str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.metrics = metrics  # None: all metrics the collector was asked for


class SignalInterrupt(KeyboardInterrupt):
    """A signal that ends the run like Ctrl-C (pytest treats it as one); knows its name."""

    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame
