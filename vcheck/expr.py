"""The assertion language of a check's ``expect:`` string.

Grammar (whitespace between tokens is free)::

    expr       := conj ( "or" conj )*
    conj       := atom ( "and" atom )*
    atom       := "(" expr ")" | outliers | comparison
    comparison := [ STAT ] OP quantity
    outliers   := "count" "(" OP quantity ")" OP NUMBER
    quantity   := NUMBER [ UNIT ]
    STAT       := min | max | mean | last | sum | count | rate | p50 | p90 | p95 | p99 | p999
    OP         := "<" | "<=" | ">" | ">=" | "==" | "!="
    UNIT       := % | ns | us | µs | ms | s | m | h | B | KiB | MiB | GiB | ... (see units.py)

Examples: ``< 10%``, ``p99 < 100us``, ``count(> 10ms) <= 5``, ``mean < 5% and max < 50%``.

It is parsed into a small AST and evaluated by walking it; nothing is ever passed to ``eval``.
Syntax errors carry the 0-based column of the offending token.
"""
from __future__ import annotations

import functools
import operator
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Union

from .units import COUNT, UNIT_DIMENSION, Quantity, UnitError, finite_number

STATS = ("min", "max", "mean", "last", "sum", "count", "rate", "p50", "p90", "p95", "p99", "p999")
PERCENTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99, "p999": 0.999}

OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}

# The parser and every walk of the tree recurse; these bounds keep them far from Python's limit.
MAX_DEPTH = 32      # nested parentheses
MAX_TERMS = 64      # comparisons in one expression (the tree is at most this deep)


class ExprError(ValueError):
    def __init__(self, message: str, col: int):
        super().__init__(message)
        self.col = col


@dataclass(frozen=True)
class Comparison:
    stat: str | None  # None: the metric's natural statistic
    op: str
    value: Quantity
    col: int
    value_col: int = 0

    def __str__(self) -> str:
        return self.text

    @functools.cached_property
    def text(self) -> str:
        """As the policy said it, made once (every entity's measurement names it)."""
        return f"{self.stat + ' ' if self.stat else ''}{self.op} {self.value}"


@dataclass(frozen=True)
class Outliers:
    """count(inner_op threshold) op limit: how many observations cross a threshold."""

    inner_op: str
    threshold: Quantity
    op: str
    limit: float
    col: int
    value_col: int = 0

    def __str__(self) -> str:
        return self.text

    @functools.cached_property
    def text(self) -> str:
        """As the policy said it, made once (every entity's measurement names it)."""
        return f"count({self.inner_op} {self.threshold}) {self.op} {self.limit:g}"


@dataclass(frozen=True)
class And:
    left: "Expr"
    right: "Expr"

    def __str__(self) -> str:
        return f"{self.left} and {self.right}"


@dataclass(frozen=True)
class Or:
    left: "Expr"
    right: "Expr"

    def __str__(self) -> str:
        return f"({self.left} or {self.right})"


Expr = Union[Comparison, Outliers, And, Or]

