"""The node as a model for Python checks: its VMs and containers, discovered lazily and once,
by the collectors' own discovery code (no second implementation), read-only.

``ContainerView.run()`` is the seed's ``nsenter`` step: a command in a container's namespaces,
argv only (no shell), with a timeout and a cap on output. By default it runs as nobody with no
new privileges, so a check can look but not change anything; ``privileged=True`` is the opt-in.
How the boundary holds (paths resolved in the container's root, nothing left running) is
vcheck/boundary.py.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

from .collectors.cgroups import CgroupSample, cgroup_mode, proc_cgroups, read_container
from .collectors.containers.container import Container
from .collectors.containers.discovery import discover_containers, host_namespaces, namespace_ids, nspid
from .collectors.vms import VM, discover_vms
from .boundary import BoundaryError, ContainerCallError, Outcome, call_init, exec_init, parse_call_result, read_in_root, run_contained
from .errors import Unavailable
from .procfs import HostRoots, read_text

MAX_OUTPUT = 64 * 1024


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
        """Run argv in the container's namespaces and cgroups (vcheck.boundary: nothing it starts
        outlives it, it holds none of vcheck's files). No shell: argv is passed as is.
        Unprivileged (nobody, no new privileges) unless the check opts in. stdout and stderr
        together are cut at max_output bytes, and the result then says truncated."""
        if isinstance(argv, str) or not argv:
            raise TypeError("run() takes an argv list such as ['cat', '/etc/hostname'], never a shell string")
        out = self._contained(exec_init([str(a) for a in argv], privileged), timeout, max_output)
        stderr = out.stderr.decode("utf-8", "replace")
        if out.timed_out:
            stderr += f"timed out after {timeout:g}s; everything it started was killed\n"
        elif out.truncated:
            stderr += f"output cut at {max_output} bytes; the command was stopped\n"
        elif out.error:
            stderr += out.error + "\n"
        code = out.returncode if out.returncode is not None else (-1 if out.timed_out or out.truncated else 127)
        return RunResult(tuple(str(a) for a in argv), code, out.stdout.decode("utf-8", "replace"), stderr,
                         out.truncated or out.timed_out)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0, privileged: bool = False,
             max_output: int = MAX_OUTPUT) -> Any:
        """fn(*args) inside the container's namespaces (pid included) and cgroups, in a child
        process: as nobody with no new privileges unless the check opts in. The result must be
        JSON data (no NaN or Infinity, no objects cross back); an exception in fn, a timeout or a
        result over max_output bytes is raised here as ContainerCallError saying which."""
        out = self._contained(call_init(fn, args, privileged), timeout, max_output)
        return parse_call_result(out, timeout, max_output, self.pid)

    def read(self, path: str, *, max_output: int = MAX_OUTPUT) -> str:
        """A regular file as the container sees it: every symlink resolves inside the container's
        root, nothing is run, a FIFO or device is refused, the read stops at max_output bytes."""
        try:
            data, _ = read_in_root(self.roots, self.pid, path, max_output)
        except BoundaryError as exc:
            raise BoundaryError(exc.errno, f"container {self.entity}: {exc.strerror}") from None
        except FileNotFoundError:
            raise BoundaryError(errno.ESRCH, f"container {self.entity}: its process {self.pid} is gone") from None
        return data.decode("utf-8", "replace")

    def _contained(self, init: Callable[[int, int, int], int], timeout: float, max_output: int) -> Outcome:
        if not (timeout > 0 and max_output > 0):
            raise ValueError("timeout and max_output must be positive")
        try:
            return run_contained(self.roots, self.pid, init, timeout=timeout, max_output=max_output)
        except FileNotFoundError:
            raise ContainerCallError(f"container {self.entity}: its process {self.pid} is gone") from None
        except BoundaryError as exc:
            raise ContainerCallError(f"container {self.entity}: {exc.strerror}") from None


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
        except OSError as exc:
            self.notes.append(f"cannot list VMs: {exc.strerror or exc}"
                              + (" (vcheck needs root for this)" if isinstance(exc, PermissionError) else ""))
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
        try:
            found, notes = discover_containers(self.roots)
        except OSError as exc:      # not root: the runtime's socket or state is not ours to read
            self.notes.append(f"cannot list containers: {exc.strerror or exc}"
                              + (" (vcheck needs root for this)" if isinstance(exc, PermissionError) else ""))
            return []
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
