"""Which container instance the kubelet API serves logs of (node.kubelet.cri_containers), without a
runtime: a fake one holding the instances the kubelet kept. With the pod's status the choice is
the kubelet's validateContainerLogStatus: during a crash loop only the newest exited instance is
kept, and it is both the previous and the current one."""

from __future__ import annotations

import grpc
import pytest

from apiserver.pb import core_pb2
from node.kubelet.cri_containers import CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID, CriContainers
from node.kubelet.server import ContainerError
from node.pb import cri_pb2


class FakeRuntime:
    def __init__(self, *containers: tuple[str, int, int]) -> None:
        """(id, attempt, state) each, of container "app" of pod default/web."""
        self.containers = {cid: (attempt, state) for cid, attempt, state in containers}

    def list_containers(self, flt=None):
        return [cri_pb2.Container(id=cid, metadata=cri_pb2.ContainerMetadata(name="app", attempt=attempt),
                                  state=state, created_at=attempt + 1,
                                  labels={POD_NAMESPACE: "default", POD_NAME: "web", POD_UID: "u",
                                          CONTAINER_NAME: "app"})
                for cid, (attempt, state) in self.containers.items()]

    def list_pod_sandbox(self, flt=None):
        return [cri_pb2.PodSandbox(id="sb")]

    def container_status(self, cid):
        attempt, state = self.containers[cid]
        return cri_pb2.ContainerStatusResponse(status=cri_pb2.ContainerStatus(
            id=cid, state=state, log_path=f"/logs/app/{attempt}.log"))


def status(**state) -> core_pb2.PodStatus:
    cs = core_pb2.ContainerStatus(name="app", **state)
    return core_pb2.PodStatus(container_statuses=[cs])


CRASH_LOOP = status(state=core_pb2.ContainerState(waiting=core_pb2.ContainerStateWaiting(reason="CrashLoopBackOff")),
                    last_state=core_pb2.ContainerState(terminated=core_pb2.ContainerStateTerminated(
                        exit_code=1, container_id="containerd://c2")))


def test_a_crash_looping_containers_last_run_is_previous_and_current():
    rt = FakeRuntime(("c2", 2, cri_pb2.CONTAINER_EXITED))  # the kubelet removed c0 and c1
    with_status = CriContainers(rt, lambda ns, pod: CRASH_LOOP)
    assert with_status.find_container("default", "web", "app", previous=True) == ("c2", "/logs/app/2.log", False)
    assert with_status.find_container("default", "web", "app", previous=False) == ("c2", "/logs/app/2.log", False)
    # without the status only the runtime's instances decide: no instance before the newest
    with pytest.raises(ContainerError) as err:
        CriContainers(rt).find_container("default", "web", "app", previous=True)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_running_after_a_restart_and_never_run():
    rt = FakeRuntime(("c0", 0, cri_pb2.CONTAINER_EXITED), ("c1", 1, cri_pb2.CONTAINER_RUNNING))
    running = status(container_id="cri://c1", state=core_pb2.ContainerState(running=core_pb2.ContainerStateRunning()),
                     last_state=core_pb2.ContainerState(terminated=core_pb2.ContainerStateTerminated(
                         container_id="cri://c0")))
    c = CriContainers(rt, lambda ns, pod: running)
    assert c.find_container("default", "web", "app", previous=False) == ("c1", "/logs/app/1.log", True)
    assert c.find_container("default", "web", "app", previous=True) == ("c0", "/logs/app/0.log", False)
    pulling = status(state=core_pb2.ContainerState(waiting=core_pb2.ContainerStateWaiting(reason="ErrImagePull")))
    for previous, text in ((False, "is waiting to start: image can't be pulled"), (True, "previous terminated")):
        with pytest.raises(ContainerError) as err:
            CriContainers(FakeRuntime(), lambda ns, pod: pulling).find_container("default", "web", "app", previous)
        assert text in err.value.message
