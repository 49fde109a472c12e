"""Policy model (frozen dataclasses with source positions) and its strict loader.

The loader never constructs Python objects from YAML: it walks the composed node graph once,
after refusing aliases and non-standard tags on the event stream, so neither `!!python/...`
tags nor alias bombs get anywhere. Every error names FILE:LINE:COL.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from . import expr as expr_mod
from .model import DEFAULT_ON_MISSING, LAYERS, MetricLookup, MetricSpec
from .errors import PolicyError
from .files import read_bounded
from .units import UnitError, parse_duration

MAX_POLICY_BYTES = 1 << 20
ON_MISSING = ("fail", "skip", "pass")
POLICY_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
CHECK_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
DEFAULT_WINDOW = 60.0
DEFAULT_INTERVAL = 1.0
_STD_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}
MAX_YAML_DEPTH = 32   # a policy needs 5; PyYAML's composer recurses, ~330 levels overflow the stack
_MULTILINE_KEYS = ("description", "remediation")   # the only values that may hold newlines and tabs

TOP_KEYS = ("policy", "description", "defaults", "checks")
DEFAULT_KEYS = ("window", "interval", "on_missing")
CHECK_KEYS = ("id", "metric", "expect", "layer", "per", "select", "for", "window", "interval",
              "on_missing", "description", "remediation", "regress")


@dataclass(frozen=True)
class Selector:
    """One `select:` entry: label matches any alternative (glob or numeric range 'a-b');
    a leading '!' negates the whole entry.

    Alternatives are validated on construction (ValueError), so matches() never raises.
    """

    label: str
    alternatives: tuple[str, ...]
    negate: bool = False

    def __post_init__(self) -> None:
        for alt in self.alternatives:
            problem = selector_problem(alt)
            if problem:
                raise ValueError(problem)

    @classmethod
    def parse(cls, label: str, texts: list[str]) -> "Selector":
        """From the YAML value's texts: one string 'a,b' or '!a,b', or a list of strings."""
        negate = len(texts) == 1 and texts[0].startswith("!")
        alts = tuple(a.strip() for a in (texts[0][1:] if negate else ",".join(texts)).split(","))
        return cls(label, alts, negate)

    def matches(self, value: str | None) -> bool:
        if value is not None and not isinstance(value, str):
            value = str(value)
        hit = value is not None and any(_alt_matches(a, value) for a in self.alternatives)
        return hit != self.negate

    def __str__(self) -> str:
        return f"{self.label}={'!' if self.negate else ''}{','.join(self.alternatives)}"


_RANGE_RE = re.compile(r"([0-9]+)-([0-9]+)\Z")
_DIGITS_RE = re.compile(r"[0-9]+\Z")
_SIGNED_RE = re.compile(r"[-+]?[0-9]+\Z")
_RANGEISH_RE = re.compile(r"[0-9*?+-]*[0-9][0-9*?+-]*\Z")
_BRACKETS_RE = re.compile(r"\[!?\]?[^\]]*\]")
_MAX_RANGE_DIGITS = 18
# C0/C1 controls and the bidi overrides that reorder what a terminal shows
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def selector_problem(alt: str) -> str | None:
    """Why `alt` cannot be a select alternative, or None.

    A range is exactly 'low-high' in ASCII digits. Anything else made only of digits, signs,
    dashes and glob characters ('0-3*', '1-3-5', '-1-3', '5-*') would silently be a glob that
    matches nothing numeric, so it is refused; a literal '-' in a glob can be written '[-]'.
    """
    if not alt:
        return "empty alternative in select value"
    shown = repr(alt if len(alt) <= 40 else alt[:40] + "...")
    bad = _CONTROL_RE.search(alt)
    if bad:
        return f"control character U+{ord(bad.group()):04X} in select value"
    if alt.startswith("!"):
        return (f"'!' in {shown} only negates a whole select value and must come first: "
                "write '!a,b' as one string")
    m = _RANGE_RE.match(alt)
    if m:
        lo, hi = m.groups()
        if max(len(lo), len(hi)) > _MAX_RANGE_DIGITS:
            return f"range {shown} has a bound of more than {_MAX_RANGE_DIGITS} digits"
        if int(lo) > int(hi):
            return f"range {shown} is empty: write the low end first ({hi}-{lo})"
        return None
    unbracketed = _BRACKETS_RE.sub("?", alt)
    if "-" in unbracketed and not _SIGNED_RE.match(alt) and _RANGEISH_RE.match(unbracketed):
        return (f"{shown} is neither a range nor a clear glob: a range is 'low-high' in digits only, "
                "and a literal '-' in a glob is written '[-]'")
    return None


