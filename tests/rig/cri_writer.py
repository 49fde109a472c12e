"""The CRI calls that make and remove pods and containers, as a kubelet would: only the test
rig writes to a runtime, so they live here and not in vcheck."""
from __future__ import annotations

from typing import Any, Mapping

from vcheck.collectors.containers import protowire as pw
from vcheck.collectors.containers.cri import CriClient

NODE = 2   # NamespaceMode.NODE: share the host's namespace


class RigCriClient(CriClient):
    @staticmethod
    def _sandbox_config(cfg: Mapping[str, Any]) -> bytes:
        m = cfg["metadata"]
        ns = [pw.varint(1, NODE)]                                 # host network: no CNI needed
        if cfg.get("host_pid"):
            ns.append(pw.varint(2, NODE))
        linux = [pw.string(1, cfg.get("cgroup_parent", "")),
                 pw.message(2, [pw.message(1, ns)])]
        return b"".join([
            pw.message(1, [pw.string(1, m["name"]), pw.string(2, m["uid"]), pw.string(3, m["namespace"]),
                           pw.varint(4, m.get("attempt", 0))]),
            pw.string(3, cfg.get("log_directory", "")),   # no hostname: host network shares UTS
            pw.string_map(6, cfg.get("labels", {})),
            pw.message(8, linux),
        ])

    def run_pod_sandbox(self, cfg: Mapping[str, Any]) -> str:
        r = self._call("RunPodSandbox", pw.length_delimited(1, self._sandbox_config(cfg)))
        return pw.get_str(r, 1)

    def create_container(self, pod_id: str, sandbox_cfg: Mapping[str, Any], c: Mapping[str, Any]) -> str:
        resources = [pw.varint(1, c.get("cpu_period", 0)), pw.varint(2, c.get("cpu_quota", 0)),
                     pw.varint(4, c.get("memory_limit", 0))]
        ns = [pw.varint(1, NODE)] + ([pw.varint(2, NODE)] if c.get("host_pid") else [])
        security = [pw.varint(2, bool(c.get("privileged"))), pw.message(3, ns)]
        config = b"".join([
            pw.message(1, [pw.string(1, c["name"]), pw.varint(2, 0)]),
            pw.message(2, [pw.string(1, c["image"])]),
            *(pw.string(4, a) for a in c.get("args", [])),
            pw.string_map(9, c.get("labels", {})),
            pw.string(11, f"{c['name']}.log"),
            pw.message(15, [pw.message(1, resources), pw.message(2, security)]),
        ])
        sandbox = dict(sandbox_cfg)
        if c.get("host_pid"):
            sandbox["host_pid"] = True
        r = self._call("CreateContainer", pw.string(1, pod_id) + pw.length_delimited(2, config) +
                       pw.length_delimited(3, self._sandbox_config(sandbox)))
        return pw.get_str(r, 1)

    def start_container(self, container_id: str) -> None:
        self._call("StartContainer", pw.string(1, container_id))

    def stop_container(self, container_id: str, timeout: int = 0) -> None:
        self._call("StopContainer", pw.string(1, container_id) + pw.varint(2, timeout))

    def remove_container(self, container_id: str) -> None:
        self._call("RemoveContainer", pw.string(1, container_id))

    def stop_pod_sandbox(self, pod_id: str) -> None:
        self._call("StopPodSandbox", pw.string(1, pod_id))

    def remove_pod_sandbox(self, pod_id: str) -> None:
        self._call("RemovePodSandbox", pw.string(1, pod_id))
