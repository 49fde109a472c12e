"""The package's import graph: no circle, and no import that runs back up a layer.

Every import counts, also those inside functions (a function-local import is still a
dependency; hiding one is how the circles of the past were "broken")."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "vcheck"

# Lower number = lower layer. A module may import only modules of its own layer or below.
LAYERS = {
    0: ("vcheck", "vcheck.errors", "vcheck.model", "vcheck.units", "vcheck.histogram", "vcheck.procfs",
        "vcheck.observations", "vcheck.expr", "vcheck.cost", "vcheck.files", "vcheck.boundary"),
    1: ("vcheck.probes", "vcheck.bpf_build", "vcheck.libbpf", "vcheck.evidence", "vcheck.policy", "vcheck.selection", "vcheck.waivers"),
    2: ("vcheck.collectors", "vcheck.identity"),   # identity: the collectors' discovery, for evidence
    3: ("vcheck.catalog", "vcheck.session", "vcheck.judge", "vcheck.report", "vcheck.doctor",
        "vcheck.runstate", "vcheck.observe", "vcheck.nodemodel", "vcheck.terminal"),
    4: ("vcheck.items", "vcheck.pycheck"),
    5: ("vcheck.plugin",),
    6: ("vcheck.cli", "vcheck.__main__"),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    mod = module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("vcheck"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("vcheck"):
                continue
            for a in node.names:   # `from . import bpf` imports a module, not a name
                sub = f"{target}.{a.name}"
                out.add(sub if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                        or (PACKAGE.parent / Path(*sub.split(".")) / "__init__.py").exists() else target)
    return out


def graph() -> dict[str, set[str]]:
    g = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}
    return {m: {d for d in deps if d in g and d != m} for m, deps in g.items()}


def layer_of(mod: str) -> int:
    best, found = -1, None
    for level, prefixes in LAYERS.items():
        for p in prefixes:
            if (mod == p or (p != "vcheck" and mod.startswith(p + "."))) and len(p) > best:
                best, found = len(p), level
    assert found is not None, f"{mod} is in no layer: add it to LAYERS"
    return found


def test_no_import_circle():
    g = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(g[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_import_runs_up_a_layer():
    g = graph()
    upward = [f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})"
              for m, deps in sorted(g.items()) for d in sorted(deps)
              if layer_of(d) > layer_of(m) and not (m == "vcheck" and d.startswith("vcheck."))]
    assert not upward, "\n".join(upward)
