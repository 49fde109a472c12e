"""merge's guest/host join: a guest's network failure is shown beside its VM's tap figures."""
from vcheck.report.join import facts_of, join, render

HOST = {"node": {"hostname": "hv1", "virtualization": "none"},
        "observations": [{"metric": "vm.net.rx.drops", "labels": {"vm": "web1", "interface": "tap0"},
                          "info": {"uuid": "ABCD-1", "taps": "tap0"}}],
        "results": [{"nodeid": "kvm-host.yaml::vm-net-rx-drops[web1]", "check": "vm-net-rx-drops", "outcome": "fail",
                     "labels": {"vm": "web1"},
                     "entities": [{"entity": "web1-tap0", "outcome": "fail",
                                   "measurements": [{"measured_text": "300/s"}]}]}]}
GUEST = {"node": {"hostname": "web1", "virtualization": "kvm", "vm_identity": {"product_uuid": "abcd-1"}},
         "results": [{"nodeid": "node-conformance.yaml::net-tcp-retransmits", "outcome": "fail"}]}


def test_guest_net_failure_joins_its_vm_tap_drops():
    joined, unjoined = join([facts_of("hv1", HOST), facts_of("web1", GUEST)])
    assert not unjoined and joined[0].by == "product_uuid"
    text = "\n".join(render(joined, unjoined))
    assert "guest failing: node-conformance.yaml::net-tcp-retransmits" in text
    assert "host: vm-net-rx-drops[web1-tap0] fail (300/s)" in text
