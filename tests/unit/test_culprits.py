"""Culprits (who had the CPU while an entity waited) from recorded charges: ranking, shares and
what is left out, through observations, judging, rendering and the JSON report and back."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from vcheck.probes import source_path
from vcheck.catalog import Catalog
from vcheck.collectors.sched import BCC_WALK, RING_SLOTS, SEGMENT_MS, SEGMENT_TASKS, UNATTRIBUTED, culprits, merge_charges
from vcheck.errors import ReportFormatError
from vcheck.evidence import merge_culprits, render
from vcheck.histogram import Histogram
from vcheck.identity import TaskIdentity
from vcheck.judge import judge
from vcheck.observations import ObservationStore
from vcheck.policy import load_policy_bytes
from vcheck.report.json_report import dumps, observation_json, store_from_report

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "replay-source.json"


class FakeResolver:
    """Identities as vcheck.identity would give them, for recorded pids."""

    OWNERS = {4121: ("unit", "unit transcoder.service", "/system.slice/transcoder.service", (4121,)),
              5000: ("vm", "VM db1, vCPU 2", "/machine.slice/db1", (5000,)),
              6000: ("container", "container shop/web/nginx", "/kubepods/pod1/abc", (6000, 7))}

    def resolve(self, pid: int, comm: str = "") -> TaskIdentity:
        kind, owner, cgroup, nspid = self.OWNERS.get(pid, ("exited", "exited before it could be resolved", "", ()))
        return TaskIdentity(pid, pid, comm or "?", kind, owner, cgroup=cgroup, nspid=nspid)


CHARGES = {4121: ("ffmpeg", 910_000_000), 5000: ("CPU 2/KVM", 60_000_000), 0: ("swapper/1", 10_000_000),
           6000: ("nginx", 5_000_000), 77: ("gone", 3_000_000), 78: ("gone2", 2_000_000),
           UNATTRIBUTED: ("", 10_000_000)}


def test_top_culprits_with_shares_owners_and_what_is_left_out():
    got, notes = culprits(CHARGES, FakeResolver(), keep=4)
    assert [c["pid"] for c in got] == [4121, 5000, 0]     # 6000's 0.5% is under the 1% shown
    assert got[0] == {"pid": 4121, "comm": "ffmpeg", "share": 0.91, "wait": 0.91, "owner": "unit transcoder.service",
                      "describe": "pid 4121 'ffmpeg' (unit transcoder.service)",
                      "cgroup": "/system.slice/transcoder.service", "nspid": [4121]}
    assert got[1]["describe"] == "pid 5000 'CPU 2/KVM' (VM db1, vCPU 2)" and got[1]["share"] == 0.06
    assert got[2]["owner"] == "idle CPU" and "swapper/1" in got[2]["describe"]
    assert "3 more tasks took 1.0% of the wait" in notes
    assert any(n.startswith("1.0% of the wait is not attributed") for n in notes)
    assert culprits({}, FakeResolver()) == ([], [])
    (only,), notes = culprits({6000: ("nginx", 1), UNATTRIBUTED: ("", 10_000)}, FakeResolver())
    assert only["nspid"] == [6000, 7] and "PID 7 inside" in only["describe"]   # the largest, however small
    assert notes == ["100.0% of the wait is not attributed: it began before the CPU's kept history (64 "
                     "stretches of at most 4 distinct tasks or 4 ms each), or before vcheck attached"]


def test_the_node_merges_every_cpus_charges():
    merged = merge_charges([{1: ("a", 5), 0: ("swapper/0", 1)}, {1: ("a", 7), 2: ("b", 1)}])
    assert merged == {1: ("a", 12), 0: ("swapper/0", 1), 2: ("b", 1)}


def test_python_and_the_bpf_program_agree_on_the_ring():
    src = source_path("runq_latency.c").read_text()
    assert int(re.search(r"#define RING_SLOTS (\d+)", src).group(1)) == RING_SLOTS
    assert int(re.search(r"#define SEGMENT_TASKS (\d+)", src).group(1)) == SEGMENT_TASKS
    assert int(re.search(r"#define BCC_WALK (\d+)", src).group(1)) == BCC_WALK
    assert int(re.search(r"#define SEGMENT_NS (\d+)ull", src).group(1)) == SEGMENT_MS * 1_000_000
    assert int(re.search(r"#define UNATTRIBUTED (0x[0-9A-Fa-f]+)u", src).group(1), 16) == UNATTRIBUTED


def test_merged_entities_recompute_shares_over_the_whole_wait():
    a = [{"pid": 1, "comm": "hog", "share": 0.5, "wait": 1.0}, {"pid": 0, "comm": "swapper/0", "share": 0.5, "wait": 1.0}]
    b = [{"pid": 1, "comm": "hog", "share": 0.25, "wait": 1.0}, {"pid": 0, "comm": "swapper/1", "share": 0.75, "wait": 3.0}]
    merged = merge_culprits([a, b])
    assert merged[0] == {"pid": 0, "comm": "swapper/1", "share": 0.5, "wait": 3.0}
    assert {(c["pid"], c["comm"]): c["share"] for c in merged} == {(0, "swapper/1"): 0.5, (1, "hog"): 0.3333,
                                                                   (0, "swapper/0"): 0.1667}
    assert merge_culprits([a, []]) == a and merge_culprits([]) == []


CATALOG = Catalog()


def _check(body: str):
    text = "policy: t\nchecks:\n  - id: c\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())
    return load_policy_bytes(text.encode(), "t.yaml", CATALOG).checks[0]


def _culprit_store() -> ObservationStore:
    got, _ = culprits(CHARGES, FakeResolver(), keep=2)
    s = ObservationStore()
    for i in range(1, 4):
        s.add_sample("vcpu.run_delay", {"vm": "web1", "vcpu": "0"}, float(i), 34.0, 1.0, {"pid": "4000", "tid": "4001"})
    s.series("vcpu.run_delay", {"vm": "web1", "vcpu": "0"}).culprits = got
    o = s.set_histogram("sched.runq.latency", {"cpu": "1"}, Histogram.from_values([20_000_000] * 10, scale=1e-9))
    o.culprits = got
    s.window.duration = 3.0
    return s


def test_failing_entities_carry_and_show_their_culprits():
    store = _culprit_store()
    v = judge(_check("metric: vcpu.run_delay\nper: vcpu\nexpect: '< 10%'\nwindow: 3s"), store,
              {"vm": "web1", "vcpu": "0"}, 3.0)
    (e,) = v.entities
    assert v.outcome == "fail" and [c["pid"] for c in e.culprits] == [4121, 5000]
    assert e.to_json()["culprits"] == e.culprits
    text = render(v)
    assert "culprit: 91% of the wait went to pid 4121 'ffmpeg' (unit transcoder.service), " \
           "cgroup /system.slice/transcoder.service" in text
    assert "culprit: 6% of the wait went to pid 5000 'CPU 2/KVM' (VM db1, vCPU 2)" in text

    v = judge(_check("metric: sched.runq.latency\nper: cpu\nexpect: 'p99 < 1ms'\nwindow: 3s"), store, {"cpu": "1"}, 3.0)
    assert v.outcome == "fail" and v.entities[0].culprits[0]["pid"] == 4121

    passing = judge(_check("metric: vcpu.run_delay\nper: vcpu\nexpect: '< 50%'\nwindow: 3s"), store,
                    {"vm": "web1", "vcpu": "0"}, 3.0)
    assert passing.outcome == "pass" and passing.entities[0].culprits   # in the JSON report...
    assert "culprit:" not in render(passing)                             # ...not on the terminal


def test_entities_without_culprits_keep_their_json_shape():
    s = ObservationStore()
    s.add_sample("cpu.steal", {"cpu": "0"}, 1.0, 1.0, 1.0)
    s.window.duration = 1.0
    v = judge(_check("metric: cpu.steal\nper: cpu\nexpect: '< 10%'\nwindow: 1s"), s, {"cpu": "0"}, 1.0)
    assert "culprits" not in v.entities[0].to_json()
    assert "culprits" not in observation_json(s.all()[0])


def _report_with(culprit_list) -> dict:
    report = json.loads(GOLDEN.read_text())
    report = copy.deepcopy(report)
    report["observations"][0]["culprits"] = culprit_list
    return report


def test_culprits_survive_a_saved_report():
    store = _culprit_store()
    o = store.series("vcpu.run_delay", {"vm": "web1", "vcpu": "0"})
    saved = json.loads(dumps(observation_json(o)))      # as the report writes it (series compact)
    report = _report_with(saved["culprits"])
    back = store_from_report(report).all()
    assert any(x.culprits == o.culprits for x in back)


@pytest.mark.parametrize("bad", [
    {"a": 1}, [1], [{"pid": "4121"}], [{"pid": True}], [{"share": "91%"}], [{"wait": float("nan")}],
    [{"describe": 5}], [{"nspid": ["1"]}], [{"nspid": 1}], [{}] * 101,
])
def test_crafted_culprits_get_one_line(bad):
    with pytest.raises(ReportFormatError) as exc:
        store_from_report(_report_with(bad), "r.json")
    assert "culprits" in str(exc.value) and "\n" not in str(exc.value)
