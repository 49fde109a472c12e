"""One identity for any host PID, as the operator thinks of it: the VM it belongs to (its VMM
process or a vCPU thread), else the container (namespace/pod/container), else the systemd unit,
else the cgroup path; with its PID inside its own PID namespace (NSpid) and its namespace ids.

Everything that names a task in evidence (disk-latency submitters, run-queue and KVM-exit
culprits, containers) resolves it here, so the same task reads the same everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

from .collectors.cgroups import proc_cgroups, unit_of
from .collectors.containers.container import Container
from .collectors.containers.discovery import discover_containers, host_namespaces, namespace_ids
from .collectors.vms import VM, discover_vms
from .errors import Unavailable
from .procfs import HostRoots, read_text


@dataclass(frozen=True)
class TaskIdentity:
    pid: int                     # the task (thread) id on the host
    tgid: int                    # its process
    comm: str
    kind: str                    # "vm" | "container" | "unit" | "cgroup" | "host" | "exited"
    owner: str                   # "VM web1 (vCPU 0)", "container shop/web/nginx", "unit nginx.service"
    cgroup: str = ""
    unit: str = ""
    nspid: tuple[int, ...] = ()
    namespaces: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)   # vm= / namespace= pod= container=
    exiting: str = ""            # "exited (a zombie, not yet reaped)" | "exiting": it no longer runs

    def describe(self) -> str:
        """"pid 4121 'ffmpeg' (unit transcoder.service)": how evidence names the task."""
        inner = f", PID {self.nspid[-1]} inside" if len(self.nspid) > 1 else ""
        return f"pid {self.pid} '{self.comm}' ({self.owner}{inner})"

    def to_json(self) -> dict[str, object]:
        return {"pid": self.pid, "tgid": self.tgid, "comm": self.comm, "kind": self.kind, "owner": self.owner,
                "cgroup": self.cgroup, "unit": self.unit, "nspid": list(self.nspid), "labels": self.labels}


class Resolver:
    """Resolves host PIDs; VMs and containers are discovered once, on first need."""

    def __init__(self, roots: HostRoots, vms: list[VM] | None = None, containers: list[Container] | None = None):
        self.roots = roots
        self._vms = vms
        self._containers = containers
        self._cache: dict[int, TaskIdentity] = {}

    @cached_property
    def vms(self) -> dict[int, VM]:
        if self._vms is None:
            try:
                self._vms = discover_vms(self.roots)
            except Unavailable:
                self._vms = []
        return {vm.pid: vm for vm in self._vms}

    @cached_property
    def _vcpu_threads(self) -> dict[int, tuple[VM, int]]:
        return {v.tid: (vm, v.index) for vm in self.vms.values() for v in vm.vcpus}

    @cached_property
    def containers(self) -> dict[str, Container]:
        """pid namespace id -> container (the first container of a pod that shares one)."""
        if self._containers is None:
            self._containers = discover_containers(self.roots)[0]
        host_pid_ns = host_namespaces(self.roots).get("pid")
        out: dict[str, Container] = {}
        for c in self._containers:
            try:
                ns = namespace_ids(self.roots, c.pid).get("pid")
            except OSError:
                continue
            if ns and ns != host_pid_ns:
                out.setdefault(ns, c)
        return out

    @cached_property
    def _by_cgroup_id(self) -> dict[str, Container]:
        return {c.id: c for c in (self._containers or [])}

    def resolve(self, pid: int, comm: str = "") -> TaskIdentity:
        if pid not in self._cache:
            self._cache[pid] = self._resolve(pid, comm)
        return self._cache[pid]

    def _resolve(self, pid: int, comm: str) -> TaskIdentity:
        ident = self._owner(pid, comm)
        if ident.kind == "exited" or not ident.exiting:
            return ident
        # a zombie or a task in exit: its owner still reads, but it no longer runs
        return replace(ident, kind="exited", owner=f"{ident.owner}, {ident.exiting}")

    def _owner(self, pid: int, comm: str) -> TaskIdentity:
        proc = self.roots.proc
        try:
            status = read_text(proc / str(pid) / "status")
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            flags = task_flags(read_text(proc / str(pid) / "stat"))
            tgid = int(fields.get("Tgid", str(pid)).strip())
            comm = comm or fields.get("Name", "").strip()
            chain = tuple(int(x) for x in fields.get("NSpid", str(pid)).split())
            cgroups = proc_cgroups(self.roots, pid)
            namespaces = namespace_ids(self.roots, pid)
        except (OSError, ValueError):
            return TaskIdentity(pid, pid, comm or "?", "exited", "exited before it could be resolved")
        cgroup = cgroups.get("cpu") or cgroups.get("") or next(iter(cgroups.values()), "")
        unit = unit_of(cgroup)
        state = fields.get("State", "").strip()
        exiting = ("exited (a zombie, not yet reaped)" if state.startswith(("Z", "X")) else
                   "exiting" if flags & PF_EXITING else "")
        common = {"cgroup": cgroup, "unit": unit, "nspid": chain, "namespaces": namespaces, "exiting": exiting}
        if pid in self._vcpu_threads or tgid in self.vms:
            vm, index = self._vcpu_threads.get(pid, (self.vms.get(tgid), None))
            assert vm is not None
            what = f"VM {vm.name}" + (f", vCPU {index}" if index is not None else f", VMM {vm.vmm}")
            return TaskIdentity(pid, tgid, comm, "vm", what, labels={"vm": vm.name}, **common)
        container = self.containers.get(namespaces.get("pid", "")) or next(
            (c for cid, c in self._by_cgroup_id.items() if cid and cid in cgroup), None)
        if container is not None:
            return TaskIdentity(pid, tgid, comm, "container",
                                f"container {container.namespace}/{container.pod}/{container.name}",
                                labels=container.identity, **common)
        if unit:
            return TaskIdentity(pid, tgid, comm, "unit", f"unit {unit}", **common)
        if cgroup and cgroup != "/":
            return TaskIdentity(pid, tgid, comm, "cgroup", f"cgroup {cgroup}", **common)
        # PF_KTHREAD, not an empty cmdline: a zombie's or an exiting task's cmdline is empty too
        return TaskIdentity(pid, tgid, comm, "host", "kernel thread" if flags & PF_KTHREAD else "host, root cgroup",
                            **common)


PF_EXITING = 0x00000004    # include/linux/sched.h: getting shut down
PF_KTHREAD = 0x00200000    # include/linux/sched.h: I am a kernel thread


def task_flags(stat_text: str) -> int:
    """The task's PF_* flags: field 9 of /proc/PID/stat (after the parenthesised comm)."""
    return int(stat_text.rsplit(")", 1)[1].split()[6])
