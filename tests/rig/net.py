"""Network rig: network namespaces of the test's own, joined by veth pairs, and traffic between
them with a known count. Addresses are 10.77.x.y inside these namespaces only; IPv6 is off on
their interfaces and neighbours are static, so the only packets on a link are the test's own.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.rig.common import require_root, rig_fail


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        rig_fail(f"{' '.join(cmd)} failed", res.stderr.strip())
    return res


def in_ns(ns: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        rig_fail(f"{' '.join(cmd)} in {ns} failed", res.stderr.strip())
    return res


def link_stats(ns: str, dev: str) -> dict[str, int]:
    """`ip -s link` counters of dev: rx_/tx_ packets, bytes, errors, dropped."""
    data = json.loads(ip("-j", "-s", "link", "show", "dev", dev, ns=ns).stdout)[0]["stats64"]
    return {f"{d}_{k}": v for d in ("rx", "tx") for k, v in data[d].items() if isinstance(v, int)}


def nstat(ns: str) -> dict[str, int]:
    """nstat's absolute counters of the namespace (-a: ignore its history file; -z: zeros too)."""
    res = in_ns(ns, "nstat", "-a", "-z", "-j", "-s")
    data = json.loads(res.stdout)
    return {k: int(v) for k, v in data.get("kernel", data).items()}


@dataclass
class Netns:
    name: str
    holder: subprocess.Popen      # a process inside, so /proc/PID/net is this namespace

    @property
    def pid(self) -> int:
        return self.holder.pid

    @property
    def proc(self) -> Path:
        return Path(f"/proc/{self.pid}")


@dataclass
class VethPair:
    """Namespace a (10.77.0.1 on dev a) <-> namespace b (10.77.0.2 on dev b)."""

    a: Netns
    b: Netns
    dev_a: str
    dev_b: str
    addr_a: str = "10.77.0.1"
    addr_b: str = "10.77.0.2"


