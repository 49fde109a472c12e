"""Capability detection messages of the BPF engine, and how it reads programs' maps back.

Detection cases run in a fresh interpreter where `import bcc` finds only the test's own
directories (nothing, or an impostor), since bcc cannot be uninstalled from the test machine
for one test; every other import works as usual."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from vcheck.probes import BpfProgram, BpfUnavailable, counter_names, source_path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from importlib.machinery import PathFinder

class OnlyTheseBcc:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] != "bcc":
            return None
        spec = PathFinder.find_spec(name, path if "." in name else {extra!r})
        if spec is None:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return spec

sys.meta_path.insert(0, OnlyTheseBcc())
sys.path.insert(0, {repo!r})
from vcheck.probes import check_bcc
f = check_bcc()
print(f.ok, f.detail)
"""


def _probe(extra: list[str]) -> str:
    code = PROBE.format(extra=extra, repo=str(REPO))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_missing_bcc_names_the_distribution_package():
    out = _probe([])
    assert out.startswith("False") and "python3-bpfcc" in out and "unrelated" in out


def test_pypi_impostor_is_recognised(tmp_path):
    fake = tmp_path / "bcc"
    fake.mkdir()
    (fake / "__init__.py").write_text("# the PyPI project named bcc, not the BPF Compiler Collection\n")
    out = _probe([str(tmp_path)])
    assert out.startswith("False") and "not the BPF Compiler Collection" in out


def test_real_bcc_is_found():
    out = subprocess.run([sys.executable, "-c", "from vcheck.probes import check_bcc; f = check_bcc(); "
                          "print(f.ok, f.detail)"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("True"), out


# --- reading maps the way every program writes them -----------------------------------------
def test_counter_names_come_from_each_source_and_fit_its_array():
    for source in ("block_latency.c", "kvm_exits.c"):
        names = counter_names(source)
        size = int(re.search(r"BPF_ARRAY\(counters,\s*u64,\s*(\d+)\)", source_path(source).read_text()).group(1))
        assert names and sorted(names.values()) == list(range(len(names))) and len(names) <= size, (source, names)
    assert counter_names("block_latency.c") == {"collision": 0, "unpaired": 1, "flush_overflow": 2}
    assert counter_names("kvm_exits.c")["exit"] == 0


class _Table:
    """A bcc table as BpfProgram sees it: (key, value) pairs of ctypes-like objects."""

    def __init__(self, pairs):
        self.pairs = list(pairs)

    def items(self):
        return self.pairs

    def values(self):
        return [v for _, v in self.pairs]


def _program(tables: dict) -> BpfProgram:
    prog = BpfProgram("block_latency.c", ())
    prog._bpf = {name.encode(): _Table(t) for name, t in tables.items()}
    return prog


def test_histograms_merge_buckets_and_exact_stats_per_group():
    k = SimpleNamespace
    hist = [(k(k=k(dev=1, op=0), slot=10), k(value=3)), (k(k=k(dev=1, op=0), slot=12), k(value=1)),
            (k(k=k(dev=2, op=0), slot=12), k(value=2)), (k(k=k(dev=1, op=1), slot=20), k(value=1))]
    stats = [(k(dev=1, op=0), k(count=4, sum=400, max=150)), (k(dev=2, op=0), k(count=2, sum=100, max=160)),
             (k(dev=1, op=1), k(count=1, sum=9000, max=9000))]
    # devices 1 and 2 under one name (as two tgids of one VM would be): merged, maxima compared
    got = _program({"hist": hist, "stats": stats}).histograms(lambda key: ("vda", key.op))
    read, write = got[("vda", 0)], got[("vda", 1)]
    assert read.buckets == {10: 3, 12: 3} and (read.total, read.sum, read.max_exact) == (6, 500.0, 160.0)
    assert write.buckets == {20: 1} and write.total == 1 and write.scale == 1e-9


def test_counters_are_read_by_name():
    k = SimpleNamespace
    prog = _program({"counters": [(i, k(value=v)) for i, v in enumerate((5, 7, 1))]})
    assert prog.counters() == {"collision": 5, "unpaired": 7, "flush_overflow": 1}


def test_bpf_unavailable_carries_reason_and_metrics():
    exc = BpfUnavailable("tracefs is not mounted", ("block.latency",))
    assert exc.reason == "tracefs is not mounted" and exc.metrics == ("block.latency",)
    assert str(exc) == "tracefs is not mounted"
