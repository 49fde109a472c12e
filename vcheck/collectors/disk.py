"""Guest block devices: per-I/O latency through BPF, and the kernel's own counters.

Two collectors, because they fail differently:

* ``BlockLatencyCollector`` (BPF, ``bpf/block_latency.c``): the latency distribution per device
  and op, exact counts, and the slow I/Os themselves as evidence. Needs root, bcc, headers and
  the block tracepoints.
* ``DiskStatsCollector`` (``/proc/diskstats``): IOPS, throughput, utilisation and the *mean*
  time per I/O. Always available, so a node without BPF still has a disk figure, labelled for
  what it is: a mean that includes queue time, not a distribution.
"""
from __future__ import annotations

import ctypes
import errno
import heapq
import threading
import time
from dataclasses import dataclass
from typing import Mapping

from ..probes import Attach, BpfProgram
from ..model import EVENTS_LEFT_OUT, MetricSpec
from ..histogram import Histogram
from ..identity import Resolver
from ..procfs import HostRoots, read_text
from ..units import BYTE_RATE, PERCENT, RATE, TIME, format_value
from .base import Collector, Needs, Unavailable

OPS = ("read", "write", "flush", "discard", "other")   # index = the op code in block_latency.c
SLOWEST_KEPT = 20           # the N slowest I/Os of each device in the window, always in the evidence
# streamed and held: twice as many, since an fsync's empty preflush write folds into its flush
SLOWEST_HELD = 2 * SLOWEST_KEPT
IDLE_POLL_MS = 500         # how long the outlier drain sleeps when no record comes
PREFLUSH_SLACK = 0.001      # s: an empty preflush completes right after the flush that served it
ISSUE_SLACK = 5e-6          # s: ...timed from that flush's issue (event times are rounded to 1 us)
OVER_THRESHOLD_KEPT = 1000  # per device: I/Os over a check's outlier threshold kept as evidence; more are counted
SECTOR = 512
NEVER = 2**64 - 1           # a window edge that is never reached (block_latency.c window_ns)
HANDLER_GRACE = 0.002       # s: a probe that read the window's old edge has finished by then (it runs in us)


# --- /proc/diskstats --------------------------------------------------------------------
@dataclass(frozen=True)
class DiskCounters:
    """One /proc/diskstats line: completed I/Os, sectors, ms spent (Documentation/admin-guide/iostats)."""

    major: int
    minor: int
    name: str
    reads: int        # completed, per op
    writes: int
    discards: int
    flushes: int
    sectors: int      # read + written + discarded
    ms: int           # time spent on all of those I/Os (ms), summed per I/O
    io_ticks: int     # ms during which the device had I/O in flight
    op_ms: tuple[int, int, int, int] = (0, 0, 0, 0)   # ms per op: read, write, discard, flush

    @property
    def dev(self) -> str:
        return f"{self.major}:{self.minor}"

    @property
    def ios(self) -> int:
        return self.reads + self.writes + self.discards + self.flushes

    def by_op(self) -> dict[str, int]:
        """Completed I/Os under block.latency's op names."""
        return {"read": self.reads, "write": self.writes, "discard": self.discards, "flush": self.flushes}

    def ms_by_op(self) -> dict[str, int]:
        """Time spent per op (ms, each I/O from its allocation to completion: queue time too)."""
        return dict(zip(("read", "write", "discard", "flush"), self.op_ms))


def parse_diskstats(text: str) -> dict[str, DiskCounters]:
    out = {}
    for line in text.splitlines():
        p = line.split()
        if len(p) < 14:
            continue
        f = [int(x) for x in p[3:]] + [0] * 20
        # fields from 4: reads, merged, sectors, ms, writes, merged, sectors, ms, in flight,
        # io_ticks, weighted; then discards (4) and flushes (2) on newer kernels
        sectors = f[2] + f[6] + f[13]
        ms = f[3] + f[7] + f[14] + f[16]
        out[p[2]] = DiskCounters(int(p[0]), int(p[1]), p[2], f[0], f[4], f[11], f[15], sectors, ms, f[9],
                                 (f[3], f[7], f[14], f[16]))
    return out


