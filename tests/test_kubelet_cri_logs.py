"""The kubelet API server on a real CRI runtime: node.kubelet.cri_containers finds containers
by Kubernetes' labels, their logs are the files conmon writes, exec is ExecSync through runc.
One node (its namespace on a fabric, `python -m node.runtime`), one pod sandbox, a container
that ran and exited (the previous instance) and one that runs and talks when told to through
exec. Needs root, runc, conmon, busybox-static; skipped with the reason where they are missing."""

from __future__ import annotations

import secrets
import threading
import time

import grpc
import pytest
from harness.etcd_client import wait_until
from harness.nodes import RuntimeProcess
from harness.procs import Registry

from node import capable
from node.cri.client import CriClient
from node.kubelet.cri_containers import CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID, CriContainers
from node.kubelet.server import KubeletServer
from node.pb import cri_pb2, kubelet_pb2, kubelet_pb2_grpc
from node.plane import RealNodes

pytestmark = pytest.mark.process

NS, POD = "default", "talker"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    reason = capable.why_not()
    if reason:
        pytest.skip(f"real nodes cannot run here: {reason}")
    layout = RealNodes(tmp_path_factory.mktemp("crilogs"), 1)
    reg = Registry()
    client = None
    try:
        layout.prepare()
        n = layout.nodes[0]
        RuntimeProcess(layout, n, reg).start()
        client = CriClient(n.cri_socket, timeout=60)
        client.update_runtime_config(n.pod_cidr)
        yield client, n
    finally:
        if client is not None:
            client.close()
        reg.cleanup()
        problems = layout.teardown()
    assert problems == []


def _labels(uid: str, container: str = "") -> dict:
    out = {POD_NAMESPACE: NS, POD_NAME: POD, POD_UID: uid}
    if container:
        out[CONTAINER_NAME] = container
    return out


@pytest.fixture(scope="module")
def pod(node):
    """The sandbox, app's first run (exited 2 after writing to both streams, the last line
    without its newline) and its second run (running)."""
    cri, n = node
    uid = secrets.token_hex(8)
    config = cri_pb2.PodSandboxConfig(
        metadata=cri_pb2.PodSandboxMetadata(name=POD, namespace=NS, uid=uid),
        hostname=POD, log_directory=str(n.dir / "pods" / f"{NS}_{POD}_{uid}"), labels=_labels(uid))
    sid = cri.run_pod_sandbox(config)

    def run(attempt: int, script: str) -> str:
        cid = cri.create_container(sid, cri_pb2.ContainerConfig(
            metadata=cri_pb2.ContainerMetadata(name="app", attempt=attempt),
            image=cri_pb2.ImageSpec(image="busybox"), command=["sh", "-c", script],
            log_path=f"app/{attempt}.log", labels=_labels(uid, "app")), config)
        cri.start_container(cid)
        return cid
    first = run(0, "echo one; echo err >&2; printf partial; exit 2")
    wait_until(lambda: cri.container_status(first).status.state == cri_pb2.CONTAINER_EXITED, 30,
               what="the first run to exit")
    second = run(1, "echo started; while [ ! -f /stop ]; do "
                    "if [ -f /say ]; then cat /say; rm /say; fi; sleep 0.05; done; echo bye")
    try:
        yield first, second
    finally:
        cri.stop_pod_sandbox(sid)
        cri.remove_pod_sandbox(sid)


@pytest.fixture(scope="module")
def kubelet(node):
    server = KubeletServer(CriContainers(node[0]), poll=0.02, state_check=0.1)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            yield kubelet_pb2_grpc.KubeletStub(ch)
    finally:
        server.stop()


def logs(stub, **kw) -> bytes:
    return b"".join(c.data for c in stub.ContainerLogs(
        kubelet_pb2.LogsRequest(namespace=NS, pod=POD, container="app", **kw), timeout=30))


def exec_(stub, *cmd, timeout_seconds=0):
    return stub.Exec(kubelet_pb2.ExecRequest(namespace=NS, pod=POD, container="app", command=list(cmd),
                                             timeout_seconds=timeout_seconds), timeout=30)


def test_previous_logs_as_conmon_wrote_them(pod, kubelet):
    assert logs(kubelet, previous=True, stream="Stdout") == b"one\npartial"
    assert logs(kubelet, previous=True, stream="Stderr") == b"err\n"
    assert sorted(logs(kubelet, previous=True).split(b"\n")) == [b"err", b"one", b"partial"]
    assert logs(kubelet, previous=True, tail_lines=1) in (b"partial", b"err\n")
    wait_until(lambda: logs(kubelet) == b"started\n", 20, what="the second run's first line")


def test_exec_codes_and_timeout(pod, kubelet):
    assert exec_(kubelet, "sh", "-c", "echo out; echo err >&2; exit 7") == \
        kubelet_pb2.ExecResponse(stdout=b"out\n", stderr=b"err\n", exit_code=7)
    assert exec_(kubelet, "cat", "/proc/1/cmdline").stdout.split(b"\0")[:2] == [b"sh", b"-c"]
    with pytest.raises(grpc.RpcError) as e:
        exec_(kubelet, "sleep", "10", timeout_seconds=1)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_follow_sees_what_exec_makes_it_say_and_ends_when_it_exits(pod, kubelet):
    got: list[bytes] = []
    done = threading.Event()

    def follow():
        for chunk in kubelet.ContainerLogs(kubelet_pb2.LogsRequest(
                namespace=NS, pod=POD, container="app", follow=True), timeout=60):
            got.append(chunk.data)
        done.set()
    threading.Thread(target=follow, daemon=True).start()
    wait_until(lambda: b"started\n" in b"".join(got), 20, what="the follow to start")
    assert exec_(kubelet, "sh", "-c", "echo hello from exec > /say.tmp && mv /say.tmp /say").exit_code == 0
    wait_until(lambda: b"hello from exec\n" in b"".join(got), 20, what="the line to be followed")
    started = time.monotonic()
    assert exec_(kubelet, "touch", "/stop").exit_code == 0
    assert done.wait(20), f"the follow did not end after the container exited: {got!r}"
    assert b"".join(got) == b"started\nhello from exec\nbye\n"
    assert time.monotonic() - started < 10
    with pytest.raises(grpc.RpcError) as e:
        exec_(kubelet, "true")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_what_the_runtime_does_not_have(pod, kubelet):
    with pytest.raises(grpc.RpcError) as e:
        list(kubelet.ContainerLogs(kubelet_pb2.LogsRequest(namespace=NS, pod="nobody", container="app"), timeout=30))
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.NOT_FOUND, 'pod "nobody" does not exist')
    with pytest.raises(grpc.RpcError) as e:
        list(kubelet.ContainerLogs(kubelet_pb2.LogsRequest(namespace=NS, pod=POD, container="sidecar"), timeout=30))
    assert (e.value.code(), e.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, 'container "sidecar" in pod "talker" is waiting to start: ContainerCreating')