_UNITS_BY_LENGTH = sorted(UNIT_DIMENSION, key=len, reverse=True)
_TOKEN_RE = re.compile(
    r"\s*(?:(?P<num>[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)|(?P<op><=|>=|==|!=|<|>)"
    r"|(?P<paren>[()])|(?P<word>[A-Za-zµμ_][A-Za-z0-9µμ_/]*|%|/s))"
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # num, op, paren, word, unit, end
    text: str
    col: int


def _scan(text: str) -> Iterator[_Tok]:
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            yield _Tok("end", "", pos)
            return
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected character {text[pos]!r}", pos)
        kind = m.lastgroup or ""
        tok = m.group(kind)
        col = m.start(kind)
        if kind == "num":
            # a unit may follow a number directly ("10ms", "5%")
            yield _Tok("num", tok, col)
            pos = m.end()
            for unit in _UNITS_BY_LENGTH:
                if text.startswith(unit, pos):
                    after = text[pos + len(unit): pos + len(unit) + 1]
                    if not (after.isalnum() or after == "_"):
                        yield _Tok("unit", unit, pos)
                        pos += len(unit)
                        break
            continue
        pos = m.end()
        yield _Tok(kind, tok, col)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = list(_scan(text))
        self.i = 0
        self.depth = 0
        self.terms = 0

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, kind: str, text: str | None = None, what: str = "") -> _Tok:
        t = self.tok
        if t.kind != kind or (text is not None and t.text != text):
            found = "end of expression" if t.kind == "end" else _show(t.text)
            raise ExprError(f"expected {what or text or kind}, found {found}", t.col)
        return self.take()

    def parse(self) -> Expr:
        if self.tok.kind == "end":
            raise ExprError("empty expression: expected e.g. '< 10%'", 0)
        e = self.expr()
        if self.tok.kind != "end":
            raise ExprError(f"unexpected {_show(self.tok.text)} after a complete expression "
                            "(join with 'and' / 'or')", self.tok.col)
        return e

    def expr(self) -> Expr:
        e = self.conj()
        while self.tok.kind == "word" and self.tok.text == "or":
            self.take()
            e = Or(e, self.conj())
        return e

    def conj(self) -> Expr:
        e = self.atom()
        while self.tok.kind == "word" and self.tok.text == "and":
            self.take()
            e = And(e, self.atom())
        return e

    def atom(self) -> Expr:
        t = self.tok
        if t.kind == "paren" and t.text == "(":
            if self.depth >= MAX_DEPTH:
                raise ExprError(f"parentheses nested deeper than {MAX_DEPTH} levels", t.col)
            self.take()
            self.depth += 1
            e = self.expr()
            self.expect("paren", ")", "')'")
            self.depth -= 1
            return e
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise ExprError(f"more than {MAX_TERMS} comparisons in one expression", t.col)
        if t.kind == "word" and t.text == "count" and self.toks[self.i + 1].text == "(":
            return self.outliers()
        stat = None
        if t.kind == "word":
            if t.text not in STATS:
                raise ExprError(f"unknown statistic {_show(t.text)} (known: {' '.join(STATS)})", t.col)
            stat = self.take().text
        op = self.expect("op", what="a comparison (< <= > >= == !=)")
        value_col = self.tok.col
        return Comparison(stat, op.text, self.quantity(), t.col, value_col)

    def outliers(self) -> Outliers:
        start = self.take()
        self.expect("paren", "(", "'('")
        inner = self.expect("op", what="a comparison inside count(...), e.g. count(> 10ms)")
        value_col = self.tok.col
        threshold = self.quantity()
        self.expect("paren", ")", "')'")
        op = self.expect("op", what="a comparison after count(...), e.g. <= 5")
        limit = self.expect("num", what="a number of occurrences")
        if self.tok.kind == "unit":
            raise ExprError("the limit of count(...) is a plain number of occurrences", self.tok.col)
        return Outliers(inner.text, threshold, op.text, _number(limit), start.col, value_col)

    def quantity(self) -> Quantity:
        num = self.expect("num", what="a number")
        unit = ""
        if self.tok.kind == "unit" or (self.tok.kind == "word" and self.tok.text in UNIT_DIMENSION):
            unit = self.take().text  # "10ms" or "10 ms"
        elif self.tok.kind == "word" and self.tok.text not in ("and", "or"):
            raise ExprError(f"unknown unit {_show(self.tok.text)} (known: {' '.join(sorted(UNIT_DIMENSION))})",
                            self.tok.col)
        return Quantity(_number(num), unit)


