"""The kubelet's HTTP endpoints on its API port, beside the gRPC service: /exec, /attach,
/portForward and /containerLogs, as Kubernetes' kubelet serves them to the apiserver.

Exec, attach and port-forward: the kubelet finds the pod's container (or sandbox), asks the
runtime for a streaming URL (CRI Exec, Attach, PortForward) and relays the upgraded connection
there (httpstream.relay), as the kubelet does since it stopped redirecting: the runtime's
streaming server speaks to the client. Failures before that are the kubelet's plain-text
answers ("pod does not exist", 'container not found ("c")'), which kubectl prints as
"unable to upgrade connection: ...". /containerLogs streams the log as text (chunked), with
PodLogOptions' query parameters, following while the container runs.

Paths: /exec/<namespace>/<pod>/<container>, /attach/<namespace>/<pod>/<container>,
/portForward/<namespace>/<pod>, /containerLogs/<namespace>/<pod>/<container> (a pod UID
segment before the container, as the kubelet allows, is accepted and ignored), /healthz,
/pods: the PodList of the pods bound to the node, each with the status the kubelet last
made for it (upstream's GetPods), as JSON; with a ``stats`` (node.kubelet.stats.StatsEndpoints)
/stats/summary (GET or POST, ``?only_cpu_and_memory=true``), /metrics, /metrics/resource and
/metrics/cadvisor.
With an ``auth`` (node.kubelet.auth.KubeletAuth) every request is authenticated and
authorized first, as the kubelet's auth filter does (401/403 in its words).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from urllib.parse import urlsplit

import grpc

from grpclite.context import certificate_error
from httpstream import relay
from httpstream.http import BadRequest, RequestHead, head_bytes, read_head, response_bytes
from node.kubelet import logs
from node.kubelet.server import ContainerError

log = logging.getLogger("kubelet.streaming")

MAX_HEAD_LINE = 16 * 1024
_HTTP_OF = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
            grpc.StatusCode.FAILED_PRECONDITION: 400, grpc.StatusCode.UNAVAILABLE: 503,
            grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.RESOURCE_EXHAUSTED: 429}


def _pod_list(pods) -> bytes:
    from apiserver.rest.convert import to_json

    items = [to_json(pod) for pod in pods]  # each with its apiVersion and kind, as upstream's
    return json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}).encode()


# Go's strconv.ParseBool
_BOOLS = {**dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
          **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False)}


class HttpError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _text(code: int, message: str) -> bytes:
    return response_bytes(code, message.encode() + b"\n")


def _http_error(e: ContainerError) -> HttpError:
    return HttpError(_HTTP_OF.get(e.code, 500), e.message)


class StreamingFront:
    """The HTTP side of the kubelet's port (grpclite hands it the connections that are not
    HTTP/2). ``containers``: the kubelet's Containers, with exec_url, attach_url and
    port_forward_url (node.kubelet.cri_containers)."""

    def __init__(self, containers, *, stream_netns: str = "", poll: float = logs.POLL_INTERVAL,
                 state_check: float = logs.STATE_CHECK_INTERVAL, auth=None, stats=None) -> None:
        self.containers = containers
        self.auth = auth
        self.stats = stats
        self.stream_netns = stream_netns
        self.poll, self.state_check = poll, state_check
        self.tasks: set[asyncio.Task] = set()

    def protocol(self) -> asyncio.Protocol:
        reader = asyncio.StreamReader(limit=MAX_HEAD_LINE)
        return asyncio.StreamReaderProtocol(reader, self._connected)

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            head = await read_head(reader)
            if head is not None and self.auth is not None:
                from node.kubelet.auth import Refused
                try:
                    await self.auth.acheck(writer.get_extra_info("peercert"), head.headers.get("authorization", ""),
                                           head.method, head.path, certificate_error(writer))
                except Refused as e:
                    raise HttpError(e.code, e.message) from None
            if head is not None:
                await self._route(head, reader, writer)
        except HttpError as e:
            writer.write(_text(e.code, str(e)))
        except (BadRequest, asyncio.TimeoutError) as e:
            writer.write(_text(400, str(e) or "timed out reading the request"))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception as e:  # noqa: BLE001 (a bug costs this request, not the kubelet)
            log.exception("kubelet HTTP request failed")
            with contextlib.suppress(Exception):
                writer.write(_text(500, f"{type(e).__name__}: {e}"))
        finally:
            self.tasks.discard(task)
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()

    async def _route(self, head: RequestHead, reader, writer) -> None:
        parts = [p for p in head.path.split("/") if p]
        if not parts:
            raise HttpError(404, "404 page not found")
        if parts == ["healthz"]:
            writer.write(response_bytes(200, b"ok"))
            return
        if parts == ["pods"] and getattr(self.containers, "pods", None) is not None:
            if head.method != "GET":
                raise HttpError(405, "405: Method Not Allowed")
            body = await asyncio.to_thread(lambda: _pod_list(self.containers.pods()))
            writer.write(response_bytes(200, body, "application/json"))
            return
        if parts[0] in ("stats", "metrics") and self.stats is not None:
            await self._stats(head, parts, writer)
            return
        kind, args = parts[0], parts[1:]
        if kind in ("exec", "attach", "containerLogs") and len(args) in (3, 4):
            namespace, pod, container = args[0], args[1], args[-1]
        elif kind == "portForward" and len(args) in (2, 3):
            namespace, pod, container = args[0], args[1], ""
        else:
            raise HttpError(404, "404 page not found")
        if kind == "containerLogs":
            await self._logs(head, writer, namespace, pod, container)
            return
        url = await self._stream_url(kind, head, namespace, pod, container)
        u = urlsplit(url)
        try:
            upstream = await self._dial(u.hostname, u.port)
        except OSError as e:
            raise HttpError(503, f"the container runtime's streaming server does not answer: {e}") from None
        headers = dict(head.headers, host=u.netloc)
        forwarded = RequestHead(head.method, u.path, u.path, {}, headers)
        await relay.relay((reader, writer), upstream, head_bytes(forwarded))

    async def _stats(self, head: RequestHead, parts: list[str], writer) -> None:
        """/stats/summary (upstream takes GET and POST) and the metrics endpoints (GET)."""
        from promtext import CONTENT_TYPE

        if parts == ["stats", "summary"]:
            if head.method not in ("GET", "POST"):
                raise HttpError(405, "405: Method Not Allowed")
            only = head.param("only_cpu_and_memory", "false")
            if only not in _BOOLS:
                raise HttpError(400, f'strconv.ParseBool: parsing "{only}": invalid syntax')
            body = await asyncio.to_thread(self.stats.summary, _BOOLS[only])
            writer.write(response_bytes(200, body, "application/json"))
            return
        render = {("metrics",): self.stats.metrics,
                  ("metrics", "resource"): self.stats.resource_metrics,
                  ("metrics", "cadvisor"): self.stats.cadvisor_metrics}.get(tuple(parts))
        if render is None:
            raise HttpError(404, "404 page not found")
        if head.method not in ("GET", "HEAD"):
            raise HttpError(405, "405: Method Not Allowed")
        body = await asyncio.to_thread(render)
        answer = response_bytes(200, body, CONTENT_TYPE)
        writer.write(answer[:len(answer) - len(body)] if head.method == "HEAD" else answer)

    async def _dial(self, host: str, port: int):
        """The runtime's streaming server, in ``stream_netns`` when one is given."""
        if not self.stream_netns:
            return await relay.open_upstream(host, port)
        from node.network.netns import socket_in
        sock = await asyncio.to_thread(socket_in, self.stream_netns, socket.AF_INET)
        try:
            sock.setblocking(False)
            async with asyncio.timeout(relay.CONNECT_TIMEOUT):
                await asyncio.get_running_loop().sock_connect(sock, (host, port))
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _stream_url(self, kind: str, head: RequestHead, namespace: str, pod: str, container: str) -> str:
        streams = {k: head.flag(k) for k in ("stdin", "stdout", "stderr", "tty")}
        try:
            if kind == "portForward":
                return await asyncio.to_thread(self.containers.port_forward_url, namespace, pod)
            try:
                cid, _, running = await asyncio.to_thread(self.containers.find_container, namespace, pod,
                                                          container, False)
            except ContainerError as e:
                if e.code == grpc.StatusCode.NOT_FOUND and e.message.startswith("pod "):
                    raise HttpError(404, "pod does not exist") from None
                raise HttpError(404, f'container not found ("{container}")') from None
            if not running:
                raise HttpError(404, f'container not found ("{container}")')
            if kind == "exec":
                command = head.query.get("command", [])
                if not command:
                    raise HttpError(400, "you must specify at least one command for the container")
                return await asyncio.to_thread(self.containers.exec_url, cid, command, **streams)
            return await asyncio.to_thread(self.containers.attach_url, cid, **streams)
        except ContainerError as e:
            raise _http_error(e) from None

    async def _logs(self, head: RequestHead, writer, namespace: str, pod: str, container: str) -> None:
        def number(name: str) -> int | None:
            v = head.param(name)
            if not v:
                return None
            try:
                return int(v)
            except ValueError:
                raise HttpError(400, f"{name}: invalid value {v!r}") from None
        try:
            opts = logs.log_options(tail_lines=number("tailLines"), limit_bytes=number("limitBytes"),
                                    since_seconds=number("sinceSeconds"), since_time=head.param("sinceTime"),
                                    follow=head.flag("follow"), timestamps=head.flag("timestamps"),
                                    stream=head.param("stream"))
        except ValueError as e:
            raise HttpError(400, str(e)) from None
        try:
            cid, path, running = await asyncio.to_thread(self.containers.find_container, namespace, pod,
                                                         container, head.flag("previous"))
        except ContainerError as e:
            raise _http_error(e) from None
        is_running = (lambda: self.containers.container_running(cid)) if running else (lambda: False)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n")
        try:
            chunks = logs.aread_log(path, opts, is_running, poll=self.poll, state_check=self.state_check)
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
        except FileNotFoundError:
            pass
        writer.write(b"0\r\n\r\n")
