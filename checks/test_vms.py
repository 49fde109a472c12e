"""Built-in Python checks of the hypervisor layer: what a threshold cannot say about VMs.

Run them with ``vcheck run checks/test_vms.py`` (one item per VM on the host)."""
from __future__ import annotations

import pytest

from vcheck.nodemodel import VmView

NAMED_VCPU = ("CPU ", "fc_vcpu", "vcpu", "kvm-vcpu")


def test_pinned_vcpus_do_not_share_host_cpus(vm: VmView, vms: list[VmView]) -> None:
    """A pinned VM was placed on CPUs of its own: a vCPU that shares a host CPU with another
    vCPU (of this VM or another pinned VM) steals from it, and the guest sees steal."""
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
