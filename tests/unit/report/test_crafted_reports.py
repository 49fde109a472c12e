"""Crafted reports from other nodes through every reader, in process: each is refused with one
ReportFormatError line or read and drawn without an exception (merge, explain, the HTML
evidence, the fleet page), never a traceback."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from vcheck.errors import ReportFormatError
from vcheck.report.explain import explain
from vcheck.report.html import Evidence, saved_observations
from vcheck.report.json_report import parse_report, store_from_report
from vcheck.report.merge import fleet_html, gate, load_node_reports

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "golden" / "expected.json"


def _set(path: str, value):
    def apply(d):
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[int(k)] if k.isdigit() else d[k]
        d[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return apply


CRAFTED = {
    "labels-string": _set("node.labels", "x"), "labels-list": _set("node.labels", [1, 2]),
    "numeric-label": _set("node.labels", {"zone": 5}), "node-null": _set("node", None),
    "layers-list": _set("node.layers", [1]), "start-1e18": _set("window.start", 1e18),
    "surrogate-host": _set("node.hostname", "\ud800x"), "nodeid-backslash": _set("results.0.nodeid", "a\\b::c"),
    "entities-string": _set("results.0.entities", "x"), "entities-ints": _set("results.0.entities", [1]),
    "for-string": _set("results.0.for", "x"), "for-list": _set("results.0.for", [1]),
    "outcome-markup": _set("results.0.outcome", "<b>"), "observations-ints": _set("observations", [1, 2]),
    "observations-string": _set("observations", "x"), "observations-dict": _set("observations", {"a": 1}),
    "policies-string": _set("policies", "x"), "event-nested": _set("results.0.entities.0.events", [{"a": {"b": 1}}]),
    "samples-string": _set("results.0.entities.0.samples", "many"),
    "measurement-string": _set("results.0.entities.0.measurements", ["x"]),
    "vm-identity-list": _set("node.vm_identity", [1]), "exit-huge": _set("exit_status", 10 ** 30),
    "notes-dict": _set("collector_notes", {"a": "x"}), "culprit-pid-string": _set(
        "results.0.entities.0.culprits", [{"pid": "1", "comm": "x"}]),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_every_reader_refuses_or_reads_a_crafted_report(name, tmp_path):
    report = json.loads(GOLDEN.read_text())
    CRAFTED[name](report)
    raw = json.dumps(report).encode()
    try:
        data = parse_report(raw, "r.json")
    except ReportFormatError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("r.json")
        return
    store_from_report(copy.deepcopy(data), "r.json")
    explain(data, None)
    ev = Evidence(saved_observations(data))
    for r in data["results"]:
        ev.result_html(r)
        ev.text(r)
    (tmp_path / "r.json").write_bytes(raw)
    nodes = load_node_reports([str(tmp_path / "r.json")], keep=True)
    fleet_html(nodes, gate(nodes, "0", "zone"), "zone")