@dataclass(frozen=True)
class Untimed:
    """Completions of one op the kernel counted and no probe timed."""

    count: int
    seconds: float   # at most this much device time in total, all of them together


def untimed(before: DiskCounters, after: DiskCounters, timed: Mapping[str, Histogram]) -> dict[str, Untimed]:
    """Per op, the completions /proc/diskstats counted between two reads beyond those a probe
    timed over the same span, and a bound on the time they took: diskstats' time per op
    (queue time included, so never less than device time) less what the probe timed, plus a
    millisecond for diskstats' rounding. diskstats counts a write-zeroes request
    (block.latency's "other") as a write. The reads bracket the probe's span, so an I/O that
    completes between a read and the probe's own edge counts as untimed: both figures err high,
    never low."""
    def timed_of(op: str) -> tuple[int, float]:
        hs = [h for o, h in timed.items() if o == op or (op == "write" and o == "other")]
        return sum(h.count for h in hs), sum(h.sum * h.scale for h in hs)

    a, b, a_ms, b_ms = before.by_op(), after.by_op(), before.ms_by_op(), after.ms_by_op()
    out = {}
    for op in b:
        n, spent = timed_of(op)
        missing = (b[op] - a[op]) - n
        if missing > 0:
            out[op] = Untimed(missing, max(0.0, (b_ms[op] - a_ms[op]) / 1000 - spent) + 0.001)
    return out


def pair_preflushes(events: list[dict]) -> dict[int, dict]:
    """id(empty write) -> the flush that served it. An fsync's empty preflush write completes
    right after its flush and block_latency.c times it from that flush's issue: the two share
    their issue instant."""
    def issued(e: dict) -> float:
        return e["time"] - e["latency"]

    flushes = [e for e in events if e.get("op") == "flush"]
    out = {}
    for ev in events:
        if ev.get("op") == "write" and not ev.get("bytes"):
            served = min((f for f in flushes if f["device"] == ev["device"]
                          and 0 <= ev["time"] - f["time"] <= PREFLUSH_SLACK
                          and abs(issued(ev) - issued(f)) <= ISSUE_SLACK),
                         key=lambda f: abs(issued(ev) - issued(f)), default=None)
            if served is not None:
                out[id(ev)] = served
    return out


def evidence_rows(slowest: list[dict], over: list[dict]) -> list[dict]:
    """The I/Os evidence shows, each once: the SLOWEST_KEPT slowest (`slowest` is sorted, slowest
    first) and those over the check's threshold. An fsync's empty preflush write is folded into
    the flush shown with it (as its `parts`, its latency in `preflush_latency`): as a row of its
    own it would show one slow fsync twice. A write whose flush is not shown keeps its row. The
    write histogram still counts it: the kernel completed both requests."""
    pool = list({id(e): e for e in slowest + over}.values())
    served = pair_preflushes(pool)
    while True:
        top = [e for e in slowest if id(e) not in served][:SLOWEST_KEPT]
        rows = list({id(e): e for e in top + [e for e in over if id(e) not in served]}.values())
        visible = {id(e) for e in rows}
        orphans = [w for w, f in served.items() if id(f) not in visible]
        if not orphans:
            break
        for w in orphans:
            del served[w]
    by_id = {id(e): e for e in pool}
    for w, f in served.items():
        ev = by_id[w]
        f.setdefault("preflush_latency", []).append(ev["latency"])
        n = len(f["preflush_latency"])
        f["parts"] = (f"flush, and the {'empty preflush write' if n == 1 else f'{n} empty preflush writes'} "
                      f"it served (sector {ev['sector']}, 0 B, pid {ev['pid']} '{ev['comm']}')")
    return rows


def request_based(roots: HostRoots, name: str) -> bool:
    """A blk-mq device: block_rq_* tracepoints fire for its I/O. A bio-based one (device-mapper,
    md, zram) hands its bios to the devices below, where they are timed, if at all."""
    return (roots.sys / "block" / name / "mq").is_dir()


def whole_disks(roots: HostRoots, stats: Mapping[str, DiskCounters]) -> list[str]:
    """Devices worth judging: whole disks (not partitions) that have done any I/O since boot."""
    names = []
    for name, c in stats.items():
        if name.startswith(("ram", "zram")) or c.ios == 0:
            continue
        if (roots.sys / "block" / name).exists():
            names.append(name)
    return sorted(names)


