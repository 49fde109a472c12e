"""Packets the kernel dropped, by its own reason, per network namespace (BPF, bpf/net_drops.c).

skb:kfree_skb names why (``enum skb_drop_reason``, 5.17+) and where (the dropping function).
The program counts per (namespace, reason, function) in the kernel; this collector reads the
counts once per interval and files:

* ``net.drops`` {netns, reason}: drops per interval, with the reason's kernel name (a code
  this vcheck does not know is reported by number, ``reason 131``), the functions and the
  interface that dropped, and the namespace's owner (the host, a container, a VM, the
  processes in it, or the ``ip netns`` name that keeps it), plus the socket's owner where a
  socket was involved, all through identity.py;
* ``net.drops`` {} (node): the drops a check counts by default per interval: every reason but
  the normal-life ones below, with the largest (namespace, reason, function) as evidence.

Normal life (``NORMAL_REASONS``), filed but left out of the node figure, and marked
``normal: yes`` for select:. Each is a packet the kernel was right to throw away on a healthy
node: NOT_SPECIFIED (older paths that never say why, many of them not drops at all),
NO_SOCKET (a packet for a port nobody listens on: scans, late replies), SOCKET_CLOSE and
UNIX_DISCONNECT (data a closing socket never read), SOCKET_FILTER (a packet socket's filter,
tcpdump's), OTHERHOST (a frame for another host's MAC seen in promiscuous mode),
IPV6DISABLED, UNHANDLED_PROTO and IP_NOPROTO (protocols nobody here speaks: LLDP, STP),
QUEUE_PURGE and TCP_CLOSE (queues emptied as a socket or device goes away).

A kernel whose skb:kfree_skb has no reason field (before 5.17) makes every net.drops check
inconclusive, never a pass.
"""
from __future__ import annotations

import bisect
import os
from array import array
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..identity import Resolver
from ..model import MetricSpec
from ..probes import Attach, BpfProgram, ensure_tracefs, tracefs_root
from ..procfs import HostRoots, read_text
from ..units import COUNT
from .base import Collector, Needs

NORMAL_REASONS = frozenset({"NOT_SPECIFIED", "NO_SOCKET", "SOCKET_CLOSE", "UNIX_DISCONNECT", "SOCKET_FILTER",
                            "OTHERHOST", "IPV6DISABLED", "UNHANDLED_PROTO", "IP_NOPROTO", "QUEUE_PURGE",
                            "TCP_CLOSE"})
DROPS_TRACEPOINTS = (Attach("skb", "kfree_skb", "vchk_kfree_skb", raw_core=True),)
RX_SK_FLAGS = ("-DVCHK_RX_SK",)   # the variant that reads kfree_skb's rx_sk argument (6.12+)
EVIDENCE_KEPT = 20      # (namespace, reason, function) rows in the node figure's evidence

CONTAINER_DROPS = MetricSpec(
    name="container.net.drops", layer="container", dimension=COUNT, kind="series",
    labels=("namespace", "pod", "container"), entity="container", natural_stat="sum",
    attributes=("id", "image", "runtime", "label.*", "netns"),
    source="BPF skb:kfree_skb in the container's network namespace (bpf/net_drops.c)",
    description="packets the kernel dropped per interval in the container's own network namespace, "
                "normal-life reasons left out; evidence: the reasons, functions, interfaces and sockets "
                "(hostNetwork containers: see net.drops)")

DROPS_METRICS = (
    CONTAINER_DROPS,
    MetricSpec(name="net.drops", layer="guest", dimension=COUNT, kind="series", labels=("netns", "reason"),
               discoverable=(), entity="netns", natural_stat="sum", attributes=("owner", "normal"),
               source="BPF skb:kfree_skb counted per (netns, reason, function) (bpf/net_drops.c)",
               description="packets the kernel dropped per interval, by its own reason (SOCKET_RCVBUFF, "
                           "QDISC_DROP, NETFILTER_DROP...) and network namespace; the node figure "
                           "leaves out normal-life reasons (NOT_SPECIFIED, NO_SOCKET... see "
                           "docs/network.md); evidence names the function, interface and owner"),
)

