"""vcheck waits on descriptors with poll(2): a run that keeps thousands of cgroup files open
hands its pipes and pidfds numbers past select(2)'s 1,024."""
from __future__ import annotations

import os
import resource

from vcheck.files import raise_descriptor_limit, wait_ready
from vcheck.report.output import _write_all


def _high(fd: int, at: int = 1500) -> int:
    os.dup2(fd, at)
    os.close(fd)
    return at


def test_the_soft_limit_is_lifted_towards_the_hard_one():
    soft_before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    now = raise_descriptor_limit()
    assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= min(soft_before, 1 << 16)
    assert now >= min(hard, 1 << 16) or hard == resource.RLIM_INFINITY
    assert now > 1600, "the test needs descriptors past 1,024"


def test_descriptors_past_1024_are_waited_on_and_written_to():
    raise_descriptor_limit()
    r, w = os.pipe()
    r, w = _high(r, 1500), _high(w, 1501)
    try:
        assert wait_ready([r], 0) == []
        assert wait_ready([w], 0, write=True) == [w]
        _write_all(w, [b"x" * 10_000])          # the output writer's wait, on fd 1501
        assert wait_ready([r], 1) == [r] and len(os.read(r, 1 << 16)) == 10_000
        os.close(w)
        w = -1
        assert wait_ready([r], 1) == [r] and os.read(r, 1) == b""      # a hang-up is ready: EOF
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
