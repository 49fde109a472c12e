"""Outputs never destroy what is not theirs: real device nodes (mknod), FIFOs, symlinks,
directories, read-only files, as the root that vcheck runs as."""
from __future__ import annotations

import os
import stat
import threading

import pytest

from vcheck.errors import OutputError
from vcheck.files import read_bounded
from vcheck.report.output import read_previous, write_output


def test_regular_file_is_replaced_atomically_with_mode_0644(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    os.chmod(target, 0o600)
    write_output(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]     # no temporary left


@pytest.mark.parametrize("kind", ["block", "char-mem"])
def test_device_nodes_are_refused_and_left_alone(tmp_path, kind):
    node = tmp_path / "dev"
    # a block device (loop0's numbers) and /dev/mem's: writing either as a stream would be ruin
    os.mknod(node, (stat.S_IFBLK if kind == "block" else stat.S_IFCHR) | 0o600,
             os.makedev(7, 0) if kind == "block" else os.makedev(1, 1))
    before = os.lstat(node)
    with pytest.raises(OutputError, match="dev: is a (block|character) device"):
        write_output(node, b"x")
    after = os.lstat(node)
    assert (after.st_mode, after.st_rdev, after.st_ino) == (before.st_mode, before.st_rdev, before.st_ino)


def test_dev_null_and_a_fifo_with_a_reader_are_streamed(tmp_path):
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    write_output(null, b"gone")
    assert stat.S_ISCHR(os.lstat(null).st_mode)          # still the device, not a file
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    for _ in range(100):          # the reader is blocked in open() until a writer comes
        try:
            write_output(fifo, b"streamed")
            break
        except OutputError:
            threading.Event().wait(0.02)
    reader.join(5)
    assert got == [b"streamed"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_fifo_without_reader_fails_at_once(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="FIFO with no reader"):
        write_output(fifo, b"x")


def test_symlinks_are_never_followed_or_replaced(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "report.json"
    link.symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link"):
        write_output(link, b"x")
    assert victim.read_text() == "precious" and link.is_symlink()


def test_temporary_names_are_unpredictable_and_planted_links_ignored(tmp_path):
    """An attacker who can write in the report directory plants symlinks at every name the old
    code would have used; none is opened, the victim is untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o600)
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        (tmp_path / f".r.xml.{pid}.tmp").symlink_to(victim)
    write_output(tmp_path / "r.xml", b"<x/>")
    assert victim.read_text() == "precious" and stat.S_IMODE(victim.stat().st_mode) != 0o644
    assert (tmp_path / "r.xml").read_bytes() == b"<x/>"


def test_unwritable_outputs_fail_with_one_line_and_keep_the_old_file(tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        write_output(tmp_path, b"x")
    with pytest.raises(OutputError, match="does not exist"):
        write_output(tmp_path / "missing" / "r.json", b"x")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "r.json").write_bytes(b"last good")
    os.system(f"mount -t tmpfs -o size=64k,ro tmpfs {ro}")      # a read-only file system, for real
    try:
        if not os.path.ismount(ro):
            pytest.fail("could not mount a read-only tmpfs (the suite runs as root)")
        with pytest.raises(OutputError, match="Read-only file system"):
            write_output(ro / "r.json", b"x")
    finally:
        os.system(f"umount {ro}")
    assert (ro / "r.json").read_bytes() == b"last good"


def test_full_file_system_leaves_the_previous_file_and_no_temporary(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    assert os.system(f"mount -t tmpfs -o size=16k tmpfs {full}") == 0
    try:
        (full / "r.json").write_bytes(b"last good")
        with pytest.raises(OutputError, match="No space left"):
            write_output(full / "r.json", b"x" * (1 << 20))
        assert (full / "r.json").read_bytes() == b"last good"
        assert [p.name for p in full.iterdir()] == ["r.json"]
    finally:
        os.system(f"umount {full}")


def test_reading_is_bounded_and_refuses_devices(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(ValueError, match="larger than"):
        read_bounded(big, 1024, "the report")
    with pytest.raises(ValueError, match="a character device"):
        read_bounded("/dev/zero", 1024, "the report")       # endless: refused, not read
    with pytest.raises(ValueError, match="a directory"):
        read_bounded(tmp_path, 1024, "the report")
    r, w = os.pipe()
    os.write(w, b"piped")
    os.close(w)
    assert read_bounded(f"/dev/fd/{r}", 1024, "the report") == b"piped"   # process substitution
    os.close(r)


def test_previous_prometheus_file_is_read_only_when_it_is_a_small_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_previous(fifo) is None                       # no writer: would block forever
    assert read_previous("/dev/zero") is None
    bad = tmp_path / "bad.prom"
    bad.write_bytes(b"\xff\xfe vcheck_last_success_timestamp_seconds 12\n")
    assert "vcheck_last_success_timestamp_seconds 12" in read_previous(bad)
    link = tmp_path / "link.prom"
    link.symlink_to(bad)
    assert read_previous(link) is None


def test_a_descriptor_the_caller_opened_is_written_as_it_is(tmp_path):
    """/dev/stdout redirected to a regular file (`--json /dev/stdout > out.json`), or a pipe
    given as /dev/fd/N: written through the descriptor, never replaced or refused."""
    out = tmp_path / "out.json"
    with open(out, "wb") as f:
        write_output(f"/dev/fd/{f.fileno()}", b"via the descriptor")
    assert out.read_bytes() == b"via the descriptor"
    r, w = os.pipe()
    write_output(f"/proc/self/fd/{w}", b"piped")
    os.close(w)
    assert os.read(r, 100) == b"piped"
    os.close(r)


def test_a_stream_whose_reader_never_reads_gives_way_to_a_signal(tmp_path):
    """A FIFO opened by a reader that takes nothing: the write ends when SIGTERM is pending
    (held while the file goes out), not never; the signal is then delivered as usual."""
    import signal
    import time

    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)      # opened, never read
    got: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    main = threading.main_thread().ident
    timer = threading.Timer(0.5, lambda: signal.pthread_kill(main, signal.SIGTERM))
    try:
        timer.start()
        start = time.monotonic()
        with pytest.raises(OutputError, match="interrupted by SIGTERM"):
            write_output(str(fifo), b"x" * (4 << 20))
        assert time.monotonic() - start < 10
        assert got == [signal.SIGTERM]          # delivered once the write gave up
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, old)
        os.close(reader)