def _disk(name: str, dimension: str, desc: str, sparse: bool = False) -> MetricSpec:
    return MetricSpec(name=name, layer="guest", dimension=dimension, kind="series", labels=("device",),
                      entity="device", natural_stat="max",
                      source="/proc/diskstats deltas (as iostat)", description=desc, sparse=sparse)


DISKSTATS_METRICS = (
    _disk("block.iops", RATE, "completed I/Os per second (reads, writes, discards, flushes)"),
    _disk("block.throughput", BYTE_RATE, "bytes per second read, written and discarded"),
    _disk("block.util", PERCENT, "share of time the device had I/O in flight (iostat %util)"),
    _disk("block.latency.mean", TIME,
          "mean time per completed I/O in each interval, queue time included (iostat await); "
          "intervals without I/O have no value. A mean, not a distribution: use block.latency "
          "for percentiles and outliers", sparse=True),
)


class DiskStatsCollector(Collector):
    name = "guest.diskstats"
    METRICS = DISKSTATS_METRICS
    NEEDS = Needs(files=(("proc", "diskstats", "disk counters"),))

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        return [{"device": d} for d in whole_disks(roots, parse_diskstats(read_text(roots.proc / "diskstats")))]

    def _read(self) -> tuple[float, dict[str, DiskCounters]]:
        try:
            return time.monotonic(), parse_diskstats(read_text(self.roots.proc / "diskstats"))
        except OSError as exc:
            raise Unavailable(f"cannot read {self.roots.proc / 'diskstats'}: {exc.strerror}") from exc

    def start(self) -> None:
        self._prev_mono, self._prev = self._read()
        self._devices = whole_disks(self.roots, self._prev)
        self._prev_t = 0.0
        self._busy: set[str] = set()

    def begin(self, t0: float) -> None:
        self._prev_mono, self._prev = self._read()
        self._busy = set()

    def stop(self, t: float) -> None:
        if "block.latency.mean" in self.request.metrics:
            for d in self._devices:
                if d not in self._busy:
                    o = self.store.series("block.latency.mean", {"device": d})
                    o.notes.append(f"no I/O completed on {d} in the window: no await to judge")

    def sample(self, t: float) -> None:
        mono, cur = self._read()
        wall = mono - self._prev_mono
        if wall <= 0:
            return
        span = t - self._prev_t
        for d in self._devices:
            a, b = self._prev.get(d), cur.get(d)
            if b is None:
                self.store.mark_gone({"device": d}, t, f"{d} disappeared from /proc/diskstats")
                continue
            if a is None:
                continue
            ios = max(b.ios - a.ios, 0)
            values = {
                "block.iops": ios / wall,
                "block.throughput": max(b.sectors - a.sectors, 0) * SECTOR / wall,
                "block.util": min(100.0, max(b.io_ticks - a.io_ticks, 0) / (wall * 1000) * 100),
            }
            if ios:
                values["block.latency.mean"] = max(b.ms - a.ms, 0) / 1000 / ios
                self._busy.add(d)
            for m in self.request.metrics:
                if m in values:
                    # an interval's mean stands for its I/Os: the window's mean is I/O-weighted,
                    # as iostat's await over the same window
                    self.store.add_sample(m, {"device": d}, t, values[m], span,
                                          weight=float(ios) if m == "block.latency.mean" else None)
        self._prev_mono, self._prev, self._prev_t = mono, cur, t


# --- BPF block latency ------------------------------------------------------------------
class _Outlier(ctypes.Structure):
    """struct outlier in bpf/block_latency.c"""

    _fields_ = [("done_ns", ctypes.c_uint64), ("latency_ns", ctypes.c_uint64), ("sector", ctypes.c_uint64),
                ("dev", ctypes.c_uint32), ("bytes", ctypes.c_uint32), ("op", ctypes.c_uint32),
                ("pid", ctypes.c_uint32), ("error", ctypes.c_int32), ("pad", ctypes.c_uint32),
                ("comm", ctypes.c_char * 16)]


