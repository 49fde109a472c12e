"""Container layer metrics: CPU, throttling, memory, OOM kills, pids and I/O per container from
its cgroup (v1 or v2), and isolation facts as checkable 0/1 values.

The figures ``crictl stats`` and ``systemd-cgtop`` show, per interval: CPU as Δusage / Δwall;
throttling as Δnr_throttled / Δnr_periods (percent of CFS periods) and Δthrottled_time / Δwall.
Entities are (namespace, pod, container); a container deleted mid-window is reported gone with
what was observed until then.
"""
from __future__ import annotations

import os
import time
from typing import Mapping

from ...model import MetricSpec
from ...procfs import HostRoots
from ...units import BYTE_RATE, BYTES, COUNT, PERCENT, RATE
from ..base import Collector, Unavailable
from ...observations import Observation
from ..cgroups import (V1_CONTROLLERS, BlkioBlindness, CgroupSample, OpenFiles, V1Files, V2Files, cgroup_files,
                       cgroup_mode, fd_budget, figures, file_figures, limits, mark_blkio_blind, note_absent, proc_cgroups,
                       v1_dirs, v1_mount, wanted)
from .container import Container
from .docker import docker_sockets
from .discovery import cri_sockets, discover_containers, host_namespaces, namespace_ids, nspid

LABELS = ("namespace", "pod", "container")
# isolation facts: fixed for the container's life, filed each sample as 0/1
FACTS = ("container.host_pid_ns", "container.host_net_ns", "container.host_ipc_ns", "container.privileged")


def _spec(name: str, dim: str, desc: str, source: str, natural: str = "max") -> MetricSpec:
    return MetricSpec(name=name, layer="container", dimension=dim, kind="series", labels=LABELS,
                      entity="container", natural_stat=natural, source=source, description=desc,
                      attributes=("id", "image", "runtime", "label.*"))   # label.app: web


CONTAINER_METRICS = (
    _spec("container.cpu", PERCENT, "CPU used, percent of one CPU (crictl stats)",
          "cgroup cpuacct.usage | cpu.stat usage_usec"),
    _spec("container.cpu.throttled", PERCENT, "share of CFS periods in which the container was throttled",
          "cgroup cpu.stat nr_throttled / nr_periods"),
    _spec("container.cpu.throttled_time", PERCENT, "share of wall time the container spent throttled",
          "cgroup cpu.stat throttled_time | throttled_usec"),
    _spec("container.memory", BYTES, "working set (usage minus inactive file cache, as kubelet)",
          "cgroup memory usage - inactive_file"),
    _spec("container.memory.limit_pct", PERCENT, "working set as a percent of the memory limit "
          "(no value without a limit)", "cgroup memory working set / limit"),
    _spec("container.oom_kills", COUNT, "OOM kills in each interval (sum: in the window)",
          "cgroup memory.oom_control | memory.events oom_kill", natural="sum"),
    _spec("container.pids", COUNT, "tasks in the container", "cgroup pids.current"),
    _spec("container.pids.limit_pct", PERCENT, "tasks as a percent of pids.max (no value without a limit)",
          "cgroup pids.current / pids.max"),
    _spec("container.io.bytes", BYTE_RATE, "block I/O bytes per second", "cgroup blkio | io.stat"),
    _spec("container.io.ops", RATE, "block I/O operations per second", "cgroup blkio | io.stat"),
    _spec("container.psi.cpu.some", PERCENT, "share of wall time some task of the container waited for "
          "CPU (cgroup v2 only)", "cgroup cpu.pressure some total"),
    _spec("container.psi.memory.full", PERCENT, "share of wall time all tasks of the container stalled "
          "on memory (cgroup v2 only)", "cgroup memory.pressure full total"),
    _spec("container.psi.io.full", PERCENT, "share of wall time all tasks of the container stalled "
          "on I/O (cgroup v2 only)", "cgroup io.pressure full total"),
    _spec("container.host_pid_ns", COUNT, "1 if the container shares the host's PID namespace",
          "/proc/PID/ns/pid vs /proc/1/ns/pid"),
    _spec("container.host_net_ns", COUNT, "1 if the container shares the host's network namespace",
          "/proc/PID/ns/net vs /proc/1/ns/net"),
    _spec("container.host_ipc_ns", COUNT, "1 if the container shares the host's IPC namespace",
          "/proc/PID/ns/ipc vs /proc/1/ns/ipc"),
    _spec("container.privileged", COUNT, "1 if the runtime runs the container privileged (CRI only)",
          "CRI ContainerStatus"),
)


