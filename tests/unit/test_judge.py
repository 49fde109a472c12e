"""Judging recorded observations: for: semantics, inconclusive windows, missing and vanished
entities, per-entity grouping and distributions. The series are recorded values, not a rig."""
import pytest

from vcheck.catalog import Catalog
from vcheck.histogram import Histogram
from vcheck.judge import judge, longest_violation
from vcheck.selection import entity_name
from vcheck.observations import ObservationStore
from vcheck.policy import load_policy_bytes
from vcheck import expr as E

CATALOG = Catalog()


def check(body: str):
    text = "policy: t\nchecks:\n  - id: c\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())
    return load_policy_bytes(text.encode(), "t.yaml", CATALOG).checks[0]


def store_with(metric: str, series: dict, interval: float = 1.0, duration: float | None = None):
    """series: {labels-tuple: [values]} sampled every `interval` seconds."""
    s = ObservationStore()
    n = 0
    for labels, values in series.items():
        for i, v in enumerate(values, start=1):
            s.add_sample(metric, dict(labels), i * interval, v, interval)
        n = max(n, len(values))
    s.window.duration = duration if duration is not None else n * interval
    return s


STEAL_FOR = "metric: cpu.steal\nexpect: '< 10%'\nfor: 5s\nwindow: 10s"


@pytest.mark.parametrize("values, outcome, stretch", [
    ([0] * 10, "pass", 0),
    ([50, 50, 50, 50, 0, 50, 50, 50, 50, 0], "pass", 4),    # spikes shorter than for:
    ([0, 0, 50, 50, 50, 50, 50, 0, 0, 0], "fail", 5),       # exactly for: -> fires (Prometheus)
    ([0, 20, 20, 20, 20, 20, 20, 20, 20, 20], "fail", 9),
    ([10] * 10, "fail", 10),                                  # '< 10%' is violated at exactly 10
])
def test_for_semantics(values, outcome, stretch):
    c = check(STEAL_FOR)
    v = judge(c, store_with("cpu.steal", {(): values}), None, 10.0)
    assert v.outcome == outcome, v.reason
    lv = v.entities[0].series["longest_violation"]
    assert (lv["duration"] if lv else 0) == pytest.approx(stretch)


def test_for_longer_than_what_was_observed_is_inconclusive():
    c = check(STEAL_FOR)
    v = judge(c, store_with("cpu.steal", {(): [0, 0, 0, 0]}, duration=4.0), None, 4.0)
    assert v.outcome == "error" and "inconclusive" in v.reason and "needs 5s" in v.reason


def test_too_few_samples_is_inconclusive_not_pass():
    c = check("metric: cpu.user\nexpect: '< 50%'\nwindow: 60s")
    v = judge(c, store_with("cpu.user", {(): [1, 2]}), None, 60.0)
    assert v.outcome == "error" and "2 of 60 expected samples" in v.reason


def test_violation_in_thin_data_still_fails():
    c = check("metric: cpu.user\nexpect: '< 50%'\nwindow: 60s")
    assert judge(c, store_with("cpu.user", {(): [1, 99]}), None, 60.0).outcome == "fail"


def test_stats_over_the_series():
    c = check("metric: cpu.user\nexpect: 'mean < 30% and p90 < 50% and min >= 1'\nwindow: 10s")
    v = judge(c, store_with("cpu.user", {(): [1, 2, 3, 4, 5, 6, 7, 8, 9, 100]}), None, 10.0)
    got = {m.statistic: m.measured for m in v.entities[0].measurements}
    assert got == {"mean": pytest.approx(14.5), "p90": 9, "min": 1}
    assert v.outcome == "pass"


def test_per_entity_items_and_worst_cpu():
    c = check("metric: cpu.steal\nexpect: 'max < 10%'\nper: cpu\nwindow: 3s")
    s = store_with("cpu.steal", {(("cpu", "0"),): [1, 1, 1], (("cpu", "1"),): [1, 30, 1], (): [1, 15, 1]})
    assert judge(c, s, {"cpu": "0"}, 3.0).outcome == "pass"
    bad = judge(c, s, {"cpu": "1"}, 3.0)
    assert bad.outcome == "fail" and bad.entities[0].entity == "cpu1"
    node = check("metric: cpu.steal\nexpect: 'max < 10%'\nwindow: 3s")
    agg = judge(node, s, None, 3.0)
    assert [e.entity for e in agg.entities] == ["node"] and agg.outcome == "fail"
    chosen = check("metric: cpu.steal\nexpect: 'max < 10%'\nselect: {cpu: '0'}\nwindow: 3s")
    only0 = judge(chosen, s, None, 3.0)
    assert [e.entity for e in only0.entities] == ["cpu0"] and only0.outcome == "pass"


