"""Guest and host side by side: a report made inside a VM is joined to the host report that ran
that VM, by what both sides can see (the DMI product UUID or serial the VMM passes, else the
VM's name as the guest's hostname), so a guest's failing steal is shown next to the run delay
of its own vCPUs on the host and that host's culprits. Guests with no host are listed, never
dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HOST_VM_METRICS = ("vm.cpu", "vm.vcpus", "vm.memory.rss", "vcpu.run_delay", "vcpu.cpu",
                   "vm.net.rx.drops", "vm.net.tx.drops", "vm.net.rx.packets", "vm.net.tx.packets")
NOT_HEALTHY = ("fail", "error")


@dataclass
class HostVM:
    host: str
    vm: str
    uuid: str = ""
    serial: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)   # the host's items about this VM


@dataclass
class Joined:
    guest: str
    host: str
    vm: str
    by: str                                   # "product_uuid", "product_serial" or "hostname"
    guest_failing: list[str]
    host_lines: list[str]


def host_vms(host: str, report: dict[str, Any]) -> list[HostVM]:
    """The VMs a host report observed, with the identity their VMM gave them."""
    found: dict[str, HostVM] = {}
    for o in report.get("observations") or []:
        name = (o.get("labels") or {}).get("vm")
        if not name or o.get("metric") not in HOST_VM_METRICS:
            continue
        info = o.get("info") or {}
        vm = found.setdefault(name, HostVM(host, name))
        vm.uuid = vm.uuid or str(info.get("uuid", "")).lower()
        vm.serial = vm.serial or str(info.get("serial", ""))
    for r in report.get("results") or []:
        name = (r.get("labels") or {}).get("vm")
        if name in found:
            found[name].results.append(r)
    return list(found.values())


def _host_lines(vm: HostVM) -> list[str]:
    lines = []
    for r in vm.results:
        for e in r.get("entities") or []:
            measured = next((m.get("measured_text") for m in e.get("measurements") or []), "")
            series = e.get("series") or {}
            figure = measured or (f"max {series['max']:.1f}" if series.get("max") is not None else "")
            lines.append(f"{r.get('check')}[{e.get('entity')}] {e.get('outcome')}"
                         + (f" ({figure})" if figure else ""))
            for c in (e.get("culprits") or [])[:3]:
                share = c.get("share")
                lines.append(f"  culprit: {c.get('describe') or c.get('comm')}"
                             + (f", {share:.0%} of the wait" if isinstance(share, (int, float)) else ""))
    return lines


@dataclass
class JoinFacts:
    """What joining needs of one node report, taken at load (the report itself is not kept)."""

    name: str
    virtualization: str
    identity: dict[str, str]
    hostname: str
    vms: list[HostVM]
    failing: list[str]


def facts_of(name: str, report: dict[str, Any]) -> JoinFacts:
    node = report.get("node") or {}
    return JoinFacts(name, str(node.get("virtualization") or "none"), dict(node.get("vm_identity") or {}),
                     str(node.get("hostname") or name), host_vms(name, report),
                     [r.get("nodeid", "?") for r in report.get("results") or [] if r.get("outcome") in NOT_HEALTHY])


def join(nodes: list[JoinFacts]) -> tuple[list[Joined], list[str]]:
    """(joined guests, guests that carry a VM identity but no host report ran them)."""
    vms = [vm for n in nodes for vm in n.vms]
    joined, unjoined = [], []
    for n in nodes:
        if n.vms or (n.virtualization == "none" and not n.identity):
            continue                       # a host (or bare metal) is no one's guest here
        match, by = None, ""
        for key, attr in (("product_uuid", "uuid"), ("product_serial", "serial")):
            value = str(n.identity.get(key, ""))
            value = value.lower() if key == "product_uuid" else value
            match = next((vm for vm in vms if value and getattr(vm, attr) == value and vm.host != n.name), None)
            if match:
                by = key
                break
        if match is None:
            match = next((vm for vm in vms if vm.vm == n.hostname and vm.host != n.name), None)
            by = "hostname" if match else ""
        if match is None:
            if n.identity:
                unjoined.append(n.name)
            continue
        joined.append(Joined(n.name, match.host, match.vm, by, n.failing, _host_lines(match)))
    return joined, unjoined


def render(joined: list[Joined], unjoined: list[str]) -> list[str]:
    lines = []
    for j in joined:
        lines.append(f"guest {j.guest} is VM {j.vm} on host {j.host} (joined by {j.by})")
        for f in j.guest_failing[:10]:
            lines.append(f"  guest failing: {f}")
        for h in j.host_lines[:20]:
            lines.append(f"  host: {h}")
    for u in unjoined:
        lines.append(f"guest {u}: no host report ran it (no matching VM uuid, serial or name)")
    return lines
