"""TCP retransmissions per flow and smoothed RTT per network namespace (BPF, bpf/tcp_latency.c).

* ``net.tcp.retransmits`` {netns}: segments retransmitted per interval, from
  tcp:tcp_retransmit_skb; the node figure {} sums every namespace. Evidence: the flows that
  retransmitted (local and remote endpoint), the namespace's owner and the socket's owner
  (the event runs in softirq: the task on the CPU is not the owner, the socket's holder is).
* ``net.tcp.rtt`` {netns}: the smoothed RTT (srtt) of every segment received on an
  established socket, from tcp:tcp_probe, in the same log-linear histograms as block latency
  (so per container, through its namespace); the slowest flows (largest srtt) as outliers with
  process, container and endpoint.

A kernel without either tracepoint makes its metric inconclusive, never a pass.
"""
from __future__ import annotations

import ipaddress
import os
import platform
import re

from ..histogram import Histogram
from ..identity import Resolver
from ..model import MetricSpec
from ..probes import Attach, BpfProgram, ensure_tracefs, tracefs_root
from ..units import COUNT, TIME
from .base import Collector, Needs
from .net_drops import NamespaceOwners, netns_inode

TCP_TRACEPOINTS = (
    Attach("tcp", "tcp_retransmit_skb", "vchk_tcp_retransmit", optional=True, raw_core=True),
    Attach("tcp", "tcp_probe", "vchk_tcp_probe", optional=True, raw_core=True),
)
RETRANS_ERR_FLAGS = ("-DVCHK_RETRANS_ERR",)   # the variant that reads tcp_retransmit_skb's err argument


def retransmit_flags() -> tuple[str, ...]:
    """The variant for this kernel: its tcp_retransmit_skb passes err (the record has the field)."""
    root = tracefs_root()
    try:
        fmt = (root / "events" / "tcp" / "tcp_retransmit_skb" / "format").read_text() if root else ""
    except OSError:
        fmt = ""
    return RETRANS_ERR_FLAGS if re.search(r"field:int err;", fmt) else ()
SLOWEST_FLOWS = 10
RETRANSMITTING_FLOWS = 20

TCP_METRICS = (
    MetricSpec(name="net.tcp.retransmits", layer="guest", dimension=COUNT, kind="series", labels=("netns",),
               discoverable=(), entity="netns", natural_stat="sum", attributes=("owner",),
               source="BPF tcp:tcp_retransmit_skb per flow (bpf/tcp_latency.c)",
               description="TCP segments retransmitted per interval, per network namespace (node: all); "
                           "evidence: the flows, their remote endpoints and the sockets' owners"),
    MetricSpec(name="net.tcp.rtt", layer="guest", dimension=TIME, kind="distribution", labels=("netns",),
               discoverable=(), entity="netns", natural_stat="p99", attributes=("owner",),
               source="BPF tcp:tcp_probe srtt per received segment (bpf/tcp_latency.c)",
               description="smoothed round-trip time of established TCP connections, one value per segment "
                           "received, per network namespace; the slowest flows are the evidence"),
)


def endpoint(family: int, addr: bytes, port: int) -> str:
    try:
        ip = ipaddress.IPv4Address(addr[:4]) if family == 2 else ipaddress.IPv6Address(addr[:16])
    except ValueError:
        return f"?:{port}"
    return f"{ip}:{port}" if family == 2 else f"[{ip}]:{port}"


def flow_text(f) -> tuple[str, str]:
    """(local, remote) of a struct flow."""
    return (endpoint(int(f.family), bytes(f.saddr), int(f.sport)),
            endpoint(int(f.family), bytes(f.daddr), int(f.dport)))


