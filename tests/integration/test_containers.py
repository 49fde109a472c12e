"""The container layer against a real containerd (CRI plugin, private socket) and plain runc:
pods made through CRI with Kubernetes metadata, real CPU quotas, a real OOM kill."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.rig.common import VCHECK, remove_cgroup_tree, rig_fail
from tests.rig.containerd import BUSYBOX, container_spec

pytestmark = pytest.mark.rig

BURN = ["sh", "-c", "while :; do :; done"]
# the child shell doubles a string until the cgroup's limit OOM-kills it; the parent restarts it
OOM_LOOP = ["sh", "-c", "while :; do sh -c 'x=aaaaaaaa; while :; do x=$x$x; done'; sleep 0.3; done"]


@pytest.fixture
def env(containerd):
    """vcheck pointed at the rig's runtime; the test's pods are removed after it."""
    yield {"VCHECK_CRI_SOCKETS": str(containerd.socket), "VCHECK_RUNC_ROOT": "/nonexistent"}
    for pod in list(containerd.pods):
        containerd.remove_pod(pod)


def run(policy: Path, report: Path, env: dict, timeout: float = 120) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(VCHECK + ["run", str(policy), "--json", str(report)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env}, cwd=report.parent)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc, json.loads(report.read_text())


def results(report: dict) -> dict[str, dict]:
    return {r["nodeid"].split("::", 1)[1]: r for r in report["results"]}


def cgroup_usage_ns(cgroup_path: str) -> int:
    return int(Path("/sys/fs/cgroup/cpuacct", cgroup_path.lstrip("/"), "cpuacct.usage").read_text())


def test_throttling_cpu_agreement_and_names(containerd, env, policy_file, tmp_path):
    containerd.run_pod("burner", "shop", [container_spec("burn", BURN, cpu_quota=20000)])
    containerd.run_pod("idler", "shop", [container_spec("idle", ["sleep", "3600"], cpu_quota=20000)])
    containerd.run_pod("infra", "kube-system", [container_spec("agent", ["sleep", "3600"])])
    policy = policy_file("policy: k8s\ndefaults: {window: 3s, interval: 1s}\nchecks:\n"
                         "  - {id: throttled, metric: container.cpu.throttled, per: container,\n"
                         "     select: {namespace: shop}, expect: 'mean < 25%'}\n"
                         "  - {id: cpu, metric: container.cpu, per: container, expect: '<= 100%'}\n")
    detail = {c.name: c for c in containerd.client.list_containers()}
    burn_cgroup = containerd.client.container_detail(detail["burn"].id).cgroups_path
    t0, u0 = time.monotonic(), cgroup_usage_ns(burn_cgroup)
    proc, report = run(policy, tmp_path / "r.json", env)
    t1, u1 = time.monotonic(), cgroup_usage_ns(burn_cgroup)
    r = results(report)
    # vcheck names containers by namespace, pod and name, as Kubernetes does
    assert {"throttled[shop-burner-burn]", "throttled[shop-idler-idle]", "cpu[kube-system-infra-agent]"} <= set(r)
    assert "throttled[kube-system-infra-agent]" not in r          # select: namespace
    assert r["throttled[shop-burner-burn]"]["outcome"] == "fail"
    assert r["throttled[shop-idler-idle]"]["outcome"] == "pass"
    assert proc.returncode == 1
    # the 0.2-CPU burner: vcheck's figure against the cgroup's own counter read independently
    vcheck_cpu = r["cpu[shop-burner-burn]"]["entities"][0]["series"]["mean"]
    independent = 100.0 * (u1 - u0) / ((t1 - t0) * 1e9)
    assert 15 < vcheck_cpu < 25 and abs(vcheck_cpu - independent) < 3, (vcheck_cpu, independent)
    info = r["cpu[shop-burner-burn]"]["entities"][0]["info"]
    assert info["cpu_limit"] == "0.2 CPU" and info["pid_map"].startswith("host PID ")


def test_oom_kill_is_counted(containerd, env, policy_file, tmp_path):
    containerd.run_pod("hungry", "shop", [container_spec("eater", OOM_LOOP, memory=32 << 20)])
    policy = policy_file("policy: oom\ndefaults: {window: 3s, interval: 1s}\nchecks:\n"
                         "  - {id: oom, metric: container.oom_kills, per: container,\n"
                         "     select: {pod: hungry}, expect: 'sum == 0'}\n"
                         "  - {id: mem, metric: container.memory.limit_pct, per: container,\n"
                         "     select: {pod: hungry}, expect: 'max <= 100%'}\n")
    proc, report = run(policy, tmp_path / "r.json", env)
    r = results(report)
    oom = r["oom[shop-hungry-eater]"]
    assert oom["outcome"] == "fail", oom
    assert oom["entities"][0]["measurements"][0]["measured"] >= 1
    assert r["mem[shop-hungry-eater]"]["outcome"] == "pass"


def test_isolation_facts(containerd, env, policy_file, tmp_path):
    containerd.run_pod("hostpid", "shop", [container_spec("peek", ["sleep", "3600"], host_pid=True)])
    containerd.run_pod("normal", "shop", [container_spec("plain", ["sleep", "3600"])])
    policy = policy_file("policy: iso\ndefaults: {window: 1s, interval: 1s}\nchecks:\n"
                         "  - {id: hostpid, metric: container.host_pid_ns, per: container,\n"
                         "     select: {namespace: '!kube-system'}, expect: '== 0'}\n"
                         "  - {id: privileged, metric: container.privileged, per: container, expect: '== 0'}\n"
                         "  - {id: bylabel, metric: container.pids, per: container, select: {label.app: plain},\n"
                         "     expect: '>= 1'}\n")
    proc, report = run(policy, tmp_path / "r.json", env)
    r = results(report)
    assert r["hostpid[shop-hostpid-peek]"]["outcome"] == "fail", r["hostpid[shop-hostpid-peek]"]["entities"]
    assert r["hostpid[shop-normal-plain]"]["outcome"] == "pass"
    assert r["privileged[shop-normal-plain]"]["outcome"] == "pass"
    assert [k for k in r if k.startswith("bylabel")] == ["bylabel[shop-normal-plain]"]   # select by label
    # the mapping as evidence: a host-PID container's init has the same PID in both views
    info = r["hostpid[shop-hostpid-peek]"]["entities"][0]["info"]
    host_pid = info["pid"]
    assert info["pid_map"] == f"host PID {host_pid} is {host_pid} in the container"


def test_container_deleted_mid_window_is_gone(containerd, env, policy_file, tmp_path):
    pod, _ = containerd.run_pod("doomed", "shop", [container_spec("victim", ["sleep", "3600"])])
    policy = policy_file("policy: gone\ndefaults: {window: 4s, interval: 1s}\nchecks:\n"
                         "  - {id: cpu, metric: container.cpu, per: container, select: {pod: doomed},\n"
                         "     expect: '< 50%'}\n")
    report = tmp_path / "r.json"
    proc = subprocess.Popen(VCHECK + ["run", str(policy), "--json", str(report)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env}, cwd=tmp_path)
    time.sleep(2.5)
    containerd.remove_pod(pod)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    r = results(json.loads(report.read_text()))["cpu[shop-doomed-victim]"]
    assert r["outcome"] == "skip" and "was deleted" in r["reason"], r
    assert r["entities"][0]["samples"] >= 1


def test_plain_runc_container_from_its_state(policy_file, tmp_path):
    """No runtime API: runc's own state directory still yields the container and its cgroup."""
    if shutil.which("runc") is None:
        rig_fail("runc is not installed")
    root = Path(tempfile.mkdtemp(prefix="vcheck-runc-", dir="/var/tmp"))
    bundle = root / "bundle"
    (bundle / "rootfs" / "bin").mkdir(parents=True)
    for d in ("proc", "dev", "sys", "tmp"):
        (bundle / "rootfs" / d).mkdir()
    shutil.copy(BUSYBOX, bundle / "rootfs" / "bin" / "busybox")
    os.symlink("busybox", bundle / "rootfs" / "bin" / "sh")
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/sh", "-c", "while :; do :; done"]
    spec["linux"]["cgroupsPath"] = "/vcheck-rig/runc-burn"
    spec["linux"]["resources"] = {"cpu": {"quota": 10000, "period": 100000}}
    (bundle / "config.json").write_text(json.dumps(spec))
    state = root / "state"
    cid = "vcheck-runc-burn"
    try:
        # the detached container inherits runc's stdio: give it files, not pipes we would wait on
        with open(root / "runc.log", "w+") as log:
            res = subprocess.run(["runc", "--root", str(state), "run", "-d", "--bundle", str(bundle), cid],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=30)
            if res.returncode != 0:
                log.seek(0)
                rig_fail("runc run -d failed", log.read())
        policy = policy_file("policy: runc\ndefaults: {window: 2s, interval: 1s}\nchecks:\n"
                             "  - {id: thr, metric: container.cpu.throttled, per: container, expect: '< 5%'}\n")
        proc, report = run(policy, tmp_path / "r.json", {"VCHECK_RUNC_ROOT": str(state),
                                                          "VCHECK_CRI_SOCKETS": ""})
        r = results(report)
        key = next(k for k in r if "vcheck-runc-" in k)
        assert r[key]["outcome"] == "fail"                       # 0.1 CPU quota, burning
        assert r[key]["entities"][0]["info"]["cgroup"] == "/vcheck-rig/runc-burn"
    finally:
        subprocess.run(["runc", "--root", str(state), "delete", "--force", cid], capture_output=True)
        remove_cgroup_tree("vcheck-rig")
        shutil.rmtree(root, ignore_errors=True)


