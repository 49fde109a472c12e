"""Which containers run on this node, best source first, and how each maps to the host.

1. The CRI API of every reachable runtime socket (containerd, CRI-O; more with
   ``VCHECK_CRI_SOCKETS=path:path``): pods, namespaces, names, ids, PIDs, privileged.
2. Without a runtime API, the runtimes' state on disk: runc's ``state.json`` files
   (``VCHECK_RUNC_ROOT``, default ``/run/runc``) and containerd's task bundles, so ids and PIDs
   still resolve (Kubernetes names then come from the bundle's CRI annotations).
Each container's cgroup is then found from its init PID, the same way for every source.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...procfs import HostRoots, read_text
from .cri import DEFAULT_SOCKETS, CriClient, CriError

CRI_ANNOTATIONS = ("io.kubernetes.cri.container-name", "io.kubernetes.cri.sandbox-name",
                   "io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri.container-type")


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    pod: str
    namespace: str
    runtime: str
    pid: int
    image: str = ""
    privileged: bool | None = None
    source: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> dict[str, str]:
        return {"namespace": self.namespace, "pod": self.pod, "container": self.name}


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
    runc_root = Path(os.environ.get("VCHECK_RUNC_ROOT") or roots.run / "runc")
    for c in from_runc_state(runc_root):
        if c.id not in found and c.pid:
            # CRI pause containers are not workloads
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
