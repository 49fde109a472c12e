"""deploy/prometheus/: the shipped rules load in Prometheus' own checker, and their unit tests
(input series, expected alerts and fleet figures) pass under the real `promtool test rules`;
the same tests fail when a rule loses a condition, so they can catch a broken rule."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.rig.common import rig_fail

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "vcheck-rules.yaml"
RULE_TESTS = RULES_DIR / "vcheck-rules.test.yaml"


@pytest.fixture(scope="module")
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        rig_fail("promtool is not installed (scripts/setup.sh installs Debian's prometheus)")
    return exe


def _promtool(exe: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules(promtool):
    r = _promtool(promtool, "check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_rule_unit_tests_pass(promtool):
    r = _promtool(promtool, "test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_unit_test():
    alerts = {rule["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for rule in g["rules"] if "alert" in rule}
    tested = {t["alertname"] for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert alerts and alerts - tested == set()


@pytest.mark.parametrize("old, new", [
    ('outcome=~"fail|error"', 'outcome="fail"'),                      # inconclusive no longer fails a node
    ("> bool on () group_left () vcheck:config:stale_after_seconds", "> bool on () group_left () (vcheck:config:stale_after_seconds * 100)"),
    ("(last_over_time(vcheck_run_timestamp_seconds[1h])) + 1", "(last_over_time(vcheck_run_timestamp_seconds[1h])) + 0"),  # gone: healthy
])
def test_the_unit_tests_catch_a_rule_that_lost_a_condition(promtool, tmp_path, old, new):
    text = RULES.read_text()
    assert text.count(old) == 1
    (tmp_path / RULES.name).write_text(text.replace(old, new))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    assert _promtool(promtool, "check", "rules", str(tmp_path / RULES.name)).returncode == 0
    r = _promtool(promtool, "test", "rules", str(tmp_path / RULE_TESTS.name))
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr
