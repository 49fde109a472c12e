"""The log-linear histogram against exact statistics of known data, and the BPF header's bucket
index against the Python one (compiled with gcc as plain C: the same code the kernel runs)."""
from __future__ import annotations

import math
import random
import shutil
import subprocess

import pytest

from vcheck.histogram import (MAX_INDEX, RELATIVE_ERROR, SUB, Histogram, bucket_bounds,
                              bucket_index)
from vcheck.probes import source_path


def exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_buckets_tile_the_integers_without_gaps():
    prev_hi = 0
    for i in range(MAX_INDEX - 1):
        lo, hi = bucket_bounds(i)
        assert lo == prev_hi, i
        assert bucket_index(lo) == i and bucket_index(hi - 1) == i
        prev_hi = hi


def test_bucket_width_bounds_the_relative_error():
    for v in [9, 100, 1_000, 12_345, 10**6, 2**40 + 17]:
        lo, hi = bucket_bounds(bucket_index(v))
        assert lo <= v < hi
        assert (hi - lo) / lo <= 1 / SUB
        mid = (lo + hi) / 2
        assert abs(mid - v) / v <= RELATIVE_ERROR + 1e-12


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_within_stated_error_of_exact(seed):
    rng = random.Random(seed)
    # a latency-like mix: a lognormal body and a heavy tail
    values = [int(rng.lognormvariate(11, 0.6)) for _ in range(20_000)]
    values += [int(rng.uniform(5e6, 5e7)) for _ in range(300)]
    h = Histogram.from_values(values, scale=1e-9)
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
        est = h.percentile(q)
        exact = exact_percentile(values, q) * 1e-9
        assert est.low <= exact < est.high, name
        assert abs(est.value - exact) / exact <= RELATIVE_ERROR + 1e-9, name
    assert h.mean() == pytest.approx(sum(values) / len(values) * 1e-9)
    assert h.max().value == pytest.approx(max(values) * 1e-9)


def test_merge_equals_histogram_of_the_union():
    a, b = list(range(1, 5000, 7)), list(range(3000, 90000, 13))
    merged = Histogram.from_values(a).merge(Histogram.from_values(b))
    union = Histogram.from_values(a + b)
    assert merged.buckets == union.buckets and merged.total == union.total
    assert merged.sum == union.sum and merged.max_exact == union.max_exact


def test_count_beyond_is_exact_or_bracketed():
    values = [100, 200, 1000, 1010, 5000, 10_000, 10_050]
    h = Histogram.from_values(values)
    for threshold in (150, 1000, 1005, 9_999, 10_000, 20_000):
        certain, possible = h.count_beyond(">", threshold)
        truth = sum(1 for v in values if v > threshold)
        assert certain <= truth <= possible


def test_json_round_trip():
    h = Histogram.from_values([5, 50, 500, 5000], scale=1e-9)
    back = Histogram.from_json(h.to_json())
    assert back.buckets == h.buckets and back.total == 4 and back.max_exact == 5000
    with pytest.raises(ValueError):
        Histogram.from_json({**h.to_json(), "scheme": "log2"})


C_HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
typedef uint32_t u32; typedef uint64_t u64;
#define __always_inline inline __attribute__((always_inline))
#include "vcheck_hist.h"
int main(void) {
    u64 v;
    while (scanf("%lu", &v) == 1) printf("%u\n", vcheck_bucket(v));
    return 0;
}
"""


def test_bpf_header_index_matches_python(tmp_path):
    """bpf/vcheck_hist.h is compiled as user-space C and fed the same values."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.fail("no C compiler: scripts/setup.sh installs gcc with the kernel headers")
    src = tmp_path / "harness.c"
    src.write_text(C_HARNESS)
    exe = tmp_path / "harness"
    header_dir = source_path("vcheck_hist.h").parent
    subprocess.run([gcc, "-O2", f"-I{header_dir}", "-o", str(exe), str(src)], check=True)
    rng = random.Random(7)
    values = list(range(0, 2000)) + [2**e + d for e in range(3, 63) for d in (-1, 0, 1)]
    values += [rng.randrange(1, 2**50) for _ in range(5000)]
    out = subprocess.run([str(exe)], input="\n".join(map(str, values)), capture_output=True,
                         text=True, check=True).stdout.split()
    mismatches = [(v, int(c), bucket_index(v)) for v, c in zip(values, out) if int(c) != bucket_index(v)]
    assert len(out) == len(values) and not mismatches[:5]


RECORD_HARNESS = r"""
#include <stdint.h>
#include <stdio.h>
typedef uint32_t u32; typedef uint64_t u64;
#define __always_inline inline __attribute__((always_inline))
#include "vcheck_hist.h"
static u64 buckets[VCHECK_MAX_INDEX];
int main(void) {
    struct vcheck_stats st = {0};
    u64 v;
    while (scanf("%lu", &v) == 1)
        vcheck_record(&buckets[vcheck_bucket(v)], &st, v);
    vcheck_record(NULL, NULL, 1);   /* a full map: nothing to update, nothing to crash */
    printf("%lu %lu %lu\n", st.count, st.sum, st.max);
    for (u32 i = 0; i < VCHECK_MAX_INDEX; i++)
        if (buckets[i])
            printf("%u %lu\n", i, buckets[i]);
    return 0;
}
"""


def test_bpf_record_helper_keeps_what_the_python_histogram_keeps(tmp_path):
    """vcheck_record(), which every program calls, gives the buckets and exact count/sum/max
    that Histogram.from_values gives for the same values."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.fail("no C compiler: scripts/setup.sh installs gcc with the kernel headers")
    src, exe = tmp_path / "record.c", tmp_path / "record"
    src.write_text(RECORD_HARNESS)
    subprocess.run([gcc, "-O2", f"-I{source_path('vcheck_hist.h').parent}", "-o", str(exe), str(src)], check=True)
    rng = random.Random(11)
    values = [int(rng.lognormvariate(11, 1.5)) for _ in range(5000)] + [0, 1, 7, 8]
    lines = subprocess.run([str(exe)], input="\n".join(map(str, values)), capture_output=True, text=True,
                           check=True).stdout.splitlines()
    count, total, top = map(int, lines[0].split())
    buckets = {int(i): int(n) for i, n in (line.split() for line in lines[1:])}
    h = Histogram.from_values(values)
    assert (count, total, top) == (h.total, h.sum, h.max_exact)
    assert buckets == h.buckets
