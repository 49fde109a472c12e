"""Python check functions as vcheck items: their declared observation becomes a Check (validated
by the policy loader itself, so a bad metric or window reads as it would in YAML), items are
made per entity with the same selection rule, and the run's one session samples for them.

The fixtures (`observed`, `vcheck_node`, `vms`, `containers`) live here too, so a test file
needs no conftest: vcheck's plugin provides them.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping

import pytest
import yaml

from .errors import PolicyError
from .evidence import printable, public_info
from .model import LAYERS, Outcome
from .nodemodel import ContainerView, NodeModel, VmView
from .observe import MARKER, Observed, merge_observations
from .policy import Check, load_policy_bytes
from .runstate import STATE_KEY, RunState
from .selection import entity_name, entity_of, observations_for

CHECK_KEY: pytest.StashKey[Check] = pytest.StashKey()
IS_CHECK_KEY: pytest.StashKey[bool] = pytest.StashKey()
LABELS_KEY: pytest.StashKey[dict[str, str] | None] = pytest.StashKey()
OBSERVED_KEY: pytest.StashKey[Observed] = pytest.StashKey()
NODE_KEY: pytest.StashKey[NodeModel] = pytest.StashKey()
NO_ENTITY = "node"


def check_for(function: Any, marker: pytest.Mark, state: RunState) -> Check:
    """The Check a marked function declares, validated once per function (its parametrized
    items share it)."""
    key = (inspect.getsourcefile(function) or "?", function.__qualname__)
    if key not in state.python_checks:
        state.python_checks[key] = _declared_check(function, marker, state)
    return state.python_checks[key]


def _declared_check(function: Any, marker: pytest.Mark, state: RunState) -> Check:
    """Validated by the YAML loader (one implementation of the rules); errors name the
    function's file and line."""
    path = inspect.getsourcefile(function) or "?"
    line = inspect.getsourcelines(function)[1] if path != "?" else 0
    kw = dict(marker.kwargs)
    if marker.args:
        kw.setdefault("metric", marker.args[0])
    entry: dict[str, Any] = {"id": function.__name__, "metric": kw.get("metric"), "expect": "count >= 0",
                             "window": kw.get("window", "60s"), "interval": kw.get("interval", "1s")}
    if kw.get("per"):
        entry["per"] = kw["per"]
    if kw.get("select"):
        entry["select"] = kw["select"]
    unknown = set(kw) - {"metric", "per", "select", "window", "interval"}
    try:
        if unknown:
            raise PolicyError(path, line, 1, f"@observe: unknown argument {sorted(unknown)[0]!r}")
        text = yaml.safe_dump({"policy": "python-check", "checks": [entry]}, sort_keys=False)
        policy = load_policy_bytes(text.encode(), path, state.catalog)
    except PolicyError as exc:
        raise PolicyError(path, line, 1, f"@observe on {function.__name__}: {exc.message}") from None
    check = policy.checks[0]
    from dataclasses import replace

    if state.window_override:
        check = replace(check, window=state.window_override, interval=min(check.interval, state.window_override))
    return replace(check, line=line, col=1, expect_text="(python)")


def marked(item_or_def: Any) -> pytest.Mark | None:
    return item_or_def.get_closest_marker(MARKER)


# --- hooks (called from vcheck.plugin) ----------------------------------------------------

def node_model(config: pytest.Config) -> NodeModel:
    if NODE_KEY not in config.stash:
        config.stash[NODE_KEY] = NodeModel(config.stash[STATE_KEY].roots)
    return config.stash[NODE_KEY]


def generate_tests(metafunc: pytest.Metafunc) -> None:
    """One item per VM for a function that takes `vm`, per container for `container`, per
    entity for an @observe(per=...) function."""
    node = node_model(metafunc.config)
    for arg, what, kind in (("vm", "vms", "VM"), ("container", "containers", "container")):
        if arg not in metafunc.fixturenames:
            continue
        found = getattr(node, what)
        if found:
            metafunc.parametrize(arg, found, ids=[x.name if arg == "vm" else x.entity for x in found])
        else:   # no entity: one item that says why, never a silent pass
            why = "; ".join(node.notes) or f"no {kind} on this node"
            metafunc.parametrize(arg, [pytest.param(None, marks=pytest.mark.skip(reason=f"no data: {why}"))],
                                 ids=["node"])
    marker = marked(metafunc.definition)
    if marker is None:
        return
    state: RunState = metafunc.config.stash[STATE_KEY]
    try:
        check = check_for(metafunc.function, marker, state)
    except PolicyError as exc:
        state.policy_errors.append(str(exc))
        return
    entities = state.entities_for(check)
    if entities != [None] and "vcheck_entity" in metafunc.fixturenames:
        metafunc.parametrize("vcheck_entity", entities,
                             ids=[entity_name(e, list(e)) for e in entities])  # type: ignore[arg-type]


