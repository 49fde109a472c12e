"""Prometheus text format for node_exporter's textfile collector, from a run's JSON report.

Per check and entity: outcome, measured value and threshold (base units: seconds, bytes,
percent, counts). Per run: timestamp, duration, exit status, counts by outcome, and the time
of the last successful run, carried over from the previous file when this run did not pass,
so an alert can say "no successful conformance run for 2 h". Per observation, only when there
were any: events the kernel counted and no probe timed.
"""
from __future__ import annotations

import math
import re
import time
from typing import Any, Iterable

from ..model import EntityOutcome, Outcome

OUTCOMES = tuple(o.value for o in Outcome)
# an item's outcome that holds for each of its entities; else an entity's own, in item terms
_WHOLE_ITEM = (Outcome.SKIP, Outcome.WAIVED, Outcome.ERROR, Outcome.NOT_RUN)
_FROM_ENTITY = {EntityOutcome.MISSING: Outcome.SKIP, EntityOutcome.INCONCLUSIVE: Outcome.ERROR}
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LAST_SUCCESS = re.compile(r"^vcheck_last_success_timestamp_seconds(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.M)


def _label(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kw: object) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in kw.items()) + "}"


def _number(v: float) -> str:
    """Prometheus spells the non-finite values NaN, +Inf and -Inf."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return f"{v:.17g}"


def previous_last_success(text: str | None) -> float | None:
    m = _LAST_SUCCESS.search(text or "")
    try:
        value = float(m.group(1)) if m else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def policy_set(report: dict[str, Any]) -> str:
    """The policies a run judged, as one label value: 'name@sha256,...' sorted, so nodes of one
    policy set carry the same value (a fleet gate refuses mixed sets, as merge does)."""
    return ",".join(sorted(f"{p.get('name', '')}@{p.get('sha256', '')}" for p in report.get("policies") or []))


def render(report: dict[str, Any], duration: float, previous_text: str | None = None,
           now: float | None = None) -> str:
    now = time.time() if now is None else now
    host = (report.get("node") or {}).get("hostname", "")
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        rows, seen = [], set()
        for labels, value in samples:
            if labels not in seen:   # a statistic used twice in one expect: one series (the first)
                seen.add(labels)
                rows.append((labels, value))
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {_number(value)}" for labels, value in rows)

    status, values, thresholds = [], [], []
    for r in report.get("results", []):
        base = {"policy": r["policy"], "check": r["check"]}
        entities = r.get("entities") or [{"entity": r.get("entity") or "node", "outcome": r["outcome"],
                                          "measurements": []}]
        for e in entities:
            ent = e["entity"]
            outcome = r["outcome"] if r["outcome"] in _WHOLE_ITEM else \
                _FROM_ENTITY.get(e["outcome"], e["outcome"])
            status.append((_labels(**base, entity=ent, node=host, outcome=outcome),
                           1.0 if outcome == Outcome.PASS else 0.0))
            for m in e.get("measurements") or []:
                lab = _labels(**base, entity=ent, node=host, metric=r["metric"], statistic=m["statistic"])
                if m.get("measured") is not None:
                    values.append((lab, float(m["measured"])))
                if m.get("threshold") is not None:
                    thresholds.append((lab, float(m["threshold"])))
    family("vcheck_check_status", "gauge",
           "1 if the check passed for this entity, else 0; the outcome label says what happened", status)
    family("vcheck_check_value", "gauge", "the measured statistic, in the metric's base unit", values)
    family("vcheck_check_threshold", "gauge", "the threshold the statistic was compared with", thresholds)

    counts = {o: 0 for o in OUTCOMES}
    for r in report.get("results", []):
        counts[r["outcome"] if r["outcome"] in counts else Outcome.ERROR] += 1
    node = _labels(node=host)
    passed = report.get("exit_status") == 0
    last_success = now if passed else previous_last_success(previous_text)
    family("vcheck_run_timestamp_seconds", "gauge", "when this run ended (unix time)", [(node, now)])
    family("vcheck_run_duration_seconds", "gauge", "how long the run took", [(node, duration)])
    family("vcheck_run_exit_status", "gauge", "the run's exit code (0 all passed)",
           [(node, float(report.get("exit_status", 3)))])
    family("vcheck_run_checks", "gauge", "checks by outcome in this run",
           [(_labels(node=host, outcome=o), float(n)) for o, n in counts.items()])
    family("vcheck_run_interrupted", "gauge", "1 if the window was cut short (SIGTERM, --timeout)",
           [(node, 1.0 if (report.get("window") or {}).get("interrupted") else 0.0)])
    cost = report.get("cost") or {}
    for key, name, help_text in (("cpu_seconds", "vcheck_run_cpu_seconds", "CPU vcheck used (user+system)"),
                                 ("max_rss_bytes", "vcheck_run_max_rss_bytes", "vcheck's peak resident memory"),
                                 ("startup_seconds", "vcheck_run_startup_seconds",
                                  "from vcheck's start to the window's first sample")):
        if isinstance(cost.get(key), (int, float)):
            family(name, "gauge", help_text, [(node, float(cost[key]))])
    # who the node is to the fleet: the version that wrote these series, and each node label
    # (VCHECK_NODE_LABELS) as key/value, so any label can be a failure domain of the fleet
    # rules and of `vcheck gate --prometheus --domain-label KEY` (label names such as
    # topology.kubernetes.io/zone are no Prometheus label names)
    family("vcheck_run_info", "gauge", "the vcheck version that wrote this file, and the policies judged (name@sha256)",
           [(_labels(node=host, version=report.get("vcheck", ""), policies=policy_set(report)), 1.0)])
    node_labels = sorted(((report.get("node") or {}).get("labels") or {}).items())
    if node_labels:
        family("vcheck_node_label", "gauge", "a node label (VCHECK_NODE_LABELS): a failure domain for the fleet gate",
               [(_labels(node=host, key=k, value=v), 1.0) for k, v in node_labels])
    if last_success is not None:
        family("vcheck_last_success_timestamp_seconds", "gauge", "when the last run that passed ended",
               [(node, last_success)])
    unseen = [(_labels(node=host, metric=o["metric"],
                       **{k: v for k, v in sorted((o.get("labels") or {}).items()) if _LABEL_NAME.fullmatch(k)
                          and k not in ("node", "metric")}), float(o["unseen"]))
              for o in report.get("observations") or [] if o.get("unseen")]
    if unseen:   # only when it happened: a blind spot worth an alert, not a zero series per device
        family("vcheck_unseen_events", "gauge",
               "events the kernel counted in the window that no probe timed (block completions "
               "/proc/diskstats counts); checks on them hold whatever those took, or are inconclusive", unseen)
    return "\n".join(lines) + "\n"
