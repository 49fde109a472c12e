"""Build the CO-RE objects of bpf/*.c once, at set-up, so a run loads them without a compiler.

    python -m vcheck.bpf_build [--out DIR] [--force] [--quiet]

scripts/setup.sh runs this (clang, libbpf-dev and bpftool are set-up packages, not run-time
ones). Per source it builds one object per combination of the VCHK_* options the source tests
(``#ifdef VCHK_CULPRITS``...), so a collector's cflags select a prebuilt variant; every
HAVE_<TRACEPOINT> is defined (the object carries every program; the loader skips those whose
tracepoint is absent). Each object has a sidecar .json with the digest of what it was built
from: the loader refuses a stale object (a source edited since) and says so.

Objects go to $VCHECK_BPF_OBJDIR, else <sys.prefix>/share/vcheck/bpf (the venv's, for a
development checkout): never into the source tree.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

OBJDIR_ENV = "VCHECK_BPF_OBJDIR"
BTF_ENV = "VCHECK_BTF"
DEFAULT_BTF = "/sys/kernel/btf/vmlinux"
FORMAT = 1   # bump when the build recipe changes: every object is rebuilt
CFLAGS = ("-g", "-O2", "-target", "bpf", "-mcpu=v3", "-D__TARGET_ARCH_x86", "-DVCHECK_CORE",
          "-Wno-unused-function", "-Wno-compare-distinct-pointer-types")

_TESTED = re.compile(r"^\s*#\s*(?:ifn?def\s+(VCHK_\w+)|(?:el)?if\b(.*))$", re.M)
_DEFINED_IN = re.compile(r"defined\s*\(?\s*(VCHK_\w+)")
_DEFINES = re.compile(r"^\s*#\s*define\s+(VCHK_\w+)", re.M)
_HAVE = re.compile(r"\bHAVE_[A-Z0-9_]+\b")


def btf_path() -> Path:
    return Path(os.environ.get(BTF_ENV) or DEFAULT_BTF)


def object_dir() -> Path:
    env = os.environ.get(OBJDIR_ENV)
    return Path(env) if env else Path(sys.prefix) / "share" / "vcheck" / "bpf"


def source_dir() -> Path:
    return Path(str(resources.files("vcheck.bpf")))


def sources() -> list[str]:
    return sorted(p.name for p in source_dir().glob("*.c"))


def options(text: str) -> list[str]:
    """The VCHK_* names a source tests and does not define itself: its build options."""
    tested = set()
    for m in _TESTED.finditer(text):
        if m.group(1):
            tested.add(m.group(1))
        else:
            tested.update(_DEFINED_IN.findall(m.group(2)))
    return sorted(tested - set(_DEFINES.findall(text)))


def variant_flags(cflags: Sequence[str]) -> tuple[str, ...] | None:
    """cflags as the option names of a prebuilt variant; None if they are not only -DVCHK_*."""
    names = []
    for f in cflags:
        m = re.fullmatch(r"-D(VCHK_\w+)", f)
        if m is None:
            return None
        names.append(m.group(1))
    return tuple(sorted(set(names)))


def object_name(source: str, names: Sequence[str]) -> str:
    stem = source[:-2] if source.endswith(".c") else source
    return "+".join([stem, *sorted(names)]) + ".o"


def digest(source: str, names: Sequence[str]) -> str:
    """What an object depends on: its source, every bpf/*.h, its options and the recipe."""
    h = hashlib.sha256(f"{FORMAT}\0{source}\0{' '.join(sorted(names))}\0".encode())
    src = source_dir()
    for p in [src / source, *sorted(src.glob("*.h"))]:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _record(obj: Path) -> dict:
    try:
        return json.loads(obj.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def _current(obj: Path, source: str, names: Sequence[str]) -> bool:
    """Set-up already tried this variant of these sources (built it, or found it does not build)."""
    return _record(obj).get("digest") == digest(source, names)


def stale_reason(obj: Path, source: str, names: Sequence[str]) -> str | None:
    """Why obj cannot stand for source with these options now (None: it can)."""
    meta = _record(obj)
    if meta.get("error") and meta.get("digest") == digest(source, names):
        return f"{obj.name} does not build ({meta['error']}): {source} with these options is bcc's"
    if not obj.exists():
        return f"no CO-RE object {obj} (scripts/setup.sh builds it)"
    if not meta:
        return f"{obj} has no build record: rebuild with scripts/setup.sh"
    if meta.get("digest") != digest(source, names):
        return f"{obj} was built from another version of {source} or its headers: rerun scripts/setup.sh"
    return None


def vmlinux_header(out: Path, force: bool = False) -> Path:
    """vmlinux.h of the kernel's BTF: the type definitions the sources compile against (CO-RE
    relocates field offsets at load, so a header from this kernel serves others)."""
    header = out / "vmlinux.h"
    if header.exists() and not force:
        return header
    btf = btf_path()
    if not btf.exists():
        raise RuntimeError(f"no kernel BTF at {btf}: cannot write vmlinux.h (kernel without "
                           "CONFIG_DEBUG_INFO_BTF; vcheck will use bcc)")
    res = subprocess.run(["bpftool", "btf", "dump", "file", str(btf), "format", "c"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"bpftool btf dump failed: {res.stderr.strip()[:500]}")
    tmp = header.with_suffix(".tmp")
    tmp.write_text(res.stdout)
    tmp.replace(header)
    return header


def _compile(clang: str, out: Path, source: str, names: Sequence[str]) -> tuple[str, str | None]:
    """Build one variant; (object name, error or None)."""
    name = object_name(source, names)
    obj = out / name
    text = (source_dir() / source).read_text()
    haves = sorted(set(_HAVE.findall(text)))
    tmp = out / f".{name}.{os.getpid()}.tmp"
    cmd = [clang, *CFLAGS, f"-I{out}", f"-I{source_dir()}", *(f"-D{h}" for h in haves),
           *(f"-D{n}" for n in names), "-c", str(source_dir() / source), "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:   # recorded, so set-up does not retry it until a source changes
        tmp.unlink(missing_ok=True)
        obj.unlink(missing_ok=True)
        error = res.stderr.strip() or f"clang exited {res.returncode}"
        first = next((ln for ln in error.splitlines() if "error" in ln), error.splitlines()[0])
        obj.with_suffix(".json").write_text(json.dumps(
            {"source": source, "options": list(names), "digest": digest(source, names),
             "error": first[-300:]}, indent=1) + "\n")
        return name, error
    strip = shutil.which("llvm-strip")
    if strip:   # DWARF is not needed at load (BTF is): a smaller file to read
        subprocess.run([strip, "-g", str(tmp)], capture_output=True)
    tmp.replace(obj)
    obj.with_suffix(".json").write_text(json.dumps(
        {"source": source, "options": list(names), "digest": digest(source, names),
         "built": time.strftime("%Y-%m-%dT%H:%M:%S"), "clang": clang}, indent=1) + "\n")
    return name, None


def build(out: Path | None = None, force: bool = False, log: Callable[[str], object] = print,
          only: Sequence[str] | None = None) -> int:
    """Build every stale variant of every source (or of `only`); returns the number of default
    variants (no options) that failed, i.e. programs left to bcc."""
    out = out or object_dir()
    out.mkdir(parents=True, exist_ok=True)
    clang = shutil.which("clang") or next((shutil.which(f"clang-{v}") for v in range(20, 10, -1)
                                           if shutil.which(f"clang-{v}")), None)
    if clang is None:
        log("bpf_build: no clang: CO-RE objects not built (vcheck will use bcc)")
        return len(sources())
    try:
        vmlinux_header(out, force)
    except RuntimeError as exc:
        log(f"bpf_build: {exc}")
        return len(sources())
    jobs = []
    for source in only or sources():
        opts = options((source_dir() / source).read_text())
        for n in range(len(opts) + 1):
            for names in itertools.combinations(opts, n):
                if force or not _current(out / object_name(source, names), source, names):
                    jobs.append((source, names))
    if not jobs:
        return 0
    from concurrent.futures import ThreadPoolExecutor
    t = time.monotonic()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda j: (j, _compile(clang, out, *j)), jobs))
    failed_default = 0
    built = 0
    broken = {source for (source, names), (_, error) in results if error and not names}
    for (source, names), (name, error) in results:
        if error is None:
            built += 1
        elif not names:
            failed_default += 1
            log(f"bpf_build: {source} did not build (vcheck will use bcc for it):\n{error[-2000:]}")
        elif source not in broken:   # some option combinations are not meant to go together
            log(f"bpf_build: skipped {name}: {_record(out / name).get('error', '?')}")
    log(f"bpf_build: built {built} CO-RE objects in {out} in {time.monotonic() - t:.1f} s")
    return failed_default


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build vcheck's CO-RE BPF objects")
    ap.add_argument("--out", type=Path, default=None, help=f"default: ${OBJDIR_ENV} or <prefix>/share/vcheck/bpf")
    ap.add_argument("--force", action="store_true", help="rebuild everything, vmlinux.h included")
    args = ap.parse_args(argv)
    return 1 if build(args.out, args.force) else 0


if __name__ == "__main__":
    sys.exit(main())
