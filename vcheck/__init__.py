"""vcheck: evidence-backed health checks for virtualized nodes (KVM host, VM guest, containers).

Declarative YAML policies and Python check functions compile into pytest items; one sampling
session observes all layers concurrently; every item judges what was observed and shows why.
"""
__version__ = "0.1.0"

from .observe import Observed, observe, quantity  # noqa: E402  (the public API of Python checks)

__all__ = ["Observed", "__version__", "observe", "quantity"]
