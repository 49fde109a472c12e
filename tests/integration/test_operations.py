"""The three ways vcheck is used, for real: cron (atomic files, --lock, --timeout, a Prometheus
textfile scraped by a real node_exporter), the upgrade gate (baselines under real CPU
contention), waivers, replays and fleet merges."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.rig.common import VCHECK, remove_cgroup_tree, require_root, rig_fail
from tests.rig.io import cpu_hogs

pytestmark = pytest.mark.rig

QUICK = """\
policy: ops
defaults: {window: 1s, interval: 1s}
checks:
  - {id: idle-ok, metric: cpu.idle, expect: "<= 100%"}
  - {id: never, metric: cpu.busy, expect: "< 0%"}
"""

PASSING = """\
policy: ops
defaults: {window: 1s, interval: 1s}
checks:
  - {id: idle-ok, metric: cpu.idle, expect: "<= 100%"}
"""


def vcheck(*args: str, env: dict | None = None, timeout: float = 120, cwd: Path | None = None
           ) -> subprocess.CompletedProcess:
    return subprocess.run(VCHECK + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def node_exporter(tmp_path):
    """A real prometheus-node-exporter serving only its textfile collector on loopback."""
    exe = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if exe is None:
        rig_fail("prometheus-node-exporter is not installed (scripts/setup.sh installs it)")
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    port = free_port()
    proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
                             "--collector.textfile", f"--collector.textfile.directory={textdir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 15
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                rig_fail("node_exporter did not start", proc.stderr.read().decode(errors="replace")[-500:])
            time.sleep(0.1)

    def scrape() -> str:
        return urllib.request.urlopen(url, timeout=5).read().decode()

    yield textdir, scrape
    proc.terminate()
    proc.wait()


def test_prometheus_textfile_is_scraped_with_labels_and_values(node_exporter, policy_file, tmp_path):
    textdir, scrape = node_exporter
    prom = textdir / "vcheck.prom"
    r1 = vcheck("run", str(policy_file(PASSING, "pass.yaml")), "--prom-textfile", str(prom),
                env={"VCHECK_NODE_NAME": "node-a"})
    assert r1.returncode == 0, r1.stdout + r1.stderr
    first = scrape()
    assert 'vcheck_check_status{check="idle-ok",entity="node",node="node-a",outcome="pass",policy="ops"} 1' in first
    assert "node_textfile_scrape_error 0" in first
    last_ok = [line for line in first.splitlines() if line.startswith("vcheck_last_success_timestamp_seconds")]
    assert len(last_ok) == 1
    assert oct(prom.stat().st_mode & 0o777) == "0o644"

    r2 = vcheck("run", str(policy_file(QUICK)), "--prom-textfile", str(prom), env={"VCHECK_NODE_NAME": "node-a"})
    assert r2.returncode == 1
    second = scrape()
    assert 'vcheck_check_status{check="never",entity="node",node="node-a",outcome="fail",policy="ops"} 0' in second
    value = [line for line in second.splitlines()
             if line.startswith('vcheck_check_value{check="never"')]
    threshold = [line for line in second.splitlines()
                 if line.startswith('vcheck_check_threshold{check="never"')]
    # the figure as measured (an idle second can read 0 busy ticks, a loaded one more) and the threshold
    assert value and 0 <= float(value[0].split()[-1]) <= 100 and threshold and float(threshold[0].split()[-1]) == 0
    assert 'vcheck_run_checks{node="node-a",outcome="fail"} 1' in second
    # a failed run keeps the time of the last successful one
    assert [line for line in second.splitlines()
            if line.startswith("vcheck_last_success_timestamp_seconds")] == last_ok


GATE_CGROUP = "vcheck-gate"
REGRESS = f"""\
policy: gate
defaults: {{window: 3s, interval: 1s}}
checks:
  - {{id: cpu, metric: cgroup.cpu, per: cgroup, select: {{cgroup: /{GATE_CGROUP}/work}}, expect: "<= 400%",
     regress: "mean +20"}}