@pytest.mark.parametrize("on_missing, outcome", [("fail", "fail"), ("skip", "skip"), ("pass", "pass")])
def test_missing_data_follows_on_missing_and_says_why(on_missing, outcome):
    c = check(f"metric: psi.io.some\nexpect: '< 50%'\non_missing: {on_missing}\nwindow: 3s")
    s = ObservationStore()
    s.mark_unavailable(["psi.io.some"], "/proc/pressure/io: the kernel has no PSI (CONFIG_PSI)")
    v = judge(c, s, None, 3.0)
    assert v.outcome == outcome and "no data" in v.reason and "CONFIG_PSI" in v.reason


def test_entity_gone_mid_window():
    c = check("metric: cpu.user\nexpect: '< 50%'\nper: cpu\nwindow: 10s\non_missing: skip")
    s = store_with("cpu.user", {(("cpu", "1"),): [1, 2, 3]}, duration=10.0)
    s.mark_gone({"cpu": "1"}, 3.2, "cpu1 went offline")
    v = judge(c, s, {"cpu": "1"}, 10.0)
    assert v.outcome == "skip" and "gone at +3.2s" in v.reason
    s2 = store_with("cpu.user", {(("cpu", "1"),): [1, 90, 3]}, duration=10.0)
    s2.mark_gone({"cpu": "1"}, 3.2, "cpu1 went offline")
    assert judge(c, s2, {"cpu": "1"}, 10.0).outcome == "fail"  # what was seen still counts


def _latency_store(values_ns, labels=(("device", "vda"), ("op", "read"))):
    s = ObservationStore()
    s.set_histogram("block.latency", dict(labels), Histogram.from_values(values_ns, scale=1e-9))
    s.window.duration = 5.0
    return s


@pytest.fixture
def latency_check():
    if CATALOG.get("block.latency") is None:
        pytest.fail("block.latency is not in the catalogue (the disk collector registers it)")
    return check


def test_distribution_percentile_and_outliers(latency_check):
    values = [100_000] * 990 + [20_000_000] * 10   # 100us x990, 20ms x10
    c = latency_check("metric: block.latency\nexpect: 'p50 < 1ms and count(> 10ms) <= 5'\nwindow: 5s")
    v = judge(c, _latency_store(values), None, 5.0)
    got = {m.statistic: m for m in v.entities[0].measurements}
    assert got["p50"].measured == pytest.approx(100e-6, rel=0.0625)
    assert got["count(> 10ms)"].measured == 10 and got["count(> 10ms)"].passed is False
    assert v.outcome == "fail"


def test_distribution_without_events_is_not_a_pass(latency_check):
    c = latency_check("metric: block.latency\nexpect: 'p99 < 10ms'\nwindow: 5s\non_missing: fail")
    v = judge(c, _latency_store([]), None, 5.0)
    assert v.outcome == "fail" and "no data" in v.reason


def test_longest_violation_reports_the_stretch():
    e = E.parse("< 10")
    lv = longest_violation(e, [1, 2, 3, 4, 5], [0, 11, 12, 0, 13], [1, 1, 1, 1, 1])
    assert lv == {"start": 1, "end": 3, "duration": 2, "samples": 2}


def test_entity_names():
    assert entity_name({"cpu": "3"}) == "cpu3"
    assert entity_name({"vm": "web1", "reason": "HLT"}, ["vm", "reason"]) == "web1-HLT"
    assert entity_name({}) == "node"


# a mean over a series whose samples stand for different counts (per-interval mean latency) is
# weighted by those counts, as iostat's await over the window


def test_mean_of_block_latency_mean_is_io_weighted():
    policy = load_policy_bytes(b"policy: p\nchecks:\n  - {id: m, metric: block.latency.mean, per: device, "
                               b"expect: 'mean < 1ms', window: 2s}\n", "p.yaml", Catalog())
    store = ObservationStore()
    store.add_sample("block.latency.mean", {"device": "vda"}, 1.0, 0.050, 1.0, weight=4)       # 4 slow I/Os
    store.add_sample("block.latency.mean", {"device": "vda"}, 2.0, 0.0001, 1.0, weight=15000)  # a busy second
    v = judge(policy.checks[0], store, {"device": "vda"}, 2.0)
    mean = v.entities[0].measurements[0].measured
    assert abs(mean - (4 * 0.050 + 15000 * 0.0001) / 15004) < 1e-12
    assert v.outcome == "pass"          # unweighted it would be 25 ms and fail


def _unseen_store(values_ns, unseen, seconds=None):
    s = _latency_store(values_ns, labels=(("device", "vda"), ("op", "write")))
    o = s.for_metric("block.latency")[0]
    o.unseen, o.unseen_seconds = unseen, seconds
    return s


