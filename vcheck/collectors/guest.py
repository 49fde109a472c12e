"""Guest layer from /proc: CPU time shares (incl. steal) and pressure stall information.

CPU shares follow mpstat: per interval, Δ of each /proc/stat field over Δ(user + nice +
system + idle + iowait + irq + softirq + steal). guest/guest_nice are already inside
user/nice and stay out of the total. ``cpu.user`` is mpstat's %usr (user minus guest).
The all-CPU figure is the sum over CPUs present in *both* readings, so a CPU going offline
or coming online mid-window never makes the aggregate jump.
"""
from __future__ import annotations

import errno
import time
from dataclasses import dataclass
from typing import Mapping

from ..model import MetricSpec
from ..procfs import HostRoots, read_text
from ..units import PERCENT
from .base import Collector, Needs, Unavailable

_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice")


def _cpu(name: str, desc: str) -> MetricSpec:
    return MetricSpec(name=name, layer="guest", dimension=PERCENT, kind="series", labels=("cpu",),
                      entity="cpu", natural_stat="max", source="/proc/stat deltas (as mpstat)",
                      description=desc)


CPU_METRICS = (
    _cpu("cpu.steal", "time a vCPU was runnable but the hypervisor ran something else"),
    _cpu("cpu.iowait", "idle time with I/O outstanding"),
    _cpu("cpu.user", "user time excluding guest time (mpstat %usr)"),
    _cpu("cpu.system", "kernel time excluding irq/softirq (mpstat %sys)"),
    _cpu("cpu.idle", "idle time (mpstat %idle)"),
    _cpu("cpu.busy", "100% minus idle and iowait"),
)


