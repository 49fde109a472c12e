"""A real containerd (CRI plugin on) on a private socket, root and state directory, with a
busybox image built locally (no registry is reachable here), and pods and containers made
through the CRI API with Kubernetes metadata. Plain runc containers too.

Everything lives under one temporary prefix and is removed after: containerd is stopped, its
shims killed, its mounts and the cgroups it made removed.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest


from .common import remove_cgroup_tree, require_root, rig_fail
from .cri_writer import RigCriClient

IMAGE = "vcheck.local/busybox:rig"
PAUSE = "vcheck.local/pause:rig"
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "cat", "head", "yes", "dd", "true", "ls", "echo", "tail", "nproc", "hostname", "touch")


# --- image -------------------------------------------------------------------------------
def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _layer() -> tuple[bytes, str]:
    """gzip'd tar holding /bin/busybox and applet links; returns (blob, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    return gzip.compress(raw.getvalue(), mtime=0), diff_id


def build_image_archive(path: Path, refs_and_cmds: dict[str, list[str]]) -> None:
    """An OCI image-layout tar with one manifest per ref (same layer, different command)."""
    layout = path.parent / (path.name + ".d")
    shutil.rmtree(layout, ignore_errors=True)
    layer, diff_id = _layer()
    layer_digest, layer_size = _blob(layout, layer)
    manifests = []
    for ref, cmd in refs_and_cmds.items():
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
                  "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
        cfg_digest, cfg_size = _blob(layout, json.dumps(config).encode())
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": cfg_digest, "size": cfg_size},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                "digest": layer_digest, "size": layer_size}]}
        m_digest, m_size = _blob(layout, json.dumps(manifest).encode())
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest,
                          "size": m_size, "annotations": {"org.opencontainers.image.ref.name": ref,
                                                          "io.containerd.image.name": ref}})
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    with tarfile.open(path, "w") as tar:
        for p in sorted(layout.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(layout)), recursive=False)
    shutil.rmtree(layout)


# --- containerd --------------------------------------------------------------------------
@dataclass
class Containerd:
    prefix: Path
    proc: subprocess.Popen
    client: "RigCriClient"
    pods: list[str] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.prefix / "state" / "containerd.sock"

    def ctr(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
                              capture_output=True, text=True, timeout=120)

    def run_pod(self, name: str, namespace: str = "default", containers: list[dict] | None = None,
                cgroup_parent: str = "") -> tuple[str, list[str]]:
        """A pod (host network: no CNI here) and its containers, all through CRI."""
        pod_uid = str(uuid.uuid4())
        pod_config = {"metadata": {"name": name, "uid": pod_uid, "namespace": namespace, "attempt": 0},
                      "labels": {"app": name}, "log_directory": str(self.prefix / "logs" / name),
                      "cgroup_parent": cgroup_parent or f"/vcheck-rig/pod{pod_uid}",
                      "host_pid": any(c.get("host_pid") for c in containers or [])}
        pod_id = self.client.run_pod_sandbox(pod_config)
        self.pods.append(pod_id)
        ids = []
        for c in containers or []:
            cid = self.client.create_container(pod_id, pod_config, c)
            self.client.start_container(cid)
            ids.append(cid)
        return pod_id, ids

    def remove_pod(self, pod_id: str) -> None:
        self.client.stop_pod_sandbox(pod_id)
        self.client.remove_pod_sandbox(pod_id)
        if pod_id in self.pods:
            self.pods.remove(pod_id)


def _config(prefix: Path) -> str:
    text = subprocess.run(["containerd", "config", "default"], capture_output=True, text=True,
                          check=True).stdout
    text = text.replace('root = "/var/lib/containerd"', f'root = "{prefix / "root"}"', 1)
    text = text.replace('state = "/run/containerd"', f'state = "{prefix / "state"}"', 1)
    text = text.replace('address = "/run/containerd/containerd.sock"',
                        f'address = "{prefix / "state" / "containerd.sock"}"', 1)
    text = text.replace('sandbox_image = "registry.k8s.io/pause:3.6"', f'sandbox_image = "{PAUSE}"')
    text = text.replace('conf_dir = "/etc/cni/net.d"', f'conf_dir = "{prefix / "cni"}"')
    # this machine refuses lowering oom_score_adj (pause's -998): clamp to containerd's own
    text = text.replace("restrict_oom_score_adj = false", "restrict_oom_score_adj = true")
    return text


def start_containerd(prefix: Path) -> Containerd:
    for d in ("root", "state", "cni", "logs"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    (prefix / "config.toml").write_text(_config(prefix))
    log = open(prefix / "containerd.log", "w")
    proc = subprocess.Popen(["containerd", "--config", str(prefix / "config.toml")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    sock = prefix / "state" / "containerd.sock"
    deadline = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            rig_fail("containerd did not start", (prefix / "containerd.log").read_text()[-1500:])
        time.sleep(0.1)
    client = RigCriClient(str(sock), timeout=60)
    rt = Containerd(prefix, proc, client)
    archive = prefix / "images.tar"
    build_image_archive(archive, {IMAGE: ["/bin/sleep", "3600"],
                                  PAUSE: ["/bin/sleep", "2147483647"]})
    res = rt.ctr("images", "import", "--no-unpack=false", str(archive))
    if res.returncode != 0:
        res = rt.ctr("images", "import", str(archive))
    if res.returncode != 0:
        rig_fail("ctr images import failed", res.stderr[-800:])
    return rt


def stop_containerd(rt: Containerd, cgroup_tree: str = "vcheck-rig") -> None:
    """Everything start_containerd made, gone; `cgroup_tree`: the top cgroup its pods were put
    under (a benchmark's own, so as not to touch the test rig's)."""
    for pod in list(rt.pods):
        try:
            rt.remove_pod(pod)
        except Exception:
            pass
    try:
        os.killpg(rt.proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        rt.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(rt.proc.pid, signal.SIGKILL)
        rt.proc.wait()
    # shims outlive containerd by design: kill the ones rooted in our prefix
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "containerd-shim" in cmd and str(rt.prefix) in cmd:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    _unmount_under(rt.prefix)
    remove_cgroup_tree(cgroup_tree)
    shutil.rmtree(rt.prefix, ignore_errors=True)


def _unmount_under(prefix: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for m in sorted((m for m in mounts if m.startswith(str(prefix))), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


@pytest.fixture(scope="module")
def containerd():
    require_root()
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            rig_fail(f"{tool} is not installed (scripts/setup.sh installs containerd and runc)")
    if not BUSYBOX.exists():
        rig_fail("/bin/busybox is missing (scripts/setup.sh installs busybox-static)")
    prefix = Path(tempfile.mkdtemp(prefix="vcheck-containerd-", dir="/var/tmp"))
    rt = start_containerd(prefix)
    try:
        yield rt
    finally:
        stop_containerd(rt)


def container_spec(name: str, args: list[str], cpu_quota: int = 0, memory: int = 0,
                   host_pid: bool = False, privileged: bool = False) -> dict:
    """The CRI ContainerConfig fields the rig uses."""
    return {"name": name, "image": IMAGE, "args": args, "cpu_quota": cpu_quota, "cpu_period": 100000 if cpu_quota else 0,
            "memory_limit": memory, "host_pid": host_pid, "privileged": privileged,
            "labels": {"app": name, "tier": "rig"}}