_SYMBOL = re.compile(r"\{\s*(-?(?:0x[0-9a-fA-F]+|\d+))\s*,\s*\"([^\"]+)\"\s*\}")


def parse_drop_reasons(format_text: str) -> dict[int, str]:
    """Reason code -> name from the kfree_skb format's print fmt (``__print_symbolic(REC->reason,
    { 2, "NOT_SPECIFIED" }, ...)``); empty when the record has no reason."""
    fmt = format_text[format_text.find("print fmt:"):]
    at = fmt.find("REC->reason")
    return {int(v, 0): name for v, name in _SYMBOL.findall(fmt[at:])} if at >= 0 else {}


def has_reason_field(format_text: str) -> bool:
    return re.search(r"field:[^;]*\breason;", format_text) is not None


def has_rx_sk(format_text: str) -> bool:
    """kfree_skb passes the receiving socket (6.12+): the raw hook may read a fourth argument."""
    return re.search(r"field:[^;]*\brx_sk;", format_text) is not None


def reason_name(code: int, names: Mapping[int, str]) -> str:
    """The kernel's name, or 'reason N' for a code this kernel's table (or vcheck) lacks; the
    high 16 bits name a subsystem's own reasons (mac80211, openvswitch)."""
    if code in names:
        return names[code]
    sub = code >> 16
    return f"reason {code}" if not sub else f"subsystem {sub} reason {code & 0xFFFF}"


class Kallsyms:
    """Kernel text addresses -> 'function+0xoff', read once on first use (root sees addresses).

    /proc/kallsyms holds ~100k+ text symbols: they are kept as an address array and one blob
    of names (a few MB), not as Python tuples (which cost ~40 MB at peak)."""

    def __init__(self, proc: Path):
        self._proc = proc
        self._addrs: array | None = None
        self._ends = array("I")
        self._blob = bytearray()

    def _load(self) -> None:
        addrs, ends, blob = array("Q"), array("I"), bytearray()
        ordered = True
        try:
            with open(self._proc / "kallsyms", "rb") as f:
                for line in f:
                    parts = line.split(None, 3)
                    if len(parts) < 3 or parts[1] not in (b"t", b"T"):
                        continue
                    a = int(parts[0], 16)
                    if not a:
                        continue
                    if addrs and a < addrs[-1]:
                        ordered = False          # modules follow the core kernel
                    addrs.append(a)
                    blob += parts[2]
                    ends.append(len(blob))
        except OSError:
            pass
        if not ordered:
            order = sorted(range(len(addrs)), key=addrs.__getitem__)
            starts = [0] + list(ends[:-1])
            names = [bytes(blob[starts[i]:ends[i]]) for i in order]
            addrs = array("Q", (addrs[i] for i in order))
            blob, ends = bytearray(), array("I")
            for n in names:
                blob += n
                ends.append(len(blob))
        self._addrs, self._ends, self._blob = addrs, ends, blob

    def name(self, addr: int) -> str:
        if self._addrs is None:
            self._load()
        assert self._addrs is not None
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or not addr:
            return f"{addr:#x}"
        start = self._ends[i - 1] if i else 0
        name = self._blob[start:self._ends[i]].decode("utf-8", "replace")
        return f"{name}+{addr - self._addrs[i]:#x}"


def netns_inode(link: str) -> str:
    """'net:[4026531840]' -> '4026531840'."""
    return link[link.find("[") + 1: link.rfind("]")] if "[" in link else link


