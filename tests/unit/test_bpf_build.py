"""The CO-RE build (vcheck/bpf_build.py), the path choice of the BPF engine, and libbpf's view
of a built object (vcheck/libbpf.py): map layouts from BTF, options as prebuilt variants, stale
objects refused with the fix. Builds with the set-up's clang; nothing is loaded into the kernel."""
from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path

import pytest

from vcheck import bpf_build, libbpf
from vcheck import probes

RUNQ_LIKE = """
#if defined(VCHK_CULPRITS) || defined(VCHK_WATCH)
#define VCHK_RING 1
#endif
#ifdef VCHK_RING
#endif
#ifndef VCHK_NO_HIST
#endif
#ifdef HAVE_SCHED_SWITCH
#endif
"""


def test_options_are_the_vchk_names_a_source_tests_but_does_not_define():
    assert bpf_build.options(RUNQ_LIKE) == ["VCHK_CULPRITS", "VCHK_NO_HIST", "VCHK_WATCH"]
    assert bpf_build.options("#include \"vcheck_compat.h\"\nint x;\n") == []


def test_cflags_name_a_variant_only_when_they_are_options():
    assert bpf_build.variant_flags(()) == ()
    assert bpf_build.variant_flags(("-DVCHK_WATCH", "-DVCHK_NO_HIST")) == ("VCHK_NO_HIST", "VCHK_WATCH")
    assert bpf_build.variant_flags(("-DFOO=1",)) is None
    assert bpf_build.object_name("runq_latency.c", ("VCHK_WATCH", "VCHK_NO_HIST")) == \
        "runq_latency+VCHK_NO_HIST+VCHK_WATCH.o"


@pytest.fixture(scope="module")
def objdir(tmp_path_factory) -> Path:
    """kvm_exits.c and block_latency.c built into a private directory, as set-up builds them."""
    out = tmp_path_factory.mktemp("bpfobj")
    installed = bpf_build.object_dir() / "vmlinux.h"
    if installed.exists():   # generating it again takes a second
        shutil.copy(installed, out / "vmlinux.h")
    lines: list[str] = []
    failed = bpf_build.build(out, log=lines.append, only=["kvm_exits.c", "block_latency.c"])
    assert failed == 0, "\n".join(lines)
    return out


def test_a_current_object_is_chosen_and_a_stale_one_refused(objdir, monkeypatch):
    monkeypatch.setenv(bpf_build.OBJDIR_ENV, str(objdir))
    monkeypatch.delenv(probes.PATH_ENV, raising=False)
    assert bpf_build.stale_reason(objdir / "kvm_exits.o", "kvm_exits.c", ()) is None
    choice = probes.choose_path("kvm_exits.c")
    assert choice.path == "core" and "kvm_exits.o" in choice.reason and not choice.forced

    meta = objdir / "kvm_exits.json"
    saved = meta.read_text()
    try:
        meta.write_text(json.dumps({**json.loads(saved), "digest": "0" * 64}))
        choice = probes.choose_path("kvm_exits.c")
        assert choice.path == "bcc" and "rerun scripts/setup.sh" in choice.reason
        monkeypatch.setenv(probes.PATH_ENV, "core")
        with pytest.raises(probes.BpfUnavailable, match="VCHECK_BPF_PATH=core but .*another version"):
            probes.choose_path("kvm_exits.c")
    finally:
        meta.write_text(saved)
    monkeypatch.setenv(probes.PATH_ENV, "bcc")
    assert probes.choose_path("kvm_exits.c") == probes.PathChoice("bcc", "VCHECK_BPF_PATH=bcc", True)
    monkeypatch.setenv(probes.PATH_ENV, "fast")
    with pytest.raises(probes.BpfUnavailable, match="not one of auto, core, bcc"):
        probes.choose_path("kvm_exits.c")


def test_no_btf_means_bcc_with_the_reason(objdir, monkeypatch, tmp_path):
    monkeypatch.setenv(bpf_build.OBJDIR_ENV, str(objdir))
    monkeypatch.setenv(bpf_build.BTF_ENV, str(tmp_path / "none"))
    monkeypatch.delenv(probes.PATH_ENV, raising=False)
    choice = probes.choose_path("block_latency.c")
    assert choice.path == "bcc" and f"no kernel BTF at {tmp_path / 'none'}" in choice.reason


def test_map_layouts_come_from_the_objects_btf(objdir):
    obj = libbpf.BpfObject(str(objdir / "block_latency.o"))
    try:
        btf = obj.btf
        key = btf.ctype(btf.find("hist_key", 4))
        k = key.from_buffer_copy(bytes(range(ctypes.sizeof(key))))
        assert ctypes.sizeof(key) == 16 and k.k.dev == 0x03020100 and k.k.op == 0x07060504
        assert k.slot == 0x0B0A0908 and k.pad == 0x0F0E0D0C
        stats = btf.ctype(btf.find("vcheck_stats", 4))
        assert [n for n, *_ in stats._fields_] == ["count", "sum", "max"] and ctypes.sizeof(stats) == 24
        start = btf.ctype(btf.find("rq_start", 4))   # a char array reads as bytes, as under bcc
        s = start.from_buffer_copy(b"\0" * 16 + b"dd\0" + b"\0" * 13)
        assert s.comm == b"dd" and ctypes.sizeof(start) == 32
        assert set(obj.program_names()) == {"vchk_blk_start", "vchk_blk_issue", "vchk_blk_requeue", "vchk_blk_done"}
        assert set(btf.datasec_vars(".rodata")) == {"vchk_have_block_io_start"}
        assert obj.set_rodata({"vchk_have_block_io_start": 0, "vchk_no_such": 1}) == ["vchk_no_such"]
    finally:
        obj.close()
        obj.close()   # idempotent
