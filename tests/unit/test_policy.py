"""The policy loader: the model it builds, and its error table (message, line, column)."""
import pytest

from vcheck.catalog import Catalog
from vcheck.errors import PolicyError
from vcheck.policy import Selector, load_policy, load_policy_bytes, selector_problem

CATALOG = Catalog()

GOOD = """\
policy: node-conformance
description: demo
defaults: {window: 30s, interval: 2s, on_missing: skip}
checks:
  - id: guest-cpu-steal
    metric: cpu.steal
    expect: "< 10%"
    layer: guest
    per: cpu
    select: {cpu: "0-3"}
    for: 20s
    description: steal
    remediation: move the VM
  - id: psi
    metric: psi.io.some
    expect: mean < 50% and max < 90%
    window: 10s
    on_missing: fail
"""


def load(text: str):
    return load_policy_bytes(text.encode(), "p.yaml", CATALOG)


def test_good_policy_builds_the_model():
    p = load(GOOD)
    assert p.name == "node-conformance" and len(p.checks) == 2 and len(p.sha256) == 64
    steal, psi = p.checks
    assert (steal.window, steal.interval, steal.for_, steal.on_missing) == (30, 2, 20, "skip")
    assert steal.per == ("cpu",) and steal.select[0].matches("3") and not steal.select[0].matches("4")
    assert steal.line == 5 and steal.metric.name == "cpu.steal"
    assert (psi.window, psi.interval, psi.on_missing) == (10, 2, "fail")


def test_on_missing_defaults_per_layer():
    p = load("policy: x\nchecks:\n  - {id: a, metric: cpu.user, expect: '< 1%'}\n")
    assert p.checks[0].on_missing == "fail" and p.checks[0].window == 60


def test_selector_forms():
    p = load("policy: x\nchecks:\n  - id: a\n    metric: cpu.user\n    expect: '< 1%'\n"
             "    per: cpu\n    select: {cpu: '!0,2-3'}\n")
    s = p.checks[0].select[0]
    assert [s.matches(v) for v in ("0", "1", "2", "3", "4")] == [False, True, False, False, True]


CHECK = "policy: x\nchecks:\n  - id: a\n    metric: cpu.steal\n    expect: '< 10%'\n"

ERRORS = [
    # (policy text, line, col, message fragment)
    ("policy: x\nchecks: [\n", 3, 1, "YAML syntax error"),
    ("", 1, 1, "empty policy"),
    ("- a\n- b\n", 1, 1, "the policy must be a mapping"),
    ("checks: []\n", 1, 1, "missing required key 'policy'"),
    ("policy: Bad_Name\nchecks: []\n", 1, 9, "must match [a-z0-9-]+"),
    ("policy: x\n", 1, 1, "missing required key 'checks'"),
    ("policy: x\nchecks: []\n", 2, 9, "non-empty list"),
    ("policy: x\nchekcs: []\n", 2, 1, "unknown key 'chekcs' in the policy (did you mean 'checks'?)"),
    (CHECK + "    windw: 5s\n", 6, 5, "unknown key 'windw' in a check (did you mean 'window'?)"),
    ("policy: x\nchecks:\n  - id: a\n    metric: cpu.stea\n    expect: '< 1%'\n", 4, 13,
     "unknown metric 'cpu.stea' (did you mean cpu.steal?)"),
    ("policy: x\nchecks:\n  - id: a\n    metric: cpu.steal\n", 3, 5, "missing required key 'expect'"),
    ("policy: x\nchecks:\n  - id: a\n    metric: cpu.steal\n    expect: '< 10ms'\n", 5, 16,
     "unit 'ms' does not fit this metric"),
    ("policy: x\nchecks:\n  - id: a\n    metric: cpu.steal\n    expect: < 10 furlongs\n", 5, 18,
     "unknown unit 'furlongs'"),
    ("policy: x\nchecks:\n  - id: a\n    metric: cpu.steal\n    expect: 'p98 < 1'\n", 5, 14,
     "unknown statistic 'p98'"),
    (CHECK + "    window: 5\n", 6, 13, "needs a unit"),
    (CHECK + "    window: fast\n", 6, 13, "bad duration"),
    (CHECK + "    for: 2m\n    window: 1m\n", 6, 10, "longer than the window"),
    (CHECK + "    interval: 2m\n", 6, 15, "longer than the window"),
    (CHECK + "    layer: hypervisor\n", 6, 12, "belongs to the guest layer, not hypervisor"),
    (CHECK + "    layer: cloud\n", 6, 12, "layer must be one of"),
    (CHECK + "    per: vm\n", 6, 10, "cannot be split per 'vm'"),
    (CHECK + "    select: {device: vda}\n", 6, 14, "no label 'device'"),
    (CHECK + "    on_missing: maybe\n", 6, 17, "on_missing must be one of"),
    (CHECK + "  - id: a\n    metric: cpu.user\n    expect: '< 1%'\n", 6, 5, "duplicate check id 'a' (first at line 3)"),
    (CHECK + "    id: b\n", 6, 5, "duplicate key 'id'"),
    (CHECK + "    for: 10s\n    expect: 'p99 < 10%'\n", 7, 5, "duplicate key 'expect'"),
    ("policy: x\nchecks:\n  - id: a\n    metric: cpu.steal\n    expect: 'p99 < 10%'\n    for: 10s\n",
     5, 14, "without a statistic"),
    ("policy: x\nchecks:\n  - id: a\n    metric: cpu.steal\n    expect: 'rate < 10'\n", 5, 14,
     "rate applies to event distributions"),
    ("policy: x\nchecks:\n  - id: 'a b'\n    metric: cpu.steal\n    expect: '< 1'\n", 3, 9, "check id 'a b'"),
    ("policy: x\nchecks:\n  - id: a\n    metric: [cpu.steal]\n    expect: '< 1'\n", 4, 13, "metric must be a string"),
    ("policy: x\nchecks:\n  - id: a\n    metric: cpu.steal\n    expect: 10\n", 5, 13, "expected a comparison"),
    ("policy: !!python/object/apply:os.system ['echo pwned']\nchecks: []\n", 1, 9, "tag"),
    ("policy: !custom x\nchecks: []\n", 1, 9, "YAML tag !custom is not allowed"),
    ("policy: &a x\nchecks:\n  - id: *a\n", 3, 9, "aliases (*a) are not allowed"),
    ("policy: x\nchecks: []\n---\npolicy: y\n", 3, 1, "one YAML document"),
    ("policy: x\n\x00\x01\x02", 2, 1, "unacceptable character #x0000"),
]


