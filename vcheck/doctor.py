"""``vcheck doctor``: what this node can observe, and for each thing it cannot, why and what to do.

It walks the metric catalogue: each collector declares once what it needs (files, a BPF program
and its tracepoints) and may add what its discovery finds (VMs, runtimes, the cgroup version);
the doctor checks exactly that, the way a run would (BPF programs are really loaded, on the path
a run would take, attached and detached), so "ok" here means a run will have that data. For each
BPF program family it says which path (CO-RE or bcc) a run takes, and why.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from . import probes
from .catalog import Catalog
from .collectors.base import Collector
from .errors import Unavailable
from .procfs import HostRoots, read_text


@dataclass(frozen=True)
class Row:
    layer: str
    what: str
    status: str     # "ok", "no" (cannot observe: detail says why), "n/a" (nothing to observe)
    detail: str


def _readable(path) -> tuple[bool, str]:
    try:
        read_text(path)
        return True, str(path)
    except OSError as exc:
        return False, f"{path}: {exc.strerror}"


def _root(roots: HostRoots, name: str):
    return {"proc": roots.proc, "sys": roots.sys, "cgroup": roots.cgroup, "run": roots.run}[name]


def collector_rows(roots: HostRoots, classes: list[type[Collector]]) -> list[Row]:
    """Per collector: the files it declares it reads, then what its discovery finds."""
    rows = []
    for cls in classes:
        layer = cls.METRICS[0].layer
        for root, rel, what in cls.NEEDS.files:
            ok, detail = _readable(_root(roots, root) / rel)
            rows.append(Row(layer, what, "ok" if ok else "no", detail))
        rows.extend(Row(layer, what, status, detail) for what, status, detail in cls.diagnose(roots))
    return rows


def bpf_rows(classes: list[type[Collector]]) -> list[Row]:
    rows = []
    blocking = False
    for check in (probes.check_privileges, probes.ensure_tracefs):
        f = check()
        rows.append(Row("bpf", f.what, "ok" if f.ok else "no", f.detail))
        blocking = blocking or not f.ok
    for check in (probes.check_btf, probes.check_libbpf):   # the CO-RE path
        f = check()
        rows.append(Row("bpf", f.what, "ok" if f.ok else "no", f.detail))
    try:
        choices = [(layer, what, source, attach, cflags, probes.choose_path(source, cflags))
                   for layer, what, source, attach, cflags in _programs(classes)]
    except probes.BpfUnavailable as exc:   # VCHECK_BPF_PATH=core where CO-RE cannot load
        rows.append(Row("bpf", "path", "no", exc.reason))
        return rows
    need_bcc = [what for *_, what, _, _, _, c in choices if c.path == "bcc"]
    for check in (probes.check_bcc, probes.check_headers):  # the bcc path
        f = check()
        if need_bcc:
            rows.append(Row("bpf", f.what, "ok" if f.ok else "no", f.detail))
            blocking = blocking or not f.ok
        else:
            rows.append(Row("bpf", f.what, "n/a", f"not needed: every program loads as CO-RE ({f.detail})"))
    if probes.tracefs_root() is None:
        rows.append(Row("bpf", "tracepoints", "no", "cannot list tracepoints without a readable tracefs"))
        return rows
    families: dict[str, list[str]] = {}
    for *_, attach, _, _ in choices:          # the tracepoints the programs attach to
        for a in attach:
            if not a.optional and a.event not in families.setdefault(a.category, []):
                families[a.category].append(a.event)
    for family, events in families.items():
        missing = [e for e in events if not probes.tracepoint_exists(family, e)]
        rows.append(Row("bpf", f"tracepoints {family}:*", "no" if missing else "ok",
                        f"absent: {', '.join(missing)}" if missing else ", ".join(events)))
    for layer, what, source, _, _, choice in choices:
        rows.append(Row(layer, f"{what} path", "ok", f"{choice.path}: {choice.reason}"))
    if not blocking:
        rows.extend(_trial_loads(choices))
    return rows


def _programs(classes: list[type[Collector]]) -> list[tuple[str, str, str, tuple[probes.Attach, ...], tuple[str, ...]]]:
    """(layer, what, source, attach points, cflags) of each program a collector declares."""
    return [(cls.METRICS[0].layer, cls.NEEDS.what or cls.name, *cls.NEEDS.program)
            for cls in classes if cls.NEEDS.program is not None]


def _trial_loads(choices: list) -> list[Row]:
    """Load, attach and detach each program family once, on the path a run would take."""
    rows = []
    for layer, what, source, attach, cflags, _ in choices:
        t = time.monotonic()
        prog = probes.BpfProgram(source, attach, cflags=cflags)
        try:
            prog.load()
            how = "loaded (CO-RE)" if prog.path == "core" else "compiled by bcc"
            rows.append(Row(layer, what, "ok", f"{source} {how} and attached in "
                                               f"{time.monotonic() - t:.2f}s" +
                            (f"; {'; '.join(prog.notes)}" if prog.notes else "")))
        except Unavailable as exc:
            rows.append(Row(layer, what, "no", exc.reason))
        finally:
            prog.close()
    return rows


def diagnose(roots: HostRoots, catalog: Catalog | None = None) -> list[Row]:
    classes = list((catalog or Catalog()).collectors.values())
    rows = collector_rows(roots, classes) + bpf_rows(classes)
    order = {"guest": 0, "bpf": 1, "hypervisor": 2, "container": 3}
    return sorted(rows, key=lambda r: order.get(r.layer, 9))      # stable: each layer as declared


def render(rows: list[Row]) -> str:
    w_layer = max(len(r.layer) for r in rows)
    w_what = max(len(r.what) for r in rows)
    lines = [f"{'LAYER'.ljust(w_layer)}  {'WHAT'.ljust(w_what)}  STATUS  DETAIL"]
    for r in rows:
        lines.append(f"{r.layer.ljust(w_layer)}  {r.what.ljust(w_what)}  {r.status.ljust(6)}  {r.detail}")
    return "\n".join(lines)
