"""Drop reasons named from a recorded kfree_skb format (6.18), unknown codes by number, a kernel
without the reason field, and kallsyms lookups."""
from pathlib import Path

from vcheck.collectors.net_drops import (NORMAL_REASONS, Kallsyms, has_reason_field, netns_inode,
                                         parse_drop_reasons, reason_name)

FORMAT = (Path(__file__).parents[2] / "data" / "kfree_skb.format").read_text()
# 5.10: no reason field, no symbolic table
OLD_FORMAT = """name: kfree_skb
format:
	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:void * location;	offset:16;	size:8;	signed:0;
	field:unsigned short protocol;	offset:24;	size:2;	signed:0;

print fmt: "skbaddr=%p protocol=%u location=%p", REC->skbaddr, REC->protocol, REC->location
"""


def test_reasons_named_by_the_kernel():
    names = parse_drop_reasons(FORMAT)
    assert names[2] == "NOT_SPECIFIED" and names[6] == "SOCKET_RCVBUFF" and names[64] == "QDISC_DROP"
    assert has_reason_field(FORMAT)
    assert NORMAL_REASONS <= set(names.values())     # every normal-life name exists in the kernel


def test_a_code_the_kernel_added_later_is_reported_by_number():
    names = parse_drop_reasons(FORMAT)
    assert reason_name(4000, names) == "reason 4000"
    assert reason_name((3 << 16) | 5, names) == "subsystem 3 reason 5"


def test_kernel_without_reason_field():
    assert not has_reason_field(OLD_FORMAT) and parse_drop_reasons(OLD_FORMAT) == {}


def test_kallsyms_names_the_function(tmp_path):
    (tmp_path / "kallsyms").write_text("ffffffff81000000 T _stext\nffffffff81000100 t udp_queue_rcv_one_skb\n"
                                       "ffffffff81000400 d some_data\nffffffff81000500 T tcp_v4_rcv\n")
    k = Kallsyms(tmp_path)
    assert k.name(0xffffffff81000137) == "udp_queue_rcv_one_skb+0x37"
    assert k.name(0xffffffff81000510) == "tcp_v4_rcv+0x10"
    # module symbols follow the core kernel's, at addresses of their own: looked up all the same
    (tmp_path / "kallsyms").write_text("ffffffff81000000 T _stext\nffffffffc0000000 t br_handle_frame\t[bridge]\n"
                                       "ffffffff80000000 t early_fn\n")
    k = Kallsyms(tmp_path)
    assert k.name(0xffffffffc0000010) == "br_handle_frame+0x10"
    assert k.name(0xffffffff80000004) == "early_fn+0x4" and k.name(0xffffffff81000001) == "_stext+0x1"


def test_netns_inode():
    assert netns_inode("net:[4026531840]") == "4026531840"


def test_a_kernel_without_the_reason_field_is_inconclusive(monkeypatch, tmp_path):
    """The old kernel is simulated (its recorded format file): this kernel has the field."""
    from vcheck.collectors import net_drops
    from vcheck.collectors.base import CollectContext, CollectRequest
    from vcheck.observations import ObservationStore
    from vcheck.procfs import HostRoots
    monkeypatch.setattr(net_drops, "read_kfree_skb_format", lambda: OLD_FORMAT)
    monkeypatch.setattr(net_drops, "ensure_tracefs", lambda: None)
    store = ObservationStore()
    c = net_drops.NetDropsCollector(CollectContext(HostRoots(), store), CollectRequest(frozenset({"net.drops"}), 2, 1))
    c.start()
    c.begin(0.0)
    c.sample(1.0)
    c.stop(2.0)
    node = store.for_metric("net.drops")[0]
    assert "no reason field" in node.blind and not node.values


def test_rx_sk_argument_is_read_only_where_the_kernel_passes_it():
    from vcheck.collectors.net_drops import has_rx_sk
    assert has_rx_sk(FORMAT) and not has_rx_sk(OLD_FORMAT)
