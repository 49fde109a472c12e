"""VMs on this host and their vCPU threads, found from /proc alone: any process holding an
``anon_inode:kvm-vm`` fd is a VM, named from its VMM's command line; its vCPUs are the threads
the VMM names as such, or else the threads in ioctl(KVM_RUN) on an ``anon_inode:kvm-vcpu:N`` fd.

Kept apart from the hypervisor collector so that identity (which names any task, vCPU threads
included) can use it while the collector names its culprits through identity.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..evidence import redact
from ..procfs import HostRoots, read_text
from .base import Unavailable

KVM_RUN = 0xAE80
SYS_IOCTL_X86_64 = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")
# thread names VMMs give their vCPUs: qemu (debug-threads=on), firecracker, crosvm, kvmtool, ...
VCPU_THREAD_NAMES = (re.compile(r"^CPU (\d+)/KVM$"), re.compile(r"^fc_vcpu ?(\d+)$"),
                     re.compile(r"^(?:crosvm_)?vcpu ?(\d+)$"), re.compile(r"^kvm-vcpu-(\d+)$"),
                     re.compile(r"^vcpu(\d+)$"))


@dataclass(frozen=True)
class VCpu:
    tid: int
    index: int


@dataclass(frozen=True)
class VM:
    pid: int
    name: str
    vmm: str           # qemu, firecracker, ... or the process name
    cmdline: str       # redacted: evidence leaves the node
    vcpus: tuple[VCpu, ...]
    vcpu_fds: int = 0  # anon_inode:kvm-vcpu fds: how many vCPUs the VM has
    uuid: str = ""
    serial: str = ""   # qemu -smbios type=1,serial=S: what the guest reads as its DMI serial


# --- naming -------------------------------------------------------------------------------
def _qemu_option_value(value: str, key: str | None) -> str | None:
    """qemu's `-name guest=X,debug-threads=on` or `-name X`; ',,' escapes a comma."""
    parts = re.split(r"(?<!,),(?!,)", value)
    for i, part in enumerate(parts):
        part = part.replace(",,", ",")
        if key is None and i == 0 and "=" not in part:
            return part
        if key is not None and part.startswith(key + "="):
            return part[len(key) + 1:]
    return None


def vm_identity(argv: list[str], comm: str, pid: int) -> tuple[str, str, str, str]:
    """(name, vmm, uuid, serial) from a VMM's argv; generic `comm-pid` when the VMM names nothing."""
    exe = os.path.basename(argv[0]) if argv else comm
    vmm = ("qemu" if "qemu" in exe else "firecracker" if "firecracker" in exe else
           "cloud-hypervisor" if "cloud-hypervisor" in exe else "crosvm" if "crosvm" in exe else
           "kvmtool" if exe in ("lkvm", "kvmtool") else comm)
    name = uuid = None
    serial = ""
    for i, arg in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in ("-name", "--name") and nxt is not None and vmm == "qemu":
            name = _qemu_option_value(nxt, "guest") or _qemu_option_value(nxt, None)
        elif arg == "-uuid" and nxt is not None:
            uuid = nxt
        elif arg == "-smbios" and nxt is not None and _qemu_option_value(nxt, "type") == "1":
            serial = _qemu_option_value(nxt, "serial") or serial
        elif arg == "--id" and nxt is not None:
            name = nxt
        elif arg.startswith("--id="):
            name = arg[5:]
        elif arg == "--name" and nxt is not None:
            name = nxt
    return name or f"{vmm}-{pid}", vmm, uuid or "", serial


# --- discovery ----------------------------------------------------------------------------
def _fds(proc: Path, pid: int, denied: list[int] | None = None) -> dict[int, str]:
    """fd number -> link target, read once per process and used for both VM and vCPU tests.
    A process whose fds we may not read is appended to `denied`. (Paths as strings here and
    below: discovery looks at every process on the host, and a Path per file costs more than
    the file.)"""
    out = {}
    try:
        with os.scandir(f"{proc}/{pid}/fd") as it:
            for e in it:
                try:
                    out[int(e.name)] = os.readlink(e.path)
                except (OSError, ValueError):
                    continue
    except PermissionError:
        if denied is not None:
            denied.append(pid)
    except OSError:
        pass
    return out


def _syscall(task: str) -> list[str]:
    """/proc/.../syscall split: ['16', fd, cmd, ...] in a syscall, ['running'] on a CPU."""
    try:
        return read_text(f"{task}/syscall").split()
    except OSError:
        return []


def _named_index(comm: str) -> int | None:
    for pattern in VCPU_THREAD_NAMES:
        m = pattern.match(comm)
        if m:
            return int(m.group(1))
    return None


UNNAMED_LOOKS = 5          # unnamed vCPU threads: looks at /proc/.../syscall
UNNAMED_LOOK_GAP = 0.005   # seconds between looks


