"""The policy loader: the model it builds, and its error table (message, line, column)."""
import pytest

from vcheck.catalog import Catalog
from vcheck.errors import PolicyError
from vcheck.policy import load_policy, load_policy_bytes

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
