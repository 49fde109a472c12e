"""Durations, sizes and percentages: parsing and formatting in one place.

Internally vcheck keeps every quantity in a canonical base unit so comparisons never mix
scales: seconds for time, bytes for sizes, percent (0-100) for ratios, plain numbers for
counts. A metric declares which *dimension* it has; an assertion's unit must match it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

# dimension names used by the catalogue and the grammar
PERCENT = "percent"
TIME = "time"
BYTES = "bytes"
COUNT = "count"
RATE = "rate"            # events per second
BYTE_RATE = "byte_rate"  # bytes per second

TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
              "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3}

UNIT_DIMENSION: dict[str, str] = {"%": PERCENT}
UNIT_DIMENSION.update({u: TIME for u in TIME_UNITS})
UNIT_DIMENSION.update({u: BYTES for u in SIZE_UNITS})
UNIT_DIMENSION.update({u + "/s": BYTE_RATE for u in SIZE_UNITS})
UNIT_DIMENSION["/s"] = RATE

# What a bare number means for a metric of each dimension (None: a unit is required).
BARE_NUMBER_OK = {PERCENT, COUNT, RATE}

UNIT_LABEL = {PERCENT: "%", TIME: "s", BYTES: "B", COUNT: "", RATE: "/s", BYTE_RATE: "B/s"}


class UnitError(ValueError):
    """A unit or quantity that cannot be parsed; .col is the 0-based offset of the problem."""

    def __init__(self, message: str, col: int = 0):
        super().__init__(message)
        self.col = col


def unit_factor(unit: str) -> float:
    """Factor that turns a value in `unit` into its dimension's base unit."""
    if unit == "%" or unit == "/s":
        return 1.0
    if unit in TIME_UNITS:
        return TIME_UNITS[unit]
    base = unit[:-2] if unit.endswith("/s") else unit
    if base in SIZE_UNITS:
        return float(SIZE_UNITS[base])
    raise UnitError(f"unknown unit {unit!r} (known: {', '.join(sorted(UNIT_DIMENSION))})")


@dataclass(frozen=True)
class Quantity:
    """A number with the unit it was written in, and its value in the base unit."""

    number: float
    unit: str  # "" for a bare number

    @property
    def dimension(self) -> str | None:
        return UNIT_DIMENSION.get(self.unit) if self.unit else None

    @property
    def base_value(self) -> float:
        return self.number * unit_factor(self.unit) if self.unit else self.number

    def __str__(self) -> str:
        n = f"{self.number:g}"
        return f"{n}{self.unit}"


_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_MAX_NUMBER_CHARS = 64   # far more than any real quantity; keeps absurd literals out of float()

MIN_DURATION = 1e-9              # below a nanosecond nothing can be measured
MAX_DURATION = 7 * 24 * 3600.0   # a week: longer windows are a typo, not a plan


def finite_number(text: str, col: int = 0) -> float:
    """float(text), refusing what is not a finite number (1e400 and 400-digit literals are inf)."""
    if len(text) > _MAX_NUMBER_CHARS:
        raise UnitError(f"number {text[:20]}... is too long", col)
    try:
        value = float(text)
    except ValueError:
        raise UnitError(f"{text!r} is not a number", col) from None
    if not math.isfinite(value):
        raise UnitError(f"number {text} is out of range", col)
    return value


def parse_duration(text: object, *, minimum: float = MIN_DURATION, maximum: float = MAX_DURATION) -> float:
    """Parse '60s', '1m30s', '500ms' into seconds. A bare number is refused: say the unit.

    The result is finite and within [minimum, maximum] (default 1ns to 7 days), or UnitError.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise UnitError(f"expected a duration like 60s, got {type(text).__name__}")
    if isinstance(text, (int, float)):
        raise UnitError(f"duration {text!r} needs a unit, e.g. {text}s")
    s = text.strip()
    if not s:
        raise UnitError("empty duration")
    shown = s if len(s) <= 40 else s[:40] + "..."
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _DURATION_RE.match(s, pos)
        if not m:
            if re.fullmatch(r"[0-9]+(\.[0-9]+)?", s[pos:]):
                raise UnitError(f"duration {shown!r} needs a unit, e.g. {shown}s", pos)
            raise UnitError(f"bad duration {shown!r}: expected e.g. 60s, 500ms, 1m30s", pos)
        number = m.group(1)
        if len(number) > _MAX_NUMBER_CHARS:
            raise UnitError(f"bad duration {shown!r}: a number of more than {_MAX_NUMBER_CHARS} digits", pos)
        total += float(number) * TIME_UNITS[m.group(2)]
        pos = m.end()
    if not math.isfinite(total) or total > maximum:
        raise UnitError(f"duration {shown!r} is too long (at most {format_duration(maximum)})")
    if total <= 0:
        raise UnitError(f"duration {shown!r} must be positive")
    if total < minimum:
        raise UnitError(f"duration {shown!r} is too short (at least {format_duration(minimum)})")
    return total


def format_duration(seconds: float) -> str:
    if seconds >= 60 and abs(seconds % 60) < 1e-9:
        m = int(seconds // 60)
        return f"{m}m" if m % 60 else f"{m // 60}h"
    return format_value(seconds, TIME)


def format_value(value: float | None, dimension: str) -> str:
    """Human form of a base-unit value: 0.00123 s -> '1.23ms', 3e9 B -> '2.79GiB'."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if dimension == PERCENT:
        return f"{value:.2f}%"
    if dimension == TIME:
        a = abs(value)
        for unit, f in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
            if a >= f and (unit not in ("h", "m") or a >= 2 * f):
                return f"{value / f:.3g}{unit}"
        return f"{value * 1e9:.3g}ns"
    if dimension in (BYTES, BYTE_RATE):
        suffix = "/s" if dimension == BYTE_RATE else ""
        a = abs(value)
        for unit in ("TiB", "GiB", "MiB", "KiB"):
            if a >= SIZE_UNITS[unit]:
                return f"{value / SIZE_UNITS[unit]:.3g}{unit}{suffix}"
        return f"{value:.0f}B{suffix}"
    if dimension == RATE:
        return f"{value:.4g}/s"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


_QUANTITY_RE = re.compile(r"\s*([-+]?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ%/]*)\s*\Z")


def parse_quantity(text: str) -> float:
    """'10ms' -> 0.01, '50%' -> 50.0, '2GiB' -> 2147483648.0: a written quantity in its
    dimension's base unit (Python checks compare with the same units as the YAML grammar)."""
    m = _QUANTITY_RE.match(text)
    if not m:
        raise UnitError(f"{text!r} is not a quantity like 10ms, 50% or 2GiB")
    number = finite_number(m.group(1))
    return number * unit_factor(m.group(2)) if m.group(2) else number
