"""The assertion grammar: valid forms, and syntax errors with the column they point at."""
import pytest

from vcheck import expr as E
from vcheck.units import BYTES, PERCENT, TIME


@pytest.mark.parametrize("text, shape", [
    ("< 10%", "< 10%"),
    ("<10%", "< 10%"),
    ("p99 < 100us", "p99 < 100us"),
    ("p999 <= 1.5ms", "p999 <= 1.5ms"),
    ("mean >= 0", "mean >= 0"),
    ("max != 3", "max != 3"),
    ("count(> 10ms) <= 5", "count(> 10ms) <= 5"),
    ("mean < 5% and max < 50%", "mean < 5% and max < 50%"),
    ("p50 < 1ms or p99 < 10ms", "(p50 < 1ms or p99 < 10ms)"),
    ("(p50 < 1ms or p99 < 10ms) and max < 1s", "(p50 < 1ms or p99 < 10ms) and max < 1s"),
    ("< 2GiB", "< 2GiB"),
    ("< 100 µs", "< 100µs"),
    ("last == 1e3", "last == 1000"),
])
def test_valid_forms(text, shape):
    assert str(E.parse(text)) == shape


def test_and_binds_tighter_than_or():
    e = E.parse("min > 1 or max < 5 and mean < 3")
    assert isinstance(e, E.Or) and isinstance(e.right, E.And)


def test_quantities_are_in_base_units():
    e = E.parse("p99 < 100us")
    assert e.stat == "p99" and e.op == "<" and e.value.base_value == pytest.approx(100e-6)
    o = E.parse("count(>= 2ms) < 3")
    assert isinstance(o, E.Outliers) and o.threshold.base_value == pytest.approx(2e-3) and o.limit == 3


@pytest.mark.parametrize("text, col, fragment", [
    ("", 0, "empty expression"),
    ("p98 < 1ms", 0, "unknown statistic 'p98'"),
    ("max 10%", 4, "expected a comparison"),
    ("< ", 2, "expected a number"),
    ("< 10 parsecs", 5, "unknown unit 'parsecs'"),
    ("< 10% max < 3", 6, "after a complete expression"),
    ("count(> 10ms) <= 5ms", 18, "plain number"),
    ("count(10ms) < 5", 6, "comparison inside count"),
    ("(< 1 and > 0", 12, "expected ')'"),
    ("< 1 ; rm -rf /", 4, "unexpected character ';'"),
    ("__import__('os') < 1", 11, "unexpected character"),
    ("open < 1", 0, "unknown statistic 'open'"),
])
def test_syntax_errors_carry_their_column(text, col, fragment):
    with pytest.raises(E.ExprError) as ei:
        E.parse(text)
    assert fragment in str(ei.value)
    assert ei.value.col == col


@pytest.mark.parametrize("text, dim, ok", [
    ("< 10%", PERCENT, True),
    ("< 10", PERCENT, True),
    ("< 10ms", PERCENT, False),
    ("p99 < 100us", TIME, True),
    ("p99 < 100", TIME, False),        # a latency needs its unit
    ("p99 < 10%", TIME, False),
    ("count(> 10ms) <= 5", TIME, True),
    ("count(> 10%) <= 5", TIME, False),
    ("count <= 5", TIME, True),        # count is a plain number whatever the metric
    ("max < 1GiB", BYTES, True),
    ("max < 1s", BYTES, False),
])
def test_units_must_fit_the_metric(text, dim, ok):
    e = E.parse(text)
    if ok:
        E.check_units(e, dim)
    else:
        with pytest.raises(E.ExprError):
            E.check_units(e, dim)


@pytest.mark.parametrize("text, col, fragment", [
    ("(" * 400 + "< 1" + ")" * 400, E.MAX_DEPTH, "nested deeper than 32"),
    ("(" * 33 + "< 1" + ")" * 33, 32, "nested deeper than 32"),
    ("(" * 100_000, 32, "nested deeper than 32"),
    (" and ".join(["< 1"] * 65), 64 * 8, "more than 64 comparisons"),
    ("< 1" + " or < 1" * 5000, 64 * 7, "more than 64 comparisons"),
    ("< 1e400", 2, "out of range"),
    ("< -1e400", 2, "out of range"),
    ("< " + "9" * 400, 2, "too long"),
    ("count(> 1ms) <= 1e999", 16, "out of range"),
    ("count(> 1e309ms) <= 1", 8, "out of range"),
])
def test_absurd_expressions_are_refused_with_a_column(text, col, fragment):
    with pytest.raises(E.ExprError) as ei:
        E.parse(text)
    assert fragment in str(ei.value) and ei.value.col == col


def test_depth_and_term_limits_are_inclusive():
    assert str(E.parse("(" * 32 + "< 1" + ")" * 32)) == "< 1"
    assert len(list(E.leaves(E.parse(" or ".join(["< 1"] * 64))))) == 64


def test_leaves_does_not_recurse():
    e: E.Expr = E.Comparison(None, "<", E.Quantity(0, ""), 0)
    for i in range(1, 5000):   # far deeper than the parser builds, as a hand-made tree could be
        e = E.And(e, E.Comparison(None, "<", E.Quantity(i, ""), 0))
    assert [leaf.value.number for leaf in E.leaves(e)] == list(range(5000))


@pytest.mark.parametrize("text, fragment", [
    ("p99 +" + "9" * 400 + "%", "too long"),
    ("p99 +1" + "0" * 70 + "us", "too long"),
])
def test_regress_refuses_absurd_amounts(text, fragment):
    with pytest.raises(E.ExprError, match=fragment):
        E.parse_regress(text, TIME)


@pytest.mark.parametrize("text", ["< 1 " + "x" * 100_000, "y" * 100_000 + " < 1", "< " + "z" * 100_000])
def test_errors_do_not_echo_huge_tokens(text):
    with pytest.raises(E.ExprError) as ei:
        E.parse(text)
    assert len(str(ei.value)) < 300


# --- regress: how much worse than a baseline run is allowed ---
def test_regress_relative_and_absolute():
    r = E.parse_regress("p99 +20%", TIME)
    assert r.relative and r.limit(1.0) == pytest.approx(1.2)
    r = E.parse_regress("mean +2", PERCENT)           # percentage points for a percent metric
    assert not r.relative and r.limit(5.0) == 7.0
    r = E.parse_regress("p99 +50us", TIME)
    assert r.limit(0.001) == pytest.approx(0.00105)


@pytest.mark.parametrize("text, words", [
    ("p99 20%", "expected '<stat>"),
    ("count +1", "not a statistic"),
    ("p99 +5MiB", "does not fit a time metric"),
    ("p99 +5parsec", "unknown unit"),
])
def test_regress_errors(text, words):
    with pytest.raises(E.ExprError, match=words):
        E.parse_regress(text, TIME)
