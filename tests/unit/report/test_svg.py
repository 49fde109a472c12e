"""The plots: where a threshold sits, what survives downsampling, which bucket holds p99."""
from __future__ import annotations

import math
import random
import xml.etree.ElementTree as ET

from vcheck.histogram import Histogram
from vcheck.report.svg import Marker, Threshold, downsample, histogram_svg, nice_ticks, series_svg
from vcheck.units import PERCENT, TIME

NS = {"s": "http://www.w3.org/2000/svg"}


def _svg(text: str) -> ET.Element:
    return ET.fromstring(text)   # well-formed XML, or this raises


def _axis(root: ET.Element, cls: str) -> list[tuple[float, float]]:
    """(value, pixel) of each tick, read from the drawing itself."""
    out = []
    for g in root.iter(f"{{{NS['s']}}}g"):
        if g.get("class") == cls:
            line = g.find("s:line", NS)
            pos = float(line.get("y1")) if cls == "vc-ytick" else float(line.get("x1"))
            out.append((float(g.get("data-value")), pos))
    return out


def _by_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in (e.get("class") or "").split()]


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 100, 5) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0, 3.0004, 6) == [0, 0.5, 1, 1.5, 2, 2.5, 3]   # jitter past a tick earns none
    t = nice_ticks(0.37, 7.9, 5)
    assert t[0] <= 0.37 and t[-1] >= 7.9 and len(t) <= 7
    assert nice_ticks(5, 5) and nice_ticks(float("nan"), 1) == [0.0, 1.0]


def test_the_threshold_line_sits_where_its_value_maps_on_the_axis():
    random.seed(1)
    n = 60
    times = [i + 1.0 for i in range(n)]
    values = [random.uniform(0, 30) for _ in range(n)]
    svg, _ = series_svg(times, values, [1.0] * n, dimension=PERCENT, window=60.0,
                        thresholds=[Threshold(10.0, "< 10%")], title="t")
    root = _svg(svg)
    ticks = _axis(root, "vc-ytick")
    (v0, p0), (v1, p1) = ticks[0], ticks[-1]     # the widest pair: rounding to 0.1 px matters least
    line = _by_class(root, "vc-threshold")[0]
    expected = p0 + (10.0 - v0) * (p1 - p0) / (v1 - v0)
    assert float(line.get("y1")) == float(line.get("y2"))
    assert abs(float(line.get("y1")) - expected) <= 0.2
    # and each sample where the axes put it: the 60 markers on a 60-sample plot
    ticks = _axis(root, "vc-xtick")
    (t0, x0), (t1, x1) = ticks[0], ticks[-1]
    dots = _by_class(root, "vc-sample")
    assert len(dots) == n
    for t, v, dot in zip(times, values, dots):
        assert abs(float(dot.get("cx")) - (x0 + (t - t0) * (x1 - x0) / (t1 - t0))) <= 0.2
        assert abs(float(dot.get("cy")) - (p0 + (v - v0) * (p1 - p0) / (v1 - v0))) <= 0.2


def test_a_thousand_samples_are_drawn_as_min_and_max_per_pixel_column():
    random.seed(2)
    n = 1000
    times = [(i + 1) * 0.1 for i in range(n)]
    values = [random.uniform(0, 5) for _ in range(n)]
    values[777] = 90.0     # one spike between pixels must survive
    values[123] = -1.0
    cols = 500
    pts = downsample(times, values, lambda t: t / 100.0 * cols, cols)
    assert len(pts) <= 2 * cols
    ys = [v for _, v in pts]
    assert 90.0 in ys and -1.0 in ys
    per_col: dict[int, list[float]] = {}
    for t, v in zip(times, values):
        per_col.setdefault(int(t / 100.0 * cols), []).append(v)
    assert {v for vs in per_col.values() for v in (min(vs), max(vs))} == set(ys)
    svg, caption = series_svg(times, values, [0.1] * n, dimension=PERCENT, window=100.0, title="t")
    path = _by_class(_svg(svg), "vc-series")[0]
    assert int(path.get("data-samples")) == n and int(path.get("data-points")) <= 2 * 506
    assert "min and max of each of" in caption
    assert not _by_class(_svg(svg), "vc-sample")     # no dots when there are more samples than room


def test_a_gap_breaks_the_line_and_the_violation_is_shaded():
    times = [1.0, 2.0, 3.0, 7.0, 8.0]
    svg, caption = series_svg(times, [1, 20, 20, 20, 1], [1.0] * 5, dimension=PERCENT, window=8.0,
                              thresholds=[Threshold(10, "< 10%")],
                              violation={"start": 1.0, "end": 3.0, "duration": 2.0, "samples": 2}, for_=2.0)
    root = _svg(svg)
    assert _by_class(root, "vc-series")[0].get("d").count("M") == 2
    rect = _by_class(root, "vc-violation")[0]
    (t0, x0), (t1, x1) = _axis(root, "vc-xtick")[:2]
    assert abs(float(rect.get("x")) - (x0 + (1.0 - t0) * (x1 - x0) / (t1 - t0))) <= 0.2
    assert _by_class(root, "vc-for")[0].get("data-seconds") == "2"
    assert "longest violating stretch 2.0s" in caption


def test_the_histogram_marks_p99_in_its_bucket_and_the_threshold():
    random.seed(3)
    lat = [random.lognormvariate(math.log(50_000), 0.6) for _ in range(5000)] + [8_000_000] * 80   # ns
    h = Histogram.from_values([int(x) for x in lat], scale=1e-9)
    p50, p99 = h.percentile(0.5), h.percentile(0.99)
    buckets = [(b[1] * 1e-9, b[2] * 1e-9, b[3]) for b in h.to_json()["buckets"]]
    svg, caption = histogram_svg(buckets, dimension=TIME, markers=[Marker("p50", p50.value, p50.low, p50.high),
                                                                   Marker("p99", p99.value, p99.low, p99.high)],
                                 thresholds=[Threshold(1e-3, "p99 < 1ms")])
    root = _svg(svg)
    bars = _by_class(root, "vc-bar")
    assert sum(int(b.get("data-count")) for b in bars) == h.count
    hot = _by_class(root, "vc-bar-p99")
    assert len(hot) == 1 and math.isclose(float(hot[0].get("data-low")), p99.low, rel_tol=1e-5)
    marker = _by_class(root, "vc-p99")[0]
    x = float(marker.get("x1"))
    assert float(hot[0].get("x")) <= x <= float(hot[0].get("x")) + float(hot[0].get("width")) + 0.5
    # the log axis: each decade tick at its value; the threshold line where 1ms falls between them
    ticks = _axis(root, "vc-xtick")
    (v0, p0), (v1, p1) = ticks[0], ticks[1]
    line = _by_class(root, "vc-threshold")[0]
    expected = p0 + (math.log10(1e-3) - math.log10(v0)) * (p1 - p0) / (math.log10(v1) - math.log10(v0))
    assert abs(float(line.get("x1")) - expected) <= 0.2
    assert "6.25%" in caption and "p99 lies in the highlighted bucket" in caption


def test_text_in_a_plot_is_escaped():
    svg, _ = series_svg([1.0], [1.0], [1.0], dimension=PERCENT, window=1.0,
                        thresholds=[Threshold(5, "<script>x</script>")], title="</svg><img src=x>")
    assert "<script>" not in svg and "<img" not in svg
    _svg(svg)
