"""Hostile and careless use of the command line, as a new user and as an attacker would try
it: every case ends with one line, a distinct exit code, no traceback, and nothing destroyed."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.rig.common import VCHECK

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
SOURCE = GOLDEN / "replay-source.json"
POLICY = GOLDEN / "node-conformance.yaml"


def vcheck(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120):
    return subprocess.run(VCHECK + list(args), capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_line_error(r) -> str:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("args", [["run", "--no-such-flag-at-all=1", "--window"], ["merge"], ["bogus"],
                                  ["compare", "only-one.json"], ["doctor", "extra"]])
def test_command_line_mistakes_exit_4_with_one_line(args):
    r = vcheck(*args)
    assert r.returncode == 4, r.stderr
    one_line_error(r)


@pytest.mark.parametrize("spec", ["nan%", "inf%", "-5", "101%", "-1%", "lots"])
def test_absurd_gate_limits_are_usage_errors(tmp_path, spec):
    r = vcheck("merge", str(SOURCE), "--max-failing-nodes", spec)
    assert r.returncode == 4 and "--max-failing-nodes" in one_line_error(r)


@pytest.mark.parametrize("timeout", ["0s", "1e400s", "9999d", "nan"])
def test_absurd_timeouts_are_refused(timeout):
    r = vcheck("run", "--replay", str(SOURCE), str(POLICY), "--timeout", timeout)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "--timeout" in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr


def _report(tmp_path: Path, name: str, **changes) -> Path:
    d = json.loads(SOURCE.read_text())
    d.update(changes)
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return p


def test_merge_counts_interrupted_and_empty_runs_as_failing(tmp_path):
    passing = _report(tmp_path, "ok.json", exit_status=0,
                      results=[{"nodeid": "a", "outcome": "pass"}], node={"hostname": "ok"})
    interrupted = _report(tmp_path, "int.json", exit_status=2, results=[{"nodeid": "a", "outcome": "pass"}],
                          node={"hostname": "int"}, window={"interrupted": False})
    empty = _report(tmp_path, "empty.json", exit_status=5, results=[], node={"hostname": "empty"})
    r = vcheck("merge", str(passing), str(interrupted), str(empty), "--json", str(tmp_path / "fleet.json"))
    assert r.returncode == 1, r.stdout + r.stderr
    nodes = {n["name"]: n["failing"] for n in json.loads((tmp_path / "fleet.json").read_text())["nodes"]}
    assert nodes == {"ok": False, "int": True, "empty": True}


def test_a_conftest_or_ini_beside_a_policy_is_never_run(tmp_path):
    """vcheck runs as root: only its own plugin and the policies named."""
    marker = tmp_path / "pwned"
    (tmp_path / "conftest.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (tmp_path / "evilplugin.py").write_text(f"open({str(marker)!r}, 'w').write('plugin')\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p evilplugin\n")
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY.read_text())
    env = {"PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}", "PYTEST_ADDOPTS": "-p evilplugin",
           "PYTEST_PLUGINS": "evilplugin"}
    for cmd in (["run", "--replay", str(SOURCE), str(policy)], ["list", str(policy)]):
        r = vcheck(*cmd, cwd=tmp_path, env=env)
        assert r.returncode in (0, 1), r.stdout + r.stderr
        assert not marker.exists(), f"{cmd[0]} ran code the operator did not name"


def test_outputs_that_fail_do_not_stop_the_others(tmp_path):
    (tmp_path / "adir").mkdir()
    good = tmp_path / "good.json"
    prom = tmp_path / "m.prom"
    prom.write_text("old")
    r = vcheck("run", "--replay", str(SOURCE), str(POLICY), "--junitxml", str(tmp_path / "adir"),
               "--json", str(good), "--prom-textfile", str(tmp_path / "missing" / "m.prom"))
    errors = [x for x in r.stderr.splitlines() if x.startswith("vcheck:")]
    assert len(errors) == 2 and all("Traceback" not in x for x in errors), r.stderr
    assert json.loads(good.read_text())["format"] == "vcheck.report"
    assert r.returncode == 1          # the replayed run had failures: that verdict stands


def test_lock_through_a_symlink_is_refused_and_its_target_kept(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    lock = tmp_path / "run.lock"
    lock.symlink_to(victim)
    r = vcheck("run", "--replay", str(SOURCE), str(POLICY), "--lock", str(lock))
    assert r.returncode == 4 and "symbolic link" in one_line_error(r)
    assert victim.read_text() == "precious"


def test_compare_writes_junit_atomically_and_refuses_devices(tmp_path):
    r = vcheck("compare", str(SOURCE), str(SOURCE), str(POLICY), "--junitxml", "/dev/full")
    assert "Traceback" not in r.stderr and "/dev/full" in r.stderr
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")
    out = tmp_path / "c.xml"
    r = vcheck("compare", str(SOURCE), str(SOURCE), str(POLICY), "--junitxml", str(out))
    assert out.read_text().startswith("<?xml") and [p.name for p in tmp_path.iterdir()] == ["c.xml"]


def _start_long_run(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    policy = tmp_path / "long.yaml"
    policy.write_text("policy: long\nchecks:\n  - {id: a, metric: cpu.user, expect: '<= 100%', window: 30s}\n")
    report, prom = tmp_path / "r.json", tmp_path / "r.prom"
    p = subprocess.Popen(VCHECK + ["run", str(policy), "--json", str(report), "--prom-textfile", str(prom)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)
    return p, report, prom


@pytest.mark.rig
def test_sigint_reports_an_interrupted_window(tmp_path):
    p, report, prom = _start_long_run(tmp_path)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "Traceback" not in err, err
    data = json.loads(report.read_text())
    assert data["window"]["interrupted"] is True and data["interrupted_by"] == "SIGINT"
    assert 0 < data["window"]["observed"] < 30
    assert re.search(r'^vcheck_run_interrupted\{node="[^"]*"\} 1$', prom.read_text(), re.M), prom.read_text()


@pytest.mark.rig
def test_two_sigterms_in_a_row_end_cleanly(own_programs, tmp_path):
    p, report, _ = _start_long_run(tmp_path)
    p.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "Traceback" not in err, err
    assert json.loads(report.read_text())["interrupted_by"] == "SIGTERM"
    own_programs.assert_none_left()
    assert [x.name for x in tmp_path.iterdir() if x.name.endswith(".tmp")] == []


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


@pytest.mark.rig
def test_non_root_doctor_and_hypervisor_checks_say_what_they_cannot_see(qemu_vm, tmp_path):
    """A real user without privileges: doctor lists what it cannot observe and why; a hypervisor
    check with a VM running says vcheck cannot see VMs, not that there are none."""
    qemu_vm("hidden", smp=1)
    # pytest's tmp_path sits under a root-only directory: nobody needs a place of its own
    tmp_path = Path(tempfile.mkdtemp(prefix="vcheck-nobody-", dir="/tmp"))
    tmp_path.chmod(0o777)
    try:
        _as_nobody(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _as_nobody(tmp_path: Path) -> None:
    doctor = subprocess.run(NOBODY + VCHECK + ["doctor"], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)})
    assert "Traceback" not in doctor.stderr + doctor.stdout, doctor.stderr
    assert doctor.returncode == 1 and "cannot see VMs" in doctor.stdout, doctor.stdout
    policy = tmp_path / "hv.yaml"
    policy.write_text("policy: hv\nchecks:\n  - {id: cpu, metric: vm.cpu, per: vm, expect: '<= 100%', window: 1s}\n")
    policy.chmod(0o644)
    report = tmp_path / "r.json"
    r = subprocess.run(NOBODY + VCHECK + ["run", str(policy), "--json", str(report)], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)})
    assert "Traceback" not in r.stderr, r.stderr
    result = json.loads(report.read_text())["results"][0]
    assert result["outcome"] == "skip" and "cannot see VMs" in result["reason"], result


def test_garbage_in_vcheck_proc_is_reported_not_a_traceback(tmp_path):
    fake = tmp_path / "proc"
    (fake / "pressure").mkdir(parents=True)
    for name in ("stat", "diskstats", "pressure/cpu", "pressure/memory", "pressure/io"):
        (fake / name).write_bytes(os.urandom(300))
    policy = tmp_path / "guest.yaml"
    policy.write_text("policy: guest\nchecks:\n  - {id: steal, metric: cpu.steal, per: cpu, expect: '< 10%', window: 1s}\n"
                      "  - {id: idle, metric: cpu.idle, expect: '>= 0%', window: 1s}\n")
    r = vcheck("run", str(policy), env={"VCHECK_PROC": str(fake)})
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert r.returncode == 1, r.stdout + r.stderr       # the guest layer cannot be judged: it fails
    assert "no data" in r.stdout


def test_control_characters_from_a_replayed_report_never_reach_the_terminal(tmp_path):
    d = json.loads(SOURCE.read_text())
    for o in d["observations"]:
        if o["metric"] == "cpu.steal" and o["labels"]:
            o["labels"]["cpu"] = "0\x1b]0;owned\x07\x1b[2J"
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(d))
    r = vcheck("run", "--replay", str(hostile), str(POLICY), "-v")
    assert "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout + r.stderr
    assert "\\x1b" in r.stdout


@pytest.mark.parametrize("path", ["/dev/zero", "/tmp", "fifo"])
def test_a_policy_path_that_is_not_a_file_is_refused_without_reading_it(tmp_path, path):
    if path == "fifo":
        path = str(tmp_path / "p.yaml")
        os.mkfifo(path)                         # no writer: reading would block forever
    r = vcheck("validate", path, timeout=20)     # a FIFO with no writer reads as empty, at once
    assert r.returncode == 4
    line = one_line_error(r)
    assert "not a file" in line or "empty policy" in line


def test_json_to_dev_stdout_redirected_to_a_file(tmp_path):
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        r = subprocess.run(VCHECK + ["run", "--replay", str(SOURCE), str(POLICY), "--json", "/dev/stdout"],
                           stdout=f, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert '"format": "vcheck.report"' in out.read_text()


@pytest.mark.rig
def test_a_signal_at_any_moment_ends_with_exit_2_and_an_honest_report(tmp_path):
    """SIGTERM swept over a whole run (start-up, collection, the window, judging, writing): the
    exit code is 2 whenever the signal came before the process ended; the report is the previous
    one untouched or a complete vcheck report, and one that says exit 2 says who interrupted it."""
    policy = tmp_path / "p.yaml"
    policy.write_text("policy: sweep\nchecks:\n  - {id: idle, metric: cpu.idle, expect: '>= 0%', window: 1s}\n")
    report = tmp_path / "r.json"
    seen = set()
    for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.1, 1.4, 1.7, 2.0, 2.5, 3.0, 4.0):
        report.write_text('{"previous": true}')
        p = subprocess.Popen(VCHECK + ["run", str(policy), "--json", str(report), "-q"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        ended_before = p.poll() is not None
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        assert "Traceback" not in err, (delay, err)
        if ended_before:
            continue
        data = json.loads(report.read_text())
        if p.returncode == 0:      # it had ended (a zombie not yet reaped): a complete, passing report
            assert data.get("exit_status") == 0 and not data.get("interrupted_by"), (delay, err)
            continue
        # before Python runs any of vcheck's code the default action still applies (-15)
        assert p.returncode in (2, -signal.SIGTERM), (delay, p.returncode, err)
        if data.get("previous"):
            seen.add("untouched")
            continue
        assert data["format"] == "vcheck.report"
        if data["exit_status"] == 2 or data.get("interrupted_by"):     # the report and the exit code agree
            assert data["interrupted_by"] == "SIGTERM" and data["exit_status"] == 2, (delay, data.get("interrupted_by"))
        seen.add("report")
    assert [x.name for x in tmp_path.iterdir() if x.name.endswith(".tmp")] == []
    assert seen == {"untouched", "report"}, seen
