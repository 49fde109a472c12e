"""/proc/diskstats parsing on recorded lines (kernel 6.x, 20 fields) and device selection."""
from __future__ import annotations

from pathlib import Path

import pytest

from vcheck.collectors.disk import kernel_dev, parse_diskstats, request_based, untimed, whole_disks
from vcheck.histogram import Histogram
from vcheck.procfs import HostRoots

RECORDED = """\
 254       0 vda 28710 7368 1726218 7921 18121 10361 1399880 12056 0 8332 22128 4869 109 122208 1143 1341 1006
 254       1 vda1 100 0 800 10 0 0 0 0 0 10 10 0 0 0 0 0 0
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   1       0 ram0 5 0 10 0 0 0 0 0 0 0 0
"""


def test_parse_sums_reads_writes_discards_flushes():
    s = parse_diskstats(RECORDED)["vda"]
    assert (s.major, s.minor) == (254, 0)
    assert s.ios == 28710 + 18121 + 4869 + 1341
    assert s.sectors == 1726218 + 1399880 + 122208
    assert s.ms == 7921 + 12056 + 1143 + 1006
    assert s.io_ticks == 8332


def test_old_kernel_lines_without_discard_fields():
    s = parse_diskstats("   8       0 sda 10 0 80 5 20 0 160 7 0 9 12\n")["sda"]
    assert s.ios == 30 and s.ms == 12


def test_whole_disks_skips_partitions_idle_and_ram(tmp_path: Path):
    for name in ("vda", "loop0", "ram0"):
        (tmp_path / "sys" / "block" / name).mkdir(parents=True)
    roots = HostRoots(proc=tmp_path / "proc", sys=tmp_path / "sys")
    assert whole_disks(roots, parse_diskstats(RECORDED)) == ["vda"]


def test_kernel_dev_matches_the_tracepoint_encoding():
    assert kernel_dev(254, 0) == 266338304   # seen in block:block_rq_issue on /dev/vda


def test_completed_ios_per_op_under_block_latency_op_names():
    s = parse_diskstats(RECORDED)["vda"]
    assert s.by_op() == {"read": 28710, "write": 18121, "discard": 4869, "flush": 1341}
    old = parse_diskstats("   8       0 sda 10 0 80 5 20 0 160 7 0 9 12\n")["sda"]
    assert old.by_op() == {"read": 10, "write": 20, "discard": 0, "flush": 0}


def test_untimed_completions_per_op():
    before = parse_diskstats(RECORDED)["vda"]
    # +800 writes that spent 400 ms in all, +10 flushes that spent 20 ms
    later = RECORDED.replace(" 18121 10361 1399880 12056 ", " 18921 10361 1399880 12456 ").replace(
        " 1341 1006", " 1351 1026")
    after = parse_diskstats(later)["vda"]
    assert after.ms_by_op()["write"] - before.ms_by_op()["write"] == 400

    def timed(n: int, each_ms: float) -> Histogram:
        return Histogram.from_values([each_ms * 1e6] * n, scale=1e-9)

    # write-zeroes ("other") are writes to diskstats; 7 writes untimed, which took at most what
    # diskstats spent beyond the timed 793 x 0.5 ms, plus a millisecond of rounding
    got = untimed(before, after, {"write": timed(790, 0.5), "other": timed(3, 0.5), "flush": timed(12, 1)})
    assert set(got) == {"write"} and got["write"].count == 7
    assert got["write"].seconds == pytest.approx(0.400 - 793 * 0.0005 + 0.001)
    # a probe that timed more than was counted (a completion after the last read) leaves
    # nothing untimed, never a negative
    assert untimed(before, after, {"write": timed(800, 0.5), "flush": timed(10, 2)}) == {}
    nothing = untimed(before, after, {})
    assert {op: u.count for op, u in nothing.items()} == {"write": 800, "flush": 10}
    assert nothing["flush"].seconds == pytest.approx(0.021)


