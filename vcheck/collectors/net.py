"""Network counters per network namespace: interfaces, softnet, TCP and UDP, as the kernel
keeps them in /proc/net (the figures of ``sar -n DEV,EDEV,ETCP``, ``ip -s link`` and ``nstat``).

Two collectors read the same files through one reader (``read_netns``):

* ``NetCollector`` (``net.*``, guest layer): the node's own namespace, ``/proc/net`` as vcheck
  sees it, so vcheck must run in the host's network namespace (hostNetwork in a DaemonSet).
* ``ContainerNetCollector`` (``container.net.*``): each container's namespace through one of
  its processes, ``/proc/PID/net``, the view ``nsenter -n`` gives. A container that shares the
  host's namespace (a hostNetwork pod) has the node's figures: it is said so and not filed
  again, so a node-wide drop is never counted once per hostNetwork pod.

Counters are deltas between two reads divided by the time between the reads; the sample's
span is that same time, so rate x span over a window gives the counter's exact delta. A
counter that went backwards (an interface deleted and made again under its name) counts 0
for that interval and is noted.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..model import MetricSpec
from ..procfs import HostRoots, read_text
from ..units import BYTE_RATE, COUNT, PERCENT, RATE
from .base import Collector, Needs, Unavailable

# /proc/net/dev columns after "name:", in order
DEV_FIELDS = ("rx_bytes", "rx_packets", "rx_errs", "rx_drop", "rx_fifo", "rx_frame", "rx_compressed",
              "rx_multicast", "tx_bytes", "tx_packets", "tx_errs", "tx_drop", "tx_fifo", "tx_colls",
              "tx_carrier", "tx_compressed")


# --- parsing ------------------------------------------------------------------------------
def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/dev -> {interface: {field: count}}; the two header lines are skipped."""
    out = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep or "|" in line:
            continue
        values = rest.split()
        if len(values) < len(DEV_FIELDS) or not all(v.isdigit() for v in values):
            continue
        out[name.strip()] = dict(zip(DEV_FIELDS, (int(v) for v in values)))
    return out


@dataclass(frozen=True)
class SoftnetRow:
    processed: int
    dropped: int     # the CPU's input backlog was full (netdev_max_backlog)
    squeezed: int    # net_rx_action ran out of budget or time with work left


def parse_softnet(text: str) -> dict[int, SoftnetRow]:
    """/proc/net/softnet_stat: one hex row per online CPU. Where the kernel has it, the 13th
    column is the CPU's number (rows skip offline CPUs); older kernels are read in row order."""
    out = {}
    for i, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
        try:
            cols = [int(c, 16) for c in line.split()]
        except ValueError:
            continue
        if len(cols) < 3:
            continue
        cpu = cols[12] if len(cols) >= 13 else i
        out[cpu] = SoftnetRow(cols[0], cols[1], cols[2])
    return out


