"""`vcheck gate --prometheus URL`: the fleet gate of `vcheck merge`, judged from the series the
fleet's cron runs already write (`vcheck run --prom-textfile`, scraped through node_exporter's
textfile collector) instead of from report files.

Each node becomes a merge.NodeResult and merge.gate decides, so the same runs give the same
failing set and the same verdict either way. A node fails as in merge (a check failed or was
inconclusive, the run was interrupted or ended in an error, nothing was judged) and also when
its result is stale (older than --stale-after by vcheck's run timestamp or the textfile's
mtime), when its series are gone (seen within --lookback, not now), or when a target of a job
that carries vcheck series has none (named by its instance). Prometheus that cannot be asked
is an error, never a pass.
"""
from __future__ import annotations

import base64
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..errors import EXIT_FAILED, EXIT_NO_TESTS, EXIT_OK, EXIT_USAGE, UsageError, \
    VcheckError
from ..evidence import printable, redact
from .output import write_outputs
from .merge import NOT_HEALTHY_EXITS, NodeResult, fleet_html, fleet_json, fleet_junit, gate

MAX_RESPONSE_BYTES = 256 << 20      # a 10,000-node fleet's answers are a few MiB
TEXTFILE = 'node_textfile_mtime_seconds{file=~"(.*/)?vcheck[^/]*[.]prom"}'


class PrometheusUnreachable(VcheckError):
    """Prometheus could not be asked or did not answer as its query API does."""

    exit_code = EXIT_USAGE


class MixedPolicies(UsageError):
    """The fleet's nodes were judged with different policy sets (merge refuses such reports too)."""


class NoVcheckSeries(VcheckError):
    """Prometheus answered but holds no vcheck series: nothing to gate on."""

    exit_code = EXIT_NO_TESTS


@dataclass(frozen=True)
class GateQuery:
    url: str                        # Prometheus' base URL (http or https)
    domain_label: str | None = None
    stale_after: float = 900.0      # 3 runs of a 5-minute timer
    lookback: float = 3600.0        # a node whose series went within this long still counts
    timeout: float = 10.0           # the whole exchange, all queries together
    mixed_policies: bool = False    # gate nodes judged with different policy sets (merge's --allow-mixed-policies)


@dataclass
class FleetSeries:
    """What the gate read, besides the nodes: for notes and the fleet JSON."""

    nodes: list[NodeResult]
    versions: dict[str, int] = field(default_factory=dict)
    at: float = 0.0
    doubles: dict[str, list[str]] = field(default_factory=dict)   # node -> the targets that all report it


def shown_url(url: str) -> str:
    return redact(url)


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PrometheusUnreachable(f"--prometheus {shown_url(url)!r}: expected an http:// or https:// URL of Prometheus")
    return url.rstrip("/")