def make_netns(tag: str) -> Netns:
    name = f"vchk-{tag}-{secrets.token_hex(3)}"
    ip("netns", "add", name)
    holder = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "3600"], stdin=subprocess.DEVNULL)
    ns = Netns(name, holder)
    for _ in range(100):
        try:
            if os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                break
        except OSError:
            pass
        time.sleep(0.02)
    else:
        rig_fail(f"the holder of {name} never entered it")
    in_ns(name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
    in_ns(name, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
    ip("link", "set", "lo", "up", ns=name)
    return ns


def remove_netns(ns: Netns) -> None:
    ns.holder.kill()
    ns.holder.wait()
    subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True)


def mac(ns: str, dev: str) -> str:
    return json.loads(ip("-j", "link", "show", "dev", dev, ns=ns).stdout)[0]["address"]


def connect_veth(a: Netns, b: Netns) -> VethPair:
    tag = secrets.token_hex(2)
    dev_a, dev_b = f"vca{tag}", f"vcb{tag}"
    ip("link", "add", dev_a, "netns", a.name, "type", "veth", "peer", "name", dev_b, "netns", b.name)
    pair = VethPair(a, b, dev_a, dev_b)
    for ns, dev, addr in ((a, dev_a, pair.addr_a), (b, dev_b, pair.addr_b)):
        ip("addr", "add", f"{addr}/24", "dev", dev, ns=ns.name)
        ip("link", "set", dev, "up", ns=ns.name)
    ip("neigh", "replace", pair.addr_b, "lladdr", mac(b.name, dev_b), "dev", dev_a, "nud", "permanent", ns=a.name)
    ip("neigh", "replace", pair.addr_a, "lladdr", mac(a.name, dev_a), "dev", dev_b, "nud", "permanent", ns=b.name)
    return pair


@pytest.fixture
def veth_pair():
    """Two fresh namespaces joined by a veth pair; removed after the test."""
    require_root()
    for tool in ("ip", "nstat"):
        if shutil.which(tool) is None:
            rig_fail(f"{tool} is not installed (iproute2)")
    made = []
    try:
        a = make_netns("a")
        made.append(a)
        b = make_netns("b")
        made.append(b)
        yield connect_veth(a, b)
    finally:
        for ns in made:
            remove_netns(ns)


# --- traffic: small Python programs run inside a namespace -----------------------------------
def py_in_ns(ns: str, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return in_ns(ns, sys.executable, "-c", textwrap.dedent(code), *args, timeout=timeout)


def udp_send(ns: str, dst: str, port: int, count: int, size: int = 200) -> None:
    """Send `count` UDP datagrams of `size` bytes from namespace ns; each leaves as one packet."""
    py_in_ns(ns, """
        import socket, sys
        dst, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(count):
            s.sendto(b"x" * size, (dst, port))
        """, dst, str(port), str(count), str(size))


class UdpSink:
    """A UDP socket in a namespace that does not read until told: its receive buffer overflows
    (drops with reason SOCKET_RCVBUFF). .drain() returns how many datagrams it had queued."""

    CODE = """
        import socket, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((sys.argv[1], int(sys.argv[2])))
        print("ready", flush=True)
        sys.stdin.readline()
        s.setblocking(False)
        n = 0
        while True:
            try:
                s.recv(65536)
            except BlockingIOError:
                break
            n += 1
        print(n, flush=True)
        """

    def __init__(self, ns: str, addr: str, port: int):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(self.CODE),
                                      addr, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            rig_fail("the UDP sink did not start")

    def drain(self) -> int:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        n = int(self.proc.stdout.readline())
        self.proc.wait(10)
        return n

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def listen_overflow(server_ns: str, client_ns: str, addr: str, port: int, clients: int) -> None:
    """A listener with backlog 1 that never accepts; `clients` connection attempts from the other
    namespace fill its queue, and the kernel counts ListenOverflows/ListenDrops for the rest."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-c", textwrap.dedent("""
        import socket, sys, time
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
        print("ready", flush=True); sys.stdin.readline()
        """), addr, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout.readline().strip() != "ready":
            rig_fail("the listener did not start")
        py_in_ns(client_ns, """
            import socket, sys
            socks = []
            for _ in range(int(sys.argv[3])):
                c = socket.socket(); c.setblocking(False)
                c.connect_ex((sys.argv[1], int(sys.argv[2])))
                socks.append(c)
            import time; time.sleep(1.0)
            """, addr, str(port), str(clients))
    finally:
        server.stdin.write("\n")
        server.stdin.flush()
        server.wait(10)


# --- an impaired link: TUN devices and a userspace relay (tests/rig/tun_relay.py) ------------
@dataclass
class ImpairedLink:
    a: Netns
    b: Netns
    relay: subprocess.Popen
    delay_ms: float
    drop_every: int
    addr_a: str = "10.78.0.1"
    addr_b: str = "10.78.0.2"


@pytest.fixture
def impaired_link(request):
    """Namespaces a and b joined through tun_relay.py; parametrize indirectly with
    (delay_ms one way, drop every Nth A->B TCP payload packet; 0: none)."""
    require_root()
    delay_ms, drop_every = getattr(request, "param", (20, 0))
    if not Path("/dev/net/tun").exists():
        rig_fail("/dev/net/tun is missing: the TUN relay cannot start")
    made = []
    relay = None
    try:
        a = make_netns("ta")
        made.append(a)
        b = make_netns("tb")
        made.append(b)
        relay = subprocess.Popen([sys.executable, str(Path(__file__).with_name("tun_relay.py")), a.name, b.name,
                                  str(delay_ms), str(drop_every)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        if relay.stdout.readline().strip() != "ready":
            rig_fail("the TUN relay did not start")
        yield ImpairedLink(a, b, relay, delay_ms, drop_every)
    finally:
        if relay is not None:
            relay.stdin.close()
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()
        for ns in made:
            remove_netns(ns)


class TcpSink:
    """A TCP server in a namespace that reads whatever it is sent until the peer closes."""

    def __init__(self, ns: str, addr: str, port: int):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent("""
            import socket, sys
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
            print("ready", flush=True)
            while True:
                c, _ = s.accept()
                while c.recv(1 << 16):
                    pass
                c.close()
            """), addr, str(port)], stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            rig_fail("the TCP sink did not start")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def tcp_send(ns: str, addr: str, port: int, nbytes: int, chunk: int = 16384, pause: float = 0.0,
             linger: float = 0.0) -> subprocess.Popen:
    """Start a client in ns that sends nbytes to addr:port (pausing between chunks), prints
    "sent" when the peer has acknowledged it all (its send queue is empty: no segment arrives
    after, so its smoothed RTT stays put), keeps the connection open and idle `linger` seconds
    more, then closes."""
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent("""
        import fcntl, socket, struct, sys, time
        TIOCOUTQ = 0x5411
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
        left, chunk, pause = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        while left > 0:
            n = min(chunk, left); c.sendall(b"x" * n); left -= n
            if pause: time.sleep(pause)
        while struct.unpack("i", fcntl.ioctl(c.fileno(), TIOCOUTQ, bytes(4)))[0]:
            time.sleep(0.01)
        print("sent", flush=True); time.sleep(float(sys.argv[6])); c.close()
        """), addr, str(port), str(nbytes), str(chunk), str(pause), str(linger)], stdout=subprocess.PIPE, text=True)


def ss_rtts(ns: str, port: int) -> list[float]:
    """srtt (seconds) of the namespace's established TCP sockets to port, as `ss -ti` shows it."""
    out = in_ns(ns, "ss", "-tin", "state", "established", f"dport = :{port}", check=False).stdout
    return [float(m) / 1000 for m in re.findall(r"\brtt:([0-9.]+)/", out)]


# --- a plain runc container with a network namespace of its own ------------------------------
@dataclass
class RuncContainer:
    id: str
    pid: int
    state: Path


def start_runc(root: Path, cid: str, own_netns: bool) -> RuncContainer:
    """A busybox `sleep` under runc; with own_netns its network namespace is new (only lo),
    without it the container shares the host's (hostNetwork)."""
    from tests.rig.containerd import BUSYBOX
    if shutil.which("runc") is None:
        rig_fail("runc is not installed (scripts/setup.sh installs it)")
    bundle = root / cid
    (bundle / "rootfs" / "bin").mkdir(parents=True)
    for d in ("proc", "dev", "sys", "tmp"):
        (bundle / "rootfs" / d).mkdir()
    shutil.copy(BUSYBOX, bundle / "rootfs" / "bin" / "busybox")
    os.symlink("busybox", bundle / "rootfs" / "bin" / "sleep")
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/sleep", "3600"]
    spec["linux"]["cgroupsPath"] = f"/vcheck-rig/{cid}"
    if not own_netns:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    (bundle / "config.json").write_text(json.dumps(spec))
    state = root / "state"
    with open(root / f"{cid}.log", "w+") as log:
        res = subprocess.run(["runc", "--root", str(state), "run", "-d", "--bundle", str(bundle), cid],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=30)
        if res.returncode != 0:
            log.seek(0)
            rig_fail("runc run -d failed", log.read())
    st = json.loads(subprocess.run(["runc", "--root", str(state), "state", cid], capture_output=True,
                                   text=True, check=True).stdout)
    return RuncContainer(cid, int(st["pid"]), state)


def stop_runc(c: RuncContainer) -> None:
    subprocess.run(["runc", "--root", str(c.state), "delete", "--force", c.id], capture_output=True)


def veth_into(ns: Netns, pid: int) -> tuple[str, str]:
    """A veth pair from namespace ns (10.79.0.1) into the network namespace of `pid` (10.79.0.2):
    (device in ns, device in the process's namespace)."""
    tag = secrets.token_hex(2)
    dev_a, dev_c = f"vna{tag}", f"vnc{tag}"
    ip("link", "add", dev_a, "netns", ns.name, "type", "veth", "peer", "name", dev_c, "netns", str(pid))
    enter = ["nsenter", "-t", str(pid), "-n"]
    for cmd in (["ip", "addr", "add", "10.79.0.2/24", "dev", dev_c], ["ip", "link", "set", dev_c, "up"],
                ["ip", "link", "set", "lo", "up"], ["sysctl", "-q", "-w", f"net.ipv6.conf.{dev_c}.disable_ipv6=1"]):
        res = subprocess.run(enter + cmd, capture_output=True, text=True)
        if res.returncode != 0:
            rig_fail(f"{' '.join(cmd)} in the container's namespace failed", res.stderr)
    ip("addr", "add", "10.79.0.1/24", "dev", dev_a, ns=ns.name)
    ip("link", "set", dev_a, "up", ns=ns.name)
    c_mac = json.loads(subprocess.run(enter + ["ip", "-j", "link", "show", "dev", dev_c], capture_output=True,
                                      text=True).stdout)[0]["address"]
    ip("neigh", "replace", "10.79.0.2", "lladdr", c_mac, "dev", dev_a, "nud", "permanent", ns=ns.name)
    subprocess.run(enter + ["ip", "neigh", "replace", "10.79.0.1", "lladdr", mac(ns.name, dev_a), "dev", dev_c,
                            "nud", "permanent"], check=True)
    return dev_a, dev_c


def link_stats_of_pid(pid: int, dev: str) -> dict[str, int]:
    out = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-j", "-s", "link", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)[0]["stats64"]
    return {f"{d}_{k}": v for d in ("rx", "tx") for k, v in data[d].items() if isinstance(v, int)}


# --- a qemu VM with a tap NIC, inside a namespace of the test's -------------------------------
@dataclass
class TapVM:
    name: str
    ns: Netns
    tap: str
    proc: subprocess.Popen
    guest_mac: str = "52:54:00:12:34:56"
    host_addr: str = "10.80.0.1"
    guest_addr: str = "10.80.0.2"


@pytest.fixture
def tap_vm():
    """A qemu guest (SeaBIOS, no disk: it never drives its NIC) with `-netdev tap` in a fresh
    namespace; the tap is addressed on the host side with a static neighbour for the guest, so
    packets sent to the guest's address go into the tap, where nobody drains them."""
    from tests.rig.kvm import _qemu
    qemu = _qemu()
    ns = make_netns("vm")
    tap = f"vchktap{secrets.token_hex(2)}"
    name = f"vchk-net-{secrets.token_hex(2)}"
    proc = subprocess.Popen(["ip", "netns", "exec", ns.name, qemu, "-accel", "kvm", "-name", f"guest={name},debug-threads=on",
                             "-m", "32", "-smp", "1", "-display", "none", "-monitor", "none", "-nodefaults",
                             "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                             "-device", "e1000,netdev=n0,mac=52:54:00:12:34:56"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    vm = TapVM(name, ns, tap, proc)
    try:
        deadline = time.monotonic() + 10
        while ip("link", "show", "dev", tap, ns=ns.name, check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                rig_fail("qemu with a tap NIC did not start", proc.stderr.read().decode(errors="replace")[-500:]
                         if proc.poll() is not None else "no tap after 10 s")
            time.sleep(0.05)
        in_ns(ns.name, "sysctl", "-q", "-w", f"net.ipv6.conf.{tap}.disable_ipv6=1")
        ip("addr", "add", f"{vm.host_addr}/24", "dev", tap, ns=ns.name)
        ip("link", "set", tap, "up", ns=ns.name)
        ip("neigh", "replace", vm.guest_addr, "lladdr", vm.guest_mac, "dev", tap, "nud", "permanent", ns=ns.name)
        yield vm
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        remove_netns(ns)


def run_under_bursts(cmd: list[str], cwd: Path, send, every: float = 0.3,
                     timeout: float = 120) -> subprocess.CompletedProcess:
    """Run cmd (a vcheck run) while `send()` makes traffic every `every` seconds until it ends:
    whenever its window begins (start-up varies with load and with bcc compiling), it sees some."""
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    deadline = time.monotonic() + timeout
    while run.poll() is None and time.monotonic() < deadline:
        send()
        time.sleep(every)
    out, err = run.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, run.returncode, out, err)
