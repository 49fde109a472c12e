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
                                "series": {"min", "mean", "max", "longest_violation"}, "events",
                                "culprits"}]}],
     "observations": [{"metric", "labels", "info", "times", "values", "spans",
                       "histogram": {"scheme", "scale", "count", "sum", "max", "buckets"},
                       "events", "notes", "gone_at", "gone_reason",
                       "culprits": [{"pid", "comm", "share", "wait", "owner", "describe", "cgroup",
                                     "nspid"}]}],
     "collector_notes": {collector: [text]}}

All values are in the metric's base unit: seconds, bytes, percent (0-100), counts.
"""
from __future__ import annotations

import array
import contextlib
import gc
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

try:
    import msgspec
except ImportError:      # the standard library reads and writes every report too, more slowly
    msgspec = None

from .. import __version__
from ..errors import ReportFormatError
from ..evidence import _SURROGATE_RE, clean_text, printable, public_info, redact_tree
from ..histogram import MAX_INDEX, SUB, Histogram
from ..model import LAYERS
from ..observations import Observation, ObservationStore, labels_of
from .node import node_facts
from ..files import read_bounded

FORMAT = "vcheck.report"
VERSION = 1
MAX_REPORT_BYTES = 256 << 20    # a day of 1 s samples of every metric fits many times over
# what a report may hold once parsed, counted in its bytes before parsing: a value costs Python
# ~32 bytes, an object ~250, so 256 MiB of '0,' or '{},' would otherwise take gigabytes. A 100,000-
# observation report of 60 samples each holds 18.3 M values and 0.3 M objects.
MAX_VALUES = 24_000_000         # commas + 1: numbers, strings and the rest (at most ~0.8 GB)
MAX_OBJECTS = 2_000_000         # '{' (at most ~0.5 GB)
MAX_SERIES = 1_000_000          # samples in one observation
MAX_BUCKETS = MAX_INDEX
MAX_DEPTH = 64                  # JSON nesting; a report needs under 10
MAX_CULPRITS = 100              # per observation; vcheck keeps 5

__all__ = ["FORMAT", "VERSION", "ReportFormatError", "RunFacts", "build_report", "dump_chunks", "dumps", "parse_report",
           "read_report",
           "store_from_report", "observation_json"]


@dataclass
class RunFacts:
    """What the run tells the report besides each item's result (pushed by the plugin)."""

    store: ObservationStore | None = None
    policies: list[dict[str, str]] = field(default_factory=list)
    layer_of: Mapping[str, str] = field(default_factory=dict)   # metric -> layer
    interrupted_by: str | None = None
    cost: dict[str, Any] | None = None                          # vcheck's own (cost.run_cost)


def observation_json(o: Observation) -> dict[str, Any]:
    d = {"metric": o.metric, "labels": dict(o.labels), "info": public_info(o.info),
         "times": o.times, "values": o.values, "spans": o.spans,
         "histogram": o.histogram.to_json() if o.histogram is not None else None,
         "events": o.events, "notes": o.notes, "gone_at": o.gone_at, "gone_reason": o.gone_reason, "blind": o.blind}
    if o.weights:
        d["weights"] = o.weights
    if o.culprits:
        d["culprits"] = o.culprits
    if o.unseen:
        d["unseen"] = o.unseen
        d["unseen_seconds"] = o.unseen_seconds
    return d


def build_report(results: list[dict[str, Any]], facts: RunFacts, exit_status: int) -> dict[str, Any]:
    store = facts.store
    w = store.window if store else None
    report: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "vcheck": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "exit_status": exit_status,
        "node": {**node_facts(), "layers": layers_observed(store, facts.layer_of)},
        "policies": facts.policies,
        "window": {"start": w.start_wall, "planned": w.planned, "observed": w.duration,
                   "interrupted": w.interrupted} if w else None,
        "unavailable": dict(store.unavailable) if store else {},
        "results": results,
        "observations": [observation_json(o) for o in store.all()] if store else [],
        "collector_notes": dict(store.collector_notes) if store else {},
    }
    if facts.cost is not None:
        report["cost"] = facts.cost
    if facts.interrupted_by:
        if report["window"] is not None:
            report["window"]["interrupted"] = True
        report["interrupted_by"] = facts.interrupted_by
    return report


