"""cgroup v2 parsing on a file tree in the kernel's v2 format (this machine's cgroups are v1
with an empty unified mount, so v2 cannot be read live here), v1 parsing of a container's
scattered hierarchies, and /proc/PID/cgroup resolution."""
from __future__ import annotations

from pathlib import Path

import pytest

from vcheck.collectors.cgroups import (cgroup_mode, proc_cgroups, read_container, read_v1,
                                                  read_v2)
from vcheck.procfs import HostRoots

V2 = Path(__file__).resolve().parents[2] / "data" / "cgroup-v2"
SCOPE = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abc.scope"


def test_v2_tree():
    assert cgroup_mode(V2) == "v2"
    s = read_v2(V2 / SCOPE.lstrip("/"))
    assert s.cpu_ns == 5_000_000_000 and s.periods == 100 and s.throttled_periods == 25
    assert s.throttled_ns == 1_500_000_000 and s.cpu_limit == 0.2
    assert s.memory_bytes == 104857600 - 20971520 and s.memory_limit == 134217728
    assert s.oom_kills == 2 and s.pids == 7 and s.pids_limit is None
    assert s.io_bytes == 4096 + 8192 + 100 and s.io_ops == 4
    assert s.psi == {"cpu.some": 1000, "cpu.full": 500, "memory.some": 2000, "memory.full": 700,
                     "io.some": 3000, "io.full": 900}


def test_v2_through_proc_cgroup(tmp_path):
    (tmp_path / "proc" / "42").mkdir(parents=True)
    (tmp_path / "proc" / "42" / "cgroup").write_text(f"0::{SCOPE}\n")
    roots = HostRoots(proc=tmp_path / "proc", cgroup=V2)
    paths = proc_cgroups(roots, 42)
    assert paths == {"": SCOPE}
    assert read_container(roots, "v2", paths).pids == 7


def test_v1_hierarchies(tmp_path):
    cg = tmp_path / "cgroup"
    path = "/kubepods/burstable/pod1234/abc"
    files = {
        "cpu": {"cpu.stat": "nr_periods 50\nnr_throttled 10\nthrottled_time 2000000000\n",
                "cpu.cfs_quota_us": "50000\n", "cpu.cfs_period_us": "100000\n"},
        "cpuacct": {"cpuacct.usage": "7000000000\n"},
        "memory": {"memory.usage_in_bytes": "50000000\n", "memory.limit_in_bytes": "9223372036854771712\n",
                   "memory.stat": "cache 100\ntotal_inactive_file 10000000\n",
                   "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"},
        "pids": {"pids.current": "4\n", "pids.max": "100\n"},
        "blkio": {"blkio.throttle.io_service_bytes": "254:0 Read 4096\n254:0 Write 8192\n254:0 Total 12288\nTotal 12288\n",
                  "blkio.throttle.io_serviced": "254:0 Read 1\n254:0 Write 2\n254:0 Total 3\nTotal 3\n"},
    }
    for controller, entries in files.items():
        d = cg / controller / path.lstrip("/")
        d.mkdir(parents=True)
        for name, text in entries.items():
            (d / name).write_text(text)
    (cg / "unified").mkdir()
    assert cgroup_mode(cg) == "v1"      # a hybrid node's empty unified mount is not v2
    proc = tmp_path / "proc" / "42"
    proc.mkdir(parents=True)
    proc.joinpath("cgroup").write_text(
        f"9:name=systemd:{path}\n8:pids:{path}\n7:blkio:{path}\n4:cpu,cpuacct:{path}\n3:memory:{path}\n0::/\n")
    paths = proc_cgroups(HostRoots(proc=tmp_path / "proc"), 42)
    s = read_v1(cg, paths)
    assert s.cpu_ns == 7_000_000_000 and s.throttled_periods == 10 and s.throttled_ns == 2_000_000_000
    assert s.cpu_limit == 0.5 and s.memory_limit is None and s.memory_bytes == 40_000_000
    assert s.oom_kills == 3 and s.pids == 4 and s.pids_limit == 100
    assert s.io_bytes == 12288 and s.io_ops == 3 and s.psi is None