def test_bio_based_devices_are_told_apart_by_their_mq_directory(tmp_path: Path):
    (tmp_path / "sys" / "block" / "vda" / "mq").mkdir(parents=True)
    (tmp_path / "sys" / "block" / "dm-0").mkdir(parents=True)
    roots = HostRoots(proc=tmp_path / "proc", sys=tmp_path / "sys")
    assert request_based(roots, "vda") and not request_based(roots, "dm-0")
    # the real thing: a loop device is blk-mq, zram is bio-based
    real = HostRoots()
    if Path("/sys/block/loop0").exists():
        assert request_based(real, "loop0")
    if Path("/sys/block/zram0").exists():
        assert not request_based(real, "zram0")


def test_a_failed_completion_names_its_errno_on_both_paths():
    import errno

    from vcheck.collectors.disk import completion_error
    assert completion_error(-5, raw_status=False) == {"error": -5}          # classic: already -errno
    raw = completion_error(10, raw_status=True)                            # BLK_STS_IOERR
    assert raw["error"] == -errno.EIO and raw["status"].startswith("BLK_STS 10")
    assert completion_error(2, raw_status=True)["error"] == -errno.ETIMEDOUT
    odd = completion_error(42, raw_status=True)                            # a status added later
    assert odd["error"] == -errno.EIO and "unknown" in odd["status"]


def test_an_fsyncs_preflush_write_folds_into_the_flush_shown_with_it():
    from vcheck.collectors.disk import SLOWEST_KEPT, evidence_rows

    def io(op: str, t: float, lat: float, nbytes: int = 4096, sector: int = 8) -> dict:
        return {"time": t, "device": "vda", "op": op, "sector": sector, "bytes": nbytes, "latency": lat,
                "pid": 7, "comm": "db"}
    flush = io("flush", 1.000100, 0.050000, 0, 0)
    preflush = io("write", 1.000130, 0.050030, 0, 0)          # issued at the flush's instant
    other_empty = io("write", 1.000140, 0.000040, 0, 0)       # issued later: its own I/O
    slow = [io("write", 2.0 + i / 100, 0.040 - i / 1000) for i in range(SLOWEST_KEPT)]
    rows = evidence_rows(sorted([flush, preflush, other_empty] + slow, key=lambda e: -e["latency"]), [])
    assert preflush not in rows and flush in rows and other_empty not in rows   # 20 rows: the slowest
    assert len(rows) == SLOWEST_KEPT
    assert flush["preflush_latency"] == [0.050030] and "empty preflush write" in flush["parts"]
    # a flush that is not shown leaves its write a row of its own
    rows = evidence_rows([], [preflush])
    assert rows == [preflush]


def test_what_the_evidence_lacks_is_said_in_figures():
    from vcheck.collectors.disk import OVER_THRESHOLD_KEPT, LeftOut

    assert LeftOut(over=40, kept=40).notes("vda", "write", 1000) == []          # complete: nothing to say
    past = LeftOut(over=OVER_THRESHOLD_KEPT + 250, kept=OVER_THRESHOLD_KEPT)
    assert past.missing == 250
    assert past.notes("vda", "write", 1000) == [
        f"250 of the {OVER_THRESHOLD_KEPT + 250} write I/Os on vda over the outlier threshold (1µs) are not in "
        f"the evidence: evidence keeps the first {OVER_THRESHOLD_KEPT} per device; the histogram counts them all"]
    full = LeftOut(over=30, kept=20, lost=12)       # 10 over the threshold lost, 2 below it
    lost, missing = full.notes("sdb", "flush", 1000)
    assert lost.startswith("12 flush I/O events on sdb not recorded: ring buffer full")
    assert missing.startswith("10 of the 30 flush I/Os on sdb over the outlier threshold (1µs) are not in the evidence: "
                              "the ring buffer was full for 12")
    assert LeftOut(lost=3).notes("sdb", "read", None)[0].startswith("3 read I/O events on sdb not recorded")
