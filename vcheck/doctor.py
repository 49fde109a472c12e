"""``vcheck doctor``: what this node can observe, and for each thing it cannot, why and what to do.

Every row is established the way a run would establish it (BPF programs are really loaded,
on the path a run would take, attached and detached), so "ok" here means a run will have that
data. For each BPF program family it says which path (CO-RE or bcc) a run takes, and why.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from . import probes
from .collectors.containers.discovery import cri_sockets
from .collectors.containers.docker import docker_sockets
from .collectors.hypervisor import discover_vms
from .errors import Unavailable
from .procfs import HostRoots, read_text


@dataclass(frozen=True)
class Row:
    layer: str
    what: str
    status: str     # "ok", "no" (cannot observe: detail says why), "n/a" (nothing to observe)
    detail: str


TRACEPOINT_FAMILIES = {
    "block": ("block_rq_issue", "block_rq_complete"),
    "sched": ("sched_wakeup", "sched_wakeup_new", "sched_switch"),
    "kvm": ("kvm_exit", "kvm_entry", "kvm_userspace_exit", "kvm_pio", "kvm_mmio"),
}


def _readable(path) -> tuple[bool, str]:
    try:
        read_text(path)
        return True, str(path)
    except OSError as exc:
        return False, f"{path}: {exc.strerror}"


def guest_rows(roots: HostRoots) -> list[Row]:
    rows = []
    ok, detail = _readable(roots.proc / "stat")
    rows.append(Row("guest", "CPU shares incl. steal", "ok" if ok else "no", detail))
    ok, detail = _readable(roots.proc / "diskstats")
    rows.append(Row("guest", "disk counters", "ok" if ok else "no", detail))
    for res in ("cpu", "memory", "io"):
        ok, detail = _readable(roots.proc / "pressure" / res)
        rows.append(Row("guest", f"PSI {res}", "ok" if ok else "no",
                        detail if ok else detail + " (kernel without CONFIG_PSI, or psi=0)"))
    return rows


def bpf_rows() -> list[Row]:
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
                   for layer, what, source, attach, cflags in _programs()]
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
    for family, events in TRACEPOINT_FAMILIES.items():
        missing = [e for e in events if not probes.tracepoint_exists(family, e)]
        rows.append(Row("bpf", f"tracepoints {family}:*", "no" if missing else "ok",
                        f"absent: {', '.join(missing)}" if missing else ", ".join(events)))
    for layer, what, source, _, _, choice in choices:
        rows.append(Row(layer, f"{what} path", "ok", f"{choice.path}: {choice.reason}"))
    if not blocking:
        rows.extend(_trial_loads(choices))
    return rows


def _programs() -> list[tuple[str, str, str, tuple[probes.Attach, ...], tuple[str, ...]]]:
    """(layer, what, source, attach points, cflags) of each program family a run loads."""
    from .collectors import sched
    from .collectors.disk import BLOCK_TRACEPOINTS
    from .collectors.kvm import SOURCE as KVM_SOURCE
    from .collectors.kvm import TRACEPOINTS as KVM_TRACEPOINTS

    runq_flags = tuple(getattr(sched, "CULPRIT_FLAGS", ()))
    return [("guest", "block.latency (BPF)", "block_latency.c", BLOCK_TRACEPOINTS, ()),
            ("guest", "sched.runq.latency (BPF)", "runq_latency.c", sched.RUNQ_TRACEPOINTS, runq_flags),
            ("hypervisor", "kvm exits (BPF)", KVM_SOURCE, KVM_TRACEPOINTS, ())]


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


def hypervisor_rows(roots: HostRoots) -> list[Row]:
    rows = []
    kvm_dev = "/dev/kvm"
    rows.append(Row("hypervisor", "KVM", "ok" if os.path.exists(kvm_dev) else "n/a",
                    kvm_dev if os.path.exists(kvm_dev) else "no /dev/kvm: not a KVM host"))
    try:
        vms = discover_vms(roots)
    except Unavailable as exc:
        rows.append(Row("hypervisor", "VMs", "no", exc.reason))
        return rows
    rows.append(Row("hypervisor", "VMs", "ok" if vms else "n/a",
                    ", ".join(f"{v.name} (pid {v.pid}, {len(v.vcpus)} vCPUs)" for v in vms[:8])
                    or "no process holds a kvm-vm fd"))
    return rows


def container_rows(roots: HostRoots) -> list[Row]:
    rows = []
    unified = roots.cgroup / "cgroup.controllers"
    hybrid = roots.cgroup / "unified" / "cgroup.controllers"
    version = "v2" if unified.exists() else "v1 (hybrid)" if hybrid.exists() else \
        "v1" if (roots.cgroup / "cpu").exists() or (roots.cgroup / "cpu,cpuacct").exists() else None
    rows.append(Row("container", "cgroups", "ok" if version else "no",
                    version or f"no cgroup hierarchy under {roots.cgroup}"))
    found, denied = [], []
    for kind, socks in (("CRI", cri_sockets(roots)), ("engine API", docker_sockets(roots))):
        for sock in socks:
            try:
                os.stat(sock)
            except PermissionError:
                denied.append(str(sock))
                continue
            except OSError:
                continue
            found.append(f"{kind} at {sock}")
    if denied:
        rows.append(Row("container", "runtimes", "no", f"not allowed to reach {', '.join(denied)} as uid "
                        f"{os.geteuid()}: run vcheck as root"))
    else:
        rows.append(Row("container", "runtimes", "ok" if found else "n/a",
                        "; ".join(found) or "no runtime socket (cgroup path patterns still find containers)"))
    return rows


def diagnose(roots: HostRoots) -> list[Row]:
    return guest_rows(roots) + bpf_rows() + hypervisor_rows(roots) + container_rows(roots)


def render(rows: list[Row]) -> str:
    w_layer = max(len(r.layer) for r in rows)
    w_what = max(len(r.what) for r in rows)
    lines = [f"{'LAYER'.ljust(w_layer)}  {'WHAT'.ljust(w_what)}  STATUS  DETAIL"]
    for r in rows:
        lines.append(f"{r.layer.ljust(w_layer)}  {r.what.ljust(w_what)}  {r.status.ljust(6)}  {r.detail}")
    return "\n".join(lines)
