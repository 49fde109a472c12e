"""Evidence as pictures: inline SVG plots for the HTML reports, from plain numbers only.

Two plots, both self-contained (no script, no font or file fetched, nothing from the network):

* ``series_svg``: a sampled series against time since the window start, each threshold as a
  horizontal line, the longest violating stretch shaded, ``for:`` drawn as a bar of its length
  from where that stretch begins. A series with more samples than the plot has pixel columns
  is drawn as the minimum and maximum of each column (in the order they occurred), so 1,000
  samples stay legible and no spike is lost between pixels.
* ``histogram_svg``: a log-linear distribution on a logarithmic value axis (the buckets as
  recorded, 8 per power of two), counts on a logarithmic axis so a tail of a few events stays
  visible next to thousands, p50 and p99 marked (the bucket holding p99 is highlighted) and
  each threshold as a vertical line.

Colours come from classes (``vc-*``) that the report's stylesheet sets for a light and a dark
theme (``prefers-color-scheme``); the elements also carry presentation attributes, so a plot
read without that stylesheet still shows. Elements that a reader (or a test) may want to map
back to numbers carry them as ``data-*`` attributes in the metric's base unit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from markupsafe import Markup
from typing import Callable, Sequence

from ..units import BYTE_RATE, BYTES, PERCENT, RATE, TIME, format_value

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 18, 36   # plot margins: y labels left, threshold labels right

_COLOURS = {   # fallbacks for a plot shown without the report's stylesheet (light theme)
    "series": "#1f5fbf", "threshold": "#c62828", "violation": "#c62828", "for": "#8a5a00",
    "grid": "#d0d7de", "text": "#444c56", "bar": "#7d8fb3", "bar-hot": "#6f42c1", "p50": "#1a7f37",
    "p99": "#6f42c1", "gone": "#8a5a00",
}


@dataclass(frozen=True)
class Threshold:
    """A value the check compares against, in the metric's base unit, and how it reads."""

    value: float
    label: str


@dataclass(frozen=True)
class Marker:
    """A statistic to mark on a histogram: its value and the bucket it was read from."""

    name: str     # p50, p99
    value: float
    low: float
    high: float


def _f(x: float) -> str:
    """A coordinate: one decimal is finer than a pixel and keeps the output stable and small."""
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else s


def short_value(v: float, dimension: str) -> str:
    """Axis labels: as units.format_value, a little shorter where it is verbose."""
    if dimension == PERCENT:
        return f"{v:.4g}%"
    if dimension in (TIME, BYTES, BYTE_RATE, RATE):
        return format_value(v, dimension)
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = mag * 10
    for m in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (m * mag) <= count + 0.02:
            step = m * mag
            break
    # a value a hair past a round tick (a window of 3.0004 s) does not earn a tick of its own
    start = math.floor(lo / step + 0.02) * step
    n = max(1, math.ceil((hi - start) / step - 0.02))
    return [_clean(start + i * step) for i in range(n + 1)]


def _clean(x: float) -> float:
    return float(f"{x:.12g}")


class _Canvas:
    def __init__(self, title: str, kind: str, attrs: dict[str, str] | None = None):
        self.parts: list[Markup] = []
        more = Markup("").join(Markup(' {}="{}"').format(k, v) for k, v in (attrs or {}).items())
        self.parts.append(
            Markup('<svg xmlns="http://www.w3.org/2000/svg" class="vc-plot vc-plot-{}" viewBox="0 0 {} {}" width="{}" height="{}" role="img" font-family="sans-serif" font-size="11"{}><title>{}</title>').format(kind, WIDTH, HEIGHT, WIDTH, HEIGHT, more, title))

    def add(self, s: Markup) -> None:
        self.parts.append(s)

    def text(self, x: float, y: float, s: str, cls: str = "vc-text", anchor: str = "start", extra: Markup = Markup("")) -> None:
        self.parts.append(Markup('<text class="{}" x="{}" y="{}" text-anchor="{}" fill="{}"{}>{}</text>').format(cls, _f(x), _f(y), anchor, _COLOURS["text"], extra, s))

    def done(self) -> Markup:
        """The picture; every part is Markup made by format(), so any text in it was escaped."""
        return Markup("").join(self.parts) + Markup("</svg>")


def _plot_box() -> tuple[float, float, float, float]:
    return LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM


# --- a sampled series ------------------------------------------------------------------------