"""


def test_baseline_gate_catches_a_real_regression(policy_file, tmp_path):
    """The regression is one the test makes: a cgroup of its own is idle in the baseline run and
    holds a busy loop in the next, so the gate fails however loaded the shared machine is (the
    loop gets at least its fair share of CPU 1)."""
    require_root()
    policy = policy_file(REGRESS)
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    work = [Path("/sys/fs/cgroup") / c / GATE_CGROUP / "work" for c in ("cpu", "cpuacct")]
    for d in work:
        d.mkdir(parents=True, exist_ok=True)
    try:
        r = vcheck("run", str(policy), "--json", str(before))
        assert r.returncode == 0, r.stdout + r.stderr
        with cpu_hogs(cpu=1, n=1) as hogs:
            for d in work:
                (d / "cgroup.procs").write_text(str(hogs[0].pid))
            r = vcheck("run", str(policy), "--baseline", str(before), "--json", str(after))
    finally:
        time.sleep(0.1)
        remove_cgroup_tree(GATE_CGROUP)
    assert r.returncode == 1, r.stdout + r.stderr
    res = {x["nodeid"].split("::")[1]: x for x in json.loads(after.read_text())["results"]}
    cpu = res[f"cpu[/{GATE_CGROUP}/work]"]
    assert cpu["outcome"] == "fail" and "regressed against the baseline" in cpu["reason"]
    m = [m for m in cpu["entities"][0]["measurements"] if m["statistic"] == "mean vs baseline"][0]
    base = json.loads(before.read_text())["results"][0]["entities"][0]["series"]["mean"]
    assert m["passed"] is False and "baseline" in m["threshold_text"] and m["measured"] > base + 20, (m, base)
    # the same run against itself is no regression; compare needs no sampling
    r = vcheck("compare", str(after), str(after), str(policy))
    assert r.returncode == 0, r.stdout + r.stderr
    r = vcheck("compare", str(before), str(after), str(policy))
    assert r.returncode == 1 and "regressed" in r.stdout


def test_foreign_or_newer_reports_are_refused(policy_file, tmp_path):
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"hello": 1}')
    newer = tmp_path / "newer.json"
    newer.write_text('{"format": "vcheck.report", "version": 99}')
    for bad, words in ((foreign, "not a vcheck report"), (newer, "version 99")):
        r = vcheck("run", str(policy_file(PASSING)), "--baseline", str(bad))
        assert r.returncode == 4 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        r = vcheck("compare", str(bad), str(bad))
        assert r.returncode == 4 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1


LONG = """\
policy: long
defaults: {window: 30s, interval: 1s}
checks:
  - {id: idle, metric: cpu.idle, expect: "<= 100%"}
