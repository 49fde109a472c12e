"""The node as a model for Python checks: its VMs and containers, discovered lazily and once,
by the collectors' own discovery code (no second implementation), read-only.

``ContainerView.run()`` is the seed's ``nsenter`` step: a command in a container's namespaces,
argv only (no shell), with a timeout and a cap on output. By default it runs as nobody with no
new privileges, so a check can look but not change anything; ``privileged=True`` is the opt-in.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

from .collectors.cgroups import CgroupSample, cgroup_mode, proc_cgroups, read_container
from .collectors.containers.container import Container
from .collectors.containers.discovery import discover_containers, host_namespaces, namespace_ids, nspid
from .collectors.vms import VM, discover_vms
from .errors import Unavailable
from .procfs import HostRoots, read_text

MAX_OUTPUT = 64 * 1024
NAMESPACES = ("mnt", "uts", "ipc", "net", "pid", "cgroup")
_NSENTER_FLAG = {"mnt": "--mount", "uts": "--uts", "ipc": "--ipc", "net": "--net", "pid": "--pid", "cgroup": "--cgroup"}


@dataclass(frozen=True)
class RunResult:
    """A command run inside a container, as evidence."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    truncated: bool = False

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}  (exit {self.returncode})\n{self.stdout}{self.stderr}"


@dataclass
class VcpuView:
    index: int
    tid: int
    name: str

    @property
    def affinity(self) -> frozenset[int]:
        """Host CPUs this vCPU thread may run on (sched_getaffinity of its thread)."""
        return frozenset(os.sched_getaffinity(self.tid))


@dataclass
class VmView:
    vm: VM
    vcpus: list[VcpuView] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.vm.name

    @property
    def pid(self) -> int:
        return self.vm.pid

    @property
    def pinned(self) -> bool:
        """Every vCPU is confined to fewer host CPUs than the host has."""
        total = os.cpu_count() or 1
        return bool(self.vcpus) and all(len(v.affinity) < total for v in self.vcpus)


@dataclass
class ContainerView:
    container: Container
    roots: HostRoots
    cgroup_paths: dict[str, str] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)
    nspid: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.container.name

    @property
    def pod(self) -> str:
        return self.container.pod

    @property
    def namespace(self) -> str:
        return self.container.namespace

    @property
    def pid(self) -> int:
        return self.container.pid

    @property
    def entity(self) -> str:
        return "-".join(x for x in (self.namespace, self.pod, self.name) if x)

    @cached_property
    def host_namespaces(self) -> dict[str, str]:
        return host_namespaces(self.roots)

    def cgroup(self) -> CgroupSample:
        """The container's cgroup figures now (CPU quota, memory limit, pids ...)."""
        return read_container(self.roots, cgroup_mode(self.roots.cgroup), self.cgroup_paths)

    def run(self, argv: Sequence[str], *, timeout: float = 10.0, privileged: bool = False,
            max_output: int = MAX_OUTPUT) -> RunResult:
        """Run argv in the container's namespaces (mount, uts, ipc, net, pid, cgroup). No shell: argv is
        passed as is. Unprivileged (nobody, no new privileges) unless the check opts in."""
        if isinstance(argv, str) or not argv:
            raise TypeError("run() takes an argv list such as ['cat', '/etc/hostname'], never a shell string")
        # no_new_privs is set before nsenter and inherited; nsenter drops to nobody after joining
        # the namespaces, so the command cannot write what root owns in the container
        cmd = ([] if privileged else ["setpriv", "--no-new-privs"]) + \
            ["nsenter", f"--target={self.pid}", *(_NSENTER_FLAG[n] for n in NAMESPACES)]
        if not privileged:
            cmd += ["--setuid=65534", "--setgid=65534"]
        cmd += ["--", *(str(a) for a in argv)]
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                               env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"")[:max_output].decode("utf-8", "replace")
            return RunResult(tuple(argv), -1, out, f"timed out after {timeout:g}s\n", True)
        truncated = len(p.stdout) > max_output or len(p.stderr) > max_output
        return RunResult(tuple(argv), p.returncode, p.stdout[:max_output].decode("utf-8", "replace"),
                         p.stderr[:max_output].decode("utf-8", "replace"), truncated)

    def read(self, path: str, *, max_output: int = MAX_OUTPUT) -> str:
        """A file as the container sees it (through its root, no command run)."""
        target = self.roots.proc / str(self.pid) / "root" / path.lstrip("/")
        with open(target, "rb") as f:
            return f.read(max_output).decode("utf-8", "replace")


class NodeModel:
    """Facts about this node, discovered on first use and shared by every check of the run."""

    def __init__(self, roots: HostRoots):
        self.roots = roots
        self.notes: list[str] = []

    @cached_property
    def vms(self) -> list[VmView]:
        try:
            found = discover_vms(self.roots)
        except Unavailable as exc:
            self.notes.append(exc.reason)
            return []
        out = []
        for vm in found:
            views = []
            for v in vm.vcpus:
                try:
                    name = read_text(self.roots.proc / str(vm.pid) / "task" / str(v.tid) / "comm").strip()
                except OSError:
                    continue     # the thread ended since discovery
                views.append(VcpuView(v.index, v.tid, name))
            out.append(VmView(vm, views))
        return out

    @cached_property
    def containers(self) -> list[ContainerView]:
        found, notes = discover_containers(self.roots)
        self.notes.extend(notes)
        out = []
        for c in found:
            try:
                out.append(ContainerView(c, self.roots, proc_cgroups(self.roots, c.pid),
                                         namespace_ids(self.roots, c.pid), nspid(self.roots, c.pid)))
            except OSError:
                continue         # gone between discovery and now
        return out

    @property
    def host_cpus(self) -> int:
        return len(os.sched_getaffinity(0)) if Path("/proc/self").exists() else (os.cpu_count() or 1)