class ContainerCollector(Collector):
    name = "container.cgroup"
    METRICS = CONTAINER_METRICS

    @classmethod
    def diagnose(cls, roots: HostRoots) -> list[tuple[str, str, str]]:
        found, denied = [], []
        for kind, socks in (("CRI", cri_sockets(roots)), ("Docker Engine API", docker_sockets(roots))):
            for sock in socks:
                try:
                    os.stat(sock)
                except PermissionError:
                    denied.append(str(sock))
                    continue
                except OSError:
                    continue
                found.append(f"{kind} at {sock}")
        if denied:
            return [("runtimes", "no", f"not allowed to reach {', '.join(denied)} as uid {os.geteuid()}: "
                                       "run vcheck as root")]
        return [("runtimes", "ok" if found else "n/a",
                 "; ".join(found) or "no runtime socket (cgroup path patterns still find containers)")]

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        containers, _ = discover_containers(roots)
        return [{**c.identity, **{f"label.{k}": v for k, v in c.labels.items()}} for c in containers]

    def start(self) -> None:
        containers, notes = discover_containers(self.roots)
        for n in notes:
            self.store.note(self.name, n)
        self._mode = cgroup_mode(self.roots.cgroup)
        self._containers: dict[str, tuple[Container, dict[str, str], dict[str, str]]] = {}
        host_ns = host_namespaces(self.roots)
        for c in containers:
            try:
                paths = proc_cgroups(self.roots, c.pid)
                ns = namespace_ids(self.roots, c.pid)
                chain = nspid(self.roots, c.pid)
            except OSError:
                continue          # gone between discovery and now
            info = {**{f"label.{k}": v for k, v in c.labels.items()},
                    "id": c.id, "image": c.image, "runtime": c.runtime, "source": c.source,
                    "pid": str(c.pid), "cgroup": paths.get("cpu") or paths.get("", ""),
                    "cgroup_mode": self._mode,
                    "pid_map": f"host PID {c.pid} is {chain[-1]} in the container"}
            facts = {f"container.host_{k}_ns": "1" if ns.get(k) and ns.get(k) == host_ns.get(k) else "0"
                     for k in ("pid", "net", "ipc")}
            if c.privileged is not None:
                facts["container.privileged"] = "1" if c.privileged else "0"
            self._containers[c.id] = (c, paths, {**info, **{f"ns_{k}": v for k, v in ns.items()}, **facts})
        psi = {m for m in self.request.metrics if m.startswith("container.psi.")}
        if psi and self._mode != "v2":
            self.store.mark_unavailable(psi, "per-cgroup PSI needs cgroup v2; this node runs cgroup v1")
        if not self._containers and not containers:
            raise Unavailable("no container found: no reachable CRI socket (" +
                              ", ".join(notes or ["none present"]) + ") and no runc state")

    def begin(self, t0: float) -> None:
        # evidence attributes are fixed for the window: split them from the 0/1 facts once
        self._public = {cid: {k: v for k, v in info.items() if not k.startswith("container.")}
                        for cid, (_, _, info) in self._containers.items()}
        want = self.request.metrics
        self._facts = {cid: [(f, float(info[f])) for f in FACTS if f in info and f in want]
                       for cid, (_, _, info) in self._containers.items()}
        # only the files the requested figures (and the limits evidence shows) need, kept open,
        # as each container's plan (cgroups.V1Files, V2Files) made here says
        self._want = wanted(want, "container.") | {"limits"}
        self._metric_of = {m[len("container."):]: m for m in want if m.startswith("container.")}
        self.close()                     # a window begun again keeps no descriptors of the last
        self._files = OpenFiles(fd_budget(0.25))
        mounts = {c: v1_mount(self.roots.cgroup, c) for c in V1_CONTROLLERS} if self._mode == "v1" else None
        self._plans: dict[str, V1Files | V2Files | None] = {}
        for cid, (_, paths, _) in self._containers.items():
            try:
                found = v1_dirs(self.roots.cgroup, paths, mounts) if mounts is not None else None
                self._plans[cid] = cgroup_files(self.roots, self._mode, paths, self._want, found)
            except OSError:
                self._plans[cid] = None       # in no hierarchy: gone at the first sample
        self._series: dict[str, dict[str, Observation]] = {cid: {} for cid in self._containers}
        self._evidence: dict[str, dict[str, str]] = {}     # the public info with the limits last read
        self._limit_seen: dict[str, tuple] = {}
        self._prev = {cid: self._read(cid) for cid in self._containers}
        self._prev_mono = time.monotonic()
        self._prev_t = 0.0
        self._gone: set[str] = set()
        self._noted: set[tuple[str, str]] = set()
        self._absent_noted: dict[str, Mapping[str, str]] = {}
        io = {m for m in self.request.metrics if m in ("container.io.bytes", "container.io.ops")}
        self._blkio = BlkioBlindness(self.roots) if io and self._mode == "v1" else None

    def close(self) -> None:
        files = getattr(self, "_files", None)
        if files is not None:
            files.close()

    def _read(self, cid: str) -> CgroupSample | None:
        plan = self._plans[cid]
        try:
            return plan.read(self._files) if plan is not None else None
        except (OSError, ValueError):
            return None

    def sample(self, t: float) -> None:
        mono = time.monotonic()
        wall = mono - self._prev_mono
        span = t - self._prev_t
        if wall <= 0:
            return
        # the loop runs once per container per sample: what it touches is looked up once here
        files, prev, gone, plans, series_of = self._files, self._prev, self._gone, self._plans, self._series
        append, metric_of, limit_seen, evidence = self.store.append, self._metric_of, self._limit_seen, self._evidence
        for cid, (c, _, _) in self._containers.items():
            if cid in gone:
                continue
            plan = plans[cid]
            try:
                b = plan.read(files) if plan is not None else None
            except (OSError, ValueError):
                b = None
            a, prev[cid] = prev.get(cid), b
            if b is None:
                gone.add(cid)
                self.store.mark_gone(c.identity, t, f"container {c.id[:12]} ({c.name}) was deleted")
                if plan is not None:
                    files.drop(plan.files())
                continue
            if a is None:
                continue
            series = series_of[cid]
            seen = (b.cpu_limit, b.memory_limit)
            if limit_seen.get(cid) != seen:      # the limits as evidence: filed again when they change
                limit_seen[cid] = seen
                evidence[cid] = {**self._public[cid], **limits(b)}
                series.clear()
            file_figures(self.store, series, metric_of, figures(a, b, wall), c.identity, evidence[cid], t, span)
            for fact, value in self._facts[cid]:
                o = series.get(fact)
                if o is None:
                    o = series[fact] = self.store.series(fact, c.identity, evidence[cid])
                append(o, t, value, span)
            if b.absent and self._absent_noted.get(cid) is not b.absent:
                self._absent_noted[cid] = b.absent
                note_absent(self.store, self._noted, "container.", c.identity, b, self.request.metrics, evidence[cid])
        self._prev_mono, self._prev_t = mono, t
        if self._blkio is not None:
            mark_blkio_blind(self.store, self._blkio, ("container.io.bytes", "container.io.ops"))
