"""The HTML evidence, drawn from plain data: which observations an entity's figure shows, that
names from the node never become markup, that a crafted saved report cannot break the page, and
the fleet page's links. (The real browser and a real run: tests/integration/test_html.py.)"""
from __future__ import annotations

import copy
import html

import markupsafe
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from vcheck.errors import ReportFormatError
from vcheck.report.html import Evidence, per_sample_violation, saved_observations
from vcheck.report.merge import fleet_html, gate, load_node_reports

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "golden" / "expected.json"
HOSTILE = '<img src=x onerror="alert(1)">'


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


class _Page(HTMLParser):
    """Tags, ids and links of a page (tags only as the browser would see them)."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def of(self, tag: str, **want) -> list[dict]:
        return [a for t, a in self.tags if t == tag and all(w in (a.get(k) or "").split() or a.get(k) == w
                                                           for k, w in want.items())]


def test_each_figure_shows_the_observations_its_entity_was_judged_on():
    report = _golden()
    ev = Evidence(saved_observations(report))
    drawn = 0
    for r in report["results"]:
        page = _Page(ev.result_html(r))
        for e in r["entities"]:
            if not e["samples"]:
                continue
            bars = page.of("rect", **{"class": "vc-bar"})
            paths = page.of("path", **{"class": "vc-series"})
            if bars:
                # a node-wide distribution is the aggregate, a device's merges its ops: as judged
                assert sum(int(b["data-count"]) for b in bars) == e["samples"], r["nodeid"]
            else:
                assert paths and int(paths[0]["data-samples"]) >= e["samples"], r["nodeid"]
            drawn += 1
    assert drawn >= 7


def test_names_from_the_node_never_become_markup():
    report = _golden()
    r = copy.deepcopy(next(x for x in report["results"] if x["check"] == "guest-disk-latency-outliers"))
    r["nodeid"] = f"x.yaml::c[{HOSTILE}]"
    e = r["entities"][0]
    e["entity"], e["reason"], e["notes"] = HOSTILE, HOSTILE, [HOSTILE]
    e["info"] = {"cmdline": HOSTILE, HOSTILE: "v"}
    e["events"][0]["comm"] = HOSTILE
    e["culprits"] = [{"share": 0.5, "wait": 0.002, "describe": HOSTILE, "pid": 7, "cgroup": HOSTILE}]
    e["measurements"][0]["note"] = HOSTILE
    r["expect"] = HOSTILE   # not a valid expression either: drawn without thresholds
    out = Evidence(saved_observations(report)).result_html(r)
    assert "<img" not in out and str(markupsafe.escape(HOSTILE)) in out
    culprits = out[out.index('class="vc-table vc-culprits"'):]
    assert "<td>50%</td><td>2ms</td>" in culprits[:culprits.index("</table>")]   # share, then wait
    assert not _Page(out).of("img")


def test_a_crafted_saved_result_gets_a_note_not_a_broken_page():
    report = _golden()
    ev = Evidence(saved_observations(report))
    bad = copy.deepcopy(report["results"][0])
    bad["entities"][0]["series"] = {"min": 0, "mean": 0, "max": 0, "longest_violation": {"start": "soon"}}
    out = ev.result_html(bad)
    assert "evidence could not be drawn" in out
    assert ev.result_html({"nodeid": "x", "outcome": "fail"}).count("could not be drawn") == 1
    # a histogram whose bucket index would mean a bound of a billion bits is left out, quickly
    obs = [{"metric": "block.latency", "labels": {"device": "vda"},
            "histogram": {"scheme": "loglinear-8", "scale": 1e-9, "count": 1, "sum": 1, "buckets": [[10 ** 9, 1, 2, 1]]}}]
    rec = {"nodeid": "x", "outcome": "pass", "metric": "block.latency", "expect": "p99 < 1ms", "labels": {"device": "vda"},
           "entities": [{"entity": "vda", "labels": {"device": "vda"}, "outcome": "pass", "samples": 1}]}
    out = Evidence(lambda m: obs).result_html(rec)
    assert "vc-bar" not in out and "vda" in out


def test_without_for_the_longest_run_of_violating_samples_is_shaded():
    obs = {"times": [1, 2, 3, 4, 5, 6], "values": [60, 60, 10, 60, 60, 60], "spans": [1] * 6}
    assert per_sample_violation("< 50%", "max", obs) == {"start": 3, "end": 6, "duration": 3, "samples": 3}
    assert per_sample_violation("max < 50% and mean < 90%", "max", obs)["samples"] == 3
    assert per_sample_violation("mean < 50%", "max", obs) is None       # a mean is not held per sample
    assert per_sample_violation("< 50% or > 55%", "max", obs) is None


def _node(tmp_path: Path, name: str, zone: str, failing: bool) -> Path:
    r = _golden()
    r["node"]["hostname"], r["node"]["labels"] = name, {"zone": zone}
    for x in r["results"]:
        if not failing and x["outcome"] == "error":
            x["outcome"], x["reason"] = "pass", ""
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(r))
    return p


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="junit-node" tests="2" failures="1">
<testcase classname="node-conformance" name="guest-cpu-steal[cpu1]"><failure message="cpu.steal expect '&lt; 10%'">[cpu1] fail &lt;b&gt;</failure></testcase>
<testcase classname="node-conformance" name="guest-cpu-steal[cpu0]"/>
</testsuite></testsuites>
"""


