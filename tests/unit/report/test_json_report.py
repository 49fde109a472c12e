"""Saved reports are untrusted input (replay, baseline, compare, merge): every crafted shape gets
one ReportFormatError line, and what vcheck writes is standard JSON."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from vcheck.errors import ReportFormatError
from vcheck.report.json_report import RunFacts, build_report, dumps, read_report, store_from_report

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "golden" / "replay-source.json"


def _valid() -> dict:
    return json.loads(GOLDEN.read_text())


def _set(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    cur = d
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[int(k)] if isinstance(cur, list) else cur[k]
    last = keys[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
    return d


CRAFTED = [
    ("version", "1"), ("version", 1.0), ("version", True), ("version", 2), ("results", {}),
    ("results.0", "x"), ("results.0.outcome", 3), ("results.0.nodeid", None), ("window", []),
    ("window.observed", "soon"), ("unavailable", []), ("unavailable.x", {"y": 1}), ("node", "n"),
    ("node.labels", [1]), ("exit_status", "0"), ("observations", {}), ("observations.0", 7),
    ("observations.0.labels", ["cpu"]), ("observations.0.labels", {"cpu": {"a": 1}}),
    ("observations.0.times", "123"), ("observations.0.values", [1, "x"]), ("observations.0.spans", [None]),
    ("observations.0.metric", 5), ("observations.0.histogram", {"scheme": "log2"}),
    ("observations.0.histogram", {"scheme": "loglinear-8", "scale": 1e-9, "count": 1, "sum": 1,
                                  "buckets": [[5, 1, 2]]}),
    ("observations.0.histogram", {"scheme": "loglinear-8", "scale": 1e-9, "count": 1, "sum": 1,
                                  "buckets": [[10 ** 9, 1, 2, 1]]}),
    ("observations.0.histogram", {"scheme": "loglinear-8", "scale": -1, "count": 1, "sum": 1, "buckets": []}),
    ("observations.0.histogram", {"scheme": "loglinear-8", "scale": 1, "count": "1", "sum": 1, "buckets": []}),
    ("observations.0.events", [1, 2]), ("observations.0.notes", [{"a": 1}]), ("observations.0.gone_at", "x"),
    ("observations.0.blind", 1), ("observations.0.unseen", -1), ("observations.0.unseen", 2.5),
    ("observations.0.unseen", "3"),
]


@pytest.mark.parametrize("path,value", CRAFTED, ids=[f"{p}={v!r}"[:40] for p, v in CRAFTED])
def test_crafted_shapes_get_one_line(tmp_path, path, value):
    f = tmp_path / "r.json"
    f.write_text(json.dumps(_set(_valid(), path, value)))
    with pytest.raises(ReportFormatError) as exc:
        store_from_report(read_report(str(f)), str(f))
    assert str(exc.value).startswith(str(f)) and "\n" not in str(exc.value)


def test_lengths_of_a_series_must_agree(tmp_path):
    d = _valid()
    obs = next(o for o in d["observations"] if o["values"])
    obs["times"] = obs["times"][:-1]
    f = tmp_path / "r.json"
    f.write_text(json.dumps(d))
    with pytest.raises(ReportFormatError, match="differ in length"):
        store_from_report(read_report(str(f)), str(f))


@pytest.mark.parametrize("text", ['{"format": "vcheck.report", "version": 1, "x": NaN}',
                                  '{"format": "vcheck.report", "version": 1, "x": Infinity}',
                                  "[" * 100000 + "]" * 100000, '{"a":' * 70 + "1" + "}" * 70,
                                  "\xff\xfe", "", "null", '"s"'])
def test_non_json_deep_or_non_standard_files(tmp_path, text):
    f = tmp_path / "r.json"
    f.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(ReportFormatError):
        read_report(str(f))


def test_directories_devices_and_missing_files(tmp_path):
    for p in (str(tmp_path), "/dev/zero", str(tmp_path / "none.json")):
        with pytest.raises(ReportFormatError):
            read_report(p)


def test_non_finite_figures_are_written_as_null():
    report = build_report([{"nodeid": "a", "outcome": "pass", "value": math.nan, "n": [math.inf, 1.0]}],
                          RunFacts(), 0)
    text = dumps(report).decode()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["results"][0]["n"] == [None, 1.0]


def test_a_valid_report_round_trips():
    store = store_from_report(read_report(str(GOLDEN)))
    assert store.all() and store.window.duration > 0


def test_unseen_events_survive_a_save_and_a_replay(tmp_path):
    """A replayed run must not pass what the live run could only call inconclusive."""
    from vcheck.report.json_report import observation_json

    store = store_from_report(read_report(str(GOLDEN)))
    o = store.all()[0]
    o.unseen = 12
    d = _valid()
    d["observations"] = [observation_json(x) for x in store.all()]
    f = tmp_path / "r.json"
    f.write_text(json.dumps(d))
    again = {(x.metric, x.labels): x for x in store_from_report(read_report(str(f))).all()}
    assert again[(o.metric, o.labels)].unseen == 12
    assert sum(x.unseen for x in again.values()) == 12


@pytest.mark.parametrize("body, bound", [
    (b'"x": [' + b"0," * 24_000_000 + b"0]", "values (at most 24,000,000)"),
    (b'"x": [' + b"{}," * 2_000_000 + b"{}]", "objects (at most 2,000,000)"),
])
def test_a_report_beyond_its_bounds_is_refused_before_parsing(body, bound):
    """Counted in the bytes: 48 MB of '0,' would be 24 M Python objects (~0.8 GB) once parsed."""
    from vcheck.report.json_report import parse_report
    raw = b'{"format": "vcheck.report", "version": 1, ' + body + b"}"
    with pytest.raises(ReportFormatError) as e:
        parse_report(raw, "big.json")
    assert str(e.value).startswith("big.json: too large to read: ") and str(e.value).endswith(bound)


@pytest.mark.parametrize("fast", [True, False], ids=["msgspec", "stdlib"])
def test_dumps_writes_what_json_reads(monkeypatch, fast):
    """The report's encoder (msgspec's, or the standard library's where msgspec is absent or
    refuses a value) writes standard JSON: non-finite figures as null, other values by str();
    one line per top-level field, result and observation."""
    import enum

    from vcheck.report import json_report

    if not fast:
        monkeypatch.setattr(json_report, "_ENCODER", None)

    class Word(str, enum.Enum):
        FAIL = "fail"

    class Thing:
        def __str__(self) -> str:
            return "thing"

    report = {"a": [1.5, -0.0, 1e300, 2], "b": {"c": [], "d": {}, "e": (1, "x"), 3: None, 2.5: True},
              "observations": [{"times": [0.1, 0.2], "values": [math.nan, math.inf], "s": "caf\u00e9\n\"",
                                "w": Word.FAIL, "t": Thing()}, {}], "z": [[1.0], [{"k": [0.5]}], False]}
    expected = {"a": [1.5, -0.0, 1e300, 2], "b": {"c": [], "d": {}, "e": [1, "x"], "3": None, "2.5": True},
                "observations": [{"times": [0.1, 0.2], "values": [None, None], "s": "caf\u00e9\n\"", "w": "fail",
                                  "t": "thing"}, {}], "z": [[1.0], [{"k": [0.5]}], False]}
    text = dumps(report)
    assert json.loads(text) == expected
    lines = text.decode().splitlines()
    assert lines[0] == "{" and lines[-1] == "}" and len(lines) == 1 + 2 + 4 + 1 + 1   # a, b, [obs obs], z
    assert lines[3] == '"observations": [' and json.loads(lines[4].rstrip(",")) == expected["observations"][0]
    assert dumps({}) == b"{}\n" and json.loads(dumps({"observations": []})) == {"observations": []}
    lone = dumps({"s": "\ud800"})            # msgspec refuses a lone surrogate: the fallback writes it
    assert json.loads(lone) == {"s": "\ud800"}


@pytest.mark.parametrize("path,value", CRAFTED, ids=[f"{p}={v!r}"[:40] for p, v in CRAFTED])
def test_the_typed_parse_refuses_what_the_plain_one_does(monkeypatch, path, value):
    """The typed parse (msgspec) is a fast path only: a crafted report gets the same one line
    with it as without it (every refusal is worded by the plain parse and _Shape)."""
    from vcheck.report import json_report

    raw = json.dumps(_set(_valid(), path, value)).encode()
    with pytest.raises(ReportFormatError) as fast:
        json_report.parse_report(raw, "r.json")
    monkeypatch.setattr(json_report, "_DECODER", None)
    with pytest.raises(ReportFormatError) as plain:
        json_report.parse_report(raw, "r.json")
    assert str(fast.value) == str(plain.value)


def test_the_typed_and_plain_parse_read_a_report_alike(monkeypatch):
    """A report as vcheck writes it takes the typed path, and reads as the plain parse reads
    it: the same fields, the same store (series as floats, labels as text, strings redacted)."""
    from vcheck.report import json_report

    d = _valid()
    d["observations"][0]["info"]["cmdline"] = "mysql -p hunter2"
    d["observations"][0]["values"] = [int(x) for x in d["observations"][0]["values"]]   # ints read as floats
    raw = json.dumps(d).encode()
    assert json_report._typed_parse(raw) is not None
    fast = json_report.parse_report(raw, "r.json")
    monkeypatch.setattr(json_report, "_DECODER", None)
    plain = json_report.parse_report(raw, "r.json")
    assert fast == plain and "hunter2" not in json.dumps(fast)
    a = store_from_report(fast, "r.json", checked=True).all()
    b = store_from_report(plain, "r.json", checked=True).all()
    assert a == b and all(type(x) is float for o in a for x in o.values)
