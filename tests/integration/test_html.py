"""The HTML reports of a real failing run, opened in a real headless browser (Debian's chromium
and chromium-driver through selenium, from scripts/setup.sh; the browser cannot reach any
network). A CPU hog pinned to cpu1 fails a per-CPU cpu.user check and makes cpu1's run queue
slow; fio's O_DIRECT writes fail a disk-latency outlier check (a busy cpu0 may fail too: the
tests do not depend on it). If chromium cannot start, these tests fail: they never skip."""
from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.rig.common import VCHECK, require_root, rig_fail
from tests.rig.io import background_writes, cpu_hogs, root_device

POLICY = """\
policy: html-rig
defaults: {window: 3s, interval: 1s}
checks:
  - id: user
    metric: cpu.user
    per: cpu
    select: {cpu: "0-1"}
    expect: "< 30%"
    for: 500ms
    interval: 100ms
  - id: disk-outliers
    metric: block.latency
    per: device
    select: {device: DEV}
    expect: "count(> 1us) <= 0"
  - id: runq
    metric: sched.runq.latency
    per: cpu
    select: {cpu: "1"}
    expect: "p99 < 1ms"
"""


def _vcheck(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(VCHECK + list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real failing run: its JSON report, its HTML report, and the HTML rendered later from
    the JSON (`vcheck report`)."""
    require_root()
    if (os.cpu_count() or 1) < 2:
        pytest.fail("this test needs two CPUs (a hog on cpu1, the rest on cpu0)")
    d = tmp_path_factory.mktemp("html")
    policy = d / "html-rig.yaml"
    policy.write_text(POLICY.replace("DEV", root_device()))
    with background_writes(8, cpus="0"), cpu_hogs(cpu=1, n=2):
        time.sleep(0.3)   # the hogs are at full speed before the window opens
        p = _vcheck("run", str(policy), "--json", str(d / "r.json"), "--html", str(d / "live.html"), cwd=d)
    assert p.returncode == 1, p.stdout + p.stderr
    q = _vcheck("report", str(d / "r.json"), "--html", str(d / "saved.html"), cwd=d)
    assert q.returncode == 0, q.stdout + q.stderr
    report = json.loads((d / "r.json").read_text())
    by_id = {r["id"]: r for r in report["results"]}
    for nodeid in ("html-rig::user[cpu1]", f"html-rig::disk-outliers[{root_device()}]",
                   "html-rig::runq[cpu1]"):
        r = by_id.get(nodeid, {})
        # failed on what was observed, not for want of data
        assert r.get("outcome") == "fail" and any(e["outcome"] == "fail" for e in r["entities"]), \
            f"{nodeid}: {r.get('outcome')} ({r.get('reason')})"
    return d, report


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if webdriver is None:
        rig_fail("selenium is not importable (scripts/setup.sh installs python3-selenium)")
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,2000",
              # no network: anything the page tried to fetch would fail (and say so in the console)
              "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
              "--host-resolver-rules=MAP * ~NOTFOUND"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver, why = None, ""
    try:
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    except (WebDriverException, OSError) as exc:
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if driver is None:
        rig_fail("headless chromium could not start (scripts/setup.sh installs chromium and chromium-driver)", why)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _open(driver, path: Path, scheme: str = "light") -> None:
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                           {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
    driver.get(path.as_uri())
    driver.get_log("browser")    # (drop what an earlier page left)
    driver.refresh()


def _open_every_row(driver) -> None:
    """pytest-html's 'Show all details': every row open, so every lazy evidence is drawn."""
    button = driver.execute_script("return document.getElementById('show_all_details')")
    if button is None:           # not a pytest-html page (the fleet page draws everything)
        return
    button.click()
    deadline = time.monotonic() + 60
    while driver.execute_script("return document.querySelectorAll('.vc-lazy').length") and time.monotonic() < deadline:
        time.sleep(0.1)


def _drawn(content: str) -> str:
    """An extra's evidence as the page draws it: a collapsed row's is kept as base64 until
    its row is opened."""
    lazy = re.fullmatch(r'<div class="vc-lazy" data-evidence="([A-Za-z0-9+/=]*)"></div>', content)
    return base64.b64decode(lazy.group(1)).decode() if lazy else content


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _row(driver, nodeid: str):
    """pytest-html's <tbody> of one item (its id is the test id)."""
    return driver.execute_script("return document.getElementById(arguments[0])", nodeid)


def _rect(driver, el) -> dict:
    return driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                 "return {x: r.x, y: r.y, w: r.width, h: r.height};", el)


def _blob(path: Path) -> dict:
    m = re.search(r'data-jsonblob="([^"]*)"', path.read_text())
    return json.loads(html.unescape(m.group(1)))


def test_each_failing_item_shows_its_plot_in_a_browser_without_network(run, browser):
    d, report = run
    _open(browser, d / "live.html")
    assert _console_errors(browser) == []
    failing = [r for r in report["results"] if r["outcome"] == "fail"]
    for r in failing:
        row = _row(browser, r["id"])
        assert row is not None, r["id"]
        figures = row.find_elements("css selector", "figure.vc-figure svg.vc-plot")
        bad = [e for e in r["entities"] if e["outcome"] == "fail"]
        assert len(figures) >= len(bad) and all(f.is_displayed() for f in figures[:len(bad)]), r["id"]
        assert _rect(browser, figures[0])["h"] > 100
    # the slowest I/Os, and who issued them, as a table: the JSON report's first 20 events
    disk = next(r for r in failing if r["check"] == "disk-outliers")
    events = disk["entities"][0]["events"]
    table = _row(browser, disk["id"]).find_element("css selector", "table.vc-events")
    head = [th.text for th in table.find_elements("css selector", "th")]
    rows = table.find_elements("css selector", "tr")[1:]
    assert len(rows) == min(20, len(events)) and "comm" in head
    assert [r.find_elements("css selector", "td")[head.index("comm")].text for r in rows] == \
        [e["comm"] for e in events[:20]]
    # nothing came from anywhere but the file itself
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith(("data:", "file:")) for u in fetched), fetched
    sources = browser.execute_script(
        "return [...document.querySelectorAll('[src], link[href], use[href]')].map(e => e.getAttribute('src') ?? "
        "e.getAttribute('href'))")
    assert all(s in ("", "#") or s.startswith("data:") for s in sources), sources   # (pytest-html's empty media <img>)
    env = browser.find_element("id", "environment").text
    assert "vcheck node" in env and report["node"]["hostname"] in env


