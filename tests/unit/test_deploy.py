"""deploy/: the DaemonSet, the Job and the image say what they need and why, and the manifests are
valid objects of the Kubernetes API (its schemas, offline)."""
from __future__ import annotations

import re
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
        assert spec["hostNetwork"] is True        # net.* is the namespace vcheck runs in
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
MANIFESTS = ("daemonset.yaml", "job.yaml", "cronjob.yaml")


def _validate(doc: dict) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_manifests_pass_the_kubernetes_api_schemas():
    docs = [d for name in MANIFESTS for d in yaml.safe_load_all((REPO / "deploy" / name).read_text()) if d]
    assert {d["kind"] for d in docs} >= {"DaemonSet", "Job", "CronJob"}
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


def _pod(doc: dict) -> dict:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return spec["template"]["spec"]


def _command(container: dict) -> str:
    return " ".join(container.get("command", []) + container.get("args", []))


def test_every_route_writes_the_textfile_node_exporter_reads():
    """DaemonSet, CronJob and Job write vcheck.prom into the host directory node_exporter's
    textfile collector is pointed at, and carry the node's name and failure domains."""
    for name in MANIFESTS:
        doc = yaml.safe_load((REPO / "deploy" / name).read_text())
        pod = _pod(doc)
        c = pod["containers"][0]
        assert "--prom-textfile /var/lib/node-exporter/textfile/vcheck.prom" in _command(c), name
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/var/lib/node-exporter/textfile")
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["hostPath"]["path"] == "/var/lib/node-exporter/textfile" and not mount.get("readOnly"), name
        env = {e["name"]: e for e in c["env"]}
        assert env["VCHECK_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        # VCHECK_NODE_LABELS only refers to variables defined before it (Kubernetes expands $(VAR) so)
        order = [e["name"] for e in c["env"]]
        for ref in re.findall(r"\$\((\w+)\)", env["VCHECK_NODE_LABELS"]["value"]):
            assert order.index(ref) < order.index("VCHECK_NODE_LABELS"), (name, ref)
        assert "--lock /var/lib/vcheck/run.lock" in _command(c), name     # the routes never run at once on a node


def test_the_three_routes_share_one_container_shape():
    """One set of capabilities and host mounts: the CronJob and the Job do not drift from the
    DaemonSet, whose comments say why each is there."""
    shapes = {}
    for name in MANIFESTS:
        c = _pod(yaml.safe_load((REPO / "deploy" / name).read_text()))["containers"][0]
        shapes[name] = (sorted(c["securityContext"]["capabilities"]["add"]),
                        sorted((m["mountPath"], bool(m.get("readOnly"))) for m in c["volumeMounts"]))
    assert shapes["cronjob.yaml"] == shapes["daemonset.yaml"] == shapes["job.yaml"]


def test_the_job_retries_only_when_another_run_holds_the_lock():
    doc = yaml.safe_load((REPO / "deploy/job.yaml").read_text())
    rules = doc["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "Count" and rules[0]["onExitCodes"]["values"] == [6]
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"] == {
        "containerName": "vcheck", "operator": "NotIn", "values": [0, 6]}
