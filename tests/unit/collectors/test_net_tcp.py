"""Endpoints as evidence reads them, and a kernel without tcp:tcp_probe or tcp_retransmit_skb:
inconclusive, never a pass. The missing tracepoints are simulated (a loader that attached
neither): this kernel has both, and the rig tests the real programs."""
from vcheck.collectors import net_tcp
from vcheck.collectors.base import CollectContext, CollectRequest
from vcheck.observations import ObservationStore
from vcheck.procfs import HostRoots


def test_endpoints():
    assert net_tcp.endpoint(2, bytes([10, 78, 0, 2]) + bytes(12), 7070) == "10.78.0.2:7070"
    assert net_tcp.endpoint(10, bytes(15) + b"\x01", 443) == "[::1]:443"


class _NoTcpTracepoints:
    """A loaded program whose optional tracepoints were all absent."""

    def __init__(self, *a, **k):
        self.notes, self.attached, self.path = [], [], "core"

    def load(self):
        return self

    def clear(self, *tables):
        pass

    def counters(self):
        return {}

    def close(self):
        pass


def test_missing_tracepoints_make_both_metrics_inconclusive(monkeypatch):
    monkeypatch.setattr(net_tcp, "BpfProgram", _NoTcpTracepoints)
    monkeypatch.setattr(net_tcp, "ensure_tracefs", lambda: None)
    store = ObservationStore()
    c = net_tcp.TcpLatencyCollector(CollectContext(HostRoots(), store),
                                    CollectRequest(frozenset({"net.tcp.retransmits", "net.tcp.rtt"}), 2, 1))
    c.start()
    c.begin(0.0)
    c.sample(1.0)
    c.stop(2.0)
    retrans = store.for_metric("net.tcp.retransmits")
    rtt = store.for_metric("net.tcp.rtt")
    assert retrans and all("tcp:tcp_retransmit_skb does not exist" in o.blind for o in retrans)
    assert rtt and all("tcp:tcp_probe does not exist" in o.blind for o in rtt)
    assert not any(o.values for o in retrans)
