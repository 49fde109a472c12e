"""Which containers run on this node, best source first, and how each maps to the host.

1. The CRI API of every reachable runtime socket (containerd, CRI-O; more with
   ``VCHECK_CRI_SOCKETS=path:path``): pods, namespaces, names, ids, PIDs, privileged.
2. The Docker Engine API (and podman's compatible one) over their unix sockets.
3. runc's own ``state.json`` files (``VCHECK_RUNC_ROOT``, default ``/run/runc``).
4. With no runtime answering at all, the cgroup tree: leaves named the way the cgroup drivers
   name them (``cri-containerd-<id>.scope``, ``crio-<id>.scope``, ``docker-<id>.scope``,
   ``libpod-<id>.scope``, a bare 64-hex id under ``pod<uid>``), with Kubernetes names from the
   runtime's bundle on disk where readable (``VCHECK_CONTAINERD_STATE``).
Each container's cgroup is then found from its init PID, the same way for every source.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

from ...procfs import HostRoots, read_text
from .container import Container
from .cri import DEFAULT_SOCKETS, CriClient, CriError
from .docker import EngineError, docker_sockets, from_docker

def cri_sockets(roots: HostRoots) -> list[Path]:
    extra = [Path(p) for p in os.environ.get("VCHECK_CRI_SOCKETS", "").split(":") if p]
    return extra + [roots.run / rel for rel in DEFAULT_SOCKETS]


def from_cri(socket: Path) -> list[Container]:
    client = CriClient(str(socket), timeout=5)
    try:
        runtime = client.version().split()[0] or socket.parent.name
        pods = {p.id: p for p in client.list_pods()}
        out = []
        for c in client.list_containers():
            if c.state != "running":
                continue
            try:
                detail = client.container_detail(c.id)
            except CriError:
                continue          # removed between the two calls
            pod = pods.get(c.pod_id)
            out.append(Container(id=c.id, name=c.name, pod=pod.name if pod else c.pod_id[:12],
                                 namespace=pod.namespace if pod else "", runtime=runtime,
                                 pid=detail.pid, image=c.image, privileged=detail.privileged,
                                 source=f"CRI {socket}", labels=dict(c.labels)))
        return out
    finally:
        client.close()


def from_runc_state(root: Path) -> list[Container]:
    """runc's own state (`runc run -d`): id, init PID, bundle annotations."""
    out = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return out
    for cid in entries:
        try:
            state = json.loads(read_text(root / cid / "state.json"))
        except (OSError, ValueError):
            continue
        pid = int(state.get("init_process_pid") or 0)
        ann = {}
        for label in (state.get("config") or {}).get("labels") or []:
            k, _, v = label.partition("=")
            ann[k] = v
        bundle = ann.get("bundle", "")
        annotations: dict[str, str] = {}
        if bundle:
            try:
                annotations = json.loads(read_text(Path(bundle) / "config.json")).get("annotations") or {}
            except (OSError, ValueError):
                pass
        out.append(_from_annotations(cid, pid, annotations, runtime=root.name, source=f"runc state {root}"))
    return out


def _from_annotations(cid: str, pid: int, ann: dict[str, str], runtime: str, source: str) -> Container:
    return Container(id=cid, name=ann.get("io.kubernetes.cri.container-name", cid[:12]),
                     pod=ann.get("io.kubernetes.cri.sandbox-name", cid[:12]),
                     namespace=ann.get("io.kubernetes.cri.sandbox-namespace", runtime),
                     runtime=runtime, pid=pid, source=source)


def discover_containers(roots: HostRoots) -> tuple[list[Container], list[str]]:
    """(containers, notes on sources that could not be read)."""
    found: dict[str, Container] = {}
    notes = []
    for sock in cri_sockets(roots):
        if not sock.exists():
            continue
        try:
            for c in from_cri(sock):
                found.setdefault(c.id, c)
        except CriError as exc:
            notes.append(str(exc))
    for sock in docker_sockets(roots):
        if not sock.exists():
            continue
        try:
            for c in from_docker(sock):
                found.setdefault(c.id, c)
        except EngineError as exc:
            notes.append(str(exc))
    runc_root = Path(os.environ.get("VCHECK_RUNC_ROOT") or roots.run / "runc")
    for c in from_runc_state(runc_root):
        if c.id not in found and c.pid:
            found.setdefault(c.id, c)
    if not found:
        # no runtime API answered: the cgroup tree still names every container
        for c in from_cgroup_paths(roots):
            found.setdefault(c.id, c)
    return [c for c in found.values() if c.pid], notes


