"""grpclite's flow-control window (grpclite/flow.py): alone, and as a connection
puts it on the wire (when WINDOW_UPDATEs go out and how much they give back;
what an overflowing WINDOW_UPDATE costs). No sockets: a connection is fed
frames and its writes are read back as frames."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from grpclite.connection import RECV_MAX_FRAME, Connection
from grpclite.flow import CONN_RECV_WINDOW, STREAM_RECV_WINDOW, Window
from grpclite.server import GrpcServer
from grpclite.wire import (
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    MESSAGE_PREFIX,
    PREFACE,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    hpack_int,
    hpack_str,
    literal,
)
from harness.h2attack import frame as _frame
from harness.h2attack import split_frames as _frames

# --- the window alone ---------------------------------------------------------------


def test_receive_window_gives_nothing_back_until_half_is_unacknowledged():
    window = Window(100)
    assert window.consume(30) == 0
    assert window.consume(19) == 0
    assert window.available == 51


def test_receive_window_gives_back_everything_unacknowledged_at_half():
    window = Window(100)
    assert window.consume(30) == 0
    assert window.consume(40) == 70  # 70 unacknowledged >= 50: all of it goes back
    assert window.available == 100
    assert window.consume(49) == 0
    assert window.consume(1) == 50  # exactly half: given back


def test_receive_windows_of_the_server_give_back_at_half_their_size():
    for size in (STREAM_RECV_WINDOW, CONN_RECV_WINDOW):
        window = Window(size)
        assert window.consume(size // 2 - 1) == 0
        assert window.consume(1) == size // 2


def test_send_window_grows_up_to_the_largest_window_and_no_further():
    window = Window(DEFAULT_WINDOW)
    assert window.grow(MAX_WINDOW - DEFAULT_WINDOW)
    assert window.available == MAX_WINDOW
    assert not window.grow(1)  # overflow: the caller's error to raise


def test_new_initial_window_moves_a_used_window_by_the_difference():
    window = Window(DEFAULT_WINDOW)
    window.available -= 1000
    window.resize(100_000)
    assert window.available == 99_000
    window.resize(0)  # may go negative (RFC 9113 6.9.2)
    assert window.available == -1000


# --- on the wire ---------------------------------------------------------------------


class _Transport:
    """`closed`: the server ended the connection (a lingering close's FIN, or a close)."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.shut = False

    def write(self, data: bytes) -> None:
        self.written += data

    def get_extra_info(self, name):
        return None

    def close(self) -> None:
        self.closed = self.shut = True

    abort = close

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.shut

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _request_headers(path: str) -> bytes:
    return (b"\x83\x86"  # :method POST, :scheme http
            + hpack_int(4, 4) + hpack_str(path.encode())
            + hpack_int(31, 4) + hpack_str(b"application/grpc") + literal(b"te", b"trailers"))


def _window_updates(transport: _Transport) -> list[tuple[int, int]]:
    """(stream id, increment) of every WINDOW_UPDATE written, and forget what was written."""
    frames = _frames(transport.written)
    transport.written.clear()
    return [(sid, U32.unpack(payload)[0]) for ftype, _, sid, payload in frames if ftype == WINDOW_UPDATE]


def _on_connection(test) -> None:
    """test(conn, transport, server) with a connection past its preface and SETTINGS."""

    async def run() -> None:
        server = GrpcServer(max_receive_message_length=8 << 20)

        async def echo(request, context):
            return request

        server.add_registered_method_handlers("t.T", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
        conn, transport = Connection(server), _Transport()
        conn.connection_made(transport)
        conn.data_received(PREFACE + _frame(SETTINGS, 0, 0))
        server.flush_now()
        transport.written.clear()
        test(conn, transport, server)

    asyncio.run(run())


def test_a_stream_gets_its_window_back_once_half_of_it_is_unacknowledged():
    def test(conn, transport, server):
        # one message larger than half the stream's window, arriving in frames that do not end the stream
        total = STREAM_RECV_WINDOW // 2 + RECV_MAX_FRAME
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, _request_headers("/t.T/Echo")))
        chunks = [MESSAGE_PREFIX.pack(0, total)]
        left = total
        while left:
            n = min(left, RECV_MAX_FRAME - 5)
            chunks.append(bytes(n))
            left -= n
        received, updates = 0, []
        for chunk in chunks:
            conn.data_received(_frame(DATA, 0, 1, chunk))
            server.flush_now()
            received += len(chunk)
            for sid, increment in _window_updates(transport):
                updates.append((sid, increment, received))
        stream_updates = [u for u in updates if u[0] == 1]
        assert len(stream_updates) == 1
        _, increment, received_then = stream_updates[0]
        assert received_then >= STREAM_RECV_WINDOW // 2
        assert received_then - (RECV_MAX_FRAME - 5) < STREAM_RECV_WINDOW // 2  # at the first frame past half
        assert increment == received_then  # everything unacknowledged goes back
        assert not [u for u in updates if u[0] == 0]  # the connection's window is far larger

    _on_connection(test)


@pytest.mark.parametrize("flags", [0, END_STREAM], ids=["more", "last"])
def test_the_connection_gets_its_window_back_once_half_of_it_is_unacknowledged(flags):
    def test(conn, transport, server):
        # a call to an unknown method ends at once; what it sends after is counted, then dropped
        conn.data_received(_frame(HEADERS, END_HEADERS, 1, _request_headers("/t.T/Unknown")))
        server.flush_now()
        transport.written.clear()
        frame, received = bytes(RECV_MAX_FRAME), 0
        while received + len(frame) < CONN_RECV_WINDOW // 2:
            conn.data_received(_frame(DATA, flags, 1, frame))
            received += len(frame)
        server.flush_now()
        assert _window_updates(transport) == []
        conn.data_received(_frame(DATA, flags, 1, bytes(CONN_RECV_WINDOW // 2 - received)))
        server.flush_now()
        assert _window_updates(transport) == [(0, CONN_RECV_WINDOW // 2)]

    _on_connection(test)


def test_a_window_update_past_the_largest_window_ends_the_connection():
    def test(conn, transport, server):
        conn.data_received(_frame(WINDOW_UPDATE, 0, 0, U32.pack(MAX_WINDOW - DEFAULT_WINDOW)))
        server.flush_now()
        assert not transport.closed
        conn.data_received(_frame(WINDOW_UPDATE, 0, 0, U32.pack(1)))
        goaways = [payload for ftype, _, _, payload in _frames(transport.written) if ftype == GOAWAY]
        assert len(goaways) == 1 and U32.unpack(goaways[0][4:8])[0] == FLOW_CONTROL_ERROR
        assert transport.closed

    _on_connection(test)
