"""A lean Watch receiver for the benchmarks: bidirectional gRPC streams over HTTP/2, from asyncio.

With 1,000 watchers a put makes 1,000 WatchResponses, and grpc.aio's client
spends CPU on each in thread hand-offs in C-core (measured: benchmarks/why.md): the receiver, not the server, set the pace, for etcd as much as for etcdlite. Go etcdctl
receivers are one process per stream, and 100 of them waking per event on
2 cores measure the harness again. This client is benchmarks/h2client.py's
connection (H2Channel: same frames, same header block, same HPACK decoding)
with Watch streams added: a stream is opened with HEADERS and kept open,
WatchRequests go out as length-prefixed messages in DATA frames (within the
server's stream and connection windows), and the server's DATA frames are
reassembled into messages (a message may span frames, a frame may carry
several) and parsed as WatchResponse (upb, in C). Everything received counts
as consumed at once: WINDOW_UPDATEs for the stream and the connection go out
when half of a window has been used.

Timing: one time.time() per chunk read from the socket (data_received), given
to every event parsed out of it. Responses with events go to `on_events(resp,
now)` (EventLog by default: mod_revision, the send time the writer put in the
value's first 8 bytes, receive time, as benchmarks.load's grpc.aio receiver
records them); created responses are counted per stream; canceled or
compacted watchers, error trailers (grpc-status != 0), RST_STREAM, GOAWAY and a
lost connection are counted in `errors` and end what they concern, so a
waiting caller is woken rather than left hanging. Nothing else: no
compression, no TLS, no keepalive pings (the server's are answered).
"""

from __future__ import annotations

import asyncio
import struct
import time
from array import array
from collections import Counter

from benchmarks.h2client import RECV_WINDOW, H2Channel
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from grpclite.wire import (
    ACK,
    CANCEL,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    MESSAGE_PREFIX,
    PADDED,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
)

WATCH_PATH = "/etcdserverpb.Watch/Watch"
_STAMP = struct.Struct("d")  # benchmarks.suite.binary_stamp: the send time, first in the value


class EventLog:
    """(mod_revision, send time carried in the value, receive time) per event received."""

    __slots__ = ("recv", "revs", "sent")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.revs, self.sent, self.recv = array("q"), array("d"), array("d")

    def __len__(self) -> int:
        return len(self.recv)

    def __call__(self, resp, now: float) -> None:
        revs, sent, recv = self.revs, self.sent, self.recv
        for ev in resp.events:
            kv = ev.kv
            value = kv.value
            revs.append(kv.mod_revision)
            sent.append(_STAMP.unpack_from(value)[0] if len(value) >= 8 else 0.0)
            recv.append(now)


