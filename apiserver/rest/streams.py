"""pods/log, pods/exec, pods/attach and pods/portforward on the REST API: what kubectl logs,
exec, attach and port-forward call.

The log is the kubelet's ContainerLogs (the gRPC call kctl's Logs already goes through,
apiserver.kubelet), streamed as text/plain; PodLogOptions come as query parameters and are
validated as kube-apiserver does. Its first chunk is awaited before the answer starts, so a
kubelet's refusal (no previous instance, a container still waiting) is a Status with its code.

exec, attach and portforward are upgrades (WebSocket for kubectl 1.32: v5.channel.k8s.io, or
SPDY/3.1+portforward.k8s.io tunnelled in a WebSocket): once the pod, container and node are
checked here, the connection is relayed to the node's kubelet (/exec/<ns>/<pod>/<container>,
/attach/..., /portForward/<ns>/<pod>), which relays it to its runtime's streaming server, as
kube-apiserver's UpgradeAwareHandler proxies to the kubelet. A kubelet's refusal reaches the
client as the kubelet wrote it.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

import grpc

from apiserver import errors, resources
from apiserver.kubelet import (KubeletClients, kubelet_error, kubelet_port, kubelet_unreachable, no_kubelet_endpoint,
                               pick_container, validate_log_options)
from apiserver.pb import api_pb2
from apiserver.rest import routing
from apiserver.rest.http1 import Request, Response
from apiserver.rest.status import http_error, status_dict
from httpstream import relay
from httpstream.http import RequestHead, head_bytes, response_bytes
from node.pb import kubelet_pb2

SUBRESOURCES = ("log", "exec", "attach", "portforward")
_KUBELET_PATHS = {"exec": "exec", "attach": "attach", "portforward": "portForward"}
# headers the kubelet gets from the client's upgrade request (the rest, credentials included, stay here)
_FORWARDED_HEADERS = ("connection", "upgrade", "sec-websocket-key", "sec-websocket-version",
                      "sec-websocket-protocol", "x-stream-protocol-version", "user-agent")


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def _int_param(req: Request, name: str) -> int | None:
    v = req.param(name)
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise errors.bad_request(f'invalid value for {name}: "{v}": strconv.ParseInt: parsing "{v}": '
                                 f"invalid syntax") from None


class PodStreams:
    """The pods subresources served through the kubelets. ``kubelets`` None: no kubelets are
    dialled (every such request is ServiceUnavailable)."""

    def __init__(self, registry, kubelets: KubeletClients | None) -> None:
        self.registry = registry
        self.kubelets = kubelets
        self._pods = resources.lookup("pods")
        self._nodes = resources.lookup("nodes")

    async def handle(self, req: Request, t: routing.Target) -> Response:
        if t.subresource == "log":
            if req.method not in ("GET", "HEAD"):
                return http_error(405, "the server does not allow this method on the requested resource")
            return await self._log(req, t)
        if req.method not in ("GET", "POST"):
            return http_error(405, "the server does not allow this method on the requested resource")
        return await self._stream(req, t)

    async def _node_port(self, pod) -> tuple[str, int]:
        node_name = pod.spec.node_name
        if not node_name:
            raise errors.bad_request(f"pod {pod.metadata.name} does not have a host assigned")
        node = await self.registry.get(self._nodes, "", node_name)
        port = kubelet_port(node)
        if port <= 0 or self.kubelets is None:
            raise no_kubelet_endpoint(node_name, "streams")
        return node_name, port

    # ---- log ----

    async def _log(self, req: Request, t: routing.Target) -> Response:
        request = api_pb2.PodLogsRequest(
            namespace=t.namespace, name=t.name, container=req.param("container"),
            follow=_flag(req.param("follow")), previous=_flag(req.param("previous")),
            since_time=req.param("sinceTime"), timestamps=_flag(req.param("timestamps")),
            stream=req.param("stream"))
        for field, param in (("tail_lines", "tailLines"), ("limit_bytes", "limitBytes"),
                             ("since_seconds", "sinceSeconds")):
            value = _int_param(req, param)
            if value is not None:
                setattr(request, field, value)
        validate_log_options(request)
        pod = await self.registry.get(self._pods, t.namespace, t.name)
        container = pick_container(pod, request.container)
        node, port = await self._node_port(pod)
        stub, target = self.kubelets.stub(port)
        forward = kubelet_pb2.LogsRequest(
            namespace=t.namespace, pod=t.name, container=container, follow=request.follow,
            previous=request.previous, since_time=request.since_time, timestamps=request.timestamps,
            stream=request.stream)
        for field in ("tail_lines", "limit_bytes", "since_seconds"):
            if request.HasField(field):
                setattr(forward, field, getattr(request, field))
        call = stub.ContainerLogs(forward)
        try:
            first = await call.read()
        except grpc.RpcError as e:
            call.cancel()
            raise kubelet_error(e, node, target) from None
        if first is grpc.aio.EOF:
            return Response(200, b"", "text/plain")

        async def chunks():
            try:
                yield first.data
                while (chunk := await call.read()) is not grpc.aio.EOF:  # read() only: one style a call
                    yield chunk.data
            except grpc.RpcError:
                return  # the answer has begun: it ends here, as a cut stream does upstream
            finally:
                call.cancel()
        return Response(200, content_type="text/plain", stream=chunks())

    # ---- exec, attach, portforward ----

    async def _stream(self, req: Request, t: routing.Target) -> Response:
        pod = await self.registry.get(self._pods, t.namespace, t.name)
        query = {k: v for k, v in req.query.items() if k != "container"}
        path = f"/{_KUBELET_PATHS[t.subresource]}/{quote(t.namespace)}/{quote(t.name)}"
        if t.subresource in ("exec", "attach"):
            container = pick_container(pod, req.param("container"))
            flags = [_flag(req.param(k)) for k in ("stdin", "stdout", "stderr")]
            if not any(flags):
                raise errors.bad_request("you must specify at least 1 of stdin, stdout, stderr")
            if t.subresource == "exec" and not query.get("command"):
                raise errors.bad_request("you must specify at least one command for the container")
            path += f"/{quote(container)}"
        node, port = await self._node_port(pod)
        if not req.headers.get("upgrade"):
            raise errors.bad_request("Upgrade request required")
        headers = {k: v for k, v in req.headers.items() if k in _FORWARDED_HEADERS}
        host = self.kubelets.kubelet_host
        headers["host"] = f"{host}:{port}"
        target = path + ("?" + urlencode(query, doseq=True) if query else "")
        head = head_bytes(RequestHead(req.method, target, path, {}, headers))

        async def takeover(reader, writer) -> None:
            try:
                upstream = await self.kubelets.open_http(host, port)
            except OSError as e:
                err = kubelet_unreachable(node, f"{host}:{port}", str(e))
                writer.write(response_bytes(503, json.dumps(status_dict(err)).encode(), "application/json"))
                await writer.drain()
                return
            await relay.relay((reader, writer), upstream, head)
        return Response(101, takeover=takeover)
