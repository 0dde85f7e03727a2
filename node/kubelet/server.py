"""The kubelet's API server: container logs and exec for the apiserver (node.kubelet.v1.Kubelet).

What Kubernetes' kubelet serves on port 10250 as /containerLogs and /exec, as a gRPC service
on grpclite. It knows no runtime: the kubelet gives it a ``Containers`` (its CRI client
underneath) that finds a pod's container, says whether it still runs, and runs a command in it.
The server does the rest: the log options, reading and following the file (node.kubelet.logs),
errors as gRPC codes the apiserver turns into Kubernetes reasons.

Exec is non-interactive (CRI ExecSync): the command gets no stdin and no terminal, and its
output comes back whole when it ends, up to EXEC_OUTPUT_LIMIT bytes of each stream.

The server runs in its own event loop, in a thread of the kubelet (``KubeletServer.start``),
or in the caller's loop (``serve``). ``Containers`` methods are blocking calls (CRI over
grpcio): they run in worker threads.

Secured (``ssl_context`` and ``auth``, the kubelet's --tls-*, --client-ca-file,
--authentication-token-webhook, --authorization-mode=Webhook): TLS on the port, and every
call authenticated and authorized (node.kubelet.auth) before it is served: the gRPC calls
as the HTTP endpoints they stand for (ContainerLogs a GET, Exec a POST of nodes/proxy),
refused with UNAUTHENTICATED / PERMISSION_DENIED and the kubelet's words.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Protocol

import grpc

from grpclite import GrpcServer
from node.kubelet import logs
from node.pb import kubelet_pb2, kubelet_pb2_grpc

log = logging.getLogger("kubelet.server")

# bytes of each of stdout and stderr an exec answers with (the rest is cut), as CRI runtimes cap
# ExecSync output (containerd: 16 MiB)
EXEC_OUTPUT_LIMIT = 16 << 20
MAX_MESSAGE_BYTES = 2 * EXEC_OUTPUT_LIMIT + (1 << 20)


class ContainerError(Exception):
    """What Containers methods raise for a request they cannot serve; ``code`` is the gRPC code
    the apiserver maps to a Kubernetes reason: NOT_FOUND (NotFound), INVALID_ARGUMENT
    (BadRequest), UNAVAILABLE (the runtime does not answer)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# The kubelet's answers for the usual cases, in its words. As Kubernetes' kubelet: a pod or
# container it does not have is NotFound; what the container's state does not allow (no
# previous instance, not started yet, terminated with nothing kept) is BadRequest.

def pod_not_found(pod: str) -> ContainerError:
    return ContainerError(grpc.StatusCode.NOT_FOUND, f'pod "{pod}" does not exist')


def container_not_found(pod: str, container: str) -> ContainerError:
    return ContainerError(grpc.StatusCode.NOT_FOUND, f'container "{container}" not found in pod "{pod}"')


def previous_not_found(pod: str, container: str) -> ContainerError:
    return ContainerError(grpc.StatusCode.INVALID_ARGUMENT,
                          f'previous terminated container "{container}" in pod "{pod}" not found')


# waiting reasons the kubelet explains in other words
_WAITING_TEXTS = {"ErrImagePull": "image can't be pulled",
                  "ImagePullBackOff": "trying and failing to pull image"}


def waiting_to_start(pod: str, container: str, reason: str) -> ContainerError:
    """The container has no instance yet; ``reason``: its waiting reason (ContainerCreating,
    CrashLoopBackOff, ErrImagePull, ...)."""
    return ContainerError(grpc.StatusCode.INVALID_ARGUMENT,
                          f'container "{container}" in pod "{pod}" is waiting to start: '
                          f"{_WAITING_TEXTS.get(reason, reason)}")


def terminated_without_logs(pod: str, container: str) -> ContainerError:
    return ContainerError(grpc.StatusCode.INVALID_ARGUMENT, f'container "{container}" in pod "{pod}" is terminated')


def not_running(pod: str, container: str) -> ContainerError:
    return ContainerError(grpc.StatusCode.INVALID_ARGUMENT,
                          f'container "{container}" in pod "{pod}" is not running')


