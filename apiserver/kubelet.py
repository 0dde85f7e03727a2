"""pods/log and pods/exec: the apiserver finds the pod's container and node, and proxies the call
to that node's kubelet (node.kubelet.v1.Kubelet), as kube-apiserver does.

The container: the one named, else the pod's only one, else the one its
kubectl.kubernetes.io/default-container annotation names; otherwise BadRequest in Kubernetes'
words. The pod must be bound to a node, and that node's status must say where its kubelet
listens (status.daemonEndpoints.kubeletEndpoint.port), dialled on ``kubelet_host`` (every
kubelet of this one-machine plane listens on loopback). Kubelet errors come back with
Kubernetes' reasons (NotFound, BadRequest; an unreachable kubelet is ServiceUnavailable).

A followed log is proxied message by message, each written to the client only when the client
has read what came before: nothing buffers without bound, and when the client goes away the
kubelet's stream is cancelled with it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import OrderedDict

import grpc

from apiserver import errors, resources
from apiserver.errors import ApiError
from apiserver.pb import api_pb2
from node.pb import kubelet_pb2, kubelet_pb2_grpc  # the kubelet's API, as its client

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
# kubelet connections kept open (one per node: more nodes close the least recently used)
MAX_KUBELET_CHANNELS = 64
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 40 << 20),  # an exec answer: up to 16 MiB a stream
    # no window growth by bandwidth probing: what a follow holds in the apiserver for a client
    # that does not read stays at HTTP/2's initial window
    ("grpc.http2.bdp_probe", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]
# how long connecting to a kubelet may take
CONNECT_TIMEOUT = 5.0

_REASONS = {
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.INVALID_ARGUMENT: "BadRequest",
    grpc.StatusCode.FAILED_PRECONDITION: "BadRequest",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Timeout",
    grpc.StatusCode.UNAVAILABLE: "ServiceUnavailable",
}


def container_names(pod) -> list[str]:
    """Every container of the pod, app containers then init containers, as Kubernetes lists
    them in its "choose one of" message."""
    return [c.name for c in pod.spec.containers] + [c.name for c in pod.spec.init_containers]


def pick_container(pod, requested: str) -> str:
    """The container a logs or exec request is for (Kubernetes' validateContainer, with the
    default-container annotation kubectl reads)."""
    name = pod.metadata.name
    names = container_names(pod)
    if requested:
        if requested not in names:
            raise errors.bad_request(f"container {requested} is not valid for pod {name}")
        return requested
    if len(pod.spec.containers) == 1:
        return pod.spec.containers[0].name
    default = pod.metadata.annotations.get(DEFAULT_CONTAINER_ANNOTATION, "")
    if default and default in names:
        return default
    if not pod.spec.containers:
        raise errors.bad_request(f"a container name must be specified for pod {name}")
    raise errors.bad_request(f"a container name must be specified for pod {name}, "
                             f"choose one of: [{' '.join(names)}]")


def kubelet_port(node) -> int:
    """The port the node's kubelet serves on (0: the node says none; hollow nodes serve none)."""
    return node.status.daemon_endpoints.kubelet_endpoint.port


def validate_log_options(request: api_pb2.PodLogsRequest) -> None:
    """Kubernetes' ValidatePodLogOptions: Invalid (kind PodLogOptions) with its causes."""
    causes = []
    if request.HasField("tail_lines") and request.tail_lines < 0:
        causes.append(("tailLines", "FieldValueInvalid",
                       f"Invalid value: {request.tail_lines}: must be greater than or equal to 0"))
    if request.HasField("limit_bytes") and request.limit_bytes < 1:
        causes.append(("limitBytes", "FieldValueInvalid",
                       f"Invalid value: {request.limit_bytes}: must be greater than 0"))
    if request.HasField("since_seconds") and request.since_time:
        causes.append(("sinceTime", "FieldValueForbidden",
                       "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"))
    elif request.HasField("since_seconds") and request.since_seconds < 1:
        causes.append(("sinceSeconds", "FieldValueInvalid",
                       f"Invalid value: {request.since_seconds}: must be greater than 0"))
    if request.stream not in ("", "All", "Stdout", "Stderr"):
        causes.append(("stream", "FieldValueNotSupported",
                       f'Unsupported value: "{request.stream}": supported values: "All", "Stderr", "Stdout"'))
    elif request.stream not in ("", "All") and request.HasField("tail_lines"):
        causes.append(("tailLines", "FieldValueForbidden",
                       "Forbidden: `tailLines` and specific `stream` are mutually exclusive for now"))
    if causes:
        raise errors.invalid("PodLogOptions", request.name, causes)


class KubeletTLS:
    """kube-apiserver's --kubelet-client-certificate/-key and --kubelet-certificate-authority:
    the apiserver presents its kubelet client certificate to kubelets (whose webhook
    authorizer then asks RBAC: system:kubelet-api-admin) and verifies theirs."""

    def __init__(self, cert_file: str, key_file: str, ca_file: str) -> None:
        with open(cert_file, "rb") as c, open(key_file, "rb") as k, open(ca_file, "rb") as a:
            cert, key, ca = c.read(), k.read(), a.read()
        self.grpc_credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                                             certificate_chain=cert)
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.load_cert_chain(cert_file, key_file)
        ctx.set_alpn_protocols(["http/1.1"])
        self.ssl_context = ctx