# a test function that takes one of these is a vcheck check (reported like a YAML item)
NODE_FIXTURES = {"observed": None, "vm": "hypervisor", "vms": "hypervisor", "container": "container",
                 "containers": "container", "vcheck_node": None}


def attach(item: pytest.Item, state: RunState) -> bool:
    """Make a collected function a vcheck item: its Check (when it observes), entity and layer."""
    if not isinstance(item, pytest.Function):
        return False
    uses = [f for f in NODE_FIXTURES if f in item.fixturenames]
    marker = marked(item)
    if marker is None and not uses:
        return False
    item.stash[IS_CHECK_KEY] = True
    layer = next((NODE_FIXTURES[f] for f in uses if NODE_FIXTURES[f]), None)
    if marker is not None:
        try:
            check = check_for(item.function, marker, state)
        except PolicyError:
            return True     # reported once by generate_tests
        item.stash[CHECK_KEY] = check
        layer = check.layer
        labels = getattr(getattr(item, "callspec", None), "params", {}).get("vcheck_entity")
        item.stash[LABELS_KEY] = dict(labels) if labels else None
    else:
        params = getattr(getattr(item, "callspec", None), "params", {})
        vm, container = params.get("vm"), params.get("container")
        item.stash[LABELS_KEY] = ({"vm": vm.name} if isinstance(vm, VmView) else
                                  {"container": container.entity} if isinstance(container, ContainerView) else None)
    if layer:
        item.add_marker(layer)
    return True


def result_record(item: pytest.Item, report: pytest.TestReport | None) -> dict[str, Any]:
    """A Python item's result in the same shape as a YAML item's (plain data for reporters)."""
    check = item.stash.get(CHECK_KEY, None)
    labels = item.stash.get(LABELS_KEY, None)
    observed = item.stash.get(OBSERVED_KEY, None)
    outcome, reason = Outcome.NOT_RUN, ""
    if report is not None:
        if report.skipped:
            outcome = Outcome.WAIVED if hasattr(report, "wasxfail") else Outcome.SKIP
            reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
        elif report.failed:
            outcome = Outcome.FAIL if report.when == "call" else Outcome.ERROR
            reason = _first_line(report)
        else:
            outcome = Outcome.PASS
    entity = entity_name(labels, list(labels)) if labels else None
    record: dict[str, Any] = {
        "id": identity(item), "nodeid": item.nodeid, "file": str(item.path),
        "policy": Path(str(item.path)).stem, "check": item.originalname
        if isinstance(item, pytest.Function) else item.name,
        "metric": check.metric.name if check else None,
        "layer": check.layer if check else next((m.name for m in item.iter_markers() if m.name in LAYERS), None),
        "entity": entity, "labels": labels, "outcome": outcome, "reason": reason,
        "expect": "(python)", "for": None, "window": check.window if check else None, "entities": [],
    }
    if observed is not None:
        record["entities"] = [{
            "entity": entity or NO_ENTITY, "labels": labels or {},
            "info": public_info(observed.info),
            "outcome": {Outcome.PASS: "pass", Outcome.FAIL: "fail"}.get(outcome, "inconclusive"),
            "reason": reason, "samples": len(observed.values) or (observed.histogram.count if observed.histogram else 0),
            "expected_samples": 0, "observed_seconds": observed.window, "measurements": [],
            "series": ({"min": min(observed.values), "mean": observed.mean,
                        "max": max(observed.values), "longest_violation": None} if observed.values else None),
            "events": list(observed.recorded_events), "notes": observed.notes,
            **({"culprits": observed.culprits} if observed.culprits else {})}]
    return record


def identity(item: pytest.Item) -> str:
    """A Python check's result name: its module's name, the function and its parameters
    ('test_vms::test_vcpus_are_pinned[web1]'), wherever the file was named from."""
    return f"{Path(str(item.path)).stem}::{item.name}"


def _first_line(report: pytest.TestReport) -> str:
    text = str(report.longrepr or "")
    for line in text.splitlines():
        if line.startswith("E "):
            return printable(line[1:].strip())[:300]
    return printable(text.strip().splitlines()[-1])[:300] if text.strip() else ""


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture
def vcheck_entity() -> Mapping[str, str] | None:
    """The entity of a per-entity Python check (parametrized by vcheck; None for node-wide)."""
    return None