class Containers(Protocol):
    """What the kubelet gives the server (the real kubelet: CRI ListContainers, ContainerStatus,
    ExecSync). Blocking calls; each raises ContainerError for what it cannot serve."""

    def find_container(self, namespace: str, pod: str, container: str,
                       previous: bool) -> tuple[str, str, bool]:
        """(container id, its log file's path, whether it runs now) of the pod's container:
        the current instance, or with ``previous`` the one before its last restart."""

    def container_running(self, container_id: str) -> bool:
        """Whether the container still runs (a follower stops once it does not and its log is
        read to the end). False for a container the runtime no longer knows."""

    def exec_sync(self, container_id: str, command: list[str],
                  timeout: float | None) -> tuple[bytes, bytes, int]:
        """Run ``command`` in the running container, without stdin or a terminal, and wait:
        (stdout, stderr, exit code). ``timeout`` None: no limit."""


def _options(request: kubelet_pb2.LogsRequest) -> logs.LogOptions:
    try:
        return logs.log_options(
            tail_lines=request.tail_lines if request.HasField("tail_lines") else None,
            limit_bytes=request.limit_bytes if request.HasField("limit_bytes") else None,
            since_seconds=request.since_seconds if request.HasField("since_seconds") else None,
            since_time=request.since_time, follow=request.follow, timestamps=request.timestamps,
            stream=request.stream)
    except ValueError as e:
        raise ContainerError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None


class KubeletService(kubelet_pb2_grpc.KubeletServicer):
    def __init__(self, containers: Containers, *, poll: float = logs.POLL_INTERVAL,
                 state_check: float = logs.STATE_CHECK_INTERVAL, auth=None) -> None:
        self.containers = containers
        self.poll = poll
        self.state_check = state_check
        self.auth = auth

    async def _check(self, context, method: str, path: str) -> None:
        """Aborts the call unless its caller may (no auth: everyone may)."""
        if self.auth is None:
            return
        from node.kubelet.auth import Refused
        authorization = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), "")
        try:
            await self.auth.acheck(context.peer_certificate(), authorization, method, path,
                                   context.peer_certificate_error())
        except Refused as e:
            code = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}.get(
                e.code, grpc.StatusCode.INTERNAL)
            await context.abort(code, e.message)

    async def ContainerLogs(self, request, context):
        """Written with context.write, so that the stream waits while the reader does not read
        (at most grpclite's per-stream share is queued), and a cancelled call (the apiserver's
        client went away) ends here, closing the file."""
        await self._check(context, "GET", f"/containerLogs/{request.namespace}/{request.pod}/{request.container}")
        try:
            opts = _options(request)
            cid, path, running = await asyncio.to_thread(
                self.containers.find_container, request.namespace, request.pod, request.container,
                request.previous)
            is_running = (lambda: self.containers.container_running(cid)) if running else (lambda: False)
            try:
                chunks = logs.aread_log(path, opts, is_running, poll=self.poll, state_check=self.state_check)
                async with contextlib.aclosing(chunks):
                    async for chunk in chunks:
                        await context.write(kubelet_pb2.LogChunk(data=chunk))
            except FileNotFoundError:
                # a container that never wrote (or whose log was removed): nothing to show
                if not running:
                    return
                raise ContainerError(grpc.StatusCode.NOT_FOUND,
                                     f'log file of container "{request.container}" in pod "{request.pod}" '
                                     f"not found ({path})") from None
        except ContainerError as e:
            await context.abort(e.code, e.message)
        except OSError as e:
            await context.abort(grpc.StatusCode.INTERNAL, f"failed to read the container log: {e}")
        except Exception as e:  # noqa: BLE001 (a Containers failure: no traceback to the client)
            log.exception("logs of %s/%s/%s", request.namespace, request.pod, request.container)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    async def Exec(self, request, context):
        await self._check(context, "POST", f"/exec/{request.namespace}/{request.pod}/{request.container}")
        try:
            if not request.command:
                raise ContainerError(grpc.StatusCode.INVALID_ARGUMENT, "you must specify at least one command for the container")
            cid, _, running = await asyncio.to_thread(
                self.containers.find_container, request.namespace, request.pod, request.container, False)
            if not running:
                raise not_running(request.pod, request.container)
            timeout = float(request.timeout_seconds) if request.timeout_seconds > 0 else None
            stdout, stderr, code = await asyncio.to_thread(
                self.containers.exec_sync, cid, list(request.command), timeout)
        except ContainerError as e:
            await context.abort(e.code, e.message)
        except Exception as e:  # noqa: BLE001 (as in ContainerLogs)
            log.exception("exec in %s/%s/%s", request.namespace, request.pod, request.container)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        return kubelet_pb2.ExecResponse(stdout=stdout[:EXEC_OUTPUT_LIMIT], stderr=stderr[:EXEC_OUTPUT_LIMIT],
                                        exit_code=code)


