"""A replayed run's reports are byte-for-byte what they were before the reporters became
plugins (tests/data/golden was written by the earlier code from the same saved run); only what
depends on the clock or the machine is set aside."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "golden"
MACHINE_FACTS = ("kernel", "boot_id", "virtualization", "container", "vm_identity")   # vm_identity: added since


def _normal_json(text: str) -> dict:
    d = json.loads(text)
    d.pop("created")
    for k in MACHINE_FACTS:
        d["node"].pop(k, None)
    d["policies"] = [{**p, "path": Path(p["path"]).name} for p in d["policies"]]
    for r in d["results"]:
        r["file"] = Path(r["file"]).name      # where the policy was named from
    return d


def _normal_prom(text: str) -> list[str]:
    clock = ("vcheck_run_timestamp_seconds{", "vcheck_run_duration_seconds{", "vcheck_last_success_timestamp_seconds{")
    return [line for line in text.splitlines() if not line.startswith(clock)]


def test_replayed_reports_are_unchanged(tmp_path):
    env = {**os.environ, "VCHECK_NODE_NAME": "golden"}
    policies = [str(GOLDEN / f"{n}.yaml") for n in ("node-conformance", "kvm-host", "k8s-node")]
    out_json, out_prom = tmp_path / "r.json", tmp_path / "r.prom"
    r = subprocess.run([sys.executable, "-m", "vcheck.cli", "run", "--replay", str(GOLDEN / "replay-source.json"),
                        "--json", str(out_json), "--prom-textfile", str(out_prom), *policies],
                       capture_output=True, text=True, env=env, cwd=GOLDEN)
    assert r.returncode == 1, r.stdout + r.stderr     # the saved run had failures: still failing
    assert _normal_json(out_json.read_text()) == _normal_json((GOLDEN / "expected.json").read_text())
    assert _normal_prom(out_prom.read_text()) == _normal_prom((GOLDEN / "expected.prom").read_text())