BLOCK_TRACEPOINTS = (   # raw on the CO-RE path: fields read from struct request (block_latency.c)
    Attach("block", "block_io_start", "vchk_blk_start", optional=True, raw_core=True),
    Attach("block", "block_rq_issue", "vchk_blk_issue", raw_core=True),
    Attach("block", "block_rq_requeue", "vchk_blk_requeue", optional=True, raw_core=True),
    Attach("block", "block_rq_complete", "vchk_blk_done", raw_core=True),
)

# blk_status_t as the raw completion hook sees it -> (errno name, the kernel's blk_errors[] text);
# codes 1-13 have kept their numbers since 4.13, later ones were added and renumbered
BLK_STATUS = {1: ("EOPNOTSUPP", "operation not supported"), 2: ("ETIMEDOUT", "timeout"),
              3: ("ENOSPC", "critical space allocation"), 4: ("ENOLINK", "recoverable transport"),
              5: ("EREMOTEIO", "critical target"), 6: ("EBADE", "critical nexus or reservation conflict"),
              7: ("ENODATA", "critical medium"), 8: ("EILSEQ", "protection"), 9: ("ENOMEM", "kernel resource"),
              10: ("EIO", "I/O"), 11: ("EREMCHG", "dm internal retry"), 12: ("EAGAIN", "nonblocking retry"),
              13: ("EBUSY", "device resource")}


def completion_error(code: int, raw_status: bool) -> dict[str, object]:
    """A failed completion's evidence: -errno as the classic record gives it (blk_status_to_errno)
    and, from the raw hook, the block status it came from."""
    if not raw_status:
        return {"error": code}
    name, text = BLK_STATUS.get(code, ("EIO", ""))
    return {"error": -getattr(errno, name), "status": f"BLK_STS {code}" + (f" ({text} error)" if text else
                                                                          " (unknown to vcheck; -EIO)")}

LATENCY_METRICS = (
    MetricSpec(name="block.latency", layer="guest", dimension=TIME, kind="distribution",
               labels=("device", "op"), discoverable=("device",), entity="device", natural_stat="p99",
               source="BPF block:block_rq_issue -> block:block_rq_complete (bpf/block_latency.c)",
               description="time a request spent on the device (biolatency), per device and op "
                           "(read, write, flush, discard): every I/O /proc/diskstats counts; "
                           "outliers carry sector, size and task"),
)


def op_name(code: int) -> str:
    return OPS[code] if code < len(OPS) else "other"


def kernel_dev(major: int, minor: int) -> int:
    """dev_t as block tracepoints record it (MKDEV: major << 20 | minor)."""
    return major << 20 | minor


@dataclass(frozen=True)
class LeftOut:
    """The I/Os of one (device, op) the outlier evidence does not show, of those it should."""

    over: int = 0    # I/Os over the check's threshold, as the kernel counted them
    kept: int = 0    # ...of which the evidence holds this many
    lost: int = 0    # I/Os the ring buffer had no room for (over the threshold or not)

    @property
    def missing(self) -> int:
        """I/Os over the threshold that are not in the evidence (the lost among them too)."""
        return max(0, self.over - self.kept)

    @property
    def total(self) -> int:
        """At least this many I/Os the evidence should show are not in it."""
        return max(self.missing, self.lost)

    def notes(self, dev: str, op: str, threshold_ns: int | None) -> list[str]:
        """What the evidence of (dev, op) lacks, in figures: never a silent short list."""
        out = []
        if self.lost:
            out.append(f"{self.lost} {op} I/O events on {dev} not recorded: ring buffer full (vcheck did "
                       "not drain it in time); the histogram counts them, the evidence lacks them, so its "
                       "slowest rows may miss some")
        if threshold_ns is not None and self.missing:
            why = f"evidence keeps the first {OVER_THRESHOLD_KEPT} per device"
            if self.lost:
                why = f"the ring buffer was full for {self.lost} of this op's I/Os, and {why}"
            out.append(f"{self.missing} of the {self.over} {op} I/Os on {dev} over the outlier threshold "
                       f"({format_value(threshold_ns * 1e-9, TIME)}) are not in the evidence: {why}; "
                       "the histogram counts them all")
        return out


