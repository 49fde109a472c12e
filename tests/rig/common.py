"""Fixtures shared by the rig: run vcheck as a user would, and fail (never skip) when a piece
of the real rig cannot start."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VCHECK = [sys.executable, "-m", "vcheck.cli"]


def rig_fail(what: str, detail: str = "") -> None:
    """The rig could not start: a CI failure, never a skip (scripts/setup.sh provides it all)."""
    pytest.fail(f"test rig: {what}" + (f": {detail}" if detail else ""), pytrace=False)


def require_root() -> None:
    if os.geteuid() != 0:
        rig_fail("must run as root (BPF, KVM, containerd, cgroups)")


def vcheck_programs() -> list[str]:
    """Names of loaded BPF programs that are vcheck's (all are named vchk_*)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    if out.returncode != 0:
        rig_fail("bpftool prog show failed", out.stderr.strip())
    return [p.get("name", "") for p in json.loads(out.stdout or "[]") if p.get("name", "").startswith("vchk_")]


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
