"""A container's cgroup counters, from cgroup v1 or v2 (chosen per node), as one sample type.

Where each figure comes from (kernel docs, cAdvisor, kubelet):

=================  ==========================================  =====================================
figure             v2                                          v1
=================  ==========================================  =====================================
CPU time           cpu.stat usage_usec                         cpuacct.usage (ns)
throttling         cpu.stat nr_periods nr_throttled            cpu.stat nr_periods nr_throttled
                   throttled_usec                              throttled_time (ns)
CPU limit          cpu.max "quota period"                      cpu.cfs_quota_us / cpu.cfs_period_us
memory             memory.current - inactive_file (working     memory.usage_in_bytes -
                   set, as kubelet), memory.max                total_inactive_file, memory.limit_in_bytes
OOM kills          memory.events oom_kill                      memory.oom_control oom_kill
pids               pids.current, pids.max                      pids.current, pids.max
I/O                io.stat rbytes wbytes rios wios             blkio.throttle.io_service_bytes/_serviced
=================  ==========================================  =====================================

A container's cgroup is found from its init process (``/proc/PID/cgroup``), so it resolves the
same way for every runtime and cgroup driver.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..model import MetricSpec
from ..selection import MAX_TREE_DEPTH, tree_depth
from ..procfs import HostRoots, read_text
from ..units import BYTE_RATE, BYTES, COUNT, PERCENT
from .base import Collector, Unavailable
from .guest import parse_pressure



@dataclass(frozen=True)
class CgroupSample:
    cpu_ns: int
    periods: int
    throttled_periods: int
    throttled_ns: int
    cpu_limit: float | None         # CPUs (quota / period), None: no limit
    memory_bytes: int               # working set
    memory_limit: int | None
    oom_kills: int
    pids: int
    pids_limit: int | None
    io_bytes: int
    io_ops: int
    # PSI stall totals (us) per cgroup: v2 only; None where the kernel has none for cgroups
    psi: dict[str, int] | None = None


def cgroup_mode(root: Path) -> str:
    """'v2' (unified), else 'v1' (also on hybrid nodes, whose v2 mount has no controllers)."""
    return "v2" if (root / "cgroup.controllers").exists() else "v1"


def proc_cgroups(roots: HostRoots, pid: int) -> dict[str, str]:
    """controller -> path from /proc/PID/cgroup ('' key for the v2 unified entry)."""
    out = {}
    for line in read_text(roots.proc / str(pid) / "cgroup").splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _int_or_max(text: str) -> int | None:
    t = text.strip()
    return None if t == "max" else int(t)


def _read(path: Path) -> str:
    return read_text(path)


def _opt(path: Path) -> str | None:
    try:
        return read_text(path)
    except OSError:
        return None


def read_v2(directory: Path) -> CgroupSample:
    """One v2 cgroup directory."""
    cpu = _kv(_read(directory / "cpu.stat"))
    quota_text = _opt(directory / "cpu.max")
    cpu_limit = None
    if quota_text:
        quota, period = quota_text.split()
        cpu_limit = None if quota == "max" else int(quota) / int(period)
    mem_stat = _kv(_opt(directory / "memory.stat") or "")
    current = int((_opt(directory / "memory.current") or "0").strip())
    working = max(current - mem_stat.get("inactive_file", 0), 0)
    mem_max = _opt(directory / "memory.max")
    events = _kv(_opt(directory / "memory.events") or "")
    pids_max = _opt(directory / "pids.max")
    io_bytes = io_ops = 0
    for line in (_opt(directory / "io.stat") or "").splitlines():
        for field in line.split()[1:]:
            k, _, v = field.partition("=")
            if k in ("rbytes", "wbytes"):
                io_bytes += int(v)
            elif k in ("rios", "wios"):
                io_ops += int(v)
    psi: dict[str, int] | None = {}
    for resource in ("cpu", "memory", "io"):
        text = _opt(directory / f"{resource}.pressure")
        if text is None:
            psi = None
            break
        for kind, total in parse_pressure(text).items():
            psi[f"{resource}.{kind}"] = total
    return CgroupSample(
        psi=psi,
        cpu_ns=cpu.get("usage_usec", 0) * 1000, periods=cpu.get("nr_periods", 0),
        throttled_periods=cpu.get("nr_throttled", 0), throttled_ns=cpu.get("throttled_usec", 0) * 1000,
        cpu_limit=cpu_limit, memory_bytes=working,
        memory_limit=_int_or_max(mem_max) if mem_max else None, oom_kills=events.get("oom_kill", 0),
        pids=int((_opt(directory / "pids.current") or "0").strip()),
        pids_limit=_int_or_max(pids_max) if pids_max else None, io_bytes=io_bytes, io_ops=io_ops)


V1_NO_LIMIT = 1 << 62   # memory.limit_in_bytes when unlimited is PAGE_COUNTER_MAX * page size


def read_v1(root: Path, paths: dict[str, str]) -> CgroupSample:
    """A container's cgroups across the v1 hierarchies (paths as /proc/PID/cgroup gives them)."""
    def d(controller: str, mount: str) -> Path:
        return root / mount / paths.get(controller, "/").lstrip("/")

    cpu_dir, acct_dir = d("cpu", "cpu"), d("cpuacct", "cpuacct")
    mem_dir, pids_dir, blk_dir = d("memory", "memory"), d("pids", "pids"), d("blkio", "blkio")
    cpu = _kv(_opt(cpu_dir / "cpu.stat") or "")
    quota = int((_opt(cpu_dir / "cpu.cfs_quota_us") or "-1").strip())
    period = int((_opt(cpu_dir / "cpu.cfs_period_us") or "100000").strip())
    mem_stat = _kv(_opt(mem_dir / "memory.stat") or "")
    usage = int((_opt(mem_dir / "memory.usage_in_bytes") or "0").strip())
    limit = int((_opt(mem_dir / "memory.limit_in_bytes") or str(V1_NO_LIMIT)).strip())
    oom = _kv(_opt(mem_dir / "memory.oom_control") or "")
    pids_max = _opt(pids_dir / "pids.max")
    io_bytes = io_ops = 0
    for name, is_bytes in (("blkio.throttle.io_service_bytes", True), ("blkio.throttle.io_serviced", False)):
        for line in (_opt(blk_dir / name) or "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in ("Read", "Write"):
                if is_bytes:
                    io_bytes += int(parts[2])
                else:
                    io_ops += int(parts[2])
    return CgroupSample(
        cpu_ns=int(_read(acct_dir / "cpuacct.usage").strip()), periods=cpu.get("nr_periods", 0),
        throttled_periods=cpu.get("nr_throttled", 0), throttled_ns=cpu.get("throttled_time", 0),
        cpu_limit=quota / period if quota > 0 else None,
        memory_bytes=max(usage - mem_stat.get("total_inactive_file", 0), 0),
        memory_limit=None if limit >= V1_NO_LIMIT else limit, oom_kills=oom.get("oom_kill", 0),
        pids=int((_opt(pids_dir / "pids.current") or "0").strip()),
        pids_limit=_int_or_max(pids_max) if pids_max else None, io_bytes=io_bytes, io_ops=io_ops)


def read_container(roots: HostRoots, mode: str, paths: dict[str, str]) -> CgroupSample:
    if mode == "v2":
        return read_v2(roots.cgroup / paths.get("", "/").lstrip("/"))
    return read_v1(roots.cgroup, paths)


def figures(a: CgroupSample, b: CgroupSample, wall: float) -> dict[str, float]:
    """The per-interval figures of one cgroup between two readings `wall` seconds apart; the
    container and the host cgroup layers both report these (prefixed container. / cgroup.)."""
    periods = b.periods - a.periods
    out: dict[str, float] = {
        "cpu": 100.0 * max(b.cpu_ns - a.cpu_ns, 0) / (wall * 1e9),
        "cpu.throttled": 100.0 * max(b.throttled_periods - a.throttled_periods, 0) / periods if periods > 0 else 0.0,
        "cpu.throttled_time": min(100.0, 100.0 * max(b.throttled_ns - a.throttled_ns, 0) / (wall * 1e9)),
        "memory": float(b.memory_bytes),
        "oom_kills": float(max(b.oom_kills - a.oom_kills, 0)),
        "pids": float(b.pids),
        "io.bytes": max(b.io_bytes - a.io_bytes, 0) / wall,
        "io.ops": max(b.io_ops - a.io_ops, 0) / wall,
    }
    if a.psi is not None and b.psi is not None:
        for key in ("cpu.some", "memory.some", "memory.full", "io.some", "io.full"):
            if key in a.psi and key in b.psi:
                out[f"psi.{key}"] = min(100.0, max(b.psi[key] - a.psi[key], 0) / (wall * 1e6) * 100)
    if b.memory_limit:
        out["memory.limit_pct"] = 100.0 * b.memory_bytes / b.memory_limit
    if b.pids_limit:
        out["pids.limit_pct"] = 100.0 * b.pids / b.pids_limit
    return out


def limits(b: CgroupSample) -> dict[str, str]:
    """A cgroup's limits as evidence attributes."""
    out = {}
    if b.cpu_limit is not None:
        out["cpu_limit"] = f"{b.cpu_limit:g} CPU"
    if b.memory_limit is not None:
        out["memory_limit"] = str(b.memory_limit)
    return out


# --- the host's cgroup layer (systemd-cgtop) ------------------------------------------------



def unit_of(path: str) -> str:
    """The systemd unit a cgroup path belongs to: its deepest .service/.scope, else its slice."""
    parts = [p for p in path.split("/") if p]
    for suffixes in ((".service", ".scope", ".socket", ".mount", ".swap"), (".slice",)):
        for p in reversed(parts):
            if p.endswith(suffixes):
                return p
    return ""


def walk(roots: HostRoots, depth: int) -> list[str]:
    """Cgroup paths from the hierarchy root down to `depth` levels ('/' included): the v2 tree,
    or on v1 the cpu controller's (every v1 controller is read at the same path)."""
    base = roots.cgroup if cgroup_mode(roots.cgroup) == "v2" else roots.cgroup / "cpu"
    out, frontier = ["/"], [("", base)]
    for _ in range(max(0, min(depth, MAX_TREE_DEPTH))):
        nxt = []
        for rel, d in frontier:
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            nxt.append((f"{rel}/{e.name}", Path(e.path)))
            except OSError:
                continue
        out.extend(rel for rel, _ in nxt)
        frontier = nxt
    return out


def read_cgroup(roots: HostRoots, mode: str, path: str) -> CgroupSample:
    if mode == "v2":
        return read_v2(roots.cgroup / path.lstrip("/"))
    return read_v1(roots.cgroup, {c: path for c in ("cpu", "cpuacct", "memory", "pids", "blkio")})


def _cg_spec(name: str, dim: str, desc: str, natural: str = "max") -> MetricSpec:
    return MetricSpec(name=f"cgroup.{name}", layer="guest", dimension=dim, kind="series", labels=("cgroup",),
                      entity="cgroup", natural_stat=natural, source="the cgroup's own files (v1 or v2), "
                      "as systemd-cgtop", description=desc, attributes=("unit",), hierarchy="cgroup")


CGROUP_METRICS = (
    _cg_spec("cpu", PERCENT, "CPU used by the cgroup and its children, percent of one CPU (systemd-cgtop %CPU)"),
    _cg_spec("cpu.throttled", PERCENT, "share of CFS periods in which the cgroup was throttled"),
    _cg_spec("memory", BYTES, "working set (usage minus inactive file cache)"),
    _cg_spec("memory.limit_pct", PERCENT, "working set as a percent of the memory limit (no value without one)"),
    _cg_spec("io.bytes", BYTE_RATE, "block I/O bytes per second"),
    _cg_spec("pids", COUNT, "tasks in the cgroup and its children"),
    _cg_spec("oom_kills", COUNT, "OOM kills in each interval (sum: in the window)", natural="sum"),
    _cg_spec("psi.cpu.some", PERCENT, "share of time some task of the cgroup waited for CPU (cgroup v2 only)"),
    _cg_spec("psi.memory.full", PERCENT, "share of time all tasks of the cgroup stalled on memory (v2 only)"),
    _cg_spec("psi.io.full", PERCENT, "share of time all tasks of the cgroup stalled on I/O (v2 only)"),
)


class CgroupCollector(Collector):
    """The host's cgroups down to a depth: which service or slice takes the CPU, the memory,
    the I/O (what systemd-cgtop shows), with the unit each belongs to."""

    name = "host.cgroup"
    METRICS = CGROUP_METRICS

    @classmethod
    def diagnose(cls, roots: HostRoots) -> list[tuple[str, str, str]]:
        unified, hybrid = roots.cgroup / "cgroup.controllers", roots.cgroup / "unified" / "cgroup.controllers"
        version = "v2" if unified.exists() else "v1 (hybrid)" if hybrid.exists() else \
            "v1" if (roots.cgroup / "cpu").exists() or (roots.cgroup / "cpu,cpuacct").exists() else None
        return [("cgroups", "ok" if version else "no", version or f"no cgroup hierarchy under {roots.cgroup}")]

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        # every depth a select: may ask for; selection keeps the depth each check wants
        return [{"cgroup": p, "unit": unit_of(p)} for p in walk(roots, MAX_TREE_DEPTH)]

    def start(self) -> None:
        self._mode = cgroup_mode(self.roots.cgroup)
        depth = tree_depth("cgroup", self.request.selections)
        # only the cgroups some check selects are read each interval, not the whole walk
        selections = self.request.selections or [()]
        self._paths = [p for p in walk(self.roots, depth)
                       if any(all(s.matches(p) for s in sel if s.label == "cgroup") for sel in selections)]
        if len(self._paths) <= 1 and not (self.roots.cgroup / "cpu").exists() and self._mode == "v1":
            raise Unavailable(f"no cgroup hierarchy under {self.roots.cgroup}")
        psi = {m for m in self.request.metrics if m.startswith("cgroup.psi.")}
        if psi and self._mode != "v2":
            self.store.mark_unavailable(psi, "per-cgroup PSI needs cgroup v2; this node runs cgroup v1")

    def begin(self, t0: float) -> None:
        self._prev = {p: self._read(p) for p in self._paths}
        self._prev_mono = time.monotonic()
        self._prev_t = 0.0
        self._gone: set[str] = set()

    def _read(self, path: str) -> CgroupSample | None:
        try:
            return read_cgroup(self.roots, self._mode, path)
        except (OSError, ValueError):
            return None

    def sample(self, t: float) -> None:
        mono = time.monotonic()
        wall, span = mono - self._prev_mono, t - self._prev_t
        if wall <= 0:
            return
        cur = {}
        for path in self._paths:
            if path in self._gone:
                continue
            b = cur[path] = self._read(path)
            a = self._prev.get(path)
            if b is None:
                if a is not None:
                    self._gone.add(path)
                    self.store.mark_gone({"cgroup": path}, t, f"cgroup {path} was removed")
                continue
            if a is None:
                continue
            info = {"unit": unit_of(path), **limits(b)}
            for key, value in figures(a, b, wall).items():
                metric = f"cgroup.{key}"
                if metric in self.request.metrics:
                    self.store.add_sample(metric, {"cgroup": path}, t, value, span, info)
        self._prev.update(cur)
        self._prev_mono, self._prev_t = mono, t
