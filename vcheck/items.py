"""pytest collection nodes: a policy file and one item per check x entity.

Items judge what the session observed (see judge.py); they never sample. Setup computes the
verdict, so an inconclusive window is reported as a pytest *error*, a violated check as a
*failure*, and missing data as skip / fail / pass per the check's on_missing.
"""
from __future__ import annotations

import datetime
from typing import Any, Mapping

import pytest

from .errors import PolicyError
from .evidence import Verdict, printable, render
from .judge import judge, judge_regression
from .model import Outcome
from .policy import Check, Policy
from .runstate import STATE_KEY, RunState
from .selection import entity_name
from .waivers import Waiver, covering


class CheckFailed(Exception):
    def __init__(self, verdict: Verdict):
        super().__init__(verdict.reason)
        self.verdict = verdict


class PolicyFile(pytest.File):
    def collect(self):
        state: RunState = self.config.stash[STATE_KEY]
        try:
            policy = state.load_policy(self.path)
        except PolicyError as exc:
            state.policy_errors.append(str(exc))
            return
        for check in policy.checks:
            for labels in state.entities_for(check):
                # a name from the node (or a replayed report) reaches the terminal: escape it
                name = check.id if labels is None else f"{check.id}[{printable(entity_name(labels, list(labels)))}]"
                # the item's id is the result's identity (policy name, not path): what -v, --deselect,
                # JUnit and every report say, wherever vcheck was started from
                item = CheckItem.from_parent(self, name=name, check=check, labels=labels, policy=policy,
                                             nodeid=f"{policy.name}::{name}")
                item.add_marker(check.layer)
                yield item


class CheckItem(pytest.Item):
    def __init__(self, *, check: Check, labels: Mapping[str, str] | None, policy: Policy, **kw: Any):
        super().__init__(**kw)
        self.check = check
        self.labels = dict(labels) if labels is not None else None
        self.policy = policy
        self.verdict: Verdict | None = None
        self._record: tuple[Verdict | None, dict[str, Any]] | None = None   # result_record's, per verdict

    @property
    def identity(self) -> str:
        """The result's name everywhere (JSON, JUnit, HTML, merge, compare, waivers): the policy's
        name, the check's id and the entity, whatever directory vcheck was started from."""
        return f"{self.policy.name}::{self.name}"

    @property
    def entity(self) -> str | None:
        """The entity this item judges ('web1-vcpu0'), None for a node-wide item."""
        return entity_name(self.labels, list(self.labels)) if self.labels is not None else None

    def setup(self) -> None:
        state: RunState = self.config.stash[STATE_KEY]
        if state.store is None:
            pytest.fail("vcheck: no sampling session ran for this item", pytrace=False)
        self.verdict = v = judge(self.check, state.store, self.labels, state.store.window.duration)
        if state.baseline is not None and self.check.regress is not None:
            judge_regression(self.check, v, state.store, state.baseline, self.labels)
        self._apply_waivers(state.waivers, v)
        self.user_properties.extend(v.properties())
        if v.outcome == Outcome.WAIVED:
            pytest.xfail(printable(f"{self.check.id}: {v.reason}"))
        if v.outcome == Outcome.ERROR:
            pytest.fail(self._text(), pytrace=False)
        if v.outcome == Outcome.SKIP:
            pytest.skip(printable(f"{self.check.id}: {v.reason}"))

    def _apply_waivers(self, waivers: list[Waiver], v: Verdict) -> None:
        """A failure covered by an unexpired waiver is reported as waived, with why and until when."""
        if v.outcome != Outcome.FAIL or not waivers:
            return
        w, expired = covering(waivers, self.policy.name, self.check.id, self.entity or "node",
                              datetime.date.today())
        v.notes.extend(f"a waiver (line {x.line}) expired on {x.expires}; the check counts again" for x in expired)
        if w is not None:
            v.outcome, v.reason = Outcome.WAIVED, f"waived until {w.expires}: {w.justification} (failed: {v.reason})"

    def runtest(self) -> None:
        assert self.verdict is not None
        if self.verdict.outcome == Outcome.FAIL:
            raise CheckFailed(self.verdict)
        # passing evidence goes to JUnit <system-out>; failures carry it in <failure>
        self.add_report_section("call", "stdout", self._text() + "\n")

    def _text(self) -> str:
        assert self.verdict is not None
        return render(self.verdict, self.check.description, self.check.remediation)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None):  # type: ignore[override]
        if isinstance(excinfo.value, CheckFailed):
            return self._text()
        if isinstance(excinfo.value, pytest.fail.Exception) and not excinfo.value.pytrace:
            return excinfo.value.msg   # a verdict's own text (inconclusive): no traceback to format
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, self.check.line - 1, f"{self.policy.name}::{self.name}"

    def result_record(self) -> dict[str, Any]:
        """This item's result as the reports carry it (plain data: reporters never see items).
        Made once per verdict: each phase's report carries it, and an item of a dense node
        judges 100,000 entities."""
        v = self.verdict
        if self._record is not None and self._record[0] is v:
            return self._record[1]
        record = self._record_of(v)
        self._record = (v, record)
        return record

    def _record_of(self, v: Verdict | None) -> dict[str, Any]:
        return {
            "id": self.identity, "nodeid": self.nodeid, "file": str(self.path), "policy": self.policy.name,
            "check": self.check.id,
            "metric": self.check.metric.name, "layer": self.check.layer,
            "entity": self.entity, "labels": self.labels,
            "outcome": v.outcome if v else Outcome.NOT_RUN, "reason": v.reason if v else "",
            "expect": self.check.expect_text, "for": self.check.for_, "window": self.check.window,
            "entities": [e.to_json() for e in v.entities] if v else [],
        }
