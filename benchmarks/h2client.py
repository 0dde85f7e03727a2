"""A lean gRPC client for the load generator: unary calls over HTTP/2, from asyncio.

With etcdlite's own server, a grpc.aio client spends more CPU per put (the
same thread hand-offs as grpc.aio's server) than the server it measures, so
on 2 shared cores the client set the pace (measured: benchmarks/why.md). This one speaks the protocol directly:
a constant request header block (static-table references and literals, nothing
indexed), one DATA frame per request, response header blocks decoded once per
HPACK table state, everything written once per turn of the loop. It implements
what a unary call needs and nothing else (no streaming, no compression, no TLS).
Used for the unary benchmarks (put, range, txn, lease grant) against every
target, etcd included; KVStub/LeaseStub stand in for the generated stubs.
benchmarks/h2watch.py adds Watch streams to it (WatchChannel).
"""

from __future__ import annotations

import asyncio
import struct

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from grpclite.headers import CachedHeaderDecoder
from grpclite.wire import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    MESSAGE_PREFIX,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    RST_STREAM,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    hpack_int,
    hpack_str,
    literal,
)

RECV_WINDOW = 1 << 30


def _status_fields(headers) -> tuple:
    """(grpc-status or None, grpc-message) of a response's header fields."""
    status, message = None, ""
    for name, value in headers:
        if name == b"grpc-status":
            status = int(value)
        elif name == b"grpc-message":
            message = value.decode("utf-8", "replace")
    return status, message


class CallError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"grpc-status {status}: {message}")
        self.status = status


class _Call:
    __slots__ = ("future", "data", "status", "message")

    def __init__(self, future):
        self.future = future
        self.data = bytearray()
        self.status = None
        self.message = ""