async def serve(containers: Containers, host: str = "127.0.0.1", port: int = 0, stream_netns: str = "",
                ssl_context=None, auth=None, stats=None, **service_options) -> tuple[GrpcServer, int]:
    """The service listening in the running loop on host:port (0: a free port): (server, port).
    Connections that are not HTTP/2 get the kubelet's HTTP endpoints (node.kubelet.streaming:
    exec, attach, port-forward, containerLogs) when ``containers`` can give streaming URLs.
    ``ssl_context``: TLS (node.kubelet.auth.server_ssl_context); ``auth``: a KubeletAuth;
    ``stats``: node.kubelet.stats.StatsEndpoints (/stats/summary, /metrics...; None: not served)."""
    server = GrpcServer(max_receive_message_length=1 << 20, eager_unary=False)
    kubelet_pb2_grpc.add_KubeletServicer_to_server(KubeletService(containers, auth=auth, **service_options),
                                                   server)
    if hasattr(containers, "exec_url"):
        from node.kubelet.streaming import StreamingFront
        server.streaming = StreamingFront(containers, stream_netns=stream_netns, auth=auth, stats=stats,
                                          **service_options)
        server.http1_protocol = server.streaming.protocol
    bound = await server.listen(host, port, ssl_context=ssl_context)
    await server.start()
    return server, bound


class KubeletServer:
    """The service in its own event loop, in a daemon thread of the kubelet:
    ``port = KubeletServer(containers).start()``, then ``stop()``."""

    def __init__(self, containers: Containers, host: str = "127.0.0.1", port: int = 0,
                 stream_netns: str = "", ssl_context=None, auth=None, stats=None, **service_options) -> None:
        self.containers = containers
        self.stats = stats
        self.ssl_context = ssl_context
        self.auth = auth
        self.stream_netns = stream_netns
        self.host = host
        self.port = port
        self.service_options = service_options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def start(self, timeout: float = 10.0) -> int:
        """Listens, then returns the port; OSError if it cannot listen."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main():
            self._stopped = asyncio.Event()
            try:
                server, self.port = await serve(self.containers, self.host, self.port, self.stream_netns,
                                                ssl_context=self.ssl_context, auth=self.auth,
                                                stats=self.stats, **self.service_options)
            except BaseException as e:  # noqa: BLE001 (handed to start's caller)
                failure.append(e)
                ready.set()
                return
            ready.set()
            try:
                await self._stopped.wait()
            finally:
                front = getattr(server, "streaming", None)
                if front is not None:  # its connections (exec, logs) end with the kubelet's server
                    await front.close()
                await server.stop(grace=0.5)

        def run():
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(main())
            finally:
                self._loop.close()
        self._thread = threading.Thread(target=run, name="kubelet-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the kubelet server did not start listening on {self.host} within {timeout} s")
        if failure:
            self._thread.join(timeout)
            raise failure[0]
        log.info("kubelet API serving on %s:%d", self.host, self.port)
        return self.port

    def stop(self, timeout: float = 5.0) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stopped.set)
            self._thread.join(timeout)
