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
same way for every runtime and cgroup driver. On v1 each controller is its own tree and a cgroup
may be in some only: each figure comes from the controller that owns it, and one the cgroup is
not in has no figure ("not in the memory hierarchy"), never a zero. v1 blkio counts nothing on a
device no throttle rule was ever set on (this kernel): ``BlkioBlindness`` finds that in the
window and marks the I/O figures blind.
"""
from __future__ import annotations

import errno
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from ..model import MetricSpec
from ..observations import Observation
from ..selection import MAX_TREE_DEPTH, tree_depth
from ..procfs import PROC_READ_LIMIT, HostRoots, read_text
from ..units import BYTE_RATE, BYTES, COUNT, PERCENT, format_value
from .base import Collector, Unavailable



@dataclass(slots=True)
class CgroupSample:
    """One reading of a cgroup. A figure is None where its controller does not hold the cgroup
    (``absent`` says why): on v1 every controller is its own tree, and a cgroup may be in some
    of them only. Never a zero for what was not read. Not changed once made (not frozen: one is
    made per cgroup per interval, and a frozen dataclass's __init__ costs three times as much)."""

    cpu_ns: int | None
    periods: int | None
    throttled_periods: int | None
    throttled_ns: int | None
    cpu_limit: float | None         # CPUs (quota / period), None: no limit
    memory_bytes: int | None        # working set
    memory_limit: int | None
    oom_kills: int | None
    pids: int | None
    pids_limit: int | None
    io_bytes: int | None
    io_ops: int | None
    # PSI stall totals (us) per cgroup: v2 only; None where the kernel has none for cgroups
    psi: dict[str, int] | None = None
    # figure (as figures() names it) -> why this cgroup has none: "not in the memory hierarchy"
    absent: Mapping[str, str] = field(default_factory=dict)


# which controller owns each figure: what the cgroup must be in for the figure to exist
V1_OWNER = {"cpu": "cpuacct", "cpu.throttled": "cpu", "cpu.throttled_time": "cpu", "memory": "memory",
            "memory.limit_pct": "memory", "oom_kills": "memory", "pids": "pids", "pids.limit_pct": "pids",
            "io.bytes": "blkio", "io.ops": "blkio"}
V2_OWNER = {**V1_OWNER, "cpu": "", "io.bytes": "io", "io.ops": "io"}   # v2 usage_usec is always there
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio")


def _absent(owner: Mapping[str, str], missing: Mapping[str, str]) -> dict[str, str]:
    """figure -> reason, for the figures whose controller is in `missing` (controller -> reason)."""
    return {fig: missing[c] for fig, c in owner.items() if c in missing}


def cgroup_mode(root: Path) -> str:
    """'v2' (unified), else 'v1' (also on hybrid nodes, whose v2 mount has no controllers)."""
    return "v2" if (root / "cgroup.controllers").exists() else "v1"


def v1_mount(root: Path, controller: str) -> Path | None:
    """The v1 hierarchy that holds `controller`: root/cpu, or a co-mounted root/cpu,cpuacct."""
    if (root / controller).is_dir():
        return root / controller
    try:
        with os.scandir(root) as it:
            for e in it:
                if controller in e.name.split(",") and e.is_dir():
                    return Path(e.path)
    except OSError:
        pass
    return None


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


def _value(data: bytes, key: bytes) -> int | None:
    """The value of one 'key value' line of a flat keyed file, as the kernel wrote it (bytes),
    None when the key is absent or not a number: what a sample needs of a 40-line memory.stat,
    found without splitting it. `key` is the name and its space: b"inactive_file "."""
    if data.startswith(key):
        start = len(key)
    else:
        at = data.find(b"\n" + key)
        if at < 0:
            return None
        start = at + len(key) + 1
    end = data.find(b"\n", start)
    try:
        return int(data[start:end] if end >= 0 else data[start:])
    except ValueError:
        return None


def _int_or_max(data: bytes) -> int | None:
    t = data.strip()
    return None if t == b"max" else int(t)


def _blkio_total(data: bytes) -> int:
    """A v1 blkio.throttle.io_service_bytes / io_serviced file: reads + writes of every device."""
    total = 0
    for line in data.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in (b"Read", b"Write"):
            total += int(parts[2])
    return total


def _io_stat(data: bytes) -> tuple[int, int]:
    """A v2 io.stat: (rbytes + wbytes, rios + wios) over every device."""
    nbytes = ops = 0
    for line in data.splitlines():
        for fld in line.split()[1:]:
            k, _, v = fld.partition(b"=")
            if k in (b"rbytes", b"wbytes"):
                nbytes += int(v)
            elif k in (b"rios", b"wios"):
                ops += int(v)
    return nbytes, ops


class OpenFiles:
    """Cgroup files kept open across samples and re-read with pread at offset 0 (the kernel
    regenerates a cgroup file's text on a read from offset 0), so a sample costs one syscall per
    file instead of open, read and close. At most `budget` descriptors; past it a file is read
    by its path. A file that could not be opened is remembered as absent (None)."""

    CHUNK = 65536

    def __init__(self, budget: int = 0):
        self.budget = budget
        self._fds: dict[str, int | None] = {}
        self._open = 0          # descriptors held (a file remembered absent holds none)

    def read_bytes(self, path: str) -> bytes:
        fd = self._fds.get(path, -1)
        if fd is None:
            raise FileNotFoundError(2, "no such file", str(path))
        if fd == -1:
            if self._open >= self.budget:
                try:
                    return by_path(path)
                except FileNotFoundError:
                    self._fds[path] = None      # absent: not looked for again (holds no descriptor)
                    raise
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self._fds[path] = None
                raise
            self._fds[path] = fd
            self._open += 1
        return read_on(os.pread(fd, self.CHUNK, 0), lambda at: os.pread(fd, self.CHUNK, at), path)

    def opt_bytes(self, path: str) -> bytes | None:
        """read_bytes, None where the file cannot be read (absent: remembered, not raised again)."""
        fd = self._fds.get(path, -1)
        if fd is None:
            return None
        try:
            if fd != -1:
                data = os.pread(fd, self.CHUNK, 0)
                if len(data) < self.CHUNK:
                    return data
            return self.read_bytes(path)
        except OSError:
            return None

    def read(self, path: str) -> str:
        return self.read_bytes(path).decode("utf-8", "replace")

    def drop(self, paths: list[str]) -> None:
        """Close these files (a cgroup that is gone)."""
        for path in paths:
            fd = self._fds.pop(path, None)
            if fd is not None:
                os.close(fd)
                self._open -= 1

    def forget(self, directory: Path | str) -> None:
        """Close what is open under `directory` (a cgroup that is gone)."""
        prefix = f"{directory}/"
        for path in [p for p in self._fds if p.startswith(prefix) and "/" not in p[len(prefix):]]:
            fd = self._fds.pop(path)
            if fd is not None:
                os.close(fd)
                self._open -= 1

    def close(self) -> None:
        for fd in self._fds.values():
            if fd is not None:
                os.close(fd)
        self._fds.clear()
        self._open = 0


def by_path(path: str) -> bytes:
    """A cgroup file read by its path (open, read, close), bounded as procfs.read_text."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_on(os.read(fd, OpenFiles.CHUNK), lambda _: os.read(fd, OpenFiles.CHUNK), path)
    finally:
        os.close(fd)


def read_on(data: bytes, more: Callable[[int], bytes], path: str) -> bytes:
    """The rest of a file whose first read filled the buffer (a long memory.stat), asked of
    more(offset) chunk by chunk, bounded as procfs.read_text."""
    while data and len(data) % OpenFiles.CHUNK == 0:
        chunk = more(len(data))
        if not chunk:
            break
        data += chunk
        if len(data) > PROC_READ_LIMIT:
            raise OSError(errno.EFBIG, "too large", str(path))
    return data


def file_figures(store, series: dict, metric_of: Mapping[str, str], values: Mapping[str, float],
                 labels: Mapping[str, str], info: Mapping[str, str], t: float, span: float) -> None:
    """One sample of an entity's figures, each appended to the series held for it (made, with
    the entity's labels and info, the first time the figure comes): the host cgroup layer and
    the container layer file alike, without a lookup by labels per figure."""
    for key, value in values.items():
        o = series.get(key)
        if o is None:
            metric = metric_of.get(key)
            if metric is None:
                continue
            o = series[key] = store.series(metric, labels, info)
        store.append(o, t, value, span)


def _by_path_opt(path: str) -> bytes | None:
    try:
        return by_path(path)
    except OSError:
        return None


# the figures that need each group of files read; `limits` is the evidence (cpu_limit, memory_limit)
ALL_FIGURES = frozenset(V1_OWNER) | {"psi", "limits"}
THROTTLE = frozenset({"cpu.throttled", "cpu.throttled_time"})
WORKING_SET = frozenset({"memory", "memory.limit_pct"})
MEMORY_LIMIT = frozenset({"memory.limit_pct", "limits"})
PIDS = frozenset({"pids", "pids.limit_pct"})
IO = frozenset({"io.bytes", "io.ops"})


def wanted(metrics: frozenset[str], prefix: str) -> frozenset[str]:
    """The figures (as figures() names them) that `metrics` need, 'psi' for any pressure one."""
    out = {m[len(prefix):] for m in metrics if m.startswith(prefix)}
    return frozenset({"psi" if f.startswith("psi.") else f for f in out})


PSI_KEYS = (("cpu.some", "cpu.full"), ("memory.some", "memory.full"), ("io.some", "io.full"))


class V2Files:
    """One v2 cgroup's files for a sample, planned once (a collector keeps one per cgroup for
    its window): the path of each file the wanted figures need, so that a sample is one pread
    per file and a parse of the bytes. A controller not enabled for the cgroup (no
    memory.current, no nr_periods in cpu.stat) gives no figure, not a zero."""

    __slots__ = ("throttle", "cpu_stat", "cpu_max", "current", "stat", "max", "events", "pids", "pids_max",
                 "io", "psi", "_missing", "_absent")

    def __init__(self, directory: Path | str, want: frozenset[str] = ALL_FIGURES):
        d = str(directory)
        def at(name: str, needed) -> str | None:
            return f"{d}/{name}" if needed else None
        self.cpu_stat = f"{d}/cpu.stat"        # always: usage_usec, and whether the cgroup is there
        self.throttle = bool(want & THROTTLE)  # nr_periods (and whether the cpu controller is on) too
        self.cpu_max = at("cpu.max", "limits" in want)
        self.current = at("memory.current", want & (WORKING_SET | MEMORY_LIMIT | {"oom_kills"}))
        self.stat = at("memory.stat", want & WORKING_SET)
        self.max = at("memory.max", want & MEMORY_LIMIT)
        self.events = at("memory.events", "oom_kills" in want)
        self.pids = at("pids.current", want & PIDS)
        self.pids_max = at("pids.max", "pids.limit_pct" in want)
        self.io = at("io.stat", want & IO)
        self.psi = tuple(f"{d}/{r}.pressure" for r in ("cpu", "memory", "io")) if "psi" in want else ()
        self._missing: dict[str, str] = {}
        self._absent: dict[str, str] = {}

    def files(self) -> list[str]:
        """Every file this plan reads (to close when the cgroup is gone)."""
        return [p for p in (self.cpu_stat, self.cpu_max, self.current, self.stat, self.max, self.events,
                            self.pids, self.pids_max, self.io, *self.psi) if p]

    def read(self, files: OpenFiles | None = None) -> CgroupSample:
        rd, opt = (by_path, _by_path_opt) if files is None else (files.read_bytes, files.opt_bytes)
        cpu = rd(self.cpu_stat)
        missing = {}
        cpu_limit = None
        quota_text = opt(self.cpu_max) if self.cpu_max else None
        if quota_text:
            quota, period = quota_text.split()
            cpu_limit = None if quota == b"max" else int(quota) / int(period)
        periods = _value(cpu, b"nr_periods ") if self.throttle else None
        if periods is None and self.throttle:
            missing["cpu"] = "the cpu controller is not enabled for it"
        current = working = None
        if self.current:
            text = opt(self.current)
            current = None if text is None else int(text)
            if current is None:
                missing["memory"] = "the memory controller is not enabled for it"
            elif self.stat:
                working = max(current - (_value(opt(self.stat) or b"", b"inactive_file ") or 0), 0)
        # a controller's other files only where it is enabled (their figures need it)
        mem_max = opt(self.max) if self.max and current is not None else None
        events = opt(self.events) if self.events and current is not None else None
        pids = None
        if self.pids:
            text = opt(self.pids)
            pids = None if text is None else int(text)
            if pids is None:
                missing["pids"] = "the pids controller is not enabled for it"
        pids_max = opt(self.pids_max) if self.pids_max and pids is not None else None
        io_bytes = io_ops = None
        if self.io:
            io_text = opt(self.io)
            if io_text is None:
                missing["io"] = "the io controller is not enabled for it"
            else:
                io_bytes, io_ops = _io_stat(io_text)
        psi: dict[str, int] | None = {} if self.psi else None
        for keys, path in zip(PSI_KEYS, self.psi):
            text = opt(path)
            if text is None:
                psi = None
                break
            for line in text.splitlines():      # "some avg10=0.00 avg60=0.00 avg300=0.00 total=N"
                at = line.find(b" total=")
                kind = line[:5]
                if at > 0 and kind in (b"some ", b"full "):
                    psi[keys[kind == b"full "]] = int(line[at + 7:].split(None, 1)[0])
        if missing != self._missing:          # the same from sample to sample: made once
            self._missing, self._absent = missing, _absent(V2_OWNER, missing)
        has_cpu = periods is not None
        return CgroupSample(
            psi=psi, absent=self._absent,
            cpu_ns=(_value(cpu, b"usage_usec ") or 0) * 1000, periods=periods,
            throttled_periods=(_value(cpu, b"nr_throttled ") or 0) if has_cpu else None,
            throttled_ns=(_value(cpu, b"throttled_usec ") or 0) * 1000 if has_cpu else None,
            cpu_limit=cpu_limit, memory_bytes=working,
            memory_limit=_int_or_max(mem_max) if mem_max and current is not None else None,
            oom_kills=(_value(events or b"", b"oom_kill ") or 0) if current is not None and self.events else None,
            pids=pids, pids_limit=_int_or_max(pids_max) if pids_max and pids is not None else None,
            io_bytes=io_bytes, io_ops=io_ops)


def read_v2(directory: Path, want: frozenset[str] = ALL_FIGURES, files: OpenFiles | None = None) -> CgroupSample:
    """One v2 cgroup directory; only the files `want` needs are read."""
    return V2Files(directory, want).read(files)


V1_NO_LIMIT = 1 << 62   # memory.limit_in_bytes when unlimited is PAGE_COUNTER_MAX * page size


def v1_dirs(root: Path, paths: Mapping[str, str], mounts: Mapping[str, Path | None] | None = None
            ) -> tuple[dict[str, Path], dict[str, str]]:
    """Per v1 controller the cgroup's directory, and for the controllers that do not hold it
    why (controller -> "not in the memory hierarchy"). `mounts`: v1_mount of each, found once."""
    dirs, missing = {}, {}
    for c in V1_CONTROLLERS:
        mount = mounts[c] if mounts is not None else v1_mount(root, c)
        if mount is None or c not in paths:
            missing[c] = f"the {c} controller is not mounted"
            continue
        d = mount / paths[c].lstrip("/")
        if d.is_dir():
            dirs[c] = d
        else:
            missing[c] = f"not in the {c} hierarchy"
    return dirs, missing


class V1Files:
    """One cgroup across the v1 hierarchies, planned once: each figure's file in the
    controller's tree that holds the cgroup (v1_dirs), only those the wanted figures need, and
    the figures it cannot have with why (the same every sample). A cgroup in no hierarchy at
    all is gone (FileNotFoundError)."""

    __slots__ = ("usage", "cpu_stat", "quota", "period", "stat", "mem_usage", "limit", "oom", "pids",
                 "pids_max", "io_bytes", "io_ops", "absent")

    def __init__(self, dirs: Mapping[str, Path], missing: Mapping[str, str], want: frozenset[str] = ALL_FIGURES,
                 name: str = "?"):
        if not dirs:
            raise FileNotFoundError(f"cgroup {name} is in no hierarchy")
        def at(controller: str, file: str, needed) -> str | None:
            return f"{dirs[controller]}/{file}" if needed and controller in dirs else None
        self.usage = at("cpuacct", "cpuacct.usage", "cpu" in want)
        self.cpu_stat = at("cpu", "cpu.stat", want & THROTTLE)
        self.quota = at("cpu", "cpu.cfs_quota_us", "limits" in want)
        self.period = at("cpu", "cpu.cfs_period_us", "limits" in want)
        self.stat = at("memory", "memory.stat", want & WORKING_SET)
        self.mem_usage = at("memory", "memory.usage_in_bytes", want & WORKING_SET)
        self.limit = at("memory", "memory.limit_in_bytes", want & MEMORY_LIMIT)
        self.oom = at("memory", "memory.oom_control", "oom_kills" in want)
        self.pids = at("pids", "pids.current", want & PIDS)
        self.pids_max = at("pids", "pids.max", "pids.limit_pct" in want)
        self.io_bytes = at("blkio", "blkio.throttle.io_service_bytes", "io.bytes" in want)
        self.io_ops = at("blkio", "blkio.throttle.io_serviced", "io.ops" in want)
        self.absent = _absent(V1_OWNER, missing)

    def files(self) -> list[str]:
        """Every file this plan reads (to close when the cgroup is gone)."""
        return [p for p in (self.usage, self.cpu_stat, self.quota, self.period, self.stat, self.mem_usage,
                            self.limit, self.oom, self.pids, self.pids_max, self.io_bytes, self.io_ops) if p]

    def read(self, files: OpenFiles | None = None) -> CgroupSample:
        rd, opt = (by_path, _by_path_opt) if files is None else (files.read_bytes, files.opt_bytes)
        cpu_ns = int(rd(self.usage)) if self.usage else None
        periods = throttled = throttled_ns = cpu_limit = None
        if self.cpu_stat:
            cpu = rd(self.cpu_stat)
            periods, throttled, throttled_ns = (_value(cpu, b"nr_periods ") or 0, _value(cpu, b"nr_throttled ") or 0,
                                                _value(cpu, b"throttled_time ") or 0)
        if self.quota:
            quota = int(opt(self.quota) or b"-1")
            period = int(opt(self.period) or b"100000")
            cpu_limit = quota / period if quota > 0 else None
        memory = mem_limit = oom = pids = pids_limit = None
        if self.stat:
            inactive = _value(opt(self.stat) or b"", b"total_inactive_file ") or 0
            memory = max(int(rd(self.mem_usage)) - inactive, 0)
        if self.limit:
            limit = int(opt(self.limit) or b"%d" % V1_NO_LIMIT)
            mem_limit = None if limit >= V1_NO_LIMIT else limit
        if self.oom:
            oom = _value(opt(self.oom) or b"", b"oom_kill ") or 0
        if self.pids:
            pids = int(rd(self.pids))
            if self.pids_max:
                text = opt(self.pids_max)
                pids_limit = _int_or_max(text) if text else None
        io_bytes = _blkio_total(opt(self.io_bytes) or b"") if self.io_bytes else None
        io_ops = _blkio_total(opt(self.io_ops) or b"") if self.io_ops else None
        return CgroupSample(
            cpu_ns=cpu_ns, periods=periods, throttled_periods=throttled, throttled_ns=throttled_ns,
            cpu_limit=cpu_limit, memory_bytes=memory, memory_limit=mem_limit, oom_kills=oom,
            pids=pids, pids_limit=pids_limit, io_bytes=io_bytes, io_ops=io_ops, absent=self.absent)


def read_v1(root: Path, paths: Mapping[str, str], want: frozenset[str] = ALL_FIGURES,
            files: OpenFiles | None = None,
            found: tuple[dict[str, Path], dict[str, str]] | None = None) -> CgroupSample:
    """A cgroup across the v1 hierarchies (paths as /proc/PID/cgroup gives them), each figure
    from the controller that owns it; one in none of them is gone (FileNotFoundError). Only the
    files `want` needs are read; `found`: v1_dirs already looked up (a collector's, once)."""
    dirs, missing = found if found is not None else v1_dirs(root, paths)
    return V1Files(dirs, missing, want, paths.get("cpu") or paths.get("memory") or "?").read(files)


def blkio_by_device(text: str) -> dict[str, int]:
    """A v1 blkio.throttle.io_service_bytes / io_serviced file: device -> reads + writes."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in ("Read", "Write"):
            out[parts[0]] = out.get(parts[0], 0) + int(parts[2])
    return out


class BlkioBlindness:
    """Whether v1 blkio.throttle.* counters can be believed on this node, judged in the window.

    On recent kernels (6.18 here, measured) blk-throttle starts on a device only when a throttle
    rule is first set for it, and until then no cgroup's blkio counters move for that device: a
    cgroup's 0 B/s may be a blind zero. The kernel's own count of what each disk moved (/proc/diskstats) is set
    against what blkio counted for it at the hierarchy's root (all cgroups) since begin()."""

    def __init__(self, roots: HostRoots):
        self.roots = roots
        self._root_file = (v1_mount(roots.cgroup, "blkio") or roots.cgroup / "blkio") / \
            "blkio.throttle.io_service_bytes_recursive"
        self._base = self._read()

    def _read(self) -> tuple[dict[str, int], dict[str, int], dict[str, str]] | None:
        try:
            stats = read_text(self.roots.proc / "diskstats")
            counted = blkio_by_device(read_text(self._root_file))
        except OSError:
            return None
        try:
            whole = set(os.listdir(self.roots.sys / "block"))    # one listing, not a stat per line
        except OSError:
            whole = set()
        disks, names = {}, {}
        for line in stats.splitlines():
            p = line.split()
            # whole disks only (blkio counts per disk): sectors read, written, discarded
            if len(p) >= 14 and p[2] in whole:
                dev = f"{p[0]}:{p[1]}"
                disks[dev] = 512 * (int(p[5]) + int(p[9]) + (int(p[16]) if len(p) > 16 else 0))
                names[dev] = p[2]
        return disks, counted, names

    def reason(self) -> str:
        """Why blkio's figures are blind since begin() ('' when they are not): a disk that
        moved bytes while blkio counted none for it."""
        now = self._read()
        if now is None or self._base is None:
            return ""
        (d0, c0, _), (d1, c1, names) = self._base, now
        for dev, moved in sorted(d1.items()):
            moved -= d0.get(dev, moved)
            if moved > 0 and c1.get(dev, 0) - c0.get(dev, 0) <= 0:
                return (f"blkio counted none of the {format_value(moved, BYTES)} that {names.get(dev, dev)} "
                        f"moved in the window (/proc/diskstats): this kernel counts a device's I/O in "
                        f"blkio.throttle.* only once a throttle rule is set on it")
        return ""


def cgroup_files(roots: HostRoots, mode: str, paths: Mapping[str, str], want: frozenset[str] = ALL_FIGURES,
                 found: tuple[dict[str, Path], dict[str, str]] | None = None) -> "V1Files | V2Files":
    """The plan of one cgroup's sample (paths as /proc/PID/cgroup gives them; `found`: its
    v1_dirs, looked up once). FileNotFoundError for a v1 cgroup in no hierarchy."""
    if mode == "v2":
        return V2Files(roots.cgroup / paths.get("", "/").lstrip("/"), want)
    dirs, missing = found if found is not None else v1_dirs(roots.cgroup, paths)
    return V1Files(dirs, missing, want, paths.get("cpu") or paths.get("memory") or "?")


def read_container(roots: HostRoots, mode: str, paths: dict[str, str], want: frozenset[str] = ALL_FIGURES,
                   files: OpenFiles | None = None,
                   found: tuple[dict[str, Path], dict[str, str]] | None = None) -> CgroupSample:
    return cgroup_files(roots, mode, paths, want, found).read(files)


PSI_FIGURES = tuple((k, f"psi.{k}") for k in ("cpu.some", "memory.some", "memory.full", "io.some", "io.full"))


def figures(a: CgroupSample, b: CgroupSample, wall: float) -> dict[str, float]:
    """The per-interval figures of one cgroup between two readings `wall` seconds apart; the
    container and the host cgroup layers both report these (prefixed container. / cgroup.).
    A figure whose controller does not hold the cgroup is left out (b.absent says why). A
    counter that went back counts 0, not a negative."""
    out: dict[str, float] = {}
    ns = wall * 1e9
    if a.cpu_ns is not None and b.cpu_ns is not None:
        out["cpu"] = 100.0 * max(b.cpu_ns - a.cpu_ns, 0) / ns
    if a.periods is not None and b.periods is not None and a.throttled_periods is not None \
            and b.throttled_periods is not None:
        periods = max(b.periods - a.periods, 0)
        throttled = max(b.throttled_periods - a.throttled_periods, 0)
        out["cpu.throttled"] = 100.0 * throttled / periods if periods > 0 else 0.0
    if a.throttled_ns is not None and b.throttled_ns is not None:
        out["cpu.throttled_time"] = min(100.0, 100.0 * max(b.throttled_ns - a.throttled_ns, 0) / ns)
    if b.memory_bytes is not None:
        out["memory"] = float(b.memory_bytes)
    if a.oom_kills is not None and b.oom_kills is not None:
        out["oom_kills"] = float(max(b.oom_kills - a.oom_kills, 0))
    if b.pids is not None:
        out["pids"] = float(b.pids)
    if a.io_bytes is not None and b.io_bytes is not None:
        out["io.bytes"] = max(b.io_bytes - a.io_bytes, 0) / wall
    if a.io_ops is not None and b.io_ops is not None:
        out["io.ops"] = max(b.io_ops - a.io_ops, 0) / wall
    if a.psi is not None and b.psi is not None:
        for key, name in PSI_FIGURES:
            if key in a.psi and key in b.psi:
                out[name] = min(100.0, max(b.psi[key] - a.psi[key], 0) / (wall * 1e6) * 100)
    if b.memory_limit and b.memory_bytes is not None:
        out["memory.limit_pct"] = 100.0 * b.memory_bytes / b.memory_limit
    if b.pids_limit and b.pids is not None:
        out["pids.limit_pct"] = 100.0 * b.pids / b.pids_limit
    return out


def limits(b: CgroupSample) -> dict[str, str]:
    """A cgroup's limits as evidence attributes."""
    out = {}
    if b.cpu_limit is not None:
        out["cpu_limit"] = f"{b.cpu_limit:g} CPU"
    if b.memory_limit is not None:
        out["memory_limit"] = str(b.memory_limit)
    return out


# --- the host's cgroup layer (systemd-cgtop) ------------------------------------------------



def unit_of(path: str) -> str:
    """The systemd unit a cgroup path belongs to: its deepest .service/.scope, else its slice."""
    parts = [p for p in path.split("/") if p]
    for suffixes in ((".service", ".scope", ".socket", ".mount", ".swap"), (".slice",)):
        for p in reversed(parts):
            if p.endswith(suffixes):
                return p
    return ""


def _tree(base: Path, depth: int) -> list[str]:
    """Directory paths under `base` down to `depth` levels, breadth first ('/' not included)."""
    out, frontier = [], [("", base)]
    for _ in range(max(0, min(depth, MAX_TREE_DEPTH))):
        nxt = []
        for rel, d in frontier:
            try:
                with os.scandir(d) as it:
                    for e in it:
                        if e.is_dir(follow_symlinks=False):
                            nxt.append((f"{rel}/{e.name}", Path(e.path)))
            except OSError:
                continue
        out.extend(rel for rel, _ in nxt)
        frontier = nxt
    return out


def walk(roots: HostRoots, depth: int) -> list[str]:
    """Cgroup paths from the hierarchy root down to `depth` levels ('/' included): the v2 tree,
    or on v1 the union of every read controller's tree (each is its own tree there, and a
    cgroup may be in some of them only), shallow ones first."""
    if cgroup_mode(roots.cgroup) == "v2":
        return ["/"] + _tree(roots.cgroup, depth)
    seen = {"/": None}
    for c in V1_CONTROLLERS:
        mount = v1_mount(roots.cgroup, c)
        if mount is not None:
            seen.update(dict.fromkeys(_tree(mount, depth)))
    return sorted(seen, key=lambda p: (p.count("/") if p != "/" else 0, ))


def read_cgroup(roots: HostRoots, mode: str, path: str, want: frozenset[str] = ALL_FIGURES,
                files: OpenFiles | None = None,
                found: tuple[dict[str, Path], dict[str, str]] | None = None) -> CgroupSample:
    paths = {"": path} if mode == "v2" else {c: path for c in V1_CONTROLLERS}
    return cgroup_files(roots, mode, paths, want, found).read(files)


def fd_budget(share: float = 0.5) -> int:
    """How many cgroup files a collector keeps open: its share of the descriptors this process
    may hold (the host layer half, containers a quarter), less a reserve for everything else
    (BPF maps, the runtime's sockets)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(0, int(min(soft, 1 << 20) * share) - 256)


def _cg_spec(name: str, dim: str, desc: str, natural: str = "max") -> MetricSpec:
    return MetricSpec(name=f"cgroup.{name}", layer="guest", dimension=dim, kind="series", labels=("cgroup",),
                      entity="cgroup", natural_stat=natural, source="the cgroup's own files (v1 or v2), "
                      "as systemd-cgtop", description=desc, attributes=("unit",), hierarchy="cgroup")


CGROUP_METRICS = (
    _cg_spec("cpu", PERCENT, "CPU used by the cgroup and its children, percent of one CPU (systemd-cgtop %CPU)"),
    _cg_spec("cpu.throttled", PERCENT, "share of CFS periods in which the cgroup was throttled"),
    _cg_spec("memory", BYTES, "working set (usage minus inactive file cache)"),
    _cg_spec("memory.limit_pct", PERCENT, "working set as a percent of the memory limit (no value without one)"),
    _cg_spec("io.bytes", BYTE_RATE, "block I/O bytes per second"),
    _cg_spec("pids", COUNT, "tasks in the cgroup and its children"),
    _cg_spec("oom_kills", COUNT, "OOM kills in each interval (sum: in the window)", natural="sum"),
    _cg_spec("psi.cpu.some", PERCENT, "share of time some task of the cgroup waited for CPU (cgroup v2 only)"),
    _cg_spec("psi.memory.full", PERCENT, "share of time all tasks of the cgroup stalled on memory (v2 only)"),
    _cg_spec("psi.io.full", PERCENT, "share of time all tasks of the cgroup stalled on I/O (v2 only)"),
)


class CgroupCollector(Collector):
    """The host's cgroups down to a depth: which service or slice takes the CPU, the memory,
    the I/O (what systemd-cgtop shows), with the unit each belongs to."""

    name = "host.cgroup"
    METRICS = CGROUP_METRICS

    @classmethod
    def diagnose(cls, roots: HostRoots) -> list[tuple[str, str, str]]:
        unified, hybrid = roots.cgroup / "cgroup.controllers", roots.cgroup / "unified" / "cgroup.controllers"
        version = "v2" if unified.exists() else "v1 (hybrid)" if hybrid.exists() else \
            "v1" if (roots.cgroup / "cpu").exists() or (roots.cgroup / "cpu,cpuacct").exists() else None
        return [("cgroups", "ok" if version else "no", version or f"no cgroup hierarchy under {roots.cgroup}")]

    @classmethod
    def discover(cls, roots: HostRoots, metric: str) -> list[Mapping[str, str]]:
        # every depth a select: may ask for; selection keeps the depth each check wants
        return [{"cgroup": p, "unit": unit_of(p)} for p in walk(roots, MAX_TREE_DEPTH)]

    def start(self) -> None:
        self._mode = cgroup_mode(self.roots.cgroup)
        depth = tree_depth("cgroup", self.request.selections)
        # only the cgroups some check selects are read each interval, not the whole walk
        selections = self.request.selections or [()]
        self._paths = [p for p in walk(self.roots, depth)
                       if any(all(s.matches(p) for s in sel if s.label == "cgroup") for sel in selections)]
        if self._mode == "v1" and not any(v1_mount(self.roots.cgroup, c) for c in V1_CONTROLLERS):
            raise Unavailable(f"no cgroup hierarchy under {self.roots.cgroup}")
        psi = {m for m in self.request.metrics if m.startswith("cgroup.psi.")}
        if psi and self._mode != "v2":
            self.store.mark_unavailable(psi, "per-cgroup PSI needs cgroup v2; this node runs cgroup v1")

    def begin(self, t0: float) -> None:
        # each sample reads only the files its figures need, through descriptors kept open, as
        # each cgroup's plan (V1Files, V2Files) made here says; the limits (evidence) are read in
        # full once here, and again each sample only where a requested figure is a share of one
        # (memory.limit_pct, pids.limit_pct)
        self._want = wanted(self.request.metrics, "cgroup.")
        self.close()                     # a window begun again keeps no descriptors of the last
        self._files = OpenFiles(fd_budget())
        mounts = {c: v1_mount(self.roots.cgroup, c) for c in V1_CONTROLLERS} if self._mode == "v1" else {}
        self._plans: dict[str, V1Files | V2Files | None] = {}
        self._limits: dict[str, dict[str, str]] = {}
        for p in self._paths:
            paths = {c: p for c in V1_CONTROLLERS} if self._mode == "v1" else {"": p}
            found = v1_dirs(self.roots.cgroup, paths, mounts) if self._mode == "v1" else None
            try:     # by path: the limits are not read again, their descriptors would be wasted
                full = cgroup_files(self.roots, self._mode, paths, frozenset({"limits"}), found).read(None)
            except (OSError, ValueError):
                full = None
            self._limits[p] = limits(full) if full is not None else {}
            try:
                self._plans[p] = cgroup_files(self.roots, self._mode, paths, self._want, found)
            except OSError:
                self._plans[p] = None         # in no hierarchy: no figure
        self._info = {p: {"unit": unit_of(p), **self._limits[p]} for p in self._paths}
        self._series: dict[str, dict[str, Observation]] = {p: {} for p in self._paths}   # cgroup -> figure -> series
        self._metric_of = {m[len("cgroup."):]: m for m in self.request.metrics if m.startswith("cgroup.")}
        self._limit_seen: dict[str, tuple] = {}
        self._prev = {p: self._read(p) for p in self._paths}
        self._prev_mono = time.monotonic()
        self._prev_t = 0.0
        self._gone: set[str] = set()
        self._noted: set[tuple[str, str]] = set()
        self._absent_noted: dict[str, Mapping[str, str]] = {}
        io = {m for m in self.request.metrics if m in ("cgroup.io.bytes", "cgroup.io.ops")}
        self._blkio = BlkioBlindness(self.roots) if io and self._mode == "v1" else None

    def _read(self, path: str) -> CgroupSample | None:
        plan = self._plans[path]
        try:
            return plan.read(self._files) if plan is not None else None
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        files = getattr(self, "_files", None)
        if files is not None:
            files.close()

    def sample(self, t: float) -> None:
        mono = time.monotonic()
        wall, span = mono - self._prev_mono, t - self._prev_t
        if wall <= 0:
            return
        # the loop runs once per cgroup per sample: what it touches is looked up once here
        files, prev, gone, plans, series_of = self._files, self._prev, self._gone, self._plans, self._series
        metric_of, limit_seen = self._metric_of, self._limit_seen
        for path in self._paths:
            if path in gone:
                continue
            plan = plans[path]
            try:
                b = plan.read(files) if plan is not None else None
            except (OSError, ValueError):
                b = None
            a, prev[path] = prev.get(path), b
            if b is None:
                if a is not None:
                    gone.add(path)
                    self.store.mark_gone({"cgroup": path}, t, f"cgroup {path} was removed")
                    if plan is not None:
                        files.drop(plan.files())
                continue
            if a is None:
                continue
            series = series_of[path]
            if b.memory_limit is not None or b.cpu_limit is not None:
                seen = (b.memory_limit, b.cpu_limit)  # read each sample only where a figure is a share of it
                if limit_seen.get(path) != seen:
                    limit_seen[path] = seen
                    info = self._info[path]
                    now = limits(b)
                    if any(info.get(k) != v for k, v in now.items()):
                        self._info[path] = {**info, **now}
                        series.clear()      # filed again below, with the new info
            file_figures(self.store, series, metric_of, figures(a, b, wall), {"cgroup": path}, self._info[path], t, span)
            if b.absent and self._absent_noted.get(path) is not b.absent:
                self._absent_noted[path] = b.absent
                note_absent(self.store, self._noted, "cgroup.", {"cgroup": path}, b, self.request.metrics,
                            self._info[path])
        self._prev_mono, self._prev_t = mono, t
        if self._blkio is not None:
            mark_blkio_blind(self.store, self._blkio, ("cgroup.io.bytes", "cgroup.io.ops"))


def note_absent(store, noted: set, prefix: str, labels: Mapping[str, str], b: CgroupSample,
                metrics: frozenset[str], info: Mapping[str, str]) -> None:
    """File, once per entity and metric, why a cgroup has no figure: an empty series whose note
    the verdict reads ("no data: not in the memory hierarchy"), never a zero."""
    for key, why in b.absent.items():
        metric = prefix + key
        tag = (metric, repr(sorted(labels.items())))
        if metric in metrics and tag not in noted:
            noted.add(tag)
            store.series(metric, labels, info).notes.append(why)


def mark_blkio_blind(store, blkio: BlkioBlindness, metrics: tuple[str, ...]) -> None:
    """Every I/O series of the window is blind once blkio has missed what a disk moved."""
    why = blkio.reason()
    if why:
        for m in metrics:
            for o in store.for_metric(m):
                o.blind = o.blind or why
