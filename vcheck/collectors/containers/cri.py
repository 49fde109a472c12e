"""A CRI (Kubernetes Container Runtime Interface, runtime.v1) client of vcheck's own.

It speaks gRPC over the runtime's unix socket (containerd, CRI-O) with the distribution's
grpcio and hand-encoded messages (field numbers from the published cri-api api.proto), so no
generated code and no protobuf runtime ship with vcheck. vcheck only reads (Version,
ListPodSandbox, ListContainers, ContainerStatus); the test rig's writing client, which makes pods
and containers the way a kubelet does, lives in tests/rig/cri_writer.py.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import protowire as pw

SERVICE = "/runtime.v1.RuntimeService/"
DEFAULT_SOCKETS = ("containerd/containerd.sock", "crio/crio.sock")   # under the host's /run
CONTAINER_STATES = {0: "created", 1: "running", 2: "exited", 3: "unknown"}


class CriError(Exception):
    """The runtime could not be reached or refused a call; the message says which and why."""


@dataclass(frozen=True)
class PodInfo:
    id: str
    name: str
    namespace: str
    uid: str
    ready: bool
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    pod_id: str
    name: str
    image: str
    state: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerDetail:
    """What verbose ContainerStatus adds (containerd's and CRI-O's `info` JSON)."""

    pid: int
    privileged: bool
    cgroups_path: str


class CriClient:
    def __init__(self, socket_path: str, timeout: float = 5.0):
        # vcheck forks (a Python check's container.call()) and never uses gRPC in the child:
        # without this, gRPC's fork handlers run in every child and can hang it
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        try:
            import grpc  # type: ignore[import-not-found]
        except ImportError as exc:
            raise CriError("grpcio is not importable: install the distribution's python3-grpcio") from exc
        self.socket_path = socket_path
        self.timeout = timeout
        self._grpc = grpc
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: bytes) -> dict[int, list]:
        rpc = self._channel.unary_unary(SERVICE + method, request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        try:
            return pw.parse(rpc(request, timeout=self.timeout))
        except self._grpc.RpcError as exc:
            code = exc.code().name if hasattr(exc, "code") else "?"
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            raise CriError(f"CRI {method} on {self.socket_path}: {code}: {detail}") from None

    # --- reading (vcheck) ----------------------------------------------------------------
    def version(self) -> str:
        r = self._call("Version", pw.string(1, "v1"))
        return f"{pw.get_str(r, 2)} {pw.get_str(r, 3)} (CRI {pw.get_str(r, 4)})"

    def list_pods(self) -> list[PodInfo]:
        r = self._call("ListPodSandbox", b"")
        out = []
        for raw in r.get(1, []):
            p = pw.parse(raw)
            meta = pw.get_msg(p, 2)
            out.append(PodInfo(id=pw.get_str(p, 1), name=pw.get_str(meta, 1), uid=pw.get_str(meta, 2),
                               namespace=pw.get_str(meta, 3), ready=pw.get_int(p, 3) == 0,
                               labels=pw.get_map(p, 5)))
        return out

    def list_containers(self) -> list[ContainerInfo]:
        r = self._call("ListContainers", b"")
        out = []
        for raw in r.get(1, []):
            c = pw.parse(raw)
            out.append(ContainerInfo(id=pw.get_str(c, 1), pod_id=pw.get_str(c, 2),
                                     name=pw.get_str(pw.get_msg(c, 3), 1),
                                     image=pw.get_str(pw.get_msg(c, 4), 1),
                                     state=CONTAINER_STATES.get(pw.get_int(c, 6), "unknown"),
                                     labels=pw.get_map(c, 8)))
        return out

    def container_detail(self, container_id: str) -> ContainerDetail:
        r = self._call("ContainerStatus", pw.string(1, container_id) + pw.varint(2, True))
        info = pw.get_map(r, 2).get("info", "")
        try:
            doc: dict[str, Any] = json.loads(info) if info else {}
        except ValueError:
            doc = {}
        spec = doc.get("runtimeSpec") or {}
        sc = ((doc.get("config") or {}).get("linux") or {}).get("security_context") or {}
        return ContainerDetail(pid=int(doc.get("pid") or 0), privileged=bool(sc.get("privileged")),
                               cgroups_path=str((spec.get("linux") or {}).get("cgroupsPath", "")))
