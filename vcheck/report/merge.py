"""`vcheck merge`: per-node reports (JSON or JUnit) into one fleet report, and a fleet gate;
with --html, the fleet page (nodes x checks, failing cells linking to each node's evidence).

A node fails when any of its checks failed or was inconclusive. The gate allows a number or a
percentage of failing nodes (``--max-failing-nodes 2%``), over the fleet or, with
``--domain-label``, within each failure domain (zone, rack) so one bad rack cannot hide in a
healthy fleet.
"""
from __future__ import annotations

import hashlib
import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
from markupsafe import Markup
from defusedxml import DefusedXmlException

from .. import __version__
from ..errors import ReportFormatError
from ..model import Outcome
from .html import Evidence, node_rows, outcome_class, saved_observations, stylesheet
from .join import JoinFacts, Joined, facts_of, join
from .json_report import parse_report, read_report_bytes, result_id

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
    # a JSON input, for the fleet page (load_node_reports(keep=True)): whole when the node fails
    # (its evidence is drawn), else only its results' outcomes (a fleet of healthy nodes is not
    # held in memory with all it observed)
    report: dict[str, Any] | None = None
    join: JoinFacts | None = None          # what guest/host joining needs (JSON inputs)
    boot_id: str = ""                      # with the name, what makes two reports the same node
    policies: frozenset[tuple[str, str]] | None = None   # (name, sha256) judged; None: not said

    @property
    def failing(self) -> bool:
        return bool(self.failed)


# exit codes that mean the node was not judged healthy whatever its results say: interrupted,
# internal error, usage error, nothing collected, an output lost
NOT_HEALTHY_EXITS = {2: "run interrupted", 3: "internal error", 4: "usage error", 5: "nothing collected",
                     7: "an output could not be written"}


def _from_json(raw: bytes, path: Path, keep: bool = False) -> NodeResult:
    r = parse_report(raw, str(path))
    node = r.get("node") or {}
    res = NodeResult(name=node.get("hostname") or path.stem, source=str(path), labels=dict(node.get("labels") or {}),
                     boot_id=str(node.get("boot_id") or ""),
                     policies=frozenset((str(p.get("name")), str(p.get("sha256"))) for p in r.get("policies") or []))
    for x in r.get("results", []):
        res.counts[x["outcome"]] = res.counts.get(x["outcome"], 0) + 1
        if x["outcome"] in _FAILING:
            res.failed.append(result_id(x))
    status = r.get("exit_status")
    if (r.get("window") or {}).get("interrupted") or status == 2:
        res.failed.append("(run interrupted)")
    elif status in NOT_HEALTHY_EXITS:
        res.failed.append(f"(exit {status}: {NOT_HEALTHY_EXITS[status]})")
    elif not r.get("results"):
        res.failed.append("(no check was judged)")
    res.join = facts_of(res.name, r)
    if keep:
        res.report = r if res.failing else {
            "node": node, "results": [{k: x.get(k) for k in ("id", "nodeid", "policy", "check", "outcome")}
                                      for x in r.get("results", [])]}
    return res


def _from_junit(raw: bytes, path: Path) -> list[NodeResult]:
    """JUnit from other machines is untrusted: parsed by defusedxml, which refuses a DOCTYPE
    (so no entity expansion, no external entity or DTD is ever fetched)."""
    try:
        root = SafeET.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise ReportFormatError(f"{path}: JUnit XML with a DOCTYPE or entities is refused") from None
    except ET.ParseError as exc:
        raise ReportFormatError(f"{path}: not a readable JUnit XML file ({exc})") from None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    if not suites:
        raise ReportFormatError(f'{path}: no <testsuite> in it')
    out = []
    for s in suites:
        props = {p.get("name", ""): p.get("value", "") for p in s.findall("properties/property")}
        labels = {k[len("vcheck.label."):]: v for k, v in props.items() if k.startswith("vcheck.label.")}
        policies = frozenset((k[len("vcheck.policy."):], v) for k, v in props.items() if k.startswith("vcheck.policy."))
        res = NodeResult(name=props.get("vcheck.node") or s.get("name") or s.get("hostname") or path.stem,
                         source=str(path), junit=s, labels=labels, boot_id=props.get("vcheck.boot_id", ""),
                         policies=policies or None)
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


