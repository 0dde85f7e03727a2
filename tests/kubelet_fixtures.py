"""Pods and runtime snapshots for the kubelet logic tests (actions, status, back-off)."""

from __future__ import annotations

from apiserver.pb import core_pb2
from node.kubelet import labels
from node.kubelet.runtime_status import (CONTAINER_EXITED, CONTAINER_RUNNING, SANDBOX_READY,
                                         ContainerStatus, PodRuntimeStatus, SandboxStatus)

T0 = 1_800_000_000.0  # a fixed epoch second for the runtime's timestamps


def make_pod(containers=("app",), inits=(), policy="Always", *, name="web", namespace="default",
             uid="uid-1", deleting=False, **container_fields) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name, pod.metadata.namespace, pod.metadata.uid = name, namespace, uid
    pod.spec.restart_policy = policy
    pod.spec.termination_grace_period_seconds = 30
    pod.spec.node_name = "node-0"
    for n in inits:
        pod.spec.init_containers.add(name=n, image="busybox", command=["true"])
    for n in containers:
        c = pod.spec.containers.add(name=n, image="busybox", command=["sleep", "3600"])
        for k, v in container_fields.items():
            getattr(c, k).CopyFrom(v)
    if deleting:
        pod.metadata.deletion_timestamp = "2027-01-15T08:00:00Z"
        pod.metadata.deletion_grace_period_seconds = 5
    return pod


def spec_of(pod: core_pb2.Pod, name: str) -> core_pb2.Container:
    return next(c for c in (*pod.spec.init_containers, *pod.spec.containers) if c.name == name)


def ctr(pod: core_pb2.Pod, name: str, state=CONTAINER_RUNNING, *, exit_code=0, created=1.0,
        restart=0, cid=None, reason="", finished=None, hash_=None) -> ContainerStatus:
    """A runtime container of ``pod`` made by us (our labels and annotations)."""
    spec = spec_of(pod, name)
    ann = labels.container_annotations(pod, spec, restart)
    if hash_ is not None:
        ann[labels.CONTAINER_HASH] = hash_
    started = T0 + created
    if finished is None:
        finished = started + 5 if state == CONTAINER_EXITED else 0.0
    return ContainerStatus(id=cid or f"{name}-{restart}-{int(created)}", name=name, state=state,
                           attempt=restart, created_at=T0 + created - 0.5, started_at=started,
                           finished_at=finished, exit_code=exit_code, reason=reason,
                           image="docker.io/library/busybox:latest", image_ref="sha256:b0b0",
                           labels=labels.container_labels(pod, spec), annotations=ann)


def sandbox(sid="sb1", state=SANDBOX_READY, attempt=0, ip="10.244.0.5", created=0.0) -> SandboxStatus:
    return SandboxStatus(id=sid, state=state, attempt=attempt, ip=ip, created_at=T0 + created)


def runtime(pod, sandboxes=None, containers=()) -> PodRuntimeStatus:
    return PodRuntimeStatus(uid=pod.metadata.uid, name=pod.metadata.name,
                            namespace=pod.metadata.namespace,
                            sandboxes=list(sandboxes if sandboxes is not None else [sandbox()]),
                            containers=list(containers))
