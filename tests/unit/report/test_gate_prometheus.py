"""vcheck gate --prometheus: the parts that need no server (the gate against a real Prometheus
is in tests/integration/test_fleet_prometheus.py)."""
from __future__ import annotations

import pytest

from vcheck.cli import main
from vcheck.report.gate_prometheus import GateQuery, PrometheusUnreachable, _Client, _item_name, check_url, promql_string, \
    version_note


def test_promql_strings_are_escaped():
    assert promql_string('topology.kubernetes.io/zone') == '"topology.kubernetes.io/zone"'
    assert promql_string('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


def test_items_are_named_as_the_node_report_names_them():
    assert _item_name({"policy": "ops", "check": "never", "entity": "cpu0"}) == "ops::never[cpu0]"
    assert _item_name({"policy": "ops", "check": "idle-ok", "entity": "node"}) == "ops::idle-ok"


def test_only_http_urls_and_credentials_never_shown():
    assert check_url("http://127.0.0.1:9090/") == "http://127.0.0.1:9090"
    with pytest.raises(PrometheusUnreachable, match="expected an http"):
        check_url("file:///etc/passwd")
    with pytest.raises(PrometheusUnreachable) as exc:
        check_url("ftp://admin:hunter2@prom")
    assert "hunter2" not in str(exc.value)


def test_two_versions_are_said():
    assert version_note({"0.1.0": 3}) is None
    assert version_note({"0.1.0": 3, "0.2.0": 1}) == \
        "vcheck: the fleet's series come from 2 vcheck versions: 0.1.0 (3 nodes), 0.2.0 (1 node)"


@pytest.mark.parametrize("args, message", [
    (["--max-failing-nodes", "lots"], "--max-failing-nodes 'lots'"),
    (["--timeout", "5"], "needs a unit"),
    (["--stale-after=0s"], "must be positive"),
])
def test_bad_options_are_one_line_usage_errors(capsys, args, message):
    assert main(["gate", "--prometheus", "http://127.0.0.1:1", *args]) == 4
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_credentials_in_the_url_become_basic_auth_and_leave_the_url():
    c = _Client(GateQuery("https://gate:s3cr%40t@prom.example:9443/prefix"), at=0.0)
    assert c.base == "https://prom.example:9443/prefix"
    assert c.headers["Authorization"] == "Basic Z2F0ZTpzM2NyQHQ="      # gate:s3cr@t
    assert "s3cr" not in c._fail("x").args[0]