def promql_string(text: str) -> str:
    """A PromQL double-quoted string literal (Go escapes) holding TEXT."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _Client:
    """Instant queries against /api/v1/query, all at one evaluation time, within one deadline."""

    def __init__(self, q: GateQuery, at: float):
        self.base = check_url(q.url)
        parts = urllib.parse.urlsplit(self.base)
        self.headers = {"Accept": "application/json", "User-Agent": f"vcheck/{__version__}"}
        if parts.username is not None:     # http://user:password@host: basic auth, never in a message
            cred = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
            netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
            if ":" in parts.hostname:
                netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
            self.base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        self.at = at
        self.timeout = q.timeout
        self.deadline = time.monotonic() + q.timeout

    def _fail(self, why: str) -> PrometheusUnreachable:
        return PrometheusUnreachable(f"Prometheus at {shown_url(self.base)}: {why}")

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._fail(f"no answer within {self.timeout:g}s (--timeout)")
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": promql, "time": f"{self.at:.3f}"})
        req = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=left) as resp:
                body = self._read(resp)
        except urllib.error.HTTPError as exc:
            raise self._fail(f"HTTP {exc.code} {self._error_text(exc)}".rstrip()) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise self._fail(f"no answer within {self.timeout:g}s (--timeout)") from None
            raise self._fail(f"cannot connect ({getattr(reason, 'strerror', None) or reason})") from None
        except TimeoutError:
            raise self._fail(f"no answer within {self.timeout:g}s (--timeout)") from None
        except OSError as exc:
            raise self._fail(f"cannot read the answer ({exc.strerror or exc})") from None
        return self._vector(body, promql)

    def query_all(self, queries: dict[str, str]) -> dict[str, list[tuple[dict[str, str], float]]]:
        """The queries at once (Prometheus answers them in parallel); the first error raised."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {name: pool.submit(self.query, promql) for name, promql in queries.items()}
            return {name: f.result() for name, f in futures.items()}

    def _read(self, resp: Any) -> bytes:
        """The body, by what each receive brings (read1), the socket's timeout shrinking to the
        deadline: a server trickling bytes is as slow as a silent one."""
        sock = getattr(getattr(resp.fp, "raw", None), "_sock", None)
        chunks, size = [], 0
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"no answer within {self.timeout:g}s (--timeout)")
            if sock is not None:
                sock.settimeout(left)
            chunk = resp.read1(1 << 16)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise self._fail(f"an answer larger than {MAX_RESPONSE_BYTES >> 20} MiB")
            chunks.append(chunk)

    @staticmethod
    def _error_text(exc: urllib.error.HTTPError) -> str:
        try:
            doc = json.loads(exc.read(1 << 16))
            return str(doc.get("error", ""))[:200] if isinstance(doc, dict) else ""
        except (ValueError, OSError, RecursionError):
            return ""

    def _vector(self, body: bytes, promql: str) -> list[tuple[dict[str, str], float]]:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise self._fail("the answer is not JSON (is the URL Prometheus' own?)") from None
        if not isinstance(doc, dict) or doc.get("status") != "success":
            err = doc.get("error") if isinstance(doc, dict) else None
            raise self._fail(f"query {promql!r} refused: {str(err)[:200]}" if err else "not a Prometheus query API answer")
        data = doc.get("data")
        if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
            raise self._fail("not a Prometheus query API answer (no instant vector)")
        out = []
        for s in data["result"]:
            metric, value = (s.get("metric"), s.get("value")) if isinstance(s, dict) else (None, None)
            if not isinstance(metric, dict) or not isinstance(value, list) or len(value) != 2:
                raise self._fail("not a Prometheus query API answer (a malformed sample)")
            try:
                v = float(value[1])
            except (TypeError, ValueError):
                raise self._fail("not a Prometheus query API answer (a sample that is no number)") from None
            out.append(({str(k): str(x) for k, x in metric.items()}, v))
        return out


def _item_name(labels: dict[str, str]) -> str:
    """policy::check[entity], as the node's own report names the item (a node-wide check has
    no entity in brackets)."""
    base = f"{labels.get('policy', '?')}::{labels.get('check', '?')}"
    entity = labels.get("entity", "node")
    return base if entity == "node" else f"{base}[{entity}]"