class WatchStream:
    """One Watch call: any number of watchers (create requests) on one HTTP/2 stream."""

    __slots__ = ("buf", "conn", "control", "created", "ended", "message", "on_events", "pending", "send_window",
                 "sid", "status", "unacked", "waiter", "watch_ids")

    def __init__(self, conn: WatchChannel, sid: int, on_events):
        self.conn = conn
        self.sid = sid
        self.on_events = on_events
        self.buf = bytearray()  # the start of a message whose end has not arrived
        self.unacked = 0  # bytes received since the last stream WINDOW_UPDATE
        self.send_window = conn.peer_initial_window
        self.pending = bytearray()  # requests waiting for a send window
        self.created = 0
        self.watch_ids: list[int] = []
        self.control: list = []  # canceled / compacted responses, in arrival order
        self.ended = False
        self.status: int | None = None  # grpc-status of the trailers
        self.message = ""
        self.waiter: asyncio.Future | None = None

    def send(self, *requests) -> None:
        """Send WatchRequests (messages or their serialized bytes), in one write."""
        if self.ended:
            raise ConnectionError(f"watch stream {self.sid} has ended")
        for r in requests:
            data = r if isinstance(r, bytes) else r.SerializeToString()
            self.pending += MESSAGE_PREFIX.pack(0, len(data))
            self.pending += data
        self.conn._drain_stream(self)

    def create(self, key: bytes, range_end: bytes = b"", count: int = 1, **fields) -> None:
        """`count` watchers on key (..range_end); fields: start_revision, prev_kv, ... ."""
        req = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=range_end, **fields))
        self.send(*[req.SerializeToString()] * count)

    async def wait(self, predicate, timeout: float) -> None:
        """Until predicate(self) holds; raises TimeoutError at the deadline, or
        ConnectionError if the stream ends first."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if self.ended:
                raise ConnectionError(f"watch stream ended: {self.end_reason()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"watch stream {self.sid}: condition not met in {timeout:g} s")
            self.waiter = self.conn.loop.create_future()
            try:
                await asyncio.wait([self.waiter], timeout=left)
            finally:
                self.waiter = None

    async def wait_created(self, n: int, timeout: float = 30.0) -> None:
        await self.wait(lambda s: s.created >= n, timeout)

    def end_reason(self) -> str:
        if self.status is not None:
            return f"grpc-status {self.status}: {self.message}"
        return self.message or "stream closed"

    def cancel(self) -> None:
        """End the call (RST_STREAM CANCEL), as a client dropping its stream does."""
        if not self.ended:
            self.conn._queue(self.conn._frame(RST_STREAM, 0, self.sid, U32.pack(CANCEL)))
            self.conn._end(self, "canceled by the client", error=False)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class WatchChannel(H2Channel):
    """An H2Channel (unary calls still work) that also carries Watch streams."""

    def __init__(self, authority: str, on_events=None, errors: Counter | None = None,
                 recv_window: int = RECV_WINDOW):
        super().__init__(authority)
        self.recv_window = recv_window
        self.on_events = on_events if on_events is not None else EventLog()
        self.errors = errors if errors is not None else Counter()
        self.watches: dict[int, WatchStream] = {}
        self.peer_initial_window = 65535
        self.now = 0.0
        self.closing = False
        self.window_updates_sent = 0  # for tests: flow control did its part

    @classmethod
    async def connect(cls, endpoint: str, on_events=None, errors: Counter | None = None,
                      recv_window: int = RECV_WINDOW) -> WatchChannel:
        host, port = endpoint.rsplit(":", 1)
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(endpoint, on_events, errors, recv_window),
                                                host, int(port))
        await asyncio.wait_for(proto.ready, 10)
        return proto

    def watch(self, on_events=None) -> WatchStream:
        """Open a Watch call (HEADERS without END_STREAM); create watchers with its create()/send().
        Its responses with events go to on_events(resp, now) (default: the connection's)."""
        if self.closed_error is not None:
            raise self.closed_error
        sid = self.next_id
        self.next_id += 2
        st = self.watches[sid] = WatchStream(self, sid, on_events or self.on_events)
        self._queue(self._frame(HEADERS, END_HEADERS, sid, self._block(WATCH_PATH)))
        return st

    def close(self) -> None:
        self.closing = True
        super().close()

    # --- sending ----------------------------------------------------------------

    def _drain_stream(self, st: WatchStream) -> None:
        pending = st.pending
        while pending:
            n = min(len(pending), st.send_window, self.send_window, self.peer_max_frame)
            if n <= 0:
                return
            st.send_window -= n
            self.send_window -= n
            self._queue(self._frame(DATA, 0, st.sid, bytes(pending[:n])))
            del pending[:n]

    def _window_update(self, sid: int, n: int) -> None:
        self.window_updates_sent += 1
        self._queue(self._frame(WINDOW_UPDATE, 0, sid, U32.pack(n)))

    # --- receiving --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.now = time.time()  # the arrival time of every event in this chunk
        super().data_received(data)

    def _frame_received(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        st = self.watches.get(sid) if sid else None
        if st is not None:
            if ftype == DATA:
                self._watch_data(st, flags, payload)
                return
            if ftype == WINDOW_UPDATE:
                st.send_window += U32.unpack(payload)[0] & 0x7FFFFFFF
                self._drain_stream(st)
                return
            if ftype == RST_STREAM:
                code = U32.unpack(payload)[0] if len(payload) == 4 else -1
                self._end(st, f"stream reset by the server (error code {code})")
                return
            # HEADERS / CONTINUATION: H2Channel assembles the block, _headers_received below
        super()._frame_received(ftype, flags, sid, payload)
        if sid == 0 and (ftype == WINDOW_UPDATE or ftype == SETTINGS and not flags & ACK):
            if ftype == SETTINGS:
                for i in range(0, len(payload) - 5, 6):
                    key, value = struct.unpack_from(">HL", payload, i)
                    if key == S_INITIAL_WINDOW_SIZE:  # changes open streams' windows by the difference
                        delta = value - self.peer_initial_window
                        self.peer_initial_window = value
                        for w in self.watches.values():
                            w.send_window += delta
            for w in list(self.watches.values()):
                self._drain_stream(w)

    def _watch_data(self, st: WatchStream, flags: int, payload: bytes) -> None:
        n = len(payload)
        # everything received is consumed at once: give the windows back at half
        self.recv_unacked += n
        st.unacked += n
        if st.unacked >= self.recv_window or self.recv_unacked > max(self.recv_window, 65535):
            self.errors["flow control: the server sent more than the window allowed"] += 1
        if self.recv_unacked > self.recv_window // 2:
            self._window_update(0, self.recv_unacked)
            self.recv_unacked = 0
        if st.unacked > self.recv_window // 2 and not flags & END_STREAM:
            self._window_update(st.sid, st.unacked)
            st.unacked = 0
        if flags & PADDED:
            payload = payload[1:n - payload[0]]
        buf = st.buf
        if buf:
            buf += payload
            data = buf
        else:
            data = payload
        pos, size = 0, len(data)
        parse = pb.WatchResponse.FromString
        while size - pos >= 5:
            compressed, length = MESSAGE_PREFIX.unpack_from(data, pos)
            end = pos + 5 + length
            if end > size:
                break
            if compressed:  # never asked for (no grpc-accept-encoding)
                self.errors["compressed message (not supported)"] += 1
            else:
                resp = parse(data[pos + 5:end])
                if resp.events:
                    st.on_events(resp, self.now)
                else:
                    self._control(st, resp)
            pos = end
        if buf:
            del buf[:pos]
        elif pos < size:
            buf += data[pos:]
        if flags & END_STREAM:
            self._end(st, "stream ended without trailers")

    def _control(self, st: WatchStream, resp) -> None:
        """A response without events: created, canceled, compacted, or progress."""
        if resp.created:
            st.created += 1
            st.watch_ids.append(resp.watch_id)
        if resp.canceled or resp.compact_revision:
            st.control.append(resp)
            if resp.compact_revision:
                self.errors[f"watch compacted (compact_revision {resp.compact_revision})"] += 1
            else:
                self.errors[f"watch canceled: {resp.cancel_reason or 'no reason given'}"] += 1
        st._wake()

    def _headers_received(self, sid: int, flags: int, block: bytes) -> None:
        st = self.watches.get(sid)
        if st is None:
            super()._headers_received(sid, flags, block)
            return
        status, message = self._status_of(block)  # decoded whatever it is: the HPACK table must follow
        if status is not None:
            st.status, st.message = status, message
        if flags & END_STREAM:  # trailers (or a trailers-only response): the call is over
            if status is None:
                self._end(st, "trailers without grpc-status")
            else:
                self._end(st, message or "the server ended the call")

    def _end(self, st: WatchStream, reason: str, error: bool = True) -> None:
        if st.ended:
            return
        st.ended = True
        if not st.message:
            st.message = reason
        self.watches.pop(st.sid, None)
        if error:
            self.errors[st.end_reason()] += 1
        st._wake()

    def _fail_all(self, exc: Exception) -> None:
        super()._fail_all(exc)
        for st in list(self.watches.values()):
            self._end(st, str(exc) or type(exc).__name__, error=not self.closing)