class KubeletClients:
    """grpc.aio channels to the kubelets, one per address, opened on first use;
    with ``tls`` (KubeletTLS) over TLS with the apiserver's kubelet client certificate."""

    def __init__(self, kubelet_host: str = "127.0.0.1", tls: KubeletTLS | None = None) -> None:
        self.kubelet_host = kubelet_host
        self.tls = tls
        self._channels: OrderedDict[str, grpc.aio.Channel] = OrderedDict()

    async def open_http(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to a kubelet's HTTP endpoints (exec, attach, port-forward): TLS with the
        client certificate when the apiserver has one. OSError when the kubelet does not answer."""
        async with asyncio.timeout(CONNECT_TIMEOUT):
            if self.tls is None:
                return await asyncio.open_connection(host, port)
            return await asyncio.open_connection(host, port, ssl=self.tls.ssl_context, server_hostname=host)

    def stub(self, port: int):
        target = f"{self.kubelet_host}:{port}"
        channel = self._channels.pop(target, None)
        if channel is None and self.tls is not None:
            channel = grpc.aio.secure_channel(target, self.tls.grpc_credentials, options=_CHANNEL_OPTIONS)
        elif channel is None:
            channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._channels[target] = channel
        while len(self._channels) > MAX_KUBELET_CHANNELS:
            _, old = self._channels.popitem(last=False)
            asyncio.ensure_future(old.close(grace=1.0))
        return kubelet_pb2_grpc.KubeletStub(channel), target

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), OrderedDict()
        await asyncio.gather(*(c.close(grace=0.5) for c in channels), return_exceptions=True)


def no_kubelet_endpoint(node: str, serves: str) -> ApiError:
    """ServiceUnavailable for a node whose status names no kubelet port."""
    return ApiError("ServiceUnavailable",
                    f'node "{node}" has no kubelet endpoint (status.daemonEndpoints.kubeletEndpoint.port '
                    f"is not set): its kubelet serves no {serves} (hollow nodes do not)", kind="nodes", name=node)


def kubelet_unreachable(node: str, target: str, why: str, prefix: str = "") -> ApiError:
    """ServiceUnavailable for a kubelet that could not be reached at ``target`` (host:port)."""
    return ApiError("ServiceUnavailable",
                    f'{prefix}the kubelet of node "{node}" at {target} does not answer ({why}): '
                    f"is the node's kubelet running?", kind="nodes", name=node)


def kubelet_error(e: grpc.RpcError, node: str, target: str) -> ApiError:
    """A kubelet's failure as the apiserver's error."""
    code = e.code()
    details = e.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE:
        return kubelet_unreachable(node, target, details)
    return ApiError(_REASONS.get(code, "InternalError"), details)


class PodProxy:
    """Logs and Exec for the ApiServer service: ``registry`` reads pods and nodes."""

    def __init__(self, registry, kubelets: KubeletClients) -> None:
        self.registry = registry
        self.kubelets = kubelets
        self._pods = resources.lookup("pods")
        self._nodes = resources.lookup("nodes")

    async def _target(self, namespace: str, name: str, container: str):
        """(kubelet stub, its address, node name, container name) of a pod's container."""
        pod = await self.registry.get(self._pods, namespace, name)
        container = pick_container(pod, container)
        node_name = pod.spec.node_name
        if not node_name:
            raise errors.bad_request(f"pod {name} does not have a host assigned")
        node = await self.registry.get(self._nodes, "", node_name)
        port = kubelet_port(node)
        if port <= 0:
            raise no_kubelet_endpoint(node_name, "logs or exec")
        stub, target = self.kubelets.stub(port)
        return stub, target, node_name, container

    async def logs(self, request: api_pb2.PodLogsRequest, context) -> None:
        """Streams the kubelet's chunks to the client through context.write (which waits while
        the client does not read); cancelled with the call, it cancels the kubelet's stream."""
        validate_log_options(request)
        stub, target, node, container = await self._target(request.namespace, request.name,
                                                           request.container)
        forward = kubelet_pb2.LogsRequest(
            namespace=request.namespace, pod=request.name, container=container,
            follow=request.follow, previous=request.previous, since_time=request.since_time,
            timestamps=request.timestamps, stream=request.stream)
        for field in ("tail_lines", "limit_bytes", "since_seconds"):
            if request.HasField(field):
                setattr(forward, field, getattr(request, field))
        call = stub.ContainerLogs(forward)
        try:
            async for chunk in call:
                await context.write(api_pb2.PodLogsChunk(data=chunk.data))
        except grpc.RpcError as e:
            raise kubelet_error(e, node, target) from None
        finally:
            call.cancel()

    async def exec(self, request: api_pb2.PodExecRequest) -> api_pb2.PodExecResponse:
        if not request.command:
            raise errors.bad_request("you must specify at least one command for the container")
        stub, target, node, container = await self._target(request.namespace, request.name,
                                                           request.container)
        try:
            resp = await stub.Exec(kubelet_pb2.ExecRequest(
                namespace=request.namespace, pod=request.name, container=container,
                command=list(request.command), timeout_seconds=request.timeout_seconds))
        except grpc.RpcError as e:
            raise kubelet_error(e, node, target) from None
        return api_pb2.PodExecResponse(stdout=resp.stdout, stderr=resp.stderr, exit_code=resp.exit_code)
