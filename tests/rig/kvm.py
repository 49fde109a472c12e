"""Real KVM guests for the hypervisor rig: qemu VMs by name, a qemu VM that spins in guest mode
without exits, and tinykvm (tests/rig/tinykvm.c), a VMM of our own that performs exactly N
port-I/O exits on demand."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .common import require_root, rig_fail

RIG = Path(__file__).resolve().parent


@dataclass
class QemuVM:
    name: str
    proc: subprocess.Popen
    vcpu_tids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid


def _vcpu_threads(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                if Path(f"/proc/{pid}/task/{tid}/comm").read_text().startswith("CPU "):
                    out.append(int(tid))
            except OSError:
                continue
    except OSError:
        pass
    return sorted(out)


def _qemu() -> str:
    require_root()
    if not os.path.exists("/dev/kvm"):
        rig_fail("/dev/kvm is missing")
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        rig_fail("qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)")
    return qemu


def _start_qemu(qemu: str, name: str, smp: int, extra: tuple[str, ...] = ()) -> QemuVM:
    """A named guest (`-accel kvm`, no disk), returned once its vCPU threads exist."""
    proc = subprocess.Popen([qemu, "-accel", "kvm", *extra, "-name", f"guest={name},debug-threads=on", "-m", "32",
                             "-smp", str(smp), "-display", "none", "-monitor", "none", "-nodefaults"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    vm = QemuVM(name, proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        vm.vcpu_tids = _vcpu_threads(proc.pid)
        if len(vm.vcpu_tids) == smp:
            return vm
        if proc.poll() is not None:
            rig_fail(f"qemu for {name} exited", proc.stderr.read().decode(errors="replace")[-500:])
        time.sleep(0.05)
    _stop(vm)
    rig_fail(f"qemu for {name} did not start {smp} vCPU threads within 10 s")
    raise AssertionError  # unreachable


def _stop(vm: QemuVM) -> None:
    if vm.proc.poll() is None:
        vm.proc.kill()
    vm.proc.wait()


@pytest.fixture
def qemu_vm():
    """Start named qemu guests (`-accel kvm`, no disk): qemu_vm("web1", smp=2)."""
    qemu = _qemu()
    started: list[QemuVM] = []

    def start(name: str, smp: int = 2) -> QemuVM:
        started.append(_start_qemu(qemu, name, smp))
        return started[-1]

    yield start
    for vm in started:
        _stop(vm)


RESET_VECTOR = 0xFFF0   # offset in a 64 KiB BIOS image: where an x86 vCPU starts


@pytest.fixture(scope="module")
def spinning_vm(tmp_path_factory):
    """A qemu guest busy in guest mode without a single exit: a 64 KiB BIOS of zeros whose
    reset vector holds `jmp $` (EB FE), so CPU 0/KVM runs at 100% and never leaves the guest
    (a host that traces exits still sees its timer ticks)."""
    qemu = _qemu()
    bios = tmp_path_factory.mktemp("spin") / "spin.bin"
    image = bytearray(64 * 1024)
    image[RESET_VECTOR:RESET_VECTOR + 2] = b"\xeb\xfe"
    bios.write_bytes(bytes(image))
    try:
        vm = _start_qemu(qemu, f"vcheck-spin-{os.getpid()}", 1, ("-bios", str(bios)))
        try:
            yield vm
        finally:
            _stop(vm)
    finally:
        bios.unlink()


class TinyVM:
    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        line = proc.stdout.readline().strip()
        if not line.startswith("ready"):
            rig_fail("tinykvm did not start", line + proc.stderr.read())
        self.pid = proc.pid

    def exits(self, n: int, timeout: float = 30) -> None:
        """Make the guest do exactly n `out 0x10` exits (then one parking `out 0x11`)."""
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        assert line == f"done {n}", line

    @property
    def name(self) -> str:
        return f"tinykvm-{self.pid}"


@pytest.fixture(scope="session")
def tinykvm_binary(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        rig_fail("no C compiler for tests/rig/tinykvm.c")
    exe = tmp_path_factory.mktemp("tinykvm") / "tinykvm"
    res = subprocess.run([gcc, "-O2", "-Wall", "-pthread", "-o", str(exe), str(RIG / "tinykvm.c")],
                         capture_output=True, text=True)
    if res.returncode != 0:
        rig_fail("tinykvm.c did not compile", res.stderr[-800:])
    return exe


@pytest.fixture
def tiny_vm(tinykvm_binary):
    require_root()
    procs: list[subprocess.Popen] = []

    def start() -> TinyVM:
        proc = subprocess.Popen([str(tinykvm_binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return TinyVM(proc)

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