def layers_observed(store: ObservationStore | None, layer_of: Mapping[str, str]) -> dict[str, str]:
    """Per layer: 'observed', 'unavailable: why', 'no data' or 'not checked' in this run."""
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


def dumps(report: dict[str, Any]) -> bytearray:
    """The report as JSON bytes: one line per top-level field, and one per result and per
    observation (a 100,000-observation report stays a file grep, head and jq -c read line by
    line). NaN and Infinity are written as null; anything else JSON has no word for, as its
    str()."""
    buf = bytearray()
    for _ in _encode_report(report, buf):
        pass
    return buf


def dump_chunks(report: dict[str, Any], chunk: int = 1 << 20) -> Iterator[bytes]:
    """dumps() in pieces of about `chunk` bytes, for a writer that streams them to the file: a
    100,000-observation report is never held whole beside the run that made it."""
    buf = bytearray()
    for _ in _encode_report(report, buf):
        if len(buf) >= chunk:
            yield bytes(buf)
            del buf[:]
    if buf:
        yield bytes(buf)


def _encode_report(report: Any, buf: bytearray) -> Iterator[None]:
    """Encodes report at the end of buf, yielding after each result and observation."""
    if not isinstance(report, dict) or not report:
        _encode_into(report, buf)
        buf += b"\n"
        return
    buf += b"{"
    for i, (k, v) in enumerate(report.items()):
        buf += b",\n" if i else b"\n"
        _encode_into(k if isinstance(k, str) else str(k), buf)
        buf += b": "
        if k in ("observations", "results") and isinstance(v, list) and v:
            buf += b"[\n"
            for j, x in enumerate(v):
                if j:
                    buf += b",\n"
                _encode_into(x, buf)
                yield
            buf += b"\n]"
        else:
            _encode_into(v, buf)
        yield
    buf += b"\n}\n"


def _encode_into(x: Any, buf: bytearray) -> None:
    """One value as compact JSON at the end of buf: msgspec's encoder where it is installed and
    takes the value, the standard library's otherwise (a lone surrogate, no msgspec)."""
    if _ENCODER is not None:
        end = len(buf)
        try:
            _ENCODER.encode_into(x, buf, -1)
            return
        except (TypeError, ValueError, OverflowError):
            del buf[end:]
    buf += json.dumps(_finite(x), separators=(",", ":"), default=str).encode()


def _encodable(x: Any) -> Any:
    """msgspec's hook for what it has no JSON for: a series kept as an array is its list."""
    return x.tolist() if isinstance(x, array.array) else str(x)


