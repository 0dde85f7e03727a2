"""grpclite's limits on what one connection can make the server hold (issue 24), and the
RFC 9113 errors bad input gets. No processes: a Connection is fed raw frames through a fake
transport inside the test's own event loop, and what it writes is read back as frames."""

from __future__ import annotations

import asyncio

import grpc

from grpclite.connection import MAX_HEADER_LIST, RECV_MAX_FRAME, Connection
from grpclite.server import GrpcServer
from grpclite.wire import (
    CONTINUATION,
    END_HEADERS,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    PREFACE,
    PROTOCOL_ERROR,
    SETTINGS,
    U32,
    hpack_int,
    hpack_str,
    literal,
)


class _Transport:
    """What a Connection writes to, and whether it closed or paused it."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def get_extra_info(self, name):
        return None

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    abort = close


def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEADER.pack(n >> 8, n & 0xFF, ftype, flags, sid) + payload


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        hi, lo, ftype, flags, sid = FRAME_HEADER.unpack_from(data, pos)
        n = (hi << 8) | lo
        out.append((ftype, flags, sid, bytes(data[pos + 9:pos + 9 + n])))
        pos += 9 + n
    return out


def _request_headers(path: str, content_type: bytes = b"application/grpc") -> bytes:
    return (b"\x83\x86"  # :method POST, :scheme http
            + hpack_int(4, 4) + hpack_str(path.encode())
            + hpack_int(31, 4) + hpack_str(content_type) + literal(b"te", b"trailers"))


def _goaway_code(transport: _Transport) -> int | None:
    goaways = [p for ftype, _, _, p in _frames(transport.written) if ftype == GOAWAY]
    return U32.unpack(goaways[-1][4:8])[0] if goaways else None


class _Echo:
    """Handlers the tests call: a unary echo and a request-streaming call that reads on demand."""

    def __init__(self) -> None:
        self.take = asyncio.Event()
        self.taken: list[bytes] = []

    async def echo(self, request, context):
        return request

    async def collect(self, requests, context):
        async for request in requests:
            self.taken.append(request)
        return b"done"

    def register(self, server: GrpcServer) -> None:
        server.add_registered_method_handlers("t.T", {
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
        })


def _on_connection(test, **server_args) -> None:
    """test(conn, transport, server, echo) with a connection past its preface and SETTINGS."""

    async def run() -> None:
        server = GrpcServer(**server_args)
        echo = _Echo()
        echo.register(server)
        conn, transport = Connection(server), _Transport()
        conn.connection_made(transport)
        conn.data_received(PREFACE + _frame(SETTINGS, 0, 0))
        server.flush_now()
        transport.written.clear()
        result = test(conn, transport, server, echo)
        if asyncio.iscoroutine(result):
            await result
        if not conn.closed:
            conn.connection_lost(None)

    asyncio.run(run())


# --- 1. header list size, counted as CONTINUATION frames arrive -----------------------------------


def test_continuation_frames_past_the_header_list_limit_end_the_connection_unjoined():
    def test(conn, transport, server, echo):
        conn.data_received(_frame(HEADERS, 0, 1, _request_headers("/t.T/Echo")))
        fragment = bytes(RECV_MAX_FRAME // 2)
        sent = 0
        while not transport.closed and sent < 4 * MAX_HEADER_LIST:
            conn.data_received(_frame(CONTINUATION, 0, 1, fragment))
            sent += len(fragment)
        assert transport.closed
        assert sent <= MAX_HEADER_LIST + len(fragment)
        assert _goaway_code(transport) == PROTOCOL_ERROR
        assert conn.headers_in_progress is None  # the fragments are dropped

    _on_connection(test)