def test_the_threshold_line_sits_where_the_axis_maps_its_value(run, browser):
    d, report = run
    _open(browser, d / "live.html")
    svg = _row(browser, "html-rig::user[cpu1]").find_element("css selector", "svg.vc-plot-series")
    ticks = [(float(g.get_attribute("data-value")), g.find_element("css selector", "line"))
             for g in svg.find_elements("css selector", "g.vc-ytick")]
    (v0, l0), (v1, l1) = ticks[0], ticks[-1]
    y0, y1 = (_rect(browser, l)["y"] + _rect(browser, l)["h"] / 2 for l in (l0, l1))
    line = svg.find_element("css selector", "line.vc-threshold")
    assert float(line.get_attribute("data-value")) == 30.0      # "< 30%"
    r = _rect(browser, line)
    expected = y0 + (30.0 - v0) * (y1 - y0) / (v1 - v0)
    assert abs(r["y"] + r["h"] / 2 - expected) <= 1.0, (r, expected)
    # the shaded stretch is where the run says the longest violation was
    lv = next(e for e in report["results"] if e["id"] == "html-rig::user[cpu1]")["entities"][0]["series"][
        "longest_violation"]
    shade = svg.find_element("css selector", "rect.vc-violation")
    assert float(shade.get_attribute("data-start")) == pytest.approx(lv["start"])
    assert float(shade.get_attribute("data-end")) == pytest.approx(lv["end"])


def test_the_histogram_marks_p99_in_the_bucket_that_holds_it(run, browser):
    d, report = run
    obs = next(o for o in report["observations"] if o["metric"] == "sched.runq.latency" and o["labels"] == {"cpu": "1"})
    h = obs["histogram"]
    rank, seen = max(1, math.ceil(0.99 * h["count"])), 0
    for _, low, high, n in sorted(h["buckets"]):
        seen += n
        if seen >= rank:
            break
    _open(browser, d / "live.html")
    svg = _row(browser, "html-rig::runq[cpu1]").find_element("css selector", "svg.vc-plot-histogram")
    bar = svg.find_element("css selector", "rect.vc-bar-p99")
    assert float(bar.get_attribute("data-low")) == pytest.approx(low * h["scale"], rel=1e-4)
    assert float(bar.get_attribute("data-high")) == pytest.approx(high * h["scale"], rel=1e-4)
    b, m = _rect(browser, bar), _rect(browser, svg.find_element("css selector", "line.vc-p99"))
    assert b["x"] - 1 <= m["x"] + m["w"] / 2 <= b["x"] + b["w"] + 1
    threshold = svg.find_element("css selector", "line.vc-threshold")
    assert float(threshold.get_attribute("data-value")) == pytest.approx(1e-3)
    assert _rect(browser, threshold)["x"] < b["x"]       # the p99 lies past the 1ms threshold: it failed