"""


def _wait_sampling(proc: subprocess.Popen, seconds: float = 2.5) -> None:
    time.sleep(seconds)
    assert proc.poll() is None, proc.communicate()


def test_kill_mid_window_keeps_the_previous_reports(policy_file, tmp_path):
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    r = vcheck("run", str(policy_file(PASSING)), "--json", str(report), "--junitxml", str(junit))
    assert r.returncode == 0
    before = report.read_bytes(), junit.read_bytes()
    proc = subprocess.Popen(VCHECK + ["run", str(policy_file(LONG, "long.yaml")), "--json", str(report),
                                      "--junitxml", str(junit)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_sampling(proc)
    proc.kill()
    proc.wait()
    assert (report.read_bytes(), junit.read_bytes()) == before
    # SIGTERM: an orderly stop that writes a complete report marked as interrupted
    proc = subprocess.Popen(VCHECK + ["run", str(policy_file(LONG, "long.yaml")), "--json", str(report),
                                      "--junitxml", str(junit)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_sampling(proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "Traceback" not in err
    assert json.loads(report.read_text())["window"]["interrupted"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_lock_refuses_a_concurrent_run(policy_file, tmp_path):
    lock = tmp_path / "run.lock"
    first = subprocess.Popen(VCHECK + ["run", str(policy_file(LONG, "long.yaml")), "--lock", str(lock),
                                       "--timeout", "20s"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_sampling(first, 2.0)
        second_report = tmp_path / "second.json"
        t = time.monotonic()
        r = vcheck("run", str(policy_file(PASSING)), "--lock", str(lock), "--json", str(second_report))
        assert r.returncode == 6 and "another run holds the lock" in r.stderr, r.stderr
        assert str(first.pid) in r.stderr and time.monotonic() - t < 10
        assert not second_report.exists()
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)


def test_timeout_stops_detaches_and_reports_interrupted(own_programs, policy_file, tmp_path):
    policy = policy_file(LONG + "  - {id: lat, metric: block.latency, expect: 'p99 < 10s', on_missing: skip}\n",
                         "long.yaml")
    report = tmp_path / "r.json"
    t = time.monotonic()
    r = vcheck("run", str(policy), "--timeout", "4s", "--json", str(report))
    assert r.returncode == 2 and time.monotonic() - t < 20, r.stdout + r.stderr
    assert "--timeout reached" in r.stdout + r.stderr
    data = json.loads(report.read_text())
    assert data["window"]["interrupted"] is True and data["interrupted_by"] == "--timeout"
    own_programs.assert_none_left()


def test_waivers_until_they_expire(policy_file, tmp_path):
    policy = policy_file(QUICK)
    today = dt.date.today()
    waivers = tmp_path / "waivers.yaml"
    waivers.write_text("waivers:\n  - check: ops::never\n    justification: known, INC-42\n"
                       f"    expires: {today + dt.timedelta(days=7)}\n")
    report = tmp_path / "r.json"
    r = vcheck("run", str(policy), "--waivers", str(waivers), "--json", str(report))
    assert r.returncode == 0, r.stdout + r.stderr
    never = [x for x in json.loads(report.read_text())["results"] if x["check"] == "never"][0]
    assert never["outcome"] == "waived" and "INC-42" in never["reason"]
    waivers.write_text("waivers:\n  - check: never\n    justification: known, INC-42\n"
                       f"    expires: {today - dt.timedelta(days=1)}\n")
    r = vcheck("run", str(policy), "--waivers", str(waivers), "--json", str(report))
    assert r.returncode == 1 and "expired on" in r.stdout
    waivers.write_text("waivers:\n  - check: never\n    justification: x\n    expires: someday\n")
    r = vcheck("run", str(policy), "--waivers", str(waivers))
    assert r.returncode == 4 and f"{waivers}:4:" in r.stderr and "Traceback" not in r.stderr


def test_replay_reproduces_the_recorded_verdicts(policy_file, tmp_path):
    policy = policy_file("policy: rp\ndefaults: {window: 2s, interval: 1s}\nchecks:\n"
                         "  - {id: idle, metric: cpu.idle, per: cpu, expect: 'mean > 1%'}\n"
                         "  - {id: never, metric: cpu.idle, expect: '< 0%'}\n")
    report = tmp_path / "r.json"
    r = vcheck("run", str(policy), "--json", str(report))
    recorded = {x["nodeid"]: (x["outcome"], [m["measured"] for e in x["entities"] for m in e["measurements"]])
                for x in json.loads(report.read_text())["results"]}
    replayed_path = tmp_path / "replayed.json"
    t = time.monotonic()
    r2 = vcheck("run", str(policy), "--replay", str(report), "--json", str(replayed_path))
    assert r2.returncode == r.returncode and time.monotonic() - t < 10
    replayed = {x["nodeid"]: (x["outcome"], [m["measured"] for e in x["entities"] for m in e["measurements"]])
                for x in json.loads(replayed_path.read_text())["results"]}
    assert replayed == recorded
    # a policy author tightens a threshold and tests it on yesterday's data
    tighter = policy_file("policy: rp\ndefaults: {window: 2s, interval: 1s}\nchecks:\n"
                          "  - {id: idle, metric: cpu.idle, per: cpu, expect: 'mean > 100%'}\n", "tight.yaml")
    r3 = vcheck("run", str(tighter), "--replay", str(report))
    assert r3.returncode == 1


def test_merge_gates_the_fleet_per_failure_domain(policy_file, tmp_path):
    reports = []
    for name, zone, text in (("n1", "a", PASSING), ("n2", "a", PASSING), ("n3", "b", QUICK), ("n4", "b", PASSING)):
        path = tmp_path / f"{name}.json"
        vcheck("run", str(policy_file(text, f"{name}.yaml")), "--json", str(path),
               env={"VCHECK_NODE_NAME": name, "VCHECK_NODE_LABELS": f"zone={zone}"})
        reports.append(str(path))
    junit = tmp_path / "n5.xml"
    vcheck("run", str(policy_file(PASSING, "n5.yaml")), "--junitxml", str(junit), env={"VCHECK_NODE_NAME": "n5"})
    fleet = tmp_path / "fleet.json"
    # n3 fails by its own (quicker) policy: a fleet of two policy sets, said so
    r = vcheck("merge", *reports, str(junit), "--max-failing-nodes", "25%", "--json", str(fleet), "--allow-mixed-policies")
    assert r.returncode == 0, r.stdout + r.stderr          # 1 of 5 failing, 25% allows 1
    assert "1 of 5 nodes failing" in r.stdout
    data = json.loads(fleet.read_text())
    assert data["format"] == "vcheck.fleet" and {n["name"] for n in data["nodes"]} == {"n1", "n2", "n3", "n4", "n5"}
    r = vcheck("merge", *reports, "--max-failing-nodes", "0", "--allow-mixed-policies")
    assert r.returncode == 1 and "GATE FAILED" in r.stdout
    # per zone: zone b has 1 of 2 failing, more than 25% of 2 (= 0) allows
    r = vcheck("merge", *reports, "--max-failing-nodes", "25%", "--domain-label", "zone", "--allow-mixed-policies")
    assert r.returncode == 1 and "zone=b: 1 of 2" in r.stdout and "zone=a: 0 of 2" in r.stdout
    r = vcheck("merge", *reports, "--max-failing-nodes", "lots", "--allow-mixed-policies")
    assert r.returncode == 4 and "Traceback" not in r.stderr


def test_report_names_its_node(policy_file, tmp_path):
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    r = vcheck("run", str(policy_file(PASSING)), "--json", str(report), "--junitxml", str(junit),
               env={"VCHECK_NODE_NAME": "worker-7"})
    assert r.returncode == 0, r.stdout + r.stderr
    node = json.loads(report.read_text())["node"]
    assert node["hostname"] == "worker-7" and node["kernel"] == os.uname().release
    assert len(node["boot_id"]) == 36 and node["virtualization"] != "" and node["layers"]["guest"] == "observed"
    assert json.loads(report.read_text())["policies"][0]["sha256"]
    assert '<testsuite name="worker-7"' in junit.read_text()
