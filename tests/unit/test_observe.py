"""Python checks' `observed` on I/Os the kernel counted and no probe timed: a plain number
would let an assert pass on what nobody saw."""
from __future__ import annotations

import pytest

from vcheck.histogram import Histogram
from vcheck.observations import Observation
from vcheck.observe import merge_observations, quantity
from vcheck.units import TIME


def _observed(unseen: int, seconds: float | None):
    o = Observation("block.latency", (("device", "vda"), ("op", "write")),
                    histogram=Histogram.from_values([100_000] * 1000 + [20_000_000] * 5, scale=1e-9),
                    unseen=unseen, unseen_seconds=seconds)
    return merge_observations("block.latency", TIME, 5.0, [("vda", o)])


def test_nothing_unseen_reads_as_before():
    obs = _observed(0, None)
    assert obs.p50 == pytest.approx(100e-6, rel=0.0625)
    assert obs.count == 1005 and obs.count_over(quantity("10ms")) == 5
    assert obs.bounds("p50") == (obs.p50, obs.p50)


def test_a_statistic_the_unseen_could_move_fails_with_its_bounds():
    obs = _observed(30, None)
    assert obs.count == 1035                      # the kernel's count is exact
    with pytest.raises(pytest.fail.Exception, match="30 events were counted by the kernel but never timed"):
        _ = obs.max
    low, high = obs.bounds("max")
    assert low == pytest.approx(0.02) and high == float("inf")
    assert obs.count_over(quantity("10ms")) == 35   # unbounded time: every one may be slow


def test_the_kernels_time_limits_how_many_unseen_were_slow():
    obs = _observed(30, 0.0035)
    assert obs.count_over(quantity("10ms")) == 5    # 3.5 ms in all: none of them over 10 ms
    assert obs.count_over(quantity("1ms")) == 8     # at most 3 over 1 ms
    assert obs.bounds("mean")[1] < quantity("1ms")


def test_events_the_evidence_lacks_cannot_carry_a_verdict():
    """An assert that finds no slow I/O of a task among the outliers would pass on the very
    I/Os the collector left out: reading incomplete events fails the check, and says why."""
    slow = {"op": "write", "latency": 0.02, "comm": "db"}
    whole = Observation("block.latency", (("device", "vda"), ("op", "write")), events=[slow])
    assert merge_observations("block.latency", TIME, 5.0, [("vda", whole)]).events == [slow]
    short = [Observation("block.latency", (("device", "vda"), ("op", op)), events=[slow],
                         info={"events_left_out." + op: n}, notes=[f"{n} of the ... {op} I/Os on vda ..."])
             for op, n in (("write", "250"), ("flush", "3"))]
    obs = merge_observations("block.latency", TIME, 5.0, [("vda", o) for o in short])
    assert obs.events_left_out == 253 and len(obs.recorded_events) == 2   # the evidence as it is
    with pytest.raises(pytest.fail.Exception, match=r"the evidence lacks 253 of its events \(its notes say which\)"):
        _ = obs.events
