"""Waiver files: matching and expiry, and every bad file refused with one FILE:LINE:COL line."""
from __future__ import annotations

import datetime as dt
import os
import re

import pytest

from vcheck.errors import UsageError
from vcheck.waivers import MAX_WAIVER_BYTES, Waiver, load_waivers, unmatched

ONE = "waivers:\n  - check: a\n    justification: b\n    expires: 2026-01-01\n"


def refused(path, fragment: str, line: int | None = None, col: int | None = None) -> str:
    with pytest.raises(UsageError) as ei:
        load_waivers(path)
    msg = str(ei.value)
    m = re.match(rf"{re.escape(str(path))}:(\d+):(\d+): ", msg)
    assert m, f"no FILE:LINE:COL in {msg!r}"
    assert fragment in msg, msg
    assert "\n" not in msg and len(msg) < 300, msg
    if line is not None:
        assert int(m.group(1)) == line, msg
    if col is not None:
        assert int(m.group(2)) == col, msg
    return msg


def test_waiver_file_errors_name_the_line(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text("waivers:\n  - check: a\n    justification: b\n    expires: 2026-01-01\n    owner: me\n")
    refused(w, "unknown key 'owner'", 5, 5)
    w.write_text("waivers:\n  - check: a\n    expires: 2026-01-01\n")
    refused(w, "missing 'justification'", 2, 5)
    w.write_text("waivers: [\n")
    refused(w, "not valid YAML", 2, 1)


def test_waiver_matching_and_expiry(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text("waivers:\n  - {check: 'node-*::steal', entity: 'cpu[0-3]', justification: j, expires: 2026-12-31}\n")
    (waiver,) = load_waivers(w)
    assert waiver.matches("node-conformance", "steal", "cpu2")
    assert not waiver.matches("node-conformance", "steal", "cpu7")
    assert not waiver.matches("other", "steal", "cpu2")
    assert not waiver.expired(dt.date(2026, 12, 31)) and waiver.expired(dt.date(2027, 1, 1))


def test_a_good_file_loads(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text("# known\nwaivers:\n  - check: k8s-node::oom\n    entity: 'web-*'\n"
                 "    justification: |\n      leak fixed in 2.3\n      INC-1\n    expires: 2026-06-30\n")
    (x,) = load_waivers(w)
    assert (x.check, x.entity, x.expires, x.line) == ("k8s-node::oom", "web-*", dt.date(2026, 6, 30), 3)
    assert x.justification == "leak fixed in 2.3\nINC-1\n"
    w.write_text("waivers: []\n")
    assert load_waivers(w) == []


BAD = [
    # (file bytes, message fragment, line, col)
    (ONE.replace("b\n", "caf\xe9\n").encode("latin-1"), "not UTF-8", 3, 23),
    (b"\x00\x01junk", "unacceptable character #x0000", 1, 1),
    (b"waivers:\n  - {[a]: 1, check: a, justification: b, expires: 2026-01-01}\n", "plain words", 2, 6),
    (b"? {a: 1}\n: x\n", "plain words", 1, 3),
    (b"1: x\n", "plain words", 1, 1),
    (b"waivers: " + b"[" * 5000 + b"\n", "nested deeper than", 1, None),
    (("waivers:\n" + "".join(" " * i + "- \n" for i in range(1, 400))).encode(), "nested deeper than", None, None),
    ((ONE + "    check: c\n").encode(), "duplicate key 'check'", 5, 5),
    ((ONE + "waivers: []\n").encode(), "duplicate key 'waivers'", 5, 1),
    (b"waivers:\n  - &w {check: a, justification: b, expires: 2026-01-01}\n", "anchors and aliases", 2, 5),
    (b"j: &j b\nwaivers: []\n", "anchors and aliases", 1, 4),
    (b"waivers:\n  - {check: a, justification: *j, expires: 2026-01-01}\n", "anchors and aliases", None, None),
    (b"waivers: !!python/object/apply:os.system ['id']\n", "tag tag:yaml.org,2002:python/object", 1, 10),
    (b"waivers:\n  - !w {check: a, justification: b, expires: 2026-01-01}\n", "YAML tag !w", 2, 5),
    (b"waivers: !!binary aGk=\n", "not allowed", 1, 10),
    (b"waivers: !!set {a}\n", "not allowed", 1, 10),
    ((ONE + "---\n" + ONE).encode(), "one YAML document", 5, 1),
    (b"", "a waiver file is a mapping", 1, 1),
    (b"- a\n", "a waiver file is a mapping", 1, 1),
    (b"waivers:\n", "'waivers' must be a list", 1, 9),
    (b"other: []\n", "unknown key 'other'", 1, 1),
    (b"# nothing but\nx: 1\nwaivers: []\n", "unknown key 'x'", 2, 1),
    (b"waivers:\n  - just a string\n", "each waiver is a mapping", 2, 5),
    (ONE.replace("2026-01-01", "2026-02-30").encode(), "expires must be a date", 4, 14),
    (ONE.replace("2026-01-01", "soon").encode(), "expires must be a date", 4, 14),
    (ONE.replace("b\n", "~\n").encode(), "justification must be a non-empty string", 3, 20),
    (ONE.replace("b\n", "''\n").encode(), "justification must be a non-empty string", 3, 20),
    (ONE.replace("b\n", "[x]\n").encode(), "justification must be a non-empty string", 3, 20),
    (ONE.replace("b\n", '"b\\e[2J"\n').encode(), "control character U+001B in justification", 3, 20),
    (ONE.replace("check: a", 'check: "a\\tb"').encode(), "control character U+0009 in check", 2, 12),
    (ONE.replace("b\n", '"abc\\u202Eevil"\n').encode(), "control character U+202E", 3, 20),
]


@pytest.mark.parametrize("data, fragment, line, col", BAD)
def test_bad_files_give_one_line_with_position(tmp_path, data, fragment, line, col):
    w = tmp_path / "w.yaml"
    w.write_bytes(data)
    refused(w, fragment, line, col)


def test_justification_may_hold_newlines_and_tabs(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text(ONE.replace("b\n", '"one\\n\\ttwo"\n'))
    assert load_waivers(w)[0].justification == "one\n\ttwo"


def test_huge_file_is_refused_without_reading_it_all(tmp_path):
    w = tmp_path / "w.yaml"
    w.write_text(ONE.replace("b\n", "x" * MAX_WAIVER_BYTES + "\n"))
    refused(w, "larger than 1024 KiB", 1, 1)


def test_non_regular_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)                       # opening it for reading would block without O_NONBLOCK
    refused(fifo, "not a regular file", 1, 1)
    refused(tmp_path, "not a regular file", 1, 1)
    refused("/dev/null", "not a regular file", 1, 1)
    refused(tmp_path / "missing.yaml", "cannot read waiver file", 1, 1)


def test_unmatched_names_waivers_for_checks_no_policy_has():
    def w(check: str) -> Waiver:
        return Waiver(check, "*", "j", dt.date(2030, 1, 1), 1)

    known = {("node-conformance", "guest-cpu-steal"), ("k8s-node", "container-oom-kills")}
    waivers = [w("guest-cpu-steal"), w("node-conformance::guest-cpu-steal"), w("k8s-node::*"),
               w("*-oom-kills"), w("guest-cpu-steel"), w("kvm-host::guest-cpu-steal"), w("node-*::nope")]
    assert [x.check for x in unmatched(waivers, known)] == ["guest-cpu-steel", "kvm-host::guest-cpu-steal",
                                                            "node-*::nope"]
    assert Waiver.unmatched(waivers, set()) == waivers
    assert unmatched([], known) == []