def test_without_a_runtime_api_the_cgroup_tree_still_finds_containers(containerd, policy_file, tmp_path):
    """No CRI socket, no runc state: containers are recognised by their cgroup leaf (a 64-hex id
    under pod<uid>, the cgroupfs driver's layout) and named from containerd's bundle on disk."""
    containerd.run_pod("fallback", "shop", [container_spec("worker", BURN, cpu_quota=20000)])
    try:
        policy = policy_file("policy: fb\ndefaults: {window: 2s, interval: 1s}\nchecks:\n"
                             "  - {id: thr, metric: container.cpu.throttled, per: container, expect: '< 5%'}\n")
        env = {"VCHECK_CRI_SOCKETS": "", "VCHECK_ENGINE_SOCKETS": "", "VCHECK_RUNC_ROOT": "/nonexistent",
               "VCHECK_CONTAINERD_STATE": str(containerd.prefix / "state")}
        proc, report = run(policy, tmp_path / "r.json", env)
        r = results(report)
        assert "thr[shop-fallback-worker]" in r, sorted(r)
        assert r["thr[shop-fallback-worker]"]["outcome"] == "fail"
        assert r["thr[shop-fallback-worker]"]["entities"][0]["info"]["source"].startswith("cgroup path ")
        assert not any("pause" in k or "sandbox" in k for k in r)
    finally:
        for pod in list(containerd.pods):
            containerd.remove_pod(pod)
