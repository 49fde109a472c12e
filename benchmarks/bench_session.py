"""Wall time of one `vcheck run` whose checks ask for windows of 5 s, 5 s and 3 s.

The engine samples once, concurrently, for the longest window: the run should take about 5 s
plus start-up (target: wall / longest window <= 1.2), not 13 s.

    .venv/bin/python benchmarks/bench_session.py [--repeat N]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICY = """\
policy: bench-windows
checks:
  - {id: steal, metric: cpu.steal, per: cpu, expect: "< 100%", window: 5s}
  - {id: user, metric: cpu.user, expect: "<= 100%", window: 5s}
  - {id: psi, metric: psi.cpu.some, expect: "<= 100%", window: 3s}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        policy = Path(d) / "bench.yaml"
        policy.write_text(POLICY)
        walls = []
        for _ in range(args.repeat):
            t = time.monotonic()
            p = subprocess.run([sys.executable, "-m", "vcheck.cli", "run", str(policy)], capture_output=True,
                               text=True)
            walls.append(time.monotonic() - t)
            if p.returncode != 0:
                print(p.stdout, p.stderr, file=sys.stderr)
                return 1
    longest = 5.0
    med = statistics.median(walls)
    print(f"checks with windows 5s, 5s, 3s (sum 13s); {args.repeat} runs")
    print(f"wall time: median {med:.2f}s, min {min(walls):.2f}s, max {max(walls):.2f}s")
    print(f"ratio to the longest window: {med / longest:.3f} (target <= 1.2)")
    return 0 if med / longest <= 1.2 else 2


if __name__ == "__main__":
    sys.exit(main())
