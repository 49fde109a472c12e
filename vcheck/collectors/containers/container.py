"""A running container as every source reports it (CRI, the Engine API, runc state, cgroup paths)."""
from __future__ import annotations

from dataclasses import dataclass, field


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
