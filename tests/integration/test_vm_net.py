"""vm.net.* against a real qemu guest with a tap NIC (in a namespace of the test's): the tap is
found from qemu's own fds, its counters read in the guest's view, cross-checked with
`ip -s link`. The spinning guest never drives its NIC, so packets sent to it fill the tap's
queue and then are dropped: a known fate."""
from __future__ import annotations

import time

import pytest

from tests.rig.net import link_stats, udp_send
from vcheck.collectors.base import CollectContext, CollectRequest
from vcheck.collectors.net import VM_METRICS, VmNetCollector, vm_taps
from vcheck.observations import ObservationStore
from vcheck.procfs import HostRoots

pytestmark = pytest.mark.rig


def total(store, metric, vm):
    o = next(o for o in store.for_metric(metric) if o.label_dict.get("vm") == vm)
    return sum(v * s for v, s in zip(o.values, o.spans)), o


def test_tap_counters_in_the_guests_view(tap_vm):
    assert vm_taps(HostRoots().proc, tap_vm.proc.pid) == [tap_vm.tap]   # from qemu's own fds (fdinfo iff:)
    store = ObservationStore()
    c = VmNetCollector(CollectContext(HostRoots(), store), CollectRequest(frozenset(m.name for m in VM_METRICS), 5, 1))
    c.start()
    before = link_stats(tap_vm.ns.name, tap_vm.tap)
    c.begin(time.monotonic())
    udp_send(tap_vm.ns.name, tap_vm.guest_addr, 9, 1500, size=100)
    time.sleep(0.2)
    c.sample(1.0)
    after = link_stats(tap_vm.ns.name, tap_vm.tap)
    sent, dropped = after["tx_packets"] - before["tx_packets"], after["tx_dropped"] - before["tx_dropped"]
    assert dropped > 0                                     # nobody drains the tap: its queue overflowed
    rx, o = total(store, "vm.net.rx.packets", tap_vm.name)
    assert rx == pytest.approx(sent)                       # host tx is the guest's rx
    rx_drops, _ = total(store, "vm.net.rx.drops", tap_vm.name)
    assert rx_drops == pytest.approx(dropped)
    assert o.label_dict["interface"] == tap_vm.tap
    assert "no vhost worker" in o.info["vhost"]            # this host has no vhost-net
    tx, _ = total(store, "vm.net.tx.packets", tap_vm.name)
    assert tx == 0                                         # the guest never sent