def downsample(times: Sequence[float], values: Sequence[float], x_of: Callable[[float], float],
               columns: int) -> list[tuple[float, float]]:
    """At most two points per pixel column: the column's minimum and maximum, in the order they
    occurred. Fewer samples than columns are returned as they are."""
    if len(values) <= columns:
        return [(x_of(t), v) for t, v in zip(times, values)]
    out: list[tuple[float, float]] = []
    col = None
    lo_i = hi_i = 0
    for i, t in enumerate(times):
        c = int(x_of(t))
        if c != col:
            if col is not None:
                out.extend(_column(times, values, x_of, lo_i, hi_i))
            col, lo_i, hi_i = c, i, i
        else:
            if values[i] < values[lo_i]:
                lo_i = i
            if values[i] > values[hi_i]:
                hi_i = i
    if col is not None:
        out.extend(_column(times, values, x_of, lo_i, hi_i))
    return out


def _column(times, values, x_of, lo_i: int, hi_i: int) -> list[tuple[float, float]]:
    if lo_i == hi_i:
        return [(x_of(times[lo_i]), values[lo_i])]
    first, second = sorted((lo_i, hi_i))
    return [(x_of(times[first]), values[first]), (x_of(times[second]), values[second])]


def _segments(times: Sequence[float], spans: Sequence[float]) -> list[tuple[int, int]]:
    """Index ranges [a, b) of samples without a gap between them (a sample covers [t - span, t];
    a gap is a stretch of more than half a sample that no sample covers)."""
    out, start = [], 0
    for i in range(1, len(times)):
        span = spans[i] if i < len(spans) and spans[i] > 0 else 0.0
        if span and (times[i] - span) - times[i - 1] > 0.5 * span:
            out.append((start, i))
            start = i
    if times:
        out.append((start, len(times)))
    return out