@pytest.mark.parametrize("text, line, col, fragment", ERRORS)
def test_error_table(text, line, col, fragment):
    with pytest.raises(PolicyError) as ei:
        load(text)
    e = ei.value
    assert fragment in e.message, str(e)
    assert (e.line, e.col) == (line, col), str(e)
    assert str(e).startswith(f"p.yaml:{line}:{col}: ")
    assert "\n" not in str(e)


def test_binary_garbage_is_refused_with_position(tmp_path):
    f = tmp_path / "garbage.yaml"
    f.write_bytes(b"policy: x\n\xff\xfe\x00junk")
    with pytest.raises(PolicyError, match=r"garbage.yaml:2:1: not UTF-8"):
        load_policy(f, CATALOG)


def test_alias_bomb_is_refused_before_expansion():
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = "\n".join(lines) + "\npolicy: x\nchecks: []\n"
    with pytest.raises(PolicyError, match="aliases"):
        load(bomb)


def test_missing_file_is_a_policy_error(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "nope.yaml", CATALOG)


PER_CPU = CHECK + "    per: cpu\n"
DEEP_FLOW = "policy: x\nchecks: " + "[" * 400 + "]" * 400 + "\n"
DEEP_BLOCK = "policy: x\nchecks:\n" + "".join(" " * i + "- \n" for i in range(1, 400))
DEEP_MAP = "policy: x\nd:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 400))

BAD_INPUTS = [
    # nesting: never a RecursionError, always the node that went too deep
    (DEEP_FLOW, 2, 40, "YAML nested deeper than 32 levels"),
    ("policy: x\nchecks: " + "[" * 100_000 + "\n", 2, 40, "YAML nested deeper than 32 levels"),
    (DEEP_BLOCK, 34, 33, "YAML nested deeper than 32 levels"),
    (DEEP_MAP, 34, 33, "YAML nested deeper than 32 levels"),
    (CHECK.replace("'< 10%'", "'" + "(" * 400 + "< 10%" + ")" * 400 + "'"), 5, 46,
     "expect: parentheses nested deeper than 32 levels"),
    (CHECK.replace("'< 10%'", "'" + " and ".join(["< 10%"] * 65) + "'"), 5, 14 + 64 * 10,
     "more than 64 comparisons"),
    # select values that would validate but crash or silently match nothing at run time
    *((PER_CPU + f"    select: {{cpu: {value}}}\n", 7, 19, fragment) for value, fragment in [
        ("'5-3'", "range '5-3' is empty"), ("'99999999999999999999-1'", "more than 18 digits"),
        ("'1-99999999999999999999'", "more than 18 digits"), ("'0-3*'", "neither a range nor a clear glob"),
        ("'[0-3]-7'", "neither a range"), ("'1-3-5'", "neither a range"), ("'-1-3'", "neither a range"),
        ("'2-*'", "neither a range"), ("'0,!1'", "only negates a whole select value"),
        ("'!!1'", "only negates a whole"), ("'!'", "empty alternative"), ("'1,,2'", "empty alternative"),
        ("[]", "empty alternative"),
    ]),
    (PER_CPU + "    select: {cpu: ['!0', '1']}\n", 7, 20, "only negates a whole select value"),
    (PER_CPU + "    select:\n      cpu:\n        - '1'\n        - '3-2'\n", 10, 11, "range '3-2' is empty"),
    # durations and numbers out of range
    (CHECK + "    window: 99999h\n", 6, 13, "too long (at most 168h)"),
    (CHECK + "    window: 8d\n", 6, 13, "bad duration"),
    (CHECK + "    window: " + "9" * 400 + "s\n", 6, 13, "more than 64 digits"),
    (CHECK + "    window: 1e400s\n", 6, 13, "bad duration"),
    (CHECK + "    window: .inf\n", 6, 13, "needs a unit"),
    (CHECK + "    window: -5s\n", 6, 13, "bad duration"),
    (CHECK + "    interval: 0.0000000001s\n", 6, 15, "too short"),
    ("policy: x\ndefaults: {window: 200h}\nchecks: []\n", 2, 20, "too long"),
    (CHECK.replace("'< 10%'", "'< 1e400'"), 5, 16, "out of range"),
    (CHECK + "    regress: 'p99 +" + "9" * 70 + "%'\n", 6, 20, "regress: number"),
    # control characters never reach the terminal raw
    (CHECK.replace("id: a", 'id: "a\\e[31m"'), 3, 9, "control character U+001B in id"),
    (CHECK.replace("'< 10%'", '"< 10%\\n"'), 5, 13, "control character U+000A in expect"),
    (CHECK.replace("'< 10%'", '"\\x1c< 10%"'), 5, 13, "control character U+001C in expect"),
    (CHECK.replace("'< 10%'", '"< 10%\\x85"'), 5, 13, "control character U+0085 in expect"),
    (CHECK + '    description: "red \\e[31m"\n', 6, 18, "U+001B in description; only newlines and tabs"),
    (CHECK + '    remediation: "a\\rb"\n', 6, 18, "U+000D in remediation"),
    (CHECK + '    remediation: "abc\\u202Eevil"\n', 6, 18, "U+202E in remediation"),
    ('policy: x\ndescription: "\\x07"\nchecks: []\n', 2, 14, "U+0007 in description"),
    (PER_CPU + '    select: {cpu: "1\\e"}\n', 7, 19, "control character U+001B in cpu"),
    (PER_CPU + '    select: {"label\\e": 1}\n', 7, 14, "control character U+001B in a key"),
    ('policy: "x\\x9b"\nchecks: []\n', 1, 9, "control character U+009B in policy"),
    (CHECK + '    regress: "p99\\x1c+20%"\n', 6, 14, "control character U+001C in regress"),
]