def test_dark_and_light_themes_both_apply(run, browser):
    d, _ = run
    colours = {}
    for scheme in ("light", "dark"):
        _open(browser, d / "live.html", scheme)
        colours[scheme] = browser.execute_script(
            "const p = document.querySelector('path.vc-series');"
            "return [getComputedStyle(p).stroke, getComputedStyle(document.body).backgroundColor]")
        assert _console_errors(browser) == []
    assert colours["light"][0] != colours["dark"][0]
    lum = [int(x) for x in re.findall(r"\d+", colours["dark"][1])[:3]]
    assert sum(lum) < 3 * 60, colours      # a dark page, not pytest-html's white


def test_the_report_rendered_from_the_saved_json_is_the_same(run, browser):
    d, report = run
    live, saved = _blob(d / "live.html"), _blob(d / "saved.html")
    assert set(live["tests"]) == set(saved["tests"]) == {r["id"] for r in report["results"]}
    for nodeid, rows in live["tests"].items():
        other = saved["tests"][nodeid]
        assert [r["result"] for r in rows] == [r["result"] for r in other], nodeid
        assert [x["content"] for r in rows for x in r["extras"]] == [x["content"] for r in other for x in r["extras"]]
    for key in ("vcheck node", "kernel", "window", "policy html-rig"):
        assert live["environment"][key] == saved["environment"][key]
    _open(browser, d / "saved.html")
    assert _console_errors(browser) == []
    passing = [x for r in live["tests"].values() for row in r for x in row["extras"] if row["result"] == "Passed"]
    assert all("vc-lazy" in x["content"] for x in passing)    # drawn when opened (the rig's items may all fail)
    _open_every_row(browser)
    assert _console_errors(browser) == []
    assert browser.execute_script("return document.querySelectorAll('.vc-lazy').length") == 0
    assert len(browser.find_elements("css selector", "svg.vc-plot")) == \
        sum(_drawn(x["content"]).count("<svg") for r in live["tests"].values() for row in r for x in row["extras"])


def test_the_fleet_page_links_the_failing_nodes_cell_to_its_evidence(run, browser):
    d, report = run
    paths = []
    for name, zone, failing in (("node-a", "a", True), ("node-b", "a", False), ("node-c", "b", False)):
        r = json.loads(json.dumps(report))
        r["node"]["hostname"], r["node"]["labels"] = name, {"zone": zone}
        if not failing:
            r["exit_status"] = 0
            for x in r["results"]:
                x["outcome"], x["reason"] = "pass", ""
        paths.append(d / f"{name}.json")
        paths[-1].write_text(json.dumps(r))
    p = _vcheck("merge", *map(str, paths), "--domain-label", "zone", "--html", str(d / "fleet.html"), cwd=d)
    assert p.returncode == 1 and "zone=a: 1 of 2 nodes failing" in p.stdout, p.stdout + p.stderr
    _open(browser, d / "fleet.html")
    assert _console_errors(browser) == []
    cell = browser.find_element("css selector", 'tr[data-node="node-a"] td[data-check="html-rig::user"]')
    assert cell.get_attribute("data-outcome") == "fail"
    for healthy in ("node-b", "node-c"):
        assert browser.find_elements("css selector", f'tr[data-node="{healthy}"] td a') == []
    cell.find_element("css selector", "a").click()
    target = browser.execute_script("return document.querySelector(':target')")
    failed = {r["id"] for r in report["results"] if r["check"] == "user" and r["outcome"] == "fail"}
    assert target is not None and target.get_attribute("data-nodeid") in failed     # cpu1, and cpu0 if it was busy
    assert browser.execute_script("return arguments[0].closest('section').dataset.node", target) == "node-a"
    assert target.find_element("css selector", "svg.vc-plot-series line.vc-threshold").is_displayed()


