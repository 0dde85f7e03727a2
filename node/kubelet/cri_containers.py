"""The kubelet API server's Containers on a CRI runtime: what a real kubelet passes to
node.kubelet.server.KubeletServer.

A pod's containers are found by the labels every kubelet puts on them (Kubernetes'
io.kubernetes.pod.namespace / .pod.name / .container.name / .pod.uid), so it works on any CRI
runtime (ours or containerd's) and for containers a restarted kubelet adopted. The current
instance is the newest attempt of the pod's newest incarnation (a pod deleted and created again
under its name is another uid); the previous one is the attempt before it, as long as the
kubelet has not removed it. Log paths and states come from ContainerStatus, commands run by
ExecSync.

When the kubelet knows the pod's status (``status_of``), the instance is chosen from it as the
kubelet's validateContainerLogStatus does: the previous one is lastState.terminated's container
(a crash-looping container's last run: the kubelet keeps only the newest exited instance, so
"the attempt before" would not be there), the current one the running or terminated container,
else lastState's; a container waiting with no run behind it is "waiting to start".
"""

from __future__ import annotations

import math

import grpc

from node.cri.client import CriError
from node.kubelet.server import (
    ContainerError,
    container_not_found,
    pod_not_found,
    previous_not_found,
    waiting_to_start,
)
from node.pb import cri_pb2

# Kubernetes' labels on CRI sandboxes and containers (pkg/kubelet/types/labels.go)
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"


def _error(e: CriError) -> ContainerError:
    """A runtime failure as the kubelet answers it."""
    code = {grpc.StatusCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION: grpc.StatusCode.INVALID_ARGUMENT,  # e.g. not running
            grpc.StatusCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE}.get(e.code, grpc.StatusCode.INTERNAL)
    return ContainerError(code, e.rpc_message)


class CriContainers:
    """node.kubelet.server.Containers over ``runtime`` (node.cri.client.RuntimeService, or the
    CriClient). Thread-safe as the client is."""

    def __init__(self, runtime, status_of=None, pods=None) -> None:
        """``status_of(namespace, pod) -> core PodStatus | None``: the kubelet's last status of
        the pod (None: unknown, e.g. not synced since a restart: the runtime's instances decide).
        ``pods() -> [core Pod]``: the pods bound to the node, for the kubelet's /pods."""
        self.runtime = runtime
        self.status_of = status_of
        self.pods = pods

    def _from_status(self, namespace: str, pod: str, container: str, previous: bool) -> str | None:
        """The container id the pod's status names for the request (None without a status)."""
        status = self.status_of(namespace, pod) if self.status_of is not None else None
        if status is None:
            return None
        cs = next((c for c in (*status.container_statuses, *status.init_container_statuses)
                   if c.name == container), None)
        if cs is None:
            return None
        last = cs.last_state.terminated if cs.last_state.HasField("terminated") else None
        if previous:
            if last is None or not last.container_id:
                raise previous_not_found(pod, container)
            cid = last.container_id
        elif cs.state.HasField("running") and cs.container_id:
            cid = cs.container_id
        elif cs.state.HasField("terminated") and (cs.state.terminated.container_id or cs.container_id):
            cid = cs.state.terminated.container_id or cs.container_id
        elif last is not None and last.container_id:
            cid = last.container_id
        elif cs.state.HasField("waiting"):
            raise waiting_to_start(pod, container, cs.state.waiting.reason or "ContainerCreating")
        else:
            return None
        return cid.split("://", 1)[-1]

    def _instances(self, namespace: str, pod: str, container: str) -> list:
        """The container's instances of the pod's newest incarnation, newest first."""
        selector = {POD_NAMESPACE: namespace, POD_NAME: pod, CONTAINER_NAME: container}
        found = self.runtime.list_containers(cri_pb2.ContainerFilter(label_selector=selector))
        if not found:
            return []
        newest_uid = max(found, key=lambda c: c.created_at).labels.get(POD_UID, "")
        mine = [c for c in found if c.labels.get(POD_UID, "") == newest_uid]
        return sorted(mine, key=lambda c: (c.metadata.attempt, c.created_at), reverse=True)

    def find_container(self, namespace: str, pod: str, container: str, previous: bool) -> tuple[str, str, bool]:
        try:
            chosen_id = self._from_status(namespace, pod, container, previous)
            if chosen_id is not None:
                status = self.runtime.container_status(chosen_id).status
                return chosen_id, status.log_path, status.state == cri_pb2.CONTAINER_RUNNING
            instances = self._instances(namespace, pod, container)
            if not instances:
                sandboxes = self.runtime.list_pod_sandbox(cri_pb2.PodSandboxFilter(
                    label_selector={POD_NAMESPACE: namespace, POD_NAME: pod}))
                if not sandboxes:
                    raise pod_not_found(pod)
                if previous:
                    raise previous_not_found(pod, container)
                raise waiting_to_start(pod, container, "ContainerCreating")
            if previous:
                if len(instances) < 2:
                    raise previous_not_found(pod, container)
                chosen = instances[1]
            else:
                chosen = instances[0]
            status = self.runtime.container_status(chosen.id).status
        except CriError as e:
            if e.not_found:  # removed between the list and the status
                raise container_not_found(pod, container) from None
            raise _error(e) from None
        return chosen.id, status.log_path, status.state == cri_pb2.CONTAINER_RUNNING

    def container_running(self, container_id: str) -> bool:
        try:
            return self.runtime.container_status(container_id).status.state == cri_pb2.CONTAINER_RUNNING
        except CriError as e:
            if e.not_found:
                return False
            raise _error(e) from None

    def exec_sync(self, container_id: str, command: list[str], timeout: float | None) -> tuple[bytes, bytes, int]:
        """CRI ExecSync; its timeout is whole seconds (0: none), so a fraction rounds up."""
        seconds = 0 if timeout is None else max(1, math.ceil(timeout))
        try:
            resp = self.runtime.exec_sync(container_id, list(command), timeout=seconds)
        except CriError as e:
            raise _error(e) from None
        return resp.stdout, resp.stderr, resp.exit_code

    # ---- streaming: URLs of the runtime's streaming server ----

    def exec_url(self, container_id: str, command: list[str], *, stdin: bool, stdout: bool,
                 stderr: bool, tty: bool) -> str:
        try:
            return self.runtime.exec(cri_pb2.ExecRequest(
                container_id=container_id, cmd=list(command), tty=tty, stdin=stdin, stdout=stdout,
                stderr=stderr and not tty))
        except CriError as e:
            raise _error(e) from None

    def attach_url(self, container_id: str, *, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> str:
        try:
            return self.runtime.attach(cri_pb2.AttachRequest(
                container_id=container_id, tty=tty, stdin=stdin, stdout=stdout, stderr=stderr and not tty))
        except CriError as e:
            raise _error(e) from None

    def port_forward_url(self, namespace: str, pod: str) -> str:
        """The pod's ready sandbox (its newest) forwards; ports come with each stream."""
        try:
            sandboxes = self.runtime.list_pod_sandbox(cri_pb2.PodSandboxFilter(
                label_selector={POD_NAMESPACE: namespace, POD_NAME: pod},
                state=cri_pb2.PodSandboxStateValue(state=cri_pb2.SANDBOX_READY)))
            if not sandboxes:
                raise pod_not_found(pod)
            newest = max(sandboxes, key=lambda s: s.created_at)
            return self.runtime.port_forward(newest.id, [])
        except CriError as e:
            raise _error(e) from None
