"""The BPF engine: compile a program from bpf/*.c once through bcc, attach it to tracepoints,
and detach it on every exit path.

Tracepoints only: many production kernels (this project's CI kernel among them) are built
without kprobes, and tracepoints are a stable ABI whose record layout bcc reads from tracefs
at compile time, so programs keep working when the installed kernel headers are older than
the running kernel.

Everything that can stop a program from loading is checked first, in the order an operator
would fix it, and reported as one actionable sentence (``preflight``); ``vcheck doctor``
shows the same findings as a table.

Programs are named ``vchk_*`` so that ``bpftool prog show`` makes a leak visible. A program
attached to a tracepoint lives only as long as the file descriptors of this process: close()
releases them, and so does the kernel if the process is killed.
"""
from __future__ import annotations

import errno
import functools
import os
import platform
import re
import subprocess
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from .errors import Unavailable
from .histogram import Histogram

PROGRAM_PREFIX = "vchk_"
TRACEFS_MOUNTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
DEBUGFS = Path("/sys/kernel/debug")

# clang inside libbcc is not safe to drive from two threads at once, and collectors start
# concurrently: compilation is serialised (attachment and reading are not).
_COMPILE_LOCK = threading.Lock()

CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
_COUNTER_DEFINE = re.compile(r"^#define\s+COUNTER_(\w+)\s+(\d+)\b", re.M)

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


def preflight(attach: Sequence[Attach]) -> list[str]:
    """Notes worth reporting (a mount done); raises BpfUnavailable for the first blocking problem."""
    notes = []
    for check in (check_privileges, check_bcc, ensure_tracefs, check_headers):
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
    return Path(str(resources.files("vcheck.bpfsrc").joinpath(name)))


@dataclass
class BpfProgram:
    """One bpf/*.c file, compiled and attached once per run."""

    source: str
    attach: Sequence[Attach]
    cflags: Sequence[str] = ()
    notes: list[str] = field(default_factory=list)
    _bpf: Any = None
    attached: list[str] = field(default_factory=list)

    def load(self) -> "BpfProgram":
        self.notes.extend(preflight(self.attach))
        bcc = import_bcc()
        path = source_path(self.source)
        present = [a for a in self.attach if tracepoint_exists(a.category, a.event)]
        for a in self.attach:
            if a not in present:
                self.notes.append(f"{a.tracepoint} is not on this kernel; built without it")
        cflags = [f"-I{path.parent}", *self.cflags,
                  *(f"-DHAVE_{a.event.upper()}" for a in present)]
        try:
            with _COMPILE_LOCK:
                self._bpf = bcc.BPF(src_file=str(path).encode(), cflags=cflags)
            for a in present:
                self._bpf.attach_tracepoint(tp=a.tracepoint.encode(), fn_name=a.fn_name.encode())
                self.attached.append(a.tracepoint)
        except Exception as exc:
            self.close()
            raise BpfUnavailable(_load_error(self.source, exc)) from exc
        return self

    def __getitem__(self, name: str) -> Any:
        return self._bpf[name.encode()]

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
            h.buckets[key.slot] = h.buckets.get(key.slot, 0) + n.value
        for key, s in self["stats"].items():
            h = out.setdefault(group(key), Histogram(scale=scale))
            h.total += s.count
            h.sum += float(s.sum)
            h.max_exact = float(s.max) if h.max_exact is None else max(h.max_exact, float(s.max))
        return out

    def open_ring_buffer(self, table: str, callback: Callable[[Any, int, int], None]) -> None:
        """callback(ctx, data pointer, size) runs for each record, inside poll/consume."""
        self[table].open_ring_buffer(callback)

    def poll_ring_buffers(self, timeout_ms: int) -> None:
        """Wait up to timeout_ms for records, then deliver what arrived."""
        self._bpf.ring_buffer_poll(timeout_ms)

    def consume_ring_buffers(self) -> None:
        """Deliver every record already in the ring buffers, without waiting."""
        self._bpf.ring_buffer_consume()

    def close(self) -> None:
        """Detach and free everything; idempotent."""
        b, self._bpf = self._bpf, None
        if b is not None:
            try:
                b.cleanup()
            except Exception:  # detaching must go on for the remaining programs
                pass
        self.attached.clear()


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
