"""What an operator reads: the real command's terminal text, files and help, in vcheck's words
(never pytest's outcome names, internal paths, tuples or temporary files)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.rig.common import VCHECK

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
LEAKS = ("ERROR at setup", "XFAIL", "items.py", "_pytest", "/tmp/vcheck-", "configfile:", "pytest.main()",
         "Traceback", "('", "inifile", "test session starts", "collected ")


def vcheck(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(VCHECK + list(args), capture_output=True, text=True, cwd=cwd, timeout=180,
                          env={**os.environ, "VCHECK_NODE_NAME": "golden", **(env or {})})


def no_leaks(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, (leak, text)


def test_outcomes_read_in_vcheck_words_with_a_line_per_check(tmp_path):
    waivers = tmp_path / "w.yaml"
    waivers.write_text("waivers:\n  - check: node-conformance::guest-runq-latency\n    justification: rig\n"
                       "    expires: 2099-01-01\n")
    strict = tmp_path / "strict.yaml"          # a copy of the golden pack whose run-queue check fails
    strict.write_text((GOLDEN / "node-conformance.yaml").read_text().replace('"p99 < 10ms"', '"p99 < 1us"'))
    r = vcheck("run", "--replay", str(GOLDEN / "replay-source.json"), str(strict), str(GOLDEN / "kvm-host.yaml"),
               "--waivers", str(waivers), "--junitxml", "j.xml", cwd=tmp_path)
    out = r.stdout + r.stderr
    no_leaks(out)
    assert r.returncode == 1, out                      # inconclusive steal still fails the run
    lines = {ln.split()[1]: ln.split()[0] for ln in r.stdout.splitlines()
             if ln.split() and ln.split()[0] in ("PASS", "FAIL", "INCONCLUSIVE", "SKIP", "WAIVED")}
    assert lines["node-conformance::guest-cpu-steal[cpu0]"] == "INCONCLUSIVE"
    assert lines["node-conformance::guest-runq-latency"] == "WAIVED"
    assert lines["kvm-host::vcpu-run-delay"] == "SKIP"
    assert lines["node-conformance::guest-cpu-pressure"] == "PASS"
    passing = next(ln for ln in r.stdout.splitlines() if "node-conformance::guest-cpu-pressure" in ln)
    assert "mean" in passing and "%" in passing and "(< 50.00%)" in passing      # its figure and threshold
    assert "kvm-host.yaml:13:" in r.stdout                 # a skip is placed at the policy line
    assert "2 inconclusive" in r.stdout and "1 waived" in r.stdout
    assert "INCONCLUSIVE (inconclusive: for: 60s needs 60s of samples" in r.stdout
    junit = (tmp_path / "j.xml").read_text()
    no_leaks(junit)
    assert 'type="vcheck.inconclusive"' in junit and 'message="inconclusive: ' in junit
    assert 'type="vcheck.waived"' in junit and 'message="waived: ' in junit
    assert "failed on setup" not in junit


def test_outputs_are_announced_by_the_paths_given_and_stdout_carries_only_the_report(tmp_path):
    r = vcheck("run", "--replay", str(GOLDEN / "replay-source.json"), str(GOLDEN / "node-conformance.yaml"),
               "--html", "page.html", "--json", "/dev/stdout", cwd=tmp_path)
    no_leaks(r.stderr)
    report = json.loads(r.stdout)                          # nothing else on stdout
    assert report["format"] == "vcheck.report"
    assert f"file://{tmp_path}/page.html" in r.stderr and (tmp_path / "page.html").exists()


def test_the_command_line_explains_itself(tmp_path):
    r = vcheck("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("vcheck ")
    for command in ("run", "validate", "list", "metrics", "compare", "merge", "report", "explain", "doctor"):
        h = vcheck(command, "--help", cwd=tmp_path)
        assert h.returncode == 0 and "example" in h.stdout, command
    assert "--deselect" in vcheck("run", "--help", cwd=tmp_path).stdout
    bad = vcheck("run", "--no-such-option", cwd=tmp_path)
    assert bad.returncode == 4 and len(bad.stderr.strip().splitlines()) == 1 and "pytest.main" not in bad.stderr
    m = vcheck("metrics", cwd=tmp_path)
    assert max(len(ln) for ln in m.stdout.splitlines()) <= 100
    assert {ln.split()[0] for ln in vcheck("metrics", "steal", cwd=tmp_path).stdout.splitlines()[1:]
            if ln and not ln.startswith(" ")} == {"cpu.steal"}


def test_validate_treats_python_check_files_as_run_does(tmp_path):
    (tmp_path / "test_bad.py").write_text("from vcheck import observe\n\n\n@observe('cpu.nope', window='1s')\n"
                                          "def test_x(observed):\n    assert True\n")
    (tmp_path / "test_good.py").write_text("from vcheck import observe\n\n\n@observe('cpu.idle', window='1s')\n"
                                           "def test_x(observed):\n    assert True\n")
    r = vcheck("validate", "test_bad.py", cwd=tmp_path)
    assert r.returncode == 4 and "test_bad.py:4:" in r.stderr and "cpu.nope" in r.stderr, r.stderr
    r = vcheck("validate", "test_good.py", cwd=tmp_path)
    assert r.returncode == 0 and "test_good.py: ok" in r.stdout, r.stdout + r.stderr


@pytest.mark.rig
def test_a_long_window_says_how_far_it_is_in_a_ci_log(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("policy: slow\nchecks:\n  - {id: idle, metric: cpu.idle, expect: '>= 0%', window: 12s}\n")
    r = vcheck("run", str(policy), cwd=tmp_path, env={"CI": "true"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "vcheck: observing this node for 12s" in r.stdout
    assert "vcheck: 10s of 12s observed" in r.stdout and "\r" not in r.stdout
