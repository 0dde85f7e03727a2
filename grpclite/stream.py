"""One call: an HTTP/2 stream's requests in, its responses and status out.

The receive side cuts length-prefixed gRPC messages out of DATA frames (and
inflates gzip or deflate requests); the send side queues framed messages
behind the stream's and the connection's send windows and ends the call with
its trailers once everything before them has left. reply() is the unary
call's whole answer, and usually leaves in one go: headers, one DATA frame,
trailers.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import TYPE_CHECKING

import grpc

from grpclite.calm import PING_BURST
from grpclite.context import Aborted
from grpclite.flow import Window
from grpclite.wire import (
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    HEADERS,
    MESSAGE_PREFIX,
    OK_TRAILERS,
    RESPONSE_HEADERS,
    status_block,
)

if TYPE_CHECKING:
    from grpclite.connection import Connection

# a streaming handler waits for the client to read once this much is queued for it
STREAM_HIGH_WATER = 1 << 20

# zlib window bits for the request encodings we can read
_DECOMPRESS = {b"gzip": 31, b"deflate": 15}


def _identity(m):
    return m


class Stream:
    __slots__ = ("conn", "id", "path", "handler", "metadata", "deadline", "task",
                 "send_window", "pending", "pending_bytes", "trailers", "headers_sent",
                 "finished", "cancelled", "remote_closed", "recv_buf", "recv_window", "held", "complete", "partial",
                 "arrived", "unary_request", "drained", "serialize", "encoding")

    def __init__(self, conn: Connection, sid: int, path: str, handler, metadata, deadline,
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
        # None while it is the peer's initial window, untouched (a Window less for most calls):
        # made by own_send_window() when it first changes
        self.send_window: Window | None = None
        self.pending: list[bytes] = []  # framed messages waiting for flow-control window
        self.pending_bytes = 0
        self.trailers: bytes | None = None  # sent once pending data is gone
        self.headers_sent = False
        self.finished = False
        self.cancelled = False
        self.remote_closed = False
        self.recv_buf = bytearray()
        # made by the first DATA frame that does not end the stream (Connection.on_data):
        # a unary request in one frame never needs it
        self.recv_window: Window | None = None
        self.held = 0  # request bytes counted against the connection's window, not yet released
        self.complete = 0  # a streaming call's: bytes of whole messages at the head of recv_buf
        self.partial = 0  # bytes of a message not yet whole, as counted in the connection's `partial`
        self.arrived: asyncio.Future | None = None  # a streaming handler waiting for a message
        self.unary_request = None
        self.drained: asyncio.Future | None = None

    # --- receiving -------------------------------------------------------

    def next_messages(self):
        """Complete messages in the receive buffer (raises Aborted on a bad one)."""
        buf = self.recv_buf
        out = []
        pos = 0
        limit = self.conn.server.max_receive
        while len(buf) - pos >= 5:
            compressed, n = MESSAGE_PREFIX.unpack_from(buf, pos)
            if n > limit:
                raise Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED,
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
            raise Aborted(grpc.StatusCode.UNIMPLEMENTED,
                          f"grpc: Decompressor is not installed for grpc-encoding {self.encoding.decode('latin-1')!r}")
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(raw, limit + 1)
        except zlib.error as err:
            raise Aborted(grpc.StatusCode.INTERNAL, f"grpc: failed to decompress the message: {err}") from None
        if len(out) > limit:
            raise Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"grpc: received message after decompression larger than max ({len(out)} vs. {limit})")
        return out

    def find_messages(self) -> None:
        """A streaming call's whole messages in recv_buf, counted in `complete`, each left
        there until the handler takes it (raises Aborted on one larger than allowed)."""
        buf = self.recv_buf
        pos = self.complete
        limit = self.conn.server.max_receive
        while len(buf) - pos >= 5:
            n = MESSAGE_PREFIX.unpack_from(buf, pos)[1]
            if n > limit:
                raise Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"grpc: received message larger than max ({n} vs. {limit})")
            if len(buf) - pos - 5 < n:
                break
            pos += 5 + n
        self.complete = pos

    def take(self):
        """The next whole message, deserialized; its bytes go back to both windows (raises Aborted
        on a message that cannot be read)."""
        buf = self.recv_buf
        compressed, n = MESSAGE_PREFIX.unpack_from(buf, 0)
        raw = bytes(buf[5:5 + n])
        del buf[:5 + n]
        n += 5
        self.complete -= n
        self.held -= n
        conn = self.conn
        conn.release(n)
        window = self.recv_window
        if window is not None:
            released = window.held() - self.complete  # some of a message's bytes went back as they came
            if released > 0:
                conn.release_stream(self, released)
        if compressed:
            raw = self._decompress(raw, conn.server.max_receive)
        deserialize = self.handler.request_deserializer
        if deserialize is None:
            return raw
        try:
            return deserialize(raw)
        except Exception as exc:  # noqa: BLE001  (a bad message fails its call, as grpc-go's)
            raise Aborted(grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {exc}") from None

    def wake(self) -> None:
        """A message or the end of the requests arrived: a waiting handler reads on."""
        arrived = self.arrived
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    def drop_requests(self) -> None:
        """The call is over: what it held of its requests goes."""
        if self.partial:
            self.conn.partial -= self.partial
            self.partial = 0
        self.recv_buf = bytearray()
        self.complete = self.held = 0
        self.unary_request = None
        self.wake()

    async def next_request(self):
        """A streaming call's next request, None once there are no more."""
        while True:
            if self.finished:
                return None
            if self.complete:
                try:
                    return self.take()
                except Aborted as err:
                    self.fail(*err.args)
                    return None
            if self.remote_closed:
                return None
            self.arrived = asyncio.get_running_loop().create_future()
            await self.arrived

    async def request_iterator(self):
        while True:
            item = await self.next_request()
            if item is None:
                return
            yield item

    # --- sending ---------------------------------------------------------

    def own_send_window(self) -> Window:
        """The stream's send window, made now if it was still the peer's initial window."""
        window = self.send_window
        if window is None:
            window = self.send_window = Window(self.conn.peer_initial_window)
        return window

    def writable_now(self) -> bool:
        """Whether a handler may queue another message (the call is on and
        holds no more than its share of unsent data)."""
        return not self.finished and self.pending_bytes <= STREAM_HIGH_WATER and not self.conn.write_paused

    def send_headers(self) -> None:
        if not self.headers_sent:
            self.headers_sent = True
            self.conn.queue_frame(HEADERS, END_HEADERS, self.id, RESPONSE_HEADERS)

    def queue_message(self, payload: bytes) -> None:
        if self.finished:
            return
        self.send_headers()
        data = MESSAGE_PREFIX.pack(0, len(payload)) + payload
        if self.pending:
            self._hold(data)
        else:
            self._send_data(data)

    async def send_message(self, payload: bytes) -> None:
        self.queue_message(payload)
        while (self.pending_bytes > STREAM_HIGH_WATER or self.conn.write_paused) and not self.finished:
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    def _send_data(self, data: bytes) -> None:
        """Send what the windows allow now, queue the rest."""
        conn = self.conn
        conn.pings.tokens = PING_BURST  # a client streaming a response in pings to size its window
        window, conn_window = self.send_window, conn.send_window
        if window is None:
            window = self.own_send_window()
        n = len(data)
        available, conn_available = window.available, conn_window.available
        if n <= available and n <= conn_available:
            window.available = available - n
            conn_window.available = conn_available - n
            frame_max = conn.peer_max_frame
            if n <= frame_max:
                conn.queue_frame(DATA, 0, self.id, data)
            else:
                for i in range(0, n, frame_max):
                    conn.queue_frame(DATA, 0, self.id, data[i:i + frame_max])
            return
        allowed = min(available, conn_available)
        if allowed > 0:
            self._send_data(data[:allowed])
            data = data[allowed:]
        self._hold(data)
        conn.blocked[self.id] = self

    def _hold(self, data: bytes) -> None:
        """Keep data until the client's windows let it go (counted for the connection too)."""
        self.pending.append(data)
        self.pending_bytes += len(data)
        self.conn.unsent += len(data)

    def drop_pending(self) -> None:
        """The call is gone: what waited for the client's windows goes with it."""
        self.conn.unsent -= self.pending_bytes
        self.pending = []
        self.pending_bytes = 0

    def drain(self) -> None:
        """Windows opened: send what waits, then the trailers if they wait too."""
        pending = self.pending
        self.drop_pending()
        self.conn.blocked.pop(self.id, None)
        for i, data in enumerate(pending):
            self._send_data(data)
            if self.pending:  # blocked again: keep the rest in order
                for rest in pending[i + 1:]:
                    self._hold(rest)
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
        self.finish(status_block(code, details))
        self.stop_handler()

    def reply(self, response=None, code: grpc.StatusCode | None = None, details: str = "") -> None:
        """End a unary call: reply(response), or reply(None, code, details)
        for an error (how callback handlers, GrpcServer.set_unary_callback,
        answer; unary coroutines' answers come here too). Nothing happens if
        the call already ended (cancelled, deadline passed)."""
        if self.finished:
            return
        if code is not None:
            self.finish(status_block(code, details))
            return
        payload = self.serialize(response)
        n = len(payload) + 5
        conn = self.conn
        window, conn_window = self.send_window, conn.send_window
        if self.headers_sent or self.pending or n > conn.peer_max_frame or n > conn_window.available \
                or n > (conn.peer_initial_window if window is None else window.available):
            self.queue_message(payload)
            self.finish(OK_TRAILERS)
            return
        # the usual whole answer: headers, one DATA frame, trailers, in one go; the stream
        # ends with them, so only the connection's window needs counting
        self.headers_sent = self.finished = True
        conn_window.available -= n
        sid = self.id
        header = FRAME_HEADER.pack
        conn.out += (header(0, len(RESPONSE_HEADERS), HEADERS, END_HEADERS, sid), RESPONSE_HEADERS,
                     header(n >> 8, n & 0xFF, DATA, 0, sid), MESSAGE_PREFIX.pack(0, n - 5), payload,
                     header(0, len(OK_TRAILERS), HEADERS, END_HEADERS | END_STREAM, sid), OK_TRAILERS)
        conn.out_bytes += n
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
