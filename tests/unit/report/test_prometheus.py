"""Prometheus text format for node_exporter's textfile collector."""
from __future__ import annotations

from vcheck.report.prometheus import previous_last_success, render

REPORT = {"node": {"hostname": 'we"ird'}, "exit_status": 1, "window": {"interrupted": False},
          "results": [{"policy": "p", "check": "c", "metric": "cpu.user", "entity": "cpu0", "outcome": "fail",
                       "entities": [{"entity": "cpu0", "outcome": "fail", "measurements": [
                           {"statistic": "max", "measured": 97.5, "threshold": 90.0}]}]}]}


def test_prometheus_rendering_escapes_and_carries_last_success():
    previous = 'vcheck_last_success_timestamp_seconds{node="x"} 1700000000\n'
    text = render(REPORT, 3.5, previous, now=1800000000)
    assert 'node="we\\"ird"' in text
    assert 'vcheck_check_value{policy="p",check="c",entity="cpu0",node="we\\"ird",metric="cpu.user",statistic="max"} 97.5' in text
    assert previous_last_success(text) == 1700000000
    assert previous_last_success(render({**REPORT, "exit_status": 0}, 1.0, previous, now=1800000000)) == 1800000000
    for line in text.splitlines():
        assert line.startswith("#") or line.split()[-1].replace(".", "", 1).replace("e+", "").isdigit()


def test_unseen_events_get_a_series_only_when_there_were_any():
    assert "vcheck_unseen_events" not in render(REPORT, 1.0, now=1800000000)
    observations = [{"metric": "block.latency", "labels": {"device": "vda", "op": "write", "bad-name": "x"},
                     "unseen": 3, "unseen_seconds": 0.004},
                    {"metric": "block.latency", "labels": {"device": "vda", "op": "read"}}]
    text = render({**REPORT, "observations": observations}, 1.0, now=1800000000)
    assert 'vcheck_unseen_events{node="we\\"ird",metric="block.latency",device="vda",op="write"} 3' in text
    assert text.count("vcheck_unseen_events{") == 1   # a label name Prometheus refuses is dropped


def test_version_and_node_labels_for_the_fleet_rules():
    report = {**REPORT, "vcheck": "0.1.0", "policies": [{"name": "k8s", "sha256": "bb"}, {"name": "ops", "sha256": "aa"}],
              "node": {"hostname": "n1", "labels": {"topology.kubernetes.io/zone": "a", "rack": 'r"7'}}}
    text = render(report, 1.0, now=1800000000)
    assert 'vcheck_run_info{node="n1",version="0.1.0",policies="k8s@bb,ops@aa"} 1' in text
    assert 'vcheck_node_label{node="n1",key="topology.kubernetes.io/zone",value="a"} 1' in text
    assert 'vcheck_node_label{node="n1",key="rack",value="r\\"7"} 1' in text
    assert "vcheck_node_label" not in render(REPORT, 1.0, now=1800000000)   # no labels, no series
