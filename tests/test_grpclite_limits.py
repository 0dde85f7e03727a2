"""grpclite's limits on what one connection can make the server hold (issue 24), and the
RFC 9113 errors bad input gets. No processes: a Connection is fed raw frames through a fake
transport inside the test's own event loop, and what it writes is read back as frames."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import grpc

from grpclite import connection
from grpclite.connection import (
    HEADER_CACHE_BYTES,
    KEEPALIVE_PING,
    LINGER_DRAIN,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST,
    OUT_BUDGET,
    PARTIAL_BUDGET,
    RECV_MAX_FRAME,
    UNSENT_BUDGET,
    WRITE_HIGH_WATER,
    Connection,
)
from grpclite.calm import PING_BURST, RESET_BURST, Rate
from grpclite.context import ServicerContext
from grpclite.flow import CONN_RECV_WINDOW, STREAM_RECV_WINDOW
from grpclite.server import GrpcServer
from grpclite.wire import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    MAX_WINDOW,
    GOAWAY,
    HEADERS,
    MESSAGE_PREFIX,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    literal,
)
from harness.h2attack import frame as _frame
from harness.h2attack import message, request_block
from harness.h2attack import split_frames as _frames


class _Transport:
    """What a Connection writes to, and whether it closed or paused it. Like asyncio's, it calls
    its protocol's pause_writing past its high water mark; drain() is the client reading it all.
    `closed`: the server ended the connection (shut its side after a GOAWAY, or closed);
    `shut`: the socket itself is closed (a lingering close does that later)."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.shut = False
        self.reading = True
        self.protocol = None
        self.high = 64 << 10
        self.buffered = 0
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written += data
        self.buffered += len(data)
        if self.protocol is not None and not self.paused and self.buffered > self.high:
            self.paused = True
            self.protocol.pause_writing()

    def drain(self) -> None:
        self.buffered = 0
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.high = high

    def get_extra_info(self, name):
        return None

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = self.shut = True

    abort = close

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.shut


def _resets(transport: _Transport) -> dict[int, int]:
    """stream id -> error code of every RST_STREAM written."""
    return {sid: U32.unpack(p)[0] for ftype, _, sid, p in _frames(transport.written) if ftype == RST_STREAM}


def _window_updates(transport: _Transport, sid: int) -> int:
    """The increments given back to stream `sid` (0: the connection) so far."""
    return sum(U32.unpack(p)[0] for ftype, _, s, p in _frames(transport.written)
               if ftype == WINDOW_UPDATE and s == sid)


def _message(n: int) -> bytes:
    """A gRPC message of n zero bytes."""
    return message(bytes(n))


