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
from typing import Iterable, Mapping

from ..probes import BpfProgram, BpfUnavailable
from ..model import MetricSpec
from ..observations import labels_of
from ..procfs import HostRoots, read_text
from ..units import BYTES, COUNT, PERCENT, RATE
from .base import Collector, Needs, Unavailable
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


def parse_switches(status_text: str) -> int:
    n = 0
    for line in status_text.splitlines():
        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
            n += int(line.split()[1])
    return n


def read_task(task_dir: Path) -> TaskTimes:
    cpu, guest = parse_stat(read_text(task_dir / "stat"))
    status = read_text(task_dir / "status")
    return TaskTimes(cpu, guest, parse_schedstat(read_text(task_dir / "schedstat")),
                     parse_switches(status), parse_rss(status))


def parse_rss(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


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
        self._gone: set[int] = set()
        self._runq: BpfProgram | None = None
        tids = [v.tid for vm in self._vms.values() for v in vm.vcpus]
        if "vcpu.run_delay" in self.request.metrics and tids:
            self._watch(tids)

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
            self.close()
            return
        for n in self._runq.notes:
            self.store.note(self.name, n)

    def begin(self, t0: float) -> None:
        self._t_prev = 0.0
        self._prev = self._base = self._read_all(self._vms.values())
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
        self.close()
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

    def close(self) -> None:
        prog, self._runq = getattr(self, "_runq", None), None
        if prog is not None:
            prog.close()

    def _read_all(self, vms: Iterable[VM]) -> dict[tuple[int, int], TaskTimes | None]:
        out: dict[tuple[int, int], TaskTimes | None] = {}
        for vm in vms:
            base = self.roots.proc / str(vm.pid)
            try:
                out[(vm.pid, 0)] = read_task(base)
            except (OSError, IndexError, ValueError):
                out[(vm.pid, 0)] = None
                continue
            for v in vm.vcpus:
                try:
                    out[(vm.pid, v.tid)] = read_task(base / "task" / str(v.tid))
                except (OSError, IndexError, ValueError):
                    out[(vm.pid, v.tid)] = None
        return out

    def sample(self, t: float) -> None:
        cur = self._read_all(self._vms.values())
        span = t - self._t_prev
        if span <= 0:
            return
        wall_ticks = span * CLK_TCK
        want = self.request.metrics
        for pid, vm in self._vms.items():
            if pid in self._gone:
                continue
            info = {"pid": str(pid), "vmm": vm.vmm, "cmdline": vm.cmdline,
                    **{k: v for k, v in (("uuid", vm.uuid), ("serial", vm.serial)) if v}}
            a, b = self._prev.get((pid, 0)), cur.get((pid, 0))
            if b is None:
                self._gone.add(pid)
                self.store.mark_gone({"vm": vm.name}, t, f"VMM process {pid} exited")
                continue
            if a is not None:
                if "vm.cpu" in want:
                    self.store.add_sample("vm.cpu", {"vm": vm.name}, t,
                                          100.0 * max(b.cpu_ticks - a.cpu_ticks, 0) / wall_ticks, span, info)
            if "vm.memory.rss" in want:
                self.store.add_sample("vm.memory.rss", {"vm": vm.name}, t, float(b.rss), span, info)
            if "vm.vcpus" in want:
                self.store.add_sample("vm.vcpus", {"vm": vm.name}, t, float(len(vm.vcpus)), span,
                                      {**info, "vcpu_fds": str(vm.vcpu_fds)})
            for v in vm.vcpus:
                labels = {"vm": vm.name, "vcpu": str(v.index)}
                vinfo = {**info, "tid": str(v.tid)}
                a, b = self._prev.get((pid, v.tid)), cur.get((pid, v.tid))
                if b is None:
                    self.store.mark_gone(labels, t, f"vCPU thread {v.tid} exited")
                    continue
                if a is None:
                    continue
                # one thread cannot use more than one CPU: tick rounding against the sampling
                # interval can, so clamp
                values = {
                    "vcpu.cpu": min(100.0, 100.0 * max(b.cpu_ticks - a.cpu_ticks, 0) / wall_ticks),
                    "vcpu.guest": min(100.0, 100.0 * max(b.guest_ticks - a.guest_ticks, 0) / wall_ticks),
                    "vcpu.run_delay": min(100.0, 100.0 * max(b.run_delay_ns - a.run_delay_ns, 0) / (span * 1e9)),
                    "vcpu.ctxsw.rate": max(b.switches - a.switches, 0) / span,
                }
                for m, val in values.items():
                    if m in want:
                        self.store.add_sample(m, labels, t, val, span, vinfo)
        self._prev, self._t_prev = cur, t
