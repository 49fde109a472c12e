"""Task identity on a recorded /proc tree: a kernel thread is told by PF_KTHREAD in its stat
flags, not by an empty cmdline (a zombie's and an exiting task's are empty too)."""
from __future__ import annotations

from pathlib import Path

import pytest

from vcheck.identity import PF_EXITING, PF_KTHREAD, Resolver, task_flags
from vcheck.procfs import HostRoots


def _task(proc: Path, pid: int, comm: str, state: str, flags: int) -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    (d / "status").write_text(f"Name:\t{comm}\nState:\t{state}\nTgid:\t{pid}\nNSpid:\t{pid}\n")
    (d / "stat").write_text(f"{pid} ({comm} x) {state[0]} 1 {pid} {pid} 0 -1 {flags} 0 0 0 0 0 0\n")
    (d / "cgroup").write_text("4:cpu:/\n0::/\n")
    (d / "cmdline").write_text("")


@pytest.fixture
def resolver(tmp_path: Path) -> Resolver:
    proc = tmp_path / "proc"
    _task(proc, 2, "kthreadd", "S (sleeping)", 0x00208040)
    _task(proc, 100, "dd", "Z (zombie)", 0x00400044)
    _task(proc, 101, "dd", "D (disk sleep)", PF_EXITING | 0x400000)
    _task(proc, 102, "sleep", "S (sleeping)", 0x00400000)
    return Resolver(HostRoots(proc=proc, cgroup=tmp_path / "cgroup", run=tmp_path / "run"), vms=[], containers=[])


def test_flags_come_from_the_field_after_the_comm():
    assert task_flags("7 (a) b) c) S 1 7 7 0 -1 2097216 0 0") == 2097216
    assert 2097216 & PF_KTHREAD


def test_kernel_threads_zombies_and_exiting_tasks(resolver: Resolver):
    assert resolver.resolve(2).owner == "kernel thread"
    zombie = resolver.resolve(100)
    assert zombie.kind == "exited" and zombie.owner == "host, root cgroup, exited (a zombie, not yet reaped)"
    exiting = resolver.resolve(101)
    assert exiting.kind == "exited" and exiting.owner.endswith(", exiting")
    assert resolver.resolve(102).owner == "host, root cgroup"      # empty cmdline, no PF_KTHREAD
    assert resolver.resolve(4242).kind == "exited"