@dataclass(frozen=True)
class CpuTimes:
    fields: Mapping[str, int]

    @property
    def total(self) -> int:
        f = self.fields
        return sum(f[k] for k in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"))


def parse_proc_stat(text: str) -> dict[str, CpuTimes]:
    """'cpu' (aggregate) and 'cpuN' lines of /proc/stat -> ticks per field; absent fields are 0."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        parts = line.split()
        vals = [int(x) for x in parts[1:11]]
        vals += [0] * (len(_FIELDS) - len(vals))
        out[parts[0]] = CpuTimes(dict(zip(_FIELDS, vals)))
    return out


def cpu_shares(before: CpuTimes, after: CpuTimes) -> dict[str, float] | None:
    """Percent of the interval per metric; None when no tick elapsed. Counters that went
    backwards (iowait does, on tickless kernels) count as 0."""
    d = {k: max(after.fields[k] - before.fields[k], 0) for k in _FIELDS}
    total = sum(d[k] for k in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"))
    if total <= 0:
        return None
    pct = {k: 100.0 * v / total for k, v in d.items()}
    return {
        "cpu.steal": pct["steal"],
        "cpu.iowait": pct["iowait"],
        "cpu.user": max(100.0 * (d["user"] - d["guest"]) / total, 0.0),
        "cpu.system": pct["system"],
        "cpu.idle": pct["idle"],
        "cpu.busy": max(100.0 - pct["idle"] - pct["iowait"], 0.0),
    }


def _sum_times(items: list[CpuTimes]) -> CpuTimes:
    return CpuTimes({k: sum(t.fields[k] for t in items) for k in _FIELDS})


class CpuStatCollector(Collector):
    name = "guest.cpu"
    METRICS = CPU_METRICS
    NEEDS = Needs(files=(("proc", "stat", "CPU shares incl. steal"),))

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        cpus = [k for k in parse_proc_stat(read_text(roots.proc / "stat")) if k != "cpu"]
        return [{"cpu": k[3:]} for k in sorted(cpus, key=lambda c: int(c[3:]))]

    def _read(self) -> dict[str, CpuTimes]:
        try:
            return parse_proc_stat(read_text(self.roots.proc / "stat"))
        except OSError as exc:
            raise Unavailable(f"cannot read {self.roots.proc / 'stat'}: {exc.strerror}") from exc

    def start(self) -> None:
        self._prev = self._read()
        self._prev_t = 0.0

    def begin(self, t0: float) -> None:
        self._prev = self._read()

    def sample(self, t: float) -> None:
        cur = self._read()
        span = t - self._prev_t
        common = sorted((k for k in cur if k != "cpu" and k in self._prev), key=lambda c: int(c[3:]))
        for k in set(self._prev) - set(cur):
            self.store.mark_gone({"cpu": k[3:]}, t, f"{k} went offline")
        for k in set(cur) - set(self._prev) - {"cpu"}:
            self.store.note(self.name, f"{k} came online at +{t:.1f}s; its first interval is left out")
        wanted = self.request.metrics
        for k in common:
            shares = cpu_shares(self._prev[k], cur[k])
            if shares:
                for m in wanted:
                    self.store.add_sample(m, {"cpu": k[3:]}, t, shares[m], span)
        agg = cpu_shares(_sum_times([self._prev[k] for k in common]), _sum_times([cur[k] for k in common]))
        if agg:
            for m in wanted:
                self.store.add_sample(m, {}, t, agg[m], span)
        self._prev, self._prev_t = cur, t


def _psi(resource: str, kind: str) -> MetricSpec:
    return MetricSpec(name=f"psi.{resource}.{kind}", layer="guest", dimension=PERCENT, kind="series",
                      labels=(), entity="node", natural_stat="max",
                      source=f"/proc/pressure/{resource} '{kind}' total",
                      description=f"share of wall time in which {'some' if kind == 'some' else 'all'} "
                                  f"non-idle tasks were stalled on {resource}")


PSI_METRICS = (_psi("cpu", "some"), _psi("memory", "some"), _psi("memory", "full"),
               _psi("io", "some"), _psi("io", "full"))


def parse_pressure(text: str) -> dict[str, int]:
    """'some avg10=.. total=N' lines -> {'some': N_us, 'full': N_us}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        for p in parts[1:]:
            if p.startswith("total="):
                out[parts[0]] = int(p[6:])
    return out


class PressureCollector(Collector):
    name = "guest.psi"
    METRICS = PSI_METRICS
    NEEDS = Needs(files=tuple(("proc", f"pressure/{r}", f"PSI {r}") for r in ("cpu", "memory", "io")))

    def _read(self) -> tuple[float, dict[str, dict[str, int]]]:
        now = time.monotonic()
        return now, {r: parse_pressure(read_text(self.roots.proc / "pressure" / r)) for r in self._resources}

    def start(self) -> None:
        """Find which pressure files this kernel offers; a missing one means unavailable, not 0."""
        self._resources = []
        for resource in sorted({m.split(".")[1] for m in self.request.metrics}):
            path = self.roots.proc / "pressure" / resource
            metrics = tuple(m for m in self.request.metrics if m.split(".")[1] == resource)
            try:
                read_text(path)
            except OSError as exc:
                why = "PSI is disabled (boot with psi=1)" if exc.errno == errno.EOPNOTSUPP else \
                    "the kernel has no PSI (CONFIG_PSI)" if exc.errno == errno.ENOENT else exc.strerror
                self.store.mark_unavailable(metrics, f"{path}: {why}")
                continue
            self._resources.append(resource)
        if not self._resources:
            raise Unavailable("no /proc/pressure files readable")
        self._prev_mono, self._prev = self._read()
        self._prev_t = 0.0

    def begin(self, t0: float) -> None:
        self._prev_mono, self._prev = self._read()

    def sample(self, t: float) -> None:
        mono, cur = self._read()
        wall_us = (mono - self._prev_mono) * 1e6
        if wall_us <= 0:
            return
        for m in self.request.metrics:
            _, resource, kind = m.split(".")
            before, after = self._prev.get(resource, {}), cur.get(resource, {})
            if kind in before and kind in after:
                stalled = max(after[kind] - before[kind], 0)
                self.store.add_sample(m, {}, t, min(100.0 * stalled / wall_us, 100.0), t - self._prev_t)
        self._prev_mono, self._prev, self._prev_t = mono, cur, t
