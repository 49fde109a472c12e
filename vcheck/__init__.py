"""vcheck: evidence-backed health checks for virtualized nodes (KVM host, VM guest, containers).

Declarative YAML policies and Python check functions compile into pytest items; one sampling
session observes all layers concurrently; every item judges what was observed and shows why.
"""
__version__ = "0.1.0"

import signal as _signal
import sys as _sys

# A signal that arrives while the vcheck command is still importing (before cli.main installs
# its handlers) is noted here, not acted on by the default action (which would kill the process
# with no word and no exit code of vcheck's); cli.main then ends the run with exit 2.
EARLY_SIGNALS: list[int] = []


def _note_early(signum: int, frame: object) -> None:
    EARLY_SIGNALS.append(signum)


def _is_the_vcheck_command(argv: list[str]) -> bool:
    return any(a.endswith("/vcheck") or a == "vcheck" for a in argv[:2]) or argv[1:3] == ["-m", "vcheck.cli"]


if _is_the_vcheck_command(list(getattr(_sys, "orig_argv", []))):
    for _s in (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT):
        if _signal.getsignal(_s) is not _signal.SIG_IGN:      # nohup's choice is kept
            _signal.signal(_s, _note_early)

from .observe import Observed, observe, quantity  # noqa: E402  (the public API of Python checks)

__all__ = ["Observed", "__version__", "observe", "quantity"]
