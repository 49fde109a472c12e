"""Fixtures shared by the rig: run vcheck as a user would, and fail (never skip) when a piece
of the real rig cannot start."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
VCHECK = [sys.executable, "-m", "vcheck.cli"]


def rig_fail(what: str, detail: str = "") -> None:
    """The rig could not start: a CI failure, never a skip (scripts/setup.sh provides it all)."""
    pytest.fail(f"test rig: {what}" + (f": {detail}" if detail else ""), pytrace=False)


def require_root() -> None:
    if os.geteuid() != 0:
        rig_fail("must run as root (BPF, KVM, containerd, cgroups)")


# This test process's mark, inherited by every vcheck it starts (and their children): a vchk_
# program held by a process bearing it is the suite's own, even one orphaned by a leak.
RIG_MARK_ENV = "VCHECK_RIG_MARK"
os.environ[RIG_MARK_ENV] = f"{os.getpid()}.{time.time_ns()}"


@dataclass(frozen=True)
class LoadedProgram:
    """A loaded BPF program named vchk_*, and the processes holding an fd on it (program or link)."""

    id: int
    name: str
    holders: frozenset[int]


def vcheck_programs() -> list[LoadedProgram]:
    """Every loaded vchk_* program on the machine, whoever loaded it (a concurrent CI job's or an
    operator's run too). bpftool here reports no pids, so holders come from /proc/*/fdinfo."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    if out.returncode != 0:
        rig_fail("bpftool prog show failed", out.stderr.strip())
    progs = [(p["id"], p.get("name", "")) for p in json.loads(out.stdout or "[]") if p.get("name", "").startswith("vchk_")]
    holders = _program_holders() if progs else {}
    return [LoadedProgram(i, name, frozenset(holders.get(i, ()))) for i, name in progs]


def _program_holders() -> dict[int, set[int]]:
    """BPF program id -> pids with an fd on it (a program fd or a link fd names its prog_id)."""
    out: dict[int, set[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = os.listdir(proc / "fd")
        except OSError:   # gone, or not ours to read
            continue
        for fd in fds:
            try:
                if not os.readlink(proc / "fd" / fd).startswith("anon_inode:bpf"):
                    continue
                m = re.search(r"^prog_id:\s*(\d+)", (proc / "fdinfo" / fd).read_text(), re.M)
            except OSError:
                continue
            if m:
                out.setdefault(int(m.group(1)), set()).add(int(proc.name))
    return out


def _is_own_process(pid: int, me: int, mark: str) -> bool:
    """pid is this test process, one of its descendants, or bears its mark (an orphan of one)."""
    p = pid
    for _ in range(64):
        if p == me:
            return True
        try:
            p = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        if p <= 1:
            break
    try:
        return f"{RIG_MARK_ENV}={mark}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


class ProgramLedger:
    """The vchk_* programs of this test's own runs, told apart from a concurrent vcheck's on the
    same machine: held by this process, a descendant or a process bearing its mark; or, unless
    held_only, held by nobody (pinned, or detached and not yet freed: under load an RCU grace
    period takes seconds) and loaded after the ledger opened."""

    def __init__(self) -> None:
        self.before = frozenset(p.id for p in vcheck_programs())

    def own(self, held_only: bool = False) -> list[LoadedProgram]:
        me, mark = os.getpid(), os.environ[RIG_MARK_ENV]
        return [p for p in vcheck_programs()
                if (not held_only and not p.holders and p.id not in self.before)
                or any(_is_own_process(pid, me, mark) for pid in p.holders)]

    def wait_for(self, count: int, timeout: float = 30.0, alive: Callable[[], bool] = lambda: True) -> list[LoadedProgram]:
        """At least `count` own programs loaded (a run the test started has attached)."""
        deadline = time.monotonic() + timeout
        while len(own := self.own(held_only=True)) < count and time.monotonic() < deadline and alive():
            time.sleep(0.1)
        return own

    def assert_none_left(self, wait: float = 10.0) -> None:
        """Nothing of this test's runs is loaded. A detached program is freed after an RCU grace
        period (raw tracepoint links defer it; seconds on a busy machine), and a run elsewhere
        that just ended leaves its programs held by nobody for as long: up to `wait` seconds for
        either, not for a leak (a program a live process of the test's holds)."""
        deadline = time.monotonic() + wait
        while (own := self.own()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not own, f"vchk_ programs of this test left loaded: {[(p.id, p.name, sorted(p.holders)) for p in own]}"


@pytest.fixture
def own_programs() -> ProgramLedger:
    """A ledger of this test's own BPF programs; none of the suite's may be loaded as it starts."""
    require_root()
    ledger = ProgramLedger()
    # held only: one held by nobody now was loaded before the ledger opened, or since by
    # someone else (this test has not started anything yet)
    held = ledger.own(held_only=True)
    assert not held, f"vchk_ programs of this test process loaded before the test: {held}"
    return ledger


def remove_cgroup_tree(name: str, root: Path = Path("/sys/fs/cgroup")) -> None:
    """Remove /NAME and everything under it in every hierarchy, deepest first. Only the rig's
    own top-level name is ever passed; a cgroup still holding tasks stays (rmdir refuses)."""
    for hierarchy in root.iterdir():
        base = hierarchy / name
        if not base.is_dir():
            continue
        for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            base.rmdir()
        except OSError:
            pass


class VcheckRun:
    def __init__(self, proc: subprocess.CompletedProcess, json_path: Path | None):
        self.proc = proc
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.report = json.loads(json_path.read_text()) if json_path and json_path.exists() else None

    def results(self, check: str | None = None) -> list[dict]:
        assert self.report is not None, f"no JSON report; stderr:\n{self.stderr}\nstdout:\n{self.stdout}"
        return [r for r in self.report["results"] if check is None or r["check"] == check]

    def result(self, check: str, entity: str | None = None) -> dict:
        rs = [r for r in self.results(check) if entity is None or r["entity"] == entity]
        assert len(rs) == 1, f"expected one result for {check}[{entity}], got {[r['nodeid'] for r in rs]}"
        return rs[0]


@pytest.fixture
def run_vcheck(tmp_path):
    """Run `vcheck run POLICY...` in a subprocess and load its JSON report."""
    def run(*args: str, timeout: float = 300, env: dict | None = None) -> VcheckRun:
        json_path = tmp_path / f"report-{len(list(tmp_path.iterdir()))}.json"
        cmd = VCHECK + ["run", *args, "--json", str(json_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                              env={**os.environ, **(env or {})})
        return VcheckRun(proc, json_path)
    return run


@pytest.fixture
def policy_file(tmp_path):
    """Write a policy text to a file and return its path."""
    def write(text: str, name: str = "policy.yaml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p
    return write
