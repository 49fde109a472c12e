"""`vcheck explain REPORT.json [ITEM]`: the walk for a failing item, top-down, as a human reads
it (symptom -> entity -> culprit -> its owner -> its cgroup and namespaces), from the saved report
alone: no sampling, no access to the node.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..evidence import printable
from ..units import BYTES, TIME, format_duration, format_value
from .json_report import result_id

NOT_HEALTHY = ("fail", "error")


def select(report: dict[str, Any], item: str | None) -> list[dict[str, Any]]:
    """The results ITEM names: an identity ('policy::check[entity]'), a check id, a nodeid, or the
    end of one; with no ITEM, every failing or inconclusive result."""
    results = report.get("results") or []
    if item is None:
        return [r for r in results if r.get("outcome") in NOT_HEALTHY]
    return [r for r in results if item in (result_id(r), r.get("nodeid"), r.get("check"))
            or result_id(r).endswith(item) or str(r.get("nodeid", "")).endswith(item)]


def known_ids(report: dict[str, Any], limit: int = 20) -> str:
    ids = [result_id(r) for r in report.get("results") or []]
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "") if ids else "none"


def _event_value(key: str, value: Any) -> str:
    """An event's field as the terminal writes it: durations and sizes in their units."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and key in ("latency", "duration", "wait", "queue", "rtt", "srtt"):
        return format_value(value, TIME)
    if number and key == "bytes":
        return format_value(value, BYTES)
    if number and key == "time":
        return f"+{value:.3f}s"
    return str(value)


def _fmt_info(info: dict[str, Any], keys: Iterable[str]) -> str:
    return ", ".join(f"{k} {info[k]}" for k in keys if info.get(k) not in (None, ""))


def explain(report: dict[str, Any], item: str | None = None) -> str:
    chosen = select(report, item)
    node = (report.get("node") or {}).get("hostname", "?")
    if not chosen:
        what = f"no item matches {item!r}" if item else "every item passed or was skipped"
        return f"{node}: {what}."
    out: list[str] = []
    for r in chosen:
        out.append(f"{result_id(r)} on {node}: {str(r.get('outcome', '?')).upper()}")
        window = r.get("window")
        out.append(f"  symptom: {r.get('metric')} expect {r.get('expect')!r}"
                   + (f" for {format_duration(r['for'])}" if r.get("for") else "")
                   + (f" over {format_duration(window)}" if isinstance(window, (int, float)) else "")
                   + (f": {r['reason']}" if r.get("reason") else ""))
        for e in r.get("entities") or []:
            if e.get("outcome") == "pass":
                continue
            info = e.get("info") or {}
            out.append(f"  entity: {e.get('entity')} ({e.get('outcome')})"
                       + (f": {_fmt_info(info, ('pid', 'vmm', 'cgroup', 'image', 'pid_map', 'netns', 'taps'))}"
                          if info else ""))
            if info.get("owner") and "reason_code" in info:      # a net.drops entity: who, where
                out.append(f"    dropped in {info.get('functions', '?')}"
                           + (f" on {info['interfaces']}" if info.get("interfaces") else "")
                           + f"; namespace of {info['owner']}"
                           + (f"; socket of {info['socket_owner']}" if info.get("socket_owner") else ""))
            for m in e.get("measurements") or []:
                if m.get("passed") is False:
                    out.append(f"    measured {m.get('statistic')} = {m.get('measured_text')} "
                               f"(threshold {m.get('threshold_text')})")
            lv = (e.get("series") or {}).get("longest_violation")
            if lv:
                out.append(f"    violated for {format_duration(lv['duration'])} "
                           f"(+{lv['start']:.1f}s to +{lv['end']:.1f}s)")
            culprits = e.get("culprits") or []
            for c in culprits[:5]:
                share = c.get("share")
                out.append(f"    culprit: {c.get('describe') or c.get('comm')}"
                           + (f" took {share:.0%} of the wait" if isinstance(share, (int, float)) else ""))
                if c.get("owner"):
                    out.append(f"      owner: {c['owner']}" + (f"; {_fmt_info(c, ('cgroup', 'nspid'))}"
                                                               if c.get("cgroup") or c.get("nspid") else ""))
            for ev in (e.get("events") or [])[:3]:
                net = _net_event(ev)
                if net:
                    out.extend(net)
                    continue
                task = f"pid {ev['pid']} '{ev.get('comm', '?')}'" if "pid" in ev else ""
                who = f"{task} ({ev['owner']})" if task and ev.get("owner") else task or ev.get("owner", "")
                detail = ", ".join(f"{k}={_event_value(k, v)}" for k, v in ev.items()
                                   if k not in ("owner", "pid", "comm"))
                out.append(f"    event: {detail}" + (f"; issued by {who}" if who else ""))
            if not culprits and not e.get("events") and "reason_code" not in info:
                out.append("    culprit: none recorded (this metric carries no culprit or event evidence)")
            for n in (e.get("notes") or [])[:3]:
                out.append(f"    note: {n}")
    return "\n".join(printable(line) for line in out)


def _net_event(ev: dict[str, Any]) -> list[str]:
    """A network event's lines: a drop (reason, function, interface, owners) or a TCP flow."""
    if "reason" in ev and "function" in ev:
        where = f" on {', '.join(ev['interfaces'])}" if ev.get("interfaces") else ""
        lines = [f"    dropped: {ev.get('count')} x {ev['reason']} in {ev['function']}{where} "
                 f"(netns {ev.get('netns')})", f"      namespace of: {ev.get('owner', '?')}"]
        if ev.get("socket_owner"):
            lines.append(f"      socket of: {ev['socket_owner']}")
        return lines
    if "remote" in ev and "local" in ev:
        what = (f"{ev['count']} segments retransmitted" if "count" in ev else
                f"srtt up to {format_duration(ev['latency'])}" if isinstance(ev.get("latency"), (int, float)) else "")
        lines = [f"    flow {ev['local']} -> {ev['remote']}: {what} (netns {ev.get('netns')})",
                 f"      namespace of: {ev.get('owner', '?')}"]
        if ev.get("socket_owner"):
            lines.append(f"      socket of: {ev['socket_owner']}")
        return lines
    return []