def load_node_reports(paths: list[str], keep: bool = False, mixed_policies: bool = False) -> list[NodeResult]:
    """Each report's verdicts; keep=True also keeps what the fleet page draws (NodeResult.report).
    A fleet counts nodes, not files: a node (name and boot id) given twice is refused, and so
    are reports made with different policies unless mixed_policies."""
    nodes = []
    for p in map(Path, paths):
        raw = read_report_bytes(p)
        head = raw[:512].lstrip()
        if head.startswith(b"<"):
            nodes.extend(_from_junit(raw, p))
        elif head.startswith(b"{"):
            nodes.append(_from_json(raw, p, keep))      # parse_report checks format, version and shape
        else:
            raise ReportFormatError(f"{p}: neither a vcheck JSON report nor JUnit XML")
    seen: dict[tuple[str, str], NodeResult] = {}
    for n in nodes:
        first = seen.setdefault((n.name, n.boot_id), n)
        if first is not n:
            raise ReportFormatError(f"{n.source}: node {n.name} (boot {n.boot_id[:8] or 'not said'}) is already "
                                    f"in {first.source}; give each node's report once")
    said = {n.policies for n in nodes if n.policies is not None}
    if len(said) > 1 and not mixed_policies:
        one, other = sorted(said, key=sorted)[:2]
        names = lambda ps: ", ".join(f"{name} ({sha[:8]})" for name, sha in sorted(ps)) or "none"  # noqa: E731
        a = next(n for n in nodes if n.policies == one)
        b = next(n for n in nodes if n.policies == other)
        raise ReportFormatError(f"{b.source}: made with policies {names(other)}, {a.source} with {names(one)}; "
                                "merge reports of one policy set, or give --allow-mixed-policies")
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
                       "failing": n.failing, "failed": n.failed} for n in nodes],
            **joins_json(nodes)}


def guest_host_joins(nodes: list[NodeResult]) -> tuple[list[Joined], list[str]]:
    return join([n.join for n in nodes if n.join is not None])


def joins_json(nodes: list[NodeResult]) -> dict[str, Any]:
    joined, unjoined = guest_host_joins(nodes)
    return {"joins": [{"guest": j.guest, "host": j.host, "vm": j.vm, "by": j.by, "guest_failing": j.guest_failing,
                       "host_lines": j.host_lines} for j in joined], "unjoined": unjoined}


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


# --- the fleet page (vcheck merge --html) ---------------------------------------------------

_WORST = {Outcome.FAIL: 0, Outcome.ERROR: 1, Outcome.WAIVED: 2, Outcome.PASS: 3, Outcome.SKIP: 4, Outcome.NOT_RUN: 5}


def fleet_html(nodes: list[NodeResult], g: Gate, domain_label: str | None) -> bytes:
    """The fleet page: nodes x checks, one table per failure domain, a failing cell linking to
    that node's evidence further down: figures drawn from its JSON report (load_node_reports
    with keep=True), or the failure text of a JUnit input. Built of Markup fragments (see html.py):
    a name or field from a node's report reaches the page only as escaped text."""
    checks: list[str] = []
    cells: dict[tuple[int, str], list[tuple[str, str]]] = {}   # (node, check) -> [(outcome, nodeid)]
    for i, n in enumerate(nodes):
        for check, outcome, nodeid in _node_results(n):
            if check not in checks:
                checks.append(check)
            cells.setdefault((i, check), []).append((outcome, nodeid))
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        key = n.labels.get(domain_label, "(no label)") if domain_label else ""
        groups.setdefault(key, []).append(i)

    out = [Markup('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="color-scheme" content="light dark">'),
           Markup('<title>vcheck fleet: {} nodes</title><style>{}</style></head>').format(len(nodes), Markup(stylesheet())),
           Markup('<body class="vc-page"><main class="vc vc-fleet">'),
           Markup('<h1>vcheck fleet: {} nodes, {} failing</h1>').format(len(nodes), sum(1 for n in nodes if n.failing)),
           Markup('<p class="{}">gate {}</p>').format("vc-gate-passed" if g.passed else "vc-gate-failed", "passed" if g.passed else "FAILED"),
           Markup("<ul>{}</ul>").format(Markup("").join(Markup('<li>{}</li>').format(line) for line in g.lines)),
           Markup('<p class="vc-note">generated {} by vcheck {}; a failing cell links to that node\'s evidence</p>').format(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), __version__)]
    head = Markup("<tr><th>node</th>{}</tr>").format(
        Markup("").join(Markup('<th class="vc-check" title="{}">{}</th>').format(c, c) for c in checks))
    for key, members in sorted(groups.items()):
        if domain_label:
            out.append(Markup('<h2>{}={}</h2>').format(domain_label, key))
        out.append(Markup('<table class="vc-matrix" data-domain="{}">{}').format(key, head))
        for i in members:
            n = nodes[i]
            name = Markup('<a href="#{}">{}</a>').format(_node_anchor(i), n.name) if n.failing else n.name
            row = [Markup('<tr data-node="{}"><th>{}</th>').format(n.name, name)]
            for c in checks:
                got = cells.get((i, c), [])
                if not got:
                    row.append(Markup('<td class="vc-cell vc-cell-none">-</td>'))
                    continue
                worst = min(got, key=lambda x: _WORST.get(x[0], 9))
                failing = [nodeid for o, nodeid in got if o in (Outcome.FAIL, Outcome.ERROR)]
                label = f"{worst[0]}" + (f" ({len(failing)})" if len(failing) > 1 else "")
                if failing:
                    label = Markup('<a href="#{}">{}</a>').format(_evidence_anchor(i, failing[0]), label)
                row.append(Markup('<td class="vc-cell vc-cell-{}" data-check="{}" data-outcome="{}">{}</td>').format(outcome_class(worst[0]), c, worst[0], label))
            row.append(Markup("</tr>"))
            out.append(Markup("").join(row))
        out.append(Markup("</table>"))
        others = [nodes[i].failed for i in members if any(f.startswith("(") for f in nodes[i].failed)]
        if others:
            out.append(Markup('<p class="vc-note">{}</p>').format("; ".join(f for fs in others for f in fs if f.startswith("("))))

    for i, n in enumerate(nodes):
        if not n.failing:
            continue
        out.append(Markup('<section class="vc-node" id="{}" data-node="{}"><h2>{}</h2><p class="vc-note">from {}</p>').format(_node_anchor(i), n.name, n.name, n.source))
        out.append(_node_evidence(i, n))
        out.append(Markup("</section>"))
    out.append(Markup("</main></body></html>\n"))
    return str(Markup("").join(out)).encode()


