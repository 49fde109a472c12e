"""Capability detection messages of the BPF engine. Each case runs in a fresh interpreter whose
import path is arranged to lack bcc or to hold an impostor, since bcc cannot be uninstalled
from the test machine for one test."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
sys.path = [p for p in sys.path if 'dist-packages' not in p and 'site-packages' not in p]
sys.path[:0] = {extra!r}
from vcheck.bpf import check_bcc
f = check_bcc()
print(f.ok, f.detail)
"""


def _probe(extra: list[str]) -> str:
    code = PROBE.format(extra=[str(REPO), *extra])
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
    out = subprocess.run([sys.executable, "-c", "from vcheck.bpf import check_bcc; f = check_bcc(); "
                          "print(f.ok, f.detail)"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("True"), out
