"""vcheck's own cost, stated in every report: a tool that runs on every node of a fleet every
few minutes, as root, has to say what it takes (CPU, memory, time to its first sample, BPF)."""
from __future__ import annotations

import os
import resource
import time
from typing import Any

from .procfs import HostRoots, read_text


def process_age() -> float | None:
    """Seconds since this process started: CLOCK_BOOTTIME now minus /proc/self/stat's start
    time (both since boot, so no whole-second boot time rounds it)."""
    try:
        fields = read_text(HostRoots().proc / "self" / "stat").rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")       # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started


def run_cost(startup: float | None, bpf: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """cpu_seconds (user+system, all threads), max_rss_bytes, startup_seconds (process start to
    the window's first sample: the process's age when the window opened, taken then, so a
    wall-clock step during a long window cannot bend it) and the BPF programs' load figures."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_seconds": round(ru.ru_utime + ru.ru_stime, 3), "max_rss_bytes": ru.ru_maxrss * 1024,
            "startup_seconds": round(startup, 3) if startup is not None else None, "bpf": list(bpf or [])}


def summary_line(cost: dict[str, Any]) -> str:
    parts = [f"{cost['cpu_seconds']:.2f} s CPU", f"{cost['max_rss_bytes'] / 1e6:.0f} MB max RSS"]
    if cost.get("startup_seconds") is not None:
        parts.append(f"first sample {cost['startup_seconds']:.2f} s after start")
    for b in cost.get("bpf") or []:
        parts.append(f"{b.get('program')} via {b.get('path')} in {b.get('load_seconds', 0):.2f} s")
    return "vcheck's own cost: " + ", ".join(parts)