def _node_results(n: NodeResult) -> list[tuple[str, str, str]]:
    """(check, outcome, nodeid) of every result of a node report."""
    if n.report is not None:   # policy::check, as JUnit's classname::name says it: inputs share columns
        return [(f"{r.get('policy')}::{r.get('check')}" if r.get("policy") else result_id(r).split("[", 1)[0],
                 str(r["outcome"]), result_id(r)) for r in n.report.get("results") or []]
    out = []
    for case in n.junit.iter("testcase") if n.junit is not None else ():
        name = case.get("name", "")
        outcome = (Outcome.FAIL if case.find("failure") is not None else Outcome.ERROR if case.find("error") is not None
                   else Outcome.SKIP if case.find("skipped") is not None else Outcome.PASS)
        check = f"{case.get('classname', '')}::{name.split('[', 1)[0]}"
        out.append((check, str(outcome), f"{case.get('classname', '')}::{name}"))
    return out


def _node_evidence(i: int, n: NodeResult) -> Markup:
    if n.report is not None:
        ev = Evidence(saved_observations(n.report))
        rows = Markup("").join(Markup('<dt>{}</dt><dd>{}</dd>').format(k, v) for k, v in node_rows(n.report))
        parts = [Markup('<dl class="vc-info">{}</dl>').format(rows)]
        for r in n.report.get("results") or []:
            if r.get("outcome") in (Outcome.FAIL, Outcome.ERROR):
                parts.append(Markup('<h3>{}</h3>').format(result_id(r)))
                parts.append(ev.result_html(r, anchor=_evidence_anchor(i, result_id(r))))
        parts += [Markup('<p class="vc-note">{}</p>').format(f) for f in n.failed if f.startswith("(")]
        return Markup("").join(parts)
    parts = []
    for case in n.junit.iter("testcase") if n.junit is not None else ():
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is None:
            continue
        nodeid = f"{case.get('classname', '')}::{case.get('name', '')}"
        message, body = bad.get("message") or "", bad.text or ""
        text = body if message.strip() and message.strip() in body else (message + "\n" + body)   # each text once
        parts.append(Markup('<div class="vc vc-evidence" id="{}" data-nodeid="{}"><h3>{}</h3><pre>{}</pre></div>').format(_evidence_anchor(i, nodeid), nodeid, nodeid, text.strip()))
    return Markup("").join(parts)


def _node_anchor(i: int) -> str:
    return f"node-{i}"


def _evidence_anchor(i: int, nodeid: str) -> str:
    return f"ev-{i}-{hashlib.sha256(nodeid.encode()).hexdigest()[:12]}"
