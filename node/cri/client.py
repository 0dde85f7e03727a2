"""A typed client of a CRI v1 runtime (runtime.v1 RuntimeService and ImageService).

What the kubelet uses to talk to any CRI runtime: ours (``python -m node.runtime``) or
containerd's CRI plugin. Synchronous and thread-safe (one grpcio channel per endpoint,
calls from any thread), as the kubelet's workers are threads.

Deadlines follow the kubelet's remote runtime client: every call gets ``timeout``
(the kubelet's --runtime-request-timeout, 2 minutes); RunPodSandbox twice that;
StopContainer and a bounded ExecSync get their own timeout on top; PullImage and an
unbounded ExecSync have none. Every failure raises ``CriError`` carrying the gRPC code,
so callers branch on codes (NOT_FOUND, DEADLINE_EXCEEDED, UNAVAILABLE), never on texts.

    with CriClient("unix:///run/kp3fa2-n0/cri.sock") as cri:
        cri.wait_ready(10)
        ref = cri.pull_image("busybox")
        sandbox = cri.run_pod_sandbox(cri_pb2.PodSandboxConfig(...))
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc

from node.pb import cri_pb2, cri_pb2_grpc

DEFAULT_TIMEOUT = 120.0  # seconds; the kubelet's default runtime request timeout
# The kubelet's limit for CRI messages (a ListContainers answer on a full node).
MAX_MESSAGE_BYTES = 16 << 20
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


# grpc-go's names where capitalizing grpc.StatusCode's words differs
_GO_CODE_NAMES = {"Ok": "OK", "Cancelled": "Canceled"}


class CriError(Exception):
    """A CRI call failed: ``code`` is the gRPC status code (grpc.StatusCode), ``details``
    the runtime's message, ``method`` the CRI method that failed."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details

    @property
    def rpc_message(self) -> str:
        """The error as a Go gRPC client prints it, which Kubernetes puts in pod statuses and
        events: ``rpc error: code = NotFound desc = ...``."""
        code = "".join(w.capitalize() for w in self.code.name.split("_"))
        return f"rpc error: code = {_GO_CODE_NAMES.get(code, code)} desc = {self.details}"

    @property
    def not_found(self) -> bool:
        return self.code == grpc.StatusCode.NOT_FOUND

    @property
    def timed_out(self) -> bool:
        return self.code == grpc.StatusCode.DEADLINE_EXCEEDED

    @property
    def unavailable(self) -> bool:
        """The runtime is not listening (yet, or any more)."""
        return self.code == grpc.StatusCode.UNAVAILABLE


def channel_target(endpoint: str) -> str:
    """gRPC's target for a runtime endpoint: ``unix:///path`` (what kubelets are given),
    a bare absolute path (taken as a unix socket), or ``host:port``."""
    if endpoint.startswith("/"):
        return "unix://" + endpoint
    return endpoint


def image_spec(image: str | cri_pb2.ImageSpec) -> cri_pb2.ImageSpec:
    return image if isinstance(image, cri_pb2.ImageSpec) else cri_pb2.ImageSpec(image=image)