def find_vcpu_threads(proc: Path, pid: int, fds: dict[int, str] | None = None) -> tuple[list[VCpu], int]:
    """The VM's vCPU threads (by name, else by KVM_RUN, else running with guest time), and how
    many vCPU fds the VM holds."""
    fds = _fds(proc, pid) if fds is None else fds
    vcpu_fds = {fd: int(t.rsplit(":", 1)[1]) for fd, t in fds.items() if t.startswith("anon_inode:kvm-vcpu:")}
    base = f"{proc}/{pid}/task"
    try:
        tids = sorted(int(t) for t in os.listdir(base))
    except OSError:
        return [], len(vcpu_fds)
    comms = {}
    for tid in tids:
        try:
            comms[tid] = read_text(f"{base}/{tid}/comm").strip()
        except OSError:
            continue
    named = [VCpu(tid, i) for tid, comm in comms.items() if (i := _named_index(comm)) is not None]
    if named:
        return sorted(named, key=lambda v: v.index), len(vcpu_fds)
    in_run: dict[int, VCpu] = {}
    running_guest: list[int] = []
    # a vCPU thread is caught in ioctl(KVM_RUN) only while it is there: look a few times, a few
    # ms apart, before concluding (a VMM between two exits, or one that has just started)
    for attempt in range(UNNAMED_LOOKS):
        if attempt:
            time.sleep(UNNAMED_LOOK_GAP)
        for tid, comm in comms.items():
            if comm.startswith("kvm-") or tid in in_run:   # kernel workers (kvm-nx-lpage-recovery, kvm-pit)
                continue
            task = f"{base}/{tid}"
            call = _syscall(task)
            if len(call) > 2 and call[0] == str(SYS_IOCTL_X86_64) and int(call[2], 16) == KVM_RUN:
                fd = int(call[1], 16)
                if fd in vcpu_fds:
                    in_run[tid] = VCpu(tid, vcpu_fds[fd])
                    if tid in running_guest:
                        running_guest.remove(tid)
            elif call[:1] == ["running"] and tid not in running_guest:
                # a thread on a CPU shows no syscall; one that has run guest code is a vCPU
                try:
                    if parse_stat(read_text(f"{task}/stat"))[1] > 0:
                        running_guest.append(tid)
                except (OSError, IndexError, ValueError):
                    pass
        if len(in_run) + len(running_guest) >= len(vcpu_fds):
            break
    # busy vCPUs seen running get the vCPU indexes no thread in KVM_RUN claimed, in creation
    # order (VMMs create vCPU threads in index order)
    free = sorted(set(vcpu_fds.values()) - {v.index for v in in_run.values()})
    found = list(in_run.values()) + [VCpu(tid, idx) for tid, idx in zip(sorted(running_guest), free)]
    return sorted(found, key=lambda v: v.index), len(vcpu_fds)


def discover_vms(roots: HostRoots) -> list[VM]:
    """Every process on the host that holds a kvm-vm fd. Processes that vanish mid-scan are skipped."""
    proc = roots.proc
    vms = []
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError as exc:
        raise Unavailable(f"cannot list {proc}: {exc.strerror}") from exc
    self_pid = os.getpid()
    denied: list[int] = []
    for pid in pids:
        if pid == self_pid:
            continue
        fds = _fds(proc, pid, denied)
        if "anon_inode:kvm-vm" not in fds.values():
            continue
        try:
            argv = [a for a in read_text(f"{proc}/{pid}/cmdline").split("\0") if a]
            comm = read_text(f"{proc}/{pid}/comm").strip()
        except OSError:
            continue
        name, vmm, uuid, serial = vm_identity(argv, comm, pid)
        vcpus, nfds = find_vcpu_threads(proc, pid, fds)
        vms.append(VM(pid, name, vmm, redact(" ".join(argv)), tuple(vcpus), nfds, uuid, serial))
    if denied:
        # a VM among them would be invisible: say so rather than report "no VMs"
        raise Unavailable(f"cannot see VMs: the open files of {len(denied)} processes (e.g. pid {denied[0]}) "
                          f"are not readable by uid {os.geteuid()}; run vcheck as root (or with "
                          "CAP_SYS_PTRACE) to find the processes that hold a kvm-vm fd")
    # two VMs with the same name (two unnamed VMMs of one kind cannot collide: pid is in it)
    seen: dict[str, int] = {}
    for vm in vms:
        seen[vm.name] = seen.get(vm.name, 0) + 1
    return [vm if seen[vm.name] == 1 else replace(vm, name=f"{vm.name}-{vm.pid}") for vm in vms]


def parse_stat(text: str) -> tuple[int, int]:
    """(utime + stime, guest_time) in clock ticks from /proc/PID[/task/TID]/stat."""
    f = text.rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12]), int(f[40]) if len(f) > 40 else 0
