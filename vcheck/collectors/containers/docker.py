"""The Docker Engine API (and podman's compatible service) over a unix socket: running
containers, their init PID, image, privileged flag, and the Kubernetes names dockershim and
cri-dockerd put in container labels."""
from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ...procfs import HostRoots
from .container import Container

API = "/v1.41"
DEFAULT_SOCKETS = ("docker.sock", "podman/podman.sock")   # under the host's /run
K8S_LABELS = ("io.kubernetes.container.name", "io.kubernetes.pod.name", "io.kubernetes.pod.namespace")


class EngineError(Exception):
    """The engine could not be reached or answered badly; the message says which socket."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def _get(sock: Path, path: str, timeout: float = 5.0) -> Any:
    conn = _UnixConnection(str(sock), timeout)
    try:
        conn.request("GET", API + path, headers={"Host": "localhost"})
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise EngineError(f"engine API on {sock}: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise EngineError(f"engine API on {sock}: GET {path}: HTTP {resp.status}")
    try:
        return json.loads(body)
    except ValueError:
        raise EngineError(f"engine API on {sock}: GET {path}: not JSON") from None


def docker_sockets(roots: HostRoots) -> list[Path]:
    extra = [Path(p) for p in os.environ.get("VCHECK_ENGINE_SOCKETS", "").split(":") if p]
    return extra + [roots.run / rel for rel in DEFAULT_SOCKETS]


def from_docker(sock: Path) -> list[Container]:
    out = []
    for c in _get(sock, "/containers/json"):
        cid = c.get("Id", "")
        try:
            detail = _get(sock, f"/containers/{quote(cid)}/json")
        except EngineError:
            continue           # removed between the two calls
        state = detail.get("State") or {}
        if not state.get("Running"):
            continue
        labels = (detail.get("Config") or {}).get("Labels") or c.get("Labels") or {}
        name = (detail.get("Name") or "/" + cid[:12]).lstrip("/")
        runtime = "podman" if "podman" in str(sock) else "docker"
        out.append(Container(
            id=cid, name=labels.get("io.kubernetes.container.name", name),
            pod=labels.get("io.kubernetes.pod.name", name), namespace=labels.get("io.kubernetes.pod.namespace", runtime),
            runtime=runtime, pid=int(state.get("Pid") or 0), image=(detail.get("Config") or {}).get("Image", ""),
            privileged=bool((detail.get("HostConfig") or {}).get("Privileged")), source=f"engine API {sock}",
            labels={k: str(v) for k, v in labels.items()}))
    return out