@dataclass
class NamespaceOwners:
    """Who a network namespace belongs to, as evidence says it."""

    roots: HostRoots
    resolver: Resolver
    host: str = ""
    _members: dict[str, list[int]] | None = None
    _cache: dict[str, str] = field(default_factory=dict)

    def _scan(self) -> dict[str, list[int]]:
        members: dict[str, list[int]] = {}
        for d in os.scandir(self.roots.proc):
            if not d.name.isdigit():
                continue
            try:
                members.setdefault(netns_inode(os.readlink(f"{d.path}/ns/net")), []).append(int(d.name))
            except OSError:
                continue
        return members

    def members(self, netns: str) -> list[int]:
        if self._members is None or netns not in self._members:
            self._members = self._scan()
        return self._members.get(netns, [])

    def owner(self, netns: str) -> str:
        if netns not in self._cache:
            try:
                self._cache[netns] = self._owner(netns)
            except Exception as exc:   # evidence must not cost the counts themselves
                self._cache[netns] = f"unresolved ({exc.__class__.__name__})"
        return self._cache[netns]

    def _owner(self, netns: str) -> str:
        if netns == "0":
            return "unknown (the namespace was not readable on this BPF path)"
        if netns == self.host:
            return "the host"
        pids = sorted(self.members(netns))
        named = _ip_netns_name(self.roots, netns)
        if not pids:
            return f"ip netns {named} (no process in it)" if named else "no process (the namespace is gone)"
        ids = [self.resolver.resolve(p) for p in pids[:50]]
        for kind in ("container", "vm"):
            hit = next((i for i in ids if i.kind == kind), None)
            if hit is not None:
                return hit.owner
        first = ids[0]
        more = f" and {len(pids) - 1} more" if len(pids) > 1 else ""
        return (f"ip netns {named}: " if named else "") + first.describe() + more

    def socket_owners(self, netns: str, inos: set[int]) -> dict[int, str]:
        """The processes holding these socket inodes, found in one pass over the fds of the
        namespace's processes (stopping when all are found); a socket nobody holds says so."""
        want = {f"socket:[{i}]": i for i in inos if i}
        found: dict[int, str] = {}
        for pid in self.members(netns) if want else []:
            try:
                for fd in os.scandir(self.roots.proc / str(pid) / "fd"):
                    ino = want.pop(os.readlink(fd.path), None)
                    if ino is not None:
                        found[ino] = self._describe(pid)
            except OSError:
                continue
            if not want:
                break
        found.update({i: f"socket inode {i} (no process holds it now)" for i in want.values()})
        return found

    def _describe(self, pid: int) -> str:
        try:
            return self.resolver.resolve(pid).describe()
        except Exception as exc:   # evidence must not cost the counts themselves
            return f"pid {pid} (unresolved: {exc.__class__.__name__})"

    def socket_owner(self, netns: str, ino: int) -> str:
        """The process holding socket inode `ino`, looked for among the namespace's processes."""
        return self.socket_owners(netns, {ino}).get(ino, "") if ino else ""


def _ip_netns_name(roots: HostRoots, netns: str) -> str:
    """The `ip netns` name bind-mounted on this namespace, if any."""
    try:
        for d in os.scandir(roots.run / "netns"):
            try:
                if str(os.stat(d.path).st_ino) == netns:
                    return d.name
            except OSError:
                continue
    except OSError:
        pass
    return ""


def read_kfree_skb_format() -> str | None:
    root = tracefs_root()
    if root is None:
        return None
    try:
        return (root / "events" / "skb" / "kfree_skb" / "format").read_text()
    except OSError:
        return None


