"""Built-in Python checks of the container layer: the walk from a container to its host PID and
what its workload sees from inside (the seed's nsenter step).

Run them with ``vcheck run checks/test_containers.py`` (one item per running container)."""
from __future__ import annotations

import math

import pytest

from vcheck.nodemodel import ContainerView


def test_init_pid_maps_to_the_runtimes_host_pid(container: ContainerView) -> None:
    """The runtime's init PID is a live host process in a PID namespace of its own, and the
    NSpid chain the host shows for it is what the container sees from inside (PID 1, or a
    higher PID when the pod shares one PID namespace among its containers)."""
    chain = container.nspid
    assert chain and chain[0] == container.pid, (
        f"{container.entity}: the runtime says host PID {container.pid}, /proc says NSpid {chain}")
    assert len(chain) >= 2, (f"{container.entity}: host PID {container.pid} is in the host's PID namespace "
                             "(hostPID): the container sees every process of the node")
    inner = chain[-1]
    inside = container.run(["cat", f"/proc/{inner}/status"])
    assert inside.returncode == 0, (f"{container.entity}: host PID {container.pid} should be PID {inner} "
                                    f"inside, but there is no such process there: {inside}")
    fields = dict(ln.split(":", 1) for ln in inside.stdout.splitlines() if ":" in ln)
    seen = fields.get("NSpid", "").split()
    assert seen[-1:] == [str(inner)], f"{container.entity}: inside, PID {inner} has NSpid {seen}"
    host_name = (container.roots.proc / str(container.pid) / "comm").read_text().strip()
    assert fields.get("Name", "").strip() == host_name, (
        f"{container.entity}: PID {inner} inside is {fields.get('Name', '?').strip()!r}, host PID "
        f"{container.pid} is {host_name!r}")


def test_workload_sees_its_cpu_limit(container: ContainerView) -> None:
    """A workload sizes its thread pools from the CPUs it sees (nproc); with a CPU quota of
    0.5 it still sees every host CPU unless something (lxcfs, a runtime option) hides them."""
    limit = container.cgroup().cpu_limit
    if limit is None:
        pytest.skip(f"{container.entity}: no CPU quota")
    nproc = container.run(["nproc"])
    assert nproc.returncode == 0, f"{container.entity}: nproc failed inside: {nproc}"
    seen = int(nproc.stdout.strip())
    assert seen <= math.ceil(limit), (f"{container.entity}: the workload sees {seen} CPUs (nproc) but its cgroup "
                                      f"allows {limit:g} CPU")


def test_workload_sees_its_memory_limit(container: ContainerView) -> None:
    """/proc/meminfo inside is the host's unless lxcfs is used: a runtime that sizes its heap
    from MemTotal (older JVMs, many databases) overshoots a container's memory limit."""
    limit = container.cgroup().memory_limit
    if limit is None:
        pytest.skip(f"{container.entity}: no memory limit")
    meminfo = container.run(["cat", "/proc/meminfo"])
    assert meminfo.returncode == 0, f"{container.entity}: cannot read /proc/meminfo inside: {meminfo}"
    total_kib = int(next(ln.split()[1] for ln in meminfo.stdout.splitlines() if ln.startswith("MemTotal:")))
    assert total_kib * 1024 <= limit, (f"{container.entity}: the workload sees MemTotal {total_kib // 1024} MiB "
                                       f"but its cgroup allows {limit // (1 << 20)} MiB")


def test_hostname_and_resolver_match_the_pod(container: ContainerView) -> None:
    """A pod's containers answer to the pod's name and resolve through a configured resolver;
    a container on the host's network (hostNetwork) shares the node's name, said so."""
    hostname = container.run(["hostname"])
    assert hostname.returncode == 0, f"{container.entity}: hostname failed inside: {hostname}"
    name = hostname.stdout.strip()
    host_uts = container.namespaces.get("uts") == container.host_namespaces.get("uts")
    if not host_uts:
        assert name == container.pod, f"{container.entity}: hostname {name!r} inside, pod is {container.pod!r}"
    resolv = container.run(["cat", "/etc/resolv.conf"])
    assert resolv.returncode == 0 and "nameserver" in resolv.stdout, (
        f"{container.entity}: no nameserver in /etc/resolv.conf inside ({resolv})")