def test_v1_cgroup_in_some_controllers_only(tmp_path):
    """Each figure from the controller that owns it; the others absent with the reason, never 0;
    the walk lists a cgroup whichever trees hold it."""
    from vcheck.collectors.cgroups import figures, read_cgroup, walk
    cg = tmp_path / "cgroup"
    (cg / "cpu" / "a").mkdir(parents=True)
    (cg / "cpu" / "a" / "cpu.stat").write_text("nr_periods 10\nnr_throttled 10\nthrottled_time 5\n")
    (cg / "cpuacct").mkdir()
    (cg / "memory" / "b").mkdir(parents=True)
    (cg / "memory" / "b" / "memory.usage_in_bytes").write_text("1000\n")
    (cg / "memory" / "b" / "memory.stat").write_text("total_inactive_file 100\n")
    roots = HostRoots(cgroup=cg)
    assert walk(roots, 2) == ["/", "/a", "/b"]
    a = read_cgroup(roots, "v1", "/a")
    assert a.cpu_ns is None and a.memory_bytes is None and a.pids is None and a.io_bytes is None
    assert a.absent["cpu"] == "not in the cpuacct hierarchy"
    assert a.absent["memory"] == "not in the memory hierarchy"
    assert a.absent["pids"] == "the pids controller is not mounted"
    assert "cpu.throttled" not in a.absent
    assert figures(a, a, 1.0) == {"cpu.throttled": 0.0, "cpu.throttled_time": 0.0}
    b = read_cgroup(roots, "v1", "/b")
    assert figures(b, b, 1.0) == {"memory": 900.0, "oom_kills": 0.0}
    assert b.absent["cpu.throttled"] == "not in the cpu hierarchy"


