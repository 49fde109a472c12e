"""The HTML report: pytest-html's page, with each vcheck item's evidence drawn as pictures.

vcheck does not invent a report format: ``vcheck run --html F`` (and ``pytest --html F`` on
policies) is a pytest-html report in which every item carries, as an HTML extra, its evidence:
per entity a plot (``svg.py``: the series against its thresholds, the longest violating
stretch shaded and ``for:`` drawn; or the distribution with p50, p99 and the thresholds), the
measurements, the outliers (slowest I/Os and the tasks behind them) and what is known of the
entity (PID, command line, cgroup). The node facts go to the environment table. The page is a
single file: inline SVG, pytest-html's own stylesheet and script plus ``vcheck.css``, nothing
fetched from the network.

Everything is drawn from plain data: an item's result record (``CheckItem.result_record``, the
JSON report's ``results[]``) and the observations as the JSON report writes them
(``observation_json``). So a report rendered later from a saved JSON report (``vcheck report
R.json --html F``: a pytest session whose items replay the saved verdicts) shows the same items
and the same figures as the one written by the run itself.

The fleet page of ``vcheck merge --html`` (``merge.fleet_html``) draws its nodes' evidence
with the same ``Evidence``.

Escaping is a property of how the page is built, not of care at each call: every fragment is a
``markupsafe.Markup`` made by ``Markup(template).format(values)`` or ``Markup("").join(parts)``,
which escape every value and every part that is not itself such a fragment. A name from the node
or a field of a saved report (another node's, possibly crafted) can only reach the page as text.
The cells pytest-html builds itself get the same treatment.
"""
from __future__ import annotations

import base64
import math
import time
from dataclasses import dataclass
from html import escape

from markupsafe import Markup
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pytest

from .. import __version__
from ..evidence import OUTCOME_WORD, EntityEvidence, Measurement, Verdict, render
from ..expr import And, Comparison, Expr, ExprError, Or, Outliers, leaves, parse
from ..histogram import MAX_INDEX, RELATIVE_ERROR, Histogram
from ..judge import longest_violation
from ..model import EntityOutcome, Kind, Outcome
from ..units import COUNT, TIME, format_duration, format_value
from .json_report import result_id
from .svg import Marker, Threshold, histogram_svg, series_svg

MAX_ENTITIES = 12   # per item, failing first (as the terminal shows them)
MAX_EVENTS = 20     # rows of an outlier table
EVENT_ORDER = ("time", "device", "op", "bytes", "sector", "latency", "duration", "reason", "pid", "comm")
CULPRIT_ORDER = ("share", "wait", "describe", "comm", "pid", "owner", "cgroup", "nspid")
_ENTITY_ORDER = {EntityOutcome.FAIL: 0, EntityOutcome.INCONCLUSIVE: 1, EntityOutcome.MISSING: 2, EntityOutcome.PASS: 3}


def stylesheet_path() -> Path:
    return Path(str(resources.files("vcheck.report").joinpath("vcheck.css")))


def stylesheet() -> str:
    return stylesheet_path().read_text(encoding="utf-8")


# --- what a metric is, for drawing ------------------------------------------------------------

@dataclass(frozen=True)
class MetricInfo:
    dimension: str
    natural_stat: str
    kind: str


class MetricInfos:
    """Dimension, natural statistic and kind of each metric, from the catalogue; a metric this
    vcheck does not know (a newer node's report) is drawn from its data as plain numbers."""

    def __init__(self, catalog: Any | None = None):
        self._catalog = catalog

    def get(self, name: str, has_histogram: bool) -> MetricInfo:
        if self._catalog is None:
            from ..catalog import Catalog
            self._catalog = Catalog()
        spec = self._catalog.get(name)
        if spec is None:
            return MetricInfo(COUNT, "max", Kind.DISTRIBUTION if has_histogram else Kind.SERIES)
        return MetricInfo(spec.dimension, spec.natural_stat, spec.kind)


