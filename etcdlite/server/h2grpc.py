"""gRPC over HTTP/2, served from the member's own event loop.

grpcio's servers hand every message between threads: the handler's loop, the
C core's I/O threads and the completion-queue poller. On the 2-core virtual
machines this project runs on, those hand-offs (about six context switches per
message) cost more than everything etcdlite does with a request, and they set
the pace of a watch fan-out: one WatchResponse per watcher per event, each its
own round trip through the threads. This server speaks the wire protocol
itself (HTTP/2 framing, flow control and the gRPC message and status rules)
in the loop that runs the handlers, so a put costs one read and one write of
the socket, and the responses of one turn of the loop leave in one write.

What is implemented is what gRPC clients use: the connection preface and
SETTINGS, HEADERS + CONTINUATION (decoded with the `hpack` library; our own
header blocks use only the static table and literals, so they never touch
the peer's dynamic table), DATA with both directions' flow control, PING,
RST_STREAM, WINDOW_UPDATE and GOAWAY; length-prefixed messages, grpc-timeout
deadlines, grpc-status/grpc-message trailers (trailers-only for errors
before any message). Requests compressed with gzip or deflate are accepted
(responses go uncompressed, which the protocol allows); other encodings get
UNIMPLEMENTED. No server push, no HTTP/1 upgrade. The handlers are the grpcio servicers
(registered through the generated add_*Servicer_to_server functions) and see
a context with grpc.aio's methods (abort, set_code, set_details, peer,
invocation_metadata, time_remaining, ...).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import ssl
import struct
import time
import zlib
from urllib.parse import quote

import grpc
import hpack
from hpack.table import HeaderTable

log = logging.getLogger("etcdlite.h2grpc")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
# settings
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
# what we let a client send before it hears from us: a stream may send a
# whole 1.5 MiB put without waiting; the connection carries several
STREAM_RECV_WINDOW = 4 << 20
CONN_RECV_WINDOW = 64 << 20
# the largest frame we accept (we advertise it); what we send is bounded by the peer's setting
RECV_MAX_FRAME = 1 << 20
MAX_HEADER_LIST = 1 << 20
# how often calls past their grpc-timeout are ended (clients end them on time themselves)
DEADLINE_TICK = 0.1
# a streaming handler waits for the client to read once this much is queued for it
STREAM_HIGH_WATER = 1 << 20

_HDR = struct.Struct(">HBBBL")  # 24-bit length as 16+8 bits, type, flags, stream id
_U32 = struct.Struct(">L")
_MSG = struct.Struct(">BL")  # gRPC message prefix: compressed flag, length


def _b64decode(value: bytes) -> bytes:
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return value


def _identity(m):
    return m


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_str(s: bytes) -> bytes:
    return _hpack_int(len(s), 7) + s


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, new name: no state in
    either side's dynamic table."""
    return b"\x00" + _hpack_str(name) + _hpack_str(value)


# ':status: 200' is static entry 8; 'content-type' is static name 31
RESPONSE_HEADERS = b"\x88" + _hpack_int(31, 4) + _hpack_str(b"application/grpc")
OK_TRAILERS = _literal(b"grpc-status", b"0")

# zlib window bits for the request encodings we can read
_DECOMPRESS = {b"gzip": 31, b"deflate": 15}