async def _until(condition, timeout: float = 5.0) -> None:
    """Let the loop run until condition() holds (a deadline, not a sleep)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


def _goaway_code(transport: _Transport) -> int | None:
    goaways = [p for ftype, _, _, p in _frames(transport.written) if ftype == GOAWAY]
    return U32.unpack(goaways[-1][4:8])[0] if goaways else None


class _Echo:
    """Handlers the tests call: a unary echo and a request-streaming call that reads on demand."""

    def __init__(self) -> None:
        self.go = asyncio.Event()  # Hold reads once it is set
        self.taken: list[bytes] = []

    async def echo(self, request, context):
        return request

    async def hold(self, requests, context):
        await self.go.wait()
        async for request in requests:
            self.taken.append(request)
        return b"done"

    async def parse(self, requests, context):
        async for request in requests:
            self.taken.append(request)
        return b"done"

    def register(self, server: GrpcServer) -> None:
        def parse(raw: bytes) -> bytes:
            if raw.startswith(b"\xff"):
                raise ValueError("not a message")
            return raw

        server.add_registered_method_handlers("t.T", {
            "Parse": grpc.stream_unary_rpc_method_handler(self.parse, request_deserializer=parse),
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "Hold": grpc.stream_unary_rpc_method_handler(self.hold),
        })


def _on_connection(test, **server_args) -> None:
    """test(conn, transport, server, echo) with a connection past its preface and SETTINGS."""

    async def run() -> None:
        server = GrpcServer(**server_args)
        echo = _Echo()
        echo.register(server)
        conn, transport = Connection(server), _Transport()
        transport.protocol = conn
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
        conn.data_received(_frame(HEADERS, 0, 1, request_block("/t.T/Echo")))
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


# --- 2. receive windows enforced -------------------------------------------------------------------


def test_messages_not_taken_on_many_streams_past_the_connection_window_end_the_connection():
    """Whole messages that a streaming handler does not take stay held against both windows; a
    client that sends past the connection's window (each stream within its own) gets GOAWAY
    FLOW_CONTROL_ERROR, having made the server hold no more than the window."""
    def test(conn, transport, server, echo):
        # three whole messages of 1 MiB a stream: within its 4 MiB window
        three = _message(1 << 20) * 3
        sid, sent = 1, 0
        while not transport.closed and sent < 2 * CONN_RECV_WINDOW:
            conn.data_received(_frame(HEADERS, END_HEADERS, sid, request_block("/t.T/Hold")))
            for i in range(0, len(three), RECV_MAX_FRAME):
                conn.data_received(_frame(DATA, 0, sid, three[i:i + RECV_MAX_FRAME]))
                if transport.closed:
                    break
                sent += min(RECV_MAX_FRAME, len(three) - i)
            sid += 2
        assert transport.closed and _goaway_code(transport) == FLOW_CONTROL_ERROR
        assert sent <= CONN_RECV_WINDOW
        assert _window_updates(transport, 0) == 0 and not _resets(transport)

    _on_connection(test)


def test_unfinished_messages_past_their_budget_reset_the_call_and_the_connection_goes_on():
    """A client that keeps within every window but leaves its messages unfinished (each stream
    3 MiB of a 3.5 MiB request) used to take the whole connection window, after which nothing on
    that connection could move again. Past PARTIAL_BUDGET the call whose DATA passes it is reset
    (RST_STREAM FLOW_CONTROL_ERROR) and its bytes go back to the connection's window: the client
    never runs out of window, and the first call, finished at last, is answered."""
    async def test(conn, transport, server, echo):
        whole = _message(7 << 19)
        part = whole[:3 << 20]
        window = CONN_RECV_WINDOW  # the connection's window as the client sees it
        sid, sent = 1, 0
        while sent < 2 * CONN_RECV_WINDOW:
            conn.data_received(_frame(HEADERS, END_HEADERS, sid, request_block("/t.T/Echo")))
            for i in range(0, len(part), RECV_MAX_FRAME):
                chunk = part[i:i + RECV_MAX_FRAME]
                server.flush_now()
                window += _window_updates(transport, 0)
                transport.written.clear()
                assert len(chunk) <= window, f"the client ran out of window after {sent} bytes"
                conn.data_received(_frame(DATA, 0, sid, chunk))
                window -= len(chunk)
                sent += len(chunk)
            sid += 2
        assert not transport.closed
        assert conn.partial <= PARTIAL_BUDGET
        refused = {s for s in range(1, sid, 2) if s not in conn.streams}
        assert min(refused) > 2 * (PARTIAL_BUDGET // len(part)) - 1 and 1 in conn.streams
        transport.written.clear()
        conn.data_received(_frame(DATA, END_STREAM, 1, whole[len(part):])  # the first call finishes
                           + _frame(WINDOW_UPDATE, 0, 0, U32.pack(8 << 20))  # room for its answer
                           + _frame(WINDOW_UPDATE, 0, 1, U32.pack(8 << 20)))
        await _until(lambda: 1 not in conn.streams)
        server.flush_now()
        (fields,) = [_status(b) for t, _, s, b in _frames(transport.written) if t == HEADERS and s == 1
                     and b"grpc-status" in _status(b)]
        assert fields[b"grpc-status"] == b"0"

    _on_connection(test)


def test_a_stream_sending_past_its_window_is_reset_and_the_connection_goes_on():
    async def test(conn, transport, server, echo):
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Hold")))
        messages = _message(1000) * 1000
        sent = 0
        while sent <= STREAM_RECV_WINDOW and 1 not in _resets(transport):
            conn.data_received(_frame(DATA, 0, 1, messages))
            server.flush_now()
            sent += len(messages)
        assert _resets(transport) == {1: FLOW_CONTROL_ERROR}
        assert sent > STREAM_RECV_WINDOW
        assert not transport.closed and 1 not in conn.streams
        assert _window_updates(transport, 1) == 0
        conn.data_received(_frame(HEADERS, END_HEADERS, 3, request_block("/t.T/Echo"))
                           + _frame(DATA, END_STREAM, 3, _message(10)))
        await _until(lambda: 3 not in conn.streams)
        assert not transport.closed

    _on_connection(test)


# --- 3. a streaming call's requests: window given back as the handler takes them -----------------------


def test_requests_queued_for_a_handler_that_does_not_read_are_bounded_by_the_stream_window():
    async def test(conn, transport, server, echo):
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Hold")))
        messages = _message(8) * 4096
        for _ in range(STREAM_RECV_WINDOW // len(messages)):
            conn.data_received(_frame(DATA, 0, 1, messages))
            server.flush_now()
        await asyncio.sleep(0)
        stream = conn.streams[1]
        assert _window_updates(transport, 1) == 0  # nothing taken, nothing given back
        assert len(stream.recv_buf) <= STREAM_RECV_WINDOW  # the bytes as they came, not a queue of objects
        echo.go.set()  # the handler reads: the window comes back as it takes them
        held = len(stream.recv_buf)
        await _until(lambda: len(echo.taken) == held // 13)
        server.flush_now()
        assert _window_updates(transport, 1) >= held // 2
        assert _window_updates(transport, 0) >= held // 2 or held < CONN_RECV_WINDOW // 2
        conn.data_received(_frame(DATA, END_STREAM, 1, _message(8)))
        await _until(lambda: 1 not in conn.streams)
        assert len(echo.taken) == held // 13 + 1

    _on_connection(test)


def test_requests_held_for_a_call_are_dropped_when_the_connection_closes():
    async def test(conn, transport, server, echo):
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Hold")))
        conn.data_received(_frame(DATA, 0, 1, _message(100) * 5000))
        stream = conn.streams[1]
        await asyncio.sleep(0)
        assert len(stream.recv_buf) == 105 * 5000
        conn.connection_lost(None)
        assert len(stream.recv_buf) == 0 and stream.held == 0
        echo.go.set()
        await _until(lambda: stream.task.done())
        assert echo.taken == []

    _on_connection(test)


# --- 7. RFC 9113's errors for bad frames, gRPC's for bad requests --------------------------------------


def _status(block: bytes) -> dict[bytes, bytes]:
    import hpack
    return dict(hpack.Decoder().decode(block, raw=True))


def test_padding_as_long_as_the_frame_is_a_protocol_error():
    frames = [
        _frame(DATA, PADDED, 1, b""),  # no room for the pad length
        _frame(DATA, PADDED, 1, b"\x05abcd"),  # pad length = the frame
        _frame(HEADERS, END_HEADERS | PADDED, 3, b""),
        _frame(HEADERS, END_HEADERS | PADDED, 3, b"\x03" + request_block("/t.T/Echo")[:2]),
    ]
    for bad in frames:
        def test(conn, transport, server, echo, bad=bad):
            conn.data_received(_frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Hold")) + bad)
            assert transport.closed and _goaway_code(transport) == PROTOCOL_ERROR

        _on_connection(test)


def test_a_window_update_of_zero_is_a_protocol_error():
    def test(conn, transport, server, echo):
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Hold"))
                           + _frame(WINDOW_UPDATE, 0, 1, U32.pack(0)))
        server.flush_now()
        assert _resets(transport) == {1: PROTOCOL_ERROR} and not transport.closed
        conn.data_received(_frame(WINDOW_UPDATE, 0, 0, U32.pack(0)))
        assert transport.closed and _goaway_code(transport) == PROTOCOL_ERROR

    _on_connection(test)


def test_a_stream_send_window_past_the_largest_gets_rst_stream_flow_control_error():
    def test(conn, transport, server, echo):
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Hold"))
                           + _frame(WINDOW_UPDATE, 0, 1, U32.pack(MAX_WINDOW)))
        server.flush_now()
        assert _resets(transport) == {1: FLOW_CONTROL_ERROR} and not transport.closed

    _on_connection(test)


def test_a_request_that_is_not_grpc_gets_415_and_invalid_argument_as_grpc_go_answers():
    def test(conn, transport, server, echo):
        block = request_block("/t.T/Echo", content_type=b"application/json")
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, block))
        server.flush_now()
        (ftype, flags, sid, block), = [f for f in _frames(transport.written) if f[0] == HEADERS]
        assert flags & END_STREAM and sid == 1
        fields = _status(block)
        assert fields[b":status"] == b"415"
        assert fields[b"grpc-status"] == b"3"
        assert fields[b"grpc-message"] == b'invalid gRPC request content-type "application/json"'
        assert _resets(transport) == {1: NO_ERROR} and not transport.closed
        # grpc's own subtypes are welcome
        transport.written.clear()
        proto = request_block("/t.T/Echo", content_type=b"application/grpc+proto")
        conn.data_received(_frame(HEADERS, END_HEADERS, 3, proto)
                           + _frame(DATA, END_STREAM, 3, _message(3)))
        server.flush_now()
        headers = [_status(b) for t, _, _, b in _frames(transport.written) if t == HEADERS]
        assert headers[0][b":status"] == b"200"

    _on_connection(test)


def test_a_malformed_message_on_a_streaming_call_fails_that_call_only():
    async def test(conn, transport, server, echo):
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Parse"))
                           + _frame(DATA, 0, 1, _message(3) + MESSAGE_PREFIX.pack(0, 2) + b"\xff\xff"))
        await _until(lambda: 1 not in conn.streams)
        server.flush_now()
        (fields,) = [_status(b) for t, _, sid, b in _frames(transport.written) if t == HEADERS and sid == 1
                     and b"grpc-status" in _status(b)]
        assert fields[b"grpc-status"] == b"13"
        assert fields[b"grpc-message"].startswith(b"grpc: error unmarshalling request")
        assert not transport.closed and _goaway_code(transport) is None

    _on_connection(test)


# --- 4. concurrent streams: advertised and enforced -----------------------------------------------------


def test_max_concurrent_streams_is_advertised_and_a_stream_over_it_is_refused():
    async def test(conn, transport, server, echo):
        fresh, written = Connection(server), _Transport()
        fresh.connection_made(written)
        server.flush_now()
        (settings,) = [p for t, _, _, p in _frames(written.written) if t == SETTINGS]
        advertised = dict(struct.unpack_from(">HL", settings, i) for i in range(0, len(settings), 6))
        assert advertised[S_MAX_CONCURRENT_STREAMS] == 3
        fresh.connection_lost(None)

        for sid in (1, 3, 5, 7):
            conn.data_received(_frame(HEADERS, END_HEADERS, sid, request_block("/t.T/Hold")))
        server.flush_now()
        assert _resets(transport) == {7: REFUSED_STREAM}
        assert sorted(conn.streams) == [1, 3, 5] and not transport.closed
        conn.data_received(_frame(RST_STREAM, 0, 1, U32.pack(CANCEL)))  # one ends: room for another
        conn.data_received(_frame(HEADERS, END_HEADERS, 9, request_block("/t.T/Hold")))
        assert sorted(conn.streams) == [3, 5, 9]

    _on_connection(test, max_concurrent_streams=3)


def test_the_default_concurrent_streams_bound_is_far_above_what_clients_open():
    async def run():
        assert GrpcServer().max_concurrent_streams == MAX_CONCURRENT_STREAMS
    asyncio.run(run())
    assert 1000 * 4 <= MAX_CONCURRENT_STREAMS < 2**31


# --- 5. what waits to be sent to a client ----------------------------------------------------------------


def _open_windows(conn) -> None:
    """The client lets us send as much as HTTP/2 allows (and then does not read)."""
    conn.data_received(_frame(SETTINGS, 0, 0, struct.pack(">HL", S_INITIAL_WINDOW_SIZE, MAX_WINDOW))
                       + _frame(WINDOW_UPDATE, 0, 0, U32.pack(MAX_WINDOW - DEFAULT_WINDOW)))


def test_a_client_that_does_not_read_is_not_read_and_past_the_budget_is_closed():
    def test(conn, transport, server, echo):
        _open_windows(conn)
        request = _message(1_000_000)
        calls = b"".join(_frame(HEADERS, END_HEADERS, sid, request_block("/t.T/Echo"))
                         + _frame(DATA, END_STREAM, sid, request) for sid in range(1, 11, 2))
        conn.data_received(calls)
        server.flush_now()
        assert not transport.reading  # 5 MB waiting: no more calls from it
        assert not transport.closed
        transport.drain()  # it reads: it is read again
        assert transport.reading
        sid = 11
        while not transport.closed and sid < 400:
            conn.data_received(b"".join(_frame(HEADERS, END_HEADERS, s, request_block("/t.T/Echo"))
                                        + _frame(DATA, END_STREAM, s, request)
                                        for s in range(sid, sid + 20, 2)))
            server.flush_now()
            sid += 20
        assert transport.closed
        assert transport.buffered <= OUT_BUDGET + 20 * len(request)

    _on_connection(test)


def _calls(path: str, sids, request: bytes) -> bytes:
    return b"".join(_frame(HEADERS, END_HEADERS, sid, request_block(path)) + _frame(DATA, END_STREAM, sid, request)
                    for sid in sids)


def _answered(transport: _Transport) -> int:
    """Calls ended so far (trailers written)."""
    return sum(1 for ftype, flags, _, _ in _frames(transport.written) if ftype == HEADERS and flags & END_STREAM)


def test_a_burst_of_calls_for_large_answers_is_read_as_fast_as_the_answers_leave():
    """One read holding 40 calls answered with 1 MB each: the frames after the first answers
    past WRITE_HIGH_WATER wait unread until those have left, instead of 40 MB being answered
    at once (memory, and the other clients' turn of the loop)."""
    async def test(conn, transport, server, echo):
        _open_windows(conn)
        size = 1_000_000
        conn.data_received(_calls("/t.T/Echo", range(1, 81, 2), _message(size)))
        server.flush_now()
        per_turn = WRITE_HIGH_WATER // size + 1
        assert 0 < _answered(transport) <= per_turn
        assert not transport.reading and transport.buffered <= (per_turn + 1) * size
        done = _answered(transport)
        while done < 40:  # the client reads: the calls that waited go on, a few at a time
            transport.drain()
            await _until(lambda: _answered(transport) > done)
            server.flush_now()
            assert _answered(transport) - done <= per_turn
            done = _answered(transport)
        assert not conn.buf

    _on_connection(test)


def test_answers_waiting_for_the_client_windows_are_bounded_new_calls_refused_past_it():
    """A client that keeps its windows small and never opens them: each 1 MB answer waits in its
    stream; past UNSENT_BUDGET the connection's new calls are refused (REFUSED_STREAM: a grpc
    client retries them), and once the client reads again they are taken."""
    def test(conn, transport, server, echo):
        size = 1_000_000
        calls = UNSENT_BUDGET // size + 8
        for first in range(1, 2 * calls, 8):
            conn.data_received(_calls("/t.T/Echo", range(first, min(first + 8, 2 * calls), 2), _message(size)))
            server.flush_now()
        refused = [sid for sid, code in _resets(transport).items() if code == REFUSED_STREAM]
        assert refused and len(refused) < 8
        assert conn.unsent <= UNSENT_BUDGET + size
        waiting = [sid for sid in conn.streams if conn.streams[sid].pending]
        conn.data_received(_frame(RST_STREAM, 0, waiting[0], U32.pack(CANCEL)))  # a call given up: its answer goes
        assert conn.unsent <= UNSENT_BUDGET
        conn.data_received(_frame(WINDOW_UPDATE, 0, 0, U32.pack(MAX_WINDOW - DEFAULT_WINDOW))
                           + b"".join(_frame(WINDOW_UPDATE, 0, sid, U32.pack(MAX_WINDOW - DEFAULT_WINDOW))
                                      for sid in list(conn.streams)))
        server.flush_now()
        for _ in range(calls):  # the answers leave as fast as the client reads them
            if not conn.unsent:
                break
            transport.drain()
            server.flush_now()
        assert conn.unsent == 0
        transport.written.clear()
        conn.data_received(_calls("/t.T/Echo", [2 * calls + 1], _message(10)))
        server.flush_now()
        assert _answered(transport) == 1 and not _resets(transport).get(2 * calls + 1)

    _on_connection(test)


def test_streaming_calls_stop_writing_while_the_client_is_not_reading():
    async def test(conn, transport, server, echo):
        _open_windows(conn)
        context = ServicerContext(conn.streams.get(1) or _open_stream(conn, 1))
        assert context.writable_now()
        conn.pause_writing()
        assert not context.writable_now() and not context.try_write(b"x")
        waiting = asyncio.ensure_future(context.writable())
        await asyncio.sleep(0)
        assert not waiting.done()
        conn.resume_writing()
        await _until(waiting.done)
        assert context.try_write(b"x")

    _on_connection(test)


def _open_stream(conn, sid: int):
    conn.data_received(_frame(HEADERS, END_HEADERS, sid, request_block("/t.T/Hold")))
    return conn.streams[sid]


# --- 6. PING and RST_STREAM floods ------------------------------------------------------------------------


def _goaway_debug(transport: _Transport) -> bytes:
    return [p for ftype, _, _, p in _frames(transport.written) if ftype == GOAWAY][-1][8:]


def test_a_ping_flood_gets_goaway_enhance_your_calm_too_many_pings():
    def test(conn, transport, server, echo):
        ping = _frame(PING, 0, 0, b"12345678")
        conn.data_received(ping * 500)  # a burst is answered
        server.flush_now()
        assert not transport.closed
        assert sum(1 for t, f, _, _ in _frames(transport.written) if t == PING and f & ACK) == 500
        sent = 500
        while not transport.closed and sent < 100_000:
            conn.data_received(ping * 100)
            sent += 100
        assert transport.closed and sent < 2 * PING_BURST  # the burst, and what refills meanwhile
        assert _goaway_code(transport) == ENHANCE_YOUR_CALM
        assert _goaway_debug(transport) == b"too_many_pings"

    _on_connection(test)


def test_the_ping_answers_of_a_client_that_does_not_read_wait_no_more_than_the_high_water_mark():
    def test(conn, transport, server, echo):
        transport.high = 1000  # as if the socket's buffer were full
        ping = _frame(PING, 0, 0, b"12345678")
        conn.data_received(ping * 100)
        server.flush_now()
        assert not transport.reading  # no more PINGs are read until it reads our answers
        transport.drain()
        assert transport.reading

    _on_connection(test)


def test_rapid_reset_gets_goaway_enhance_your_calm():
    def test(conn, transport, server, echo):
        sid = 1
        while not transport.closed and sid < 20_000:
            conn.data_received(_frame(HEADERS, END_HEADERS, sid, request_block("/t.T/Hold"))
                               + _frame(RST_STREAM, 0, sid, U32.pack(CANCEL)))
            sid += 2
        assert transport.closed and sid // 2 < 2 * RESET_BURST  # the burst, and what refills meanwhile
        assert _goaway_code(transport) == ENHANCE_YOUR_CALM
        assert _goaway_debug(transport) == b"too_many_resets"

    _on_connection(test)


def test_the_rate_refills_with_time():
    rate = Rate(3, 1000.0)
    assert rate.spend() and rate.spend() and rate.spend()
    assert not rate.spend()
    rate.last -= 0.002  # two events' worth of time
    assert rate.spend() and rate.spend()
    assert not rate.spend()


# --- 8. the header cache ----------------------------------------------------------------------------------


def test_the_header_cache_holds_a_bounded_number_of_bytes():
    def test(conn, transport, server, echo):
        for sid in range(1, 500, 2):  # 250 distinct ~100 KB header blocks, each a call to an unknown method
            block = request_block("/t.T/Unknown") + literal(b"x-pad", b"%06d" % sid + bytes(100_000))
            conn.data_received(_frame(HEADERS, END_HEADERS | END_STREAM, sid, block))
        assert not transport.closed
        assert 0 < conn.headers.cached_bytes <= HEADER_CACHE_BYTES
        assert sum(len(block) for block in conn.headers.cache) == conn.headers.cached_bytes

    _on_connection(test)


# --- 9. the handshake's deadline, and idle connections ---------------------------------------------------


def test_a_client_that_does_not_finish_the_handshake_in_time_is_closed():
    async def run():
        server = GrpcServer(handshake_timeout=0.05)
        silent, half, done = (_Transport() for _ in range(3))
        conns = []
        for transport, data in ((silent, b""), (half, PREFACE), (done, PREFACE + _frame(SETTINGS, 0, 0))):
            conn = Connection(server)
            transport.protocol = conn
            conn.connection_made(transport)
            conn.data_received(data)
            conns.append(conn)
        await _until(lambda: silent.closed and half.closed)
        await asyncio.sleep(0.1)
        assert not done.closed
        for conn in conns:
            conn.connection_lost(None)

    asyncio.run(run())


def test_a_connection_without_calls_that_sends_nothing_is_closed_with_goaway():
    async def test(conn, transport, server, echo):
        others = []
        for frames in (_frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Hold")), b""):
            other, other_transport = Connection(server), _Transport()
            other_transport.protocol = other
            other.connection_made(other_transport)
            other.data_received(PREFACE + _frame(SETTINGS, 0, 0) + frames)
            others.append((other, other_transport))
        (busy, busy_transport), (pinging, pinging_transport) = others
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.3
        while _goaway_code(transport) is None:
            assert loop.time() < deadline
            pinging.data_received(_frame(PING, 0, 0, b"keep-me!"))
            await asyncio.sleep(0.01)
        assert _goaway_code(transport) == NO_ERROR and _goaway_debug(transport) == b"max_idle"
        # a call sent as the GOAWAY left is refused (the client retries it elsewhere), then the socket closes
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Hold")))
        server.flush_now()
        assert _resets(transport) == {1: REFUSED_STREAM}
        await _until(lambda: transport.closed, timeout=2)
        assert not busy_transport.closed and not pinging_transport.closed  # a call or PINGs keep it
        for other, _ in others:
            other.connection_lost(None)

    _on_connection(test, idle_timeout=0.05)


def test_on_a_real_socket_a_client_that_does_not_read_is_not_read_and_others_are_served():
    async def run():
        server = GrpcServer()
        _Echo().register(server)
        port = await server.listen("127.0.0.1", 0)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads
        writer.write(PREFACE + _frame(SETTINGS, 0, 0, struct.pack(">HL", S_INITIAL_WINDOW_SIZE, MAX_WINDOW))
                     + _frame(WINDOW_UPDATE, 0, 0, U32.pack(MAX_WINDOW - DEFAULT_WINDOW)))
        request = _message(1_000_000)

        def calls(first: int) -> bytes:
            return b"".join(_frame(HEADERS, END_HEADERS, s, request_block("/t.T/Echo"))
                            + _frame(DATA, END_STREAM, s, request) for s in range(first, first + 8, 2))

        await _until(lambda: server.connections)
        (conn,) = server.connections
        sid = 1
        for _ in range(100):  # until what waits for it passes the high water mark
            if conn.write_paused:
                break
            writer.write(calls(sid))
            sid += 8
            await asyncio.sleep(0.01)
        for _ in range(20):  # 80 MB more asked for: not read, so not answered
            writer.write(calls(sid))
            sid += 8
            await asyncio.sleep(0.01)
        assert conn.write_paused and not conn.closed
        assert conn.transport.get_write_buffer_size() <= WRITE_HIGH_WATER + 8 * len(request)
        writer.transport.abort()
        # a client that reads is served as before
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREFACE + _frame(SETTINGS, 0, 0) + _frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Echo"))
                     + _frame(DATA, END_STREAM, 1, _message(5)))
        got = b""
        while b"grpc-status" not in got:
            got += await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        await server.stop(0)

    asyncio.run(run())


def test_a_unix_socket_serves_grpc_clients_and_a_stale_socket_file_is_replaced(tmp_path):
    path = str(tmp_path / "cri.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # what a server killed with SIGKILL leaves behind
    stale.close()

    async def run():
        server = GrpcServer()
        _Echo().register(server)
        await server.listen_unix(path)
        await server.start()
        async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
            assert await channel.unary_unary("/t.T/Echo")(b"over a unix socket", timeout=5) == b"over a unix socket"
        await server.stop(0)

    asyncio.run(run())


# --- a lingering close: the GOAWAY reaches the client ------------------------------------------


def test_a_connection_ended_by_an_error_closes_its_socket_once_the_client_has_its_output(monkeypatch):
    """After a GOAWAY for an error the server shuts its side (FIN) at once, reads and throws away
    what still comes, and closes the socket only once what it wrote has left (closing earlier, with
    input unread, resets the connection and drops the GOAWAY)."""
    checks = []
    check = connection.Connection.check_linger
    monkeypatch.setattr(connection.Connection, "check_linger",
                        lambda conn: (checks.append(1), check(conn)))

    async def test(conn, transport, server, echo):
        transport.high = 1 << 30  # the "client" reads nothing until drain()
        conn.data_received(_frame(WINDOW_UPDATE, 0, 0, U32.pack(0)))
        assert transport.closed and not transport.shut and _goaway_code(transport) == PROTOCOL_ERROR
        written = len(transport.written)
        conn.data_received(_frame(PING, 0, 0, bytes(8)) * 100 + _frame(HEADERS, END_HEADERS, 3, b"junk"))
        assert len(transport.written) == written and transport.reading  # thrown away, unanswered
        await _until(lambda: len(checks) >= 3)
        assert not transport.shut  # the GOAWAY has not left
        transport.drain()
        await _until(lambda: transport.shut, timeout=1)

    _on_connection(test)


def test_a_lingering_connection_stops_reading_past_its_drain_and_closes_after_linger_time(monkeypatch):
    monkeypatch.setattr(connection, "LINGER_TIME", 0.2)

    async def test(conn, transport, server, echo):
        transport.high = 1 << 30
        conn.data_received(_frame(WINDOW_UPDATE, 0, 0, U32.pack(0)))
        junk = _frame(PING, 0, 0, bytes(8)) * 1000
        for _ in range(LINGER_DRAIN // len(junk) + 2):
            conn.data_received(junk)
        assert not transport.reading and not transport.shut
        start = asyncio.get_running_loop().time()
        await _until(lambda: transport.shut, timeout=2)  # never drained: closed anyway
        assert asyncio.get_running_loop().time() - start < 0.2 + 0.1

    _on_connection(test)


def test_unacknowledged_output_is_what_the_kernel_still_holds_for_the_peer():
    """_unacknowledged (SIOCOUTQ) on a real TCP pair: what a peer that does not read leaves in the
    sender's queue, and nothing once it has read it all."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        receiver = socket.socket()
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.connect(listener.getsockname())
        sender, _ = listener.accept()
        with receiver, sender:
            sender.setblocking(False)
            transport = type("T", (), {"get_extra_info": lambda self, name: sender})()
            assert connection._unacknowledged(transport) == 0
            sent = 0
            try:
                while sent < 8 << 20:
                    sent += sender.send(bytes(65536))
            except BlockingIOError:
                pass
            assert connection._unacknowledged(transport) > 0
            got = 0
            receiver.settimeout(5)
            while got < sent:
                got += len(receiver.recv(1 << 20))
            deadline = time.monotonic() + 5
            while connection._unacknowledged(transport):
                assert time.monotonic() < deadline, "the kernel still holds what the peer read"
            assert connection._unacknowledged(type("T", (), {"get_extra_info": lambda self, n: None})()) == 0


# --- keepalive: a peer that vanished without a FIN ------------------------------------------------


def _keepalive_pings(transport: _Transport) -> int:
    return sum(1 for ftype, flags, _, p in _frames(transport.written)
               if ftype == PING and not flags & ACK and p == KEEPALIVE_PING)


def test_a_connection_that_sends_nothing_is_pinged_and_closed_when_nothing_answers():
    """grpc-go's server keepalive: after keepalive_time without a read the server PINGs; an
    answer (anything read) keeps the connection and its call; silence for keepalive_timeout after
    a PING closes it, and its calls end."""

    async def test(conn, transport, server, echo):
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Hold")))
        assert 1 in conn.streams
        await _until(lambda: _keepalive_pings(transport) == 1, timeout=2)
        conn.data_received(_frame(PING, ACK, 0, KEEPALIVE_PING))  # the client answers
        await _until(lambda: _keepalive_pings(transport) == 2, timeout=2)
        assert not transport.shut and 1 in conn.streams
        await _until(lambda: transport.shut, timeout=2)  # this time nothing answers
        assert _keepalive_pings(transport) == 2 and not conn.streams

    _on_connection(test, keepalive_time=0.1, keepalive_timeout=0.2)


def test_a_connection_that_keeps_sending_is_never_pinged():
    async def test(conn, transport, server, echo):
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, request_block("/t.T/Hold")))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.5
        while loop.time() < deadline:  # a read every 10 ms: twenty within each keepalive_time
            conn.data_received(_frame(WINDOW_UPDATE, 0, 0, U32.pack(1)))
            await asyncio.sleep(0.01)
        assert _keepalive_pings(transport) == 0 and not transport.shut

    _on_connection(test, keepalive_time=0.2, keepalive_timeout=0.05)