@pytest.fixture
def observed(request: pytest.FixtureRequest, vcheck_entity: Mapping[str, str] | None) -> Observed:
    """What the session observed for this item, with the YAML grammar's statistics."""
    item = request.node
    check = item.stash.get(CHECK_KEY, None)
    if check is None:
        pytest.fail("vcheck: `observed` needs @observe(...) on the test function", pytrace=False)
    state: RunState = request.config.stash[STATE_KEY]
    if state.store is None:
        pytest.fail("vcheck: no sampling session ran for this item", pytrace=False)
    labels = dict(vcheck_entity) if vcheck_entity else None
    obs = observations_for(check, state.store, labels)
    window = min(check.window, state.store.window.duration or check.window)
    got = merge_observations(check.metric.name, check.metric.dimension, window,
                             [(entity_of(o.label_dict, check.metric.labels), o) for o in obs])
    if not obs:
        got.notes.append(state.store.unavailable.get(check.metric.name, "") or
                         f"no {check.metric.entity} data for {entity_of(labels, check.metric.labels) if labels else 'this node'}")
    item.stash[OBSERVED_KEY] = got
    return got


@pytest.fixture(scope="session")
def vcheck_node(request: pytest.FixtureRequest) -> NodeModel:
    """The node as a model: facts, VMs, containers; discovered lazily, once per run."""
    return node_model(request.config)


@pytest.fixture(scope="session")
def vms(vcheck_node: NodeModel) -> list[VmView]:
    """The VMs on this host (processes holding a kvm-vm fd) with their vCPU threads."""
    return vcheck_node.vms


@pytest.fixture(scope="session")
def containers(vcheck_node: NodeModel) -> list[ContainerView]:
    """The running containers, with cgroup, namespaces, NSpid, and run() inside them."""
    return vcheck_node.containers


def evidence_section(item: pytest.Item) -> str | None:
    observed = item.stash.get(OBSERVED_KEY, None)
    return observed.summary() if observed is not None else None


# --- loading a check file: the file named, alone ---------------------------------------------

REFUSED_PREFIX = "vcheck-refused: "


def refused_names(path: Path, source: bytes) -> list[str]:
    """What a check file may not do, as 'FILE:LINE: reason' lines: ask pytest to load plugins
    (`pytest_plugins`) or define pytest hooks (`def pytest_...`). Either could rewrite verdicts,
    and vcheck runs as root: only the file the operator named is loaded, as plain checks."""
    import ast

    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError:
        return []              # the import reports it, with its line
    out = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 1)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("pytest_"):
            out.append(f"{path}:{line}: defines the pytest hook {node.name}(); a check file holds checks "
                       "and fixtures only")
        elif isinstance(node, ast.Name) and node.id == "pytest_plugins":
            out.append(f"{path}:{line}: sets pytest_plugins; vcheck loads no plugin a check file names")
        elif isinstance(node, ast.Constant) and node.value == "pytest_plugins":
            out.append(f"{path}:{line}: names pytest_plugins; vcheck loads no plugin a check file names")
    return out


class CheckModule(pytest.Module):
    """A Python check file imported as a module of its own: no package __init__.py beside or
    above it runs, nothing is added to sys.path, and no pytest_plugins it names are loaded."""

    def _getobj(self):
        import ast
        import hashlib
        import sys
        import types

        from _pytest.assertion.rewrite import rewrite_asserts

        path = Path(self.path)
        source = path.read_bytes()
        refused = refused_names(path, source)
        if refused:
            raise self.CollectError(REFUSED_PREFIX + "\n".join(refused))
        name = f"vcheck_check_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
        module = types.ModuleType(name)
        module.__file__ = str(path)
        sys.modules[name] = module       # dataclasses and pickling look modules up by name
        try:
            tree = ast.parse(source, filename=str(path))
            # pytest's own assertion rewriting: a failing assert shows its values, as under pytest
            rewrite_asserts(tree, source, str(path), self.config)
            exec(compile(tree, str(path), "exec", dont_inherit=True), module.__dict__)
        except BaseException as exc:     # SystemExit, KeyboardInterrupt-like exits in a check file too
            del sys.modules[name]
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise self.CollectError(f"{REFUSED_PREFIX}{path}:{_import_line(exc, path)}: cannot import the check "
                                    f"file: {type(exc).__name__}: {printable(str(exc))[:300]}") from None
        return module


def _import_line(exc: BaseException, path: Path) -> int:
    """The line of the check file where the import failed (the innermost frame in that file)."""
    if isinstance(exc, SyntaxError) and exc.lineno and exc.filename == str(path):
        return exc.lineno
    line, tb = 1, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
