"""vcheck: evidence-backed health checks for virtualized nodes (KVM host, VM guest, containers).

Declarative YAML policies compile into pytest items; one sampling session observes all layers
concurrently; every item judges its assertion on what was observed and shows why.
"""
__version__ = "0.1.0"
