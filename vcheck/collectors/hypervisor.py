"""Hypervisor: every VM on this host, its vCPU threads, their CPU time and scheduling delay.

The walk an operator does with ``top``, ``ps -wwfp`` and ``pidstat -p``: a VM is any process
holding an ``anon_inode:kvm-vm`` fd (qemu, firecracker, cloud-hypervisor, crosvm, kvmtool or
a VMM of one's own), named from its command line where the VMM says a name; its vCPUs are the
threads the VMM names as such, or else the threads sitting in ioctl(KVM_RUN) on an
``anon_inode:kvm-vcpu:N`` fd. ``vcpu.run_delay`` is the host-side view of the guest's steal:
the share of wall time the vCPU thread was runnable but not running (schedstat field 2); its
culprits (who had the CPU while the vCPU waited) come from bpf/runq_latency.c, watching the vCPU
threads' tids, where BPF can run.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from ..probes import BpfProgram, BpfUnavailable
from ..model import MetricSpec
from ..observations import Observation, labels_of
from ..procfs import HostRoots, read_text
from ..units import BYTES, COUNT, PERCENT, RATE
from .base import Collector, Needs, Unavailable
from .cgroups import OpenFiles, fd_budget
from .sched import RUNQ_TRACEPOINTS, VICTIM_TASK, WATCH_FLAGS, culprits, read_charges, task_resolver, walked
from .vms import (CLK_TCK, KVM_RUN, SYS_IOCTL_X86_64, VCPU_THREAD_NAMES, VM, VCpu,  # noqa: F401 - re-exported
                  discover_vms, find_vcpu_threads, parse_stat, vm_identity)


BUSY_TICKS = 5   # CPU ticks a vCPU thread must use in the window before its guest time must move

# --- per-thread figures -------------------------------------------------------------------
@dataclass(frozen=True)
class TaskTimes:
    cpu_ticks: int      # utime + stime (guest time is inside utime)
    guest_ticks: int
    run_delay_ns: int   # schedstat field 2
    switches: int       # voluntary + involuntary
    rss: int = 0        # VmRSS (bytes) of the process; threads share it


def parse_schedstat(text: str) -> int:
    """Run-queue wait (ns): the second field of /proc/PID/task/TID/schedstat."""
    return int(text.split()[1])


def _status_field(status_text: str, key: str) -> int:
    """The number after `key:` in /proc/.../status (0 when absent): found, not split line by line."""
    i = status_text.find(f"\n{key}:")
    if i < 0:
        return 0
    start = i + len(key) + 2
    end = status_text.find("\n", start)
    return int(status_text[start:end if end >= 0 else len(status_text)].split()[0])


def parse_switches(status_text: str) -> int:
    return (_status_field(status_text, "voluntary_ctxt_switches")
            + _status_field(status_text, "nonvoluntary_ctxt_switches"))


def parse_rss(status_text: str) -> int:
    return _status_field(status_text, "VmRSS") * 1024


# which of a task's files each figure needs: a sample reads no other
PROCESS_FILES = {"vm.cpu": "stat", "vm.memory.rss": "status"}
VCPU_FILES = {"vcpu.cpu": "stat", "vcpu.guest": "stat", "vcpu.run_delay": "schedstat", "vcpu.ctxsw.rate": "status"}
FD_SHARE = 0.125   # of this process's descriptors (cgroups.fd_budget: the cgroup layer half, containers a quarter)


@dataclass(frozen=True)
class TaskFiles:
    """The files of one task (a VMM process or a vCPU thread) a sample reads; None: not needed."""

    stat: str | None
    status: str | None
    schedstat: str | None

    @classmethod
    def of(cls, task_dir: str, files: frozenset[str]) -> "TaskFiles":
        return cls(*(f"{task_dir}/{f}" if f in files else None for f in ("stat", "status", "schedstat")))

    def read(self, read: Callable[[str], str]) -> TaskTimes:
        """The task's figures through `read` (path -> text); those of a file not held stay 0 and
        are never filed (no asked figure needs them)."""
        cpu = guest = delay = switches = rss = 0
        if self.stat is not None:
            cpu, guest = parse_stat(read(self.stat))
        if self.schedstat is not None:
            delay = parse_schedstat(read(self.schedstat))
        if self.status is not None:
            status = read(self.status)
            switches, rss = parse_switches(status), parse_rss(status)
        return TaskTimes(cpu, guest, delay, switches, rss)


def files_needed(want: frozenset[str], by_metric: Mapping[str, str]) -> frozenset[str]:
    return frozenset(f for m, f in by_metric.items() if m in want)


def _vm_spec(name: str, dim: str, desc: str, source: str) -> MetricSpec:
    return MetricSpec(name=name, layer="hypervisor", dimension=dim, kind="series", labels=("vm",),
                      entity="vm", natural_stat="max", source=source, description=desc,
                      attributes=("pid", "vmm"))


def _vcpu_spec(name: str, dim: str, desc: str, source: str) -> MetricSpec:
    return MetricSpec(name=name, layer="hypervisor", dimension=dim, kind="series", labels=("vm", "vcpu"),
                      entity="vcpu", natural_stat="max", source=source, description=desc,
                      attributes=("pid", "tid", "vmm"))


HYPERVISOR_METRICS = (
    _vm_spec("vm.cpu", PERCENT, "CPU used by the whole VMM process, percent of one CPU (user+system)",
             "/proc/PID/stat"),
    _vm_spec("vm.memory.rss", BYTES, "resident memory of the VMM process (guest RAM touched + VMM)",
             "/proc/PID/status VmRSS"),
    _vm_spec("vm.vcpus", COUNT, "vCPU threads found (a VM with vCPU fds but no findable vCPU thread "
             "cannot be observed per vCPU: require >= 1)", "thread names, /proc/PID/task/TID/syscall"),
    _vcpu_spec("vcpu.cpu", PERCENT, "CPU used by one vCPU thread, percent of one CPU (pidstat %CPU)",
               "/proc/PID/task/TID/stat utime+stime"),
    _vcpu_spec("vcpu.guest", PERCENT, "time the vCPU thread ran guest code, percent of one CPU "
               "(pidstat %guest)", "/proc/PID/task/TID/stat guest_time"),
    _vcpu_spec("vcpu.run_delay", PERCENT, "share of wall time the vCPU thread was runnable but not "
               "running: the host-side view of the guest's steal (pidstat %wait)",
               "/proc/PID/task/TID/schedstat field 2; culprits: BPF sched tracepoints (bpf/runq_latency.c)"),
    _vcpu_spec("vcpu.ctxsw.rate", RATE, "context switches per second of the vCPU thread",
               "/proc/PID/task/TID/status"),
)


class HypervisorCollector(Collector):
    name = "hypervisor.proc"
    METRICS = HYPERVISOR_METRICS
    NEEDS = Needs(files=(("proc", "self/schedstat", "vCPU run delay (schedstat)"),))

    @classmethod
    def diagnose(cls, roots: HostRoots) -> list[tuple[str, str, str]]:
        kvm = os.path.exists("/dev/kvm")
        rows = [("KVM", "ok" if kvm else "n/a", "/dev/kvm" if kvm else "no /dev/kvm: not a KVM host")]
        try:
            vms = discover_vms(roots)
        except Unavailable as exc:
            return rows + [("VMs", "no", exc.reason)]
        return rows + [("VMs", "ok" if vms else "n/a",
                        ", ".join(f"{v.name} (pid {v.pid}, {len(v.vcpus)} vCPUs)" for v in vms[:8])
                        or "no process holds a kvm-vm fd")]

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        vms = discover_vms(roots)
        if metric.startswith("vcpu."):
            return [{"vm": vm.name, "vcpu": str(v.index)} for vm in vms for v in vm.vcpus]
        return [{"vm": vm.name} for vm in vms]

    def start(self) -> None:
        self._vms = {vm.pid: vm for vm in discover_vms(self.roots)}
        self._gone: set[int] = set()          # VMM processes that exited
        self._gone_vcpus: set[int] = set()    # vCPU threads that exited
        self._runq: BpfProgram | None = None
        self._files = OpenFiles(fd_budget(FD_SHARE))
        self._plan_reads()
        tids = [v.tid for vm in self._vms.values() for v in vm.vcpus]
        if "vcpu.run_delay" in self.request.metrics and tids:
            self._watch(tids)

    def _plan_reads(self) -> None:
        """Per task, the files the requested figures need, and per series its labels and evidence,
        worked out once: a sample then reads and files without building paths or finding series
        by their labels. A VMM process is read for its liveness even when no vm.* figure is asked."""
        want = self.request.metrics
        process = files_needed(want, PROCESS_FILES) or frozenset({"stat"})
        vcpu = files_needed(want, VCPU_FILES)
        proc = str(self.roots.proc)
        self._tasks: dict[int, tuple[TaskFiles, list[tuple[VCpu, TaskFiles]]]] = {}
        self._labels: dict[tuple[int, int], tuple[dict[str, str], dict[str, str]]] = {}
        self._held: dict[tuple[str, int, int], Observation] = {}
        for pid, vm in self._vms.items():
            base = f"{proc}/{pid}"
            self._tasks[pid] = (TaskFiles.of(base, process),
                                [(v, TaskFiles.of(f"{base}/task/{v.tid}", vcpu)) for v in vm.vcpus] if vcpu else [])
            info = {"pid": str(pid), "vmm": vm.vmm, "cmdline": vm.cmdline,
                    **{k: v for k, v in (("uuid", vm.uuid), ("serial", vm.serial)) if v}}
            self._labels[(pid, 0)] = ({"vm": vm.name}, info)
            for v in vm.vcpus:
                self._labels[(pid, v.tid)] = ({"vm": vm.name, "vcpu": str(v.index)}, {**info, "tid": str(v.tid)})

    def _add(self, metric: str, pid: int, tid: int, t: float, value: float, span: float,
             info: Mapping[str, str] | None = None) -> None:
        """File a sample on the series the collector holds (found by its labels once)."""
        o = self._held.get((metric, pid, tid))
        if o is None:
            labels, default_info = self._labels[(pid, tid)]
            o = self._held[(metric, pid, tid)] = self.store.series(metric, labels, info or default_info)
        self.store.append(o, t, value, span)

    def _watch(self, tids: list[int]) -> None:
        """Culprits of the vCPUs' run delay: without BPF the delay is still measured, unexplained."""
        try:
            self._runq = BpfProgram("runq_latency.c", RUNQ_TRACEPOINTS, cflags=WATCH_FLAGS,
                                    cost_sink=self.store.bpf_cost).load()
            for tid in tids:
                self._runq["watched"][ctypes.c_uint32(tid)] = ctypes.c_uint8(1)
        except Exception as exc:   # culprits are optional evidence: never worth the metric itself
            why = exc.reason if isinstance(exc, BpfUnavailable) else repr(exc)
            self.store.note(self.name, f"vcpu.run_delay without culprits: {why}")
            self._detach()
            return
        for n in self._runq.notes:
            self.store.note(self.name, n)

    def begin(self, t0: float) -> None:
        self._t_prev = 0.0
        self._prev = self._base = self._read_all()
        if self._runq is not None:
            self._runq.clear("culprits", "counters")

    def stop(self, t: float) -> None:
        if "vcpu.guest" in self.request.metrics:
            self._file_blind_guest_time()
        prog = self._runq
        if prog is None:
            return
        charges = read_charges(prog, VICTIM_TASK)
        full = prog.counters().get("culprits_full", 0)
        history = walked(prog)
        self._detach()
        observed = {o.labels: o for o in self.store.for_metric("vcpu.run_delay")}
        resolver = task_resolver(self.roots, list(self._vms.values()))
        for vm in self._vms.values():
            for v in vm.vcpus:
                o = observed.get(labels_of({"vm": vm.name, "vcpu": str(v.index)}))
                if o is None or v.tid not in charges:
                    continue
                o.culprits, notes = culprits(charges[v.tid], resolver, history=history)
                o.notes.extend(notes)
        if full:
            self.store.note(self.name, f"{full} vCPU waits were not split among culprits: the culprit map was full")

    def _file_blind_guest_time(self) -> None:
        """vcpu.guest is blind for a vCPU thread that ran in the window without one tick booked
        as guest time: a host that books guest time as system time (nested paravirtual KVM such
        as PVM) shows 0 % for a vCPU in guest code all the time. Its zeros are withdrawn, so no
        verdict is drawn from them either way (the kvm_exit rule)."""
        window_ticks = max(self._t_prev, 1e-9) * CLK_TCK
        for pid, vm in self._vms.items():
            for v in vm.vcpus:
                a, b = self._base.get((pid, v.tid)), self._prev.get((pid, v.tid))
                if a is None or b is None:
                    continue
                used = b.cpu_ticks - a.cpu_ticks
                if b.guest_ticks - a.guest_ticks > 0 or used < max(BUSY_TICKS, 0.1 * window_ticks):
                    continue
                o = self.store.series("vcpu.guest", {"vm": vm.name, "vcpu": str(v.index)})
                o.times.clear(), o.values.clear(), o.spans.clear(), o.weights.clear()
                o.blind = (f"vCPU thread {v.tid} of {vm.name} used {used} ticks of CPU "
                           f"({100.0 * used / window_ticks:.0f}%) in the window and the kernel booked none "
                           f"as guest time (/proc/{pid}/task/{v.tid}/stat guest_time did not move): this "
                           f"host books guest time as system time, so vcpu.guest cannot be measured here")

    def _detach(self) -> None:
        prog, self._runq = getattr(self, "_runq", None), None
        if prog is not None:
            prog.close()

    def close(self) -> None:
        self._detach()
        files = getattr(self, "_files", None)
        if files is not None:
            files.close()

    def _read_all(self) -> dict[tuple[int, int], TaskTimes | None]:
        """Every live VM's and vCPU's figures, through descriptors kept open (pread at offset 0:
        a /proc task file is regenerated on a read from 0, and one whose task has exited
        answers ESRCH, which is how it is seen gone; a pid reused meanwhile is not misread)."""
        out: dict[tuple[int, int], TaskTimes | None] = {}
        read = self._files.read
        for pid, (process, vcpus) in self._tasks.items():
            if pid in self._gone:
                continue
            try:
                out[(pid, 0)] = process.read(read)
            except (OSError, IndexError, ValueError):
                out[(pid, 0)] = None
                continue
            for v, files in vcpus:
                if v.tid in self._gone_vcpus:
                    continue
                try:
                    out[(pid, v.tid)] = files.read(read)
                except (OSError, IndexError, ValueError):
                    out[(pid, v.tid)] = None
        return out

    def _forget(self, pid: int, tid: int = 0) -> None:
        """Close the descriptors of a task that has exited (a process: its threads' too)."""
        base = f"{self.roots.proc}/{pid}"
        if tid:
            self._files.forget(f"{base}/task/{tid}")
            return
        self._files.forget(base)
        for v in self._vms[pid].vcpus:
            self._files.forget(f"{base}/task/{v.tid}")

    def sample(self, t: float) -> None:
        cur = self._read_all()
        span = t - self._t_prev
        if span <= 0:
            return
        wall_ticks = span * CLK_TCK
        want = self.request.metrics
        # one thread cannot use more than one CPU: tick rounding against the sampling interval
        # can, so clamp
        figures = [(m, f) for m, f in (
            ("vcpu.cpu", lambda a, b: min(100.0, 100.0 * max(b.cpu_ticks - a.cpu_ticks, 0) / wall_ticks)),
            ("vcpu.guest", lambda a, b: min(100.0, 100.0 * max(b.guest_ticks - a.guest_ticks, 0) / wall_ticks)),
            ("vcpu.run_delay", lambda a, b: min(100.0, 100.0 * max(b.run_delay_ns - a.run_delay_ns, 0) / (span * 1e9))),
            ("vcpu.ctxsw.rate", lambda a, b: max(b.switches - a.switches, 0) / span),
        ) if m in want]
        for pid, vm in self._vms.items():
            if pid in self._gone:
                continue
            a, b = self._prev.get((pid, 0)), cur.get((pid, 0))
            if b is None:
                self._gone.add(pid)
                self._forget(pid)
                self.store.mark_gone({"vm": vm.name}, t, f"VMM process {pid} exited")
                continue
            if a is not None and "vm.cpu" in want:
                self._add("vm.cpu", pid, 0, t, 100.0 * max(b.cpu_ticks - a.cpu_ticks, 0) / wall_ticks, span)
            if "vm.memory.rss" in want:
                self._add("vm.memory.rss", pid, 0, t, float(b.rss), span)
            if "vm.vcpus" in want:
                self._add("vm.vcpus", pid, 0, t, float(len(vm.vcpus)), span,
                          {**self._labels[(pid, 0)][1], "vcpu_fds": str(vm.vcpu_fds)})
            if not figures:
                continue
            for v in vm.vcpus:
                if v.tid in self._gone_vcpus:
                    continue
                a, b = self._prev.get((pid, v.tid)), cur.get((pid, v.tid))
                if b is None:
                    self._gone_vcpus.add(v.tid)
                    self._forget(pid, v.tid)
                    self.store.mark_gone(self._labels[(pid, v.tid)][0], t, f"vCPU thread {v.tid} exited")
                    continue
                if a is None:
                    continue
                for m, figure in figures:
                    self._add(m, pid, v.tid, t, figure(a, b), span)
        self._prev, self._t_prev = cur, t
