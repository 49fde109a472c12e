"""The walk for network items: from a drop count to the reason, function, interface and owners."""
from vcheck.report.explain import explain

DROP_ROW = {"owner": "container shop/web/nginx", "normal": "no", "reason_code": "6",
            "functions": "udp_queue_rcv_one_skb+0x437 (397)", "interfaces": "eth0",
            "socket_owner": "pid 12 'nginx' (container shop/web/nginx)"}
REPORT = {"node": {"hostname": "n1"}, "results": [
    {"nodeid": "k8s-node.yaml::pod-drops-by-reason", "check": "pod-drops-by-reason", "metric": "net.drops",
     "outcome": "fail", "expect": "< 10", "window": 60,
     "entities": [{"entity": "netns4026532242-SOCKET_RCVBUFF", "outcome": "fail", "info": DROP_ROW,
                   "measurements": [{"passed": False, "statistic": "max", "measured_text": "397",
                                     "threshold_text": "< 10"}]}]},
    {"nodeid": "node-conformance.yaml::net-drops", "check": "net-drops", "metric": "net.drops", "outcome": "fail",
     "expect": "< 10", "window": 60,
     "entities": [{"entity": "node", "outcome": "fail", "info": {}, "events": [
         {"netns": "4026532242", "reason": "SOCKET_RCVBUFF", "count": 397, "owner": "container shop/web/nginx",
          "normal": False, "function": "udp_queue_rcv_one_skb+0x437", "interfaces": ["eth0"],
          "socket_owner": "pid 12 'nginx'"}]}]},
    {"nodeid": "node-conformance.yaml::tcp", "check": "tcp", "metric": "net.tcp.rtt", "outcome": "fail",
     "expect": "p99 < 10ms", "window": 60,
     "entities": [{"entity": "netns1", "outcome": "fail", "info": {}, "events": [
         {"netns": "1", "local": "10.0.0.1:40000", "remote": "10.0.0.2:443", "latency": 0.04,
          "owner": "the host", "socket_owner": "pid 7 'curl'"}]}]}]}


def test_a_drop_names_reason_function_interface_and_owners():
    text = explain(REPORT)
    assert "dropped in udp_queue_rcv_one_skb+0x437 (397) on eth0; namespace of container shop/web/nginx; " \
           "socket of pid 12 'nginx'" in text
    assert "dropped: 397 x SOCKET_RCVBUFF in udp_queue_rcv_one_skb+0x437 on eth0 (netns 4026532242)" in text
    assert "culprit: none recorded" not in text


def test_a_slow_flow_names_its_endpoints_and_owner():
    text = explain(REPORT, "tcp")
    assert "flow 10.0.0.1:40000 -> 10.0.0.2:443: srtt up to 40ms" in text.replace(" ms", "ms")
    assert "socket of: pid 7 'curl'" in text
