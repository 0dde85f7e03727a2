"""Port-forward for the runtime's streaming server: kubectl's SPDY streams to TCP ports inside
the pod's network namespace, as the kubelet's port-forward server and containerd's CRI do.

kubectl 1.32 tunnels SPDY/3.1 in a WebSocket (subprotocol ``SPDY/3.1+portforward.k8s.io``)
and falls back to a plain ``Upgrade: SPDY/3.1`` connection; both are served. Each forwarded
connection is a pair of streams with one ``requestid``: ``error`` and ``data``, naming the
``port``. Once both are there, a TCP connection is made to 127.0.0.1:<port> inside the pod's
network namespace and bytes flow between it and the data stream; a failure is written on the
error stream in the kubelet's words ("error forwarding port 80 to pod ...: ..."), which kubectl
prints as "an error occurred forwarding <local> -> <port>: ...". Both streams are closed when
the connection ends, kubectl waiting for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from httpstream import spdy, websocket
from httpstream.http import RequestHead, status_response
from node.network.netns import socket_in

log = logging.getLogger("node.runtime.portforward")

PROTOCOL = "portforward.k8s.io"
TUNNEL_PROTOCOL = "SPDY/3.1+" + PROTOCOL
PAIR_TIMEOUT = 30.0   # seconds a stream waits for its partner (the kubelet's stream creation timeout)
CONNECT_TIMEOUT = 10.0


async def serve(head: RequestHead, reader, writer, netns: str, request) -> None:
    """Serve one port-forward connection (``request``: the CRI PortForwardRequest)."""
    if head.upgrade() == "websocket":
        why = websocket.check_upgrade(head)
        if why is None and websocket.choose_protocol(head, [TUNNEL_PROTOCOL]) is None:
            why = (f"unable to negotiate protocol: client supports {websocket.offered_protocols(head)}, "
                   f"server supports {[TUNNEL_PROTOCOL]}")
        if why is not None:
            writer.write(status_response(400, why))
            return
        writer.write(websocket.handshake_response(head, TUNNEL_PROTOCOL))
        transport: spdy.Transport = spdy.WebSocketTransport(
            websocket.WebSocket(reader, writer, subprotocol=TUNNEL_PROTOCOL))
    elif head.upgrade() == "spdy/3.1":
        offered = [p.strip() for p in head.headers.get("x-stream-protocol-version", "").split(",")]
        if PROTOCOL not in offered:
            writer.write(status_response(403, f"unable to upgrade: unable to negotiate protocol: client supports "
                                              f"{offered}, server supports [{PROTOCOL}]"))
            return
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                     b"X-Stream-Protocol-Version: " + PROTOCOL.encode() + b"\r\n\r\n")
        transport = spdy.RawTransport(reader, writer)
    else:
        writer.write(status_response(400, "Upgrade request required"))
        return
    await writer.drain()
    allowed = set(request.port)  # CRI: the ports asked for; none named means any
    forwarder = _Forwarder(netns, allowed, request.pod_sandbox_id)
    conn = spdy.ServerConnection(transport, forwarder.on_stream)
    try:
        await conn.run()
    finally:
        await forwarder.stop()
        with contextlib.suppress(Exception):
            await transport.close()


def _dial_error(port: int, e: BaseException) -> str:
    """A failed connect as Go's net.Dial says it."""
    if isinstance(e, OSError) and e.errno:
        return f"dial tcp4 127.0.0.1:{port}: connect: {os.strerror(e.errno).lower()}"
    if isinstance(e, asyncio.TimeoutError):
        return f"dial tcp4 127.0.0.1:{port}: i/o timeout"
    return str(e)


class _Forwarder:
    def __init__(self, netns: str, allowed: set[int], sandbox: str) -> None:
        self.netns, self.allowed, self.sandbox = netns, allowed, sandbox
        self.pairs: dict[str, dict[str, spdy.Stream]] = {}
        self.tasks: set[asyncio.Task] = set()

    async def on_stream(self, stream: spdy.Stream) -> bool:
        kind = stream.headers.get("streamtype", "")
        request_id = stream.headers.get("requestid", "")
        if kind not in ("error", "data") or not stream.headers.get("port", "").isdigit():
            return False
        pair = self.pairs.setdefault(request_id, {})
        if kind in pair:
            return False
        pair[kind] = stream
        if len(pair) == 1:
            self._spawn(self._expire(request_id, pair))
        else:
            del self.pairs[request_id]
            self._spawn(self._forward(pair["error"], pair["data"]))
        return True

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _expire(self, request_id: str, pair: dict) -> None:
        """A stream whose partner has not come within PAIR_TIMEOUT is closed (a partner coming
        later opens a pair of its own, which expires the same way)."""
        await asyncio.sleep(PAIR_TIMEOUT)
        if self.pairs.get(request_id) is pair:
            del self.pairs[request_id]
            for s in pair.values():
                with contextlib.suppress(ConnectionError):
                    await s.close()

    async def _forward(self, error: spdy.Stream, data: spdy.Stream) -> None:
        port = int(data.headers.get("port", "0"))
        try:
            if self.allowed and port not in self.allowed:
                raise OSError(f"port {port} was not asked for")
            if not 0 < port < 65536:
                raise OSError(f"invalid port {port}")
            sock = await asyncio.to_thread(socket_in, self.netns, socket.AF_INET)
            try:
                sock.setblocking(False)
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
                reader, writer = await asyncio.open_connection(sock=sock)
            except BaseException:
                sock.close()
                raise
        except (OSError, asyncio.TimeoutError) as e:
            # the kubelet's wrapper around containerd's words (the uid is not the runtime's to know)
            msg = (f"error forwarding port {port} to pod {self.sandbox}, uid : failed to connect to "
                   f"localhost:{port} inside namespace \"{self.sandbox}\", IPv4: {_dial_error(port, e)}")
            with contextlib.suppress(ConnectionError):
                await error.write(msg.encode())
            for s in (error, data):
                with contextlib.suppress(ConnectionError):
                    await s.close()
            return
        try:
            await asyncio.gather(self._to_pod(data, writer), self._from_pod(reader, data))
        finally:
            writer.close()
            for s in (error, data):
                with contextlib.suppress(ConnectionError):
                    await s.close()

    @staticmethod
    async def _to_pod(data: spdy.Stream, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await data.read():
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass

    @staticmethod
    async def _from_pod(reader: asyncio.StreamReader, data: spdy.Stream) -> None:
        try:
            while chunk := await reader.read(spdy.DATA_CHUNK):
                await data.write(chunk)
        except (ConnectionError, OSError):
            pass

    async def stop(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
