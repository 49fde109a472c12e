"""Log-linear histograms: the same bucket scheme in BPF (bpf/vcheck_hist.h) and here.

A log2 histogram (bpftrace ``hist()``) can be off by 2x at p99. Here every power of two is
split into ``SUB`` linear sub-buckets, so a bucket is at most 1/SUB of its lower bound wide.
A percentile is reported as the midpoint of the bucket that holds it, which is within
``RELATIVE_ERROR`` (half a bucket) of the true value; the bucket's bounds go in the evidence.

Index of a value v (an integer, e.g. nanoseconds)::

    v < SUB            -> v                              (exact)
    v >= SUB, e=floor(log2 v):
                       -> (e - SUB_BITS + 1) * SUB + ((v >> (e - SUB_BITS)) - SUB)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

SUB_BITS = 3
SUB = 1 << SUB_BITS           # sub-buckets per power of two
MAX_INDEX = (64 - SUB_BITS + 1) * SUB  # exclusive; the BPF array has this many slots
RELATIVE_ERROR = 1.0 / (2 * SUB)  # 6.25 % for SUB = 8


def bucket_index(v: int) -> int:
    if v < SUB:
        return max(int(v), 0)
    e = int(v).bit_length() - 1
    return (e - SUB_BITS + 1) * SUB + ((int(v) >> (e - SUB_BITS)) - SUB)


def bucket_bounds(i: int) -> tuple[int, int]:
    """[low, high) of bucket i, in the recorded integer unit."""
    if i < SUB:
        return i, i + 1
    e = i // SUB + SUB_BITS - 1
    sub = i % SUB
    shift = e - SUB_BITS
    return (SUB + sub) << shift, (SUB + sub + 1) << shift


@dataclass(frozen=True)
class Estimate:
    """A value read from a histogram, with the bucket it came from."""

    value: float
    low: float
    high: float

    def straddles(self, threshold: float) -> bool:
        return self.low < threshold < self.high


@dataclass
class Histogram:
    """Sparse bucket counts plus exact count/sum (kept in kernel) and an optional exact max.

    `scale` converts the recorded integer unit to the metric's base unit (1e-9 for ns -> s).
    """

    scale: float = 1.0
    buckets: dict[int, int] = field(default_factory=dict)
    total: int = 0
    sum: float = 0.0   # in recorded units
    max_exact: float | None = None  # recorded units, if the source tracked it

    @classmethod
    def from_values(cls, values, scale: float = 1.0) -> "Histogram":
        h = cls(scale=scale)
        for v in values:
            h.record(v)
        return h

    def record(self, v: float, n: int = 1) -> None:
        iv = int(v)
        i = bucket_index(iv)
        self.buckets[i] = self.buckets.get(i, 0) + n
        self.total += n
        self.sum += v * n
        self.max_exact = v if self.max_exact is None else max(self.max_exact, v)

    def merge(self, other: "Histogram") -> "Histogram":
        if self.scale != other.scale:
            raise ValueError("cannot merge histograms of different scales")
        out = Histogram(scale=self.scale, buckets=dict(self.buckets), total=self.total, sum=self.sum,
                        max_exact=self.max_exact)
        for i, n in other.buckets.items():
            out.buckets[i] = out.buckets.get(i, 0) + n
        out.total += other.total
        out.sum += other.sum
        if other.max_exact is not None:
            out.max_exact = other.max_exact if out.max_exact is None else max(out.max_exact, other.max_exact)
        return out

    @property
    def count(self) -> int:
        return self.total

    def mean(self) -> float | None:
        return self.sum / self.total * self.scale if self.total else None

    def _bucket_estimate(self, i: int) -> Estimate:
        lo, hi = bucket_bounds(i)
        mid = lo if hi - lo == 1 else (lo + hi) / 2
        return Estimate(mid * self.scale, lo * self.scale, hi * self.scale)

    def percentile(self, q: float) -> Estimate | None:
        """The value below which a fraction q of observations fall (nearest-rank)."""
        if not self.total:
            return None
        return self.at_rank(max(1, math.ceil(q * self.total)))

    def at_rank(self, rank: int) -> Estimate | None:
        """The rank-th smallest observation (1-based), as its bucket; None past the count."""
        if not 1 <= rank <= self.total:
            return None
        seen = 0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen >= rank:
                est = self._bucket_estimate(i)
                if self.max_exact is not None and est.value > self.max_exact * self.scale:
                    # never report a percentile above the exact maximum
                    m = self.max_exact * self.scale
                    return Estimate(m, est.low, est.high)
                return est
        return None

    def min(self) -> Estimate | None:
        return self._bucket_estimate(min(self.buckets)) if self.total else None

    def max(self) -> Estimate | None:
        if not self.total:
            return None
        if self.max_exact is not None:
            m = self.max_exact * self.scale
            return Estimate(m, m, m)
        return self._bucket_estimate(max(self.buckets))

    def count_beyond(self, op: str, threshold: float) -> tuple[int, int]:
        """(certain, possible) number of observations with `value op threshold`.

        Buckets wholly on the matching side are certain; the bucket that holds the threshold
        may or may not match, so it adds only to `possible`.
        """
        t = threshold / self.scale
        certain = possible = 0
        for i, n in self.buckets.items():
            lo, hi = bucket_bounds(i)
            if op in (">", ">="):
                sure, maybe = lo > t or (op == ">=" and lo >= t), hi > t
            else:
                sure, maybe = hi <= t if op == "<" else hi - 1 <= t, lo < t or (op == "<=" and lo <= t)
            if sure:
                certain += n
                possible += n
            elif maybe:
                possible += n
        return certain, possible

    def to_json(self) -> dict:
        return {"scheme": f"loglinear-{SUB}", "scale": self.scale, "count": self.total, "sum": self.sum,
                "max": self.max_exact,
                "buckets": [[i, *bucket_bounds(i), n] for i, n in sorted(self.buckets.items())]}

    @classmethod
    def from_json(cls, d: dict) -> "Histogram":
        if d.get("scheme") != f"loglinear-{SUB}":
            raise ValueError(f"unknown histogram scheme {d.get('scheme')!r}")
        return cls(scale=float(d["scale"]), buckets={int(b[0]): int(b[3]) for b in d["buckets"]},
                   total=int(d["count"]), sum=float(d["sum"]), max_exact=d.get("max"))
