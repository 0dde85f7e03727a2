"""The runtime's streaming server: what CRI Exec, Attach and PortForward answer is a URL here,
as containerd's CRI plugin answers one of its own streaming server (the kubelet then relays
kubectl's upgraded connection to it).

A URL carries a one-time token (``/exec/<token>``) naming the request the runtime accepted; it
expires after TOKEN_TTL seconds unused, as the kubelet's streaming request cache does, and at
most MAX_IN_FLIGHT wait at once. Exec and attach speak the channel.k8s.io protocols on a
WebSocket (httpstream.channels); port-forward speaks SPDY/3.1 tunnelled in a WebSocket
(``SPDY/3.1+portforward.k8s.io``, node.runtime.portforward). Listens on 127.0.0.1 only: the
kubelet of the same node is its one client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from httpstream import channels, websocket
from httpstream.http import BadRequest, read_head, status_response
from node.runtime.stream_io import Attachment, ExecProcess

log = logging.getLogger("node.runtime.streaming")

TOKEN_TTL = 60.0
MAX_IN_FLIGHT = 1000
FIRST_SIZE_WAIT = 1.0  # seconds a terminal's command waits for the client's size
# a client that sends nothing for this long is gone (the kubelet's and containerd's default, 4 h)
STREAM_IDLE_TIMEOUT = 4 * 3600.0


class StreamError(Exception):
    """A request the streaming server refuses (``code``: a gRPC code name)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Pending:
    kind: str          # "exec", "attach", "portforward"
    request: Any       # the CRI request message
    target: Any        # what serves it: (runc, container id) / bundle / netns path
    expires: float


class StreamServer:
    """``runc``: the node's Runc; ``bundle_of(cid)``: a container's bundle directory."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._connected, self.host, self.port,
                                                  limit=64 * 1024)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("streaming server on http://%s:%d", self.host, self.port)
        return self.port

    @property
    def started(self) -> bool:
        return self._server is not None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, kind: str, request, target) -> str:
        """Register a request; its URL (one use, TOKEN_TTL seconds)."""
        if self._server is None:
            raise StreamError("UNAVAILABLE", "the runtime's streaming server is not running")
        now = time.monotonic()
        while self._pending and next(iter(self._pending.values())).expires <= now:
            self._pending.popitem(last=False)
        if len(self._pending) >= MAX_IN_FLIGHT:
            raise StreamError("RESOURCE_EXHAUSTED", f"maximum number of in-flight requests exceeded ({MAX_IN_FLIGHT})")
        token = secrets.token_urlsafe(12)
        self._pending[token] = Pending(kind, request, target, now + TOKEN_TTL)
        return f"http://{self.host}:{self.port}/{kind}/{token}"

    def _take(self, kind: str, token: str) -> Pending | None:
        p = self._pending.pop(token, None)
        if p is None or p.kind != kind or p.expires <= time.monotonic():
            return None
        return p

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 (one stream's bug must not end the server)
            log.exception("stream failed")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader, writer) -> None:
        try:
            head = await read_head(reader)
        except (BadRequest, asyncio.TimeoutError) as e:
            writer.write(status_response(400, str(e) or "timed out reading the request"))
            return
        if head is None:
            return
        parts = head.path.strip("/").split("/")
        pending = self._take(parts[0], parts[1]) if len(parts) == 2 else None
        if pending is None:
            writer.write(status_response(404, "unknown or expired streaming token: ask the runtime again"))
            return
        if pending.kind == "portforward":
            from node.runtime import portforward
            await portforward.serve(head, reader, writer, pending.target, pending.request)
            return
        why = websocket.check_upgrade(head)
        if why is None:
            protocol = websocket.choose_protocol(head, channels.PROTOCOLS)
            if protocol is None:
                why = (f"unable to negotiate protocol: client supports {websocket.offered_protocols(head)}, "
                       f"server supports {channels.PROTOCOLS}")
        if why is not None:
            writer.write(status_response(400, why))
            return
        writer.write(websocket.handshake_response(head, protocol))
        await writer.drain()
        session = channels.ChannelSession(websocket.WebSocket(reader, writer, subprotocol=protocol))
        if pending.kind == "exec":
            await run_exec(session, pending.request, *pending.target)
        else:
            await run_attach(session, pending.request, pending.target)


def _output(session: channels.ChannelSession, stdout: bool, stderr: bool):
    async def out(n: int, data: bytes) -> None:
        if (n == 1 and stdout) or (n == 2 and stderr):
            with contextlib.suppress(ConnectionError):
                await session.write(n, data)
    return out


async def _noop(*_):
    return None


async def run_exec(session: channels.ChannelSession, req, runc, cid: str, bundle: str = "") -> None:
    """A terminal's command starts once the client said its size (kubectl's first message),
    or after FIRST_SIZE_WAIT seconds at 80x24; stdin sent before the start waits for it."""
    command = list(req.cmd)
    proc = ExecProcess(runc, cid, command, tty=req.tty, stdin=req.stdin, bundle=bundle)
    started, sized = asyncio.Event(), asyncio.Event()
    first_size: list[channels.Size] = []

    async def on_stdin(data: bytes) -> None:
        await started.wait()
        await proc.write_stdin(data)

    async def on_stdin_end() -> None:
        await started.wait()
        await proc.close_stdin()

    async def on_resize(size: channels.Size) -> None:
        if not started.is_set():
            first_size[:] = [size]
            sized.set()
        else:
            await proc.resize(size.width, size.height)

    inputs = asyncio.ensure_future(session.read_input(on_stdin if req.stdin else _noop, on_stdin_end, on_resize,
                                                      STREAM_IDLE_TIMEOUT))
    if req.tty:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(sized.wait(), FIRST_SIZE_WAIT)
    size = (first_size[0].width, first_size[0].height) if first_size else (80, 24)
    try:
        await proc.start(_output(session, req.stdout, req.stderr or req.tty), size)
    except OSError as e:
        inputs.cancel()
        await session.finish(channels.internal_error(f"error executing command in container: {e}"))
        return
    started.set()
    waiting = asyncio.ensure_future(proc.wait())
    try:
        await asyncio.wait((inputs, waiting), return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            # the client closed the WebSocket (or the connection) first: nobody reads any more
            proc.kill()
        code = await waiting
    finally:
        if not waiting.done():
            proc.kill()
            await asyncio.gather(waiting, return_exceptions=True)
    await session.finish(channels.success() if code == 0 else channels.exit_status(code, command))
    inputs.cancel()
    await asyncio.gather(inputs, return_exceptions=True)


async def run_attach(session: channels.ChannelSession, req, bundle: str) -> None:
    att = Attachment(bundle)
    try:
        await att.connect()
    except OSError as e:
        await session.finish(channels.internal_error(f"error attaching to container: {e}"))
        return
    try:
        output = asyncio.ensure_future(att.pump_output(_output(session, req.stdout, req.stderr or req.tty)))
        inputs = asyncio.ensure_future(session.read_input(
            att.write_stdin if req.stdin else _noop, att.close_stdin if req.stdin else _noop,
            lambda size: att.resize(size.width, size.height) if req.tty else _noop(), STREAM_IDLE_TIMEOUT))
        await asyncio.wait((output, inputs), return_when=asyncio.FIRST_COMPLETED)
        for t in (output, inputs):
            t.cancel()
        await asyncio.gather(output, inputs, return_exceptions=True)
    finally:
        att.close()
    await session.finish(channels.success())
