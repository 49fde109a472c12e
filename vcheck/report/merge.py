"""`vcheck merge`: per-node reports (JSON or JUnit) into one fleet report, and a fleet gate.

A node fails when any of its checks failed or was inconclusive. The gate allows a number or a
percentage of failing nodes (``--max-failing-nodes 2%``), over the fleet or, with
``--domain-label``, within each failure domain (zone, rack) so one bad rack cannot hide in a
healthy fleet.
"""
from __future__ import annotations

import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ReportFormatError
from ..model import Outcome
from .json_report import MAX_REPORT_BYTES, parse_report
from .output import read_bounded

FLEET_FORMAT = "vcheck.fleet"
_FAILING = (Outcome.FAIL, Outcome.ERROR)   # a failed or inconclusive check fails its node
FLEET_VERSION = 1


@dataclass
class NodeResult:
    name: str
    source: str
    labels: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    junit: ET.Element | None = None

    @property
    def failing(self) -> bool:
        return bool(self.failed)


# exit codes that mean the node was not judged healthy whatever its results say: interrupted,
# internal error, usage error, nothing collected, an output lost
NOT_HEALTHY_EXITS = {2: "run interrupted", 3: "internal error", 4: "usage error", 5: "nothing collected",
                     7: "an output could not be written"}


def _from_json(raw: bytes, path: Path) -> NodeResult:
    r = parse_report(raw, str(path))
    node = r.get("node") or {}
    res = NodeResult(name=node.get("hostname") or path.stem, source=str(path), labels=dict(node.get("labels") or {}))
    for x in r.get("results", []):
        res.counts[x["outcome"]] = res.counts.get(x["outcome"], 0) + 1
        if x["outcome"] in _FAILING:
            res.failed.append(x["nodeid"])
    status = r.get("exit_status")
    if (r.get("window") or {}).get("interrupted") or status == 2:
        res.failed.append("(run interrupted)")
    elif status in NOT_HEALTHY_EXITS:
        res.failed.append(f"(exit {status}: {NOT_HEALTHY_EXITS[status]})")
    elif not r.get("results"):
        res.failed.append("(no check was judged)")
    return res


def _from_junit(raw: bytes, path: Path) -> list[NodeResult]:
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise ReportFormatError(f"{path}: JUnit XML with a DOCTYPE or entities is refused")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise ReportFormatError(f"{path}: not a readable JUnit XML file ({exc})") from None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    if not suites:
        raise ReportFormatError(f"{path}: no <testsuite> in it")
    out = []
    for s in suites:
        res = NodeResult(name=s.get("name") or s.get("hostname") or path.stem, source=str(path), junit=s)
        for case in s.iter("testcase"):
            outcome = Outcome.PASS
            if case.find("failure") is not None:
                outcome = Outcome.FAIL
            elif case.find("error") is not None:
                outcome = Outcome.ERROR
            elif case.find("skipped") is not None:
                outcome = Outcome.SKIP
            res.counts[outcome] = res.counts.get(outcome, 0) + 1
            if outcome in _FAILING:
                res.failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
        out.append(res)
    return out


def load_node_reports(paths: list[str]) -> list[NodeResult]:
    nodes = []
    for p in map(Path, paths):
        try:
            raw = read_bounded(p, MAX_REPORT_BYTES, "the report")
        except FileNotFoundError:
            raise ReportFormatError(f"{p}: no such report") from None
        except OSError as exc:
            raise ReportFormatError(f"{p}: cannot read report: {exc.strerror}") from None
        except ValueError as exc:
            raise ReportFormatError(f"{p}: {exc}") from None
        head = raw[:512].lstrip()
        if head.startswith(b"<"):
            nodes.extend(_from_junit(raw, p))
        elif head.startswith(b"{"):
            nodes.append(_from_json(raw, p))      # parse_report checks format, version and shape
        else:
            raise ReportFormatError(f"{p}: neither a vcheck JSON report nor JUnit XML")
    return nodes


def allowed_failures(spec: str, total: int) -> int:
    """'2%' of total (rounded down, at least 0) or a plain count."""
    s = spec.strip()
    if s.endswith("%"):
        return math.floor(float(s[:-1]) / 100.0 * total + 1e-9)
    return int(s)


@dataclass
class Gate:
    passed: bool
    lines: list[str]


def gate(nodes: list[NodeResult], max_failing: str | None, domain_label: str | None) -> Gate:
    groups: dict[str, list[NodeResult]] = {}
    for n in nodes:
        key = n.labels.get(domain_label, "(no label)") if domain_label else "fleet"
        groups.setdefault(key, []).append(n)
    ok = True
    lines = []
    for key, members in sorted(groups.items()):
        failing = [n for n in members if n.failing]
        allowed = allowed_failures(max_failing, len(members)) if max_failing else 0
        bad = len(failing) > allowed
        ok = ok and not bad
        where = f"{domain_label}={key}" if domain_label else "fleet"
        lines.append(f"{where}: {len(failing)} of {len(members)} nodes failing (allowed {allowed})"
                     + (" - GATE FAILED" if bad else "")
                     + (f": {', '.join(n.name for n in failing[:10])}" if failing else ""))
    return Gate(ok, lines)


def fleet_json(nodes: list[NodeResult], g: Gate, max_failing: str | None, domain_label: str | None) -> dict[str, Any]:
    return {"format": FLEET_FORMAT, "version": FLEET_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "gate": {"max_failing_nodes": max_failing, "domain_label": domain_label, "passed": g.passed,
                     "summary": g.lines},
            "nodes": [{"name": n.name, "source": n.source, "labels": n.labels, "counts": n.counts,
                       "failing": n.failing, "failed": n.failed} for n in nodes]}


def fleet_junit(nodes: list[NodeResult]) -> bytes:
    """One <testsuites> holding each node's own <testsuite> (JSON inputs become summary suites)."""
    root = ET.Element("testsuites", name="vcheck fleet")
    for n in nodes:
        if n.junit is not None:
            root.append(n.junit)
            continue
        suite = ET.SubElement(root, "testsuite", name=n.name, hostname=n.name,
                              tests=str(sum(n.counts.values())), failures=str(len(n.failed)))
        for nodeid in n.failed:
            case = ET.SubElement(suite, "testcase", classname=n.name, name=nodeid)
            ET.SubElement(case, "failure", message="failed on this node")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
