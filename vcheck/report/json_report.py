"""The JSON report: verdicts *and* what was observed, so later runs can compare against it
(baselines), merge it (fleets) or judge new policies on it (replays).

Format ``vcheck.report`` version 1 (documented in docs/report-format.md)::

    {"format": "vcheck.report", "version": 1, "vcheck": "0.1.0",
     "created": "2026-11-24T01:02:03Z", "exit_status": 1,
     "node": {"hostname", "kernel", "boot_id", "virtualization"},
     "policies": [{"name", "path", "sha256"}],
     "window": {"start": epoch_s, "planned": s, "observed": s, "interrupted": bool},
     "unavailable": {metric: reason},
     "results": [{"nodeid", "policy", "check", "metric", "layer", "entity", "labels",
                  "outcome", "reason", "expect", "for", "window",
                  "entities": [{"entity", "labels", "info", "outcome", "reason", "samples",
                                "expected_samples", "observed_seconds",
                                "measurements": [{"expression", "statistic", "measured",
                                                  "measured_text", "threshold", "passed", "note"}],
                                "series": {"min", "mean", "max", "longest_violation"}, "events"}]}],
     "observations": [{"metric", "labels", "info", "times", "values", "spans",
                       "histogram": {"scheme", "scale", "count", "sum", "max", "buckets"},
                       "events", "notes", "gone_at", "gone_reason"}],
     "collector_notes": {collector: [text]}}

All values are in the metric's base unit: seconds, bytes, percent (0-100), counts.
"""
from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..evidence import EntityEvidence, redact
from ..histogram import Histogram
from ..observations import Observation, ObservationStore, labels_of
from .atomic import write_atomic
from .node import node_facts

if TYPE_CHECKING:
    import pytest

    from ..plugin import RunState

FORMAT = "vcheck.report"
VERSION = 1


def _entity_json(e: EntityEvidence) -> dict[str, Any]:
    return {
        "entity": e.entity, "labels": e.labels, "info": {k: redact(v) for k, v in e.info.items()},
        "outcome": e.outcome, "reason": e.reason, "samples": e.samples,
        "expected_samples": e.expected_samples, "observed_seconds": e.observed_seconds,
        "measurements": [m.__dict__ for m in e.measurements], "series": e.series,
        "events": e.events, "notes": e.notes,
    }


def observation_json(o: Observation) -> dict[str, Any]:
    return {"metric": o.metric, "labels": dict(o.labels), "info": {k: redact(v) for k, v in o.info.items()},
            "times": o.times, "values": o.values, "spans": o.spans,
            "histogram": o.histogram.to_json() if o.histogram is not None else None,
            "events": o.events, "notes": o.notes, "gone_at": o.gone_at, "gone_reason": o.gone_reason, "blind": o.blind}


def build_report(session: "pytest.Session", state: "RunState", exit_status: int) -> dict[str, Any]:
    from ..items import CheckItem

    results = []
    for item in session.items:
        if not isinstance(item, CheckItem):
            continue
        v = item.verdict
        results.append({
            "nodeid": item.nodeid, "policy": item.policy.name, "check": item.check.id,
            "metric": item.check.metric.name, "layer": item.check.layer,
            "entity": item.name[len(item.check.id):].strip("[]") or None, "labels": item.labels,
            "outcome": v.outcome if v else "not-run", "reason": v.reason if v else "",
            "expect": item.check.expect_text, "for": item.check.for_, "window": item.check.window,
            "entities": [_entity_json(e) for e in v.entities] if v else [],
        })
    store = state.store
    w = store.window if store else None
    return {
        "format": FORMAT, "version": VERSION, "vcheck": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "exit_status": exit_status,
        "node": {**node_facts(), "layers": layers_observed(state)},
        "policies": [{"name": p.name, "path": str(path), "sha256": p.sha256} for path, p in state.policies.items()],
        "window": {"start": w.start_wall, "planned": w.planned, "observed": w.duration,
                   "interrupted": w.interrupted} if w else None,
        "unavailable": dict(store.unavailable) if store else {},
        "results": results,
        "observations": [observation_json(o) for o in store.all()] if store else [],
        "collector_notes": dict(store.collector_notes) if store else {},
    }


def layers_observed(state: "RunState") -> dict[str, str]:
    """Per layer: 'observed', 'unavailable: why', 'no data' or 'not checked' in this run."""
    from ..catalog import LAYERS

    layer_of = {m.name: m.layer for m in state.catalog.metrics.values()}
    store = state.store
    observations = store.all() if store is not None else []
    unavailable = store.unavailable if store is not None else {}
    out = {}
    for layer in LAYERS:
        mine = [o for o in observations if layer_of.get(o.metric) == layer]
        why = next((r for m, r in unavailable.items() if layer_of.get(m) == layer), "")
        if any(o.values or (o.histogram is not None and o.histogram.count) for o in mine):
            out[layer] = "observed"
        elif why:
            out[layer] = f"unavailable: {why}"
        else:
            out[layer] = "no data" if mine else "not checked"
    return out


def observation_from_json(d: dict[str, Any]) -> Observation:
    return Observation(metric=d["metric"], labels=labels_of(d.get("labels") or {}), info=dict(d.get("info") or {}),
                       times=list(d.get("times") or []), values=list(d.get("values") or []),
                       spans=list(d.get("spans") or []),
                       histogram=Histogram.from_json(d["histogram"]) if d.get("histogram") else None,
                       events=list(d.get("events") or []), notes=list(d.get("notes") or []),
                       gone_at=d.get("gone_at"), gone_reason=d.get("gone_reason") or "",
                       blind=d.get("blind") or "")


def store_from_report(report: dict[str, Any]) -> ObservationStore:
    """The observations of a saved run, as a store items can judge (replays, baselines)."""
    store = ObservationStore()
    for d in report.get("observations") or []:
        o = observation_from_json(d)
        store.put(o)
    store.unavailable.update(report.get("unavailable") or {})
    w = report.get("window") or {}
    store.window.start_wall = w.get("start") or 0.0
    store.window.planned = w.get("planned") or 0.0
    store.window.duration = w.get("observed") or 0.0
    store.window.interrupted = bool(w.get("interrupted"))
    return store


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(report, indent=1, default=str) + "\n").encode())


class ReportFormatError(ValueError):
    pass


def read_report(path: str | os.PathLike) -> dict[str, Any]:
    """Load a report written by vcheck; a foreign or newer file gets a clear error."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise ReportFormatError(f"{path}: not a readable JSON report ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReportFormatError(f"{path}: not a vcheck report (no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise ReportFormatError(f"{path}: report format version {data.get('version')!r}; "
                                f"this vcheck reads version {VERSION}")
    return data
