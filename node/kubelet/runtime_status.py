"""What the runtime says about one pod: its sandboxes and containers, as plain data.

The kubelet's decisions (actions.py) and the status it writes (status.py) are
pure functions of this snapshot and the pod spec, so they test without a
runtime. The fields mirror CRI's PodSandboxStatus and ContainerStatus (their
state names are CRI's enum names); times are seconds since the epoch (CRI
sends nanoseconds: the CRI adapter divides). Kubernetes keeps the same split:
kubecontainer.PodStatus is what its runtime manager reads back through CRI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.kubelet import labels

SANDBOX_READY = "SANDBOX_READY"
SANDBOX_NOTREADY = "SANDBOX_NOTREADY"

CONTAINER_CREATED = "CONTAINER_CREATED"
CONTAINER_RUNNING = "CONTAINER_RUNNING"
CONTAINER_EXITED = "CONTAINER_EXITED"
CONTAINER_UNKNOWN = "CONTAINER_UNKNOWN"


@dataclass
class SandboxStatus:
    id: str
    state: str = SANDBOX_READY
    attempt: int = 0
    name: str = ""          # metadata.name: the pod's name
    namespace: str = ""
    uid: str = ""
    created_at: float = 0.0
    ip: str = ""            # network.ip; "" when the sandbox has no pod network (yet)
    additional_ips: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class ContainerStatus:
    id: str
    name: str               # metadata.name: the container's name in the pod spec
    state: str = CONTAINER_RUNNING
    attempt: int = 0
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    exit_code: int = 0
    reason: str = ""        # the runtime's: Completed, Error, OOMKilled, ...
    message: str = ""
    image: str = ""         # image.image: the reference as the runtime names it
    image_ref: str = ""     # the image id (digest) it runs
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return self.annotations.get(labels.CONTAINER_HASH, "")

    @property
    def restart_count(self) -> int:
        """The restart count the kubelet stamped on the container when it made it
        (Kubernetes' source of restartCount, so a restarted kubelet keeps counting)."""
        try:
            return int(self.annotations.get(labels.CONTAINER_RESTART_COUNT, "0"))
        except ValueError:
            return 0


@dataclass
class PodRuntimeStatus:
    """One pod's sandboxes (newest first) and every container of any of them."""

    uid: str
    name: str = ""
    namespace: str = ""
    sandboxes: list[SandboxStatus] = field(default_factory=list)
    containers: list[ContainerStatus] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sandboxes.sort(key=lambda s: s.created_at, reverse=True)
        self.containers.sort(key=lambda c: c.created_at, reverse=True)

    def find(self, name: str) -> ContainerStatus | None:
        """The newest container of that name (as FindContainerStatusByName)."""
        for c in self.containers:
            if c.name == name:
                return c
        return None

    def all_named(self, name: str) -> list[ContainerStatus]:
        """Every container of that name, newest first."""
        return [c for c in self.containers if c.name == name]

    @property
    def ips(self) -> list[str]:
        """The pod's IPs: its newest sandbox's, primary first."""
        if not self.sandboxes or not self.sandboxes[0].ip:
            return []
        return [self.sandboxes[0].ip, *self.sandboxes[0].additional_ips]
