"""A container's cgroup counters, from cgroup v1 or v2 (chosen per node), as one sample type.

Where each figure comes from (kernel docs, cAdvisor, kubelet):

=================  ==========================================  =====================================
figure             v2                                          v1
=================  ==========================================  =====================================
CPU time           cpu.stat usage_usec                         cpuacct.usage (ns)
throttling         cpu.stat nr_periods nr_throttled            cpu.stat nr_periods nr_throttled
                   throttled_usec                              throttled_time (ns)
CPU limit          cpu.max "quota period"                      cpu.cfs_quota_us / cpu.cfs_period_us
memory             memory.current - inactive_file (working     memory.usage_in_bytes -
                   set, as kubelet), memory.max                total_inactive_file, memory.limit_in_bytes
OOM kills          memory.events oom_kill                      memory.oom_control oom_kill
pids               pids.current, pids.max                      pids.current, pids.max
I/O                io.stat rbytes wbytes rios wios             blkio.throttle.io_service_bytes/_serviced
=================  ==========================================  =====================================

A container's cgroup is found from its init process (``/proc/PID/cgroup``), so it resolves the
same way for every runtime and cgroup driver.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...procfs import HostRoots, read_text
from ..guest import parse_pressure



@dataclass(frozen=True)
class CgroupSample:
    cpu_ns: int
    periods: int
    throttled_periods: int
    throttled_ns: int
    cpu_limit: float | None         # CPUs (quota / period), None: no limit
    memory_bytes: int               # working set
    memory_limit: int | None
    oom_kills: int
    pids: int
    pids_limit: int | None
    io_bytes: int
    io_ops: int
    # PSI stall totals (us) per cgroup: v2 only; None where the kernel has none for cgroups
    psi: dict[str, int] | None = None


def cgroup_mode(root: Path) -> str:
    """'v2' (unified), else 'v1' (also on hybrid nodes, whose v2 mount has no controllers)."""
    return "v2" if (root / "cgroup.controllers").exists() else "v1"


def proc_cgroups(roots: HostRoots, pid: int) -> dict[str, str]:
    """controller -> path from /proc/PID/cgroup ('' key for the v2 unified entry)."""
    out = {}
    for line in read_text(roots.proc / str(pid) / "cgroup").splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0" and controllers == "":
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _int_or_max(text: str) -> int | None:
    t = text.strip()
    return None if t == "max" else int(t)


def _read(path: Path) -> str:
    return read_text(path)


def _opt(path: Path) -> str | None:
    try:
        return read_text(path)
    except OSError:
        return None


def read_v2(directory: Path) -> CgroupSample:
    """One v2 cgroup directory."""
    cpu = _kv(_read(directory / "cpu.stat"))
    quota_text = _opt(directory / "cpu.max")
    cpu_limit = None
    if quota_text:
        quota, period = quota_text.split()
        cpu_limit = None if quota == "max" else int(quota) / int(period)
    mem_stat = _kv(_opt(directory / "memory.stat") or "")
    current = int((_opt(directory / "memory.current") or "0").strip())
    working = max(current - mem_stat.get("inactive_file", 0), 0)
    mem_max = _opt(directory / "memory.max")
    events = _kv(_opt(directory / "memory.events") or "")
    pids_max = _opt(directory / "pids.max")
    io_bytes = io_ops = 0
    for line in (_opt(directory / "io.stat") or "").splitlines():
        for field in line.split()[1:]:
            k, _, v = field.partition("=")
            if k in ("rbytes", "wbytes"):
                io_bytes += int(v)
            elif k in ("rios", "wios"):
                io_ops += int(v)
    psi: dict[str, int] | None = {}
    for resource in ("cpu", "memory", "io"):
        text = _opt(directory / f"{resource}.pressure")
        if text is None:
            psi = None
            break
        for kind, total in parse_pressure(text).items():
            psi[f"{resource}.{kind}"] = total
    return CgroupSample(
        psi=psi,
        cpu_ns=cpu.get("usage_usec", 0) * 1000, periods=cpu.get("nr_periods", 0),
        throttled_periods=cpu.get("nr_throttled", 0), throttled_ns=cpu.get("throttled_usec", 0) * 1000,
        cpu_limit=cpu_limit, memory_bytes=working,
        memory_limit=_int_or_max(mem_max) if mem_max else None, oom_kills=events.get("oom_kill", 0),
        pids=int((_opt(directory / "pids.current") or "0").strip()),
        pids_limit=_int_or_max(pids_max) if pids_max else None, io_bytes=io_bytes, io_ops=io_ops)


V1_NO_LIMIT = 1 << 62   # memory.limit_in_bytes when unlimited is PAGE_COUNTER_MAX * page size


def read_v1(root: Path, paths: dict[str, str]) -> CgroupSample:
    """A container's cgroups across the v1 hierarchies (paths as /proc/PID/cgroup gives them)."""
    def d(controller: str, mount: str) -> Path:
        return root / mount / paths.get(controller, "/").lstrip("/")

    cpu_dir, acct_dir = d("cpu", "cpu"), d("cpuacct", "cpuacct")
    mem_dir, pids_dir, blk_dir = d("memory", "memory"), d("pids", "pids"), d("blkio", "blkio")
    cpu = _kv(_opt(cpu_dir / "cpu.stat") or "")
    quota = int((_opt(cpu_dir / "cpu.cfs_quota_us") or "-1").strip())
    period = int((_opt(cpu_dir / "cpu.cfs_period_us") or "100000").strip())
    mem_stat = _kv(_opt(mem_dir / "memory.stat") or "")
    usage = int((_opt(mem_dir / "memory.usage_in_bytes") or "0").strip())
    limit = int((_opt(mem_dir / "memory.limit_in_bytes") or str(V1_NO_LIMIT)).strip())
    oom = _kv(_opt(mem_dir / "memory.oom_control") or "")
    pids_max = _opt(pids_dir / "pids.max")
    io_bytes = io_ops = 0
    for name, is_bytes in (("blkio.throttle.io_service_bytes", True), ("blkio.throttle.io_serviced", False)):
        for line in (_opt(blk_dir / name) or "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in ("Read", "Write"):
                if is_bytes:
                    io_bytes += int(parts[2])
                else:
                    io_ops += int(parts[2])
    return CgroupSample(
        cpu_ns=int(_read(acct_dir / "cpuacct.usage").strip()), periods=cpu.get("nr_periods", 0),
        throttled_periods=cpu.get("nr_throttled", 0), throttled_ns=cpu.get("throttled_time", 0),
        cpu_limit=quota / period if quota > 0 else None,
        memory_bytes=max(usage - mem_stat.get("total_inactive_file", 0), 0),
        memory_limit=None if limit >= V1_NO_LIMIT else limit, oom_kills=oom.get("oom_kill", 0),
        pids=int((_opt(pids_dir / "pids.current") or "0").strip()),
        pids_limit=_int_or_max(pids_max) if pids_max else None, io_bytes=io_bytes, io_ops=io_ops)


def read_container(roots: HostRoots, mode: str, paths: dict[str, str]) -> CgroupSample:
    if mode == "v2":
        return read_v2(roots.cgroup / paths.get("", "/").lstrip("/"))
    return read_v1(roots.cgroup, paths)