def _show(text: str) -> str:
    """repr() for an error message, cut short: a 1 MiB token must not become a 1 MiB line."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _number(tok: _Tok) -> float:
    try:
        return finite_number(tok.text, tok.col)
    except UnitError as exc:
        raise ExprError(str(exc), exc.col) from None


def parse(text: str) -> Expr:
    """Parse an expect string; raises ExprError with a column."""
    if not isinstance(text, str):
        raise ExprError("expect must be a string like '< 10%'", 0)
    return _Parser(text).parse()


def leaves(e: Expr) -> Iterator[Comparison | Outliers]:
    """The comparisons, left to right (iterative: a tree built by hand need not be shallow)."""
    stack = [e]
    while stack:
        n = stack.pop()
        if isinstance(n, (And, Or)):
            stack.extend((n.right, n.left))
        else:
            yield n


def check_units(e: Expr, dimension: str) -> None:
    """Refuse a quantity whose unit does not fit the metric (raises ExprError with its column)."""
    from .units import BARE_NUMBER_OK, UNIT_LABEL

    for leaf in leaves(e):
        if isinstance(leaf, Comparison) and leaf.stat in ("count",):
            q, dim = leaf.value, COUNT
        elif isinstance(leaf, Comparison) and leaf.stat == "rate":
            q, dim = leaf.value, "rate"
        else:
            q = leaf.value if isinstance(leaf, Comparison) else leaf.threshold
            dim = dimension
        if q.unit:
            have = q.dimension
            ok = have == dim or (dim == "byte_rate" and have == "bytes") or (dim == "rate" and have is None)
            if not ok:
                want = UNIT_LABEL.get(dim, dim) or "a plain number"
                raise ExprError(f"unit {q.unit!r} does not fit this metric, which is measured in {want}",
                                leaf.value_col)
        elif dim not in BARE_NUMBER_OK and dim != COUNT:
            raise ExprError(f"{q} needs a unit: this metric is measured in {UNIT_LABEL.get(dim, dim)}",
                            leaf.value_col)


# --- regress: how much worse than a baseline is allowed ------------------------------------
#
#     regress  := STAT "+" NUMBER ( "%" | UNIT )?
#
# "p99 +20%" allows the statistic to grow by 20 % of the baseline's value; "mean +2" or
# "p99 +50us" allow an absolute increase in the metric's unit (for percent metrics a bare number
# is percentage points). A trailing "%" always means relative.

_REGRESS_RE = re.compile(r"\s*(?P<stat>[a-z0-9]+)\s*\+\s*(?P<num>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>\S*)\s*\Z")


@dataclass(frozen=True)
class Regress:
    stat: str
    allowance: float        # relative fraction (0.2) or absolute base-unit value
    relative: bool
    text: str

    def limit(self, baseline: float) -> float:
        return baseline * (1 + self.allowance) if self.relative else baseline + self.allowance


def parse_regress(text: str, dimension: str) -> Regress:
    m = _REGRESS_RE.match(text)
    if not m:
        raise ExprError("regress: expected '<stat> +<amount>', e.g. 'p99 +20%' or 'mean +2'", 0)
    stat, unit = m.group("stat"), m.group("unit")
    try:
        num = finite_number(m.group("num"), m.start("num"))
    except UnitError as exc:
        raise ExprError(f"regress: {exc}", exc.col) from None
    if stat not in STATS or stat in ("count", "rate", "sum"):
        raise ExprError(f"regress: {_show(stat)} is not a statistic a baseline can be compared on "
                        "(min max mean last p50 p90 p95 p99 p999)", m.start("stat"))
    if unit == "%":
        return Regress(stat, num / 100.0, True, text.strip())
    if unit:
        try:
            q = Quantity(num, unit)
            q.base_value
        except UnitError:
            raise ExprError(f"regress: unknown unit {_show(unit)} (known: {', '.join(sorted(UNIT_DIMENSION))})",
                            m.start("unit")) from None
        if q.dimension != dimension and not (dimension == COUNT and q.dimension is None):
            raise ExprError(f"regress: unit {unit!r} does not fit a {dimension} metric", m.start("unit"))
        return Regress(stat, q.base_value, False, text.strip())
    return Regress(stat, num, False, text.strip())
