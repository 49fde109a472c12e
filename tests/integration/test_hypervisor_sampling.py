"""The hypervisor layer's per-sample path against a real qemu guest: a sample reads only the
/proc files its figures need, through descriptors kept open across samples, and closes them
when the VM goes (benchmarks/scale_vms.py measures what that costs with 64 guests)."""
from __future__ import annotations

import os
import time

import pytest

from vcheck.collectors.base import CollectContext, CollectRequest
from vcheck.collectors.hypervisor import CLK_TCK, HypervisorCollector, parse_rss, parse_stat
from vcheck.observations import ObservationStore
from vcheck.procfs import HostRoots

pytestmark = pytest.mark.rig


def held_files(pid: int) -> dict[int, str]:
    """This process's descriptors open on files of process `pid`: fd -> path."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"/proc/{pid}/"):
            out[int(fd)] = target
    return out


def thread_ticks(pid: int, tid: int) -> int:
    return parse_stat(open(f"/proc/{pid}/task/{tid}/stat").read())[0]


def vm_rss(pid: int) -> int:
    return parse_rss(open(f"/proc/{pid}/status").read())


def test_a_sample_reads_only_the_files_its_figures_need_and_keeps_them_open(qemu_vm):
    vm = qemu_vm("reads1", smp=2)
    store = ObservationStore()
    c = HypervisorCollector(CollectContext(HostRoots(), store),
                            CollectRequest(frozenset({"vcpu.cpu", "vm.memory.rss"}), 10.0, 0.3))
    c.start()
    try:
        t0 = time.monotonic()
        begin_before = thread_ticks(vm.pid, vm.vcpu_tids[0])
        c.begin(t0)
        begin_after = thread_ticks(vm.pid, vm.vcpu_tids[0])
        held = held_files(vm.pid)
        # vm.memory.rss: the process's status; vcpu.cpu: each vCPU thread's stat; nothing else
        assert sorted(held.values()) == sorted([f"/proc/{vm.pid}/status"] +
                                               [f"/proc/{vm.pid}/task/{tid}/stat" for tid in vm.vcpu_tids])
        for k in (1, 2, 3):
            time.sleep(0.3)
            if k == 3:
                last_before, rss_before = thread_ticks(vm.pid, vm.vcpu_tids[0]), vm_rss(vm.pid)
            c.sample(time.monotonic() - t0)
            assert held_files(vm.pid) == held      # the same descriptors, re-read (not reopened)
        last_after, rss_after = thread_ticks(vm.pid, vm.vcpu_tids[0]), vm_rss(vm.pid)
        assert {o.metric for o in store.all()} == {"vcpu.cpu", "vm.memory.rss"}
        rss = store.series("vm.memory.rss", {"vm": "reads1"})
        assert len(rss.values) == 3, rss.values
        assert min(rss_before, rss_after) <= rss.values[-1] <= max(rss_before, rss_after), (rss.values, rss_before, rss_after)
        for v in range(2):
            cpu = store.series("vcpu.cpu", {"vm": "reads1", "vcpu": str(v)})
            assert len(cpu.values) == 3 and all(0.0 <= x <= 100.0 for x in cpu.values), cpu.values
        # the re-read figures are the thread's own: vCPU 0's percentages add up to the ticks its
        # stat gained between the collector's first and last reads, which the test's own reads
        # bracket (an interval clamped at 100 % may have lost up to its length)
        cpu0 = store.series("vcpu.cpu", {"vm": "reads1", "vcpu": "0"})
        booked = sum(x * span / 100 * CLK_TCK for x, span in zip(cpu0.values, cpu0.spans))
        clamped = sum(span * CLK_TCK for x, span in zip(cpu0.values, cpu0.spans) if x >= 100.0)
        bracket = (last_before - begin_after, last_after - begin_before)
        assert bracket[0] - 1 - clamped <= booked <= bracket[1] + 1, (cpu0.values, bracket)

        vm.proc.kill()
        vm.proc.wait()
        t_gone = time.monotonic() - t0
        c.sample(t_gone)
        assert all(o.gone_at == t_gone for o in store.all()), [(o.metric, o.gone_at) for o in store.all()]
        assert held_files(vm.pid) == {}            # a gone VM's descriptors are closed
    finally:
        c.close()