def test_pytest_html_through_the_plugin(run, tmp_path):
    """`pytest --html` on policies (plugins autoloaded, as an operator's pytest has them): the
    same evidence, here judged on the run's saved observations."""
    d, report = run
    policy = tmp_path / "html-rig.yaml"
    policy.write_text((d / "html-rig.yaml").read_text())
    p = subprocess.run([sys.executable, "-m", "pytest", str(policy), "--replay", str(d / "r.json"),
                        "--html", str(tmp_path / "p.html"), "--self-contained-html", "-p", "no:cacheprovider", "-q"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")})
    assert p.returncode == 1, p.stdout + p.stderr
    blob = _blob(tmp_path / "p.html")
    assert {n.split("::", 1)[1] for n in blob["tests"]} == {r["nodeid"].split("::", 1)[1] for r in report["results"]}
    for rows in blob["tests"].values():
        assert any("vc-evidence" in _drawn(x["content"]) for r in rows for x in r["extras"])
    assert "vcheck node" in blob["environment"]


PAYLOAD = "\"'><img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"


FREE_TEXT = {"hostname", "kernel", "reason", "notes", "entity", "info", "labels", "nodeid", "check", "comm",
             "describe", "owner", "cgroup", "measured_text", "threshold_text", "note", "statistic", "expression",
             "expect", "boot_id", "name", "path"}


def _poison(value, free=False):
    """The payload appended to every free-text string of a report (names, reasons, notes)."""
    if isinstance(value, str):
        return value + PAYLOAD if free else value
    if isinstance(value, list):
        return [_poison(v, free) for v in value]
    if isinstance(value, dict):
        return {(k + PAYLOAD if free and k not in FREE_TEXT else k): _poison(v, free or k in FREE_TEXT)
                for k, v in value.items()}
    return value


def test_a_crafted_report_runs_no_script_in_any_page(run, browser, tmp_path):
    """Payloads in every string field, and in the fields a renderer expects to be a word or a
    number (outcomes, a violation's sample count): refused when read, or drawn as text."""
    _, report = run
    crafted = _poison(json.loads(json.dumps(report)))
    variants = {"strings": crafted}
    odd = json.loads(json.dumps(report))
    for r in odd["results"]:
        r["outcome"] = PAYLOAD
        for e in r.get("entities") or []:
            e["outcome"] = PAYLOAD
            if isinstance(e.get("series"), dict) and e["series"].get("longest_violation"):
                e["series"]["longest_violation"]["samples"] = PAYLOAD
    variants["fields"] = odd
    passing = _poison(json.loads(json.dumps(report)))      # collapsed rows: evidence drawn when opened
    for r in passing["results"]:
        r["outcome"] = "pass"
        for e in r.get("entities") or []:
            e["outcome"] = "pass"
    variants["passing"] = passing
    drawn, lazily_drawn = 0, False
    for name, body in variants.items():
        src = tmp_path / f"{name}.json"
        src.write_text(json.dumps(body))
        for args, page in ((["report", str(src), "--html"], tmp_path / f"{name}-report.html"),
                           (["merge", str(src), "--html"], tmp_path / f"{name}-fleet.html")):
            p = _vcheck(*args, str(page), cwd=tmp_path)
            assert "Traceback" not in p.stderr
            if p.returncode == 4:
                assert not page.exists() and p.stderr.count("\n") == 1, p.stderr
                continue
            assert p.returncode in (0, 1), p.stdout + p.stderr
            text = page.read_text()
            assert "<script>document.title" not in text and "<img src=x" not in text
            if name == "passing" and args[0] == "report":
                assert "vc-lazy" in text
            _open(browser, page)
            _open_every_row(browser)                                   # every lazy evidence drawn too
            if name == "passing" and args[0] == "report":
                assert browser.execute_script("return document.querySelectorAll('.vc-lazy').length") == 0
                assert browser.find_elements("css selector", "svg.vc-plot")
                lazily_drawn = True
            assert browser.title != "pwned", (name, args[0])          # the payload shown as text, never run
            drawn += 1
    assert drawn >= 2          # the string payloads are drawn as text, not refused
    assert lazily_drawn        # and a collapsed row's, drawn when opened, too
