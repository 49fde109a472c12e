"""The probes: load a BPF program from bpf/*.c, attach it to tracepoints, read its maps, and
detach it on every exit path.

Two ways to load the same source (bpf/vcheck_compat.h makes one source serve both):
* CO-RE ("core"): the object compiled once at set-up (vcheck/bpf_build.py) is loaded through
  libbpf (vcheck/libbpf.py, ctypes): no compiler in the process, tens of milliseconds, a few
  MB. Needs kernel BTF (/sys/kernel/btf/vmlinux, or $VCHECK_BTF) and an up-to-date object.
* bcc: the source compiled at run time by the distribution's bcc (clang in the process, about
  0.6 s and 100+ MB per program), with kernel headers. The path for kernels without BTF.
The path is chosen per program (``choose_path``): CO-RE when the kernel has BTF and the object
is built and current, else bcc; ``VCHECK_BPF_PATH=core|bcc`` forces one (tests, benchmarks).
``vcheck doctor`` shows the choice and its reason per program family.

Tracepoints only: many production kernels (this project's CI kernel among them) are built
without kprobes, and tracepoints are a stable ABI (bcc reads record layouts from tracefs,
CO-RE relocates them against the kernel's BTF), so programs keep working when the kernel
moves on.

Everything that can stop a program from loading is checked first, in the order an operator
would fix it, and reported as one actionable sentence (``preflight``); ``vcheck doctor``
shows the same findings as a table.

Programs are named ``vchk_*`` so that ``bpftool prog show`` makes a leak visible. A program
attached to a tracepoint lives only as long as the file descriptors of this process: close()
releases them, and so does the kernel if the process is killed.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from . import bpf_build
from .errors import Unavailable
from .histogram import Histogram

PROGRAM_PREFIX = "vchk_"
TRACEFS_MOUNTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
DEBUGFS = Path("/sys/kernel/debug")

# clang inside libbcc is not safe to drive from two threads at once, and collectors start
# concurrently: compilation is serialised (attachment and reading are not).
_COMPILE_LOCK = threading.Lock()
# libbpf parses the kernel's BTF (several MB) for each object it loads: one at a time keeps the
# peak memory of a run at one parse.
_CORE_LOAD_LOCK = threading.Lock()

PATH_ENV = "VCHECK_BPF_PATH"   # auto (default) | core | bcc
PATHS = ("core", "bcc")

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
_COUNTER_DEFINE = re.compile(r"^#define\s+COUNTER_(\w+)\s+(\d+)\b", re.M)
_DECLARE_HAVE = re.compile(r"^\s*VCHK_DECLARE_HAVE\((\w+)\)", re.M)

K = TypeVar("K")


class BpfUnavailable(Unavailable):
    """A BPF program cannot run on this node; .reason says why and what would fix it,
    .metrics which metrics that costs (None: all the caller's)."""


@dataclass(frozen=True)
class Attach:
    """One tracepoint -> one function of the program."""

    category: str
    event: str
    fn_name: str
    optional: bool = False   # absent on older kernels: the program is built without it
    raw: bool = False        # a raw tracepoint: the kernel's arguments, no formatted record
    raw_core: bool = False   # raw on the CO-RE path only (bcc attaches the classic tracepoint)

    @property
    def tracepoint(self) -> str:
        return f"{self.category}:{self.event}"


@dataclass(frozen=True)
class Finding:
    """One row of `vcheck doctor`: can this piece work here, and if not, what to do."""

    what: str
    ok: bool
    detail: str


# --- preflight --------------------------------------------------------------------------
def effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_privileges() -> Finding:
    caps = effective_caps()
    have = lambda c: bool(caps >> c & 1)  # noqa: E731
    if os.geteuid() == 0 and have(CAP_SYS_ADMIN):
        return Finding("privileges", True, "root")
    if have(CAP_SYS_ADMIN) or (have(CAP_BPF) and have(CAP_PERFMON)):
        return Finding("privileges", True, "CAP_BPF+CAP_PERFMON" if have(CAP_BPF) else "CAP_SYS_ADMIN")
    return Finding("privileges", False,
                   "not root and no CAP_BPF+CAP_PERFMON: run vcheck as root, or grant those "
                   "capabilities (the DaemonSet in deploy/ shows how)")


def import_bcc() -> Any:
    """The bcc module, or BpfUnavailable saying how to get the right one."""
    try:
        import bcc  # type: ignore[import-not-found]
    except ImportError as exc:
        raise BpfUnavailable(
            f"bcc is not importable ({exc}): install the distribution's python3-bpfcc "
            "(Debian/Ubuntu) or python3-bcc (Fedora/RHEL); the PyPI package named bcc is an "
            "unrelated project") from exc
    except OSError as exc:  # libbcc.so missing or broken
        raise BpfUnavailable(f"bcc's library failed to load ({exc}): reinstall libbpfcc") from exc
    if not hasattr(bcc, "BPF"):
        raise BpfUnavailable(f"the module named bcc at {getattr(bcc, '__file__', '?')} is not the BPF "
                             "Compiler Collection (PyPI's bcc is unrelated): pip uninstall bcc and "
                             "install the distribution's python3-bpfcc")
    return bcc


def check_bcc() -> Finding:
    try:
        bcc = import_bcc()
    except BpfUnavailable as exc:
        return Finding("bcc", False, exc.reason)
    return Finding("bcc", True, f"{Path(bcc.__file__).parent}")


def kernel_headers_dir() -> Path:
    return Path("/lib/modules") / platform.release() / "build"


def check_headers() -> Finding:
    build = kernel_headers_dir()
    if (build / "include").is_dir() or (build / "Makefile").exists():
        return Finding("kernel headers", True, str(build.resolve()))
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return Finding("kernel headers", True, "/sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS)")
    return Finding("kernel headers", False,
                   f"bcc looked for kernel headers at {build} and found none: install the "
                   "distribution's linux-headers package and link it there (scripts/setup.sh does)")


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:   # EACCES when not root: as good as absent for us
        return False


def tracefs_root() -> Path | None:
    for root in TRACEFS_MOUNTS:
        if _is_dir(root / "events"):
            return root
    return None


def ensure_tracefs() -> Finding:
    """bcc reads tracepoint formats from tracefs (and 0.26 from the debugfs path): mount them
    when root and missing, and say so."""
    mounted = []
    if os.geteuid() == 0:
        if not _is_dir(TRACEFS_MOUNTS[0] / "events") and _is_dir(TRACEFS_MOUNTS[0]):
            if _mount("tracefs", TRACEFS_MOUNTS[0]):
                mounted.append(f"mounted tracefs at {TRACEFS_MOUNTS[0]}")
        if not _is_dir(TRACEFS_MOUNTS[1] / "events") and _is_dir(DEBUGFS):
            if _mount("debugfs", DEBUGFS):
                mounted.append(f"mounted debugfs at {DEBUGFS}")
    root = tracefs_root()
    if root is None:
        mounted_at = _tracefs_mountpoint()
        if mounted_at:
            return Finding("tracefs", False, f"tracefs is mounted at {mounted_at} but not readable: "
                                             "run as root")
        return Finding("tracefs", False,
                       "tracefs is not mounted: as root, mount -t tracefs nodev /sys/kernel/tracing")
    return Finding("tracefs", True, "; ".join(mounted) or str(root))


def _tracefs_mountpoint() -> str | None:
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "tracefs":
                return parts[1]
    except OSError:
        pass
    return None


def _mount(fstype: str, where: Path) -> bool:
    res = subprocess.run(["mount", "-t", fstype, "nodev", str(where)], capture_output=True)
    return res.returncode == 0


def tracepoint_exists(category: str, event: str) -> bool:
    root = tracefs_root()
    try:
        return root is not None and (root / "events" / category / event / "format").exists()
    except OSError:
        return False


# --- which path ---------------------------------------------------------------------------
def check_btf() -> Finding:
    btf = bpf_build.btf_path()
    if btf.exists():
        return Finding("kernel BTF", True, str(btf))
    return Finding("kernel BTF", False, f"no kernel BTF at {btf} (kernel built without "
                                        "CONFIG_DEBUG_INFO_BTF): CO-RE objects cannot load")


def check_libbpf() -> Finding:
    from . import libbpf
    try:
        libbpf.lib()
    except (OSError, AttributeError) as exc:
        return Finding("libbpf", False, f"{libbpf.LIBBPF_SONAME} is not usable ({exc}): install the "
                                        "distribution's libbpf1 (1.0 or later)")
    return Finding("libbpf", True, libbpf.LIBBPF_SONAME)


def core_object(source: str, cflags: Sequence[str] = ()) -> tuple[Path | None, str | None]:
    """(object, None) when source with cflags has a current CO-RE object, else (None, why not)."""
    names = bpf_build.variant_flags(cflags)
    if names is None:
        return None, f"no CO-RE build of {source} with cflags {' '.join(cflags)} (only -DVCHK_* options are prebuilt)"
    obj = bpf_build.object_dir() / bpf_build.object_name(source, names)
    why = bpf_build.stale_reason(obj, source, names)
    return (None, why) if why else (obj, None)


@dataclass(frozen=True)
class PathChoice:
    path: str          # "core" or "bcc"
    reason: str        # why this path, in words for doctor and the report
    forced: bool       # by VCHECK_BPF_PATH: no fallback to the other path


def forced_path() -> str | None:
    want = os.environ.get(PATH_ENV, "").strip().lower()
    if want in ("", "auto"):
        return None
    if want not in PATHS:
        raise BpfUnavailable(f"{PATH_ENV}={want} is not one of auto, core, bcc")
    return want


def choose_path(source: str, cflags: Sequence[str] = ()) -> PathChoice:
    """CO-RE when the kernel has BTF, libbpf loads and the object is current; else bcc."""
    forced = forced_path()
    if forced == "bcc":
        return PathChoice("bcc", f"{PATH_ENV}=bcc", True)
    problem = None
    for check in (check_btf, check_libbpf):
        f = check()
        if not f.ok:
            problem = f.detail
            break
    obj = None
    if problem is None:
        obj, problem = core_object(source, cflags)
    if forced == "core":
        if problem:
            raise BpfUnavailable(f"{PATH_ENV}=core but {problem}")
        return PathChoice("core", f"{PATH_ENV}=core; {obj}", True)
    if problem:
        return PathChoice("bcc", problem, False)
    return PathChoice("core", f"kernel BTF and a current CO-RE object ({obj.name})", False)


# --- preflight --------------------------------------------------------------------------------
def preflight(attach: Sequence[Attach], path: str = "bcc") -> list[str]:
    """Notes worth reporting (a mount done); raises BpfUnavailable for the first blocking problem.
    bcc and kernel headers are checked only for the bcc path (importing bcc costs ~75 MB)."""
    notes = []
    checks = (check_privileges, check_bcc, ensure_tracefs, check_headers) if path == "bcc" else \
        (check_privileges, ensure_tracefs)
    for check in checks:
        finding = check()   # in order: a later check may need what an earlier one ensured
        if not finding.ok:
            raise BpfUnavailable(finding.detail)
        if finding.what == "tracefs" and finding.detail.startswith("mounted"):
            notes.append(finding.detail)
    for a in attach:
        if not a.optional and not tracepoint_exists(a.category, a.event):
            raise BpfUnavailable(f"tracepoint {a.tracepoint} does not exist on kernel {platform.release()}")
    return notes


# --- programs ---------------------------------------------------------------------------
def source_path(name: str) -> Path:
    """Absolute path of bpf/NAME as installed (bcc resolves relative paths against argv[0])."""
    return Path(str(resources.files("vcheck.bpf").joinpath(name)))


class _Table:
    """A map of either path, counting the entries user space reads (the run's cost)."""

    def __init__(self, table: Any, prog: "BpfProgram"):
        self._t, self._prog = table, prog

    def items(self) -> list:
        out = list(self._t.items())
        self._prog.entries_read += len(out)
        return out

    def values(self) -> list:
        out = list(self._t.values())
        self._prog.entries_read += len(out)
        return out

    def __getitem__(self, key: Any) -> Any:
        self._prog.entries_read += 1
        return self._t[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._t[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._t[key]

    def __iter__(self):
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


@dataclass
class BpfProgram:
    """One bpf/*.c file, loaded and attached once per run, through CO-RE or bcc.

    cost_sink, when given, receives the program's cost figures once, as it is closed."""

    source: str
    attach: Sequence[Attach]
    cflags: Sequence[str] = ()
    notes: list[str] = field(default_factory=list)
    cost_sink: Callable[[dict], None] | None = None
    _bpf: Any = None
    attached: list[str] = field(default_factory=list)
    path: str | None = None
    path_reason: str = ""
    load_seconds: float = 0.0
    entries_read: int = 0
    events: int = 0

    def load(self) -> "BpfProgram":
        t = time.monotonic()
        choice = choose_path(self.source, self.cflags)
        self.notes.extend(preflight(self.attach, choice.path))
        present = [a for a in self.attach if tracepoint_exists(a.category, a.event)]
        self.notes.extend(f"{a.tracepoint} is not on this kernel; built without it"
                          for a in self.attach if a not in present)
        core_failed: BpfUnavailable | None = None
        if choice.path == "core":
            try:
                self._load_core(present)
            except BpfUnavailable as exc:
                if choice.forced:
                    raise
                # a kernel or libbpf that refuses the object: bcc may still compile for it
                core_failed = exc
                choice = PathChoice("bcc", f"the CO-RE object did not load ({exc.reason})", False)
        if choice.path == "bcc":
            try:
                if core_failed is not None:
                    self.notes.extend(n for n in preflight(self.attach, "bcc") if n not in self.notes)
                self._load_bcc(present)
            except BpfUnavailable as exc:
                if core_failed is None:
                    raise
                raise BpfUnavailable(f"{choice.reason}; nor through bcc: {exc.reason}") from exc
            if not choice.forced:
                self.notes.append(f"{self.source} compiled by bcc, not loaded as CO-RE: {choice.reason}")
        self.path, self.path_reason = choice.path, choice.reason
        self.load_seconds = time.monotonic() - t
        return self

    def _haves(self, present: list[Attach]) -> dict[str, int]:
        """VCHK_HAVE(event) of the source: 1 for an event this load attaches, else 0."""
        attached = {a.event for a in present}
        return {name: int(name in attached) for name in declared_haves(self.source)}

    def _load_bcc(self, present: list[Attach]) -> None:
        bcc = import_bcc()
        path = source_path(self.source)
        cflags = [f"-I{path.parent}", *self.cflags,
                  *(f"-DHAVE_{a.event.upper()}" for a in present),
                  *(f"-DVCHK_HAVE_{name}={value}" for name, value in self._haves(present).items())]
        try:
            with _COMPILE_LOCK:
                self._bpf = bcc.BPF(src_file=str(path).encode(), cflags=cflags)
            for a in present:
                if a.raw:
                    self._bpf.attach_raw_tracepoint(tp=a.event.encode(), fn_name=a.fn_name.encode())
                else:
                    self._bpf.attach_tracepoint(tp=a.tracepoint.encode(), fn_name=a.fn_name.encode())
                self.attached.append(a.tracepoint)
        except Exception as exc:
            self.close()
            raise BpfUnavailable(_load_error(self.source, exc)) from exc

    def _load_core(self, present: list[Attach]) -> None:
        from . import libbpf
        obj_path, why = core_object(self.source, self.cflags)
        if obj_path is None:
            raise BpfUnavailable(why or f"no CO-RE object for {self.source}")
        btf = bpf_build.btf_path()
        custom = str(btf) if str(btf) != bpf_build.DEFAULT_BTF else None
        try:
            with _CORE_LOAD_LOCK:
                self._bpf = obj = libbpf.BpfObject(str(obj_path), btf_custom_path=custom)
                wanted = {a.fn_name for a in present}
                for name in obj.program_names():
                    obj.set_autoload(name, name in wanted)
                obj.set_rodata({f"vchk_have_{name}": value for name, value in self._haves(present).items()})
                obj.load()
            for a in present:
                if a.raw or a.raw_core:
                    obj.attach_raw_tracepoint(a.fn_name, a.event)
                else:
                    obj.attach_tracepoint(a.fn_name, a.category, a.event)
                self.attached.append(a.tracepoint)
        except libbpf.LibbpfError as exc:
            self.close()
            raise BpfUnavailable(_core_error(self.source, exc)) from exc

    def __getitem__(self, name: str) -> Any:
        return _Table(self._bpf[name.encode()], self)

    def clear(self, *tables: str) -> None:
        """Empty maps (the window starts: drop what start-up counted)."""
        for t in tables:
            self[t].clear()

    def counters(self, table: str = "counters") -> dict[str, int]:
        """An array of event counters by the names the source gives its indices
        (``#define COUNTER_UNPAIRED 1`` -> "unpaired")."""
        values = [c.value for c in self[table].values()]
        return {name: values[i] for name, i in counter_names(self.source).items() if i < len(values)}

    def histograms(self, group: Callable[[Any], K], scale: float = 1e-9) -> dict[K, Histogram]:
        """The ``hist`` and ``stats`` maps that vcheck_record() fills, as one Histogram per
        group(key): hist is keyed {k, slot}, stats by k; keys that group alike are merged."""
        out: dict[K, Histogram] = {}
        for key, n in self["hist"].items():
            h = out.setdefault(group(key.k), Histogram(scale=scale))
            h.buckets[key.slot] = h.buckets.get(key.slot, 0) + sum(_number(c) for c in _per_cpu(n))
        for key, v in self["stats"].items():
            h = out.setdefault(group(key), Histogram(scale=scale))
            for s in _per_cpu(v):
                if not s.count:
                    continue
                h.total += s.count
                h.sum += float(s.sum)
                h.max_exact = float(s.max) if h.max_exact is None else max(h.max_exact, float(s.max))
        return out

    def totals(self, table: str) -> list[tuple[Any, int]]:
        """(key, count) of a map of u64 counts, per-CPU maps summed over the CPUs."""
        return [(k, sum(_number(c) for c in _per_cpu(v))) for k, v in self[table].items()]

    def open_ring_buffer(self, table: str, callback: Callable[[Any, int, int], None]) -> None:
        """callback(ctx, data pointer, size) runs for each record, inside poll/consume."""
        def counted(ctx: Any, data: int, size: int) -> None:
            self.events += 1
            callback(ctx, data, size)
        self._bpf[table.encode()].open_ring_buffer(counted)

    def poll_ring_buffers(self, timeout_ms: int) -> None:
        """Wait up to timeout_ms for records, then deliver what arrived."""
        self._bpf.ring_buffer_poll(timeout_ms)

    def consume_ring_buffers(self) -> None:
        """Deliver every record already in the ring buffers, without waiting."""
        self._bpf.ring_buffer_consume()

    def cost(self) -> dict[str, Any]:
        """What this program cost the run: the figures ``store.bpf_cost()`` files."""
        variant = bpf_build.variant_flags(self.cflags)
        return {"program": self.source if not variant else f"{self.source}+{'+'.join(variant)}",
                "path": self.path, "path_reason": self.path_reason,
                "load_seconds": round(self.load_seconds, 4), "attached": len(self.attached),
                "entries_read": self.entries_read, "events": self.events}

    def close(self) -> None:
        """Detach and free everything; idempotent."""
        b, self._bpf = self._bpf, None
        if b is not None:
            try:
                b.cleanup()
            except Exception:  # detaching must go on for the remaining programs
                pass
            if self.cost_sink is not None and self.path is not None:   # loaded: file its cost once
                sink, self.cost_sink = self.cost_sink, None
                sink(self.cost())
        self.attached.clear()


def _per_cpu(value: Any) -> list:
    """A per-CPU map's value (a list under CO-RE, a ctypes array under bcc) as a list; any
    other value as a list of one."""
    return list(value) if isinstance(value, (list, ctypes.Array)) else [value]


def _number(value: Any) -> int:
    return int(getattr(value, "value", value))


@functools.lru_cache(maxsize=None)
def declared_haves(source: str) -> tuple[str, ...]:
    """The events bpf/SOURCE asks about with VCHK_DECLARE_HAVE(event)."""
    return tuple(_DECLARE_HAVE.findall(source_path(source).read_text()))


@functools.lru_cache(maxsize=None)
def counter_names(source: str) -> dict[str, int]:
    """``#define COUNTER_NAME i`` of bpf/SOURCE as {"name": i}: C and Python share one list."""
    return {m.group(1).lower(): int(m.group(2))
            for m in _COUNTER_DEFINE.finditer(source_path(source).read_text())}


def _load_error(source: str, exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.EPERM:
        return f"the kernel refused {source} (EPERM): missing CAP_BPF/CAP_PERFMON or locked down"
    return f"{source} failed to compile or attach: {first}"


def _core_error(source: str, exc: Exception) -> str:
    if getattr(exc, "errno", None) == errno.EPERM:
        return f"the kernel refused {source} (EPERM): missing CAP_BPF/CAP_PERFMON or locked down"
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    detail = lines[0] if lines else type(exc).__name__
    # libbpf's last warning names the program and the verifier's or relocation's verdict
    last = next((ln for ln in reversed(lines[1:]) if "libbpf:" in ln or "failed" in ln), "")
    return f"{source} (CO-RE) failed: {detail}" + (f" ({last.strip()[:300]})" if last else "")