# --- host <-> container mapping -------------------------------------------------------------
def nspid(roots: HostRoots, pid: int) -> list[int]:
    """PIDs of `pid` from the host's PID namespace inward (/proc/PID/status NSpid)."""
    for line in read_text(roots.proc / str(pid) / "status").splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return [pid]


def namespace_ids(roots: HostRoots, pid: int) -> dict[str, str]:
    out = {}
    for ns in ("pid", "net", "ipc", "mnt", "uts"):
        try:
            out[ns] = os.readlink(roots.proc / str(pid) / "ns" / ns)
        except OSError:
            pass
    return out


def host_namespaces(roots: HostRoots) -> dict[str, str]:
    """The host's namespaces: PID 1's, or where PID 1 cannot be inspected (a sandbox that hides
    its init) vcheck's own, which are the host's when vcheck runs on the host or with hostPID."""
    ids = namespace_ids(roots, 1)
    return ids if len(ids) >= 3 else namespace_ids(HostRoots(proc=roots.proc), os.getpid())


# --- without a runtime API: cgroup path patterns --------------------------------------------
# leaves as the cgroup drivers name them: systemd (`cri-containerd-<id>.scope`, `crio-<id>.scope`,
# `docker-<id>.scope`, `libpod-<id>.scope`) and cgroupfs (a bare 64-hex id under `pod<uid>`)
LEAF_RE = re.compile(r"^(?:(cri-containerd|crio|docker|libpod)-)?([0-9a-f]{64})(?:\.scope)?$")
POD_UID_RE = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
RUNTIME_OF_PREFIX = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker", "libpod": "podman"}


def _cgroup_walk_root(roots: HostRoots) -> Path:
    if (roots.cgroup / "cgroup.controllers").exists():
        return roots.cgroup
    for name in ("cpu,cpuacct", "cpu", "cpuacct", "memory", "pids"):
        if (roots.cgroup / name).is_dir():
            return roots.cgroup / name
    return roots.cgroup


def _bundle_annotations(roots: HostRoots, cid: str) -> dict[str, str]:
    state = Path(os.environ.get("VCHECK_CONTAINERD_STATE") or roots.run / "containerd")
    base = state / "io.containerd.runtime.v2.task"
    try:
        namespaces = os.listdir(base)
    except OSError:
        return {}
    for ns in namespaces:
        try:
            return json.loads(read_text(base / ns / cid / "config.json")).get("annotations") or {}
        except (OSError, ValueError):
            continue
    return {}


def from_cgroup_paths(roots: HostRoots, max_depth: int = 8) -> list[Container]:
    """Containers recognised by their cgroup's name; names from the runtime's bundle on disk
    when it is readable, else the id (the pod from its `pod<uid>` parent)."""
    top = _cgroup_walk_root(roots)
    out = []
    for dirpath, dirnames, _ in os.walk(top):
        depth = len(Path(dirpath).relative_to(top).parts)
        if depth >= max_depth:
            dirnames[:] = []
        for d in dirnames:
            m = LEAF_RE.match(d)
            if not m:
                continue
            cid = m.group(2)
            try:
                procs = read_text(Path(dirpath) / d / "cgroup.procs").split()
            except OSError:
                continue
            if not procs:
                continue
            ann = _bundle_annotations(roots, cid)
            if ann.get("io.kubernetes.cri.container-type") == "sandbox":
                continue
            runtime = RUNTIME_OF_PREFIX.get(m.group(1) or "", "cgroupfs")
            uid = POD_UID_RE.search(dirpath)
            c = _from_annotations(cid, int(procs[0]), ann, runtime=runtime,
                                  source=f"cgroup path {Path(dirpath) / d}")
            if not ann and uid:
                c = replace(c, pod=f"pod{uid.group(1).replace('_', '-')[:8]}",
                            namespace="kubepods" if "kubepods" in dirpath else runtime)
            out.append(c)
    return out
