"""The network counters (net.*, container.net.*) against real traffic between network
namespaces the test makes, cross-checked with `ip -s link` and `nstat` over the same window."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.rig.common import VCHECK
from tests.rig.net import UdpSink, ip, link_stats, listen_overflow, nstat, run_under_bursts, udp_send
from vcheck.collectors.base import CollectContext, CollectRequest
from vcheck.collectors.net import NODE_METRICS, NetCollector
from vcheck.observations import ObservationStore
from vcheck.procfs import HostRoots

pytestmark = pytest.mark.rig

ALL_NODE = frozenset(m.name for m in NODE_METRICS)


def collector_in(proc: Path) -> tuple[NetCollector, ObservationStore]:
    """The node collector reading the namespace of /proc/PID (its /proc/PID/net is /proc/net there)."""
    store = ObservationStore()
    return NetCollector(CollectContext(HostRoots(proc=proc), store), CollectRequest(ALL_NODE, 5, 1)), store


def total(store: ObservationStore, metric: str, **labels: str) -> float:
    """What the samples add up to: rate x span for a rate, the counts for a count."""
    obs = [o for o in store.for_metric(metric) if o.label_dict == labels]
    assert len(obs) == 1, (metric, labels, [o.labels for o in store.for_metric(metric)])
    o = obs[0]
    if metric.endswith(("overflows", "listen_drops", "rcvbuf_errors")):
        return sum(o.values)
    return sum(v * s for v, s in zip(o.values, o.spans))


def test_interface_counters_agree_with_ip_link(veth_pair):
    a = veth_pair.a
    c, store = collector_in(a.proc)
    c.start()
    before = link_stats(a.name, veth_pair.dev_a)
    c.begin(time.monotonic())
    udp_send(a.name, veth_pair.addr_b, 9, 300, size=500)
    c.sample(1.0)
    udp_send(a.name, veth_pair.addr_b, 9, 200, size=100)
    c.sample(2.0)
    after = link_stats(a.name, veth_pair.dev_a)
    dev = veth_pair.dev_a
    ip_delta = {k: after[k] - before[k] for k in after}
    assert ip_delta["tx_packets"] == 500                    # the test's datagrams, nothing else
    assert total(store, "net.tx.packets", interface=dev) == pytest.approx(ip_delta["tx_packets"])
    assert total(store, "net.tx.bytes", interface=dev) == pytest.approx(ip_delta["tx_bytes"])
    assert total(store, "net.rx.packets", interface=dev) == pytest.approx(ip_delta["rx_packets"])
    assert total(store, "net.tx.drops", interface=dev) == pytest.approx(ip_delta["tx_dropped"])
    # two intervals, each its own rate: 300 then 200 packets
    tx = next(o for o in store.for_metric("net.tx.packets") if o.label_dict == {"interface": dev})
    assert [round(v * s) for v, s in zip(tx.values, tx.spans)] == [300, 200]


def test_udp_receive_buffer_overflow_counts_as_nstat(veth_pair):
    b = veth_pair.b
    sink = UdpSink(b.name, veth_pair.addr_b, 5353)
    try:
        c, store = collector_in(b.proc)
        c.start()
        ref0 = nstat(b.name)
        c.begin(time.monotonic())
        udp_send(veth_pair.a.name, veth_pair.addr_b, 5353, 400, size=1000)
        c.sample(1.0)
        ref1 = nstat(b.name)
        queued = sink.drain()
    finally:
        sink.close()
    dropped = ref1["UdpRcvbufErrors"] - ref0["UdpRcvbufErrors"]
    assert queued + dropped == 400 and dropped > 0, (queued, dropped)
    assert total(store, "net.udp.rcvbuf_errors") == dropped


def test_listen_overflows_count_as_nstat(veth_pair):
    b = veth_pair.b
    c, store = collector_in(b.proc)
    c.start()
    ref0 = nstat(b.name)
    c.begin(time.monotonic())
    listen_overflow(b.name, veth_pair.a.name, veth_pair.addr_b, 8080, clients=8)
    c.sample(1.0)
    ref1 = nstat(b.name)
    overflows = ref1["TcpExtListenOverflows"] - ref0["TcpExtListenOverflows"]
    assert overflows > 0
    assert total(store, "net.tcp.listen_overflows") == overflows
    assert total(store, "net.tcp.listen_drops") == ref1["TcpExtListenDrops"] - ref0["TcpExtListenDrops"]


def test_interface_removed_mid_window_is_gone(veth_pair, tmp_path):
    a = veth_pair.a
    c, store = collector_in(a.proc)
    c.start()
    c.begin(time.monotonic())
    udp_send(a.name, veth_pair.addr_b, 9, 10)
    c.sample(1.0)
    ip("link", "del", veth_pair.dev_a, ns=a.name)
    c.sample(2.0)
    o = next(o for o in store.for_metric("net.tx.packets") if o.label_dict == {"interface": veth_pair.dev_a})
    assert o.gone_at == 2.0 and "removed or renamed" in o.gone_reason
    assert len(o.values) == 1


def test_vcheck_run_in_a_namespace_judges_its_drops(veth_pair, policy_file, tmp_path):
    """End to end: vcheck run inside namespace b, while a UDP sink there overflows."""
    b = veth_pair.b
    policy = policy_file("policy: net\ndefaults: {window: 2s, interval: 1s}\nchecks:\n"
                         "  - {id: udp-rcvbuf, metric: net.udp.rcvbuf_errors, expect: 'sum == 0'}\n"
                         "  - {id: rx, metric: net.rx.packets, per: interface, expect: '< 1000000/s'}\n")
    sink = UdpSink(b.name, veth_pair.addr_b, 5353)
    try:
        report = tmp_path / "r.json"
        run = run_under_bursts(["ip", "netns", "exec", b.name, *VCHECK, "run", str(policy), "--json", str(report)],
                               tmp_path, lambda: udp_send(veth_pair.a.name, veth_pair.addr_b, 5353, 100, size=1000))
        err = run.stderr
    finally:
        sink.close()
    assert "Traceback" not in err, err
    results = {r["check"]: r for r in json.loads(report.read_text())["results"]}
    assert results["udp-rcvbuf"]["outcome"] == "fail", results["udp-rcvbuf"]
    rx = [r for r in json.loads(report.read_text())["results"] if r["check"] == "rx"]
    assert {r["entity"] for r in rx} >= {veth_pair.dev_b, "lo"}, [r["entity"] for r in rx]
    assert run.returncode == 1


def test_container_figures_come_from_its_own_namespace(veth_pair, monkeypatch, tmp_path):
    """A runc container with its own network namespace, a veth into it from a namespace of the
    test's; and one sharing the host's (hostNetwork), which is said to, not repeated."""
    from tests.rig.common import remove_cgroup_tree
    from tests.rig.net import link_stats_of_pid, start_runc, stop_runc, veth_into
    from vcheck.collectors.net import CONTAINER_METRICS, ContainerNetCollector
    root = tmp_path / "runc"
    root.mkdir()
    own = host = None
    try:
        own = start_runc(root, "vchk-netown", own_netns=True)
        host = start_runc(root, "vchk-nethost", own_netns=False)
        dev_a, dev_c = veth_into(veth_pair.a, own.pid)
        monkeypatch.setenv("VCHECK_RUNC_ROOT", str(own.state))
        monkeypatch.setenv("VCHECK_CRI_SOCKETS", "")
        store = ObservationStore()
        c = ContainerNetCollector(CollectContext(HostRoots(), store),
                                  CollectRequest(frozenset(m.name for m in CONTAINER_METRICS), 5, 1))
        c.start()
        before = link_stats_of_pid(own.pid, dev_c)
        c.begin(time.monotonic())
        udp_send(veth_pair.a.name, "10.79.0.2", 9, 250, size=300)
        c.sample(1.0)
        after = link_stats_of_pid(own.pid, dev_c)
        own_netns = os.readlink(f"/proc/{own.pid}/ns/net")
        stop_runc(own)                    # its namespace disappears mid-window
        c.sample(2.0)
    finally:
        for x in (own, host):
            if x is not None:
                stop_runc(x)
        remove_cgroup_tree("vcheck-rig")
    assert after["rx_packets"] - before["rx_packets"] == 250
    rx = [o for o in store.for_metric("container.net.rx.packets") if o.label_dict.get("container") == "vchk-netown"]
    by_dev = {o.label_dict["interface"]: o for o in rx}
    assert set(by_dev) == {"lo", dev_c}                         # its own interfaces, not the node's
    o = by_dev[dev_c]
    assert sum(v * s for v, s in zip(o.values, o.spans)) == pytest.approx(250)
    assert o.info["netns"] == own_netns
    assert o.gone_at == 2.0 and "exited" in o.gone_reason and len(o.values) == 1
    shared = [o for o in store.for_metric("container.net.rx.packets") if o.label_dict.get("container") == "vchk-nethost"]
    assert len(shared) == 1 and not shared[0].values
    assert "shares the host's network namespace" in shared[0].notes[0]


def test_a_host_network_pod_is_said_to_share_the_nodes_figures(containerd, policy_file, tmp_path):
    """A CRI pod under the rig's containerd (host network: no CNI here): its container.net and
    container.net.drops items say it shares the host's namespace and are not judged on the node's
    figures."""
    from tests.rig.containerd import container_spec
    containerd.run_pod("netpod", "shop", [container_spec("web", ["sleep", "3600"])])
    try:
        policy = policy_file("policy: k8snet\ndefaults: {window: 2s, interval: 1s}\nchecks:\n"
                             "  - {id: rx, metric: container.net.rx.drops, per: container, expect: '== 0'}\n"
                             "  - {id: drops, metric: container.net.drops, per: container, expect: 'sum == 0'}\n")
        report = tmp_path / "r.json"
        env = {**os.environ, "VCHECK_CRI_SOCKETS": str(containerd.socket), "VCHECK_RUNC_ROOT": "/nonexistent"}
        proc = subprocess.run([*VCHECK, "run", str(policy), "--json", str(report)], capture_output=True, text=True,
                              timeout=120, env=env, cwd=tmp_path)
    finally:
        for pod in list(containerd.pods):
            containerd.remove_pod(pod)
    assert "Traceback" not in proc.stderr, proc.stderr
    results = {r["check"]: r for r in json.loads(report.read_text())["results"] if "web" in (r.get("entity") or "")}
    for check in ("rx", "drops"):
        r = results[check]
        assert r["outcome"] == "skip" and "shares the host's network namespace" in r["reason"], r


def test_interface_renamed_mid_window(veth_pair):
    a = veth_pair.a
    c, store = collector_in(a.proc)
    c.start()
    c.begin(time.monotonic())
    c.sample(1.0)
    new = "vchkrenamed"
    ip("link", "set", veth_pair.dev_a, "down", ns=a.name)
    ip("link", "set", veth_pair.dev_a, "name", new, ns=a.name)
    c.sample(2.0)
    c.sample(3.0)
    old = next(o for o in store.for_metric("net.rx.packets") if o.label_dict == {"interface": veth_pair.dev_a})
    assert old.gone_at == 2.0 and "renamed" in old.gone_reason
    assert any(new in n and "appeared" in n for n in store.collector_notes["guest.net"])
    renamed = next(o for o in store.for_metric("net.rx.packets") if o.label_dict == {"interface": new})
    assert len(renamed.values) == 1                      # counted from its next interval
