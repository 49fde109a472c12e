"""The default pack over a long live window (issue 23): peak memory and vcheck's own CPU inside the
window, as a cron job or a long conformance run would pay them.

    sudo .venv/bin/python benchmarks/bench_long_window.py [--window 3600]

Starts `vcheck run` on the shipped default pack (policies/node-conformance.yaml) with
`--window N --json`, then reads the process's /proc/PID/stat (utime + stime) and /proc/PID/status
(VmRSS) every 10 s while it samples. Prints:
  - in-window CPU: CPU seconds between the first and the last reading inside the window, divided
    by the seconds between them (start-up, BPF load and judging excluded; goal <= 0.5 % of one CPU);
  - RSS at 1/4, 1/2, 3/4 and the end of the window (growth per hour of samples), and the peak
    RSS of the whole process (ru_maxrss; goal <= 120 MB for 1 h at 1 s);
  - wall time over the window and the report's own cost line.
Run as root. What else runs on the machine shows in the exit and event rates the BPF programs
see, not in vcheck's CPU figure, which is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK     # utime, stime (fields 14, 15)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--window", type=int, default=3600, help="seconds (default 3600)")
    ap.add_argument("--keep", help="also copy the JSON report here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vcheck-long-") as tmp:
        report = Path(tmp) / "r.json"
        argv = [sys.executable, "-m", "vcheck.cli", "run", str(REPO / "policies" / "node-conformance.yaml"),
                "--window", f"{args.window}s", "--json", str(report), "-q"]
        started = time.monotonic()      # not time.time(): a wall-clock step within the hour would bend it
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp)
        readings: list[tuple[float, float, float, float]] = []      # (wall time, monotonic, cpu s, rss MB)
        next_reading = time.time() + 10
        while proc.poll() is None:
            time.sleep(0.2)
            if time.time() < next_reading:
                continue
            next_reading += 10
            c, r = cpu_seconds(proc.pid), rss_mb(proc.pid)
            if c is not None and r is not None:
                readings.append((time.time(), time.monotonic(), c, r))
        ended = time.monotonic()
        err = proc.stderr.read().decode(errors="replace")
        if not report.exists():
            print(f"vcheck run exited {proc.returncode} without a report: {err[-800:]}", file=sys.stderr)
            return 1
        data = json.loads(report.read_text())
        if args.keep:
            Path(args.keep).write_text(report.read_text())
    w0 = data["window"]["start"]
    w1 = w0 + data["window"]["observed"]
    inside = [r for r in readings if w0 + 5 <= r[0] <= w1 - 5]
    print(f"default pack, live window {args.window} s at the pack's 1 s interval, exit {proc.returncode}")
    if len(inside) >= 2:
        (_, ta, ca, _), (_, tb, cb, _) = inside[0], inside[-1]
        print(f"  in-window CPU: {cb - ca:.2f} s over {tb - ta:.0f} s = {100 * (cb - ca) / (tb - ta):.3f} % of one CPU"
              " (goal <= 0.5 %)")
        for q in (0.25, 0.5, 0.75, 1.0):
            t, _, _, r = inside[min(len(inside) - 1, int(q * (len(inside) - 1)))]
            print(f"  RSS at {t - w0:6.0f} s of the window: {r:6.1f} MB")
    cost = data.get("cost") or {}
    print(f"  peak RSS of the process: {cost.get('max_rss_bytes', 0) / 1e6:.1f} MB (goal <= 120 MB for 1 h at 1 s)")
    print(f"  wall - window: {ended - started - args.window:.1f} s (start-up, BPF load, judging, report)")
    print(f"  report: {report.name} {sum(len(o.get('values') or []) for o in data.get('observations') or [])} samples "
          f"in {len(data.get('observations') or [])} observations; cost: {cost.get('cpu_seconds')} s CPU in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
