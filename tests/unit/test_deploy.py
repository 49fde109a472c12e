"""deploy/: the DaemonSet, the Job and the image say what they need and why, and the manifests are
valid objects of the Kubernetes API (its schemas, offline)."""
from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
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


# The Kubernetes API schemas, offline (kubernetes-validate, pinned in pyproject.toml's test
# extra): the three minor versions upstream Kubernetes supports as this is written. strict:
# a field the API does not know (a typo) is an error, as `kubectl apply --validate=strict` has it.
K8S_VERSIONS = ("1.35", "1.36", "1.37")


def _validate(doc: dict) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_manifests_pass_the_kubernetes_api_schemas():
    docs = [d for name in ("daemonset.yaml", "job.yaml")
            for d in yaml.safe_load_all((REPO / "deploy" / name).read_text()) if d]
    assert {d["kind"] for d in docs} >= {"DaemonSet", "Job"}
    for doc in docs:
        _validate(doc)


def test_a_typo_in_a_field_fails_the_schema():
    doc = yaml.safe_load((REPO / "deploy/daemonset.yaml").read_text())
    doc["spec"]["template"]["spec"]["hostPid"] = doc["spec"]["template"]["spec"].pop("hostPID")   # sic
    with pytest.raises(kubernetes_validate.ValidationError, match="hostPid"):
        _validate(doc)
    doc = yaml.safe_load((REPO / "deploy/job.yaml").read_text())
    mount = doc["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]
    mount["readonly"] = mount.pop("readOnly", True)   # sic: the API spells it readOnly
    with pytest.raises(kubernetes_validate.ValidationError, match="readonly"):
        _validate(doc)