def _alt_matches(alt: str, value: str) -> bool:
    return _alt_matcher(alt)(value)


@functools.lru_cache(maxsize=4096)
def _alt_matcher(alt: str) -> Callable[[str], bool]:
    """One select: alternative made once into a test of a value (a check judging 100,000
    cgroups asks it 100,000 times): a numeric range 'a-b' for digit values, else the glob."""
    m = _RANGE_RE.match(alt)
    try:
        glob = re.compile(fnmatch.translate(alt)).match      # what fnmatch.fnmatchcase does
    except re.error:  # fnmatch escapes everything today; a selector must still never raise
        glob = None
    # compare digit strings, not ints: a label value can be longer than int() accepts
    low, high = (_digits_key(m.group(1)), _digits_key(m.group(2))) if m else (None, None)

    def matches(value: str) -> bool:
        if m and _DIGITS_RE.match(value):
            return low <= _digits_key(value) <= high
        return glob is not None and glob(value) is not None
    return matches


def _digits_key(digits: str) -> tuple[int, str]:
    d = digits.lstrip("0") or "0"
    return len(d), d


@dataclass(frozen=True)
class Check:
    id: str
    metric: MetricSpec
    expect: expr_mod.Expr
    expect_text: str
    layer: str
    per: tuple[str, ...]
    select: tuple[Selector, ...]
    for_: float | None
    window: float
    interval: float
    on_missing: str
    description: str
    remediation: str
    line: int      # 1-based line of the check's mapping
    col: int
    regress: expr_mod.Regress | None = None   # how much worse than a baseline run is allowed


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    path: Path
    sha256: str
    checks: tuple[Check, ...]
    source: str = ""          # the file's text, carried by the report so `compare` can judge with it


# --- loading -------------------------------------------------------------------------------

class _Ctx:
    def __init__(self, path: str, catalog: MetricLookup):
        self.path = path
        self.catalog = catalog

    def err(self, node_or_mark: Any, message: str, col_offset: int = 0) -> PolicyError:
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        line = getattr(mark, "line", 0) + 1
        col = getattr(mark, "column", 0) + 1 + col_offset
        return PolicyError(self.path, line, col, message)


def load_policy(path: str | Path, catalog: MetricLookup, display: str | None = None) -> Policy:
    """Load and validate one policy file; raises PolicyError."""
    p = Path(path)
    shown = display or str(path)
    try:
        raw = read_bounded(p, MAX_POLICY_BYTES, "the policy file")
    except OSError as exc:
        raise PolicyError(shown, 1, 1, f"cannot read policy: {exc.strerror}") from None
    except ValueError as exc:     # a directory, a device, or too large
        raise PolicyError(shown, 1, 1, str(exc)) from None
    return load_policy_bytes(raw, shown, catalog, p)


def load_policy_bytes(raw: bytes, shown: str, catalog: MetricLookup, path: Path | None = None) -> Policy:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PolicyError(shown, line, col, "not UTF-8 text (is this a binary file?)") from None
    ctx = _Ctx(shown, catalog)
    root = _compose(text, ctx)
    policy = _build_policy(root, ctx, path or Path(shown))
    return Policy(policy.name, policy.description, policy.path, hashlib.sha256(raw).hexdigest(),
                  policy.checks, text)


