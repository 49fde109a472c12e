"""Waivers: a known failure, reported as waived (with its justification) until it expires.

    waivers:
      - check: node-conformance::guest-cpu-steal   # policy::check or check; globs allowed
        entity: "cpu*"                            # optional glob over the item's entity
        justification: host migration planned, INC-1234
        expires: 2026-12-31                       # after this date the check counts again

Only failures are waived; an inconclusive or skipped check stays what it is.

The file is read like a policy: bounded in size, regular files only, plain YAML (no anchors,
aliases or custom tags), and every error is one line naming FILE:LINE:COL.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from .errors import UsageError
from .files import read_up_to

WAIVER_KEYS = ("check", "entity", "justification", "expires")
MAX_WAIVER_BYTES = 1 << 20
MAX_DEPTH = 8   # a waiver file needs 3; PyYAML's composer recurses
_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")}
# C0/C1 controls and bidi overrides: waiver text is printed next to verdicts
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_TEXT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class Waiver:
    check: str
    entity: str
    justification: str
    expires: dt.date
    line: int

    def matches_check(self, policy: str, check_id: str) -> bool:
        target = f"{policy}::{check_id}" if "::" in self.check else check_id
        return fnmatch.fnmatchcase(target, self.check)

    def matches(self, policy: str, check_id: str, entity: str) -> bool:
        return self.matches_check(policy, check_id) and fnmatch.fnmatchcase(entity, self.entity)

    def expired(self, today: dt.date) -> bool:
        return today > self.expires

    @staticmethod
    def unmatched(waivers: Iterable[Waiver], known: set[tuple[str, str]]) -> list[Waiver]:
        """The waivers that name no (policy, check id) in `known`: a typo, or a check since
        renamed or removed. Entities are not considered (they are known only after a run)."""
        return [w for w in waivers if not any(w.matches_check(p, c) for p, c in known)]


unmatched = Waiver.unmatched


def covering(waivers: Iterable[Waiver], policy: str, check_id: str, entity: str,
             today: dt.date) -> tuple[Waiver | None, list[Waiver]]:
    """The first unexpired waiver of this item's failure, and the expired ones that matched it
    (they are said in the evidence: the check counts again)."""
    expired = []
    for w in waivers:
        if w.matches(policy, check_id, entity):
            if not w.expired(today):
                return w, expired
            expired.append(w)
    return None, expired


def _at(path: str, mark: yaml.Mark | None, msg: str) -> UsageError:
    where = f"{mark.line + 1}:{mark.column + 1}" if mark is not None else "1:1"
    return UsageError(f"{path}:{where}: {msg}")


def _err(path: str, node: yaml.Node, msg: str) -> UsageError:
    return _at(path, node.start_mark, msg)


def _read(path: str) -> bytes:
    """At most MAX_WAIVER_BYTES of a regular file; never blocks on a FIFO or device."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):   # before open: opening a device can act
            raise UsageError(f"{path}:1:1: not a regular file (a waiver file is YAML text)")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UsageError(f"{path}:1:1: cannot read waiver file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)   # what was opened, not what the name pointed at a moment ago
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path}:1:1: not a regular file (a waiver file is YAML text)")
        raw = read_up_to(fd, MAX_WAIVER_BYTES)
    except OSError as exc:
        raise UsageError(f"{path}:1:1: cannot read waiver file: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_WAIVER_BYTES:
        raise UsageError(f"{path}:1:1: waiver file larger than {MAX_WAIVER_BYTES // 1024} KiB")
    return raw


def _decode(path: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UsageError(f"{path}:{line}:{col}: not UTF-8 text (is this a binary file?)") from None


def _compose(path: str, text: str) -> yaml.Node | None:
    """Compose after a pass over the events that refuses what the composer should never see."""
    try:
        depth = docs = 0
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(ev, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _at(path, ev.start_mark, f"YAML nested deeper than {MAX_DEPTH} levels")
            elif isinstance(ev, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(ev, yaml.DocumentStartEvent):
                docs += 1
                if docs > 1:
                    raise _at(path, ev.start_mark, "a waiver file holds one YAML document")
            if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None):
                raise _at(path, ev.start_mark, "YAML anchors and aliases are not allowed in waiver files")
            tag = getattr(ev, "tag", None)
            if tag and tag not in _TAGS:
                raise _at(path, ev.start_mark, f"YAML tag {tag} is not allowed in waiver files")
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise _at(path, exc.problem_mark or exc.context_mark, f"not valid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise UsageError(f"{path}:{line}:{col}: not valid YAML: unacceptable character "
                         f"#x{exc.character:04x} (is this a binary file?)") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}:1:1: not valid YAML: {exc}") from None


def _show(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "...")


def _fields(path: str, node: yaml.MappingNode, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """A mapping's plain-string keys to (key, value) nodes; other keys and duplicates are errors."""
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag.rsplit(":", 1)[-1] != "str":
            raise _err(path, k, f"keys of {what} must be plain words")
        if k.value in out:
            raise _err(path, k, f"duplicate key {_show(k.value)} in {what}")
        bad = _CONTROL_RE.search(k.value)
        if bad:
            raise _err(path, k, f"control character U+{ord(bad.group()):04X} in a key")
        out[k.value] = (k, v)
    return out


def load_waivers(path: str | Path) -> list[Waiver]:
    """Strict like the policy loader: unknown keys, missing fields and bad dates are errors."""
    path = str(path)
    root = _compose(path, _decode(path, _read(path)))
    if not isinstance(root, yaml.MappingNode):
        raise _at(path, root.start_mark if root is not None else None,
                  "a waiver file is a mapping with a 'waivers' list")
    top = _fields(path, root, "the waiver file")
    for name, (k, _) in top.items():
        if name != "waivers":
            raise _err(path, k, f"unknown key {_show(name)} (expected: waivers)")
    if "waivers" not in top:
        raise _err(path, root, "missing key 'waivers' (a list)")
    seq = top["waivers"][1]
    if not isinstance(seq, yaml.SequenceNode):
        raise _err(path, seq, "'waivers' must be a list")
    return [_waiver(path, node) for node in seq.value]


def _waiver(path: str, node: yaml.Node) -> Waiver:
    if not isinstance(node, yaml.MappingNode):
        raise _err(path, node, "each waiver is a mapping (check, justification, expires)")
    fields = _fields(path, node, "a waiver")
    for name, (k, _) in fields.items():
        if name not in WAIVER_KEYS:
            raise _err(path, k, f"unknown key {_show(name)} in a waiver (expected: {', '.join(WAIVER_KEYS)})")
    for k in ("check", "justification", "expires"):
        if k not in fields:
            raise _err(path, node, f"waiver is missing {k!r}")
    m = {name: v for name, (_, v) in fields.items()}
    for k, v in m.items():
        if not isinstance(v, yaml.ScalarNode) or v.tag.endswith(":null") or not v.value.strip():
            raise _err(path, v, f"{k} must be a non-empty string")
        bad = (_TEXT_CONTROL_RE if k == "justification" else _CONTROL_RE).search(v.value)
        if bad:
            raise _err(path, v, f"control character U+{ord(bad.group()):04X} in {k}")
    try:
        expires = dt.date.fromisoformat(m["expires"].value)
    except ValueError:
        raise _err(path, m["expires"], f"expires must be a date like 2026-12-31, not {_show(m['expires'].value)}") from None
    return Waiver(m["check"].value, m["entity"].value if "entity" in m else "*",
                  m["justification"].value, expires, node.start_mark.line + 1)
