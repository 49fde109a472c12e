"""Waivers: a known failure, reported as waived (with its justification) until it expires.

    waivers:
      - check: node-conformance::guest-cpu-steal   # policy::check or check; globs allowed
        entity: "cpu*"                            # optional glob over the item's entity
        justification: host migration planned, INC-1234
        expires: 2026-12-31                       # after this date the check counts again

Only failures are waived; an inconclusive or skipped check stays what it is.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import UsageError

WAIVER_KEYS = ("check", "entity", "justification", "expires")


@dataclass(frozen=True)
class Waiver:
    check: str
    entity: str
    justification: str
    expires: dt.date
    line: int

    def matches(self, policy: str, check_id: str, entity: str) -> bool:
        target = f"{policy}::{check_id}" if "::" in self.check else check_id
        return fnmatch.fnmatchcase(target, self.check) and fnmatch.fnmatchcase(entity, self.entity)

    def expired(self, today: dt.date) -> bool:
        return today > self.expires


def _err(path: str, node: yaml.Node, msg: str) -> UsageError:
    return UsageError(f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}: {msg}")


def load_waivers(path: str | Path) -> list[Waiver]:
    """Strict like the policy loader: unknown keys, missing fields and bad dates are errors."""
    path = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read waiver file: {exc.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise UsageError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(root, yaml.MappingNode):
        raise UsageError(f"{path}:1:1: a waiver file is a mapping with a 'waivers' list")
    top = {k.value: v for k, v in root.value}
    unknown = set(top) - {"waivers"}
    if unknown:
        raise _err(path, root, f"unknown key {sorted(unknown)[0]!r} (expected: waivers)")
    seq = top.get("waivers")
    if not isinstance(seq, yaml.SequenceNode):
        raise _err(path, root, "'waivers' must be a list")
    out = []
    for node in seq.value:
        if not isinstance(node, yaml.MappingNode):
            raise _err(path, node, "each waiver is a mapping (check, justification, expires)")
        m = {k.value: v for k, v in node.value}
        for k in m:
            if k not in WAIVER_KEYS:
                raise _err(path, node, f"unknown key {k!r} in a waiver (expected: {', '.join(WAIVER_KEYS)})")
        for k in ("check", "justification", "expires"):
            if k not in m:
                raise _err(path, node, f"waiver is missing {k!r}")
        for k, v in m.items():
            if not isinstance(v, yaml.ScalarNode) or not v.value.strip():
                raise _err(path, v, f"{k} must be a non-empty string")
        try:
            expires = dt.date.fromisoformat(m["expires"].value)
        except ValueError:
            raise _err(path, m["expires"], f"expires must be a date like 2026-12-31, not {m['expires'].value!r}") from None
        out.append(Waiver(m["check"].value, m["entity"].value if "entity" in m else "*",
                          m["justification"].value, expires, node.start_mark.line + 1))
    return out