def _compose(text: str, ctx: _Ctx) -> yaml.Node:
    try:
        docs = 0
        depth = 0
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(ev, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ctx.err(ev, f"YAML nested deeper than {MAX_YAML_DEPTH} levels")
            elif isinstance(ev, yaml.CollectionEndEvent):
                depth -= 1
            if isinstance(ev, yaml.AliasEvent):
                raise ctx.err(ev, f"YAML aliases (*{ev.anchor}) are not allowed in policies")
            if isinstance(ev, yaml.DocumentStartEvent):
                docs += 1
                if docs > 1:
                    raise ctx.err(ev, "a policy file holds one YAML document")
            tag = getattr(ev, "tag", None)
            if tag and tag.startswith("!") and not tag.startswith("!!"):
                raise ctx.err(ev, f"YAML tag {tag} is not allowed in policies")
            if tag and tag not in _STD_TAGS and not tag.startswith("!"):
                raise ctx.err(ev, f"YAML tag {tag} is not allowed in policies")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except PolicyError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise ctx.err(mark, f"YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise PolicyError(ctx.path, line, col,
                          f"unacceptable character #x{exc.character:04x} (is this a binary file?)") from None
    except yaml.YAMLError as exc:
        raise PolicyError(ctx.path, 1, 1, f"invalid YAML: {exc}") from None
    if node is None:
        raise PolicyError(ctx.path, 1, 1, "empty policy: expected a mapping with 'policy' and 'checks'")
    for n, path, is_key in _walk(node, ctx):
        if n.tag not in _STD_TAGS:
            raise ctx.err(n, f"YAML tag {n.tag} is not allowed in policies")
        if isinstance(n, yaml.ScalarNode):
            _check_controls(n, path, is_key, ctx)
        if len(path) == 4 and path[0] == "checks" and path[2] == "select" and not is_key:
            _check_select(n, ctx)
    return node


_Path = tuple  # mapping keys (str, or None for a non-scalar key) and list indexes from the root


def _walk(node: yaml.Node, ctx: _Ctx):
    """Every node with its path and whether it is a mapping key; iterative, depth-bounded."""
    stack: list[tuple[yaml.Node, _Path, bool]] = [(node, (), False)]
    while stack:
        n, path, is_key = stack.pop()
        if len(path) > MAX_YAML_DEPTH:
            raise ctx.err(n, f"YAML nested deeper than {MAX_YAML_DEPTH} levels")
        yield n, path, is_key
        if isinstance(n, yaml.MappingNode):
            for k, v in reversed(n.value):
                name = k.value if isinstance(k, yaml.ScalarNode) else None
                stack.extend(((v, path + (name,), False), (k, path, True)))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend((item, path + (i,), False) for i, item in reversed(list(enumerate(n.value))))


_TEXT_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _check_controls(n: yaml.ScalarNode, path: _Path, is_key: bool, ctx: _Ctx) -> None:
    """Policy text reaches terminals and reports: no control characters, so none arrive raw."""
    name = path[-1] if path and isinstance(path[-1], str) else None
    multiline = not is_key and name in _MULTILINE_KEYS
    bad = (_TEXT_CONTROLS if multiline else _CONTROL_RE).search(n.value)
    if bad:
        what = "a key" if is_key else (name[:40] if name else "a value")
        allowed = "; only newlines and tabs are allowed there" if multiline else ""
        raise ctx.err(n, f"control character U+{ord(bad.group()):04X} in {what}{allowed}")


def _check_select(v: yaml.Node, ctx: _Ctx) -> None:
    """Refuse at load time the select values a Selector would refuse (see selector_problem);
    shapes that are wrong anyway are left to the check's own error."""
    items = v.value if isinstance(v, yaml.SequenceNode) else [v]
    if not all(isinstance(i, yaml.ScalarNode) and not i.tag.endswith(":null") for i in items):
        return
    if isinstance(v, yaml.SequenceNode):   # each item on its own, to point at the right one
        for i in items:
            for alt in i.value.split(","):
                problem = selector_problem(alt.strip())
                if problem:
                    raise ctx.err(i, problem)
    try:
        Selector.parse("", [i.value for i in items])
    except ValueError as exc:
        raise ctx.err(v, str(exc)) from None


def _mapping(node: yaml.Node, ctx: _Ctx, what: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise ctx.err(node, f"{what} must be a mapping, not {_kind(node)}")
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in node.value:
        if not (isinstance(k, yaml.ScalarNode) and k.tag.endswith(":str")):
            raise ctx.err(k, f"keys of {what} must be plain words")
        if k.value in out:
            raise ctx.err(k, f"duplicate key {k.value!r} in {what}")
        if k.value not in allowed:
            close = difflib.get_close_matches(k.value, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"
            raise ctx.err(k, f"unknown key {_short(k.value)!r} in {what}{hint}")
        out[k.value] = (k, v)
    return out


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {"int": "a number", "float": "a number", "bool": "a boolean", "null": "empty",
            "str": "a string"}.get(node.tag.rsplit(":", 1)[-1], "a scalar")


def _string(node: yaml.Node, ctx: _Ctx, key: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag.endswith((":null",)):
        raise ctx.err(node, f"{key} must be a string, not {_kind(node)}")
    if node.tag.endswith(":bool"):
        raise ctx.err(node, f"{key} must be a string, not a boolean (quote it)")
    return node.value


def _short(text: str, limit: int = 40) -> str:
    """User text echoed in an error: one line stays one line, whatever the file holds."""
    return text if len(text) <= limit else text[:limit] + "..."


MIN_INTERVAL = 0.01   # a sampler asked to wake every nanosecond would only spin


def _duration(node: yaml.Node, ctx: _Ctx, key: str) -> float:
    if not isinstance(node, yaml.ScalarNode) or node.tag.endswith((":null", ":bool")):
        raise ctx.err(node, f"{key} must be a duration like 60s, not {_kind(node)}")
    try:
        if node.tag.endswith((":int", ":float")):
            raise UnitError(f"{key} {node.value} needs a unit, e.g. {node.value}s")
        return parse_duration(node.value, minimum=MIN_INTERVAL) if key == "interval" else parse_duration(node.value)
    except UnitError as exc:
        raise ctx.err(node, f"{key}: {exc}" if not str(exc).startswith(key) else str(exc)) from None


def _on_missing(node: yaml.Node, ctx: _Ctx) -> str:
    v = _string(node, ctx, "on_missing")
    if v not in ON_MISSING:
        raise ctx.err(node, f"on_missing must be one of {', '.join(ON_MISSING)}, not {v!r}")
    return v


def _build_policy(root: yaml.Node, ctx: _Ctx, path: Path) -> Policy:
    top = _mapping(root, ctx, "the policy", TOP_KEYS)
    if "policy" not in top:
        raise ctx.err(root, "missing required key 'policy' (the policy's name)")
    name_node = top["policy"][1]
    name = _string(name_node, ctx, "policy")
    if not POLICY_NAME_RE.match(name):
        raise ctx.err(name_node, f"policy name {_short(name)!r} must match [a-z0-9-]+")
    description = _string(top["description"][1], ctx, "description") if "description" in top else ""

    defaults: dict[str, Any] = {}
    if "defaults" in top:
        d = _mapping(top["defaults"][1], ctx, "defaults", DEFAULT_KEYS)
        for key, (_, v) in d.items():
            defaults[key] = _on_missing(v, ctx) if key == "on_missing" else _duration(v, ctx, key)
            defaults[key + "_node"] = v
    if "checks" not in top:
        raise ctx.err(root, "missing required key 'checks' (a non-empty list)")
    checks_node = top["checks"][1]
    if not isinstance(checks_node, yaml.SequenceNode) or not checks_node.value:
        raise ctx.err(checks_node, "checks must be a non-empty list")
    checks: list[Check] = []
    seen: dict[str, int] = {}
    for cnode in checks_node.value:
        c = _build_check(cnode, ctx, defaults)
        if c.id in seen:
            raise ctx.err(cnode, f"duplicate check id {_short(c.id)!r} (first at line {seen[c.id]})")
        seen[c.id] = c.line
        checks.append(c)
    return Policy(name, description, path, "", tuple(checks))


def _build_check(node: yaml.Node, ctx: _Ctx, defaults: dict[str, Any]) -> Check:
    m = _mapping(node, ctx, "a check", CHECK_KEYS)
    for required in ("id", "metric", "expect"):
        if required not in m:
            raise ctx.err(node, f"check is missing required key {required!r}")
    id_node = m["id"][1]
    cid = _string(id_node, ctx, "id")
    if not CHECK_ID_RE.match(cid):
        raise ctx.err(id_node, f"check id {_short(cid)!r} must be letters, digits, '.', '_' or '-'")

    metric_node = m["metric"][1]
    metric_name = _string(metric_node, ctx, "metric")
    spec = ctx.catalog.get(metric_name)
    if spec is None:
        raise ctx.err(metric_node, f"unknown metric {_short(metric_name)!r}{ctx.catalog.suggest(metric_name[:200])}")

    layer = spec.layer
    if "layer" in m:
        ln = m["layer"][1]
        layer = _string(ln, ctx, "layer")
        if layer not in LAYERS:
            raise ctx.err(ln, f"layer must be one of {', '.join(LAYERS)}, not {layer!r}")
        if layer != spec.layer:
            raise ctx.err(ln, f"metric {spec.name} belongs to the {spec.layer} layer, not {layer}")

    per: tuple[str, ...] = ()
    if "per" in m:
        pn = m["per"][1]
        items = pn.value if isinstance(pn, yaml.SequenceNode) else [pn]
        per = tuple(_string(i, ctx, "per") for i in items)
        for i, p in zip(items, per):
            if p not in spec.labels:
                allowed = ", ".join(spec.labels) or "nothing (it is node-wide)"
                raise ctx.err(i, f"metric {spec.name} cannot be split per {p!r}; it can per: {allowed}")

    select: list[Selector] = []
    if "select" in m:
        sn = m["select"][1]
        if not isinstance(sn, yaml.MappingNode):
            raise ctx.err(sn, f"select must be a mapping like {{cpu: '0-3'}}, not {_kind(sn)}")
        allowed = spec.labels + spec.attributes
        for k, v in sn.value:
            label = _string(k, ctx, "select key")
            if label not in allowed and not (label.startswith("label.") and "label.*" in allowed):
                raise ctx.err(k, f"metric {spec.name} has no label {label!r} to select on "
                                 f"(it has: {', '.join(allowed) or 'none'})")
            vals = v.value if isinstance(v, yaml.SequenceNode) else [v]
            texts = [_scalar_text(x, ctx, "select value") for x in vals]
            negate = len(texts) == 1 and texts[0].startswith("!")
            alts = tuple(a.strip() for a in (texts[0][1:] if negate else ",".join(texts)).split(","))
            if not all(alts):
                raise ctx.err(v, "empty alternative in select value")
            select.append(Selector(label, alts, negate))

    window = _duration(m["window"][1], ctx, "window") if "window" in m else defaults.get("window", DEFAULT_WINDOW)
    interval = (_duration(m["interval"][1], ctx, "interval") if "interval" in m
                else defaults.get("interval", DEFAULT_INTERVAL))
    where = m.get("interval", m.get("window", (None, node)))[1]
    if interval > window:
        raise ctx.err(where, f"interval {interval:g}s is longer than the window {window:g}s")

    expect_node = m["expect"][1]
    expect_text = _string(expect_node, ctx, "expect")
    quoted = 1 if getattr(expect_node, "style", None) in ("'", '"') else 0
    try:
        expect = expr_mod.parse(expect_text)
        expr_mod.check_units(expect, spec.dimension)
        _check_stats(expect, spec)
    except expr_mod.ExprError as exc:
        raise ctx.err(expect_node, f"expect: {exc}", col_offset=exc.col + quoted) from None

    for_: float | None = None
    if "for" in m:
        fn = m["for"][1]
        for_ = _duration(fn, ctx, "for")
        if spec.kind != "series":
            raise ctx.err(fn, f"for: needs a sampled metric; {spec.name} is a distribution over the window")
        for leaf in expr_mod.leaves(expect):
            if isinstance(leaf, expr_mod.Outliers) or leaf.stat not in (None, "max", "min", "last"):
                raise ctx.err(expect_node, "with for:, each sample is judged on its own: write the "
                                           "comparison without a statistic, e.g. '< 10%'", col_offset=quoted)
        if for_ > window:
            raise ctx.err(fn, f"for: {for_:g}s is longer than the window {window:g}s")
        if for_ < interval:
            raise ctx.err(fn, f"for: {for_:g}s is shorter than the sampling interval {interval:g}s")

    on_missing = (_on_missing(m["on_missing"][1], ctx) if "on_missing" in m
                  else defaults.get("on_missing", DEFAULT_ON_MISSING[spec.layer]))
    description = _string(m["description"][1], ctx, "description") if "description" in m else ""
    remediation = _string(m["remediation"][1], ctx, "remediation") if "remediation" in m else ""
    regress = None
    if "regress" in m:
        rn = m["regress"][1]
        rquoted = 1 if getattr(rn, "style", None) in ("'", '"') else 0
        try:
            regress = expr_mod.parse_regress(_string(rn, ctx, "regress"), spec.dimension)
        except expr_mod.ExprError as exc:
            raise ctx.err(rn, str(exc), col_offset=exc.col + rquoted) from None
    return Check(cid, spec, expect, expect_text, layer, per, tuple(select), for_, window, interval,
                 on_missing, description, remediation, node.start_mark.line + 1,
                 node.start_mark.column + 1, regress)


def _scalar_text(node: yaml.Node, ctx: _Ctx, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":null"):
        raise ctx.err(node, f"{what} must be a string or number, not {_kind(node)}")
    return node.value


def _check_stats(e: expr_mod.Expr, spec: MetricSpec) -> None:
    for leaf in expr_mod.leaves(e):
        if isinstance(leaf, expr_mod.Comparison) and leaf.stat == "rate" and spec.kind == "series":
            raise expr_mod.ExprError(f"rate applies to event distributions; {spec.name} is sampled "
                                     "(use mean, max, ...)", leaf.col)

