"""What vcheck's network BPF programs cost.

    .venv/bin/python benchmarks/bench_net.py [--seconds S] [--rounds R]

Prints loopback TCP throughput (one stream, the worst case for tcp:tcp_probe: an ACK per few
segments) and UDP datagram rate (64-byte datagrams, one sender, one reader) with:
  untraced      no program attached
  drops+retr    bpf/net_drops.c (skb:kfree_skb) and bpf/tcp_latency.c's retransmit hook
  +rtt          also tcp_latency.c's tcp_probe hook (an RTT histogram update per received segment)
Modes are interleaved round by round so drift hits all alike; medians and the ratio to
untraced are printed (targets: >= 0.97 with drops + retransmits, >= 0.95 with the RTT
histogram). Sender and receiver are separate processes. Also prints each hook's in-kernel cost
per event from the kernel's BPF statistics (kernel.bpf_stats_enabled, on only for that run),
a figure the machine's noise does not move. Run as root, on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vcheck.collectors.net_drops import DROPS_TRACEPOINTS, RX_SK_FLAGS  # noqa: E402
from vcheck.collectors.net_tcp import TCP_TRACEPOINTS, retransmit_flags  # noqa: E402
from vcheck.probes import BpfProgram  # noqa: E402

TCP = textwrap.dedent("""
    import socket, sys, time, os
    secs = float(sys.argv[1])
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
    port = srv.getsockname()[1]
    if os.fork() == 0:
        c = socket.create_connection(("127.0.0.1", port)); buf = b"x" * (1 << 17)
        try:
            while True: c.sendall(buf)
        except OSError: os._exit(0)
    conn, _ = srv.accept(); n = 0; t0 = time.monotonic(); end = t0 + secs
    while time.monotonic() < end:
        n += len(conn.recv(1 << 18))
    print(n / (time.monotonic() - t0)); conn.close()
""")

UDP = textwrap.dedent("""
    import socket, sys, time, os
    secs = float(sys.argv[1])
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(("127.0.0.1", 0))
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    port = r.getsockname()[1]
    if os.fork() == 0:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); d = b"x" * 64
        end = time.monotonic() + secs + 1
        while time.monotonic() < end: s.sendto(d, ("127.0.0.1", port))
        os._exit(0)
    r.settimeout(2); n = 0; t0 = time.monotonic(); end = t0 + secs
    while time.monotonic() < end:
        r.recv(2048); n += 1
    print(n / (time.monotonic() - t0))
""")

RETRANSMIT_ONLY = tuple(a for a in TCP_TRACEPOINTS if a.event == "tcp_retransmit_skb")


def measure(code: str, seconds: float) -> float:
    out = subprocess.run([sys.executable, "-c", code, str(seconds)], capture_output=True, text=True, timeout=60)
    return float(out.stdout.strip().splitlines()[-1])


def attached(mode: str) -> list[BpfProgram]:
    if mode == "untraced":
        return []
    tcp = TCP_TRACEPOINTS if mode == "+rtt" else RETRANSMIT_ONLY
    return [BpfProgram("net_drops.c", DROPS_TRACEPOINTS, RX_SK_FLAGS).load(),
            BpfProgram("tcp_latency.c", tcp, retransmit_flags()).load()]


def per_event_cost(seconds: float) -> list[str]:
    """ns per event of each network hook, from the kernel's own BPF run-time statistics
    (kernel.bpf_stats_enabled on for the measurement, restored after), during one TCP run."""
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats.read_text().strip()
    progs = attached("+rtt")
    try:
        stats.write_text("1")
        measure(TCP, seconds)
        measure(UDP, seconds)
        out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    finally:
        stats.write_text(old)
        for p in progs:
            p.close()
    import json
    lines = []
    for p in json.loads(out):
        if p.get("name") in ("vchk_tcp_probe", "vchk_kfree_skb", "vchk_tcp_retransmit") and p.get("run_cnt"):
            lines.append(f"  {p['name']:20s} {p['run_cnt']:>10d} events  {p['run_time_ns'] / p['run_cnt']:7.0f} ns/event")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_net: run as root")
    modes = ("untraced", "drops+retr", "+rtt")
    results: dict[str, dict[str, list[float]]] = {w: {m: [] for m in modes} for w in ("tcp", "udp")}
    for _ in range(args.rounds):
        for mode in modes:
            progs = attached(mode)
            try:
                results["tcp"][mode].append(measure(TCP, args.seconds))
                results["udp"][mode].append(measure(UDP, args.seconds))
            finally:
                for p in progs:
                    p.close()
    progs = attached("+rtt")
    paths = {p.path for p in progs}
    for p in progs:
        p.close()
    print(f"BPF path: {', '.join(sorted(p for p in paths if p))}; {args.rounds} rounds of {args.seconds:g} s")
    print("in-kernel cost per event (kernel.bpf_stats_enabled), one TCP and one UDP run:")
    for line in per_event_cost(args.seconds):
        print(line)
    for what, unit, scale in (("tcp", "MB/s", 1e6), ("udp", "kpps", 1e3)):
        base = statistics.median(results[what]["untraced"])
        for mode in modes:
            med = statistics.median(results[what][mode])
            print(f"  {what} loopback {mode:11s} {med / scale:10.1f} {unit}  ratio {med / base:.3f}")


if __name__ == "__main__":
    main()
