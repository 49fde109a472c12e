import pytest

from vcheck.units import (BYTES, PERCENT, TIME, UnitError, format_duration, format_value,
                          parse_duration)


@pytest.mark.parametrize("text, seconds", [
    ("60s", 60), ("1m", 60), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), ("100us", 1e-4),
    ("100µs", 1e-4), ("250ns", 2.5e-7), ("1.5s", 1.5),
])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad, fragment", [
    (60, "needs a unit"), ("60", "needs a unit"), ("sixty", "bad duration"), ("", "empty"),
    ("0s", "positive"), ("5 s", "bad duration"), ("-5s", "bad duration"), (True, "expected a duration"),
    ("1d", "bad duration"),
])
def test_bad_durations(bad, fragment):
    with pytest.raises(UnitError, match=fragment):
        parse_duration(bad)


@pytest.mark.parametrize("value, dim, text", [
    (0.00123, TIME, "1.23ms"), (2.5e-7, TIME, "250ns"), (90.0, TIME, "90s"), (300.0, TIME, "5m"),
    (3 * 1024**3, BYTES, "3GiB"), (512, BYTES, "512B"), (12.345, PERCENT, "12.35%"), (None, TIME, "n/a"),
])
def test_format(value, dim, text):
    assert format_value(value, dim) == text


def test_format_duration_prefers_minutes():
    assert format_duration(60.0) == "1m" and format_duration(3600.0) == "1h" and format_duration(5.0) == "5s"