_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def _status_block(code: grpc.StatusCode, details: str, trailing_metadata=()) -> bytes:
    block = _literal(b"grpc-status", str(code.value[0]).encode())
    if details:
        # percent-encoded, as the gRPC spec asks for anything outside printable ASCII
        block += _literal(b"grpc-message", quote(details, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode())
    for key, value in trailing_metadata:
        key = key.encode() if isinstance(key, str) else key
        if key.endswith(b"-bin"):  # binary values travel base64-encoded, unpadded
            value = base64.b64encode(value).rstrip(b"=")
        elif isinstance(value, str):
            value = value.encode()
        block += _literal(key, value)
    return block


class _VersionedTable(HeaderTable):
    """HPACK's dynamic table, counting its changes (for the header cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def add(self, name: bytes, value: bytes):
        self.version += 1
        return super().add(name, value)

    @property
    def maxsize(self) -> int:
        return HeaderTable.maxsize.fget(self)

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.version += 1
        HeaderTable.maxsize.fset(self, newmax)


class CachedHeaderDecoder:
    """HPACK decoding with the result of a header block remembered.

    Decoding HPACK in Python costs more than the rest of a small call, and a
    peer repeats the same block (for the same method, or the same status) once
    its dynamic table holds the fields; a block that did not change the table
    means the same again as long as the table stays as it is, so its parsed
    form is remembered until the table changes."""

    def __init__(self, max_entries: int, max_header_list_size: int | None = None):
        self.decoder = hpack.Decoder()
        if max_header_list_size is not None:
            self.decoder.max_header_list_size = max_header_list_size
        self.table = self.decoder.header_table = _VersionedTable()
        self.max_entries = max_entries
        self.cache: dict[bytes, object] = {}
        self.version = 0

    def decode(self, block: bytes, parse):
        """parse(list of (name, value) bytes) of the block, from the cache when
        it can be; hpack's errors pass through."""
        if self.table.version != self.version:
            self.cache.clear()
            self.version = self.table.version
        parsed = self.cache.get(block)
        if parsed is None:
            parsed = parse(self.decoder.decode(block, raw=True))
            if self.table.version == self.version and len(self.cache) < self.max_entries:
                self.cache[block] = parsed
        return parsed


def _parse_request_headers(headers) -> tuple:
    """(path, timeout, encoding, metadata) of a request's header fields."""
    path = b""
    timeout = None
    encoding = b""
    metadata = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":path":
                path = value
        elif name == b"grpc-timeout":
            try:
                timeout = int(value[:-1]) * _TIMEOUT_UNITS[value[-1:]]
            except (ValueError, KeyError):
                timeout = None
        elif name == b"grpc-encoding":
            encoding = value
        elif name not in (b"te", b"content-type", b"user-agent", b"grpc-accept-encoding"):
            metadata.append((name.decode("latin-1"), _b64decode(value) if name.endswith(b"-bin")
                             else value.decode("latin-1")))
    return path.decode("latin-1"), timeout, encoding, tuple(metadata)


class _HandlerCallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str, invocation_metadata):
        self.method = method
        self.invocation_metadata = invocation_metadata


class _Aborted(Exception):
    pass


class ServicerContext:
    """What a handler sees: grpc.aio.ServicerContext's methods that matter here."""

    __slots__ = ("_stream", "_code", "_details", "_trailing")

    def __init__(self, stream: _Stream):
        self._stream = stream
        self._code = None
        self._details = ""
        self._trailing = ()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()):
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs an error code")
        self._code, self._details = code, details
        if trailing_metadata:  # as grpc.aio: else what set_trailing_metadata set stays
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def set_trailing_metadata(self, trailing_metadata) -> None:
        self._trailing = tuple(trailing_metadata)

    def invocation_metadata(self):
        return self._stream.metadata

    def peer(self) -> str:
        return self._stream.conn.peer

    def time_remaining(self):
        d = self._stream.deadline
        return None if d is None else max(0.0, d - time.monotonic())

    def cancelled(self) -> bool:
        return self._stream.cancelled

    def done(self) -> bool:
        return self._stream.finished

    async def send_initial_metadata(self, initial_metadata=()) -> None:
        self._stream.send_headers()

    async def write(self, message) -> None:
        await self._stream.send_message(self._stream.serialize(message))

    # etcdlite's own, for a handler that writes without awaiting each message:

    def try_write(self, message) -> bool:
        """Queue message on the stream now, if the stream holds less than its
        share of unsent data; False (nothing done) if not, or if the call ended."""
        if not self.writable_now():
            return False
        stream = self._stream
        stream.queue_message(stream.serialize(message))
        return True

    def writable_now(self) -> bool:
        stream = self._stream
        return not stream.finished and stream.pending_bytes <= STREAM_HIGH_WATER

    async def writable(self) -> None:
        """Until try_write would write, or the call ended (done())."""
        stream = self._stream
        while not (stream.finished or self.writable_now()):
            if stream.drained is None or stream.drained.done():
                stream.drained = asyncio.get_running_loop().create_future()
            await stream.drained

    async def read(self):
        return await self._stream.next_request()


