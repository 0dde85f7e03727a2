"""Reading a pod's state back from a CRI runtime into the kubelet's snapshot.

As Kubernetes' GetPodStatus: the sandboxes and containers labelled with the
pod's uid (our labels, which are Kubernetes'), each asked for its full status.
Works on any CRI runtime: ours or containerd's. Times arrive in nanoseconds.
"""

from __future__ import annotations

from node.kubelet import labels
from node.kubelet.runtime_status import ContainerStatus, PodRuntimeStatus, SandboxStatus
from node.pb import cri_pb2

NS = 1e9


def sandbox_from_cri(s: cri_pb2.PodSandboxStatus) -> SandboxStatus:
    return SandboxStatus(
        id=s.id, state=cri_pb2.PodSandboxState.Name(s.state), attempt=s.metadata.attempt,
        name=s.metadata.name, namespace=s.metadata.namespace, uid=s.metadata.uid,
        created_at=s.created_at / NS, ip=s.network.ip,
        additional_ips=[p.ip for p in s.network.additional_ips],
        labels=dict(s.labels), annotations=dict(s.annotations))


def container_from_cri(c: cri_pb2.ContainerStatus) -> ContainerStatus:
    return ContainerStatus(
        id=c.id, name=c.metadata.name or c.labels.get(labels.CONTAINER_NAME, ""),
        state=cri_pb2.ContainerState.Name(c.state), attempt=c.metadata.attempt,
        created_at=c.created_at / NS, started_at=c.started_at / NS, finished_at=c.finished_at / NS,
        exit_code=c.exit_code, reason=c.reason, message=c.message, image=c.image.image,
        image_ref=c.image_ref or c.image_id, labels=dict(c.labels), annotations=dict(c.annotations))


def read_pod(runtime, uid: str, name: str = "", namespace: str = "") -> PodRuntimeStatus:
    """The runtime's view of one pod. ``runtime``: node.cri.client.RuntimeService.
    A sandbox or container that vanishes between list and status is skipped."""
    from node.cri.client import CriError

    selector = {labels.POD_UID: uid}
    sandboxes = []
    for item in runtime.list_pod_sandbox(cri_pb2.PodSandboxFilter(label_selector=selector)):
        try:
            sandboxes.append(sandbox_from_cri(runtime.pod_sandbox_status(item.id).status))
        except CriError as e:
            if not e.not_found:
                raise
    containers = []
    for item in runtime.list_containers(cri_pb2.ContainerFilter(label_selector=selector)):
        try:
            containers.append(container_from_cri(runtime.container_status(item.id).status))
        except CriError as e:
            if not e.not_found:
                raise
    return PodRuntimeStatus(uid=uid, name=name, namespace=namespace,
                            sandboxes=sandboxes, containers=containers)


def pods_on_runtime(runtime) -> dict[str, tuple[str, str]]:
    """{pod uid: (namespace, name)} of every sandbox and container the runtime
    holds that carries our labels (what a restarted kubelet adopts or cleans)."""
    out: dict[str, tuple[str, str]] = {}
    for s in runtime.list_pod_sandbox():
        ns, name, uid = labels.pod_of(dict(s.labels))
        if uid:
            out.setdefault(uid, (ns or s.metadata.namespace, name or s.metadata.name))
    for c in runtime.list_containers():
        ns, name, uid = labels.pod_of(dict(c.labels))
        if uid:
            out.setdefault(uid, (ns, name))
    return out


def container_states(runtime) -> dict[str, tuple[str, str]]:
    """{container id: (pod uid, state)} of every labelled container: one
    ListContainers, what the relist compares from one second to the next."""
    return {c.id: (c.labels.get(labels.POD_UID, ""), cri_pb2.ContainerState.Name(c.state))
            for c in runtime.list_containers() if c.labels.get(labels.POD_UID)}