def parse_snmp(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/snmp and /proc/net/netstat: pairs of 'Proto: names' / 'Proto: values' lines ->
    {"Tcp": {"RetransSegs": n, ...}, "TcpExt": {...}}; a value that is not a number is left out."""
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        proto, _, n = names.partition(":")
        proto2, _, v = values.partition(":")
        if proto != proto2:
            continue
        group = out.setdefault(proto.strip(), {})
        for key, val in zip(n.split(), v.split()):
            try:
                group[key] = int(val)
            except ValueError:
                pass
    return out


@dataclass
class NetnsCounters:
    """One read of a namespace's /proc/.../net files."""

    mono: float
    devices: dict[str, dict[str, int]]
    proto: dict[str, dict[str, int]]                 # snmp and netstat merged
    softnet: dict[int, SoftnetRow] = field(default_factory=dict)

    def get(self, proto: str, key: str) -> int | None:
        return self.proto.get(proto, {}).get(key)


def read_netns(netdir: Path, softnet: bool = False) -> NetnsCounters:
    """The counters of the namespace whose net directory is netdir (/proc/net, /proc/PID/net).
    /proc/net/dev is required; snmp and netstat are read when present."""
    mono = time.monotonic()
    devices = parse_net_dev(read_text(netdir / "dev"))
    proto: dict[str, dict[str, int]] = {}
    for name in ("snmp", "netstat"):
        try:
            proto.update(parse_snmp(read_text(netdir / name)))
        except OSError:
            pass
    rows = parse_softnet(read_text(netdir / "softnet_stat")) if softnet else {}
    return NetnsCounters(mono, devices, proto, rows)


# --- figures ------------------------------------------------------------------------------
# metric suffix -> (/proc/net/dev field, dimension, what it is); as sar -n DEV,EDEV names them
INTERFACE_FIGURES: dict[str, tuple[str, str, str]] = {
    "rx.packets": ("rx_packets", RATE, "packets received per second (sar rxpck/s)"),
    "tx.packets": ("tx_packets", RATE, "packets sent per second (sar txpck/s)"),
    "rx.bytes": ("rx_bytes", BYTE_RATE, "bytes received per second (sar rxkB/s)"),
    "tx.bytes": ("tx_bytes", BYTE_RATE, "bytes sent per second (sar txkB/s)"),
    "rx.errors": ("rx_errs", RATE, "receive errors per second (sar rxerr/s)"),
    "tx.errors": ("tx_errs", RATE, "transmit errors per second (sar txerr/s)"),
    "rx.drops": ("rx_drop", RATE, "received packets dropped per second (sar rxdrop/s): no buffer "
                                  "space, or on some drivers a protocol the host does not speak"),
    "tx.drops": ("tx_drop", RATE, "packets dropped on transmit per second (sar txdrop/s)"),
}

# an interval that sent fewer segments gives no retransmit share: 1 retransmission of 3
# segments is not "33 % loss" (METRICS.md: judge a count and a share together)
MIN_SEGMENTS_FOR_SHARE = 100

# metric suffix -> (proto, counter, dimension, natural stat, what it is); per-interval counts
# are COUNT (natural: sum over the window), per-second figures RATE
PROTO_FIGURES: dict[str, tuple[str, str, str, str, str]] = {
    "tcp.retrans_segs": ("Tcp", "RetransSegs", RATE, "max",
                         "TCP segments retransmitted per second (sar retrans/s)"),
    "tcp.listen_overflows": ("TcpExt", "ListenOverflows", COUNT, "sum",
                             "connections refused because a listen queue was full, per interval"),
    "tcp.listen_drops": ("TcpExt", "ListenDrops", COUNT, "sum",
                         "SYNs and connections dropped at listen, overflows included, per interval"),
    "tcp.resets_sent": ("Tcp", "OutRsts", RATE, "max", "TCP resets sent per second (nstat TcpOutRsts)"),
    "tcp.estab_resets": ("Tcp", "EstabResets", RATE, "max",
                         "established connections reset per second (sar estres/s)"),
    "udp.rcvbuf_errors": ("Udp", "RcvbufErrors", COUNT, "sum",
                          "UDP datagrams dropped because a socket's receive buffer was full, per interval"),
}


def delta(a: Mapping[str, int] | None, b: Mapping[str, int] | None, key: str) -> int | None:
    """b[key] - a[key], 0 for a counter that went backwards, None when either is missing."""
    if a is None or b is None or key not in a or key not in b:
        return None
    return max(b[key] - a[key], 0)


def went_backwards(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    return any(b.get(k, 0) < v for k, v in a.items())


def interface_figures(a: Mapping[str, int], b: Mapping[str, int], wall: float) -> dict[str, float]:
    return {suffix: delta(a, b, f) / wall for suffix, (f, _, _) in INTERFACE_FIGURES.items()}


def proto_figures(a: NetnsCounters, b: NetnsCounters, wall: float) -> dict[str, float]:
    """Per-interval TCP/UDP figures; the retransmit share only when segments were sent
    (sar -n ETCP's retrans/s over oseg/s: Linux counts a retransmission in OutSegs too)."""
    out: dict[str, float] = {}
    for suffix, (proto, key, dim, _, _) in PROTO_FIGURES.items():
        d = delta(a.proto.get(proto), b.proto.get(proto), key)
        if d is not None:
            out[suffix] = d / wall if dim == RATE else float(d)
    sent = delta(a.proto.get("Tcp"), b.proto.get("Tcp"), "OutSegs")
    retrans = delta(a.proto.get("Tcp"), b.proto.get("Tcp"), "RetransSegs")
    if sent is not None and sent >= MIN_SEGMENTS_FOR_SHARE and retrans is not None:
        out["tcp.retrans_share"] = min(100.0 * retrans / sent, 100.0)
    return out


def segments_sent(a: NetnsCounters, b: NetnsCounters) -> int:
    """What a retransmit-share sample stands for: the window's mean is segment-weighted."""
    return delta(a.proto.get("Tcp"), b.proto.get("Tcp"), "OutSegs") or 0


def _specs(prefix: str, layer: str, labels: tuple[str, ...], entity: str, where: str,
           discoverable: tuple[str, ...] | None, attributes: tuple[str, ...] = ()) -> tuple[MetricSpec, ...]:
    specs = [MetricSpec(name=f"{prefix}.{s}", layer=layer, dimension=dim, kind="series",
                        labels=labels + ("interface",), discoverable=discoverable, entity=entity,
                        natural_stat="max", source=f"{where}/dev deltas (as sar -n DEV,EDEV)", description=desc,
                        attributes=attributes)
             for s, (_, dim, desc) in INTERFACE_FIGURES.items()]
    plain = dict(layer=layer, labels=labels, entity=entity if labels else "node", attributes=attributes)
    specs += [MetricSpec(name=f"{prefix}.{s}", dimension=dim, kind="series", natural_stat=nat,
                         source=f"{where}/{'netstat' if proto == 'TcpExt' else 'snmp'} {proto} {key} deltas (as nstat)",
                         description=desc, **plain)
              for s, (proto, key, dim, nat, desc) in PROTO_FIGURES.items()]
    specs.append(MetricSpec(name=f"{prefix}.tcp.retrans_share", dimension=PERCENT, kind="series",
                            natural_stat="max", sparse=True,
                            source=f"{where}/snmp Tcp RetransSegs / OutSegs per interval (as sar -n ETCP)",
                            description="share of TCP segments sent that were retransmissions; an "
                                        f"interval that sent fewer than {MIN_SEGMENTS_FOR_SHARE} segments "
                                        "has no value (a few segments make a noisy share); the mean is "
                                        "weighted by segments sent", **plain))
    return tuple(specs)


NODE_METRICS = _specs("net", "guest", (), "interface", "/proc/net", discoverable=("interface",)) + (
    MetricSpec(name="net.softnet.drops", layer="guest", dimension=RATE, kind="series", labels=("cpu",),
               entity="cpu", natural_stat="max", source="/proc/net/softnet_stat column 2 deltas",
               description="packets a CPU dropped because its input backlog was full (netdev_max_backlog)"),
    MetricSpec(name="net.softnet.squeezes", layer="guest", dimension=RATE, kind="series", labels=("cpu",),
               entity="cpu", natural_stat="max", source="/proc/net/softnet_stat column 3 deltas",
               description="times per second a CPU's receive softirq ran out of budget with packets left "
                           "(time_squeeze): the CPU cannot keep up with the NIC"),
)

CONTAINER_LABELS = ("namespace", "pod", "container")
CONTAINER_METRICS = _specs("container.net", "container", CONTAINER_LABELS, "container", "/proc/PID/net",
                           discoverable=CONTAINER_LABELS, attributes=("id", "image", "runtime", "label.*"))


def _prefix_figures(prefix: str, iface: Mapping[str, Mapping[str, float]], proto: Mapping[str, float],
                    wanted: frozenset[str]) -> list[tuple[str, dict[str, str], float]]:
    """(metric, extra labels, value) for the metrics asked for."""
    out = []
    for name, figures in iface.items():
        for suffix, v in figures.items():
            if f"{prefix}.{suffix}" in wanted:
                out.append((f"{prefix}.{suffix}", {"interface": name}, v))
    for suffix, v in proto.items():
        if f"{prefix}.{suffix}" in wanted:
            out.append((f"{prefix}.{suffix}", {}, v))
    return out


def mark_gone(store, metrics: frozenset[str], labels: Mapping[str, str], t: float, why: str) -> None:
    """These metrics' observations of exactly this entity vanished at t. (store.mark_gone matches
    every metric: a node interface named eth0 must not end a container's eth0.)"""
    want = tuple(sorted(labels.items()))
    for m in metrics:
        for o in store.for_metric(m):
            if o.labels == want and o.gone_at is None:
                o.gone_at, o.gone_reason = t, why


class NamespaceReader:
    """Two successive reads of one namespace -> figures; remembers interfaces gone or reset."""

    def __init__(self, netdir: Path, softnet: bool = False):
        self.netdir = netdir
        self.softnet = softnet
        self.prev = read_netns(netdir, softnet)

    def step(self) -> tuple[NetnsCounters, NetnsCounters, float, list[str], list[str], list[str]]:
        """(before, after, wall, interfaces gone, interfaces new, interfaces reset)."""
        cur = read_netns(self.netdir, self.softnet)
        a, self.prev = self.prev, cur
        wall = cur.mono - a.mono
        gone = sorted(set(a.devices) - set(cur.devices))
        new = sorted(set(cur.devices) - set(a.devices))
        reset = sorted(n for n in set(a.devices) & set(cur.devices) if went_backwards(a.devices[n], cur.devices[n]))
        return a, cur, wall, gone, new, reset


class NetCollector(Collector):
    """net.*: the node's own network namespace."""

    name = "guest.net"
    METRICS = NODE_METRICS
    NEEDS = Needs(files=(("proc", "net/dev", "interface counters"), ("proc", "net/snmp", "TCP/UDP counters"),
                         ("proc", "net/netstat", "TCP extended counters"),
                         ("proc", "net/softnet_stat", "per-CPU softnet drops and squeezes")))

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        if metric.startswith("net.softnet."):
            return [{"cpu": str(c)} for c in sorted(parse_softnet(read_text(roots.proc / "net" / "softnet_stat")))]
        if metric.split(".")[1] in ("rx", "tx"):
            return [{"interface": n} for n in sorted(parse_net_dev(read_text(roots.proc / "net" / "dev")))]
        return []

    def _reader(self) -> NamespaceReader:
        try:
            return NamespaceReader(self.roots.proc / "net", softnet=True)
        except OSError as exc:
            raise Unavailable(f"cannot read {self.roots.proc / 'net'}: {exc.strerror}") from exc

    def start(self) -> None:
        self._ns = self._reader()
        self._prev_t = 0.0

    def begin(self, t0: float) -> None:
        self._ns = self._reader()

    def sample(self, t: float) -> None:
        try:
            a, b, wall, gone, new, reset = self._ns.step()
        except OSError as exc:
            raise Unavailable(f"cannot read {self._ns.netdir}: {exc.strerror}") from exc
        if wall <= 0:
            return
        for n in gone:
            mark_gone(self.store, self.request.metrics, {"interface": n}, t, f"interface {n} was removed or renamed")
        for n in new:
            self.store.note(self.name, f"interface {n} appeared at +{t:.1f}s (new or renamed); "
                                       "counted from its next interval")
        for n in reset:
            self.store.note(self.name, f"the counters of {n} went backwards at +{t:.1f}s (the interface "
                                       "was made again under its name): that interval counts 0")
        iface = {n: interface_figures(a.devices[n], b.devices[n], wall)
                 for n in b.devices if n in a.devices and n not in reset}
        wanted = self.request.metrics
        sent = float(segments_sent(a, b))
        for metric, labels, v in _prefix_figures("net", iface, proto_figures(a, b, wall), wanted):
            self.store.add_sample(metric, labels, t, v, wall,
                                  weight=sent if metric == "net.tcp.retrans_share" else None)
        for metric, col in (("net.softnet.drops", "dropped"), ("net.softnet.squeezes", "squeezed")):
            if metric not in wanted:
                continue
            total, common = 0, 0
            for cpu in sorted(set(a.softnet) & set(b.softnet)):
                d = max(getattr(b.softnet[cpu], col) - getattr(a.softnet[cpu], col), 0)
                self.store.add_sample(metric, {"cpu": str(cpu)}, t, d / wall, wall)
                total, common = total + d, common + 1
            if common:
                self.store.add_sample(metric, {}, t, total / wall, wall)


class ContainerNetCollector(Collector):
    """container.net.*: each container's network namespace, through /proc/PID/net."""

    name = "container.net"
    METRICS = CONTAINER_METRICS
    NEEDS = Needs(files=(("proc", "self/net/dev", "a namespace's counters (read per container as /proc/PID/net)"),))

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        from .containers.collector import ContainerCollector
        return ContainerCollector.discover(roots, metric)

    def start(self) -> None:
        from .containers.discovery import discover_containers, host_namespaces, namespace_ids
        containers, notes = discover_containers(self.roots)
        for n in notes:
            self.store.note(self.name, n)
        host_net = host_namespaces(self.roots).get("net")
        self._readers: dict[str, tuple[dict[str, str], dict[str, str], NamespaceReader]] = {}
        by_netns: dict[str, list[str]] = {}
        for c in containers:
            info = {"id": c.id, "image": c.image, "runtime": c.runtime, "pid": str(c.pid),
                    **{f"label.{k}": v for k, v in c.labels.items()}}
            try:
                netns = namespace_ids(self.roots, c.pid).get("net", "")
            except OSError:
                continue
            info["netns"] = netns
            if netns and netns == host_net:
                # hostNetwork: the node's figures; filing them here would count a node-wide
                # drop once more per such pod
                for m in self.request.metrics:
                    o = self.store.series(m, c.identity, info)
                    o.notes.append(f"container {c.name} shares the host's network namespace ({netns}, "
                                   "hostNetwork): its figures are the node's net.*, not repeated here")
                continue
            try:
                reader = NamespaceReader(self.roots.proc / str(c.pid) / "net")
            except OSError:
                continue      # gone between discovery and now
            by_netns.setdefault(netns, []).append(f"{c.namespace}/{c.pod}/{c.name}")
            self._readers[c.id] = (c.identity, info, reader)
        for cid, (_, info, _) in self._readers.items():
            sharing = by_netns.get(info["netns"], [])
            if len(sharing) > 1:
                info["netns_shared_by"] = ", ".join(sharing)
        if not containers:
            raise Unavailable("no container found: " + (", ".join(notes) or "no runtime reachable"))
        self._gone: set[str] = set()

    def begin(self, t0: float) -> None:
        for cid, (identity, info, reader) in self._readers.items():
            try:
                reader.prev = read_netns(reader.netdir)
            except OSError:
                pass

    def sample(self, t: float) -> None:
        wanted = self.request.metrics
        for cid, (identity, info, reader) in self._readers.items():
            if cid in self._gone:
                continue
            try:
                a, b, wall, gone, new, reset = reader.step()
            except OSError:
                self._gone.add(cid)
                self.store.mark_gone(identity, t, f"container {cid[:12]} ({identity['container']}) exited: "
                                                  "its network namespace can no longer be read")
                continue
            if wall <= 0:
                continue
            for n in gone:
                mark_gone(self.store, wanted, {**identity, "interface": n}, t, f"interface {n} was removed or renamed")
            iface = {n: interface_figures(a.devices[n], b.devices[n], wall)
                     for n in b.devices if n in a.devices and n not in reset}
            sent = float(segments_sent(a, b))
            for metric, labels, v in _prefix_figures("container.net", iface, proto_figures(a, b, wall), wanted):
                self.store.add_sample(metric, {**identity, **labels}, t, v, wall, info,
                                      weight=sent if metric.endswith("retrans_share") else None)


# --- VMs: each VM's tap devices, seen from the host ------------------------------------------
# guest's view -> the tap's host-side counter: what the host sends into the tap the guest
# receives, so vm.net.rx.* is the tap's tx (and a tap tx drop is a packet the guest never got
# because the VMM did not drain the tap)
VM_FIGURES: dict[str, tuple[str, str, str]] = {
    "rx.packets": ("tx_packets", RATE, "packets the guest received through this NIC per second (tap tx)"),
    "tx.packets": ("rx_packets", RATE, "packets the guest sent through this NIC per second (tap rx)"),
    "rx.bytes": ("tx_bytes", BYTE_RATE, "bytes the guest received per second (tap tx)"),
    "tx.bytes": ("rx_bytes", BYTE_RATE, "bytes the guest sent per second (tap rx)"),
    "rx.drops": ("tx_drop", RATE, "packets for the guest the host dropped per second (tap tx drops: the "
                                  "VMM or vhost did not drain the tap; the guest never saw them)"),
    "tx.drops": ("rx_drop", RATE, "packets from the guest the host dropped per second (tap rx drops)"),
}

VM_METRICS = tuple(
    MetricSpec(name=f"vm.net.{s}", layer="hypervisor", dimension=dim, kind="series", labels=("vm", "interface"),
               discoverable=("vm",), entity="vm", natural_stat="max", attributes=("pid", "vmm"),
               source="the VMM's tap fds (/proc/PID/fdinfo iff:), their /proc/PID/net/dev counters",
               description=desc)
    for s, (_, dim, desc) in VM_FIGURES.items())


def vm_taps(proc: Path, pid: int) -> list[str]:
    """Names of the tap/macvtap devices the process holds open: each /dev/net/tun (or
    /dev/tapN) fd's fdinfo says its interface on an ``iff:`` line."""
    out = []
    try:
        fds = os.listdir(proc / str(pid) / "fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(proc / str(pid) / "fd" / fd)
        except OSError:
            continue
        if target != "/dev/net/tun" and not target.startswith("/dev/tap"):
            continue
        try:
            for line in read_text(proc / str(pid) / "fdinfo" / fd).splitlines():
                if line.startswith("iff:"):
                    name = line.split(":", 1)[1].strip()
                    if name and name not in out:
                        out.append(name)
        except OSError:
            continue
    return sorted(out)


def vhost_workers(proc: Path, pid: int) -> int:
    """Threads named vhost-PID: the kernel's vhost-net workers moving this VM's packets."""
    n = 0
    try:
        for d in os.scandir(proc):
            if d.name.isdigit():
                try:
                    if read_text(Path(d.path) / "comm").strip() == f"vhost-{pid}":
                        n += 1
                except OSError:
                    continue
        for tid in os.listdir(proc / str(pid) / "task"):     # 6.4+: vhost tasks are the VMM's threads
            try:
                if read_text(proc / str(pid) / "task" / tid / "comm").strip().startswith(f"vhost-{pid}"):
                    n += 1
            except OSError:
                continue
    except OSError:
        pass
    return n


class VmNetCollector(Collector):
    """vm.net.*: each VM's taps, found from its VMM's own fds, counters in the guest's view."""

    name = "hypervisor.net"
    METRICS = VM_METRICS
    NEEDS = Needs(files=(("proc", "self/fdinfo", "a VMM's tap devices (iff: lines)"),))

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        from .vms import discover_vms
        return [{"vm": vm.name} for vm in discover_vms(roots) if vm_taps(roots.proc, vm.pid)]

    def start(self) -> None:
        from .vms import discover_vms
        self._vms: dict[int, tuple[str, dict[str, str], list[str], NamespaceReader]] = {}
        for vm in discover_vms(self.roots):
            taps = vm_taps(self.roots.proc, vm.pid)
            if not taps:
                continue
            workers = vhost_workers(self.roots.proc, vm.pid)
            info = {"pid": str(vm.pid), "vmm": vm.vmm, "taps": ", ".join(taps), "uuid": vm.uuid, "serial": vm.serial,
                    "vhost": f"{workers} vhost worker thread(s)" if workers else
                             "no vhost worker: the VMM's own threads move the packets (no vhost-net)"}
            try:
                reader = NamespaceReader(self.roots.proc / str(vm.pid) / "net")
            except OSError:
                continue
            self._vms[vm.pid] = (vm.name, info, taps, reader)
        if not self._vms:
            raise Unavailable("no VM with a tap device on this host")
        self._gone: set[int] = set()

    def begin(self, t0: float) -> None:
        for _, _, _, reader in self._vms.values():
            try:
                reader.prev = read_netns(reader.netdir)
            except OSError:
                pass

    def sample(self, t: float) -> None:
        wanted = self.request.metrics
        for pid, (name, info, taps, reader) in self._vms.items():
            if pid in self._gone:
                continue
            try:
                a, b, wall, gone, new, reset = reader.step()
            except OSError:
                self._gone.add(pid)
                self.store.mark_gone({"vm": name}, t, f"VM {name} (pid {pid}) exited")
                continue
            if wall <= 0:
                continue
            for tap in taps:
                if tap not in b.devices:
                    mark_gone(self.store, wanted, {"vm": name, "interface": tap}, t, f"tap {tap} was removed")
                    continue
                if tap not in a.devices or tap in reset:
                    continue
                for suffix, (field_, _, _) in VM_FIGURES.items():
                    m = f"vm.net.{suffix}"
                    if m in wanted:
                        self.store.add_sample(m, {"vm": name, "interface": tap}, t,
                                              delta(a.devices[tap], b.devices[tap], field_) / wall, wall, info)