def _finite(x: Any) -> Any:
    """x with NaN and Infinity as None (standard JSON has neither), for the standard encoder."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, array.array)):
        return [_finite(v) for v in x]
    return x


# --- reading a saved report (untrusted input) --------------------------------------------

def _given(d: dict[str, Any], key: str, default: Any) -> Any:
    """The field, or the default when absent or null (a wrong type stays wrong: no `or`)."""
    v = d.get(key)
    return default if v is None else v


class _Shape:
    """Checks one report's structure, naming the first bad field by its JSON path."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, what: str) -> ReportFormatError:
        return ReportFormatError(f"{self.path}: {where}: {what}")

    def obj(self, v: Any, where: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(where, f"expected an object, got {type(v).__name__}")
        return v

    def lst(self, v: Any, where: str, limit: int = MAX_SERIES) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(where, f"expected a list, got {type(v).__name__}")
        if len(v) > limit:
            raise self.fail(where, f"more than {limit} entries")
        return v

    def text(self, v: Any, where: str, optional: bool = False) -> str:
        if v is None and optional:
            return ""
        if not isinstance(v, str):
            raise self.fail(where, f"expected a string, got {type(v).__name__}")
        return v

    def num(self, v: Any, where: str, optional: bool = False) -> float | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not _bounded(v):
            raise self.fail(where, f"expected a finite number, got {_short(v)}")
        return float(v)

    def seconds(self, v: Any, where: str) -> float | None:
        x = self.num(v, where, optional=True)
        if x is not None and x < 0:
            raise self.fail(where, f"expected a duration >= 0, got {x!r:.40}")
        return x

    def count(self, v: Any, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < MAX_INT:
            raise self.fail(where, f"expected a count (an integer >= 0), got {_short(v)}")
        return v

    def strmap(self, v: Any, where: str) -> dict[str, str]:
        d = self.obj(v if v is not None else {}, where)
        for k, x in d.items():
            if not isinstance(x, (str, int, float)) or isinstance(x, bool) or not _bounded(x):
                raise self.fail(f"{where}.{k}", "expected a string")
        return {k: str(x) for k, x in d.items()}

    def histogram(self, v: Any, where: str) -> Histogram:
        d = self.obj(v, where)
        if d.get("scheme") != f"loglinear-{SUB}":
            raise self.fail(f"{where}.scheme", f"unknown histogram scheme {d.get('scheme')!r:.40}")
        buckets = {}
        for i, b in enumerate(self.lst(d.get("buckets"), f"{where}.buckets", MAX_BUCKETS)):
            b = self.lst(b, f"{where}.buckets[{i}]", 4)
            if len(b) != 4 or not all(isinstance(x, int) and not isinstance(x, bool) for x in b):
                raise self.fail(f"{where}.buckets[{i}]", "expected [index, low, high, count] integers")
            if not 0 <= b[0] < MAX_INDEX or b[3] < 0:
                raise self.fail(f"{where}.buckets[{i}]", "index or count out of range")
            buckets[b[0]] = b[3]
        count = self.num(d.get("count"), f"{where}.count")
        scale = self.num(d.get("scale"), f"{where}.scale")
        if count < 0 or count != int(count) or scale <= 0:
            raise self.fail(where, "count must be a whole number >= 0 and scale > 0")
        return Histogram(scale=scale, buckets=buckets, total=int(count), sum=self.num(d.get("sum"), f"{where}.sum"),
                         max_exact=self.num(d.get("max"), f"{where}.max", optional=True))

    def numbers(self, v: Any, where: str) -> list[float]:
        """A series: finite numbers. A list of floats (what vcheck writes) is checked in one
        pass and taken as it is (the store of a replay shares it with the parsed report: judging
        only reads it); anything else number by number, naming the first bad one."""
        xs = self.lst(v, where)
        if all(type(x) is float for x in xs) and (not xs or -MAX_MAGNITUDE <= min(xs) and max(xs) <= MAX_MAGNITUDE):
            return xs
        return [self.num(x, where) for x in xs]   # type: ignore[misc]

    def observation(self, v: Any, where: str) -> None:
        """An observation; its series are left as floats in v (what store_from_report takes)."""
        d = self.obj(v, where)
        for k in SERIES_KEYS:
            d[k] = self.numbers(_given(d, k, []), f"{where}.{k}")
        self.lengths(d, where)
        events = self.lst(_given(d, "events", []), f"{where}.events", 100_000)
        for i, e in enumerate(events):
            self.obj(e, f"{where}.events[{i}]")
        for n in self.lst(_given(d, "notes", []), f"{where}.notes", 10_000):
            self.text(n, f"{where}.notes")
        for i, c in enumerate(self.lst(_given(d, "culprits", []), f"{where}.culprits", MAX_CULPRITS)):
            self.culprit(c, f"{where}.culprits[{i}]")
        self.text(d.get("metric"), f"{where}.metric")
        d["labels"] = self.strmap(d.get("labels"), f"{where}.labels")
        d["info"] = self.strmap(d.get("info"), f"{where}.info")
        if d.get("histogram") is not None:
            self.histogram(d["histogram"], f"{where}.histogram")
        self.num(d.get("gone_at"), f"{where}.gone_at", optional=True)
        self.text(d.get("gone_reason"), f"{where}.gone_reason", optional=True)
        self.text(d.get("blind"), f"{where}.blind", optional=True)
        self.count(_given(d, "unseen", 0), f"{where}.unseen")
        self.seconds(d.get("unseen_seconds"), f"{where}.unseen_seconds")

    def typed_observation(self, d: dict[str, Any], i: int) -> None:
        """What the typed parse cannot say of observation i: a metric is there, the series are
        as long as each other, and what may nest (events, culprits, a histogram) is not too
        deep and holds what renderers read."""
        if type(d.get("metric")) is not str:
            self.text(d.get("metric"), f"observations[{i}].metric")
        for k in SERIES_KEYS:
            if k not in d:
                d[k] = []
        times, values, weights = d["times"], d["values"], d["weights"]
        if not len(times) == len(values) == len(d["spans"]) or weights and len(weights) != len(values):
            self.lengths(d, f"observations[{i}]")
        hist, culprits, events = d.get("histogram"), d.get("culprits"), d.get("events")
        if hist is not None or culprits or events:
            depth = 3 + max(max_depth(hist), max_depth(culprits), max_depth(events))
            if depth > MAX_DEPTH:
                raise ReportFormatError(f"{self.path}: not a readable JSON report (nested {depth} levels deep "
                                        f"(at most {MAX_DEPTH}))")
            if hist is not None:
                self.histogram(hist, f"observations[{i}].histogram")
            for j, c in enumerate(culprits or ()):
                self.culprit(c, f"observations[{i}].culprits[{j}]")

    def lengths(self, d: dict[str, Any], where: str) -> None:
        times, values, spans, weights = d["times"], d["values"], d["spans"], d["weights"]
        if not len(times) == len(values) == len(spans) or weights and len(weights) != len(values):
            raise self.fail(where, f"times, values, spans (and weights) differ in length ({len(times)}, "
                                   f"{len(values)}, {len(spans)}, {len(weights)})")

    def culprit(self, v: Any, where: str) -> dict[str, Any]:
        """A culprit as observation_json writes it; the fields evidence renders are typed."""
        d = self.obj(v, where)
        for k in ("share", "wait"):
            self.num(d.get(k), f"{where}.{k}", optional=True)
        for k in ("comm", "owner", "describe", "cgroup"):
            self.text(d.get(k), f"{where}.{k}", optional=True)
        pid = d.get("pid")
        if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
            raise self.fail(f"{where}.pid", "expected an integer")
        nspid = self.lst(_given(d, "nspid", []), f"{where}.nspid", 64)
        if any(isinstance(x, bool) or not isinstance(x, int) for x in nspid):
            raise self.fail(f"{where}.nspid", "expected integers")
        return d

    def word(self, v: Any, where: str, allowed: tuple[str, ...]) -> str:
        if v not in allowed:
            raise self.fail(where, f"expected one of {', '.join(allowed)}, got {_short(v)}")
        return v

    def result(self, r: Any, where: str) -> None:
        """A result as items.result_record / pycheck.result_record write it: every field a
        renderer, merge or explain reads has the type they expect (they never re-check)."""
        r = self.obj(r, where)
        for k in ("nodeid", "outcome"):
            self.text(r.get(k), f"{where}.{k}")
        self.word(r["outcome"], f"{where}.outcome", RESULT_OUTCOMES)
        for k in ("policy", "check", "metric", "layer", "entity", "reason", "expect", "identity", "file"):
            self.text(r.get(k), f"{where}.{k}", optional=True)
        self.strmap(r.get("labels"), f"{where}.labels")
        self.seconds(r.get("for"), f"{where}.for")
        self.seconds(r.get("window"), f"{where}.window")
        for i, e in enumerate(self.lst(_given(r, "entities", []), f"{where}.entities", MAX_ENTITIES)):
            self.entity(e, f"{where}.entities[{i}]")

    def entity(self, e: Any, where: str) -> None:
        e = self.obj(e, where)
        self.text(e.get("entity"), f"{where}.entity", optional=True)
        if e.get("outcome") is not None:
            self.word(e["outcome"], f"{where}.outcome", ENTITY_OUTCOMES)
        self.text(e.get("reason"), f"{where}.reason", optional=True)
        self.strmap(e.get("labels"), f"{where}.labels")
        self.strmap(e.get("info"), f"{where}.info")
        for k in ("samples", "expected_samples"):
            if e.get(k) is not None:
                self.count(e[k], f"{where}.{k}")
        self.seconds(e.get("observed_seconds"), f"{where}.observed_seconds")
        for i, m in enumerate(self.lst(_given(e, "measurements", []), f"{where}.measurements", 1000)):
            m = self.obj(m, f"{where}.measurements[{i}]")
            for k in ("expression", "statistic", "measured_text", "threshold_text", "note"):
                self.text(m.get(k), f"{where}.measurements[{i}].{k}", optional=True)
            for k in ("measured", "threshold"):
                self.num(m.get(k), f"{where}.measurements[{i}].{k}", optional=True)
            if m.get("passed") is not None and not isinstance(m["passed"], bool):
                raise self.fail(f"{where}.measurements[{i}].passed", "expected true, false or null")
        series = e.get("series")
        if series is not None:
            series = self.obj(series, f"{where}.series")
            for k in ("min", "mean", "max"):
                self.num(series.get(k), f"{where}.series.{k}", optional=True)
            v = series.get("longest_violation")
            if v is not None:
                v = self.obj(v, f"{where}.series.longest_violation")
                for k in ("start", "end", "duration"):
                    self.num(v.get(k), f"{where}.series.longest_violation.{k}")
                self.count(v.get("samples"), f"{where}.series.longest_violation.samples")
        for i, ev in enumerate(self.lst(_given(e, "events", []), f"{where}.events", 100_000)):
            self.record(ev, f"{where}.events[{i}]")
        for i, c in enumerate(self.lst(_given(e, "culprits", []), f"{where}.culprits", MAX_CULPRITS)):
            self.culprit(c, f"{where}.culprits[{i}]")
        for n in self.lst(_given(e, "notes", []), f"{where}.notes", 10_000):
            self.text(n, f"{where}.notes")

    def record(self, v: Any, where: str) -> dict[str, Any]:
        """An outlier or event: a flat object of strings, numbers, booleans and null, or short
        lists of those (the interfaces a drop was seen on)."""
        d = self.obj(v, where)
        for k, x in d.items():
            for y in (self.lst(x, f"{where}.{k}", 1000) if isinstance(x, list) else [x]):
                if isinstance(y, (dict, list)) or (isinstance(y, (int, float)) and not _bounded(y)):
                    raise self.fail(f"{where}.{k}", f"expected a string or a number, got {_short(y)}")
        return d

    def report(self, data: Any) -> None:
        d = self.obj(data, "top level")
        for i, r in enumerate(self.lst(_given(d, "results", []), "results")):
            self.result(r, f"results[{i}]")
        w = d.get("window")
        if w is not None:
            w = self.obj(w, "window")
            for k in ("start", "planned", "observed"):
                x = self.num(w.get(k), f"window.{k}", optional=True)
                if x is not None and not 0 <= x <= MAX_EPOCH:
                    raise self.fail(f"window.{k}", f"out of range: {_short(x)}")
        self.strmap(d.get("unavailable"), "unavailable")
        node = self.obj(_given(d, "node", {}), "node")
        for k in ("hostname", "kernel", "boot_id", "virtualization", "container"):
            self.text(node.get(k), f"node.{k}", optional=True)
        self.strmap(node.get("labels"), "node.labels")
        self.strmap(node.get("layers"), "node.layers")
        self.strmap(node.get("vm_identity"), "node.vm_identity")
        for i, p in enumerate(self.lst(_given(d, "policies", []), "policies", 10_000)):
            p = self.obj(p, f"policies[{i}]")
            for k in ("name", "path", "sha256", "source"):
                self.text(p.get(k), f"policies[{i}].{k}", optional=True)
        status = d.get("exit_status")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 0 <= status < 256):
            raise self.fail("exit_status", "expected an exit status (0-255)")
        for i, o in enumerate(self.lst(_given(d, "observations", []), "observations")):
            self.observation(o, f"observations[{i}]")   # those of a typed parse are set aside: see parse_report
        notes = self.obj(_given(d, "collector_notes", {}), "collector_notes")
        for k, v in notes.items():
            for n in self.lst(v, f"collector_notes.{k}", 10_000):
                self.text(n, f"collector_notes.{k}")


MAX_INT = 1 << 63              # counts, sample numbers: what the kernel's counters hold
MAX_MAGNITUDE = 1e300          # any other number: finite, and far from overflowing in arithmetic
MAX_EPOCH = 1e11               # window start (3000 AD); durations far below it
MAX_ENTITIES = 100_000
RESULT_OUTCOMES = ("pass", "fail", "skip", "error", "waived", "not-run")
ENTITY_OUTCOMES = ("pass", "fail", "inconclusive", "missing")


def _bounded(v: Any) -> bool:
    """A number JSON may carry that arithmetic and formatting cannot choke on (an integer of
    thousands of digits overflows float(); str() refuses past 4,300 digits)."""
    if isinstance(v, int):
        return -MAX_INT <= v < MAX_INT or (abs(v) < 10 ** 300 and math.isfinite(float(v)))
    if isinstance(v, float):
        return math.isfinite(v) and abs(v) <= MAX_MAGNITUDE
    return True


def _short(v: Any) -> str:
    """A value for an error line: a type and at most 40 characters, never the whole of it."""
    if isinstance(v, int) and not isinstance(v, bool) and not -MAX_INT <= v < MAX_INT:
        return "an integer too large"
    text = repr(v) if isinstance(v, (str, int, float, bool)) or v is None else type(v).__name__
    return printable(text[:40] + ("..." if len(text) > 40 else ""))


def result_id(record: Mapping[str, Any]) -> str:
    """A result's identity: 'policy::check[entity]' (reports of this vcheck write it as "id");
    an earlier report's results are named by their nodeid."""
    return str(record.get("id") or record.get("nodeid"))


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def read_report_bytes(path: str | Path) -> bytes:
    """A saved report's bytes, read once and bounded; one ReportFormatError line otherwise."""
    try:
        return read_bounded(path, MAX_REPORT_BYTES, "the report")
    except FileNotFoundError:
        raise ReportFormatError(f"{path}: no such report") from None
    except OSError as exc:
        raise ReportFormatError(f"{path}: cannot read report: {exc.strerror}") from None
    except ValueError as exc:
        raise ReportFormatError(f"{path}: {exc}") from None


def read_report(path: str) -> dict[str, Any]:
    """Load and check a report written by vcheck; anything foreign, malformed, too big or too
    deep gets one ReportFormatError line."""
    return parse_report(read_report_bytes(path), path)


_NOT_A_MARK = bytes(c for c in range(256) if c not in b",{")


def parse_report(raw: bytes, path: str) -> dict[str, Any]:
    """read_report on bytes already read (a report can be read only once from a pipe)."""
    # bounded before parsing, not after: commas and braces inside strings count too (an
    # overestimate, never an under-)
    marks = raw.translate(None, _NOT_A_MARK)            # its commas and braces: one pass, not two
    commas = marks.count(b",")
    values, objects = commas + 1, len(marks) - commas
    if values > MAX_VALUES:
        raise ReportFormatError(f"{path}: too large to read: {values:,} values (at most {MAX_VALUES:,})")
    if objects > MAX_OBJECTS:
        raise ReportFormatError(f"{path}: too large to read: {objects:,} objects (at most {MAX_OBJECTS:,})")
    with _without_cyclic_gc():
        return _parse_checked(raw, path)


def _parse_checked(raw: bytes, path: str) -> dict[str, Any]:
    data = _typed_parse(raw)
    series_checked = data is not None
    if data is None:
        data = _plain_parse(raw, path)
    # the typed parse checked the observations' series, labels and info: they are set aside,
    # and each observation is finished in one pass below (depth, shape, redaction)
    observations = data.pop("observations", None) if series_checked else None
    try:
        depth = max_depth(data)
        if depth > MAX_DEPTH:
            raise ValueError(f"nested {depth} levels deep (at most {MAX_DEPTH})")
    except (ValueError, RecursionError) as exc:
        raise ReportFormatError(f"{path}: not a readable JSON report ({str(exc)[:120]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReportFormatError(f"{path}: not a vcheck report (no \"format\": \"{FORMAT}\")")
    version = data.get("version")
    if version != VERSION or isinstance(version, bool) or not isinstance(version, int):
        raise ReportFormatError(f"{path}: report format version {version!r:.40}; "
                                f"this vcheck reads version {VERSION}")
    shape = _Shape(path)
    shape.report(data)
    if data.get("node") is None:
        data["node"] = {}          # every reader takes the node as an object
    _labels_as_text(data)
    redact_tree(data)
    if observations is not None:
        for i, o in enumerate(observations):
            shape.typed_observation(o, i)
            _redact_observation(o)
        data["observations"] = observations
    return data


def _redact_observation(o: dict[str, Any]) -> None:
    """redact_tree of one typed observation (see _typed_decoder), its series not walked."""
    for k, v in o.items():
        if type(v) is str:
            o[k] = clean_text(v)
        elif type(v) is dict and k in ("labels", "info"):
            if _SURROGATE_RE.search("".join(v)):
                redact_tree(v)
            else:
                o[k] = {name: clean_text(x) for name, x in v.items()}
        elif v and k not in SERIES_KEYS and isinstance(v, (dict, list)):
            redact_tree(v)


@contextlib.contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Reading a report and filing its observations make millions of objects that live until
    the run ends, and no cyclic garbage: the cyclic collector is paused meanwhile, and what was
    made is then frozen out of its later collections (it scanned it again and again: a quarter
    of a 100,000-observation replay's CPU)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if paused:
            gc.enable()


def _plain_parse(raw: bytes, path: str) -> Any:
    """The standard library's parser: every report it can read, and one precise line for
    every one it cannot (the typed parse leaves both to it)."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ReportFormatError(f"{path}:{exc.lineno}:{exc.colno}: not a readable JSON report ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise ReportFormatError(f"{path}: not a readable JSON report (not UTF-8 at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        why = "a number of more than 4,300 digits" if "digits" in str(exc) else str(exc)[:120]
        raise ReportFormatError(f"{path}: not a readable JSON report ({why})") from None


def _labels_as_text(data: dict[str, Any]) -> None:
    """Label values a report wrote as numbers read as the strings every label is."""
    maps = [(data.get("node") or {}).get("labels")]
    for r in data.get("results") or []:
        maps.append(r.get("labels"))
        maps += [e.get("labels") for e in r.get("entities") or []]
    maps += [o.get("labels") for o in data.get("observations") or []]
    for m in maps:
        if isinstance(m, dict):
            for k, v in m.items():
                m[k] = str(v)


def max_depth(data: Any) -> int:
    """Nesting depth of parsed JSON, walked without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            if v and type(v[0]) in (float, int) and all(type(x) in (float, int) for x in v):
                continue      # a series: no deeper
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


def store_from_report(report: dict[str, Any], path: str = "report", checked: bool = False) -> ObservationStore:
    """The observations of a saved run, as a store items can judge (replays, baselines).
    checked: report is what parse_report returned, its fields checked there (not again)."""
    shape = _Shape(path)
    store = ObservationStore()
    observations = shape.lst(_given(report, "observations", []), "observations")
    if not checked:
        for i, d in enumerate(observations):
            shape.observation(d, f"observations[{i}]")
    with _without_cyclic_gc():
        _file_observations(store, shape, observations)
    store.unavailable.update(shape.strmap(report.get("unavailable"), "unavailable"))
    w = report.get("window") or {}
    store.window.start_wall = w.get("start") or 0.0
    store.window.planned = w.get("planned") or 0.0
    store.window.duration = w.get("observed") or 0.0
    store.window.interrupted = bool(w.get("interrupted"))
    return store


def _file_observations(store: ObservationStore, shape: _Shape, observations: list[dict[str, Any]]) -> None:
    """Each checked observation (a dict of the report) as an Observation in the store; its
    series are taken as they are (floats, checked), not copied."""
    put = store.put
    for i, d in enumerate(observations):
        get = d.get
        hist, gone_at, unseen_seconds = get("histogram"), get("gone_at"), get("unseen_seconds")
        put(Observation(
            metric=d["metric"], labels=tuple(sorted((get("labels") or {}).items())),   # strings: checked
            info=dict(get("info") or ()),
            times=d["times"], values=d["values"], spans=d["spans"], weights=d["weights"],
            histogram=shape.histogram(hist, f"observations[{i}].histogram") if hist is not None else None,
            events=get("events") or [], notes=get("notes") or [],
            gone_at=float(gone_at) if gone_at is not None else None,
            gone_reason=get("gone_reason") or "", blind=get("blind") or "",
            culprits=get("culprits") or [], unseen=get("unseen") or 0,
            unseen_seconds=float(unseen_seconds) if unseen_seconds is not None else None))


# --- the typed parse: a report as vcheck writes it, checked while it is parsed -----------

SERIES_KEYS = frozenset(("times", "values", "spans", "weights"))


def _typed_decoder() -> Any:
    """msgspec's decoder with the observations typed as _Shape.observation checks them (the
    bulk of a report: its series are checked in C while parsed); everything else is checked
    by _Shape after. None without msgspec."""
    if msgspec is None:
        return None
    from typing import Annotated, TypedDict
    finite = Annotated[float, msgspec.Meta(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]
    series = Annotated[list[finite], msgspec.Meta(max_length=MAX_SERIES)]
    texts = Annotated[list[str], msgspec.Meta(max_length=10_000)]
    records = Annotated[list[dict[str, Any]], msgspec.Meta(max_length=100_000)]
    seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_MAGNITUDE)]

    Obs = TypedDict("Obs", {
        "metric": str, "labels": dict[str, str], "info": dict[str, str],
        "times": series, "values": series, "spans": series, "weights": series,
        "histogram": Any, "events": records, "notes": texts,
        "gone_at": finite | None, "gone_reason": str | None, "blind": str | None,
        "culprits": Annotated[list[dict[str, Any]], msgspec.Meta(max_length=MAX_CULPRITS)],
        "unseen": Annotated[int, msgspec.Meta(ge=0, le=MAX_INT - 1)], "unseen_seconds": seconds | None,
    }, total=False)
    Report = TypedDict("Report", {k: Any for k in TOP_LEVEL_KEYS} | {"observations": Annotated[list[Obs], msgspec.Meta(max_length=MAX_SERIES)] | None},
                       total=False)
    return msgspec.json.Decoder(Report)


# every field a report of this version has at the top level: the typed parse keeps these
TOP_LEVEL_KEYS = ("format", "version", "vcheck", "created", "exit_status", "node", "policies", "window",
                  "unavailable", "results", "collector_notes", "cost", "interrupted_by")
_DECODER = _typed_decoder()
_ENCODER = msgspec.json.Encoder(enc_hook=_encodable) if msgspec is not None else None


def _typed_parse(raw: bytes) -> dict[str, Any] | None:
    """The report parsed with its observations checked, or None: no msgspec, or anything it
    refuses (malformed, another shape, a foreign field), which the plain parse then reads or
    names precisely."""
    if _DECODER is None:
        return None
    try:
        data = _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return data
