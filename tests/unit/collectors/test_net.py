"""Parsing the /proc/net files as recorded from real kernels, and the figures made of two reads."""
import pytest

from vcheck.collectors.net import (NetnsCounters, interface_figures, parse_net_dev, parse_snmp, parse_softnet,
                                   proto_figures, went_backwards)

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  eth0: 240992401    4659    1    7    0     0          0         0   250321    3274    0    2    0     0       0          0
"""

# a 13th column (this 6.18 kernel has it) is the CPU number; CPU 1 is offline here, so rows are CPUs 0 and 2
SOFTNET = """00000011 00000003 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
0000123f 00000000 0000000a 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000002 00000000 00000000
"""
SOFTNET_OLD = "00000011 00000003 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000\n" * 2

SNMP = """Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 18 2 0 0 0 4648 3257 0 0 10 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 37 0 0 38 0 0 0 0 0
"""


def test_net_dev():
    d = parse_net_dev(NET_DEV)
    assert set(d) == {"lo", "eth0"}
    assert d["eth0"]["rx_drop"] == 7 and d["eth0"]["tx_drop"] == 2 and d["eth0"]["tx_bytes"] == 250321


def test_softnet_rows_are_named_by_their_cpu_column():
    assert sorted(parse_softnet(SOFTNET)) == [0, 2]
    assert parse_softnet(SOFTNET)[2].squeezed == 10
    assert sorted(parse_softnet(SOFTNET_OLD)) == [0, 1]   # no CPU column: row order


def test_snmp_pairs_and_negative_values():
    p = parse_snmp(SNMP)
    assert p["Tcp"]["OutSegs"] == 3257 and p["Tcp"]["MaxConn"] == -1 and p["Udp"]["RcvbufErrors"] == 0


def _ns(mono, tcp, udp=None):
    return NetnsCounters(mono, {}, {"Tcp": tcp, "Udp": udp or {"RcvbufErrors": 0}})


def test_retransmit_share_needs_segments_sent():
    a = _ns(0, {"OutSegs": 100, "RetransSegs": 1, "OutRsts": 0, "EstabResets": 0})
    few = _ns(1, {"OutSegs": 103, "RetransSegs": 2, "OutRsts": 0, "EstabResets": 0})
    assert "tcp.retrans_share" not in proto_figures(a, few, 1.0)   # 3 segments: no share
    b = _ns(2, {"OutSegs": 300, "RetransSegs": 5, "OutRsts": 4, "EstabResets": 0})
    f = proto_figures(a, b, 2.0)
    assert f["tcp.retrans_share"] == pytest.approx(2.0) and f["tcp.retrans_segs"] == pytest.approx(2.0)
    assert f["tcp.resets_sent"] == pytest.approx(2.0)
    assert "tcp.retrans_share" not in proto_figures(b, b, 1.0)   # no traffic: no share, not 0 %


def test_counters_that_went_backwards_count_zero():
    a, b = parse_net_dev(NET_DEV)["eth0"], dict(parse_net_dev(NET_DEV)["eth0"], rx_packets=5)
    assert went_backwards(a, b)
    assert interface_figures(a, b, 1.0)["rx.packets"] == 0


def test_an_interface_gone_from_one_namespace_ends_only_that_entity():
    from vcheck.collectors.net import mark_gone
    from vcheck.observations import ObservationStore
    store = ObservationStore()
    store.add_sample("net.rx.drops", {"interface": "eth0"}, 1.0, 0.0, 1.0)
    store.add_sample("container.net.rx.drops", {"container": "web", "interface": "eth0"}, 1.0, 0.0, 1.0)
    mark_gone(store, frozenset({"net.rx.drops"}), {"interface": "eth0"}, 2.0, "removed")
    assert store.for_metric("net.rx.drops")[0].gone_at == 2.0
    assert store.for_metric("container.net.rx.drops")[0].gone_at is None
