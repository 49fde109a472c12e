"""net.drops against real drops with a known reason and count: a UDP socket whose receive buffer
overflows in a namespace the test made, counted by nstat (UdpRcvbufErrors) in the same window.
Every test runs on each BPF path (CO-RE through libbpf, and bcc)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.rig.common import VCHECK, ProgramLedger
from tests.rig.net import UdpSink, nstat, run_under_bursts, udp_send
from vcheck import probes
from vcheck.collectors.base import CollectContext, CollectRequest
from vcheck.collectors.net_drops import NetDropsCollector
from vcheck.observations import ObservationStore
from vcheck.procfs import HostRoots

pytestmark = pytest.mark.rig


@pytest.fixture(params=probes.PATHS, autouse=True)
def bpf_path(request, monkeypatch) -> str:
    monkeypatch.setenv(probes.PATH_ENV, request.param)
    return request.param


class BpftraceDrops:
    """bpftrace as the reference: kfree_skb events of one reason in one namespace (its device's),
    counted from attach to stop."""

    def __init__(self, reason: int, netns: str):
        prog = (f"tracepoint:skb:kfree_skb /args->reason == {reason} && "
                f"((struct sk_buff *)args->skbaddr)->dev->nd_net.net->ns.inum == {netns}/ {{ @n = count(); }}")
        self.proc = subprocess.Popen(["bpftrace", "-e", prog], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()            # "Attaching 1 probe...": attached from here on
        if "Attaching" not in line:
            self.proc.kill()
            raise AssertionError(f"bpftrace did not start: {line}{self.proc.stderr.read()}")

    def stop(self) -> int:
        self.proc.send_signal(2)
        out, _ = self.proc.communicate(timeout=30)
        counts = [int(x.split(":")[1]) for x in out.splitlines() if x.startswith("@n:")]
        return counts[0] if counts else 0


def test_receive_buffer_overflow_is_counted_by_reason_namespace_and_owner(own_programs: ProgramLedger, veth_pair,
                                                                          bpf_path):
    a, b = veth_pair.a, veth_pair.b
    sink = UdpSink(b.name, veth_pair.addr_b, 5353)
    reference = BpftraceDrops(6, os.readlink(b.proc / "ns" / "net")[5:-1])   # 6: SOCKET_RCVBUFF
    store = ObservationStore()
    c = NetDropsCollector(CollectContext(HostRoots(), store), CollectRequest(frozenset({"net.drops"}), 3, 1))
    try:
        c.start()
        assert any(p.name == "vchk_kfree_skb" for p in own_programs.own(held_only=True))  # not other runs'
        ref0 = nstat(b.name)
        c.begin(time.monotonic())
        udp_send(a.name, veth_pair.addr_b, 5353, 400, size=1000)
        c.sample(1.0)
        ref1 = nstat(b.name)
        c.stop(1.2)
        queued = sink.drain()
    finally:
        c.close()
        sink.close()
        traced = reference.stop()
    dropped = ref1["UdpRcvbufErrors"] - ref0["UdpRcvbufErrors"]
    assert dropped > 0 and queued + dropped == 400
    assert traced == dropped                                          # bpftrace saw the same drops
    own_programs.assert_none_left()                                   # detached
    netns = os.readlink(b.proc / "ns" / "net")[5:-1] if bpf_path == "core" else "0"
    obs = {o.label_dict["reason"]: o for o in store.for_metric("net.drops")
           if o.label_dict.get("netns") == netns}
    rcvbuf = obs["SOCKET_RCVBUFF"]
    assert sum(rcvbuf.values) == dropped                              # exact, as the kernel counted
    assert rcvbuf.info["functions"].startswith("udp_queue_rcv_one_skb")   # the dropping function
    assert rcvbuf.info["normal"] == "no"
    node = next(o for o in store.for_metric("net.drops") if not o.labels)
    assert sum(node.values) >= dropped                                # counted by default
    top = next(e for e in node.events if e["reason"] == "SOCKET_RCVBUFF" and e["netns"] == netns)
    assert top["count"] == dropped
    if bpf_path == "core":
        assert b.name in rcvbuf.info["owner"]                         # the ip netns that keeps it
        assert str(sink.proc.pid) in rcvbuf.info["socket_owner"] or "python" in rcvbuf.info["socket_owner"]
        assert veth_pair.dev_b in rcvbuf.info["interfaces"]
    else:
        assert any("bcc" in n for n in node.notes)


def test_vcheck_run_fails_on_counted_drops_and_names_them(veth_pair, policy_file, tmp_path, bpf_path):
    policy = policy_file("policy: drops\ndefaults: {window: 3s, interval: 1s}\nchecks:\n"
                         "  - {id: drops, metric: net.drops, expect: 'sum == 0'}\n"
                         "  - {id: by-reason, metric: net.drops, per: [netns, reason],\n"
                         "     select: {reason: SOCKET_RCVBUFF}, expect: 'sum < 5'}\n")
    sink = UdpSink(veth_pair.b.name, veth_pair.addr_b, 5353)
    report = tmp_path / "r.json"
    try:
        run = run_under_bursts([*VCHECK, "run", str(policy), "--json", str(report)], tmp_path,
                               lambda: udp_send(veth_pair.a.name, veth_pair.addr_b, 5353, 100, size=1000))
        err = run.stderr
    finally:
        sink.close()
    assert "Traceback" not in err, err
    results = json.loads(report.read_text())["results"]
    node = next(r for r in results if r["check"] == "drops")
    assert node["outcome"] == "fail", node
    assert any(e["reason"] == "SOCKET_RCVBUFF" for e in node["entities"][0]["events"]), json.dumps(node)
    by_reason = [r for r in results if r["check"] == "by-reason"]
    assert by_reason and by_reason[0]["outcome"] == "fail", by_reason
    assert run.returncode == 1


def test_qdisc_drops_are_counted_as_tc_counts_them(veth_pair, bpf_path):
    """An htb class at 1 Mbit/s with a 5-packet pfifo: a burst of 200 datagrams overflows it;
    `tc -s qdisc` counts the drops, and so must net.drops under QDISC_DROP, in the sender's namespace."""
    from tests.rig.net import in_ns
    a, dev = veth_pair.a, veth_pair.dev_a
    for cmd in (["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10"],
                ["tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", "1mbit"],
                ["tc", "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "pfifo", "limit", "5"]):
        in_ns(a.name, *cmd)

    def tc_drops() -> int:
        qdiscs = json.loads(in_ns(a.name, "tc", "-s", "-j", "qdisc", "show", "dev", dev).stdout)
        return next(q["drops"] for q in qdiscs if q.get("kind") == "pfifo")

    store = ObservationStore()
    c = NetDropsCollector(CollectContext(HostRoots(), store), CollectRequest(frozenset({"net.drops"}), 3, 1))
    try:
        c.start()
        before = tc_drops()
        c.begin(time.monotonic())
        udp_send(a.name, veth_pair.addr_b, 9, 200, size=1000)
        c.sample(1.0)
        dropped = tc_drops() - before
        c.stop(1.2)
    finally:
        c.close()
    netns = os.readlink(a.proc / "ns" / "net")[5:-1] if bpf_path == "core" else "0"
    qdisc = next(o for o in store.for_metric("net.drops")
                 if o.label_dict == {"netns": netns, "reason": "QDISC_DROP"})
    assert dropped > 100 and sum(qdisc.values) == dropped
    assert qdisc.info["functions"].startswith("__dev_queue_xmit")


def test_a_drop_in_a_containers_namespace_names_the_container(veth_pair, bpf_path, monkeypatch, tmp_path):
    """A runc container with its own namespace: datagrams to a closed port in it are NO_SOCKET drops
    (normal life: filed, not counted), as many as its Udp NoPorts; datagrams it sends through a
    5-packet pfifo are QDISC_DROP drops, as many as tc counts, and container.net.drops counts them
    for the container."""
    from tests.rig.common import remove_cgroup_tree
    from tests.rig.net import start_runc, stop_runc, veth_into
    from vcheck.collectors.net import read_netns
    root = tmp_path / "runc"
    root.mkdir()
    own = start_runc(root, "vchk-dropper", own_netns=True)
    try:
        _, dev_c = veth_into(veth_pair.a, own.pid)
        enter = ["nsenter", "-t", str(own.pid), "-n"]
        for cmd in (["tc", "qdisc", "add", "dev", dev_c, "root", "handle", "1:", "htb", "default", "10"],
                    ["tc", "class", "add", "dev", dev_c, "parent", "1:", "classid", "1:10", "htb", "rate", "1mbit"],
                    ["tc", "qdisc", "add", "dev", dev_c, "parent", "1:10", "handle", "10:", "pfifo", "limit", "5"]):
            subprocess.run(enter + cmd, check=True)

        def tc_drops() -> int:
            out = subprocess.run(enter + ["tc", "-s", "-j", "qdisc", "show", "dev", dev_c], capture_output=True,
                                 text=True, check=True).stdout
            return next(q["drops"] for q in json.loads(out) if q.get("kind") == "pfifo")

        monkeypatch.setenv("VCHECK_RUNC_ROOT", str(own.state))
        monkeypatch.setenv("VCHECK_CRI_SOCKETS", "")
        netdir = Path(f"/proc/{own.pid}/net")
        store = ObservationStore()
        c = NetDropsCollector(CollectContext(HostRoots(), store),
                              CollectRequest(frozenset({"net.drops", "container.net.drops"}), 3, 1))
        c.start()
        before, tc0 = read_netns(netdir).get("Udp", "NoPorts"), tc_drops()
        c.begin(time.monotonic())
        udp_send(veth_pair.a.name, "10.79.0.2", 9, 50, size=100)
        subprocess.run(enter + [sys.executable, "-c", "import socket; s = socket.socket(socket.AF_INET, "
                                "socket.SOCK_DGRAM)\nfor _ in range(200): s.sendto(b'x' * 1000, ('10.79.0.1', 9))"],
                       check=True)
        c.sample(1.0)
        no_ports, qdisc_dropped = read_netns(netdir).get("Udp", "NoPorts") - before, tc_drops() - tc0
        netns = os.readlink(f"/proc/{own.pid}/ns/net")[5:-1] if bpf_path == "core" else "0"
        c.stop(1.2)
    finally:
        stop_runc(own)
        remove_cgroup_tree("vcheck-rig")
    by_reason = {o.label_dict["reason"]: o for o in store.for_metric("net.drops")
                 if o.label_dict.get("netns") == netns}
    o = by_reason["NO_SOCKET"]
    assert no_ports == 50 and qdisc_dropped > 100
    assert o.info["normal"] == "yes"
    mine = [o for o in store.for_metric("container.net.drops") if o.label_dict.get("container") == "vchk-dropper"]
    if bpf_path == "core":
        assert sum(o.values) == 50 and sum(by_reason["QDISC_DROP"].values) == qdisc_dropped
        assert "container" in o.info["owner"] and "vchk-dropper" in o.info["owner"], o.info
        # the pod's own figure: the counted drops (QDISC_DROP), not the normal ones (NO_SOCKET)
        assert len(mine) == 1 and sum(mine[0].values) == qdisc_dropped
        assert {e["reason"] for e in mine[0].events} >= {"QDISC_DROP", "NO_SOCKET"}
    else:                       # every namespace is netns 0 on this path: no container is matched
        assert sum(o.values) >= 50 and "not readable on this BPF path" in o.info["owner"]
        assert len(mine) == 1 and not mine[0].values and "no drop can be attributed" in mine[0].blind