def _ago(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def read_fleet(q: GateQuery, now: float | None = None) -> FleetSeries:
    """The fleet's nodes as merge sees nodes, from Prometheus' current vcheck series."""
    at = time.time() if now is None else now
    c = _Client(q, at)
    lookback = f"{max(int(q.lookback), 1)}s"

    ever = f"last_over_time(vcheck_run_timestamp_seconds[{lookback}])"
    # filtered in Prometheus where only the exceptions matter: at 10,000 nodes the answers'
    # size, not the evaluation, is what costs
    queries = {
        "live": "max by (node, instance, job) (vcheck_run_timestamp_seconds)",
        "gone": f"max by (node, instance, job) ({ever} unless on (node) vcheck_run_timestamp_seconds)",
        "counts": "max by (node, outcome) (vcheck_run_checks > 0)",    # a node absent judged nothing
        "status": "max by (node) (vcheck_run_exit_status > 1)",
        "interrupted": "max by (node) (vcheck_run_interrupted > 0)",
        "failing": 'vcheck_check_status{outcome=~"fail|error"}',
        "old_files": f"min by (instance, job) ({TEXTFILE}) < {at - q.stale_after:.3f}",
        "versions": "count by (version) (max by (node, version) (vcheck_run_info))",
        "policy_sets": "count by (policies) (max by (node, policies) (vcheck_run_info))",
        # targets of the jobs that carry vcheck series, without any
        "silent": f"(up unless on (instance, job) {ever}) and on (job) group by (job) ({ever})",
    }
    if q.domain_label:
        key = promql_string(q.domain_label)
        queries["domains"] = f"max by (node, value) (vcheck_node_label{{key={key}}})"
        queries["gone_domains"] = (f"max by (node, value) (last_over_time(vcheck_node_label{{key={key}}}[{lookback}]) "
                                   f"unless on (node) vcheck_node_label{{key={key}}})")
    got = c.query_all(queries)
    live, seen = got["live"], got["gone"]
    if not live and not seen:
        raise NoVcheckSeries(f"Prometheus at {shown_url(c.base)} holds no vcheck series (vcheck_run_timestamp_seconds) "
                             f"now or in the last {_ago(q.lookback)}: is node_exporter's textfile directory where "
                             "`vcheck run --prom-textfile` writes, and is it scraped?")
    if len(got["policy_sets"]) > 1 and not q.mixed_policies:
        raise _mixed_policies(c)
    counts, failing, mtimes, versions = got["counts"], got["failing"], got["old_files"], got["versions"]
    status, interrupted, targets = got["status"], got["interrupted"], got["silent"]
    domains, gone_domains = got.get("domains", []), got.get("gone_domains", [])

    nodes: dict[str, NodeResult] = {}
    instances: dict[str, set[tuple[str, str]]] = {}
    last_run: dict[str, float] = {}
    for m, v in live:
        name = m.get("node", "")
        last_run[name] = max(v, last_run.get(name, -math.inf))
        instances.setdefault(name, set()).add((m.get("instance", ""), m.get("job", "")))
    mtime_of = {(m.get("instance", ""), m.get("job", "")): v for m, v in mtimes}
    label_of = {m.get("node", ""): m.get("value", "") for m, _ in sorted(gone_domains, key=lambda s: s[0].get("value", ""))}
    label_of.update({m.get("node", ""): m.get("value", "") for m, _ in domains})

    def node(name: str, source: str) -> NodeResult:
        if name not in nodes:
            labels = {q.domain_label: label_of[name]} if q.domain_label and name in label_of else {}
            nodes[name] = NodeResult(name=name, source=source, labels=labels)
        return nodes[name]

    for name in sorted(last_run):
        where = ", ".join(sorted(f"{i} (job {j})" for i, j in instances[name]))
        node(name, f"{shown_url(c.base)}: {where}")
    for m, v in failing:
        if m.get("node", "") in nodes:
            nodes[m["node"]].failed.append(_item_name(m))
    for m, v in counts:
        if m.get("node", "") in nodes:
            nodes[m["node"]].counts[m.get("outcome", "error")] = int(v)
    for n in nodes.values():
        n.failed = sorted(set(n.failed))
        judged_bad = n.counts.get("fail", 0) + n.counts.get("error", 0)
        if judged_bad and not n.failed:
            n.failed.append(f"({judged_bad} checks failed or were inconclusive)")
    # the run as merge reads it from a JSON report
    stat = {m.get("node", ""): v for m, v in status}
    cut = {m.get("node", ""): v for m, v in interrupted}
    for name, n in nodes.items():
        code = stat.get(name)
        if cut.get(name, 0) >= 1 or code == 2:
            n.failed.append("(run interrupted)")
        elif code is not None and int(code) in NOT_HEALTHY_EXITS:
            n.failed.append(f"(exit {int(code)}: {NOT_HEALTHY_EXITS[int(code)]})")
        elif not n.counts:
            n.failed.append("(no check was judged)")
        # stale: vcheck's own timestamp, or the file node_exporter read, older than allowed
        ages = [at - last_run[name]] + [at - mtime_of[i] for i in instances[name] if i in mtime_of]
        age = max(ages)
        if age > q.stale_after:
            n.failed.append(f"(stale: its result is {_ago(age)} old, more than --stale-after {_ago(q.stale_after)})")
    # gone: reported within the lookback, no series now
    for m, v in sorted(seen, key=lambda s: s[0].get("node", "")):
        name = m.get("node", "")
        if name not in last_run and name not in nodes:
            n = node(name, f"{shown_url(c.base)}: {m.get('instance', '')} (job {m.get('job', '')})")
            n.failed.append(f"(no vcheck series now; its last run was {_ago(at - v)} ago)")
    # a target of those jobs with no vcheck series at all: named by its instance
    for m, v in sorted(targets, key=lambda s: s[0].get("instance", "")):
        instance, job = m.get("instance", ""), m.get("job", "")
        n = node(instance, f"{shown_url(c.base)}: {instance} (job {job})")
        n.failed.append("(target down: no vcheck series)" if v < 1 else "(target up, but no vcheck series: vcheck "
                        "does not write its textfile there)")
    doubles = {name: sorted(i for i, _ in pairs) for name, pairs in instances.items() if len(pairs) > 1}
    return FleetSeries(nodes=[nodes[k] for k in sorted(nodes)],
                       versions={m.get("version", ""): int(v) for m, v in versions}, at=at, doubles=doubles)


def _policy_names(label: str) -> str:
    """'k8s@bb...,ops@aa...' as merge says a policy set: 'k8s (bb...), ops (aa...)'."""
    pairs = [p.rpartition("@") for p in label.split(",") if p]
    return ", ".join(f"{name} ({sha[:8]})" for name, _, sha in pairs) or "none"


def _mixed_policies(c: _Client) -> MixedPolicies:
    """Nodes judged with different policy sets are no one fleet, as in merge: refused, naming a
    node of each of two sets."""
    first: dict[str, str] = {}
    for m, _ in sorted(c.query("max by (node, policies) (vcheck_run_info)"), key=lambda s: s[0].get("node", "")):
        first.setdefault(m.get("policies", ""), m.get("node", ""))
    (one, a), (other, b) = sorted(first.items())[:2] if len(first) > 1 else (("", "?"), ("", "?"))
    return MixedPolicies(f"Prometheus at {shown_url(c.base)}: node {b} was judged with policies {_policy_names(other)}, "
                         f"node {a} with {_policy_names(one)}; gate on one policy set, or give --allow-mixed-policies")


def version_note(versions: dict[str, int]) -> str | None:
    """Nodes written by several vcheck versions (a rollout of vcheck itself): said, not refused;
    each node is judged on its own series, which one version wrote."""
    if len(versions) <= 1:
        return None
    return "vcheck: the fleet's series come from " + str(len(versions)) + " vcheck versions: " + ", ".join(
        f"{v or '(unknown)'} ({n} node{'s' if n != 1 else ''})" for v, n in sorted(versions.items()))


def run_gate(q: GateQuery, max_failing: str | None, json_out: str | None = None, junit_out: str | None = None,
             html_out: str | None = None) -> int:
    """Print the gate's lines as `vcheck merge` does and write the same outputs; the exit code
    is merge's (0 passed, 1 the gate failed, 7 an output lost) or the error's (4, 5)."""
    try:
        fleet = read_fleet(q)
    except (PrometheusUnreachable, MixedPolicies, NoVcheckSeries) as exc:
        print(printable(f"vcheck: {exc}"), file=sys.stderr)
        return exc.exit_code
    g = gate(fleet.nodes, max_failing, q.domain_label)
    for line in g.lines:
        print(printable(line))
    note = version_note(fleet.versions)
    if note:
        print(printable(note), file=sys.stderr)
    for name, targets in sorted(fleet.doubles.items())[:10]:   # merge refuses a node given twice; here it is one node
        print(printable(f"vcheck: node {name} is reported by {len(targets)} targets ({', '.join(targets[:5])}): "
                        "counted once, failing if any of its series says so"), file=sys.stderr)
    rc = EXIT_OK if g.passed else EXIT_FAILED
    outputs = []
    if json_out:
        doc = fleet_json(fleet.nodes, g, max_failing, q.domain_label)
        doc["source"] = {"prometheus": shown_url(q.url), "at": fleet.at, "stale_after": q.stale_after,
                         "lookback": q.lookback, "versions": fleet.versions}
        outputs.append((json_out, (json.dumps(doc, indent=1) + "\n").encode()))
    if junit_out:
        outputs.append((junit_out, fleet_junit(fleet.nodes)))
    if html_out:
        outputs.append((html_out, fleet_html(fleet.nodes, g, q.domain_label)))
    return write_outputs(outputs, rc)