class TcpLatencyCollector(Collector):
    name = "guest.net.tcp.bpf"
    METRICS = TCP_METRICS
    NEEDS = Needs(program=("tcp_latency.c", TCP_TRACEPOINTS, ()), what="net.tcp.retransmits, net.tcp.rtt (BPF)")

    def start(self) -> None:
        self._prog: BpfProgram | None = None
        self._prev: dict[tuple, int] = {}
        self._flows: dict[tuple, dict] = {}
        self._seen_ns: set[str] = set()
        self._sockets: dict[tuple[str, int], str] = {}
        self._prev_t = 0.0
        ensure_tracefs()
        self._prog = prog = BpfProgram("tcp_latency.c", TCP_TRACEPOINTS, retransmit_flags(),
                                       cost_sink=self.store.bpf_cost).load()
        for n in prog.notes:
            self.store.note(self.name, n)
        attached = set(prog.attached)
        self._blind = {m: f"{tp} does not exist on kernel {platform.release()}: {what}"
                       for m, tp, what in (("net.tcp.retransmits", "tcp:tcp_retransmit_skb", "retransmissions cannot be attributed"),
                                           ("net.tcp.rtt", "tcp:tcp_probe", "no RTT sample can be taken"))
                       if tp not in attached}
        for m, why in self._blind.items():
            self.store.mark_unavailable([m], why)     # per-namespace items say why
        try:
            host = netns_inode(os.readlink(self.roots.proc / "1" / "ns" / "net"))
        except OSError:
            host = netns_inode(os.readlink("/proc/self/ns/net"))
        self._host = host
        self._owners = NamespaceOwners(self.roots, Resolver(self.roots), host)

    def begin(self, t0: float) -> None:
        if self._prog is not None:
            self._prog.clear("retrans", "hist", "stats", "flows", "counters")
        self._prev, self._flows, self._sockets, self._prev_t = {}, {}, {}, 0.0

    def _netns(self, n: int) -> str:
        return str(n) if n else "0"

    def _socket_owner(self, ns: str, ino: int) -> str:
        """As _name_sockets found it while the window ran."""
        if not ino:
            return ""
        return self._sockets.get((ns, ino), f"socket inode {ino} (no process held it when vcheck looked)")

    def _name_sockets(self) -> None:
        """Each interval, the sockets of the flows evidence will show (the most retransmitting,
        the slowest) are named while their processes live: a short connection's process is gone
        by the end of the window. One pass over each namespace's fds names them all."""
        want: dict[str, set[int]] = {}
        top = sorted((r for r in self._flows.values() if r["count"]), key=lambda r: -r["count"])
        for r in top[:RETRANSMITTING_FLOWS]:
            want.setdefault(r["netns"], set()).add(r["sock_ino"])
        if self._prog is not None and "net.tcp.rtt" in self.request.metrics and "net.tcp.rtt" not in self._blind:
            flows = sorted((v for _, v in self._prog["flows"].items()), key=lambda v: -int(v.max_srtt_us))
            for v in flows[:SLOWEST_FLOWS * 2]:
                want.setdefault(self._netns(int(v.f.netns)), set()).add(int(v.sock_ino))
        for ns, inos in want.items():
            missing = {i for i in inos if i and (ns, i) not in self._sockets}
            if missing:
                for ino, who in self._owners.socket_owners(ns, missing).items():
                    if not who.endswith("(no process holds it now)"):
                        self._sockets[(ns, ino)] = who      # a socket nobody holds yet is tried again

    def sample(self, t: float) -> None:
        self._sample_retransmits(t)
        self._name_sockets()

    def _sample_retransmits(self, t: float) -> None:
        if self._prog is None or "net.tcp.retransmits" not in self.request.metrics:
            return
        span, self._prev_t = t - self._prev_t, t
        if "net.tcp.retransmits" in self._blind:
            self.store.series("net.tcp.retransmits", {}).blind = self._blind["net.tcp.retransmits"]
            return
        per_ns: dict[str, int] = {ns: 0 for ns in self._seen_ns}
        for f, v in self._prog["retrans"].items():
            key = (int(f.netns), int(f.family), bytes(f.saddr), bytes(f.daddr), int(f.sport), int(f.dport))
            count = int(v.count)
            d = max(count - self._prev.get(key, 0), 0)
            self._prev[key] = count
            ns = self._netns(int(f.netns))
            per_ns[ns] = per_ns.get(ns, 0) + d
            self._seen_ns.add(ns)
            row = self._flows.get(key)
            if row is None:
                local, remote = flow_text(f)
                row = self._flows[key] = {"netns": ns, "local": local, "remote": remote, "count": 0,
                                          "sock_ino": 0}
            row["count"] += d
            row["sock_ino"] = int(v.sock_ino) or row["sock_ino"]
        for ns, d in per_ns.items():
            self.store.add_sample("net.tcp.retransmits", {"netns": ns}, t, float(d), span,
                                  {"owner": self._owners.owner(ns)})
        self.store.add_sample("net.tcp.retransmits", {}, t, float(sum(per_ns.values())), span)

    def stop(self, t: float) -> None:
        prog = self._prog
        if prog is None:
            return
        # the pollers took the window's last sample; only a window cut short (SIGTERM, a
        # collector sampled by hand) leaves more than half an interval to read
        if t - self._prev_t >= self.request.interval / 2:
            self.sample(t)
        else:
            self._name_sockets()
        counters = prog.counters()
        if "net.tcp.retransmits" in self.request.metrics and "net.tcp.retransmits" not in self._blind:
            rows = sorted((r for r in self._flows.values() if r["count"]), key=lambda r: -r["count"])
            node = self.store.series("net.tcp.retransmits", {})
            node.events = [self._flow_event(r) for r in rows[:RETRANSMITTING_FLOWS]]
            for ns in self._seen_ns:
                o = self.store.series("net.tcp.retransmits", {"netns": ns})
                o.events = [e for e in node.events if e["netns"] == ns]
            if prog.path == "bcc":
                node.notes.append("loaded through bcc: retransmitted packets are counted (a TSO packet of "
                                  "several segments once) and the namespace is not read (netns 0)")
            if counters.get("retrans_failed"):
                node.notes.append(f"{counters['retrans_failed']} retransmissions the kernel could not send "
                                  "were not counted (as /proc/net/snmp RetransSegs)")
        if "net.tcp.rtt" in self.request.metrics:
            self._file_rtt(prog, counters)
        self.close()

    def _flow_event(self, r: dict) -> dict:
        ev = {"netns": r["netns"], "local": r["local"], "remote": r["remote"], "count": r["count"],
              "owner": self._owners.owner(r["netns"])}
        if r.get("sock_ino"):
            ev["socket_owner"] = self._socket_owner(r["netns"], r["sock_ino"])
        return ev

    def _file_rtt(self, prog: BpfProgram, counters: dict[str, int]) -> None:
        if "net.tcp.rtt" in self._blind:
            o = self.store.set_histogram("net.tcp.rtt", {}, Histogram(scale=1e-9))
            o.blind = self._blind["net.tcp.rtt"]
            return
        hists = prog.histograms(lambda k: self._netns(int(k.netns)))
        slow = sorted(((int(v.max_srtt_us), k, v) for k, v in prog["flows"].items()), key=lambda x: -x[0])
        events: dict[str, list[dict]] = {}
        for srtt, _, v in slow:
            ns = self._netns(int(v.f.netns))
            if len(events.setdefault(ns, [])) >= SLOWEST_FLOWS:
                continue
            local, remote = flow_text(v.f)
            ev = {"netns": ns, "local": local, "remote": remote, "latency": srtt / 1e6,
                  "last_srtt": int(v.last_srtt_us) / 1e6, "samples": int(v.samples), "owner": self._owners.owner(ns)}
            if int(v.sock_ino):
                ev["socket_owner"] = self._socket_owner(ns, int(v.sock_ino))
            events[ns].append(ev)
        notes = []
        if counters.get("flows_full"):
            notes.append(f"{counters['flows_full']} segments of flows beyond the flow table were counted in the "
                         "histogram but not as flows")
        if prog.path == "bcc":
            notes.append("loaded through bcc: the namespace is not read on this path (netns 0)")
        for ns, h in hists.items():
            o = self.store.set_histogram("net.tcp.rtt", {"netns": ns}, h,
                                         {"owner": self._owners.owner(ns),
                                          "source": "BPF tcp:tcp_probe srtt"})
            o.events = events.get(ns, [])
            o.notes.extend(notes)
        if not hists:
            ns = self._host if prog.path == "core" else "0"
            o = self.store.set_histogram("net.tcp.rtt", {"netns": ns}, Histogram(scale=1e-9),
                                         {"owner": self._owners.owner(ns)})
            o.notes.append("no TCP segment was received on an established connection in the window")

    def close(self) -> None:
        prog, self._prog = getattr(self, "_prog", None), None
        if prog is not None:
            prog.close()