@pytest.mark.parametrize("expect, unseen, outcome", [
    # 1000 timed I/Os of 100us, 5 of 20 ms: p99 is 100us whatever 2 unseen took, not if 20 did
    ("p99 < 1ms", 2, "pass"),
    ("p99 < 1ms", 20, "error"),             # error: inconclusive (Outcome.ERROR)
    ("p99 > 1ms", 20, "error"),
    ("p50 > 1ms", 20, "fail"),              # fails whatever the unseen took
    ("count(> 10ms) < 10", 4, "pass"),      # 5 + 4 stays below 10
    ("count(> 10ms) < 10", 5, "error"),
    ("count(> 10ms) < 5", 3, "fail"),       # already 5 without them
    ("max < 1s", 1, "error"),               # an unseen I/O may have taken any time
    ("mean > 1s", 1, "error"),
    ("mean < 150us", 1, "fail"),            # 199us: unseen I/Os of 0 s could not bring it lower
    ("count < 1006", 1, "fail"),            # the kernel's count is exact: 1006 I/Os
])
def test_events_the_kernel_counted_but_nobody_timed_bound_the_verdict(latency_check, expect, unseen, outcome):
    c = latency_check(f"metric: block.latency\nexpect: '{expect}'\nwindow: 5s")
    v = judge(c, _unseen_store([100_000] * 1000 + [20_000_000] * 5, unseen), None, 5.0)
    assert v.outcome == outcome, (v.reason, [(m.statistic, m.measured, m.note) for m in v.entities[0].measurements])
    if outcome == "error":
        assert v.entities[0].outcome == "inconclusive" and "never timed" in v.entities[0].reason


@pytest.mark.parametrize("expect, unseen, seconds, outcome", [
    # 30 unseen writes that took 3.5 ms together (diskstats' time): at most 3 over 1 ms, none over 10 ms
    ("count(> 10ms) < 6", 30, 0.0035, "pass"),
    ("count(> 1ms) < 9", 30, 0.0035, "pass"),       # 5 + 3
    ("count(> 1ms) < 8", 30, 0.0035, "error"),
    ("count(< 1ms) > 1020", 30, 0.0035, "error"),  # below a threshold: any of them may be
    ("max < 1s", 30, 0.0035, "pass"),
    ("max < 30ms", 1, 0.05, "error"),
    ("mean < 1ms", 30, 0.0035, "pass"),
    ("p99 < 1ms", 30, 0.0035, "error"),             # 30 of 1035 can still move the rank past 5 slow
])
def test_the_kernels_own_time_bounds_what_the_unseen_took(latency_check, expect, unseen, seconds, outcome):
    c = latency_check(f"metric: block.latency\nexpect: '{expect}'\nwindow: 5s")
    v = judge(c, _unseen_store([100_000] * 1000 + [20_000_000] * 5, unseen, seconds), None, 5.0)
    assert v.outcome == outcome, (v.reason, [(m.statistic, m.measured, m.note) for m in v.entities[0].measurements])


def test_only_unseen_events_are_not_a_pass(latency_check):
    c = latency_check("metric: block.latency\nexpect: 'p99 < 10ms'\nwindow: 5s")
    v = judge(c, _unseen_store([], 7), None, 5.0)
    assert v.outcome != "pass" and "7 events counted by the kernel, none timed" in v.entities[0].reason


def test_the_sustained_level_is_the_figure_a_for_check_compares():
    from vcheck.judge import sustained_level

    times = [float(t) for t in range(1, 11)]
    spans = [1.0] * 10
    steal = [1, 12, 15, 14, 13, 2, 30, 1, 1, 1]          # 12..15% for 4 s, one 30% spike
    assert sustained_level("<", times, steal, spans, 4.0, 0.0) == 12   # held >= 12% for 4 s
    assert sustained_level("<", times, steal, spans, 1.0, 0.0) == 30   # a 1 s for: the spike
    assert sustained_level("<", times, steal, spans, 11.0, 0.0) is None  # no stretch that long
    idle = [90, 3, 2, 4, 80, 80, 80, 80, 80, 80]
    assert sustained_level(">", times, idle, spans, 3.0, 0.0) == 4      # at most 4% idle for 3 s


def _sustained_by_every_stretch(op, values, spans, for_, slack):
    """sustained_level's definition, stretch by stretch (quadratic: the reference)."""
    upper, best = op in ("<", "<="), None
    for i in range(len(values)):
        covered, level = 0.0, None
        for j in range(i, len(values)):
            covered += spans[j]
            level = values[j] if level is None else (min(level, values[j]) if upper else max(level, values[j]))
            if covered >= for_ - slack:
                if best is None or (level > best if upper else level < best):
                    best = level
                break
    return best


def test_sustained_level_in_one_pass_is_every_stretch_s():
    import random

    from vcheck.judge import sustained_level
    rng = random.Random(3)
    for _ in range(3000):
        n = rng.randrange(0, 30)
        spans = [rng.choice([1.0, 0.5, 0.1, 0.2, 0.3, 1.0000001, 0.9999999, rng.uniform(0, 2)]) for _ in range(n)]
        values = [rng.choice([0.0, 1.0, 2.0, rng.random()]) for _ in range(n)]
        for_, slack = rng.choice([0.0, 0.3, 1.0, 3.0, 10.0, rng.uniform(0, 20)]), rng.choice([0.0, 0.25])
        for op in ("<", "<=", ">", ">="):
            assert sustained_level(op, list(range(n)), values, spans, for_, slack) == \
                _sustained_by_every_stretch(op, values, spans, for_, slack), (op, values, spans, for_, slack)
