"""deploy/: the DaemonSet, the Job and the image say what they need and why."""
from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_deploy_manifests_are_complete():
    ds = yaml.safe_load((REPO / "deploy/daemonset.yaml").read_text())
    job = yaml.safe_load((REPO / "deploy/job.yaml").read_text())
    for doc, kind in ((ds, "DaemonSet"), (job, "Job")):
        assert doc["kind"] == kind
        spec = doc["spec"]["template"]["spec"]
        assert spec["hostPID"] is True
        c = spec["containers"][0]
        caps = set(c["securityContext"]["capabilities"]["add"])
        assert {"BPF", "PERFMON"} <= caps and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert c["securityContext"].get("privileged", False) is False
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        for path in ("/host/proc", "/host/sys", "/host/run", "/sys/kernel/tracing", "/lib/modules"):
            assert path in mounts
        assert mounts["/host/proc"]["readOnly"] is True
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["VCHECK_HOST_ROOT"] == "/host"
        volumes = {v["name"] for v in spec["volumes"]}
        assert {m["name"] for m in c["volumeMounts"]} <= volumes
    text = (REPO / "deploy/daemonset.yaml").read_text()
    for cap in ("BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_ADMIN"):
        line = next(line for line in text.splitlines() if line.strip().startswith(f"- {cap}"))
        assert "#" in line, f"capability {cap} has no comment saying why"
    assert "python3-bpfcc" in (REPO / "deploy/Containerfile").read_text()
