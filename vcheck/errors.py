"""Errors that end a run with a one-line message and a distinct exit code (pytest's codes)."""
from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE, EXIT_NO_TESTS = 0, 1, 2, 3, 4, 5


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