class NetDropsCollector(Collector):
    name = "guest.net.drops"
    METRICS = DROPS_METRICS
    NEEDS = Needs(program=("net_drops.c", DROPS_TRACEPOINTS, ()), what="net.drops (BPF)")

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        if metric == CONTAINER_DROPS.name:
            from .containers.collector import ContainerCollector
            return ContainerCollector.discover(roots, metric)
        return []

    def _find_containers(self, host: str) -> None:
        """netns -> the containers in it, for container.net.drops; hostNetwork ones are said to be."""
        from .containers.discovery import discover_containers, namespace_ids
        self._containers: dict[str, list[tuple[dict[str, str], dict[str, str]]]] = {}
        if CONTAINER_DROPS.name not in self.request.metrics:
            return
        containers, notes = discover_containers(self.roots)
        for n in notes:
            self.store.note(self.name, n)
        for c in containers:
            try:
                netns = netns_inode(namespace_ids(self.roots, c.pid).get("net", ""))
            except OSError:
                continue
            info = {"id": c.id, "image": c.image, "runtime": c.runtime, "netns": netns,
                    **{f"label.{k}": v for k, v in c.labels.items()}}
            if netns == host:
                o = self.store.series(CONTAINER_DROPS.name, c.identity, info)
                o.notes.append(f"container {c.name} shares the host's network namespace (hostNetwork): its "
                               "drops are the node's net.drops, not repeated here")
                continue
            self._containers.setdefault(netns, []).append((c.identity, info))

    def start(self) -> None:
        self._prog: BpfProgram | None = None
        self._containers = {}
        self._blind = ""
        self._prev: dict[tuple, int] = {}
        self._prev_t = 0.0
        self._rows: dict[tuple[str, str], dict] = {}     # (netns, reason) -> evidence
        ensure_tracefs()
        fmt = read_kfree_skb_format()
        if fmt is not None and not has_reason_field(fmt):
            # nothing to load: every net.drops check is inconclusive, never a pass
            self._blind = (f"skb:kfree_skb on kernel {platform.release()} has no reason field (added in "
                           "5.17): drops cannot be told apart by reason")
            self.store.mark_unavailable(self.request.metrics, self._blind)   # per-namespace items say why
            return
        cflags = RX_SK_FLAGS if fmt is not None and has_rx_sk(fmt) else ()
        self._prog = prog = BpfProgram("net_drops.c", DROPS_TRACEPOINTS, cflags,
                                       cost_sink=self.store.bpf_cost).load()
        for n in prog.notes:
            self.store.note(self.name, n)
        self._names = parse_drop_reasons(fmt or read_kfree_skb_format() or "")
        self._kallsyms = Kallsyms(self.roots.proc)
        resolver = Resolver(self.roots)
        try:
            host = netns_inode(os.readlink(self.roots.proc / "1" / "ns" / "net"))
        except OSError:
            host = netns_inode(os.readlink("/proc/self/ns/net"))
        self._owners = NamespaceOwners(self.roots, resolver, host)
        self._find_containers(host)
        if prog.path == "bcc" and self._containers:
            # no namespace on this path: a container's drops cannot be told from the host's, and
            # zeros would read as a pass
            why = ("loaded through bcc (no kernel BTF): the namespace of a drop is not read, so no drop can "
                   "be attributed to a container")
            for members in self._containers.values():
                for identity, info in members:
                    self.store.series(CONTAINER_DROPS.name, identity, info).blind = why
            self._containers = {}

    def begin(self, t0: float) -> None:
        if self._prog is not None:
            self._prog.clear("drops", "counters")
        self._prev = {}
        self._prev_t = 0.0

    def _read(self) -> dict[tuple, tuple[int, int, str]]:
        out = {}
        for k, v in self._prog["drops"].items():
            out[(int(k.netns), int(k.reason), int(k.location))] = (
                int(v.count), int(v.sock_ino), bytes(v.ifname).split(b"\0")[0].decode("utf-8", "replace"))
        return out

    def _file_blind(self) -> None:
        for m in self.request.metrics:
            self.store.series(m, {}).blind = self._blind

    def sample(self, t: float) -> None:
        if self._blind:
            self._file_blind()
            return
        if self._prog is None:
            return
        span = t - self._prev_t
        self._prev_t = t
        cur = self._read()
        per_key: dict[tuple[str, str], int] = {k: 0 for k in self._rows}
        counted = 0
        counted_in: dict[str, int] = {}
        for (netns, code, loc), (count, ino, ifname) in cur.items():
            d = count - self._prev.get((netns, code, loc), 0)
            if d < 0:
                d = count
            self._prev[(netns, code, loc)] = count
            reason = reason_name(code, self._names)
            key = (str(netns), reason)
            per_key[key] = per_key.get(key, 0) + d
            row = self._rows.get(key)
            if row is None:
                row = self._rows[key] = {"netns": key[0], "reason": reason, "code": code,
                                         "owner": self._owners.owner(key[0]), "functions": {},
                                         "interfaces": set(), "socket_owner": "", "count": 0}
            if d:
                fn = self._kallsyms.name(loc)
                row["functions"][fn] = row["functions"].get(fn, 0) + d
                row["count"] += d
                if ifname:
                    row["interfaces"].add(ifname)
                if ino and not row["socket_owner"]:
                    row["socket_owner"] = self._owners.socket_owner(key[0], ino)
            if reason not in NORMAL_REASONS:
                counted += d
                counted_in[key[0]] = counted_in.get(key[0], 0) + d
        if "net.drops" in self.request.metrics:
            for key, d in per_key.items():
                row = self._rows[key]
                self.store.add_sample("net.drops", {"netns": key[0], "reason": key[1]}, t, float(d), span,
                                      self._info(row))
            self.store.add_sample("net.drops", {}, t, float(counted), span,
                                  {"left_out": "normal-life reasons: " + ", ".join(sorted(NORMAL_REASONS))})
        for netns, members in self._containers.items():
            for identity, info in members:
                self.store.add_sample(CONTAINER_DROPS.name, identity, t, float(counted_in.get(netns, 0)), span, info)

    def _info(self, row: dict) -> dict[str, str]:
        fns = sorted(row["functions"].items(), key=lambda kv: -kv[1])
        info = {"owner": row["owner"], "normal": "yes" if row["reason"] in NORMAL_REASONS else "no",
                "reason_code": str(row["code"]),
                "functions": ", ".join(f"{fn} ({n})" for fn, n in fns[:5])}
        if row["interfaces"]:
            info["interfaces"] = ", ".join(sorted(row["interfaces"]))
        if row["socket_owner"]:
            info["socket_owner"] = row["socket_owner"]
        return info

    def stop(self, t: float) -> None:
        if self._blind:
            self._file_blind()
        if self._prog is None:
            return
        # the pollers took the window's last sample; only a window cut short (SIGTERM, a
        # collector sampled by hand) leaves more than half an interval to read
        if t - self._prev_t >= self.request.interval / 2:
            self.sample(t)
        counters = self._prog.counters()
        targets = [self.store.series("net.drops", {})] if "net.drops" in self.request.metrics else []
        targets += [self.store.series(CONTAINER_DROPS.name, identity)
                    for members in self._containers.values() for identity, _ in members]
        notes = []
        if counters.get("map_full"):
            notes.append(f"{counters['map_full']} drops were not counted: the (namespace, reason, "
                         "function) table was full")
        if self._prog.path == "bcc":
            notes.append("loaded through bcc: the namespace, interface and socket of a drop are not "
                         "read on this path (netns 0)")
        for o in targets:
            o.notes.extend(notes)
        rows = sorted((r for r in self._rows.values() if r["count"]), key=lambda r: -r["count"])
        events = [{"netns": r["netns"], "reason": r["reason"], "count": r["count"], "owner": r["owner"],
                   "normal": r["reason"] in NORMAL_REASONS,
                   "function": max(r["functions"], key=r["functions"].get) if r["functions"] else "",
                   "interfaces": sorted(r["interfaces"]), "socket_owner": r["socket_owner"]} for r in rows]
        if "net.drops" in self.request.metrics:
            self.store.series("net.drops", {}).events = events[:EVIDENCE_KEPT]
            for r in rows:
                o = self.store.series("net.drops", {"netns": r["netns"], "reason": r["reason"]})
                o.info.update(self._info(r))
        for netns, members in self._containers.items():
            mine = [e for e in events if e["netns"] == netns][:EVIDENCE_KEPT]
            for identity, _ in members:
                self.store.series(CONTAINER_DROPS.name, identity).events = mine
        self.close()

    def close(self) -> None:
        prog, self._prog = getattr(self, "_prog", None), None
        if prog is not None:
            prog.close()

    @property
    def polls(self) -> bool:
        return True