class BlockLatencyCollector(Collector):
    name = "guest.block.bpf"
    METRICS = LATENCY_METRICS
    NEEDS = Needs(program=("block_latency.c", BLOCK_TRACEPOINTS, ()), what="block.latency (BPF)")

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        return DiskStatsCollector.discover(roots, metric)

    def start(self) -> None:
        self._prog: BpfProgram | None = None
        # per device (kernel dev_t), so one busy disk never crowds another's evidence out
        self._slowest: dict[int, list[tuple[int, int, dict]]] = {}   # min-heaps of (latency_ns, seq, event)
        self._over: dict[int, list[dict]] = {}
        self._seq = 0
        self._floor_now: dict[int, int] = {}
        self._consumer: threading.Thread | None = None
        self._consumer_stop = threading.Event()
        self._threshold_ns = None
        self._resolver = Resolver(self.roots)
        self._owners: dict[int, str] = {}   # submitter pid -> owner, resolved while it still runs
        thr = self.request.outlier_thresholds.get("block.latency")
        if thr is not None:
            self._threshold_ns = max(1, int(thr * 1e9))
        stats = self._diskstats()
        self._names = self._dev_names(stats)
        self._disks = whole_disks(self.roots, stats)   # reported on even when idle
        self._counted_before: dict[str, DiskCounters] = {}   # diskstats at the window's start
        self._prog = prog = BpfProgram("block_latency.c", BLOCK_TRACEPOINTS, cost_sink=self.store.bpf_cost).load()
        for n in prog.notes:
            self.store.note(self.name, n)
        self._t0 = time.monotonic()
        self._window_start_ns = 0             # no window until begin: nothing recorded
        if self._threshold_ns is not None:
            prog["threshold_ns"][ctypes.c_int(0)] = ctypes.c_uint64(self._threshold_ns)
        prog.open_ring_buffer("outliers", self._on_event)

    def _diskstats(self) -> dict[str, DiskCounters]:
        try:
            return parse_diskstats(read_text(self.roots.proc / "diskstats"))
        except OSError:
            return {}

    @staticmethod
    def _dev_names(stats: Mapping[str, DiskCounters]) -> dict[int, str]:
        return {kernel_dev(c.major, c.minor): c.name for c in stats.values()}

    def _name(self, dev: int) -> str:
        name = self._names.get(dev)
        if name is None:     # a device that appeared mid-window: look it up once
            self._names.update(self._dev_names(self._diskstats()))
            name = self._names.setdefault(dev, f"{dev >> 20}:{dev & 0xFFFFF}")
        return name

    def _set_floors(self) -> None:
        """Per device, stream an I/O to user space only if it may still be evidence: over the
        check's threshold while fewer than OVER_THRESHOLD_KEPT are kept, or slower than the
        device's N-th slowest so far (a device not yet seen streams everything). The floors
        climb within milliseconds, so only a few hundred I/Os of a busy window ever leave the
        kernel."""
        for dev, heap in list(self._slowest.items()):
            floor = 1 if len(heap) < SLOWEST_HELD else heap[0][0] + 1
            if self._threshold_ns is not None and len(self._over.get(dev, ())) < OVER_THRESHOLD_KEPT:
                floor = min(floor, self._threshold_ns)
            if floor != self._floor_now.get(dev):
                self._prog["floor_ns"][ctypes.c_uint32(dev)] = ctypes.c_uint64(floor)
                self._floor_now[dev] = floor

    def _on_event(self, _ctx, data, _size) -> None:
        e = ctypes.cast(data, ctypes.POINTER(_Outlier)).contents
        if e.done_ns < self._window_start_ns:   # recorded before the window opened
            return
        ev = {"time": round(e.done_ns / 1e9 - self._t0, 6), "device": self._name(e.dev),
              "op": op_name(e.op), "sector": e.sector, "bytes": e.bytes,
              "latency": e.latency_ns / 1e9, "pid": e.pid,
              "comm": e.comm.decode("utf-8", "replace")}
        if e.error:
            ev.update(completion_error(e.error, self._prog is not None and self._prog.path == "core"))
        self._owners.setdefault(e.pid, "")
        self._seq += 1
        item = (e.latency_ns, self._seq, ev)
        heap = self._slowest.setdefault(e.dev, [])
        if len(heap) < SLOWEST_HELD:
            heapq.heappush(heap, item)
        elif e.latency_ns > heap[0][0]:
            heapq.heapreplace(heap, item)
        if self._threshold_ns is not None and e.latency_ns > self._threshold_ns:
            over = self._over.setdefault(e.dev, [])
            if len(over) < OVER_THRESHOLD_KEPT:
                over.append(ev)

    def _set_window(self, start_ns: int, end_ns: int = NEVER) -> None:
        """The span whose completions the program records (block_latency.c window_ns)."""
        window = self._prog["window_ns"]
        window[ctypes.c_int(1)] = ctypes.c_uint64(end_ns)
        window[ctypes.c_int(0)] = ctypes.c_uint64(start_ns)

    def begin(self, t0: float) -> None:
        prog = self._prog
        self._set_window(NEVER, NEVER)       # record nothing while the maps are emptied
        time.sleep(HANDLER_GRACE)
        prog.clear("hist", "stats", "counters", "outlier_counts", "floor_ns")
        prog.consume_ring_buffers()           # start-up's events, dropped below
        self._slowest, self._over, self._floor_now, self._t0 = {}, {}, {}, t0
        self._counted_before = self._diskstats()   # read before the window opens: see untimed()
        self._window_start_ns = time.monotonic_ns()
        self._set_window(self._window_start_ns)
        self._consumer = threading.Thread(target=self._consume, args=(prog,), name="block-outliers",
                                          daemon=True)
        self._consumer.start()

    def _consume(self, prog: BpfProgram) -> None:
        """Drain outliers as they come and raise the floor as the slowest set fills. A poll
        returns as soon as a record is in, so the timeout only paces an idle disk: twice a
        second (a wake-up every 50 ms was most of vcheck's CPU over a long window), and at the
        window's planned end, so the final drain waits for no timeout."""
        end = self._t0 + self.request.window
        while not self._consumer_stop.is_set():
            left_ms = int((end - time.monotonic()) * 1000)
            prog.poll_ring_buffers(min(IDLE_POLL_MS, left_ms + 5) if left_ms > 0 else 20)
            self._set_floors()
            self._resolve_owners()

    def _resolve_owners(self) -> None:
        """Name new submitters now: a task that exits before the window ends is still known."""
        for pid, owner in list(self._owners.items()):
            if owner:
                continue
            if pid == 0:
                self._owners[pid] = "kernel (no task)"
                continue
            try:
                self._owners[pid] = self._resolver.resolve(pid).owner
            except Exception as exc:   # evidence must not cost the outliers themselves
                self._owners[pid] = f"unresolved ({exc.__class__.__name__})"

    def _stop_consumer(self) -> None:
        self._consumer_stop.set()
        if self._consumer is not None:
            self._consumer.join()
            self._consumer = None

    def sample(self, t: float) -> None:
        """Nothing to poll: outliers are drained by their own thread, histograms read at the end."""

    def stop(self, t: float) -> None:
        prog = self._prog
        if prog is None:
            return
        self._stop_consumer()
        self._set_window(self._window_start_ns, time.monotonic_ns())   # the window closes
        counted_after = self._diskstats()           # read after it closed: see untimed()
        time.sleep(HANDLER_GRACE)
        prog.consume_ring_buffers()                 # every event of the window, as the maps hold it
        hists = prog.histograms(lambda k: (self._name(k.dev), op_name(k.op)))
        counters = prog.counters()
        left_out = self._outliers_left_out(prog)
        self._resolve_owners()

        events: dict[tuple[str, str], list[dict]] = {}
        # per device: one I/O may sit in both lists, as the same dict; two I/Os may share
        # device, sector and time (the empty preflush writes one flush completes)
        for dev in set(self._slowest) | set(self._over):
            slowest = [e for _, _, e in sorted(self._slowest.get(dev, []), reverse=True)]
            for ev in evidence_rows(slowest, self._over.get(dev, [])):
                ev["owner"] = self._owners.get(ev["pid"], "")
                events.setdefault((ev["device"], ev["op"]), []).append(ev)

        notes = []
        if counters["unpaired"]:
            notes.append(f"{counters['unpaired']} completions were not timed, their issue unseen: issued "
                         "before vcheck attached (a request slower than the start-up), or a later "
                         "piece of a request the driver completed in parts")
        if counters["collision"]:
            n = counters["collision"]
            notes.append(f"{n} {'issue' if n == 1 else 'issues'} found a request of the same device, sector "
                         "and op in flight: that one was timed from the later issue")
        if counters["flush_overflow"]:
            notes.append(f"{counters['flush_overflow']} flushes were issued while the device had more "
                         "flushes in flight than vcheck tells apart: some took another's latency")
        source = {"source": "BPF block_rq_issue -> block_rq_complete"}
        for (dev, op), h in hists.items():
            o = self.store.set_histogram("block.latency", {"device": dev, "op": op}, h, source)
            o.events = events.get((dev, op), [])
            o.notes.extend(notes)
            gap = left_out.get((dev, op))
            if gap is not None:
                o.notes.extend(gap.notes(dev, op, self._threshold_ns))
                lacking = gap.total if self._threshold_ns is not None else gap.lost
                if lacking:
                    o.info[EVENTS_LEFT_OUT + op] = str(lacking)
        self._file_untimed(hists, counted_after, source)
        filed = {o.label_dict.get("device") for o in self.store.for_metric("block.latency")}
        for dev in self._disks:
            if dev not in filed:
                o = self.store.set_histogram("block.latency", {"device": dev}, Histogram(scale=1e-9), source)
                o.notes.append(f"no I/O completed on {dev} in the window")
        self.close()

    def _outliers_left_out(self, prog: BpfProgram) -> dict[tuple[str, str], "LeftOut"]:
        """Per (device, op), the I/Os the evidence should show and does not: those the ring
        buffer had no room for, and those over the check's threshold past OVER_THRESHOLD_KEPT.
        Exact: the window closed in the kernel before the events were drained and the counts read."""
        kept: dict[tuple[int, int], int] = {}
        for dev, over in self._over.items():
            for ev in over:
                k = (dev, OPS.index(ev["op"]) if ev["op"] in OPS else len(OPS) - 1)
                kept[k] = kept.get(k, 0) + 1
        out: dict[tuple[str, str], LeftOut] = {}
        for key, n in prog["outlier_counts"].items():
            name = (self._name(key.dev), op_name(key.op))
            prev = out.get(name, LeftOut())
            out[name] = LeftOut(prev.over + n.over, prev.kept + kept.get((key.dev, key.op), 0), prev.lost + n.lost)
        return out

    def _file_untimed(self, hists: Mapping[tuple[str, str], Histogram], counted_after: Mapping[str, DiskCounters],
                      source: Mapping[str, str]) -> None:
        """Hold what was timed against what the kernel counted, per device and op: a completion
        no program ran for (the kernel skipped it, or the device is bio-based) is never a pass."""
        before = self._counted_before
        for dev in sorted(set(self._disks) | {d for d, _ in hists}):
            if dev not in before or dev not in counted_after:
                continue
            timed = {op: h for (d, op), h in hists.items() if d == dev}
            for op, u in untimed(before[dev], counted_after[dev], timed).items():
                o = self.store.series("block.latency", {"device": dev, "op": op}, source)
                if o.histogram is None:
                    o.histogram = Histogram(scale=1e-9)
                o.unseen, o.unseen_seconds = u.count, u.seconds
                why = ("it is bio-based (device-mapper, md, zram): block_rq_* tracepoints never fire for "
                       "it, its I/O is timed on the devices below" if not request_based(self.roots, dev)
                       else "the kernel did not run the probe for them, or they were in flight when the "
                            "window began")
                o.notes.append(f"{u.count} {op} completions /proc/diskstats counted on {dev} were never timed: "
                               f"{why}; together they took at most {u.seconds * 1000:.3g} ms (diskstats' "
                               f"time, queue included), and a verdict stands only if it holds whatever "
                               f"each took within that")

    def close(self) -> None:
        if getattr(self, "_consumer", None) is not None:
            self._stop_consumer()
        prog, self._prog = getattr(self, "_prog", None), None
        if prog is not None:
            prog.close()

    @property
    def polls(self) -> bool:
        return False
