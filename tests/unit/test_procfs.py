"""The /proc and /sys reader: VCHECK_PROC may point anywhere, so a read is bounded."""
from __future__ import annotations

import errno

import pytest

from vcheck import procfs


def test_a_file_over_the_limit_is_an_oserror_not_a_memory_blowup(tmp_path, monkeypatch):
    monkeypatch.setattr(procfs, "PROC_READ_LIMIT", 1024)
    ok, big = tmp_path / "ok", tmp_path / "big"
    ok.write_bytes(b"x" * 1024)
    big.write_bytes(b"x" * 1025)
    assert procfs.read_text(ok) == "x" * 1024
    with pytest.raises(OSError) as exc:
        procfs.read_text(big)
    assert exc.value.errno == errno.EFBIG and str(big) in str(exc.value)