def test_the_fleet_page_links_each_failing_cell_to_that_nodes_evidence(tmp_path):
    paths = [_node(tmp_path, "node-a", "z1", False), _node(tmp_path, "node-b", "z1", True),
             _node(tmp_path, HOSTILE, "z2", False)]
    (tmp_path / "j.xml").write_text(JUNIT)
    nodes = load_node_reports([str(p) for p in paths] + [str(tmp_path / "j.xml")], keep=True)
    assert "observations" not in nodes[0].report and "observations" in nodes[1].report   # healthy: outcomes only
    g = gate(nodes, "0", "zone")
    page_text = fleet_html(nodes, g, "zone").decode()
    page = _Page(page_text)
    assert not page.of("img") and "<script" not in page_text
    assert [a["data-domain"] for a in page.of("table", **{"class": "vc-matrix"})] == ["(no label)", "z1", "z2"]
    ids = {a["id"] for _, a in page.tags if "id" in a}
    failing = page.of("td", **{"class": "vc-cell-error"}) + page.of("td", **{"class": "vc-cell-fail"})
    assert len(failing) == 2      # node-b's steal check (inconclusive), the JUnit node's (failed)
    # JSON and JUnit inputs name a check alike: one column per check of the golden run
    golden_checks = {r["policy"] + "::" + r["check"] for r in _golden()["results"]}
    assert {a["title"] for a in page.of("th", **{"class": "vc-check"})} == golden_checks
    assert {a["data-check"] for a in failing} == {"node-conformance::guest-cpu-steal"}
    links = [a["href"] for a in page.of("a") if a.get("href", "").startswith("#ev-")]
    assert len(links) == 2 and all(h[1:] in ids for h in links)
    # node-b's evidence: drawn from its observations; the JUnit node's: its failure text, escaped
    b = page_text[page_text.index('data-node="node-b"><h2>'):]
    assert "vc-plot" in b[:b.index("</section>")]
    assert "[cpu1] fail &lt;b&gt;" in page_text
    for healthy in ("node-a", str(markupsafe.escape(HOSTILE))):
        assert f'data-node="{healthy}"><h2>' not in page_text   # no evidence section for a healthy node


@pytest.mark.parametrize("xml", [
    '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><testsuite name="&b;"/>',
    '<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]><testsuite name="&x;"/>',
    '<?xml version="1.0"?><!DOCTYPE testsuite SYSTEM "http://127.0.0.1:9/x.dtd"><testsuite name="n"/>',
])
def test_merge_refuses_junit_with_a_doctype_or_entities(tmp_path, xml):
    p = tmp_path / "evil.xml"
    p.write_text(xml)
    with pytest.raises(ReportFormatError, match="DOCTYPE or entities is refused"):
        load_node_reports([str(p)])


def _vcheck(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vcheck.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])})


def _blob(path: Path) -> dict:
    m = re.search(r'data-jsonblob="([^"]*)"', path.read_text())
    return json.loads(html.unescape(m.group(1)))


def test_vcheck_report_renders_a_saved_report_and_escapes_the_node(tmp_path):
    r = _golden()
    r["node"]["hostname"] = HOSTILE
    r["results"][2]["id"] = f"node-conformance::guest-cpu-steal-node[{HOSTILE}]"
    src = tmp_path / "r.json"
    src.write_text(json.dumps(r))
    out = tmp_path / "r.html"
    p = _vcheck("report", str(src), "--html", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    blob = _blob(out)
    assert len(blob["tests"]) == len(r["results"])
    assert blob["environment"]["vcheck node"] == html.escape(HOSTILE)     # pytest-html inserts it as HTML
    row = blob["tests"][r["results"][2]["id"]][0]["resultsTableRow"][1]
    assert "<img" not in row and str(markupsafe.escape(HOSTILE)) in row
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    # a foreign file is a usage error, one line, and nothing is written
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}')
    p = _vcheck("report", str(bad), "--html", str(tmp_path / "no.html"), cwd=tmp_path)
    assert p.returncode == 4 and len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "no.html").exists()
    # observations are checked field by field before anything is drawn
    r["observations"][0]["values"] = ["x"]
    bad.write_text(json.dumps(r))
    p = _vcheck("report", str(bad), "--html", str(tmp_path / "no.html"), cwd=tmp_path)
    assert p.returncode == 4 and "observations[0].values" in p.stderr and not (tmp_path / "no.html").exists()