class _Stream:
    __slots__ = ("conn", "id", "path", "handler", "metadata", "deadline", "task",
                 "send_window", "pending", "pending_bytes", "trailers", "headers_sent",
                 "finished", "cancelled", "remote_closed", "recv_buf", "recv_unacked", "requests",
                 "unary_request", "drained", "serialize", "encoding")

    def __init__(self, conn: _Connection, sid: int, path: str, handler, metadata, deadline,
                 encoding: bytes = b""):
        self.conn = conn
        self.encoding = encoding
        self.id = sid
        self.path = path
        self.handler = handler
        self.serialize = (handler and handler.response_serializer) or _identity
        self.metadata = metadata
        self.deadline = deadline
        self.task = None
        self.send_window = conn.peer_initial_window
        self.pending: list[bytes] = []  # framed messages waiting for flow-control window
        self.pending_bytes = 0
        self.trailers: bytes | None = None  # sent once pending data is gone
        self.headers_sent = False
        self.finished = False
        self.cancelled = False
        self.remote_closed = False
        self.recv_buf = bytearray()
        self.recv_unacked = 0
        self.requests: asyncio.Queue | None = None  # streaming requests
        self.unary_request = None
        self.drained: asyncio.Future | None = None

    # --- receiving -------------------------------------------------------

    def next_messages(self):
        """Complete messages in the receive buffer (raises _Aborted on a bad one)."""
        buf = self.recv_buf
        out = []
        pos = 0
        limit = self.conn.server.max_receive
        while len(buf) - pos >= 5:
            compressed, n = _MSG.unpack_from(buf, pos)
            if n > limit:
                raise _Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"grpc: received message larger than max ({n} vs. {limit})")
            if len(buf) - pos - 5 < n:
                break
            raw = bytes(buf[pos + 5:pos + 5 + n])
            pos += 5 + n
            if compressed:
                raw = self._decompress(raw, limit)
            out.append(raw)
        if pos:
            del buf[:pos]
        return out

    def _decompress(self, raw: bytes, limit: int) -> bytes:
        wbits = _DECOMPRESS.get(self.encoding)
        if wbits is None:
            raise _Aborted(grpc.StatusCode.UNIMPLEMENTED,
                           f"grpc: Decompressor is not installed for grpc-encoding {self.encoding.decode('latin-1')!r}")
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(raw, limit + 1)
        except zlib.error as err:
            raise _Aborted(grpc.StatusCode.INTERNAL, f"grpc: failed to decompress the message: {err}") from None
        if len(out) > limit:
            raise _Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"grpc: received message after decompression larger than max ({len(out)} vs. {limit})")
        return out

    async def next_request(self):
        item = await self.requests.get()
        if item is None:
            self.requests.put_nowait(None)  # stay at the end
        return item

    async def request_iterator(self):
        while True:
            item = await self.next_request()
            if item is None:
                return
            yield item

    # --- sending ---------------------------------------------------------

    def send_headers(self) -> None:
        if not self.headers_sent:
            self.headers_sent = True
            self.conn.queue_frame(HEADERS, END_HEADERS, self.id, RESPONSE_HEADERS)

    def queue_message(self, payload: bytes) -> None:
        if self.finished:
            return
        self.send_headers()
        data = _MSG.pack(0, len(payload)) + payload
        if self.pending:
            self.pending.append(data)
            self.pending_bytes += len(data)
        else:
            self._send_data(data)

    async def send_message(self, payload: bytes) -> None:
        self.queue_message(payload)
        if self.pending_bytes > STREAM_HIGH_WATER and not self.finished:
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    def _send_data(self, data: bytes) -> None:
        """Send what the windows allow now, queue the rest."""
        conn = self.conn
        allowed = min(self.send_window, conn.send_window)
        if allowed >= len(data):
            n = len(data)
            frame_max = conn.peer_max_frame
            self.send_window -= n
            conn.send_window -= n
            if n <= frame_max:
                conn.queue_frame(DATA, 0, self.id, data)
            else:
                for i in range(0, n, frame_max):
                    conn.queue_frame(DATA, 0, self.id, data[i:i + frame_max])
            return
        if allowed > 0:
            self._send_data(data[:allowed])
            data = data[allowed:]
        self.pending.append(data)
        self.pending_bytes += len(data)
        conn.blocked[self.id] = self

    def drain(self) -> None:
        """Windows opened: send what waits, then the trailers if they wait too."""
        pending = self.pending
        self.pending = []
        self.pending_bytes = 0
        self.conn.blocked.pop(self.id, None)
        for i, data in enumerate(pending):
            self._send_data(data)
            if self.pending:  # blocked again: keep the rest in order
                self.pending.extend(pending[i + 1:])
                self.pending_bytes += sum(len(d) for d in pending[i + 1:])
                break
        if not self.pending:
            if self.trailers is not None:
                self._send_trailers()
            if self.drained is not None and not self.drained.done():
                self.drained.set_result(None)
        elif self.pending_bytes <= STREAM_HIGH_WATER and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def finish(self, block: bytes) -> None:
        """End the call with this status block (after any queued data)."""
        if self.finished:
            return
        self.finished = True
        if not self.headers_sent:
            # trailers-only response
            self.headers_sent = True
            self.conn.queue_frame(HEADERS, END_HEADERS | END_STREAM, self.id, RESPONSE_HEADERS + block)
            self.conn.close_stream(self)
            return
        self.trailers = block
        if not self.pending:
            self._send_trailers()

    def _send_trailers(self) -> None:
        block, self.trailers = self.trailers, None
        self.conn.queue_frame(HEADERS, END_HEADERS | END_STREAM, self.id, block)
        self.conn.close_stream(self)

    def fail(self, code: grpc.StatusCode, details: str) -> None:
        self.finish(_status_block(code, details))
        self.stop_handler()

    def reply(self, response=None, code: grpc.StatusCode | None = None, details: str = "") -> None:
        """End a unary call: reply(response), or reply(None, code, details)
        for an error (how callback handlers, GrpcServer.set_unary_callback,
        answer; unary coroutines' answers come here too). Nothing happens if
        the call already ended (cancelled, deadline passed)."""
        if self.finished:
            return
        if code is not None:
            self.finish(_status_block(code, details))
            return
        payload = self.serialize(response)
        n = len(payload) + 5
        conn = self.conn
        if self.headers_sent or self.pending or n > conn.peer_max_frame or n > min(self.send_window, conn.send_window):
            self.queue_message(payload)
            self.finish(OK_TRAILERS)
            return
        # the usual whole answer: headers, one DATA frame, trailers, in one go
        self.headers_sent = self.finished = True
        self.send_window -= n
        conn.send_window -= n
        sid = self.id
        conn.out += (_HDR.pack(0, len(RESPONSE_HEADERS), HEADERS, END_HEADERS, sid), RESPONSE_HEADERS,
                     _HDR.pack(n >> 8, n & 0xFF, DATA, 0, sid), _MSG.pack(0, n - 5), payload,
                     _HDR.pack(0, len(OK_TRAILERS), HEADERS, END_HEADERS | END_STREAM, sid), OK_TRAILERS)
        if not conn.flush_scheduled:
            conn.flush_scheduled = True
            conn.server.schedule_flush(conn)
        conn.close_stream(self)

    def stop_handler(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.drained is not None and not self.drained.done():
            self.drained.cancel()

    def expire(self) -> None:
        if not self.finished:
            self.cancelled = True
            self.fail(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer):
        self.server = server
        self.loop = server.loop
        self.transport = None
        self.peer = ""
        self.buf = bytearray()
        self.preface_seen = False
        self.headers = CachedHeaderDecoder(256, MAX_HEADER_LIST)
        self.streams: dict[int, _Stream] = {}
        self.blocked: dict[int, _Stream] = {}  # streams waiting for window, in order
        self.last_stream = 0
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = 16384
        self.recv_unacked = 0
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.headers_in_progress = None  # (sid, flags, fragments) while CONTINUATION frames arrive
        self.going_away = False
        self.closed = False

    # --- connection --------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections.add(self)
        try:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        addr = transport.get_extra_info("peername")
        if isinstance(addr, tuple) and len(addr) >= 2:
            self.peer = f"ipv6:[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"ipv4:{addr[0]}:{addr[1]}"
        settings = b"".join(struct.pack(">HL", k, v) for k, v in (
            (S_MAX_CONCURRENT_STREAMS, 2**31 - 1),
            (S_INITIAL_WINDOW_SIZE, STREAM_RECV_WINDOW),
            (S_MAX_FRAME_SIZE, RECV_MAX_FRAME),
            (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
            (S_ENABLE_PUSH, 0),
        ))
        self.queue_frame(SETTINGS, 0, 0, settings)
        self.queue_frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONN_RECV_WINDOW - DEFAULT_WINDOW))

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.cancelled = True
            stream.finished = True
            stream.stop_handler()
            if stream.requests is not None:
                stream.requests.put_nowait(None)
        self.streams.clear()
        self.blocked.clear()

    def queue_frame(self, ftype: int, flags: int, sid: int, payload: bytes = b"") -> None:
        n = len(payload)
        self.out.append(_HDR.pack(n >> 8, n & 0xFF, ftype, flags, sid))
        if n:
            self.out.append(payload)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.server.schedule_flush(self)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out and not self.closed:
            data = b"".join(self.out)
            self.out = []
            self.transport.write(data)
        else:
            self.out = []

    def go_away(self, code: int, message: str = "") -> None:
        if not self.going_away:
            self.going_away = True
            self.queue_frame(GOAWAY, 0, 0, _U32.pack(self.last_stream) + _U32.pack(code) + message.encode())
        if code != NO_ERROR:
            self.flush()
            self.transport.close()

    def close_stream(self, stream: _Stream) -> None:
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        if not stream.remote_closed:
            # we answered before the client finished sending: tell it to stop
            stream.remote_closed = True
            self.queue_frame(RST_STREAM, 0, stream.id, _U32.pack(NO_ERROR))
        if self.going_away and not self.streams and not self.closed:
            self.flush()
            self.transport.close()

    # --- reading -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if buf or not self.preface_seen:
            buf += data
            data = buf
        if not self.preface_seen:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    self.transport.close()
                return
            if buf[:len(PREFACE)] != PREFACE:
                self.transport.close()
                return
            del buf[:len(PREFACE)]
            self.preface_seen = True
        # frames are cut from `data`: the read itself when nothing was left
        # over from the last one (the usual case: no copy into the buffer),
        # else the buffer, which keeps any incomplete frame at the end
        pos = 0
        size = len(data)
        unpack = _HDR.unpack_from
        try:
            while size - pos >= 9:
                hi, lo, ftype, flags, sid = unpack(data, pos)
                length = (hi << 8) | lo
                if length > RECV_MAX_FRAME:
                    self.go_away(FRAME_SIZE_ERROR, "frame too large")
                    return
                end = pos + 9 + length
                if end > size:
                    break
                payload = bytes(data[pos + 9:end]) if data is buf else data[pos + 9:end]
                pos = end
                if ftype == DATA and self.headers_in_progress is None:
                    self.on_data(flags, sid & 0x7FFFFFFF, payload)
                else:
                    self.frame_received(ftype, flags, sid & 0x7FFFFFFF, payload)
                if self.closed:
                    return
        except _ConnectionError as err:
            self.go_away(err.code, err.message)
            return
        except Exception:  # a bug here must cost this connection, not the server
            log.exception("HTTP/2 connection from %s failed", self.peer)
            self.go_away(INTERNAL_ERROR, "internal error")
            return
        finally:
            if data is buf:
                if pos:
                    del buf[:pos]
            elif pos < size:
                buf += data[pos:]

    def frame_received(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self.headers_in_progress is not None and ftype != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if ftype == DATA:
            self.on_data(flags, sid, payload)
        elif ftype == HEADERS:
            if sid == 0 or sid % 2 == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "bad stream id for HEADERS")
            if flags & PADDED:
                pad = payload[0]
                payload = payload[1:len(payload) - pad]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self.on_headers(sid, flags, payload)
            else:
                self.headers_in_progress = (sid, flags, [payload])
        elif ftype == CONTINUATION:
            if self.headers_in_progress is None or self.headers_in_progress[0] != sid:
                raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self.headers_in_progress[2].append(payload)
            if flags & END_HEADERS:
                hsid, hflags, parts = self.headers_in_progress
                self.headers_in_progress = None
                self.on_headers(hsid, hflags, b"".join(parts))
        elif ftype == SETTINGS:
            if not flags & ACK:
                self.on_settings(payload)
        elif ftype == PING:
            if not flags & ACK:
                self.queue_frame(PING, ACK, 0, payload)
        elif ftype == WINDOW_UPDATE:
            self.on_window_update(sid, payload)
        elif ftype == RST_STREAM:
            stream = self.streams.pop(sid, None)
            if stream is not None:
                self.blocked.pop(sid, None)
                stream.cancelled = True
                stream.finished = True
                stream.stop_handler()
                if stream.requests is not None:
                    stream.requests.put_nowait(None)
        elif ftype == GOAWAY:
            self.go_away(NO_ERROR)
        elif ftype == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "clients cannot push")
        # PRIORITY and unknown frame types are ignored

    def on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad SETTINGS length")
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, i)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise _ConnectionError(PROTOCOL_ERROR, "bad max frame size")
                self.peer_max_frame = value
            # header table size: we never index, so the peer's table size does not matter
        self.queue_frame(SETTINGS, ACK, 0)
        self.resume_blocked()

    def on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE length")
        inc = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            self.send_window += inc
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window overflow")
            self.resume_blocked()
            return
        stream = self.streams.get(sid)
        if stream is not None:
            stream.send_window += inc
            if stream.pending:
                stream.drain()

    def resume_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window <= 0:
                return
            if stream.send_window > 0:
                stream.drain()

    def credit(self, stream: _Stream | None, n: int) -> None:
        """Give back receive window for n bytes we consumed."""
        self.recv_unacked += n
        if self.recv_unacked >= CONN_RECV_WINDOW // 2:
            self.queue_frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.recv_unacked))
            self.recv_unacked = 0
        if stream is not None and not stream.remote_closed:
            stream.recv_unacked += n
            if stream.recv_unacked >= STREAM_RECV_WINDOW // 2:
                self.queue_frame(WINDOW_UPDATE, 0, stream.id, _U32.pack(stream.recv_unacked))
                stream.recv_unacked = 0

    def on_data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        n = len(payload)
        stream = self.streams.get(sid)
        if flags & END_STREAM:
            # the stream's last DATA: only the connection's window matters now
            unacked = self.recv_unacked + n
            if unacked < CONN_RECV_WINDOW // 2:
                self.recv_unacked = unacked
            else:
                self.credit(None, n)
        else:
            self.credit(stream, n)
        if stream is None or stream.remote_closed:
            if sid > self.last_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we already finished (e.g. rejected): drop it
        if flags & PADDED:
            pad = payload[0]
            payload = payload[1:n - pad]
        n = len(payload) - 5
        if n >= 0 and not stream.recv_buf and payload[0] == 0 and _MSG.unpack_from(payload)[1] == n \
                and n <= self.server.max_receive:
            messages = [payload[5:]]  # the usual: one whole uncompressed message in the frame
        else:
            stream.recv_buf += payload
            try:
                messages = stream.next_messages()
            except _Aborted as err:
                stream.fail(*err.args)
                return
        if flags & END_STREAM:
            stream.remote_closed = True
        self.deliver(stream, messages)

    def deliver(self, stream: _Stream, messages) -> None:
        h = stream.handler
        if h.request_streaming:
            for raw in messages:
                stream.requests.put_nowait(h.request_deserializer(raw) if h.request_deserializer else raw)
            if stream.remote_closed:
                if stream.recv_buf:
                    stream.fail(grpc.StatusCode.INTERNAL, "grpc: truncated message at the end of the stream")
                stream.requests.put_nowait(None)
            return
        for raw in messages:
            if stream.unary_request is not None:
                stream.fail(grpc.StatusCode.UNIMPLEMENTED, "grpc: more than one request for a unary call")
                return
            stream.unary_request = raw
        if stream.remote_closed and not stream.finished:
            if stream.unary_request is None or stream.recv_buf:
                stream.fail(grpc.StatusCode.INTERNAL, "grpc: no request message for a unary call")
                return
            try:
                request = h.request_deserializer(stream.unary_request) if h.request_deserializer else stream.unary_request
            except Exception as exc:  # noqa: BLE001
                stream.fail(grpc.StatusCode.INTERNAL, f"grpc: cannot parse the request: {exc}")
                return
            raw, stream.unary_request = stream.unary_request, None
            callback = self.server.callbacks.get(stream.path)
            if callback is not None:
                callback, with_raw = callback
                try:
                    if with_raw:
                        callback(request, stream.reply, raw)
                    else:
                        callback(request, stream.reply)
                except Exception as exc:  # noqa: BLE001  (a bug: keep serving, tell the client)
                    log.exception("handler %s failed", stream.path)
                    stream.reply(None, grpc.StatusCode.INTERNAL, f"internal error: {exc!r}")
            elif self.server.eager_unary and h.unary_unary is not None:
                stream.task = _EagerCall(self.server.run_handler(stream, request))
            else:
                stream.task = self.loop.create_task(self.server.run_handler(stream, request))

    def parse_headers(self, block: bytes):
        """(path, timeout, encoding, metadata) of a request's header block."""
        try:
            return self.headers.decode(block, _parse_request_headers)
        except Exception as exc:  # noqa: BLE001  (hpack raises several kinds)
            raise _ConnectionError(COMPRESSION_ERROR, f"bad header block: {exc}") from None

    def on_headers(self, sid: int, flags: int, block: bytes) -> None:
        path_s, timeout, encoding, metadata = self.parse_headers(block)
        stream = self.streams.get(sid)
        if stream is not None or sid <= self.last_stream:
            # trailers from a client (grpc clients send none) or a finished stream
            if stream is not None and flags & END_STREAM:
                stream.remote_closed = True
                self.deliver(stream, [])
            return
        self.last_stream = sid
        if self.going_away:
            self.queue_frame(RST_STREAM, 0, sid, _U32.pack(REFUSED_STREAM))
            return
        handler = self.server.lookup(path_s, metadata)
        deadline = time.monotonic() + timeout if timeout is not None else None
        stream = _Stream(self, sid, path_s, handler, metadata, deadline, encoding)
        self.streams[sid] = stream
        if handler is None:
            stream.remote_closed = bool(flags & END_STREAM)
            stream.fail(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if deadline is not None:
            self.server.watch_deadlines()
        if handler.request_streaming:
            stream.requests = asyncio.Queue()
            stream.task = self.loop.create_task(self.server.run_handler(stream, stream.request_iterator()))
        if flags & END_STREAM:
            stream.remote_closed = True
            self.deliver(stream, [])


class _EagerCall:
    """Runs a unary call's handler coroutine without an asyncio.Task.

    The first step runs at once, inside the frame that completed the request;
    a handler that never waits (a serializable range, the bare benchmark
    server) finishes there. A handler that awaits a future is resumed from the
    future's done callback. A Task per call cost ~10% of a member's CPU under
    load (creation, registration, its first scheduled step). What this gives
    up: inside the handler there is no current task, so `asyncio.timeout()`
    and `asyncio.current_task()` do not work; servers whose handlers need them
    run with eager_unary=False (the apiserver). cancel() is Task.cancel()'s
    contract: the awaited future is cancelled, CancelledError is raised at the
    await."""

    __slots__ = ("cancel_requested", "coro", "finished", "waiting")

    def __init__(self, coro) -> None:
        self.coro = coro
        self.waiting: asyncio.Future | None = None
        self.finished = False
        self.cancel_requested = False
        self._step()

    def done(self) -> bool:
        return self.finished

    def cancel(self) -> bool:
        if self.finished:
            return False
        self.cancel_requested = True
        waiting = self.waiting
        if waiting is not None:
            waiting.cancel()  # its done callback resumes the handler
        return True

    def _wakeup(self, fut) -> None:
        self.waiting = None
        self._step()

    def _step(self) -> None:
        try:
            if self.cancel_requested:
                self.cancel_requested = False
                yielded = self.coro.throw(asyncio.CancelledError())
            else:
                yielded = self.coro.send(None)
        except StopIteration:
            self.finished = True
            return
        except BaseException:  # run_handler catches everything a handler raises
            self.finished = True
            log.exception("unary call driver")
            return
        if yielded is None:  # a bare yield (asyncio.sleep(0)): go round the loop once
            asyncio.get_running_loop().call_soon(self._step)
        elif getattr(yielded, "_asyncio_future_blocking", None):
            yielded._asyncio_future_blocking = False
            self.waiting = yielded
            yielded.add_done_callback(self._wakeup)
        else:
            self.cancel_requested = True  # not a future: end the handler as Task would
            asyncio.get_running_loop().call_soon(self._step)


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class GrpcServer:
    """A stand-in for grpc.aio.Server: register servicers with the generated
    add_*Servicer_to_server functions, listen on ports, start, stop."""

    def __init__(self, max_receive_message_length: int = 4 << 20, eager_unary: bool = True):
        self.loop = asyncio.get_running_loop()
        self.max_receive = max_receive_message_length
        self.eager_unary = eager_unary  # see _EagerCall
        self.callbacks: dict = {}  # path -> callback handler (set_unary_callback)
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.generic = []
        self.connections: set[_Connection] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._to_flush: list[_Connection] = []  # connections with frames queued

    # --- sending: queued frames leave once per turn of the loop, or sooner --

    def schedule_flush(self, conn: _Connection) -> None:
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
        exactly once, now or later (see _Stream.reply). No coroutine, task or
        future per call: for the hottest methods (etcd's Put). `with_raw`:
        callback(request, reply, raw), raw being the request's bytes as they
        came (for a handler that passes them on rather than serialize again)."""
        if path not in self.handlers:
            raise KeyError(f"{path} is not registered")
        self.callbacks[path] = (callback, with_raw)

    def lookup(self, path: str, metadata):
        handler = self.handlers.get(path)
        if handler is None and self.generic:
            details = _HandlerCallDetails(path, metadata)
            for g in self.generic:
                handler = g.service(details)
                if handler is not None:
                    break
        return handler

    # --- listening -----------------------------------------------------------

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on host:port (0 picks a free port); returns the port."""
        server = await self.loop.create_server(
            lambda: _Connection(self), host or None, port, ssl=ssl_context, reuse_address=True, backlog=1024)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

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
            if not conn.closed:
                conn.transport.abort()

    # --- calls -------------------------------------------------------------------

    async def run_handler(self, stream: _Stream, request) -> None:
        h = stream.handler
        context = ServicerContext(stream)
        try:
            if h.unary_unary is not None:
                response = await h.unary_unary(request, context)
                if not stream.finished:
                    if context._code is not None and context._code != grpc.StatusCode.OK:
                        stream.finish(_status_block(context._code, context._details, context._trailing))
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
                    stream.finish(_status_block(code, context._details, context._trailing))
        except grpc.aio.AbortError:
            stream.finish(_status_block(context._code, context._details, context._trailing))
        except asyncio.CancelledError:
            if not stream.finished:
                stream.finish(_status_block(grpc.StatusCode.CANCELLED, "Cancelled"))
        except Exception as exc:  # noqa: BLE001
            if context._code is not None and context._code != grpc.StatusCode.OK:
                stream.finish(_status_block(context._code, context._details, context._trailing))
            else:
                log.exception("handler %s failed", stream.path)
                stream.finish(_status_block(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}"))


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
