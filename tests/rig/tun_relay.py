"""An impairment relay on TUN devices (this kernel has no netem): packets between two network
namespaces cross this process, which delays each by a set time and drops a set share, so RTT
and retransmissions have a known truth.

    python tun_relay.py NS_A NS_B DELAY_MS DROP_EVERY   (DROP_EVERY 0: no loss)

Makes tun device `vtun` in each namespace (10.78.0.1 in A, 10.78.0.2 in B, point to point),
prints "ready", then relays until stdin closes; prints "relayed N dropped M" at exit. Only
packets from A to B carrying TCP payload are dropped (every DROP_EVERY-th of them), so the
handshake and the ACKs always pass.
"""
from __future__ import annotations

import ctypes
import fcntl
import heapq
import os
import select
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def enter(ns: str) -> None:
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


def open_tun(ns: str, addr: str, peer: str) -> int:
    enter(ns)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"vtun", IFF_TUN | IFF_NO_PI))
    for cmd in (["ip", "addr", "add", addr, "peer", peer, "dev", "vtun"], ["ip", "link", "set", "vtun", "up"]):
        subprocess.run(cmd, check=True)
    os.set_blocking(fd, False)
    return fd


def tcp_payload(pkt: bytes) -> bool:
    if len(pkt) < 20 or pkt[0] >> 4 != 4 or pkt[9] != 6:
        return False
    ihl = (pkt[0] & 0xF) * 4
    total = struct.unpack("!H", pkt[2:4])[0]
    doff = (pkt[ihl + 12] >> 4) * 4 if len(pkt) > ihl + 12 else 0
    return total - ihl - doff > 0


def main() -> None:
    ns_a, ns_b, delay, drop_every = sys.argv[1], sys.argv[2], float(sys.argv[3]) / 1000, int(sys.argv[4])
    host = os.open("/proc/self/ns/net", os.O_RDONLY)
    fa = open_tun(ns_a, "10.78.0.1", "10.78.0.2")
    fb = open_tun(ns_b, "10.78.0.2", "10.78.0.1")
    libc.setns(host, CLONE_NEWNET)
    print("ready", flush=True)
    queue: list[tuple[float, int, int, bytes]] = []
    seq = relayed = dropped = payloads = 0
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 1.0
        ready, _, _ = select.select([fa, fb, sys.stdin], [], [], timeout)
        if sys.stdin in ready and not sys.stdin.readline():
            break
        for src, dst in ((fa, fb), (fb, fa)):
            if src not in ready:
                continue
            while True:
                try:
                    pkt = os.read(src, 65536)
                except BlockingIOError:
                    break
                if src == fa and drop_every and tcp_payload(pkt):
                    payloads += 1
                    if payloads % drop_every == 0:
                        dropped += 1
                        continue
                seq += 1
                heapq.heappush(queue, (time.monotonic() + delay, seq, dst, pkt))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, dst, pkt = heapq.heappop(queue)
            try:
                os.write(dst, pkt)
                relayed += 1
            except OSError:
                pass
    print(f"relayed {relayed} dropped {dropped}", flush=True)


if __name__ == "__main__":
    main()