def test_a_regress_limit_is_drawn_for_its_own_entity():
    obs = [{"metric": "cpu.steal", "labels": {"cpu": c}, "times": [1, 2, 3], "values": [1, 5, 9], "spans": [1, 1, 1]}
           for c in "01"]
    def entity(c: str, limit: float) -> dict:
        return {"entity": f"cpu{c}", "labels": {"cpu": c}, "outcome": "fail", "samples": 3,
                "measurements": [{"statistic": "mean vs baseline", "threshold": limit, "passed": False}]}
    rec = {"nodeid": "x.yaml::steal", "outcome": "fail", "metric": "cpu.steal", "expect": "< 50%", "window": 3,
           "entities": [entity("0", 4.0), entity("1", 7.0)]}
    page = _Page(Evidence(lambda m: obs).result_html(rec))
    lines = [float(a["data-value"]) for a in page.of("line", **{"class": "vc-threshold"})]
    assert lines == [50.0, 4.0, 50.0, 7.0]     # per plot: the expect's threshold, then that entity's limit


def _members_by_scan(obs, record, entity, kind):
    """Evidence.members' rule, scanning every observation of the metric (the reference)."""
    item, labels = record.get("labels") or {}, entity.get("labels") or {}
    mine = [o for o in obs if all((o.get("labels") or {}).get(k) == v for k, v in item.items())]
    if kind != "distribution" or not labels:
        exact = [o for o in mine if (o.get("labels") or {}) == labels]
        if exact or kind != "distribution":
            return exact
    return [o for o in mine if all((o.get("labels") or {}).get(k) == v for k, v in labels.items())]


def test_members_by_the_label_index_are_the_scan_s():
    import random
    rng = random.Random(11)
    obs = [{"metric": "m", "labels": {k: str(rng.randrange(3)) for k in rng.sample(["vm", "op", "cpu"], rng.randrange(4))}}
           for _ in range(200)]
    ev = Evidence(lambda m: obs if m == "m" else [])
    for _ in range(500):
        record = {"metric": "m", "labels": {k: str(rng.randrange(3)) for k in rng.sample(["vm", "cpu"], rng.randrange(3))}}
        entity = {"labels": {k: str(rng.randrange(3)) for k in rng.sample(["vm", "op", "cpu"], rng.randrange(4))}}
        for kind in ("series", "distribution"):
            assert ev.members(record, entity, kind) == _members_by_scan(obs, record, entity, kind), (record, entity, kind)


def test_a_passing_rows_evidence_is_drawn_when_its_row_is_opened(tmp_path):
    """pytest-html collapses passing rows but inserts every row's evidence at load: a passing
    row's is kept as base64 (no HTML parsed) and the page's script draws it when opened; a
    failing row's is there at once."""
    import base64

    from vcheck.report.html import LAZY_SCRIPT

    r = _golden()
    src = tmp_path / "r.json"
    src.write_text(json.dumps(r))
    out = tmp_path / "r.html"
    p = _vcheck("report", str(src), "--html", str(out), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    blob, text = _blob(out), out.read_text()
    assert text.count(str(LAZY_SCRIPT)) == 1
    outcomes = {x["id"]: x["outcome"] for x in r["results"]}
    assert "pass" in outcomes.values() and set(outcomes.values()) - {"pass"}
    for nodeid, rows in blob["tests"].items():
        (content,) = [x["content"] for row in rows for x in row["extras"]]
        lazy = re.fullmatch(r'<div class="vc-lazy" data-evidence="([A-Za-z0-9+/=]+)"></div>', content)
        if outcomes[nodeid] == "pass":
            assert lazy, (nodeid, content[:80])
            content = base64.b64decode(lazy.group(1)).decode()
        else:
            assert lazy is None
        assert content.startswith('<div class="vc vc-evidence"') and f'data-nodeid="{html.escape(nodeid)}"' in content