class H2Channel(asyncio.Protocol):
    """One HTTP/2 connection; `await call(path, request_bytes)` -> response bytes."""

    recv_window = RECV_WINDOW  # what the server may send before we acknowledge (connection and each stream)

    def __init__(self, authority: str):
        self.authority = authority.encode()
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.ready = self.loop.create_future()
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.next_id = 1
        self.calls: dict[int, _Call] = {}
        self.send_window = 65535
        self.peer_max_frame = 16384
        self.pending: list[tuple[int, bytes]] = []  # DATA waiting for connection window
        self.recv_unacked = 0
        self.headers = CachedHeaderDecoder(64)
        self.headers_in_progress = None
        self.blocks: dict[str, bytes] = {}
        self.closed_error: Exception | None = None

    @classmethod
    async def connect(cls, endpoint: str) -> H2Channel:
        host, port = endpoint.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(endpoint), host, int(port))
        await asyncio.wait_for(proto.ready, 10)
        return proto

    # --- connection -----------------------------------------------------------

    def connection_made(self, transport) -> None:
        import socket

        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = struct.pack(">HL", 4, self.recv_window - 1) + struct.pack(">HL", 2, 0)
        out = PREFACE + self._frame(SETTINGS, 0, 0, settings)
        if self.recv_window > 65535:  # the connection's window starts at 65,535 whatever the settings
            out += self._frame(WINDOW_UPDATE, 0, 0, U32.pack(self.recv_window - 65535))
        self.transport.write(out)

    def connection_lost(self, exc) -> None:
        self._fail_all(exc or ConnectionError("connection closed"))

    def _fail_all(self, exc: Exception) -> None:
        self.closed_error = exc
        if not self.ready.done():
            self.ready.set_exception(exc)
        for call in self.calls.values():
            if not call.future.done():
                call.future.set_exception(exc)
        self.calls.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @staticmethod
    def _frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
        n = len(payload)
        return FRAME_HEADER.pack(n >> 8, n & 0xFF, ftype, flags, sid) + payload

    def _queue(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out = []

    # --- calls ----------------------------------------------------------------

    def _block(self, path: str) -> bytes:
        block = self.blocks.get(path)
        if block is None:
            block = self.blocks[path] = (
                b"\x83\x86"  # :method POST, :scheme http
                + hpack_int(4, 4) + hpack_str(path.encode())  # :path
                + hpack_int(1, 4) + hpack_str(self.authority)  # :authority
                + hpack_int(31, 4) + hpack_str(b"application/grpc")
                + literal(b"te", b"trailers")
            )
        return block

    def call(self, path: str, request: bytes) -> asyncio.Future:
        if self.closed_error is not None:
            raise self.closed_error
        sid = self.next_id
        self.next_id += 2
        fut = self.loop.create_future()
        self.calls[sid] = _Call(fut)
        self._queue(self._frame(HEADERS, END_HEADERS, sid, self._block(path)))
        data = MESSAGE_PREFIX.pack(0, len(request)) + request
        if len(data) <= self.send_window and not self.pending and len(data) <= self.peer_max_frame:
            self.send_window -= len(data)
            self._queue(self._frame(DATA, END_STREAM, sid, data))
        else:
            self.pending.append((sid, data))
            self._drain()
        return fut

    def _drain(self) -> None:
        while self.pending:
            sid, data = self.pending[0]
            n = min(len(data), self.send_window, self.peer_max_frame)
            if n <= 0:
                return
            self.send_window -= n
            last = n == len(data)
            self._queue(self._frame(DATA, END_STREAM if last else 0, sid, data[:n]))
            if last:
                self.pending.pop(0)
            else:
                self.pending[0] = (sid, data[n:])

    # --- reading --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, size = 0, len(buf)
        while size - pos >= 9:
            hi, lo, ftype, flags, sid = FRAME_HEADER.unpack_from(buf, pos)
            length = (hi << 8) | lo
            end = pos + 9 + length
            if end > size:
                break
            payload = bytes(buf[pos + 9:end])
            pos = end
            self._frame_received(ftype, flags, sid & 0x7FFFFFFF, payload)
        if pos:
            del buf[:pos]

    def _frame_received(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == DATA:
            self.recv_unacked += len(payload)
            if self.recv_unacked > self.recv_window // 2:
                self._queue(self._frame(WINDOW_UPDATE, 0, 0, U32.pack(self.recv_unacked)))
                self.recv_unacked = 0
            call = self.calls.get(sid)
            if call is not None:
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                call.data += payload
                if flags & END_STREAM:
                    self._finish(sid)
        elif ftype == HEADERS or ftype == CONTINUATION:
            if ftype == HEADERS:
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & PRIORITY_FLAG:
                    payload = payload[5:]
                self.headers_in_progress = (sid, flags, [payload])
            elif self.headers_in_progress is not None:
                self.headers_in_progress[2].append(payload)
            if flags & END_HEADERS and self.headers_in_progress is not None:
                hsid, hflags, parts = self.headers_in_progress
                self.headers_in_progress = None
                self._headers_received(hsid, hflags, b"".join(parts))
        elif ftype == SETTINGS:
            if not flags & ACK:
                for i in range(0, len(payload), 6):
                    key, value = struct.unpack_from(">HL", payload, i)
                    if key == 5:
                        self.peer_max_frame = value
                    # a stream's send window is not a limit here: requests are small
                self._queue(self._frame(SETTINGS, ACK, 0))
                if not self.ready.done():
                    self.ready.set_result(None)
        elif ftype == WINDOW_UPDATE:
            if sid == 0:
                self.send_window += U32.unpack(payload)[0] & 0x7FFFFFFF
                self._drain()
        elif ftype == PING:
            if not flags & ACK:
                self._queue(self._frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            call = self.calls.pop(sid, None)
            if call is not None and not call.future.done():
                call.future.set_exception(CallError(1, "stream reset by the server"))
        elif ftype == GOAWAY:
            self._fail_all(ConnectionError("GOAWAY from the server"))
            self.close()

    def _headers_received(self, sid: int, flags: int, block: bytes) -> None:
        """A complete header block (response headers or trailers) of stream sid."""
        status, message = self._status_of(block)
        call = self.calls.get(sid)
        if call is not None and status is not None:
            call.status, call.message = status, message
        if flags & END_STREAM:
            self._finish(sid)

    def _status_of(self, block: bytes):
        return self.headers.decode(block, _status_fields)

    def _finish(self, sid: int) -> None:
        call = self.calls.pop(sid, None)
        if call is None or call.future.done():
            return
        if call.status not in (0, None):
            call.future.set_exception(CallError(call.status, call.message))
        elif len(call.data) < 5:
            call.future.set_exception(CallError(13, "no response message"))
        else:
            call.future.set_result(bytes(call.data[5:]))


def _unary(channel: H2Channel, path: str, response_class):
    async def call(request, timeout=None):  # no deadline: a dead server fails the connection
        return response_class.FromString(await channel.call(path, request.SerializeToString()))
    return call


class KVStub:
    def __init__(self, channel: H2Channel):
        self.Put = _unary(channel, "/etcdserverpb.KV/Put", pb.PutResponse)
        self.Range = _unary(channel, "/etcdserverpb.KV/Range", pb.RangeResponse)
        self.Txn = _unary(channel, "/etcdserverpb.KV/Txn", pb.TxnResponse)


class LeaseStub:
    def __init__(self, channel: H2Channel):
        self.LeaseGrant = _unary(channel, "/etcdserverpb.Lease/LeaseGrant", pb.LeaseGrantResponse)