# --- evidence of one item -------------------------------------------------------------------

ObservationSource = Callable[[str], list[dict[str, Any]]]   # metric -> observations as in the JSON report


def saved_observations(report: Mapping[str, Any]) -> ObservationSource:
    by_metric: dict[str, list[dict[str, Any]]] = {}
    for o in report.get("observations") or []:
        by_metric.setdefault(o.get("metric"), []).append(o)
    return lambda metric: by_metric.get(metric, [])


class _MetricIndex:
    """One metric's saved observations by label pair, so an entity's are found without scanning
    every other entity's (a page of n items costs n, not n squared)."""

    def __init__(self, observations: list[dict[str, Any]]):
        self.all = observations
        self.has_histogram = any(o.get("histogram") for o in observations)
        self.by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for o in observations:
            for k, v in (o.get("labels") or {}).items():
                self.by_pair.setdefault((str(k), str(v)), []).append(o)

    def including(self, labels: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The observations whose labels hold every pair of `labels` (in the report's order)."""
        if not labels:
            return self.all
        fewest = min((self.by_pair.get((str(k), str(v)), []) for k, v in labels.items()), key=len)
        return [o for o in fewest if all((o.get("labels") or {}).get(k) == v for k, v in labels.items())]


class Evidence:
    """Renders result records as HTML, from plain data only."""

    def __init__(self, observations: ObservationSource, metrics: MetricInfos | None = None):
        self.observations = observations
        self.metrics = metrics or MetricInfos()
        self._indexes: dict[str, _MetricIndex] = {}

    def _index(self, metric: str) -> _MetricIndex:
        if metric not in self._indexes:
            self._indexes[metric] = _MetricIndex(list(self.observations(metric)))
        return self._indexes[metric]

    # which observations an entity was judged on (see judge.py and selection.py)
    def members(self, record: Mapping[str, Any], entity: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
        item = record.get("labels") or {}
        labels = entity.get("labels") or {}
        if any(k in item and item[k] != v for k, v in labels.items()):
            return []      # an entity outside its item holds none of the item's observations
        obs = self._index(record["metric"]).including({**item, **labels})
        if kind != Kind.DISTRIBUTION or not labels:
            exact = [o for o in obs if (o.get("labels") or {}) == labels]
            if exact or kind != Kind.DISTRIBUTION:
                return exact
        return obs

    def result_html(self, record: Mapping[str, Any], anchor: str = "") -> Markup:
        """The evidence block of one result. A saved report is untrusted input and only its
        outline is checked when read: a result this cannot draw says so instead of failing."""
        try:
            return self._result_html(record, anchor)
        except _UNDRAWABLE as exc:
            return (Markup('<div class="vc vc-evidence"{} data-nodeid="{}"><p class="vc-note">evidence could not be drawn: {}: {}</p></div>').format(_attr("id", anchor), result_id(record), type(exc).__name__, str(exc)[:200]))

    def _result_html(self, record: Mapping[str, Any], anchor: str) -> Markup:
        entities = list(record.get("entities") or [])
        has_hist = self._index(record["metric"]).has_histogram
        info = self.metrics.get(record["metric"], has_hist)
        thresholds = value_thresholds(record, info)
        shown = sorted(entities, key=lambda e: _ENTITY_ORDER.get(e.get("outcome"), 9))[:MAX_ENTITIES]
        out = [Markup('<div class="vc vc-evidence"{} data-nodeid="{}" data-outcome="{}">').format(_attr("id", anchor), result_id(record), str(record["outcome"])),
               Markup('<p class="vc-head">{}</p>').format(headline(record))]
        if not entities:
            out.append(Markup('<p class="vc-note">{}</p>').format(record.get("reason") or "no entity was judged"))
        for e in shown:
            out.append(self.entity_html(record, e, info, thresholds))
        if len(entities) > len(shown):
            out.append(Markup('<p class="vc-note">... {} more entities in the JSON report</p>').format(len(entities) - len(shown)))
        out.append(Markup("</div>"))
        return Markup("").join(out)

    def entity_html(self, record: Mapping[str, Any], e: Mapping[str, Any], info: MetricInfo,
                    thresholds: list[Threshold]) -> Markup:
        outcome = str(e.get("outcome", ""))
        out = [Markup('<section class="vc-entity vc-{}" data-entity="{}">').format(outcome, str(e.get("entity"))),
               Markup('<h4>{}: <span class="vc-outcome-{}">{}</span>{}</h4>').format(
                   str(e.get("entity")), outcome_class(outcome), outcome,
                   Markup(' <span class="vc-note">({})</span>').format(str(e["reason"])) if e.get("reason") else "")]
        figure = self.figure(record, e, info, thresholds + regress_thresholds(e))
        if figure:
            out.append(figure)
        out.append(_measurements_table(e.get("measurements") or []))
        out.append(_culprits_table(e.get("culprits") or []))
        out.append(_events_table(e.get("events") or []))
        out.append(_info_list(e, info.dimension))
        notes = list(e.get("notes") or [])
        if notes:
            out.append(Markup('<ul class="vc-notes">{}</ul>').format(
                Markup("").join(Markup('<li>{}</li>').format(str(n)) for n in notes)))
        out.append(Markup("</section>"))
        return Markup("").join(out)

    def figure(self, record: Mapping[str, Any], e: Mapping[str, Any], info: MetricInfo,
               thresholds: list[Threshold]) -> str:
        members = self.members(record, e, info.kind)
        title = f"{record['nodeid']}: {e.get('entity')}"
        hist = merged_histogram(members)
        if hist is not None and hist.count:
            markers = [Marker(name, est.value, est.low, est.high)
                       for name, est in (("p50", hist.percentile(0.50)), ("p99", hist.percentile(0.99))) if est]
            buckets = [(b[1] * hist.scale, b[2] * hist.scale, b[3]) for b in hist.to_json()["buckets"]]
            svg, caption = histogram_svg(buckets, dimension=info.dimension, markers=markers, thresholds=thresholds,
                                         relative_error=RELATIVE_ERROR, title=title)
            return _figure("histogram", svg, caption)
        series = next((o for o in members if o.get("values")), None)
        if series is None:
            return ""
        # a figure that is not a finite number (written as null) is a gap, not a point
        spans = series.get("spans") or []
        window = float(record.get("window") or 0)

        def judged(i: int, t: float) -> bool:
            """Within the item's own window, as judge.SeriesView takes samples (a `window: 1s`
            item of a 60 s session is drawn over its 1 s)."""
            half = spans[i] / 2 if i < len(spans) and _finite(spans[i]) else 0.5
            return not window or t <= window + half
        keep = [i for i, (t, v) in enumerate(zip(series.get("times") or [], series["values"]))
                if _finite(t) and _finite(v) and judged(i, t)]
        times = [series["times"][i] for i in keep]
        values = [series["values"][i] for i in keep]
        spans = [spans[i] if i < len(spans) else 0.0 for i in keep]
        violation = (e.get("series") or {}).get("longest_violation")
        if violation is None and not record.get("for"):
            violation = per_sample_violation(record.get("expect", ""), info.natural_stat,
                                             {"times": times, "values": values, "spans": spans})
        svg, caption = series_svg(times, values, spans,
                                  dimension=info.dimension, window=float(record.get("window") or 0),
                                  thresholds=thresholds, violation=violation, for_=record.get("for"),
                                  gone_at=series.get("gone_at"), title=title)
        return _figure("series", svg, caption)

    def text(self, record: Mapping[str, Any]) -> str:
        """The terminal's evidence text of a saved result (without the policy's description and
        remediation, which the record does not carry)."""
        try:
            return self._text(record)
        except _UNDRAWABLE as exc:
            return f"{record.get('nodeid')}: {record.get('outcome')} ({type(exc).__name__} in the saved evidence: {exc})"

    def _text(self, record: Mapping[str, Any]) -> str:
        has_hist = self._index(record["metric"]).has_histogram
        info = self.metrics.get(record["metric"], has_hist)
        entities = []
        for e in record.get("entities") or []:
            ms = [Measurement(**{k: m.get(k) for k in Measurement.__dataclass_fields__}) for m in e.get("measurements") or []]
            fields = dict(
                entity=str(e.get("entity")), labels=dict(e.get("labels") or {}), info=dict(e.get("info") or {}),
                outcome=e.get("outcome", ""), measurements=ms, samples=e.get("samples") or 0,
                expected_samples=e.get("expected_samples") or 0, observed_seconds=e.get("observed_seconds") or 0.0,
                series=e.get("series"), histogram=merged_histogram(self.members(record, e, info.kind)),
                events=list(e.get("events") or []), notes=list(e.get("notes") or []), reason=e.get("reason") or "",
                culprits=[c for c in e.get("culprits") or [] if isinstance(c, dict)])
            entities.append(EntityEvidence(**{k: v for k, v in fields.items() if k in EntityEvidence.__dataclass_fields__}))
        v = Verdict(outcome=record["outcome"], reason=record.get("reason") or "", entities=entities,
                    window=float(record.get("window") or 0), dimension=info.dimension, expect=record.get("expect") or "",
                    metric=record["metric"], for_=record.get("for"))
        return render(v)


def headline(record: Mapping[str, Any]) -> str:
    for_ = record.get("for")
    window = record.get("window")
    return (f"{record['metric']} expect {record.get('expect')!r}" + (f" for {format_duration(for_)}" if for_ else "")
            + (f" over {format_duration(window)}" if window else "") + f": {OUTCOME_WORD.get(str(record['outcome']), str(record['outcome']).upper())}"
            + (f" ({record['reason']})" if record.get("reason") else ""))


_UNDRAWABLE = (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError)


def merged_histogram(members: Iterable[Mapping[str, Any]]) -> Histogram | None:
    """The distribution of an entity's observations; one whose buckets are not what vcheck
    writes (an index out of range would make a bucket bound of a billion bits) is left out."""
    hist = None
    for o in members:
        h = o.get("histogram")
        if not isinstance(h, dict) or not isinstance(h.get("buckets"), list):
            continue
        if not all(isinstance(b, list) and len(b) == 4 and all(isinstance(x, int) and not isinstance(x, bool) for x in b)
                   and 0 <= b[0] < MAX_INDEX and b[3] >= 0 for b in h["buckets"]):
            continue
        try:
            one = Histogram.from_json(h)
            if not (math.isfinite(one.scale) and one.scale > 0):
                continue
            hist = one if hist is None or hist.scale != one.scale else hist.merge(one)
        except _UNDRAWABLE:
            continue
    return hist


def value_thresholds(record: Mapping[str, Any], info: MetricInfo) -> list[Threshold]:
    """The thresholds of the check that are in the metric's own unit (not counts or rates):
    each comparison, and the latency of a count(> X)."""
    out: list[Threshold] = []
    try:
        tree = parse(record.get("expect") or "")
    except ExprError:
        tree = None
    for leaf in leaves(tree) if tree is not None else ():
        if isinstance(leaf, Comparison) and (leaf.stat or info.natural_stat) not in ("count", "rate"):
            out.append(Threshold(leaf.value.base_value, str(leaf)))
        elif isinstance(leaf, Outliers):
            out.append(Threshold(leaf.threshold.base_value, str(leaf)))
    return [t for t in out if math.isfinite(t.value)]


def regress_thresholds(entity: Mapping[str, Any]) -> list[Threshold]:
    """An entity's regress: limit (its baseline figure plus the allowance), in the metric's unit."""
    return [Threshold(float(m["threshold"]), "regress limit") for m in entity.get("measurements") or []
            if str(m.get("statistic", "")).endswith("vs baseline") and _finite(m.get("threshold"))]


def per_sample_violation(expect: str, natural: str, obs: Mapping[str, Any]) -> dict[str, Any] | None:
    """Without for:, the longest run of samples that break a comparison each sample is held to
    (one on max, min or last: the natural statistic of a sampled metric is max). None when the
    expression has an `or`, or no such comparison."""
    try:
        tree = parse(expect)
    except ExprError:
        return None
    stack, per_sample = [tree], []
    while stack:
        n = stack.pop()
        if isinstance(n, Or):
            return None
        if isinstance(n, And):
            stack.extend((n.left, n.right))
        elif isinstance(n, Comparison) and (n.stat or natural) in ("max", "min", "last"):
            per_sample.append(n)
    if not per_sample:
        return None
    held: Expr = per_sample[0]
    for c in per_sample[1:]:
        held = And(held, c)
    return longest_violation(held, list(obs.get("times") or []), list(obs.get("values") or []),
                             list(obs.get("spans") or []))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _attr(name: str, value: str) -> Markup:
    return Markup(' {}="{}"').format(name, value) if value else Markup("")


def outcome_class(outcome: str) -> str:
    """The CSS class suffix of an outcome: only vcheck's own words (a saved report may say anything)."""
    known = {"pass": "pass", "fail": "fail", "error": "error", "skip": "skip", "waived": "waived",
             "inconclusive": "error", "missing": "skip", "not-run": "skip"}
    return known.get(str(outcome), "unknown") if outcome else "skip"


def _figure(kind: str, svg: Markup, caption: str) -> Markup:
    return Markup('<figure class="vc-figure" data-kind="{}">{}<figcaption>{}</figcaption></figure>').format(kind, svg, caption)


def _measurements_table(ms: list[Mapping[str, Any]]) -> Markup:
    if not ms:
        return Markup("")
    rows = []
    for m in ms:
        passed = m.get("passed")
        mark = (Markup('<span class="vc-violated">VIOLATED</span>') if passed is False else
                Markup('<span class="vc-ok">ok</span>') if passed else "undecided")
        rows.append(Markup('<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>').format(str(m.get('statistic', '')), str(m.get('measured_text', '')), str(m.get('threshold_text', '')), mark, str(m.get('note') or '')))
    return Markup('<table class="vc-table vc-measurements"><tr><th>statistic</th><th>measured</th><th>threshold</th>'
                  "<th>verdict</th><th>note</th></tr>{}</table>").format(Markup("").join(rows))


def _records_table(cls: str, caption: str, rows: list[Mapping[str, Any]], order: tuple[str, ...]) -> Markup:
    """A table of plain records (outliers, culprits): known columns first, then any others."""
    rows = [r for r in rows if isinstance(r, Mapping)]
    if not rows:
        return Markup("")
    shown = rows[:MAX_EVENTS]
    keys = [k for k in order if any(k in r for r in shown)]
    keys += sorted({str(k) for r in shown for k in r} - set(keys))
    head = Markup("").join(Markup('<th>{}</th>').format(k) for k in keys)
    body = Markup("").join(Markup("<tr>{}</tr>").format(Markup("").join(Markup('<td>{}</td>').format(_cell(k, r.get(k)))
                                                                        for k in keys)) for r in shown)
    more = (Markup('<p class="vc-note">... {} more in the JSON report</p>').format(len(rows) - MAX_EVENTS)
            if len(rows) > MAX_EVENTS else "")
    return Markup('<table class="vc-table {}"><caption>{}</caption><tr>{}</tr>{}</table>{}').format(cls, caption, head, body, more)


def _events_table(events: list[Mapping[str, Any]]) -> Markup:
    return _records_table("vc-events", f"outliers: the slowest first ({len(events)})", events, EVENT_ORDER)


def _culprits_table(culprits: list[Mapping[str, Any]]) -> Markup:
    return _records_table("vc-culprits", "culprits: who had the CPU while it waited", culprits, CULPRIT_ORDER)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in ("latency", "duration", "wait") and number:
        return format_value(value, TIME)
    if key == "time" and number:
        return f"+{value:.3f}s"
    if key == "bytes" and number:
        return format_value(value, "bytes")
    if key == "share" and number:
        return f"{value:.0%}"
    return str(value)


def _info_list(e: Mapping[str, Any], dimension: str) -> Markup:
    info = dict(e.get("info") or {})
    facts = [("samples", f"{e.get('samples', 0)}" + (f" of {e['expected_samples']} expected" if e.get("expected_samples") else "")
              + (f", observed {format_duration(e['observed_seconds'])}" if e.get("observed_seconds") else ""))]
    series = e.get("series") or {}
    if series.get("min") is not None:
        facts.append(("series", ", ".join(f"{k} {format_value(series.get(k), dimension)}" for k in ("min", "mean", "max"))))
    facts += sorted(info.items())
    return Markup('<dl class="vc-info">{}</dl>').format(
        Markup("").join(Markup('<dt>{}</dt><dd>{}</dd>').format(str(k), str(v)) for k, v in facts))


# --- node facts -----------------------------------------------------------------------------

def node_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the environment table says of the node and the run (plain text, escape on output)."""
    node = report.get("node") or {}
    rows = [("vcheck node", str(node.get("hostname", ""))), ("kernel", str(node.get("kernel", ""))),
            ("virtualization", str(node.get("virtualization", ""))), ("container", str(node.get("container", ""))),
            ("boot id", str(node.get("boot_id", "")))]
    labels = node.get("labels") or {}
    if labels:
        rows.append(("node labels", ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))))
    for layer, state in (node.get("layers") or {}).items():
        rows.append((f"layer {layer}", str(state)))
    w = report.get("window") or {}
    if w:
        start = w.get("start")
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start)) if isinstance(start, (int, float)) and start else "?"
        rows.append(("window", f"{_secs(w.get('observed'))} observed of {_secs(w.get('planned'))} planned, from {when}"
                     + (" (interrupted)" if w.get("interrupted") else "")))
    for p in report.get("policies") or []:
        rows.append((f"policy {p.get('name')}", f"{p.get('path')} (sha256 {str(p.get('sha256', ''))[:16]}...)"))
    rows.append(("vcheck", str(report.get("vcheck", __version__))))
    return rows


def _secs(v: Any) -> str:
    return f"{v:.1f}s" if isinstance(v, (int, float)) else "?"


# --- the pytest-html plugin -----------------------------------------------------------------

HTML_PLUGIN = "vcheck-html-evidence"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("vcheck", "vcheck node checks").addoption(
        "--vcheck-render", dest="vcheck_render", metavar="REPORT",
        help="(vcheck report) render this saved JSON report's results as the session's items")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    render = config.getoption("vcheck_render", None)
    if not getattr(config.option, "htmlpath", None):
        if render:
            raise pytest.UsageError("--vcheck-render makes an HTML report: give --html too")
        return
    # before pytest-html's own configure reads its --css list: vcheck's sheet goes into the page
    config.option.css = [*(config.option.css or []), str(stylesheet_path())]
    saved = None
    if render:
        from ..errors import ReportFormatError
        from .json_report import read_report
        try:
            saved = read_report(render)      # every field the page draws checked there
        except ReportFormatError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(HtmlEvidence(config, saved), HTML_PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.pluginmanager.get_plugin(HTML_PLUGIN)
    if plugin is not None:
        config.pluginmanager.unregister(plugin)


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    render = parent.config.getoption("vcheck_render", None)
    if render and file_path.resolve() == Path(render).resolve():
        return SavedReport.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    if isinstance(item, SavedResult):
        rep = outcome.get_result()
        rep.vcheck_result = item.record
        rep.nodeid = result_id(item.record)


def lazy(evidence: Markup) -> Markup:
    """A collapsed row's evidence, drawn when its row is opened (LAZY_SCRIPT): pytest-html's
    script inserts every row's evidence into the document as the page loads, opened or not, and
    5,000 items' plots (85 MB) took seconds. Kept as base64 in an attribute: no HTML is parsed
    until then, and no text of it can end the attribute or the element."""
    return Markup('<div class="vc-lazy" data-evidence="{}"></div>').format(
        base64.b64encode(str(evidence).encode()).decode("ascii"))


# Draws the lazy evidence of every row that is open, whenever pytest-html (re)builds its table
# or a row is opened. The evidence is vcheck's own Markup (every value escaped when it was made),
# inserted as pytest-html inserts an eager row's.
LAZY_SCRIPT = Markup("""<script>
(function () {
  function draw() {
    document.querySelectorAll('.extras-row:not(.hidden) .vc-lazy').forEach(function (el) {
      var bytes = Uint8Array.from(atob(el.dataset.evidence), function (c) { return c.charCodeAt(0); });
      var t = document.createElement('template');
      t.innerHTML = new TextDecoder().decode(bytes);
      el.replaceWith(t.content);
    });
  }
  new MutationObserver(draw).observe(document.documentElement,
    {childList: true, subtree: true, attributes: true, attributeFilter: ['class']});
})();
</script>""")


class HtmlEvidence:
    """Registered when pytest-html writes a report: adds each vcheck item's evidence as an HTML
    extra, vcheck's node facts to the environment table, and escapes the test id cell."""

    def __init__(self, config: pytest.Config, saved: dict[str, Any] | None):
        self.config = config
        self.saved = saved
        self._evidence: Evidence | None = None

    @property
    def evidence(self) -> Evidence:
        if self._evidence is None:
            if self.saved is not None:
                self._evidence = Evidence(saved_observations(self.saved))
            else:
                self._evidence = Evidence(*self._live_source())
        return self._evidence

    def _live_source(self) -> tuple[ObservationSource, MetricInfos]:
        """The run's observations, converted as the JSON report converts them (the store is
        complete before the first item is judged: sampling happens once, before them all)."""
        from ..runstate import STATE_KEY
        from .json_report import observation_json

        state = self.config.stash.get(STATE_KEY, None)
        store = state.store if state is not None else None
        cache: dict[str, list[dict[str, Any]]] = {}

        def source(metric: str) -> list[dict[str, Any]]:
            if metric not in cache:
                cache[metric] = [observation_json(o) for o in store.for_metric(metric)] if store is not None else []
            return cache[metric]
        return source, MetricInfos(state.catalog if state is not None else None)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # pytest-html gathers the extras of all of an item's reports at its teardown report
        record = getattr(report, "vcheck_result", None)
        if record is None or report.when != "teardown":
            return
        from pytest_html import extras

        evidence = self.evidence.result_html(record)
        if record.get("outcome") == "pass":      # pytest-html collapses passing rows
            evidence = lazy(evidence)
        report.extras = [*getattr(report, "extras", []), extras.html(evidence)]

    def pytest_html_results_table_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        if getattr(report, "vcheck_result", None) is None or len(cells) < 2:
            return
        cells[1] = Markup('<td class="col-testId">{}</td>').format(result_id(report.vcheck_result))

    def _vcheck_session(self, collected: bool = True) -> bool:
        """Whether this report is about policies (pytest --html on a project's own tests, with
        vcheck installed, stays as pytest-html makes it)."""
        if self.saved is not None:
            return True
        if not collected:   # before collection: judge by the arguments
            return any(str(a).split("::")[0].endswith((".yaml", ".yml")) or "policies" in str(a)
                       for a in self.config.args)
        from ..runstate import STATE_KEY

        state = self.config.stash.get(STATE_KEY, None)
        return bool(state is not None and state.policies)

    def pytest_html_report_title(self, report: Any) -> None:
        if self._vcheck_session(collected=False):
            report.title = f"vcheck: {self._facts().get('node', {}).get('hostname', '')}"

    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str],
                                    session: pytest.Session) -> None:
        if not self._vcheck_session():
            return
        postfix.append(LAZY_SCRIPT)
        prefix.append(
            '<p class="vc vc-legend">Each check shows its evidence per entity: the sampled series '
            '(min and max per pixel column when there are more samples than columns) with each threshold '
            'as a dashed line, the longest violating stretch shaded and <code>for:</code> as a bar; or the '
            'distribution (log-linear buckets, counts on a log scale) with p50, p99 and the threshold '
            'marked; then the measurements and the outliers.</p>')

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Node facts into pytest-metadata's table, first; pytest-html renders it afterwards."""
        try:
            from pytest_metadata.plugin import metadata_key
        except ImportError:
            return
        metadata = self.config.stash.get(metadata_key, None)
        if metadata is None or not self._vcheck_session():
            return
        rest = list(metadata.items())
        metadata.clear()
        metadata.update({k: escape(v) for k, v in node_rows(self._facts())})   # pytest-html inserts values as HTML
        metadata.update(rest)

    def _facts(self) -> dict[str, Any]:
        if self.saved is not None:
            return self.saved
        from ..runstate import STATE_KEY
        from .json_report import layers_observed
        from .node import node_facts

        state = self.config.stash.get(STATE_KEY, None)
        store = state.store if state is not None else None
        layer_of = {m.name: m.layer for m in state.catalog.metrics.values()} if state is not None else {}
        w = store.window if store is not None else None
        return {"node": {**node_facts(), "layers": layers_observed(store, layer_of)},
                "window": {"start": w.start_wall, "planned": w.planned, "observed": w.duration,
                           "interrupted": w.interrupted} if w else None,
                "policies": [{"name": p.name, "path": str(path), "sha256": p.sha256}
                             for path, p in (state.policies.items() if state is not None else ())],
                "vcheck": __version__}


# --- a saved report's results as items (vcheck report) --------------------------------------

class SavedReport(pytest.File):
    def collect(self):
        plugin = self.config.pluginmanager.get_plugin(HTML_PLUGIN)
        report = plugin.saved if plugin is not None else None
        for r in (report or {}).get("results") or []:
            yield SavedResult.from_parent(self, name=str(r["nodeid"]), nodeid=str(r["nodeid"]), record=r)


class _SavedFailure(Exception):
    pass


class SavedResult(pytest.Item):
    """One saved result, reported with the outcome it had: pass, fail, skip, error
    (inconclusive), waived (xfail) or, when the run ended before it, skipped as not run."""

    def __init__(self, *, record: dict[str, Any], **kw: Any):
        super().__init__(**kw)
        self.record = record

    def _text(self) -> str:
        plugin = self.config.pluginmanager.get_plugin(HTML_PLUGIN)
        return plugin.evidence.text(self.record)

    def setup(self) -> None:
        o, reason = self.record["outcome"], self.record.get("reason") or ""
        if o == Outcome.SKIP:
            pytest.skip(f"{self.record.get('check')}: {reason}")
        if o == Outcome.WAIVED:
            pytest.xfail(f"{self.record.get('check')}: {reason}")
        if o == Outcome.ERROR:
            pytest.fail(self._text(), pytrace=False)
        if o == Outcome.NOT_RUN:
            pytest.skip("not run: the run ended before this check was judged")

    def runtest(self) -> None:
        if self.record["outcome"] == Outcome.FAIL:
            raise _SavedFailure()
        self.add_report_section("call", "stdout", self._text() + "\n")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None):  # type: ignore[override]
        if isinstance(excinfo.value, _SavedFailure):
            return self._text()
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, self.nodeid
