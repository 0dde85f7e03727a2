"""The labels and annotations the kubelet puts on sandboxes and containers.

Names are Kubernetes' (pkg/kubelet/types and kuberuntime/labels.go), so the
runtime's own listing tells which pod and container each one belongs to: a
restarted kubelet finds its pods' containers by these, and tools that know
Kubernetes' names (crictl) read them.

The container hash covers what a running container cannot change in place: its
name and image (Kubernetes hashes the same two fields since in-place resize).
The value is ours (FNV-1a 32 of canonical JSON); Kubernetes feeds the same
fields through a Go pretty-printer, so a container made by an upstream kubelet
looks "changed" to us and is replaced once.
"""

from __future__ import annotations

import json

from apiserver.pb import core_pb2

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"

CONTAINER_HASH = "io.kubernetes.container.hash"
CONTAINER_RESTART_COUNT = "io.kubernetes.container.restartCount"
CONTAINER_TERMINATION_MESSAGE_PATH = "io.kubernetes.container.terminationMessagePath"
CONTAINER_TYPE = "io.kubernetes.container.type"
CONTAINER_PORTS = "io.kubernetes.container.ports"
POD_DELETION_GRACE_PERIOD = "io.kubernetes.pod.deletionGracePeriod"
POD_TERMINATION_GRACE_PERIOD = "io.kubernetes.pod.terminationGracePeriod"

TYPE_INIT = "init"
TYPE_CONTAINER = "container"

_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    h = _FNV32_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV32_PRIME) & 0xFFFFFFFF
    return h


def container_hash(container: core_pb2.Container) -> str:
    """Hex hash of the fields whose change means "replace the container"."""
    text = json.dumps({"image": container.image, "name": container.name},
                      sort_keys=True, separators=(",", ":"))
    return format(fnv1a_32(text.encode()), "x")


def format_pod(pod: core_pb2.Pod) -> str:
    """``name_namespace(uid)``, as Kubernetes names a pod in messages."""
    m = pod.metadata
    return f"{m.name}_{m.namespace}({m.uid})"


def sandbox_labels(pod: core_pb2.Pod) -> dict[str, str]:
    """The pod's labels plus its identity."""
    out = dict(pod.metadata.labels)
    out.update({POD_NAME: pod.metadata.name, POD_NAMESPACE: pod.metadata.namespace,
                POD_UID: pod.metadata.uid})
    return out


def sandbox_annotations(pod: core_pb2.Pod) -> dict[str, str]:
    return dict(pod.metadata.annotations)


def container_labels(pod: core_pb2.Pod, container: core_pb2.Container) -> dict[str, str]:
    return {POD_NAME: pod.metadata.name, POD_NAMESPACE: pod.metadata.namespace,
            POD_UID: pod.metadata.uid, CONTAINER_NAME: container.name}


def container_annotations(pod: core_pb2.Pod, container: core_pb2.Container,
                          restart_count: int) -> dict[str, str]:
    """What a restarted kubelet needs to know of a container it did not see made:
    its spec hash, restart count, kind and the grace periods to stop it with."""
    out = {CONTAINER_HASH: container_hash(container),
           CONTAINER_RESTART_COUNT: str(restart_count),
           CONTAINER_TERMINATION_MESSAGE_PATH: "/dev/termination-log"}
    if pod.metadata.HasField("deletion_grace_period_seconds"):
        out[POD_DELETION_GRACE_PERIOD] = str(pod.metadata.deletion_grace_period_seconds)
    if pod.spec.HasField("termination_grace_period_seconds"):
        out[POD_TERMINATION_GRACE_PERIOD] = str(pod.spec.termination_grace_period_seconds)
    if container.ports:
        out[CONTAINER_PORTS] = json.dumps(
            [{k: v for k, v in (("name", p.name), ("containerPort", p.container_port),
                                ("protocol", p.protocol or "TCP")) if v} for p in container.ports],
            separators=(",", ":"))
    is_init = any(c.name == container.name for c in pod.spec.init_containers)
    out[CONTAINER_TYPE] = TYPE_INIT if is_init else TYPE_CONTAINER
    return out


def pod_of(labels_: dict[str, str]) -> tuple[str, str, str]:
    """(namespace, name, uid) a sandbox or container belongs to; "" parts when unlabelled."""
    return (labels_.get(POD_NAMESPACE, ""), labels_.get(POD_NAME, ""), labels_.get(POD_UID, ""))
