"""How vcheck's cost grows with the node and the fleet (issue 23): time and peak memory at three
or more sizes per dimension, and the fitted growth exponent.

    .venv/bin/python benchmarks/bench_scale.py [--only replay,items,checks,window,merge,html,cgroups,vms]
                                               [--quick] [--no-browser]

Dimensions (each size in its own process: the wall time and ru_maxrss of that process):
  replay   observations in a replayed report (1k/10k/100k cgroup series judged by one check):
           `vcheck run --replay R.json POLICY --json OUT`
  items    the same with one pytest item per observation (1k/5k/20k)
  checks   checks in one policy (100/1,000/5,000), replayed on a 60 s default-pack report
  window   the default pack replayed on generated reports of 60/600/3,600 s of 1 s samples
  merge    `vcheck merge --json` of 100/500/2,000 node reports (a failing 60 s default-pack run each)
  html     `vcheck report --html` of 100/1,000/5,000 items: the page's size, and (unless
           --no-browser) the time headless chromium takes to load it (selenium, as
           tests/integration/test_html.py)
  cgroups  one cgroup-layer sample with 100/1,000/5,000 real v1 cgroups made under
           /vcheck-bench-scale in each controller (removed after), all cgroup metrics and the
           cpu figure alone: microseconds per cgroup per sample
  cgroups-v2  the same on a cgroup2 tree mounted at a private directory (unmounted after)
  containers  one container-layer sample with 50/200/500 real runc containers made through a real
           containerd's CRI (benchmarks/scale_containers.py, which says how and also runs alone)
  vms      one hypervisor-layer sample with 4/16/64 real qemu/KVM guests of 8 vCPUs each (idle;
           benchmarks/scale_vms.py, which says how the guests are made and also runs alone)

The exponent k of time ~ size^k (and of memory) is a least-squares fit on log-log of the
*marginal* cost: each figure minus the same command at a trivial size (start-up, imports),
so a constant start-up does not flatten it. Run as root (cgroups), on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vcheck.histogram import Histogram  # noqa: E402

PY = sys.executable
DEFAULT_PACK = REPO / "policies" / "node-conformance.yaml"


# --- measuring ---------------------------------------------------------------------------

def timed(argv: list[str], cwd: Path, ok=(0, 1)) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stderr) of one process."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd,
                            env={**os.environ, "VCHECK_NODE_NAME": "bench"})
    err = proc.stderr.read().decode(errors="replace")
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code not in ok:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {code}: {err[-600:]}")
    return wall, ru.ru_maxrss / 1024, err


def exponent(sizes: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) on log(size); nan when a y is not positive."""
    pts = [(math.log(s), math.log(y)) for s, y in zip(sizes, ys) if y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else float("nan")


def table(title: str, unit: str, rows: list[tuple[int, float, float]], base: tuple[float, float] | None,
          extra: dict[int, str] | None = None) -> dict:
    """Print sizes, time, peak RSS and the fitted exponents; return them."""
    print(f"\n{title}")
    if base:
        print(f"  (marginal figures: minus the trivial size's {base[0]:.2f} s, {base[1]:.0f} MB)")
    print(f"  {unit:>10s} {'time':>10s} {'peak RSS':>10s}")
    for n, t, m in rows:
        print(f"  {n:>10,d} {t:9.2f}s {m:8.0f}MB" + (f"   {extra[n]}" if extra and n in extra else ""))
    bt, bm = base or (0.0, 0.0)
    sizes = [r[0] for r in rows]
    kt = exponent(sizes, [r[1] - bt for r in rows])
    km = exponent(sizes, [r[2] - bm for r in rows])
    def text(k: float) -> str:
        return "flat (no growth above the trivial size)" if math.isnan(k) else f"{k:.2f}"
    print(f"  growth exponent: time {text(kt)}, memory {text(km)}")
    return {"rows": rows, "time_exponent": kt, "memory_exponent": km}


# --- generated reports ----------------------------------------------------------------------

def _series(n: int, rng: random.Random, level: float, spread: float) -> dict:
    times = [float(i + 1) for i in range(n)]
    return {"times": times, "values": [max(0.0, level + rng.uniform(-spread, spread)) for _ in range(n)],
            "spans": [1.0] * n}


def _obs(metric: str, labels: dict, extra: dict | None = None, **kw) -> dict:
    d = {"metric": metric, "labels": labels, "info": {}, "times": [], "values": [], "spans": [],
         "histogram": None, "events": [], "notes": [], "gone_at": None, "gone_reason": "", "blind": ""}
    d.update(kw)
    d.update(extra or {})
    return d


def _hist(rng: random.Random, scale: float, n: int, median: float) -> dict:
    h = Histogram(scale=scale)
    for _ in range(n):
        h.record(max(1, int(rng.lognormvariate(math.log(median), 0.6))))
    return h.to_json()


def report(observations: list[dict], window: float, results: list | None = None, host: str = "bench") -> dict:
    return {"format": "vcheck.report", "version": 1, "vcheck": "0.1.0", "created": "2026-12-06T00:00:00Z",
            "exit_status": 1, "node": {"hostname": host, "kernel": "6.18", "boot_id": f"boot-{host}"},
            "policies": [], "window": {"start": 1.8e9, "planned": window, "observed": window, "interrupted": False},
            "unavailable": {}, "results": results or [], "observations": observations, "collector_notes": {}}


def default_pack_observations(seconds: int, seed: int = 1) -> list[dict]:
    """What the default pack observes on a 2-CPU node with one disk and four interfaces (the shape
    of a real 60 s run here), stretched to `seconds` of 1 s samples."""
    rng = random.Random(seed)
    out = []
    for m, level in (("psi.cpu.some", 1.0), ("psi.memory.full", 0.1), ("psi.io.full", 0.5)):
        out.append(_obs(m, {}, **_series(seconds, rng, level, 0.5)))
    for m, level in (("cpu.steal", 1.0), ("net.softnet.drops", 0.0), ("net.softnet.squeezes", 0.0)):
        for labels in ({"cpu": "0"}, {"cpu": "1"}, {}):
            out.append(_obs(m, labels, **_series(seconds, rng, level, level)))
    out.append(_obs("block.latency.mean", {"device": "vda"}, **_series(seconds, rng, 0.001, 0.0005)))
    for iface in ("lo", "eth0", "ifb0", "ifb1"):
        out.append(_obs("net.rx.drops", {"interface": iface}, **_series(seconds, rng, 0.0, 0.0)))
    out.append(_obs("net.tcp.listen_overflows", {}, **_series(seconds, rng, 0.0, 0.0)))
    out.append(_obs("net.tcp.retrans_share", {}, **_series(seconds, rng, 0.1, 0.1)))
    out.append(_obs("net.drops", {}, **_series(seconds, rng, 2.0, 2.0)))
    for i, reason in enumerate(("NO_SOCKET", "QUEUE_PURGE", "QDISC_DROP", "NOT_SPECIFIED") * 4):
        out.append(_obs("net.drops", {"netns": str(4026532000 + i), "reason": reason},
                        info={"owner": "pid 1 (bench)", "reason_code": reason, "functions": "f"},
                        **_series(seconds, rng, 0.5, 0.5)))
    for op in ("read", "write", "flush"):
        out.append(_obs("block.latency", {"device": "vda", "op": op}, info={"source": "bpf"},
                        histogram=_hist(rng, 1e-9, 2000, 200_000)))
    for labels in ({"cpu": "0"}, {"cpu": "1"}, {}):
        out.append(_obs("sched.runq.latency", labels, info={"source": "bpf"},
                        histogram=_hist(rng, 1e-9, 5000, 20_000)))
    return out


def cgroup_observations(n: int, seconds: int = 60, seed: int = 2) -> list[dict]:
    """n host cgroups' CPU series (one item each with `per: cgroup`); one in 50 over 90 %."""
    rng = random.Random(seed)
    return [_obs("cgroup.cpu", {"cgroup": f"/bench.slice/cg{i}"}, info={"unit": "bench.slice"},
                 **_series(seconds, rng, 95.0 if i % 50 == 0 else 20.0, 3.0)) for i in range(n)]


CGROUP_POLICY = "policy: scale\nchecks:\n  - {id: cg-cpu, metric: cgroup.cpu, per: cgroup, expect: '< 90%'}\n"
# one item judging every cgroup (what a dense node's report is: many observations, few checks)
SELECT_POLICY = ("policy: scale\nchecks:\n  - {id: cg-cpu, metric: cgroup.cpu, select: {cgroup: '/bench.slice/*'}, "
                 "expect: '< 90%'}\n")


def many_checks_policy(n: int) -> str:
    """n checks on the default pack's metrics, each its own id and threshold."""
    kinds = [("cpu.steal", "cpu", "< {}%"), ("psi.cpu.some", None, "mean < {}%"),
             ("net.rx.drops", "interface", "max < {}"), ("block.latency", "device", "p99 < {}ms"),
             ("sched.runq.latency", None, "p99 < {}ms")]
    lines = ["policy: many", "checks:"]
    for i in range(n):
        metric, per, expect = kinds[i % len(kinds)]
        per_text = f", per: {per}" if per else ""
        lines.append(f"  - {{id: c{i}, metric: {metric}{per_text}, expect: '{expect.format(10 + i % 90)}'}}")
    return "\n".join(lines) + "\n"


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def generated(kind: str, n: int, path: Path) -> Path:
    """A generated report, made in a child process: a process's peak RSS carries over to the
    processes it starts (Linux keeps the hiwater mark across fork and exec), so this one must
    never hold a big report itself."""
    subprocess.run([PY, __file__, "--make-report", kind, str(n), str(path)], check=True, cwd=REPO)
    return path


def make_report(kind: str, n: int, path: str) -> None:
    if kind == "cgroups":
        write(Path(path), report(cgroup_observations(n), 60.0))
    elif kind == "pack":
        write(Path(path), report(default_pack_observations(n), float(n)))
    elif kind == "empty":
        write(Path(path), report([], float(n)))
    else:
        raise ValueError(kind)


def vcheck(*args: str) -> list[str]:
    return [PY, "-m", "vcheck.cli", *args]


# --- dimensions ---------------------------------------------------------------------------

def bench_replay(tmp: Path, sizes: list[int], per_item: bool) -> dict:
    policy = write(tmp / "cg.yaml", CGROUP_POLICY if per_item else SELECT_POLICY)
    def one(n: int) -> tuple[float, float]:
        src = generated("cgroups", n, tmp / f"replay-{n}.json")
        t, m, _ = timed(vcheck("run", "--replay", str(src), str(policy), "--json", str(tmp / f"out-{n}.json")), tmp)
        size = (tmp / f"replay-{n}.json").stat().st_size
        extra[n] = f"report {size / 1e6:.0f} MB"
        os.unlink(src)
        os.unlink(tmp / f"out-{n}.json")
        return t, m
    extra: dict[int, str] = {}
    base = one(1)
    rows = [(n, *one(n)) for n in sizes]
    if per_item:
        return table("items from a replayed report (cgroup.cpu `per: cgroup`: one pytest item per observation, "
                     "60 samples each; `vcheck run --replay R.json POLICY --json OUT`)", "items", rows, base, extra)
    return table("observations in a replayed report (cgroup.cpu of n cgroups, 60 samples each, judged by one check "
                 "with `select:`; `vcheck run --replay R.json POLICY --json OUT`)", "obs", rows, base, extra)


def bench_checks(tmp: Path, sizes: list[int]) -> dict:
    src = generated("pack", 60, tmp / "pack-60.json")
    def one(n: int) -> tuple[float, float]:
        policy = write(tmp / f"many-{n}.yaml", many_checks_policy(n))
        t, m, _ = timed(vcheck("run", "--replay", str(src), str(policy), "--json", str(tmp / f"c-{n}.json")), tmp)
        return t, m
    base = one(1)
    rows = [(n, *one(n)) for n in sizes]
    return table("checks in one policy (replayed on a 60 s default-pack report; load, collect, judge, JSON)",
                 "checks", rows, base)


def bench_window(tmp: Path, sizes: list[int]) -> dict:
    def one(n: int, empty: bool = False) -> tuple[float, float]:
        src = generated("empty" if empty else "pack", n, tmp / f"pack-{n}.json")
        t, m, _ = timed(vcheck("run", "--replay", str(src), str(DEFAULT_PACK), "--window", f"{n}s",
                               "--json", str(tmp / f"w-{n}.json")), tmp)
        return t, m
    base = one(60, empty=True)    # the trivial size: a report that observed nothing
    rows = [(n, *one(n)) for n in sizes]
    live = {}
    for n in sizes:      # what a live run holds: the store filed sample by sample, then the report
        out = subprocess.run([PY, __file__, "--store-child", str(n)], capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            raise RuntimeError(f"store child ({n}) exited {out.returncode}: {out.stderr[-600:]}")
        live[n] = json.loads(out.stdout.strip().splitlines()[-1])
    extra = {n: f"live store + report: {live[n]['rss']:.0f} MB peak, {live[n]['seconds']:.2f} s "
                f"({live[n]['samples']:,} samples filed one by one)" for n in sizes}
    print("  (a live run's extra memory for a longer window = the live-store figure's growth over 60 s; "
          "add it to the default pack's own peak from benchmarks/bench_cost.py --only run)")
    return table("window length: the default pack replayed on 1 s samples (`vcheck run --replay R.json "
                 "--window Ns`)", "seconds", rows, base, extra)


def bench_merge(tmp: Path, sizes: list[int]) -> dict:
    # the node's own verdicts: a replay of the generated run
    src = generated("pack", 60, tmp / "node.json")
    judged = tmp / "node-judged.json"
    timed(vcheck("run", "--replay", str(src), str(DEFAULT_PACK), "--json", str(judged)), tmp)
    data = json.loads(judged.read_text())
    def one(n: int) -> tuple[float, float]:
        d = tmp / f"fleet-{n}"
        d.mkdir(exist_ok=True)
        paths = []
        for i in range(n):
            data["node"]["hostname"], data["node"]["boot_id"] = f"node{i}", f"boot{i}"
            paths.append(str(write(d / f"node{i}.json", data)))
        t, m, _ = timed(vcheck("merge", *paths, "--json", str(tmp / f"fleet-{n}.json"), "--max-failing-nodes", "100%"),
                        tmp)
        for p in paths:
            os.unlink(p)
        return t, m
    base = one(2)
    rows = [(n, *one(n)) for n in sizes]
    size = len(judged.read_bytes())
    return table(f"reports in a merge (each a judged 60 s default-pack report of {size / 1024:.0f} KiB; "
                 "`vcheck merge R1.json ... --json OUT`)", "reports", rows, base)


def open_in_browser(paths: list[Path]) -> dict[Path, float] | str:
    """Seconds headless chromium takes to load each page (document complete), or why not."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return "selenium is not importable"
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,2000",
              "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>", "--host-resolver-rules=MAP * ~NOTFOUND"):
        opts.add_argument(a)
    try:
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    except (WebDriverException, OSError) as exc:
        return f"headless chromium could not start: {(str(exc).strip().splitlines() or ['?'])[0]}"
    try:
        driver.set_page_load_timeout(300)
        out = {}
        for p in paths:
            driver.get("about:blank")
            t = time.perf_counter()
            driver.get(p.as_uri())     # returns when the document is complete (page load strategy normal)
            # and the page's own script has laid out the table (pytest-html builds rows in JS)
            driver.execute_script("return document.body.getBoundingClientRect().height")
            out[p] = time.perf_counter() - t
        return out
    finally:
        driver.quit()


def bench_html(tmp: Path, sizes: list[int], browser: bool) -> dict:
    policy = write(tmp / "cg.yaml", CGROUP_POLICY)
    pages: dict[int, Path] = {}
    def one(n: int) -> tuple[float, float]:
        src = generated("cgroups", n, tmp / f"h-src-{n}.json")
        judged = tmp / f"h-{n}.json"
        timed(vcheck("run", "--replay", str(src), str(policy), "--json", str(judged)), tmp)
        page = pages[n] = tmp / f"h-{n}.html"
        t, m, _ = timed(vcheck("report", str(judged), "--html", str(page)), tmp, ok=(0, 1))
        return t, m
    base = one(1)
    rows = [(n, *one(n)) for n in sizes]
    extra = {n: f"page {pages[n].stat().st_size / 1e6:.1f} MB" for n in sizes}
    if browser:
        got = open_in_browser([pages[n] for n in sizes])
        if isinstance(got, str):
            print(f"  (browser not measured: {got})")
        else:
            for n in sizes:
                extra[n] += f", opens in headless chromium in {got[pages[n]]:.2f} s"
    return table("items in an HTML page (`vcheck report R.json --html OUT`; every item has its evidence)",
                 "items", rows, base, extra)


CG_TOP = "vcheck-bench-scale"


def bench_cgroups(sizes: list[int], rounds: int, v2: bool = False) -> dict:
    if v2:
        print("\ncgroups, v2: the same on a cgroup2 tree mounted privately (on this v1 node it holds no "
              "controllers: cpu.stat and the PSI files are what there is to read)")
    else:
        print("\ncgroups: one sample of the host cgroup layer (real v1 cgroups under "
              f"/{CG_TOP}, every controller; each size in its own process)")
    print(f"  {'cgroups':>10s} {'walk':>8s} {'sample (all metrics)':>22s} {'CPU':>8s} {'kernel':>8s} "
          f"{'sample (cgroup.cpu)':>21s} {'CPU':>7s} {'kernel':>7s} {'peak RSS':>9s}")
    print("  (per cgroup: the sample's wall time, its CPU time, and the kernel's part: the same open files "
          "read by pread alone, nothing parsed)")
    rows, per_all, per_cpu, cpu_all = [], [], [], []
    for n in sizes:
        out = subprocess.run([PY, __file__, "--cgroup-child", str(n), "--rounds", str(rounds), *(["--v2"] if v2 else [])],
                             capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            raise RuntimeError(f"cgroup child ({n}) exited {out.returncode}: {out.stderr[-800:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        us = {k: r[k] / r["sampled"] * 1e6 for k in ("all", "all_cpu", "cpu", "cpu_cpu")}
        us.update({k: r[k] * 1e6 for k in ("all_floor", "cpu_floor")})
        print(f"  {r['sampled']:>10,d} {r['walk'] * 1e3:6.0f}ms {r['all'] * 1e3:8.1f}ms {us['all']:6.1f}us/cg "
              f"{us['all_cpu']:6.1f}us {us['all_floor']:6.1f}us {r['cpu'] * 1e3:8.1f}ms {us['cpu']:5.1f}us/cg "
              f"{us['cpu_cpu']:5.1f}us {us['cpu_floor']:5.1f}us {r['rss']:7.0f}MB" +
              (f"   (all metrics: {r['all_by_path']:,} files past the descriptor budget, read by path)"
               if r["all_by_path"] else ""))
        rows.append((r["sampled"], r["all"], r["rss"]))
        per_all.append(r["all"])
        per_cpu.append(r["cpu"])
        cpu_all.append(r["all_cpu"])
    sizes_seen = [r[0] for r in rows]
    print(f"  growth exponent: sample (all metrics) {exponent(sizes_seen, per_all):.2f} (CPU time "
          f"{exponent(sizes_seen, cpu_all):.2f}), sample (cgroup.cpu) {exponent(sizes_seen, per_cpu):.2f}")
    print(f"  kernel's least per file (one file type at a time, {sizes_seen[-1]:,} cgroups), us: " +
          ", ".join(f"{k} {v * 1e6:.2f}" for k, v in sorted(r["all_files"].items(), key=lambda kv: -kv[1])))
    return {"rows": rows}


def cgroup_child(n: int, rounds: int, v2: bool = False) -> None:
    """One size, in its own process: make n cgroups, time the walk and the samples, remove them.
    v2: on a cgroup2 hierarchy mounted at a private directory (unmounted after)."""
    if not v2:
        return _cgroup_child(n, rounds, None)
    mount = Path(tempfile.mkdtemp(prefix="vcheck-scale-cg2-"))
    subprocess.run(["mount", "-t", "cgroup2", "none", str(mount)], check=True)
    try:
        return _cgroup_child(n, rounds, mount)
    finally:
        top = mount / CG_TOP
        if top.is_dir():
            for d in top.iterdir():
                if d.is_dir():
                    d.rmdir()
            top.rmdir()
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def _cgroup_child(n: int, rounds: int, v2_mount: Path | None) -> None:
    import statistics

    from tests.rig.common import remove_cgroup_tree
    from vcheck.catalog import Catalog
    from vcheck.collectors.base import CollectContext, CollectRequest
    from vcheck.collectors.cgroups import CGROUP_METRICS, V1_CONTROLLERS, CgroupCollector, cgroup_mode
    from vcheck.observations import ObservationStore
    from vcheck.policy import load_policy_bytes
    from vcheck.procfs import HostRoots
    from scale_containers import kernel_floor
    import vcheck.collectors.cgroups as cgroups_module
    read_by_path = cgroups_module.by_path

    roots = HostRoots() if v2_mount is None else HostRoots(cgroup=v2_mount)
    v2 = cgroup_mode(roots.cgroup) == "v2"
    bases = [roots.cgroup] if v2 else [roots.cgroup / c for c in V1_CONTROLLERS]
    policy = load_policy_bytes(f"policy: b\nchecks:\n  - {{id: c, metric: cgroup.cpu, per: cgroup, "
                               f"select: {{cgroup: '/{CG_TOP}/*'}}, expect: '< 100%'}}\n".encode(), "bench", Catalog())
    for base in bases:
        for i in range(n):
            (base / CG_TOP / f"cg{i}").mkdir(parents=True, exist_ok=True)
    try:
        figures = {}
        for label, metrics in (("all", frozenset(m.name for m in CGROUP_METRICS)), ("cpu", frozenset({"cgroup.cpu"}))):
            req = CollectRequest(metrics, 60.0, 1.0, selections=[policy.checks[0].select])
            c = CgroupCollector(CollectContext(roots, ObservationStore()), req)
            t = time.perf_counter()
            c.start()
            figures["walk"] = min(figures.get("walk", 1e9), time.perf_counter() - t)
            c.begin(time.monotonic())
            samples, cpu, by_path = [], [], []
            cgroups_module.by_path = lambda path: by_path.append(path) or read_by_path(path)   # counted
            for k in range(1, rounds + 1):
                time.sleep(0.1)
                t, u = time.perf_counter(), time.thread_time()
                c.sample(float(k))
                samples.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - u)
            cgroups_module.by_path = read_by_path
            c.close()
            # the kernel's part: the same files read by pread alone, in sample order
            floor, per_file, _ = kernel_floor([p for p in c._plans.values() if p is not None], rounds, 0.1)
            figures[label] = statistics.median(samples)
            figures[f"{label}_cpu"], figures[f"{label}_files"] = statistics.median(cpu), per_file
            figures[f"{label}_floor"] = floor
            figures[f"{label}_by_path"] = len(by_path) // rounds     # files past the descriptor budget
            figures["sampled"] = len(c._paths)
        figures["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(figures))
    finally:
        if v2_mount is None:
            remove_cgroup_tree(CG_TOP)


def store_child(seconds: int) -> None:
    """The default pack's observations of a `seconds` window filed as collectors file them
    (add_sample, one at a time), then the JSON report built and encoded: ru_maxrss."""
    from vcheck.observations import ObservationStore
    from vcheck.report.json_report import RunFacts, build_report, dumps

    t = time.perf_counter()
    store = ObservationStore()
    shapes = default_pack_observations(seconds)
    n = 0
    for k in range(seconds):
        for o in shapes:
            if o["values"]:
                store.add_sample(o["metric"], o["labels"], o["times"][k], o["values"][k], 1.0, o["info"] or None)
                n += 1
    for o in shapes:
        if o["histogram"] is not None:
            store.series(o["metric"], o["labels"], o["info"])
    del shapes
    size = len(dumps(build_report([], RunFacts(store=store), 0)))
    print(json.dumps({"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": time.perf_counter() - t, "samples": n, "bytes": size}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="replay,items,checks,window,merge,html,cgroups,cgroups-v2,containers,vms")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cgroup-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--v2", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--make-report", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_report:
        make_report(args.make_report[0], int(args.make_report[1]), args.make_report[2])
        return 0
    if args.store_child is not None:
        store_child(args.store_child)
        return 0
    if args.cgroup_child is not None:
        cgroup_child(args.cgroup_child, args.rounds, args.v2)
        return 0
    only = set(args.only.split(","))
    q = args.quick
    with tempfile.TemporaryDirectory(prefix="vcheck-scale-") as t:
        tmp = Path(t)
        if "replay" in only:
            bench_replay(tmp, [100, 1000, 4000] if q else [1000, 10_000, 100_000], per_item=False)
        if "items" in only:
            bench_replay(tmp, [100, 1000, 4000] if q else [1000, 5000, 20_000], per_item=True)
        if "checks" in only:
            bench_checks(tmp, [50, 200, 500] if q else [100, 1000, 5000])
        if "window" in only:
            bench_window(tmp, [60, 300, 600] if q else [60, 600, 3600])
        if "merge" in only:
            bench_merge(tmp, [20, 50, 100] if q else [100, 500, 2000])
        if "html" in only:
            bench_html(tmp, [50, 200, 500] if q else [100, 1000, 5000], not args.no_browser)
    if "cgroups" in only:
        bench_cgroups([50, 200, 500] if q else [100, 1000, 5000], args.rounds)
    if "cgroups-v2" in only:
        bench_cgroups([50, 200, 500] if q else [100, 1000, 5000], args.rounds, v2=True)
    if "containers" in only:
        from scale_containers import bench as bench_containers
        bench_containers([10, 25, 50] if q else [50, 200, 500], args.rounds)
    if "vms" in only:
        from scale_vms import bench_vms
        bench_vms([2, 4, 8] if q else [4, 16, 64], args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
