"""`vcheck explain`: the walk from a saved report alone."""
from __future__ import annotations

from vcheck.report.explain import explain

REPORT = {"node": {"hostname": "hv1"}, "results": [
    {"nodeid": "kvm-host.yaml::vcpu-run-delay[web1-vcpu0]", "check": "vcpu-run-delay", "metric": "vcpu.run_delay",
     "outcome": "fail", "expect": "< 10%", "for": 60.0, "window": 60.0, "reason": "violated by web1-vcpu0",
     "entities": [{"entity": "web1-vcpu0", "outcome": "fail", "info": {"pid": "4000", "vmm": "qemu"},
                   "measurements": [{"statistic": "max", "measured_text": "34%", "threshold_text": "< 10%",
                                     "passed": False}],
                   "series": {"min": 1, "mean": 20, "max": 34,
                              "longest_violation": {"start": 3.0, "end": 63.0, "duration": 60.0, "samples": 60}},
                   "culprits": [{"pid": 4121, "comm": "ffmpeg", "share": 0.91, "owner": "unit transcoder.service",
                                 "describe": "pid 4121 'ffmpeg' (unit transcoder.service)",
                                 "cgroup": "/system.slice/transcoder.service"}],
                   "events": [], "notes": []}]},
    {"nodeid": "kvm-host.yaml::vm-vcpus-found[web1]", "check": "vm-vcpus-found", "outcome": "pass", "entities": []},
]}


def test_failing_item_reads_top_down():
    text = explain(REPORT)
    lines = text.splitlines()
    assert lines[0] == "kvm-host.yaml::vcpu-run-delay[web1-vcpu0] on hv1: FAIL"
    assert lines[1].startswith("  symptom: vcpu.run_delay expect '< 10%' for 1m over 1m")
    assert "  entity: web1-vcpu0 (fail): pid 4000, vmm qemu" in lines
    assert "    culprit: pid 4121 'ffmpeg' (unit transcoder.service) took 91% of the wait" in lines
    assert "      owner: unit transcoder.service; cgroup /system.slice/transcoder.service" in lines
    assert "vm-vcpus-found" not in text


def test_named_item_and_nothing_failing():
    assert explain(REPORT, "vm-vcpus-found").splitlines()[0].endswith(": PASS")
    assert explain({"node": {"hostname": "n"}, "results": []}) == "n: every item passed or was skipped."
    assert "no item matches" in explain(REPORT, "nope")