@pytest.mark.parametrize("text, line, col, fragment", BAD_INPUTS)
def test_bad_inputs_give_one_line_with_position(text, line, col, fragment):
    test_error_table(text, line, col, fragment)


def test_description_and_remediation_keep_newlines_and_tabs():
    p = load(CHECK + '    description: "one\\n\\ttwo"\n    remediation: |\n      step 1\n      step 2\n')
    assert p.checks[0].description == "one\n\ttwo" and p.checks[0].remediation == "step 1\nstep 2\n"


def test_valid_selects_still_load():
    p = load(PER_CPU + "    select: {cpu: [0, '2-3', '[5-6]', '1[-]2', '08-09']}\n")
    s = p.checks[0].select[0]
    assert s.alternatives == ("0", "2-3", "[5-6]", "1[-]2", "08-09")
    assert [v for v in ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "1-2") if s.matches(v)] == \
        ["0", "2", "3", "5", "6", "8", "9", "1-2"]


@pytest.mark.parametrize("value", [
    None, "", "0", "3", "00000000000000000000000000003", "9" * 5000, "²", "٣", "-1", "1-2", "\x00", "[",
    "a" * 10000, 5,
])
def test_selector_matches_never_raises(value):
    for alts, negate in ((("0-3",), False), (("0-3", "*x*", "[a-", "1[-]2"), True), (("[!0-9]",), False)):
        assert isinstance(Selector("cpu", alts, negate).matches(value), bool)


def test_selector_ranges_compare_as_numbers():
    s = Selector("cpu", ("8-12",))
    assert [s.matches(v) for v in ("7", "8", "010", "12", "13", "9" * 5000, "²")] == \
        [False, True, True, True, False, False, False]


@pytest.mark.parametrize("texts, alternatives, negate", [
    (["0-3"], ("0-3",), False), (["!0, 2"], ("0", "2"), True), (["a", "b,c"], ("a", "b", "c"), False),
])
def test_selector_parse(texts, alternatives, negate):
    s = Selector.parse("cpu", texts)
    assert (s.alternatives, s.negate) == (alternatives, negate)


@pytest.mark.parametrize("alt", ["", "5-3", "0-3*", "!0", "a\x1bb", "1-2-3"])
def test_invalid_selectors_cannot_be_built(alt):
    assert selector_problem(alt)
    with pytest.raises(ValueError):
        Selector("cpu", (alt,))


@pytest.mark.parametrize("alt", ["0-3", "web-*", "web-1", "nvme0n1", "-1", "+1", "[0-3]", "*[-]3", "0x1F"])
def test_valid_selectors(alt):
    assert selector_problem(alt) is None


def test_regress_in_a_policy_names_file_line_and_column(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("policy: p\nchecks:\n  - id: c\n    metric: cpu.user\n    expect: '< 50%'\n    regress: 'p99 +5ms'\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(p, Catalog())
    assert str(exc.value).startswith(f"{p}:6:") and "does not fit" in str(exc.value)