class _Service:
    """Calls on one stub with deadlines and errors mapped to CriError."""

    def __init__(self, channel: grpc.Channel, stub, timeout: float) -> None:
        self._channel = channel
        self._stub = stub
        self.timeout = timeout

    def _call(self, method: str, request, timeout: float | None = -1.0):
        """`timeout` -1: the client's timeout; None: no deadline."""
        if timeout is not None and timeout < 0:
            timeout = self.timeout
        try:
            return getattr(self._stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            raise CriError(method, e.code(), e.details() or "") from None


class RuntimeService(_Service):
    """runtime.v1.RuntimeService: sandboxes, containers, exec, stats, runtime status."""

    def __init__(self, channel: grpc.Channel, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(channel, cri_pb2_grpc.RuntimeServiceStub(channel), timeout)

    def version(self, api_version: str = "v1") -> cri_pb2.VersionResponse:
        return self._call("Version", cri_pb2.VersionRequest(version=api_version))

    # ---- sandboxes ----

    def run_pod_sandbox(self, config: cri_pb2.PodSandboxConfig, runtime_handler: str = "") -> str:
        """The new sandbox's id. Twice the usual deadline: network set-up is slow."""
        resp = self._call("RunPodSandbox", cri_pb2.RunPodSandboxRequest(
            config=config, runtime_handler=runtime_handler), self.timeout * 2)
        if not resp.pod_sandbox_id:
            raise CriError("RunPodSandbox", grpc.StatusCode.INTERNAL,
                           f"the runtime answered no sandbox id for pod {config.metadata.name!r}")
        return resp.pod_sandbox_id

    def stop_pod_sandbox(self, pod_sandbox_id: str) -> None:
        self._call("StopPodSandbox", cri_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_sandbox_id))

    def remove_pod_sandbox(self, pod_sandbox_id: str) -> None:
        self._call("RemovePodSandbox", cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_sandbox_id))

    def pod_sandbox_status(self, pod_sandbox_id: str, verbose: bool = False) -> cri_pb2.PodSandboxStatusResponse:
        return self._call("PodSandboxStatus", cri_pb2.PodSandboxStatusRequest(
            pod_sandbox_id=pod_sandbox_id, verbose=verbose))

    def list_pod_sandbox(self, filter: cri_pb2.PodSandboxFilter | None = None) -> list[cri_pb2.PodSandbox]:
        return list(self._call("ListPodSandbox", cri_pb2.ListPodSandboxRequest(filter=filter)).items)

    # ---- containers ----

    def create_container(self, pod_sandbox_id: str, config: cri_pb2.ContainerConfig,
                         sandbox_config: cri_pb2.PodSandboxConfig) -> str:
        resp = self._call("CreateContainer", cri_pb2.CreateContainerRequest(
            pod_sandbox_id=pod_sandbox_id, config=config, sandbox_config=sandbox_config))
        if not resp.container_id:
            raise CriError("CreateContainer", grpc.StatusCode.INTERNAL,
                           f"the runtime answered no container id for {config.metadata.name!r}")
        return resp.container_id

    def start_container(self, container_id: str) -> None:
        self._call("StartContainer", cri_pb2.StartContainerRequest(container_id=container_id))

    def stop_container(self, container_id: str, timeout: int) -> None:
        """Stop signal, then SIGKILL after `timeout` seconds (the grace period); the call's
        deadline leaves the runtime the usual time beyond it."""
        self._call("StopContainer", cri_pb2.StopContainerRequest(container_id=container_id, timeout=timeout),
                   self.timeout + max(0, timeout))

    def remove_container(self, container_id: str) -> None:
        self._call("RemoveContainer", cri_pb2.RemoveContainerRequest(container_id=container_id))

    def list_containers(self, filter: cri_pb2.ContainerFilter | None = None) -> list[cri_pb2.Container]:
        return list(self._call("ListContainers", cri_pb2.ListContainersRequest(filter=filter)).containers)

    def container_status(self, container_id: str, verbose: bool = False) -> cri_pb2.ContainerStatusResponse:
        return self._call("ContainerStatus", cri_pb2.ContainerStatusRequest(
            container_id=container_id, verbose=verbose))

    def update_container_resources(self, container_id: str,
                                   linux: cri_pb2.LinuxContainerResources | None = None,
                                   annotations: dict[str, str] | None = None) -> None:
        self._call("UpdateContainerResources", cri_pb2.UpdateContainerResourcesRequest(
            container_id=container_id, linux=linux, annotations=annotations or {}))

    def reopen_container_log(self, container_id: str) -> None:
        self._call("ReopenContainerLog", cri_pb2.ReopenContainerLogRequest(container_id=container_id))

    # ---- exec and streaming endpoints ----

    def exec_sync(self, container_id: str, cmd: list[str], timeout: int = 0) -> cri_pb2.ExecSyncResponse:
        """Run `cmd` in the container and answer its output and exit code (a non-zero exit
        is an answer, not an error). `timeout` seconds (0: none) is the runtime's to
        enforce; past it plus the client's timeout the call fails with DEADLINE_EXCEEDED
        (``CriError.timed_out``: a probe counts it as a timeout)."""
        deadline = self.timeout + timeout if timeout > 0 else None
        return self._call("ExecSync", cri_pb2.ExecSyncRequest(container_id=container_id, cmd=cmd,
                                                              timeout=timeout), deadline)

    def exec(self, request: cri_pb2.ExecRequest) -> str:
        """The URL of the runtime's streaming server that runs this exec."""
        return self._url("Exec", self._call("Exec", request))

    def attach(self, request: cri_pb2.AttachRequest) -> str:
        return self._url("Attach", self._call("Attach", request))

    def port_forward(self, pod_sandbox_id: str, ports: list[int]) -> str:
        return self._url("PortForward", self._call("PortForward", cri_pb2.PortForwardRequest(
            pod_sandbox_id=pod_sandbox_id, port=ports)))

    @staticmethod
    def _url(method: str, resp) -> str:
        if not resp.url:
            raise CriError(method, grpc.StatusCode.INTERNAL, "the runtime answered no streaming URL")
        return resp.url

    # ---- stats and metrics ----

    def container_stats(self, container_id: str) -> cri_pb2.ContainerStats:
        return self._call("ContainerStats", cri_pb2.ContainerStatsRequest(container_id=container_id)).stats

    def list_container_stats(self, filter: cri_pb2.ContainerStatsFilter | None = None) -> list[cri_pb2.ContainerStats]:
        return list(self._call("ListContainerStats", cri_pb2.ListContainerStatsRequest(filter=filter)).stats)

    def pod_sandbox_stats(self, pod_sandbox_id: str) -> cri_pb2.PodSandboxStats:
        return self._call("PodSandboxStats", cri_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod_sandbox_id)).stats

    def list_pod_sandbox_stats(self, filter: cri_pb2.PodSandboxStatsFilter | None = None,
                               ) -> list[cri_pb2.PodSandboxStats]:
        return list(self._call("ListPodSandboxStats", cri_pb2.ListPodSandboxStatsRequest(filter=filter)).stats)

    def list_metric_descriptors(self) -> list[cri_pb2.MetricDescriptor]:
        return list(self._call("ListMetricDescriptors", cri_pb2.ListMetricDescriptorsRequest()).descriptors)

    def list_pod_sandbox_metrics(self) -> list[cri_pb2.PodSandboxMetrics]:
        return list(self._call("ListPodSandboxMetrics", cri_pb2.ListPodSandboxMetricsRequest()).pod_metrics)

    # ---- the runtime ----

    def update_runtime_config(self, pod_cidr: str) -> None:
        """Hand the runtime the node's podCIDR, as the kubelet does once it knows it."""
        self._call("UpdateRuntimeConfig", cri_pb2.UpdateRuntimeConfigRequest(
            runtime_config=cri_pb2.RuntimeConfig(network_config=cri_pb2.NetworkConfig(pod_cidr=pod_cidr))))

    def status(self, verbose: bool = False) -> cri_pb2.StatusResponse:
        return self._call("Status", cri_pb2.StatusRequest(verbose=verbose))

    def runtime_config(self) -> cri_pb2.RuntimeConfigResponse:
        return self._call("RuntimeConfig", cri_pb2.RuntimeConfigRequest())

    def checkpoint_container(self, container_id: str, location: str, timeout: int = 0) -> None:
        self._call("CheckpointContainer", cri_pb2.CheckpointContainerRequest(
            container_id=container_id, location=location, timeout=timeout),
            self.timeout + timeout if timeout > 0 else -1.0)

    def container_events(self) -> ContainerEvents:
        """The runtime's stream of container lifecycle events (GetContainerEvents)."""
        return ContainerEvents(self._stub.GetContainerEvents(cri_pb2.GetEventsRequest()))


