"""One client connection: HTTP/2 frames in, calls started and fed, frames out.

Frames are cut from the socket's reads as they come; a connection's outgoing
frames are queued and leave in one write per turn of the loop (GrpcServer's
flush). What is implemented is what gRPC clients use: the connection preface
and SETTINGS, HEADERS + CONTINUATION, DATA with both directions' flow control,
PING, RST_STREAM, WINDOW_UPDATE and GOAWAY. No server push, no HTTP/1 upgrade.
A protocol error costs the connection (GOAWAY), never the server, and what a
client can make its connection hold is bounded (the limits below).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import termios
import time
from typing import TYPE_CHECKING

import grpc

from grpclite.calm import PING_BURST, PINGS_PER_SECOND, RESET_BURST, RESETS_PER_SECOND, Rate
from grpclite.context import Aborted
from grpclite.eager import EagerCall
from grpclite.flow import CONN_RECV_WINDOW, STREAM_RECV_WINDOW, Window
from grpclite.headers import CachedHeaderDecoder, parse_request_headers
from grpclite.stream import Stream
from grpclite.wire import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_HEADER,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INTERNAL_ERROR,
    MAX_WINDOW,
    MESSAGE_PREFIX,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTINGS,
    U32,
    UNSUPPORTED_MEDIA_TYPE,
    WINDOW_UPDATE,
    status_block,
)

if TYPE_CHECKING:
    from grpclite.server import GrpcServer

log = logging.getLogger("grpclite")

# the largest frame we accept (we advertise it); what we send is bounded by the peer's setting
RECV_MAX_FRAME = 1 << 20
MAX_HEADER_LIST = 1 << 20
# seconds for a client's preface and first SETTINGS (after TLS); seconds a connection without calls
# may send nothing before it is closed: a half-open connection's peer is gone. Clients that stay
# connected idle hold a call open (etcdctl watch, the apiserver's watches) or send keepalive PINGs,
# and a grpc client reconnects on its own after the GOAWAY
HANDSHAKE_TIMEOUT = 20.0
IDLE_TIMEOUT = 300.0
IDLE_GRACE = 1.0
# keepalive, as grpc-go's server (etcd's --grpc-keepalive-interval and --grpc-keepalive-timeout):
# a connection that sent nothing for KEEPALIVE_TIME gets a PING, and is closed if nothing at all
# comes back within KEEPALIVE_TIMEOUT; a client gone without a FIN (a network cut) no longer holds
# its calls (a Watch, its watchers) for ever
KEEPALIVE_TIME = 7200.0
KEEPALIVE_TIMEOUT = 20.0
KEEPALIVE_PING = b"keepaliv"  # the opaque data of our PINGs
KEEPALIVE_CHECKS = 4  # checks per keepalive time: the PING leaves 1 to 1.25 times it after the last read
# header blocks remembered decoded per connection (a call's block is some hundred bytes)
HEADER_CACHE_ENTRIES = 256
HEADER_CACHE_BYTES = 256 << 10
# calls open at once on a connection (SETTINGS_MAX_CONCURRENT_STREAMS; GrpcServer's default):
# far above what a client here opens (1,000 at most), a bound on what one connection holds
MAX_CONCURRENT_STREAMS = 4096
# what may wait in the socket's buffer for a client: over WRITE_HIGH_WATER the connection stops
# reading that client (no new calls) and streaming calls stop writing; over OUT_BUDGET it is
# closed (a client that does not read what it asked for)
WRITE_HIGH_WATER = 4 << 20
WRITE_LOW_WATER = 1 << 20
OUT_BUDGET = 64 << 20
# answers that wait for the client's flow-control windows, all of a connection's calls together:
# past it, the connection's new calls are refused (REFUSED_STREAM: grpc clients retry them) until
# the client reads; a client that reads keeps far below it
UNSENT_BUDGET = 32 << 20
# request bytes of messages not yet whole, all of a connection's calls together: they hold the
# connection's receive window until their message is whole, so a client that keeps within the
# window but leaves many messages unfinished (or sends many large ones interleaved, as grpc-go's
# writer does) would use it all up, and then nothing could move on that connection again. Past
# the budget the call whose DATA passes it is reset (RST_STREAM FLOW_CONTROL_ERROR, as a call
# past its own window) and what it held goes back to the connection's window
PARTIAL_BUDGET = CONN_RECV_WINDOW // 2
# A connection ended with a GOAWAY closes only once the client has acknowledged everything sent
# (GOAWAY included), it closes its side, or LINGER_TIME passes: closing with the client's input
# unread makes the kernel reset the connection and drop what it had not sent yet, GOAWAY with it.
# Meanwhile up to LINGER_DRAIN bytes of input are read and thrown away (a client stuck sending
# gets to read), then reading stops (a flood stalls, and its sender reads at last).
LINGER_TIME = 5.0
LINGER_DRAIN = 1 << 20
LINGER_POLL = 0.05


class H2ConnectionError(Exception):
    """An HTTP/2 connection error: the connection ends with GOAWAY(code)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Connection(asyncio.Protocol):
    """A client connection: its streams, its flow-control windows, its queued frames."""

    def __init__(self, server: GrpcServer):
        self.server = server
        self.loop = server.loop
        self.transport = None
        self.peer = ""
        self.buf = bytearray()
        self.preface_seen = False
        self.headers = CachedHeaderDecoder(HEADER_CACHE_ENTRIES, MAX_HEADER_LIST, HEADER_CACHE_BYTES)
        self.streams: dict[int, Stream] = {}
        self.blocked: dict[int, Stream] = {}  # streams waiting for window, in order
        self.last_stream = 0
        self.send_window = Window(DEFAULT_WINDOW)  # the peer's, for what we send
        self.peer_initial_window = DEFAULT_WINDOW  # every new stream's send window
        self.peer_max_frame = 16384
        self.recv_window = Window(CONN_RECV_WINDOW)  # ours (announced in connection_made)
        self.out: list[bytes] = []
        self.out_bytes = 0  # about what `out` holds: reading stops for a turn past WRITE_HIGH_WATER
        self.unsent = 0  # bytes the streams hold for the client's windows (Stream.pending)
        self.partial = 0  # request bytes of messages not yet whole (Stream.partial): PARTIAL_BUDGET
        self.stalled = False  # reading stopped until what was answered has left (stall())
        self.flush_scheduled = False
        self.headers_in_progress = None  # (sid, flags, fragments) while CONTINUATION frames arrive
        self.headers_size = 0  # their bytes so far
        self.going_away = False
        self.closed = False  # nothing more is read or written (the transport may linger: close_lingering)
        self.lingering = 0.0  # when close_lingering began (0: it has not)
        self.drained = 0  # input thrown away since
        self.write_paused = False  # the transport's buffer is over its high water mark
        self.settings_seen = False  # the client's first SETTINGS: the handshake is done
        self.reads = self.reads_seen = 0  # socket reads, and how many there were at the last idle check
        self.timer: asyncio.TimerHandle | None = None  # the handshake's deadline, then the idle check
        self.keepalive: asyncio.TimerHandle | None = None  # the next keepalive check
        self.reads_at_keepalive = 0  # socket reads at the last keepalive check
        self.idle_checks = 0  # keepalive checks in a row that found no read
        self.pinged = False  # a keepalive PING is out, not answered by anything yet
        self.pings = Rate(PING_BURST, PINGS_PER_SECOND)
        self.resets = Rate(RESET_BURST, RESETS_PER_SECOND)

    # --- connection --------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        check = self.server.tls_check
        if check is not None and transport.get_extra_info("ssl_object") is not None:
            reason = check(transport)
            if reason is not None:
                addr = transport.get_extra_info("peername")
                where = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)
                log.warning('rejected connection from "%s" (error "%s")', where, reason)  # etcd's words
                self.closed = True
                transport.abort()
                return
        self.server.connections.add(self)
        self.timer = self.loop.call_later(self.server.handshake_timeout, self.check_handshake)
        try:
            transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        except (AttributeError, NotImplementedError):  # a transport without flow control
            pass
        try:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        addr = transport.get_extra_info("peername")
        if isinstance(addr, tuple) and len(addr) >= 2:
            self.peer = f"ipv6:[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"ipv4:{addr[0]}:{addr[1]}"
        if self.server.http1_protocol is None:
            self.send_server_preface()
        # else: not before the client's first bytes say it speaks HTTP/2 (an HTTP/1.1 client
        # must not get frames); HTTP/2 lets the server's preface follow the client's

    def send_server_preface(self) -> None:
        settings = b"".join(struct.pack(">HL", k, v) for k, v in (
            (S_MAX_CONCURRENT_STREAMS, self.server.max_concurrent_streams),
            (S_INITIAL_WINDOW_SIZE, STREAM_RECV_WINDOW),
            (S_MAX_FRAME_SIZE, RECV_MAX_FRAME),
            (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST),
            (S_ENABLE_PUSH, 0),
        ))
        self.queue_frame(SETTINGS, 0, 0, settings)
        self.queue_frame(WINDOW_UPDATE, 0, 0, U32.pack(CONN_RECV_WINDOW - DEFAULT_WINDOW))

    def hand_over(self, data: bytes) -> None:
        """The client is not speaking HTTP/2: the connection goes to the server's
        HTTP/1.1 protocol (GrpcServer.http1_protocol) with what was read so far."""
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.closed = True
        protocol = self.server.http1_protocol()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(data)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.keepalive is not None:
            self.keepalive.cancel()
            self.keepalive = None
        self.end_streams()

    def eof_received(self) -> bool:
        return False  # the client closed its side: close ours (lingering or not)

    def end_streams(self) -> None:
        for stream in list(self.streams.values()):
            stream.cancelled = True
            stream.finished = True
            stream.stop_handler()
            stream.drop_requests()
        self.streams.clear()
        self.blocked.clear()

    def queue_frame(self, ftype: int, flags: int, sid: int, payload: bytes = b"") -> None:
        n = len(payload)
        self.out.append(FRAME_HEADER.pack(n >> 8, n & 0xFF, ftype, flags, sid))
        self.out_bytes += n + 9
        if n:
            self.out.append(payload)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.server.schedule_flush(self)

    def flush(self) -> None:
        self.flush_scheduled = False
        self.out_bytes = 0
        if self.out and not self.closed:
            data = b"".join(self.out)
            self.out = []
            self.transport.write(data)
            if self.write_paused and self.transport.get_write_buffer_size() > OUT_BUDGET:
                log.warning("closing the connection from %s: it does not read what it asked for", self.peer)
                self.closed = True
                self.transport.abort()
        else:
            self.out = []

    # --- timeouts: the handshake, and a connection that neither calls nor sends ----

    def check_handshake(self) -> None:
        """The client has not sent its preface and SETTINGS in time: it is not an HTTP/2 client."""
        self.timer = None
        if not self.closed and not self.settings_seen:
            self.transport.close()

    def handshake_done(self) -> None:
        self.settings_seen = True
        self.timer.cancel()
        self.timer = self.loop.call_later(self.server.idle_timeout, self.check_idle)
        self.reads_at_keepalive = self.reads
        self.keepalive = self.loop.call_later(self.server.keepalive_time / KEEPALIVE_CHECKS, self.check_keepalive)

    def check_keepalive(self) -> None:
        """grpc-go's server keepalive: a connection that read nothing for keepalive_time gets a
        PING; one that reads nothing for keepalive_timeout after it is closed (its peer is gone, or
        cut off: a GOAWAY would not reach it)."""
        self.keepalive = None
        if self.closed:
            return
        server = self.server
        if self.reads != self.reads_at_keepalive:
            self.reads_at_keepalive = self.reads
            self.pinged = False
            self.idle_checks = 0
        else:
            self.idle_checks += 1
        if not self.pinged and self.idle_checks < KEEPALIVE_CHECKS:
            self.keepalive = self.loop.call_later(server.keepalive_time / KEEPALIVE_CHECKS, self.check_keepalive)
        elif self.pinged:
            log.info("closing the connection from %s: no answer to a keepalive PING within %gs",
                     self.peer, server.keepalive_timeout)
            self.closed = True
            self.end_streams()
            self.transport.abort()
        else:
            self.pinged = True
            self.queue_frame(PING, 0, 0, KEEPALIVE_PING)
            self.keepalive = self.loop.call_later(server.keepalive_timeout, self.check_keepalive)

    def check_idle(self) -> None:
        """A connection without calls that sent nothing since the last check is closed (GOAWAY
        NO_ERROR: a client that comes back connects again); calls or PINGs keep it open. The
        socket closes IDLE_GRACE later: a call the client sent meanwhile is refused (REFUSED_STREAM)
        rather than lost, and a grpc client retries it on a new connection."""
        self.timer = None
        if self.closed:
            return
        if self.streams or self.reads != self.reads_seen:
            self.reads_seen = self.reads
            self.timer = self.loop.call_later(self.server.idle_timeout, self.check_idle)
            return
        self.go_away(NO_ERROR, "max_idle")
        self.flush()
        self.timer = self.loop.call_later(min(IDLE_GRACE, self.server.idle_timeout), self.close_lingering)

    def pause_writing(self) -> None:
        """The client reads slower than it is answered: no new calls from it until it catches up
        (and streaming calls wait, Stream.writable_now)."""
        self.write_paused = True
        if not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.stalled:
            self.unstall()
        elif not self.closed:
            self.transport.resume_reading()
        for stream in list(self.streams.values()):
            drained = stream.drained
            if drained is not None and not drained.done() and not stream.pending:
                drained.set_result(None)

    def stall(self) -> None:
        """One read's calls were answered with more than WRITE_HIGH_WATER (a burst of calls for
        large values): the frames after them wait, unread, until that has left for the client
        (resume_writing, or the next turn if the socket took it at once)."""
        self.stalled = True
        self.transport.pause_reading()
        self.flush()
        if not self.write_paused and not self.closed:
            self.loop.call_soon(self.unstall)

    def unstall(self) -> None:
        if self.closed or not self.stalled or self.write_paused:
            return  # resume_writing comes back here
        self.stalled = False
        self.transport.resume_reading()
        if self.buf:
            self.data_received(b"")  # the frames that waited

    def release_held(self, stream: Stream) -> None:
        """A call ended: what it held of its request goes, and back to the connection's window."""
        held = stream.held
        stream.drop_requests()
        if held:
            self.release(held)

    def go_away(self, code: int, message: str = "") -> None:
        if not self.going_away:
            self.going_away = True
            self.queue_frame(GOAWAY, 0, 0, U32.pack(self.last_stream) + U32.pack(code) + message.encode())
        if code != NO_ERROR:
            self.close_lingering()

    def close_lingering(self) -> None:
        """End the connection so that the client gets what was sent, the GOAWAY last (see
        LINGER_TIME): the calls stop now; our side of the socket is shut once the output has
        left, and the socket is closed later (check_linger)."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        self.lingering = time.monotonic()
        self.buf = bytearray()
        self.end_streams()
        if self.timer is not None:
            self.timer.cancel()
        if self.keepalive is not None:
            self.keepalive.cancel()
            self.keepalive = None
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()  # FIN after what is buffered
        self.stalled = False
        transport.resume_reading()  # drain what comes (data_received), whatever paused it
        self.timer = self.loop.call_later(LINGER_POLL, self.check_linger)

    def check_linger(self) -> None:
        transport = self.transport
        self.timer = None
        if transport.is_closing():
            return
        if time.monotonic() - self.lingering < LINGER_TIME and (
                transport.get_write_buffer_size() or _unacknowledged(transport)):
            self.timer = self.loop.call_later(LINGER_POLL, self.check_linger)
            return
        transport.abort()

    def close_stream(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        self.blocked.pop(stream.id, None)
        if stream.held:
            self.release_held(stream)
        if not stream.remote_closed:
            # we answered before the client finished sending: tell it to stop
            stream.remote_closed = True
            self.queue_frame(RST_STREAM, 0, stream.id, U32.pack(NO_ERROR))
        if self.going_away and not self.streams and not self.closed:
            self.close_lingering()

    # --- reading -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closed:  # lingering: thrown away, up to LINGER_DRAIN
            self.drained += len(data)
            if self.drained > LINGER_DRAIN and not self.transport.is_closing():
                self.transport.pause_reading()
            return
        self.reads += 1
        buf = self.buf
        if buf or not self.preface_seen:
            buf += data
            data = buf
        if not self.preface_seen:
            head = bytes(buf[:len(PREFACE)])
            if not PREFACE.startswith(head):
                if self.server.http1_protocol is not None:
                    self.hand_over(bytes(buf))
                else:
                    self.transport.close()
                return
            if len(buf) < len(PREFACE):
                return
            del buf[:len(PREFACE)]
            self.preface_seen = True
            if self.server.http1_protocol is not None:
                self.send_server_preface()
        # frames are cut from `data`: the read itself when nothing was left
        # over from the last one (the usual case: no copy into the buffer),
        # else the buffer, which keeps any incomplete frame at the end
        pos = 0
        size = len(data)
        unpack = FRAME_HEADER.unpack_from
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
                if self.out_bytes > WRITE_HIGH_WATER:
                    self.stall()
                    break
        except H2ConnectionError as err:
            self.go_away(err.code, err.message)
            return
        except Exception:  # a bug here must cost this connection, not the server
            log.exception("HTTP/2 connection from %s failed", self.peer)
            self.go_away(INTERNAL_ERROR, "internal error")
            return
        finally:
            if self.closed:
                self.buf = bytearray()
            elif data is buf:
                if pos:
                    del buf[:pos]
            elif pos < size:
                buf += data[pos:]

    def frame_received(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self.headers_in_progress is not None and ftype != CONTINUATION:
            raise H2ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if ftype == DATA:
            self.on_data(flags, sid, payload)
        elif ftype == HEADERS:
            if sid == 0 or sid % 2 == 0:
                raise H2ConnectionError(PROTOCOL_ERROR, "bad stream id for HEADERS")
            if flags & PADDED:
                pad = payload[0] if payload else 0
                if pad + 1 + (5 if flags & PRIORITY_FLAG else 0) > len(payload):
                    raise H2ConnectionError(PROTOCOL_ERROR, "padding as long as the frame")
                payload = payload[1:len(payload) - pad]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self.on_headers(sid, flags, payload)
            else:
                self.headers_in_progress = (sid, flags, [payload])
                self.headers_size = len(payload)
        elif ftype == CONTINUATION:
            if self.headers_in_progress is None or self.headers_in_progress[0] != sid:
                raise H2ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            # counted as the fragments come, and refused unread past the limit (HPACK's encoding
            # is no larger than the list it decodes to, bar references to the tables): Go's answer
            self.headers_size += len(payload)
            if self.headers_size > MAX_HEADER_LIST:
                self.headers_in_progress = None
                raise H2ConnectionError(PROTOCOL_ERROR, "header list too large")
            self.headers_in_progress[2].append(payload)
            if flags & END_HEADERS:
                hsid, hflags, parts = self.headers_in_progress
                self.headers_in_progress = None
                self.on_headers(hsid, hflags, b"".join(parts))
        elif ftype == SETTINGS:
            if not flags & ACK:
                self.on_settings(payload)
                if not self.settings_seen:
                    self.handshake_done()
        elif ftype == PING:
            if len(payload) != 8:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "bad PING length")
            if not flags & ACK:
                if not self.pings.spend():
                    raise H2ConnectionError(ENHANCE_YOUR_CALM, "too_many_pings")
                self.queue_frame(PING, ACK, 0, payload)
        elif ftype == WINDOW_UPDATE:
            self.on_window_update(sid, payload)
        elif ftype == RST_STREAM:
            if len(payload) != 4:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "bad RST_STREAM length")
            stream = self.streams.get(sid)
            if stream is not None:
                if not self.resets.spend():  # a client resetting calls faster than it lets them finish
                    raise H2ConnectionError(ENHANCE_YOUR_CALM, "too_many_resets")
                del self.streams[sid]
                self.blocked.pop(sid, None)
                stream.drop_pending()
                stream.cancelled = True
                stream.finished = True
                stream.stop_handler()
                self.release_held(stream)
        elif ftype == GOAWAY:
            self.go_away(NO_ERROR)
        elif ftype == PUSH_PROMISE:
            raise H2ConnectionError(PROTOCOL_ERROR, "clients cannot push")
        # PRIORITY and unknown frame types are ignored

    def on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "bad SETTINGS length")
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, i)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2ConnectionError(FLOW_CONTROL_ERROR, "window too large")
                self.peer_initial_window = value
                for stream in self.streams.values():
                    if stream.send_window is not None:  # else it follows peer_initial_window
                        stream.send_window.resize(value)
            elif key == S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise H2ConnectionError(PROTOCOL_ERROR, "bad max frame size")
                self.peer_max_frame = value
            # header table size: we never index, so the peer's table size does not matter
        self.queue_frame(SETTINGS, ACK, 0)
        self.resume_blocked()

    def on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE length")
        inc = U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if not inc:
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            if not self.send_window.grow(inc):
                raise H2ConnectionError(FLOW_CONTROL_ERROR, "connection window overflow")
            self.resume_blocked()
            return
        stream = self.streams.get(sid)
        if stream is not None:
            if not inc:
                self.reset_stream(stream, PROTOCOL_ERROR)
            elif not stream.own_send_window().grow(inc):
                self.reset_stream(stream, FLOW_CONTROL_ERROR)
            elif stream.pending:
                stream.drain()

    def resume_blocked(self) -> None:
        for stream in list(self.blocked.values()):
            if self.send_window.available <= 0:
                return
            if stream.send_window.available > 0:  # a blocked stream has sent: it has its window
                stream.drain()

    def release(self, n: int) -> None:
        """n received bytes no longer held: the connection's window gets them back."""
        increment = self.recv_window.release(n)
        if increment:
            self.queue_frame(WINDOW_UPDATE, 0, 0, U32.pack(increment))

    def release_stream(self, stream: Stream, n: int) -> None:
        """n of a stream's received bytes released: its window gets them back while the client may send."""
        if not stream.remote_closed:
            increment = stream.recv_window.release(n)
            if increment:
                self.queue_frame(WINDOW_UPDATE, 0, stream.id, U32.pack(increment))

    def reset_stream(self, stream: Stream, code: int) -> None:
        """A stream error: the call ends at once, RST_STREAM(code) tells the client."""
        stream.remote_closed = stream.finished = stream.cancelled = True
        self.close_stream(stream)
        stream.stop_handler()
        self.queue_frame(RST_STREAM, 0, stream.id, U32.pack(code))

    def on_data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        n = len(payload)
        window = self.recv_window
        if n > window.available:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, "DATA past the connection's window")
        window.available -= n
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if sid > self.last_stream:
                raise H2ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            self.release(n)
            return  # a stream we already finished (e.g. rejected): drop it
        # the stream's window: made by its first DATA frame that does not end it (a unary
        # request in one frame never needs it)
        stream_window = stream.recv_window
        if stream_window is None:
            if flags & END_STREAM:
                over = n > STREAM_RECV_WINDOW
            else:
                stream_window = stream.recv_window = Window(STREAM_RECV_WINDOW)
                over = False
        else:
            over = n > stream_window.available
        if over:
            self.reset_stream(stream, FLOW_CONTROL_ERROR)
            self.release(n)
            return
        if stream_window is not None:
            stream_window.available -= n
        if flags & PADDED:
            pad = payload[0] if n else 0
            if pad >= n:
                raise H2ConnectionError(PROTOCOL_ERROR, "padding as long as the frame")
            payload = payload[1:n - pad]
            self.release(pad + 1)
        if stream.handler.request_streaming:
            stream.held += len(payload)
            self.receive_streaming(stream, flags, payload)
            return
        n = len(payload) - 5
        if n >= 0 and not stream.recv_buf and payload[0] == 0 and MESSAGE_PREFIX.unpack_from(payload)[1] == n \
                and n <= self.server.max_receive:
            messages = [payload[5:]]  # the usual: one whole uncompressed message in the frame
            if flags & END_STREAM and stream.unary_request is None:
                # ... and the whole request: the call has it now, the connection's window gets it
                # back now (Window.release inline, a call less for every request)
                stream.remote_closed = True
                unacked = window.unacked + n + 5
                if unacked < window.half:
                    window.unacked = unacked
                else:
                    self.release(n + 5)
                self.deliver(stream, messages)
                return
            stream.held += n + 5
        else:
            stream.held += len(payload)
            stream.recv_buf += payload
            try:
                messages = stream.next_messages()
            except Aborted as err:
                stream.fail(*err.args)
                return
        if flags & END_STREAM:
            stream.remote_closed = True
        elif stream_window is not None:
            self.release_stream(stream, stream_window.held())  # a unary call's stream gets it all back
        self.deliver(stream, messages)
        self.release_delivered(stream)
        if stream.recv_buf or stream.partial:
            self.count_partial(stream)

    def count_partial(self, stream: Stream) -> None:
        """The stream's bytes of a message not yet whole, into the connection's count; past
        PARTIAL_BUDGET the stream is reset (see there)."""
        partial = len(stream.recv_buf) - stream.complete
        self.partial += partial - stream.partial
        stream.partial = partial
        if self.partial > PARTIAL_BUDGET and partial and not stream.finished:
            self.reset_stream(stream, FLOW_CONTROL_ERROR)

    def release_delivered(self, stream: Stream) -> None:
        """A unary call's bytes go back to the connection but for what the call still holds:
        a message not yet whole, or a request waiting for the client's side to end."""
        held = len(stream.recv_buf)
        if stream.unary_request is not None:
            held += len(stream.unary_request) + 5
        if stream.held > held:
            self.release(stream.held - held)
            stream.held = held

    def receive_streaming(self, stream: Stream, flags: int, payload: bytes) -> None:
        """A streaming call's request bytes: kept as they came until its handler takes each
        message (Stream.take), so the windows bound what a client sends ahead of its handler."""
        stream.recv_buf += payload
        try:
            stream.find_messages()
        except Aborted as err:
            stream.fail(*err.args)
            return
        if flags & END_STREAM:
            self.end_of_requests(stream)
            return
        # bytes not yet a whole message are released now (a message may be larger than the window)
        partial = stream.recv_window.held() - stream.complete
        if partial > 0:
            self.release_stream(stream, partial)
        self.count_partial(stream)
        stream.wake()

    def end_of_requests(self, stream: Stream) -> None:
        """A streaming call's client has sent everything."""
        stream.remote_closed = True
        if len(stream.recv_buf) > stream.complete:
            stream.fail(grpc.StatusCode.INTERNAL, "grpc: truncated message at the end of the stream")
        else:
            stream.wake()

    def deliver(self, stream: Stream, messages) -> None:
        """A unary call's request messages (one, or none with the end of the client's side)."""
        h = stream.handler
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
            refuse = self.server.refuse
            if refuse is not None:
                refused = refuse(stream.path, request)
                if refused is not None:
                    stream.fail(*refused)
                    return
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
                stream.task = EagerCall(self.server.run_handler(stream, request))
            else:
                stream.task = self.loop.create_task(self.server.run_handler(stream, request))

    def parse_headers(self, block: bytes):
        """(path, timeout, encoding, metadata, not_grpc) of a request's header block."""
        try:
            return self.headers.decode(block, parse_request_headers)
        except Exception as exc:  # noqa: BLE001  (hpack raises several kinds)
            raise H2ConnectionError(COMPRESSION_ERROR, f"bad header block: {exc}") from None

    def on_headers(self, sid: int, flags: int, block: bytes) -> None:
        path_s, timeout, encoding, metadata, not_grpc = self.parse_headers(block)
        stream = self.streams.get(sid)
        if stream is not None or sid <= self.last_stream:
            # trailers from a client (grpc clients send none) or a finished stream
            if stream is not None and flags & END_STREAM and not stream.remote_closed:
                self.end_of_request(stream)
            return
        self.last_stream = sid
        if self.going_away or len(self.streams) >= self.server.max_concurrent_streams \
                or self.unsent > UNSENT_BUDGET:
            self.queue_frame(RST_STREAM, 0, sid, U32.pack(REFUSED_STREAM))  # as grpc-go: the client may retry
            return
        if not_grpc is not None:
            self.not_grpc(sid, flags, not_grpc)
            return
        handler = self.server.lookup(path_s, metadata)
        deadline = time.monotonic() + timeout if timeout is not None else None
        stream = Stream(self, sid, path_s, handler, metadata, deadline, encoding)
        self.streams[sid] = stream
        if handler is None:
            stream.remote_closed = bool(flags & END_STREAM)
            stream.fail(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if deadline is not None:
            self.server.watch_deadlines()
        if handler.request_streaming:
            refuse = self.server.refuse
            refused = refuse(path_s, None) if refuse is not None else None
            if refused is not None:
                stream.remote_closed = bool(flags & END_STREAM)
                stream.fail(*refused)
                return
            stream.task = self.loop.create_task(self.server.run_handler(stream, stream.request_iterator()))
        if flags & END_STREAM:
            self.end_of_request(stream)

    def not_grpc(self, sid: int, flags: int, content_type: bytes) -> None:
        """A request that is not gRPC's gets grpc-go's answer: HTTP 415 in a trailers-only response."""
        details = 'invalid gRPC request content-type "%s"' % content_type.decode("latin-1")
        block = UNSUPPORTED_MEDIA_TYPE + status_block(grpc.StatusCode.INVALID_ARGUMENT, details)
        self.queue_frame(HEADERS, END_HEADERS | END_STREAM, sid, block)
        if not flags & END_STREAM:
            self.queue_frame(RST_STREAM, 0, sid, U32.pack(NO_ERROR))

    def end_of_request(self, stream: Stream) -> None:
        """The client's side of a call ended without DATA (HEADERS with END_STREAM)."""
        if stream.handler.request_streaming:
            self.end_of_requests(stream)
        else:
            stream.remote_closed = True
            self.deliver(stream, [])
            self.release_delivered(stream)


def _unacknowledged(transport) -> int:
    """Bytes the kernel holds that the peer has not acknowledged yet (Linux's SIOCOUTQ); 0 when it
    cannot tell."""
    sock = transport.get_extra_info("socket")
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (AttributeError, OSError, ValueError):
        return 0
