"""Evidence: what a reviewer needs to believe a verdict without rerunning it.

Records are plain dataclasses (they go to the terminal, JUnit properties and the JSON report);
rendering lives here too, and so does redaction, because evidence leaves the node.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .histogram import RELATIVE_ERROR, Histogram
from .units import format_duration, format_value

_SECRET_PATTERNS = (
    # qemu -object secret,id=x,data=... and password=/passwd=/token=/key= style options
    (re.compile(r"(?i)\b((?:data|password|passwd|pass|pwd|secret|token|key|api[-_]?key|access[-_]?key|"
                r"auth|credentials?)=)([^,:\s&]+)"), r"\1<redacted>"),
    # credentials in URLs: scheme://user:pass@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+:)([^@\s/]+)@"), r"\1<redacted>@"),
    # --password VALUE style flags
    (re.compile(r"(?i)(--?(?:password|passwd|token|secret|api-key)[ =])(\S+)"), r"\1<redacted>"),
    # Authorization: Bearer xyz
    (re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/-]+=*)"), r"\1<redacted>"),
)


def redact(text: str) -> str:
    """Remove secrets from a command line or environment string before it becomes evidence."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


@dataclass
class Measurement:
    """One leaf of the assertion, as judged."""

    expression: str         # the leaf as written, e.g. "p99 < 100us"
    statistic: str          # e.g. "p99", "count(> 10ms)", "each sample"
    measured: float | None  # base unit (or a count)
    measured_text: str
    threshold_text: str
    passed: bool | None
    note: str = ""
    threshold: float | None = None   # base unit, for machine readers (Prometheus, baselines)


@dataclass
class EntityEvidence:
    entity: str
    labels: dict[str, str]
    info: dict[str, str]
    outcome: str                       # pass | fail | inconclusive | missing
    measurements: list[Measurement] = field(default_factory=list)
    samples: int = 0
    expected_samples: int = 0
    observed_seconds: float = 0.0
    series: dict[str, Any] | None = None       # min/mean/max, longest violation
    histogram: Histogram | None = None
    events: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class Verdict:
    outcome: str              # pass | fail | skip | error (inconclusive)
    reason: str
    entities: list[EntityEvidence]
    window: float
    dimension: str
    expect: str
    metric: str
    for_: float | None = None
    notes: list[str] = field(default_factory=list)

    def properties(self) -> list[tuple[str, str]]:
        """Flat key/value pairs for JUnit <properties>."""
        props = [("vcheck.outcome", self.outcome), ("vcheck.metric", self.metric),
                 ("vcheck.expect", self.expect), ("vcheck.window", format_duration(self.window))]
        if self.for_:
            props.append(("vcheck.for", format_duration(self.for_)))
        if self.reason:
            props.append(("vcheck.reason", self.reason))
        for e in self.entities:
            for m in e.measurements:
                props.append((f"vcheck.{e.entity}.{m.statistic}", m.measured_text))
            props.append((f"vcheck.{e.entity}.samples", str(e.samples)))
        return props


def render(v: Verdict, description: str = "", remediation: str = "", max_entities: int = 12) -> str:
    """The text a human reads in one glance: verdict line, then the offending entities first."""
    lines = [f"{v.metric} expect {v.expect!r}" + (f" for {format_duration(v.for_)}" if v.for_ else "")
             + f" over {format_duration(v.window)}: {v.outcome.upper()}" + (f" ({v.reason})" if v.reason else "")]
    if description:
        lines.append(f"  why it matters: {description}")
    order = {"fail": 0, "inconclusive": 1, "missing": 2, "pass": 3}
    shown = sorted(v.entities, key=lambda e: order.get(e.outcome, 9))
    for e in shown[:max_entities]:
        lines.extend(_render_entity(e, v))
    if len(shown) > max_entities:
        lines.append(f"  ... {len(shown) - max_entities} more entities in the JSON report")
    for n in v.notes:
        lines.append(f"  note: {n}")
    if remediation and v.outcome == "fail":
        lines.append(f"  remediation: {remediation}")
    return "\n".join(lines)


def _render_entity(e: EntityEvidence, v: Verdict) -> list[str]:
    info = ", ".join(f"{k}={val}" for k, val in e.info.items())
    head = f"  [{e.entity}] {e.outcome}" + (f" ({info})" if info else "")
    if e.reason:
        head += f": {e.reason}"
    out = [head]
    for m in e.measurements:
        mark = {True: "ok", False: "VIOLATED", None: "undecided"}[m.passed]
        out.append(f"      {m.statistic} = {m.measured_text}  (threshold {m.threshold_text})  {mark}"
                   + (f"; {m.note}" if m.note else ""))
    if e.samples or e.expected_samples:
        out.append(f"      samples: {e.samples}" + (f" of {e.expected_samples} expected" if e.expected_samples else "")
                   + f", observed {format_duration(e.observed_seconds) if e.observed_seconds else '0s'}")
    if e.series:
        s = e.series
        out.append(f"      series: min {format_value(s['min'], v.dimension)}, mean "
                   f"{format_value(s['mean'], v.dimension)}, max {format_value(s['max'], v.dimension)}")
        lv = s.get("longest_violation")
        if lv:
            out.append(f"      longest violation: {format_duration(lv['duration'])} "
                       f"(+{lv['start']:.1f}s to +{lv['end']:.1f}s, {lv['samples']} samples)")
    if e.histogram is not None and e.histogram.count:
        out.extend("      " + line for line in render_histogram(e.histogram, v.dimension))
    for ev in e.events[:10]:
        out.append("      event: " + ", ".join(f"{k}={_fmt_event(k, val, v.dimension)}" for k, val in ev.items()))
    if len(e.events) > 10:
        out.append(f"      ... {len(e.events) - 10} more events in the JSON report")
    for n in e.notes:
        out.append(f"      note: {n}")
    return out


def _fmt_event(key: str, val: Any, dim: str) -> str:
    if key in ("latency", "duration") and isinstance(val, (int, float)):
        return format_value(val, dim)
    return str(val)


def render_histogram(h: Histogram, dimension: str, width: int = 30, max_rows: int = 14) -> list[str]:
    """A text histogram; adjacent fine buckets are merged to at most max_rows rows."""
    items = sorted(h.to_json()["buckets"], key=lambda b: b[0])
    if not items:
        return []
    # merge down to at most max_rows rows, keeping bucket bounds honest
    per_row = max(1, -(-len(items) // max_rows))
    rows = []
    for i in range(0, len(items), per_row):
        chunk = items[i:i + per_row]
        rows.append((chunk[0][1], chunk[-1][2], sum(c[3] for c in chunk)))
    peak = max(r[2] for r in rows) or 1
    out = [f"distribution ({h.count} events, bucket error <= {RELATIVE_ERROR:.2%}):"]
    for lo, hi, n in rows:
        bar = "#" * max(1, round(width * n / peak)) if n else ""
        out.append(f"  [{format_value(lo * h.scale, dimension):>9}, {format_value(hi * h.scale, dimension):>9}) "
                   f"{n:>8} {bar}")
    return out