class ContainerEvents:
    """An iterator of ContainerEventResponse; ``stop()`` (or leaving a ``with`` block)
    ends it from any thread, which then ends iteration quietly."""

    def __init__(self, call) -> None:
        self._call = call
        self._stopped = threading.Event()

    def __iter__(self) -> Iterator[cri_pb2.ContainerEventResponse]:
        try:
            yield from self._call
        except grpc.RpcError as e:
            if self._stopped.is_set() and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise CriError("GetContainerEvents", e.code(), e.details() or "") from None

    def stop(self) -> None:
        self._stopped.set()
        self._call.cancel()

    def __enter__(self) -> ContainerEvents:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ImageService(_Service):
    """runtime.v1.ImageService: the node's images."""

    def __init__(self, channel: grpc.Channel, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(channel, cri_pb2_grpc.ImageServiceStub(channel), timeout)

    def list_images(self, filter: cri_pb2.ImageFilter | None = None) -> list[cri_pb2.Image]:
        return list(self._call("ListImages", cri_pb2.ListImagesRequest(filter=filter)).images)

    def image_status(self, image: str | cri_pb2.ImageSpec, verbose: bool = False) -> cri_pb2.ImageStatusResponse:
        """``.HasField("image")`` is False when the runtime lacks the image (not an error)."""
        return self._call("ImageStatus", cri_pb2.ImageStatusRequest(image=image_spec(image), verbose=verbose))

    def pull_image(self, image: str | cri_pb2.ImageSpec, auth: cri_pb2.AuthConfig | None = None,
                   sandbox_config: cri_pb2.PodSandboxConfig | None = None,
                   timeout: float | None = None) -> str:
        """The pulled image's reference (its id). No deadline unless given: pulls take as
        long as the registry does, as in the kubelet."""
        resp = self._call("PullImage", cri_pb2.PullImageRequest(
            image=image_spec(image), auth=auth, sandbox_config=sandbox_config), timeout)
        return resp.image_ref

    def remove_image(self, image: str | cri_pb2.ImageSpec) -> None:
        self._call("RemoveImage", cri_pb2.RemoveImageRequest(image=image_spec(image)))

    def image_fs_info(self) -> cri_pb2.ImageFsInfoResponse:
        return self._call("ImageFsInfo", cri_pb2.ImageFsInfoRequest())


class CriClient(RuntimeService):
    """Both services of one runtime; ``image_endpoint`` when images are served elsewhere
    (the kubelet's --image-service-endpoint). The image calls are ``self.images``'s,
    also reachable on the client itself."""

    def __init__(self, endpoint: str, *, image_endpoint: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint
        self._channels = [grpc.insecure_channel(channel_target(endpoint), options=_CHANNEL_OPTIONS)]
        RuntimeService.__init__(self, self._channels[0], timeout)
        image_channel = self._channels[0]
        if image_endpoint and image_endpoint != endpoint:
            image_channel = grpc.insecure_channel(channel_target(image_endpoint), options=_CHANNEL_OPTIONS)
            self._channels.append(image_channel)
        self.images = ImageService(image_channel, timeout)

    def list_images(self, filter=None):
        return self.images.list_images(filter)

    def image_status(self, image, verbose=False):
        return self.images.image_status(image, verbose)

    def pull_image(self, image, auth=None, sandbox_config=None, timeout=None):
        return self.images.pull_image(image, auth, sandbox_config, timeout)

    def remove_image(self, image):
        self.images.remove_image(image)

    def image_fs_info(self):
        return self.images.image_fs_info()

    def wait_ready(self, timeout: float) -> cri_pb2.VersionResponse:
        """Poll Version until the runtime answers (it may still be starting); raises the
        last CriError (UNAVAILABLE: is the runtime running, is the socket path right?)
        after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                return self._call("Version", cri_pb2.VersionRequest(version="v1"), max(0.05, min(1.0, left)))
            except CriError as e:
                if not (e.unavailable or e.timed_out) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)

    def close(self) -> None:
        for ch in self._channels:
            ch.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