def series_svg(times: Sequence[float], values: Sequence[float], spans: Sequence[float], *, dimension: str,
               window: float, thresholds: Sequence[Threshold] = (), violation: dict | None = None,
               for_: float | None = None, gone_at: float | None = None, title: str = "") -> tuple[Markup, str]:
    """The plot and a one-line caption saying what it shows (and how it was downsampled)."""
    x0, x1, y0, y1 = _plot_box()
    t_end = max([window or 0.0, *(times[-1:] or [0.0])]) or 1.0
    xticks = nice_ticks(0.0, t_end, 6)
    t_hi = xticks[-1]

    finite = [v for v in values if math.isfinite(v)]
    lo = min([0.0, *finite, *(t.value for t in thresholds)])
    hi = max([*finite, *(t.value for t in thresholds), lo + (1e-9 if dimension == TIME else 1.0)])
    if dimension == PERCENT and 50 < hi <= 100:
        yticks = nice_ticks(lo, 100.0, 5)      # a share: the axis ends at 100%
    else:
        yticks = nice_ticks(lo, hi * 1.04 if hi > 0 else hi, 5)
    v_lo, v_hi = yticks[0], yticks[-1]

    def x_of(t: float) -> float:
        return x0 + (x1 - x0) * (t / t_hi)

    def y_of(v: float) -> float:
        return y1 - (y1 - y0) * ((v - v_lo) / (v_hi - v_lo))

    c = _Canvas(title, "series", {"data-ymin": f"{v_lo:g}", "data-ymax": f"{v_hi:g}", "data-tmax": f"{t_hi:g}"})
    # the longest violating stretch, under everything else
    if violation:
        a, b = max(0.0, violation["start"]), min(t_hi, violation["end"])
        c.add(Markup('<rect class="vc-violation" x="{}" y="{}" width="{}" height="{}" fill="{}" fill-opacity="0.15" data-start="{:.10g}" data-end="{:.10g}"><title>longest violation: {:.1f}s, +{:.1f}s to +{:.1f}s, {} samples</title></rect>').format(_f(x_of(a)), _f(y0), _f(max(x_of(b) - x_of(a), 1)), _f(y1 - y0), _COLOURS["violation"], violation["start"], violation["end"], violation["duration"], violation["start"], violation["end"], violation["samples"]))
    for v in yticks:
        y = y_of(v)
        c.add(Markup('<g class="vc-ytick" data-value="{:.10g}"><line class="vc-grid" x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="1"/>').format(v, _f(x0), _f(x1), _f(y), _f(y), _COLOURS["grid"]))
        c.text(x0 - 6, y + 4, short_value(v, dimension), anchor="end")
        c.add(Markup("</g>"))
    for t in xticks:
        x = x_of(t)
        c.add(Markup('<g class="vc-xtick" data-value="{:.10g}"><line class="vc-grid" x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}"/>').format(t, _f(x), _f(x), _f(y1), _f(y1 + 4), _COLOURS["grid"]))
        c.text(x, y1 + 16, f"+{t:g}s", anchor="middle")
        c.add(Markup("</g>"))
    c.text(x1, HEIGHT - 4, "seconds since the window start", anchor="end", cls="vc-text vc-axis-title")

    # the samples: one path, broken where no sample covers the time
    points_drawn = 0
    columns = int(x1 - x0)
    d = []
    for a, b in _segments(times, spans):
        pts = downsample(times[a:b], values[a:b], x_of, columns)
        pts = [(x, v) for x, v in pts if math.isfinite(v)]
        points_drawn += len(pts)
        if pts:
            d.append("M" + " L".join(f"{_f(x)} {_f(y_of(v))}" for x, v in pts))
    if d:
        c.add(Markup('<path class="vc-series" d="{}" fill="none" stroke="{}" stroke-width="1.5" stroke-linejoin="round" data-samples="{}" data-points="{}"/>').format(" ".join(d), _COLOURS["series"], len(values), points_drawn))
    if 0 < len(values) <= 60:
        c.add(Markup("").join(Markup('<circle class="vc-sample" cx="{}" cy="{}" r="2.2" fill="{}"/>').format(_f(x_of(t)), _f(y_of(v)), _COLOURS["series"]) for t, v in zip(times, values) if math.isfinite(v)))
    # thresholds on top of the data, labelled in the right margin
    for i, th in enumerate(thresholds):
        y = y_of(th.value)
        c.add(Markup('<line class="vc-threshold" x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="1.5" stroke-dasharray="6 3" data-value="{:.10g}"><title>threshold: {}</title></line>').format(_f(x0), _f(x1), _f(y), _f(y), _COLOURS["threshold"], th.value, th.label))
        c.text(x1 + 6, y + 4 + 12 * i, th.label, cls="vc-text vc-threshold-label")
    if for_ and violation:
        # for: as a bar of its length from where the longest stretch begins: the check fails
        # when the shaded stretch reaches past the bar's end
        a = max(0.0, violation["start"])
        y = y0 + 6
        c.add(Markup('<g class="vc-for" data-seconds="{:.10g}"><line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="3"/>').format(for_, _f(x_of(a)), _f(x_of(min(a + for_, t_hi))), _f(y), _f(y), _COLOURS["for"]))
        c.text(x_of(min(a + for_, t_hi)) + 4, y + 4, f"for: {for_:g}s", cls="vc-text vc-for-label")
        c.add(Markup("</g>"))
    elif for_:
        c.text(x0 + 4, y0 + 10, f"for: {for_:g}s (no violating sample)", cls="vc-text vc-for-label")
    if gone_at is not None and 0 <= gone_at <= t_hi:
        x = x_of(gone_at)
        c.add(Markup('<line class="vc-gone" x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-dasharray="2 2"><title>gone at +{:.1f}s</title></line>').format(_f(x), _f(x), _f(y0), _f(y1), _COLOURS["gone"], gone_at))
    c.add(Markup('<rect class="vc-frame" x="{}" y="{}" width="{}" height="{}" fill="none" stroke="{}"/>').format(_f(x0), _f(y0), _f(x1 - x0), _f(y1 - y0), _COLOURS["grid"]))

    caption = f"{len(values)} samples"
    if len(values) > columns:
        caption += f", drawn as the min and max of each of {columns} pixel columns"
    if violation:
        caption += (f"; longest violating stretch {violation['duration']:.1f}s (+{violation['start']:.1f}s to "
                    f"+{violation['end']:.1f}s, {violation['samples']} samples), shaded")
    if gone_at is not None:
        caption += f"; gone at +{gone_at:.1f}s"
    return c.done(), caption


# --- a distribution --------------------------------------------------------------------------

