"""The CRI client against a runtime.v1 server on a unix socket: typed answers, deadlines as
the kubelet sets them, every failure one CriError carrying the gRPC code."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

from cri_server import ServerThread
from node.cri.client import CriClient, CriError, channel_target
from node.pb import cri_pb2, cri_pb2_grpc


class FakeRuntime(cri_pb2_grpc.RuntimeServiceServicer):
    """Answers shaped to exercise the client; what it does not define is UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.exec_requests: list[cri_pb2.ExecSyncRequest] = []
        self.stop_timeouts: list[float | None] = []
        self.events_cancelled = threading.Event()

    async def Version(self, request, context):
        return cri_pb2.VersionResponse(version="0.1.0", runtime_name="fake", runtime_version="1",
                                       runtime_api_version=request.version)

    async def RunPodSandbox(self, request, context):
        # a pod named "broken" gets no id back: the client must not hand "" on
        if request.config.metadata.name == "broken":
            return cri_pb2.RunPodSandboxResponse()
        return cri_pb2.RunPodSandboxResponse(pod_sandbox_id="s-" + request.config.metadata.name)

    async def ContainerStatus(self, request, context):
        if request.container_id == "hang":
            await asyncio.Event().wait()
        await context.abort(grpc.StatusCode.NOT_FOUND, f"container {request.container_id!r} not found")

    async def ListContainers(self, request, context):
        return cri_pb2.ListContainersResponse(containers=[
            cri_pb2.Container(id="c1", pod_sandbox_id=request.filter.pod_sandbox_id,
                              state=cri_pb2.CONTAINER_RUNNING)])

    async def StopContainer(self, request, context):
        self.stop_timeouts.append(context.time_remaining())
        return cri_pb2.StopContainerResponse()

    async def ExecSync(self, request, context):
        self.exec_requests.append(request)
        if request.cmd == ["sleep"]:
            await asyncio.Event().wait()  # ends when the client's deadline cancels the call
        return cri_pb2.ExecSyncResponse(stdout=b"out", stderr=b"err", exit_code=3)

    async def GetContainerEvents(self, request, context):
        for i in range(2):
            yield cri_pb2.ContainerEventResponse(container_id=f"c{i}",
                                                 container_event_type=cri_pb2.CONTAINER_STARTED_EVENT)
        try:
            await asyncio.Event().wait()
        finally:
            self.events_cancelled.set()


class FakeImages(cri_pb2_grpc.ImageServiceServicer):
    async def ImageStatus(self, request, context):
        if request.image.image == "present":
            return cri_pb2.ImageStatusResponse(image=cri_pb2.Image(id="sha256:" + "a" * 64))
        return cri_pb2.ImageStatusResponse()


@pytest.fixture
def runtime(tmp_path):
    fake = FakeRuntime()

    def register(server):
        cri_pb2_grpc.add_RuntimeServiceServicer_to_server(fake, server)
        cri_pb2_grpc.add_ImageServiceServicer_to_server(FakeImages(), server)

    with ServerThread(str(tmp_path / "cri.sock"), register):
        yield fake, f"unix://{tmp_path}/cri.sock"


def test_endpoint_forms():
    assert channel_target("unix:///run/x/cri.sock") == "unix:///run/x/cri.sock"
    assert channel_target("/run/x/cri.sock") == "unix:///run/x/cri.sock"
    assert channel_target("127.0.0.1:5000") == "127.0.0.1:5000"


