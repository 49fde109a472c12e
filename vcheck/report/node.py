"""Which node a report describes: identity, kernel, boot, virtualization, node labels.

Virtualization is detected the way systemd-detect-virt does it, from what the kernel exposes
(DMI strings, /sys/hypervisor, the CPU's hypervisor flag, virtio-mmio devices), for the VM and
separately for a container vcheck may itself run in.
"""
from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

DMI_VENDORS = (("QEMU", "qemu"), ("KVM", "kvm"), ("Amazon EC2", "amazon"), ("Google", "google"),
               ("Microsoft Corporation", "microsoft"), ("VMware", "vmware"), ("innotek GmbH", "oracle"),
               ("VirtualBox", "oracle"), ("Xen", "xen"), ("Firecracker", "firecracker"),
               ("Cloud Hypervisor", "cloud-hypervisor"), ("Bochs", "bochs"), ("Parallels", "parallels"))


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def detect_vm(sys_root: Path = Path("/sys"), proc_root: Path = Path("/proc")) -> str:
    dmi = " ".join(_read(sys_root / "class/dmi/id" / f) for f in ("sys_vendor", "product_name", "bios_vendor",
                                                                   "board_vendor"))
    for needle, name in DMI_VENDORS:
        if needle in dmi:
            return name
    hv = _read(sys_root / "hypervisor/type")
    if hv:
        return hv
    flags = next((line for line in _read(proc_root / "cpuinfo").splitlines() if line.startswith("flags")), "")
    if " hypervisor" not in flags:
        return "none"
    platform_devs = sys_root / "bus/platform/devices"
    try:
        if not dmi.strip() and any("virtio" in d for d in os.listdir(platform_devs)):
            return "firecracker"     # no DMI at all and virtio over MMIO: Firecracker's signature
    except OSError:
        pass
    return "vm-other"


def detect_container(proc_root: Path = Path("/proc")) -> str:
    if Path("/.dockerenv").exists():
        return "docker"
    if Path("/run/.containerenv").exists():
        return "podman"
    env = _read(proc_root / "1/environ").split("\0")
    for e in env:
        if e.startswith("container="):
            return e.split("=", 1)[1] or "container"
    if "kubepods" in _read(proc_root / "self/cgroup"):
        return "kubernetes"
    return "none"


def node_labels() -> dict[str, str]:
    """VCHECK_NODE_LABELS="topology.kubernetes.io/zone=a,rack=r7": failure domains for `vcheck merge`."""
    out = {}
    for pair in os.environ.get("VCHECK_NODE_LABELS", "").split(","):
        k, sep, v = pair.partition("=")
        if sep and k.strip():
            out[k.strip()] = v.strip()
    return out


def vm_identity(sys_root: Path) -> dict[str, str]:
    """Who this node is to its hypervisor, as the guest sees it: the DMI product UUID and serial
    a VMM passes (qemu -uuid / -smbios type=1,serial=, libvirt's domain UUID). Empty on a guest
    without DMI (Firecracker): the host report cannot be joined by it then."""
    dmi = sys_root / "class/dmi/id"
    out = {"product_uuid": _read(dmi / "product_uuid").lower(), "product_serial": _read(dmi / "product_serial")}
    return {k: v for k, v in out.items() if v}


def node_facts(sys_root: Path | None = None) -> dict[str, object]:
    sys_root = sys_root or Path(os.environ.get("VCHECK_SYS") or "/sys")
    return {"hostname": os.environ.get("VCHECK_NODE_NAME") or socket.gethostname(),
            "kernel": platform.release(), "boot_id": _read("/proc/sys/kernel/random/boot_id"),
            "virtualization": detect_vm(), "container": detect_container(), "labels": node_labels(),
            "vm_identity": vm_identity(sys_root)}