def histogram_svg(buckets: Sequence[tuple[float, float, int]], *, dimension: str, markers: Sequence[Marker] = (),
                  thresholds: Sequence[Threshold] = (), relative_error: float = 0.0625,
                  title: str = "") -> tuple[Markup, str]:
    """buckets: (low, high, count) in the metric's base unit, non-empty ones, any order."""
    x0, x1, y0, y1 = _plot_box()
    y0 += 30   # three rows of marker labels above the plot
    bs = sorted((b for b in buckets if b[2] > 0), key=lambda b: b[0])
    total = sum(b[2] for b in bs)
    lows = [b[0] if b[0] > 0 else b[1] / 2 for b in bs]
    candidates = [*lows, *(t.value for t in thresholds if t.value > 0), *(m.low for m in markers if m.low > 0)]
    highs = [*(b[1] for b in bs), *(t.value for t in thresholds if t.value > 0)]
    if not candidates or not highs:
        return _Canvas(title, "histogram").done(), "no events"
    lo_exp = math.floor(math.log10(min(candidates)))
    hi_exp = math.ceil(math.log10(max(highs)))
    if hi_exp <= lo_exp:
        hi_exp = lo_exp + 1

    def x_of(v: float) -> float:
        v = max(v, 10.0 ** lo_exp)
        return x0 + (x1 - x0) * (math.log10(v) - lo_exp) / (hi_exp - lo_exp)

    peak = max((b[2] for b in bs), default=1)
    decades = max(1, math.ceil(math.log10(peak)))          # the axis ends at the power of ten above the peak
    top = math.log10(10 ** decades + 1)

    def y_of(n: float) -> float:
        return y1 - (y1 - y0) * (math.log10(n + 1) / top)  # log(1 + n): an empty bucket sits on the axis

    c = _Canvas(title, "histogram", {"data-xmin": f"{10.0 ** lo_exp:g}", "data-xmax": f"{10.0 ** hi_exp:g}"})
    for n in [0, *(10 ** k for k in range(1, decades + 1))]:
        y = y_of(n)
        c.add(Markup('<g class="vc-ytick" data-value="{}"><line class="vc-grid" x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}"/>').format(n, _f(x0), _f(x1), _f(y), _f(y), _COLOURS["grid"]))
        c.text(x0 - 6, y + 4, f"{n:,}", anchor="end")
        c.add(Markup("</g>"))
    for e in range(lo_exp, hi_exp + 1):
        x = x_of(10.0 ** e)
        c.add(Markup('<g class="vc-xtick" data-value="{:.10g}"><line class="vc-grid" x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}"/>').format(10.0 ** e, _f(x), _f(x), _f(y0), _f(y1 + 4), _COLOURS["grid"]))
        c.text(x, y1 + 16, short_value(10.0 ** e, dimension), anchor="middle")
        c.add(Markup("</g>"))
    c.text(4, y0 - 8, "events (log)", cls="vc-text vc-axis-title")
    hot = next((m for m in markers if m.name == "p99"), None)
    for (low, high, n), shown_low in zip(bs, lows):
        xa, xb = x_of(shown_low), x_of(high)
        is_hot = hot is not None and math.isclose(low, hot.low, rel_tol=1e-9, abs_tol=1e-15)
        cls = "vc-bar vc-bar-p99" if is_hot else "vc-bar"
        colour = _COLOURS["bar-hot"] if is_hot else _COLOURS["bar"]
        c.add(Markup('<rect class="{}" x="{}" y="{}" width="{}" height="{}" fill="{}" data-low="{:.10g}" data-high="{:.10g}" data-count="{}"><title>[{}, {}): {}</title></rect>').format(cls, _f(xa), _f(y_of(n)), _f(max(xb - xa - 0.5, 1)), _f(y1 - y_of(n)), colour, low, high, n, format_value(low, dimension), format_value(high, dimension), n))
    row = 0
    for m in markers:
        x = x_of(m.value)
        c.add(Markup('<line class="vc-marker vc-{}" x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="1.5" data-value="{:.10g}" data-low="{:.10g}" data-high="{:.10g}"/>').format(m.name, _f(x), _f(x), _f(y0 - 22 + 10 * row), _f(y1), _COLOURS.get(m.name, _COLOURS["p50"]), m.value, m.low, m.high))
        c.text(x + 3, y0 - 14 + 10 * row, f"{m.name} {format_value(m.value, dimension)}",
               cls=f"vc-text vc-{m.name}-label")
        row += 1
    for th in thresholds:
        x = x_of(th.value)
        c.add(Markup('<line class="vc-threshold" x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="1.5" stroke-dasharray="6 3" data-value="{:.10g}"><title>threshold: {}</title></line>').format(_f(x), _f(x), _f(y0 - 22 + 10 * row), _f(y1), _COLOURS["threshold"], th.value, th.label))
        c.text(x + 3, y0 - 14 + 10 * row, th.label, cls="vc-text vc-threshold-label")
        row += 1
    c.add(Markup('<rect class="vc-frame" x="{}" y="{}" width="{}" height="{}" fill="none" stroke="{}"/>').format(_f(x0), _f(y0), _f(x1 - x0), _f(y1 - y0), _COLOURS["grid"]))
    caption = (f"{total} events in {len(bs)} buckets (8 per power of two: a percentile is within "
               f"{relative_error:.2%} of the true value); count on a log scale")
    if hot is not None:
        caption += (f"; p99 lies in the highlighted bucket [{format_value(hot.low, dimension)}, "
                    f"{format_value(hot.high, dimension)})")
    return c.done(), caption


__all__ = ["Threshold", "Marker", "series_svg", "histogram_svg", "downsample", "nice_ticks", "short_value"]
