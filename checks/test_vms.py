"""Built-in Python checks of the hypervisor layer: what a threshold cannot say about VMs.

Run them with ``vcheck run checks/test_vms.py`` (one item per VM on the host)."""
from __future__ import annotations

import pytest

from vcheck.nodemodel import VmView

NAMED_VCPU = ("CPU ", "fc_vcpu", "vcpu", "kvm-vcpu")


def unfound(vm: VmView) -> str:
    """Why some of the VM's vCPU threads are unknown ('' when all were found): a busy unnamed
    vCPU thread is found only while it sits in KVM_RUN."""
    if vm.vcpus and len(vm.vcpus) >= vm.vm.vcpu_fds:
        return ""
    return (f"{vm.name} (pid {vm.pid}): {len(vm.vcpus)} of {vm.vm.vcpu_fds or '?'} vCPU threads found, "
            "so where its vCPUs may run is unknown (unnamed vCPU threads: start qemu with "
            "-name guest=NAME,debug-threads=on)")


@pytest.fixture
def placement(vm: VmView, vms: list[VmView]) -> list[VmView]:
    """The VMs this VM's pinning is judged against; inconclusive (an error, not a pass and
    not a skip) when this VM's or another VM's vCPU threads cannot all be found."""
    why = unfound(vm)
    if why:
        pytest.fail(f"inconclusive: {why}", pytrace=False)
    if vm.pinned:
        others = [unfound(o) for o in vms if o.pid != vm.pid and unfound(o)]
        if others:
            pytest.fail(f"inconclusive: {vm.name} is pinned, and a VM whose vCPUs cannot be found may share "
                        f"its CPUs: {'; '.join(others)}", pytrace=False)
    return vms


def test_pinned_vcpus_do_not_share_host_cpus(vm: VmView, placement: list[VmView]) -> None:
    """A pinned VM was placed on CPUs of its own: a vCPU that shares a host CPU with another
    vCPU (of this VM or another pinned VM) steals from it, and the guest sees steal."""
    vms = placement
    if not vm.pinned:
        pytest.skip(f"{vm.name}: vCPUs are not pinned (they may run on any host CPU)")
    overlaps = []
    for v in vm.vcpus:
        for other in vms:
            if not other.pinned:
                continue
            for w in other.vcpus:
                if (other.pid, w.tid) == (vm.pid, v.tid):
                    continue
                shared = v.affinity & w.affinity
                if shared:
                    overlaps.append(f"{vm.name} vCPU {v.index} (tid {v.tid}) and {other.name} vCPU {w.index} "
                                    f"(tid {w.tid}) share host CPU {','.join(map(str, sorted(shared)))}")
    assert not overlaps, "; ".join(overlaps)


def test_vcpu_threads_are_named(vm: VmView) -> None:
    """Named vCPU threads (qemu -name ...,debug-threads=on) let top, pidstat and vcheck tell
    vCPUs apart; without names a busy vCPU is found only while it is in KVM_RUN."""
    unnamed = [f"vCPU {v.index} (tid {v.tid}, '{v.name}')" for v in vm.vcpus if not v.name.startswith(NAMED_VCPU)]
    assert vm.vcpus, f"{vm.name}: no vCPU thread found (pid {vm.pid})"
    assert not unnamed, (f"{vm.name}: unnamed vCPU threads: {', '.join(unnamed)}; start qemu with "
                         "-name guest=NAME,debug-threads=on")