def test_v2_controller_not_enabled_is_absent_not_zero(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    (d / "cpu.stat").write_text("usage_usec 10\nuser_usec 5\nsystem_usec 5\n")
    s = read_v2(d)
    assert s.cpu_ns == 10_000 and s.periods is None and s.memory_bytes is None and s.pids is None
    assert s.absent["memory"] == "the memory controller is not enabled for it"
    assert s.absent["cpu.throttled"] == "the cpu controller is not enabled for it"
    assert "cpu" not in s.absent


def test_co_mounted_v1_controllers_are_found(tmp_path):
    from vcheck.collectors.cgroups import v1_mount
    (tmp_path / "cpu,cpuacct").mkdir()
    assert v1_mount(tmp_path, "cpuacct") == tmp_path / "cpu,cpuacct"
    assert v1_mount(tmp_path, "memory") is None


def test_only_the_files_the_requested_figures_need_are_read(tmp_path):
    """cgroup.cpu alone reads cpuacct.usage and nothing else: the other figures are left out
    (None), not zero, and their files are never opened (one that cannot be read changes nothing)."""
    from vcheck.collectors.cgroups import figures, read_cgroup, wanted
    cg = tmp_path / "cgroup"
    for c, files in (("cpuacct", {"cpuacct.usage": "5000000000\n"}), ("cpu", {"cpu.stat": "nr_periods 1\n"}),
                     ("memory", {"memory.usage_in_bytes": "not a number\n"}), ("pids", {}), ("blkio", {})):
        (cg / c / "a").mkdir(parents=True)
        for name, text in files.items():
            (cg / c / "a" / name).write_text(text)
    roots = HostRoots(cgroup=cg)
    want = wanted(frozenset({"cgroup.cpu"}), "cgroup.")
    assert want == {"cpu"}
    s = read_cgroup(roots, "v1", "/a", want)
    assert s.cpu_ns == 5_000_000_000 and s.memory_bytes is None and s.periods is None and s.pids is None
    assert set(figures(s, s, 1.0)) == {"cpu"}
    with pytest.raises(ValueError):      # all figures: the unreadable memory file is read
        read_cgroup(roots, "v1", "/a")
    assert wanted(frozenset({"container.psi.cpu.some", "container.memory.limit_pct"}), "container.") == \
        {"psi", "memory.limit_pct"}


def test_open_files_reread_with_pread_and_a_removed_cgroup_fails(tmp_path):
    """A kept-open file is read again from offset 0 each time (what the kernel regenerates); past
    the budget a file is read by its path; a missing file stays missing (no open per sample)."""
    from vcheck.collectors.cgroups import OpenFiles, _value
    f = tmp_path / "cpuacct.usage"
    f.write_text("1\n")
    files = OpenFiles(budget=1)
    assert files.read(str(f)) == "1\n"
    with open(f, "r+") as w:        # same inode: what an open descriptor sees
        w.write("22\n")
    assert files.read(str(f)) == "22\n"
    g = tmp_path / "other"
    g.write_text("x")
    assert files.read(str(g)) == "x"          # over the budget: by path
    with pytest.raises(FileNotFoundError):
        files.read(str(tmp_path / "absent"))
    files.forget(tmp_path)
    assert files._fds == {}
    files.close()
    assert _value(b"total_cache 5\ntotal_inactive_file 7\n", b"total_inactive_file ") == 7
    assert _value(b"inactive_file 3\ntotal_inactive_file 7\n", b"inactive_file ") == 3
    assert _value(b"total_inactive_file 7\n", b"inactive_file ") is None     # not a longer key's tail
    assert _value(b"x 1\n", b"inactive_file ") is None


def test_absent_files_hold_no_descriptor_and_are_not_looked_for_again(tmp_path):
    """The descriptor budget counts descriptors held: a file found absent (a controller not
    enabled) is remembered without one, before the budget is spent and after."""
    from vcheck.collectors.cgroups import OpenFiles
    for name in ("a", "b"):
        (tmp_path / name).write_text(f"{name}\n")
    files = OpenFiles(budget=1)
    with pytest.raises(FileNotFoundError):
        files.read_bytes(str(tmp_path / "gone1"))
    assert files.read_bytes(str(tmp_path / "a")) == b"a\n"
    assert isinstance(files._fds[str(tmp_path / "a")], int)       # kept open: the absent one held none
    assert files.read_bytes(str(tmp_path / "b")) == b"b\n"
    assert str(tmp_path / "b") not in files._fds                   # past the budget: by path
    assert files.opt_bytes(str(tmp_path / "gone2")) is None
    assert files._fds[str(tmp_path / "gone2")] is None             # remembered past the budget too
    files.drop([str(tmp_path / "a")])
    assert files.read_bytes(str(tmp_path / "b")) == b"b\n" and isinstance(files._fds[str(tmp_path / "b")], int)
    files.close()


def test_a_sample_reads_only_what_its_figures_need(tmp_path):
    """v1: the io.ops file only for io.ops; v2: a controller's limit and event files only where
    it is enabled, cpu.stat's throttling only when asked for (and then its absence is a reason)."""
    from vcheck.collectors.cgroups import OpenFiles, V1Files, V2Files, v1_dirs
    cg = tmp_path / "cgroup"
    (cg / "blkio" / "a").mkdir(parents=True)
    (cg / "blkio" / "a" / "blkio.throttle.io_service_bytes").write_text("254:0 Read 10\n254:0 Write 5\nTotal 15\n")
    found = v1_dirs(cg, {"blkio": "/a"})
    plan = V1Files(*found, frozenset({"io.bytes"}))
    assert [p.rsplit("/", 1)[1] for p in plan.files()] == ["blkio.throttle.io_service_bytes"]
    s = plan.read()
    assert s.io_bytes == 15 and s.io_ops is None
    d = tmp_path / "v2"
    d.mkdir()
    (d / "cpu.stat").write_text("usage_usec 7\nuser_usec 5\nsystem_usec 2\n")
    (d / "memory.max").write_text("100\n")          # not read: memory.current says memory is off
    files = OpenFiles(budget=100)
    s = V2Files(d, frozenset({"memory.limit_pct", "cpu"})).read(files)
    assert s.cpu_ns == 7000 and s.periods is None and s.memory_limit is None
    assert set(s.absent) == {"memory", "memory.limit_pct", "oom_kills"} and "cpu.throttled" not in s.absent
    assert str(d / "memory.max") not in files._fds
    s = V2Files(d, frozenset({"cpu.throttled"})).read(files)
    assert s.periods is None and s.absent["cpu.throttled"] == "the cpu controller is not enabled for it"
    files.close()