def test_typed_calls_and_errors_carry_the_grpc_code(runtime):
    fake, endpoint = runtime
    with CriClient(endpoint, timeout=5) as cri:
        assert cri.version().runtime_api_version == "v1"
        config = cri_pb2.PodSandboxConfig(metadata=cri_pb2.PodSandboxMetadata(name="web", uid="u1"))
        assert cri.run_pod_sandbox(config) == "s-web"
        [c] = cri.list_containers(cri_pb2.ContainerFilter(pod_sandbox_id="s-web"))
        assert (c.id, c.pod_sandbox_id, c.state) == ("c1", "s-web", cri_pb2.CONTAINER_RUNNING)

        with pytest.raises(CriError) as err:
            cri.container_status("gone")
        assert err.value.code == grpc.StatusCode.NOT_FOUND and err.value.not_found
        assert err.value.method == "ContainerStatus" and "'gone' not found" in err.value.details
        assert err.value.rpc_message == "rpc error: code = NotFound desc = container 'gone' not found"

        with pytest.raises(CriError) as err:
            cri.attach(cri_pb2.AttachRequest(container_id="c1"))
        assert err.value.code == grpc.StatusCode.UNIMPLEMENTED

        broken = cri_pb2.PodSandboxConfig(metadata=cri_pb2.PodSandboxMetadata(name="broken"))
        with pytest.raises(CriError, match="no sandbox id"):
            cri.run_pod_sandbox(broken)

        # a missing image is an empty answer, not an error
        assert cri.image_status("present").image.id.startswith("sha256:")
        assert not cri.image_status("absent").HasField("image")


def test_exec_sync_answers_exit_codes_and_times_out_past_its_deadline(runtime):
    fake, endpoint = runtime
    with CriClient(endpoint, timeout=0.3) as cri:
        resp = cri.exec_sync("c1", ["false"], timeout=5)
        assert (resp.stdout, resp.stderr, resp.exit_code) == (b"out", b"err", 3)
        assert fake.exec_requests[-1].timeout == 5

        # the call's deadline is the exec's timeout plus the client's: ~1.3 s here
        start = time.monotonic()
        with pytest.raises(CriError) as err:
            cri.exec_sync("c1", ["sleep"], timeout=1)
        took = time.monotonic() - start
        assert err.value.timed_out
        assert err.value.rpc_message.startswith("rpc error: code = DeadlineExceeded desc = ")
        assert 1.2 <= took < 5, took

        # other calls get the client's timeout
        start = time.monotonic()
        with pytest.raises(CriError) as err:
            cri.container_status("hang")
        assert err.value.timed_out and time.monotonic() - start < 3


def test_stop_container_deadline_includes_the_grace_period(runtime):
    fake, endpoint = runtime
    with CriClient(endpoint, timeout=2) as cri:
        cri.stop_container("c1", timeout=30)
    [remaining] = fake.stop_timeouts
    assert 30 < remaining <= 32


def test_container_events_stream_and_stop(runtime):
    fake, endpoint = runtime
    with CriClient(endpoint, timeout=5) as cri:
        events = cri.container_events()
        seen = []
        for event in events:
            seen.append(event.container_id)
            if len(seen) == 2:
                events.stop()
        assert seen == ["c0", "c1"]
        assert fake.events_cancelled.wait(5), "the server's stream was not cancelled"


def test_no_runtime_is_unavailable_and_wait_ready_waits_for_one(tmp_path):
    endpoint = f"unix://{tmp_path}/late.sock"
    with CriClient(endpoint, timeout=2) as cri:
        with pytest.raises(CriError) as err:
            cri.version()
        assert err.value.unavailable
        start = time.monotonic()
        with pytest.raises(CriError):
            cri.wait_ready(0.5)
        assert time.monotonic() - start < 3

        # a runtime that starts while the client waits is found
        server = ServerThread(str(tmp_path / "late.sock"),
                              lambda s: cri_pb2_grpc.add_RuntimeServiceServicer_to_server(FakeRuntime(), s))
        timer = threading.Timer(0.3, server.start)
        timer.start()
        try:
            assert cri.wait_ready(10).runtime_name == "fake"
        finally:
            timer.join()
            server.stop()


def test_image_service_on_its_own_endpoint(tmp_path):
    def runtime_only(s):
        cri_pb2_grpc.add_RuntimeServiceServicer_to_server(FakeRuntime(), s)

    def images_only(s):
        cri_pb2_grpc.add_ImageServiceServicer_to_server(FakeImages(), s)

    with ServerThread(str(tmp_path / "rt.sock"), runtime_only), \
            ServerThread(str(tmp_path / "img.sock"), images_only):
        with CriClient(f"unix://{tmp_path}/rt.sock", image_endpoint=str(tmp_path / "img.sock"),
                       timeout=5) as cri:
            assert cri.version().runtime_name == "fake"
            assert cri.image_status("present").HasField("image")
