"""GrpcServer: a stand-in for grpc.aio.Server that serves in the event loop it runs in.

Servicers register through the generated add_*Servicer_to_server functions;
the hottest unary methods may be served by a plain callback instead
(set_unary_callback). Frames queued by every connection leave once per turn
of the loop; grpc-timeout deadlines are swept every DEADLINE_TICK rather
than timed one by one.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import ssl
import stat
import time
from typing import TYPE_CHECKING

import grpc

from grpclite.connection import (
    HANDSHAKE_TIMEOUT,
    IDLE_TIMEOUT,
    KEEPALIVE_TIME,
    KEEPALIVE_TIMEOUT,
    MAX_CONCURRENT_STREAMS,
    Connection,
)
from grpclite.context import HandlerCallDetails, ServicerContext
from grpclite.stream import Stream
from grpclite.wire import NO_ERROR, OK_TRAILERS, status_block

if TYPE_CHECKING:  # not imported at run time: etcdlite serves with Python's ssl alone
    from grpclite.tls import ServerTLS

log = logging.getLogger("grpclite")

# how often calls past their grpc-timeout are ended (clients end them on time themselves)
DEADLINE_TICK = 0.1


class GrpcServer:
    """A stand-in for grpc.aio.Server: register servicers with the generated
    add_*Servicer_to_server functions, listen on ports, start, stop."""

    def __init__(self, max_receive_message_length: int = 4 << 20, eager_unary: bool = True,
                 max_concurrent_streams: int = MAX_CONCURRENT_STREAMS,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
                 keepalive_time: float = KEEPALIVE_TIME, keepalive_timeout: float = KEEPALIVE_TIMEOUT):
        self.loop = asyncio.get_running_loop()
        self.max_receive = max_receive_message_length
        # calls one connection may have open (etcd's --max-concurrent-streams); more are refused
        self.max_concurrent_streams = max_concurrent_streams
        # a client's preface and SETTINGS are due within handshake_timeout; a connection without
        # calls that sends nothing for idle_timeout (to 2 x idle_timeout) is closed
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        # a connection that sends nothing for keepalive_time is pinged, and closed if it still sends
        # nothing keepalive_timeout later (etcd's --grpc-keepalive-interval, --grpc-keepalive-timeout)
        self.keepalive_time = keepalive_time
        self.keepalive_timeout = keepalive_timeout
        self.eager_unary = eager_unary  # see EagerCall
        self.callbacks: dict = {}  # path -> callback handler (set_unary_callback)
        # refuse(path, request) -> (code, details), or None to serve the call; asked before
        # every call runs (request None for one whose client streams): None asks nothing
        self.refuse = None
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.generic = []
        self.connections: set[Connection] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._to_flush: list[Connection] = []  # connections with frames queued
        # a factory of asyncio protocols for clients whose first bytes are not HTTP/2's
        # preface (an HTTP/1.1 front on the same port); None: such connections are closed
        self.http1_protocol = None
        # with TLS, called with each connection's transport once its handshake is done: a
        # reason (str) closes the connection before anything is read from it, as Go servers
        # that check a certificate after the handshake (etcd's CRL) do; None lets it in
        self.tls_check = None

    # --- sending: queued frames leave once per turn of the loop, or sooner --

    def schedule_flush(self, conn: Connection) -> None:
        """`conn` has frames queued (and said so in its flush_scheduled): they
        are sent by flush_now, in the next turn of the loop at the latest."""
        if not self._to_flush:
            self.loop.call_soon(self.flush_now)
        self._to_flush.append(conn)

    def flush_now(self) -> None:
        """Send every connection's queued frames: one call per turn for all
        connections, or at once for a caller that has just answered many
        calls (a member after applying a batch of writes)."""
        conns, self._to_flush = self._to_flush, []
        for conn in conns:
            conn.flush()

    # --- deadlines: one sweep every DEADLINE_TICK instead of a timer per call --

    def watch_deadlines(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(DEADLINE_TICK, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        waiting = False
        for conn in list(self.connections):
            for stream in list(conn.streams.values()):
                if stream.deadline is not None:
                    if now >= stream.deadline:
                        stream.expire()
                    else:
                        waiting = True
        if waiting:
            self.watch_deadlines()

    # --- registration (what the generated code calls) ----------------------

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers) -> None:
        for name, handler in method_handlers.items():
            self.handlers[f"/{service_name}/{name}"] = handler

    def set_unary_callback(self, path: str, callback, *, with_raw: bool = False) -> None:
        """Serve the registered unary method `path` with callback(request, reply)
        instead of its coroutine: it runs at once, in the frame that completed
        the request, and calls reply(response) or reply(None, code, details)
        exactly once, now or later (see Stream.reply). No coroutine, task or
        future per call: for the hottest methods (etcd's Put). `with_raw`:
        callback(request, reply, raw), raw being the request's bytes as they
        came (for a handler that passes them on rather than serialize again)."""
        if path not in self.handlers:
            raise KeyError(f"{path} is not registered")
        self.callbacks[path] = (callback, with_raw)

    def lookup(self, path: str, metadata):
        handler = self.handlers.get(path)
        if handler is None and self.generic:
            details = HandlerCallDetails(path, metadata)
            for g in self.generic:
                handler = g.service(details)
                if handler is not None:
                    break
        return handler

    # --- listening -----------------------------------------------------------

    def _protocols(self, ssl_context: ssl.SSLContext | ServerTLS | None):
        """(protocol factory, ssl argument of create_server): Python's ssl, or grpclite.tls's
        layer (which completes the handshake whatever client certificate is presented)."""
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):  # a ServerTLS
            return ssl_context.protocol_factory(lambda: Connection(self)), None
        return (lambda: Connection(self)), ssl_context

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | ServerTLS | None = None) -> int:
        """Listen on host:port (0 picks a free port); returns the port."""
        factory, ssl_arg = self._protocols(ssl_context)
        server = await self.loop.create_server(
            factory, host or None, port, ssl=ssl_arg, reuse_address=True, backlog=1024)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def listen_socket(self, sock: socket.socket,
                            ssl_context: ssl.SSLContext | ServerTLS | None = None) -> asyncio.base_events.Server:
        """Serve on ``sock``, a listening TCP socket made elsewhere (e.g. inside another network
        namespace); returns its asyncio server, which ``unlisten`` closes alone."""
        factory, ssl_arg = self._protocols(ssl_context)
        server = await self.loop.create_server(factory, sock=sock, ssl=ssl_arg, backlog=1024)
        self.servers.append(server)
        return server

    def unlisten(self, server: asyncio.base_events.Server) -> None:
        """Stop accepting on one of the listeners (connections already made go on)."""
        server.close()
        if server in self.servers:
            self.servers.remove(server)

    async def listen_unix(self, path: str) -> None:
        """Listen on a unix socket at `path` (gRPC's ``unix://path``), as CRI
        runtimes do; a stale socket file left by a dead server is replaced."""
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        server = await self.loop.create_unix_server(lambda: Connection(self), path, backlog=1024)
        self.servers.append(server)

    async def start(self) -> None:
        for server in self.servers:
            await server.start_serving()

    async def stop(self, grace: float | None = None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            if not conn.closed:
                conn.go_away(NO_ERROR)
                conn.flush()
                if not conn.streams:
                    conn.transport.close()
        deadline = time.monotonic() + (grace or 0)
        while any(c.streams for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            for stream in list(conn.streams.values()):
                stream.stop_handler()
            if not conn.transport.is_closing():  # lingering ones too
                conn.transport.abort()

    # --- calls -------------------------------------------------------------------

    async def run_handler(self, stream: Stream, request) -> None:
        h = stream.handler
        context = ServicerContext(stream)
        try:
            if h.unary_unary is not None:
                response = await h.unary_unary(request, context)
                if not stream.finished:
                    if context._code is not None and context._code != grpc.StatusCode.OK:
                        stream.finish(status_block(context._code, context._details, context._trailing))
                        return
                    if not context._trailing:
                        stream.reply(response)
                        return
                    stream.queue_message(stream.serialize(response))
            elif h.stream_unary is not None:
                response = await h.stream_unary(request, context)
                if not stream.finished:
                    stream.queue_message(stream.serialize(response))
            else:
                fn = h.unary_stream or h.stream_stream
                result = fn(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        if stream.finished:
                            break
                        await stream.send_message(stream.serialize(response))
                elif inspect.isawaitable(result):
                    await result  # the handler wrote with context.write
            if not stream.finished:
                code = context._code or grpc.StatusCode.OK
                if code == grpc.StatusCode.OK and not context._trailing:
                    stream.finish(OK_TRAILERS)
                else:
                    stream.finish(status_block(code, context._details, context._trailing))
        except grpc.aio.AbortError:
            stream.finish(status_block(context._code, context._details, context._trailing))
        except asyncio.CancelledError:
            if not stream.finished:
                stream.finish(status_block(grpc.StatusCode.CANCELLED, "Cancelled"))
        except Exception as exc:  # noqa: BLE001
            if context._code is not None and context._code != grpc.StatusCode.OK:
                stream.finish(status_block(context._code, context._details, context._trailing))
            else:
                log.exception("handler %s failed", stream.path)
                stream.finish(status_block(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}"))


def server_ssl_context(cert_file: str, key_file: str, trusted_ca_file: str | None,
                       client_cert_auth: bool) -> ssl.SSLContext:
    """TLS for client connections as gRPC clients expect it: TLS 1.2+, ALPN h2."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["h2"])
    if client_cert_auth:
        ctx.load_verify_locations(cafile=trusted_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
