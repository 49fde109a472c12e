import pytest

from vcheck.units import (BYTES, MAX_DURATION, MIN_DURATION, PERCENT, TIME, UnitError, finite_number,
                          format_duration, format_value, parse_duration)


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


@pytest.mark.parametrize("bad, fragment", [
    ("1e400s", "bad duration"), ("9" * 400 + "s", "more than 64 digits"), ("nan", "bad duration"),
    ("inf", "bad duration"), ("infs", "bad duration"), ("-1m", "bad duration"), ("169h", "too long"),
    ("99999999h", "too long"), ("10080m1s", "too long"), ("0.0000000001s", "too short"), ("0ns", "positive"),
    ("1m-5s", "bad duration"), ("1s\x1b[2J", "bad duration"),
])
def test_absurd_durations_are_refused(bad, fragment):
    with pytest.raises(UnitError, match=fragment):
        parse_duration(bad)


def test_duration_bounds():
    assert parse_duration("168h") == MAX_DURATION == 7 * 24 * 3600
    assert parse_duration("1ns") == MIN_DURATION
    assert parse_duration("2h", maximum=3 * 3600) == 7200
    with pytest.raises(UnitError, match=r"too long \(at most 1h\)"):
        parse_duration("2h", maximum=3600)
    with pytest.raises(UnitError, match=r"too short \(at least 10ms\)"):
        parse_duration("1ms", minimum=0.01)


@pytest.mark.parametrize("text, ok", [
    ("1.5", True), ("-3", True), ("1e3", True), ("1e400", False), ("-1e400", False), ("nan", False),
    ("inf", False), ("9" * 65, False), ("x", False),
])
def test_finite_number(text, ok):
    if ok:
        assert finite_number(text) == float(text)
    else:
        with pytest.raises(UnitError):
            finite_number(text)
