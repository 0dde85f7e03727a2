"""The peer framing (etcdlite/raft/peer_transport.py): a frame is unpickled only
when its HMAC checks with the cluster key at its position in the connection;
tampered, foreign, replayed or reordered frames drop the connection unread."""

from __future__ import annotations

import pickle
import socket
from types import SimpleNamespace

from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from etcdlite.raft.peer_transport import PeerConnection, PeerTransport, mac_key

KEY = mac_key("s3cret")


class _NoPoller:
    def subscribe(self, *a):
        pass

    def unsubscribe(self, *a):
        pass


class _OpenFile:
    """Unpickling this opens (so creates) a file: proof that code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _conn(key: bytes = KEY) -> PeerConnection:
    return PeerConnection.adopt(TcpConnection(poller=_NoPoller()), key)


def _frames(conn: PeerConnection, *messages) -> list[bytes]:
    """What `conn` would write for each message (it has no socket, so it
    keeps them in its write buffer)."""
    out = []
    for m in messages:
        conn._TcpConnection__writeBuffer = b""
        conn.send(m)
        out.append(conn._TcpConnection__writeBuffer)
    return out


def _receive(conn: PeerConnection, data: bytes) -> list:
    conn._TcpConnection__readBuffer += data
    got = []
    while (m := conn._TcpConnection__processParseMessage()) is not None:
        got.append(m)
    return got


def test_frames_round_trip_in_order():
    frames = _frames(_conn(), {"type": "a"}, b"\xff" * 1000, ("x", 1))
    rx = _conn()
    assert _receive(rx, b"".join(frames)) == [{"type": "a"}, b"\xff" * 1000, ("x", 1)]
    assert rx._TcpConnection__readBuffer == b""


def test_partial_frame_waits_for_the_rest():
    (frame,) = _frames(_conn(), {"type": "a"})
    rx = _conn()
    assert _receive(rx, frame[:10]) == []
    assert _receive(rx, frame[10:]) == [{"type": "a"}]


def test_tampered_frame_drops_the_connection():
    (frame,) = _frames(_conn(), {"type": "a", "v": 1})
    bad = bytearray(frame)
    bad[-3] ^= 1
    rx = _conn()
    assert _receive(rx, bytes(bad)) == []
    assert rx._TcpConnection__readBuffer == b"", "the connection was not dropped"


def test_frame_under_another_key_is_refused():
    (frame,) = _frames(_conn(mac_key("other")), {"type": "a"})
    assert _receive(_conn(), frame) == []


def test_replayed_or_reordered_frame_is_refused():
    first, second = _frames(_conn(), "one", "two")
    rx = _conn()
    assert _receive(rx, first) == ["one"]
    assert _receive(rx, first) == [], "a replayed frame was accepted"
    rx = _conn()
    assert _receive(rx, second) == [], "a frame out of order was accepted"


def test_unauthenticated_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_OpenFile(str(marker)))
    # a well-formed frame with a made-up MAC
    frame = len(payload + bytes(32)).to_bytes(4, "little") + bytes(32) + payload
    assert _receive(_conn(), frame) == []
    # pysyncobj's own framing (length, zlib(pickle))
    assert _receive(_conn(), (100).to_bytes(4, "little") + payload) == []
    assert not marker.exists()


def test_counters_restart_with_the_connection():
    tx, rx = _conn(), _conn()
    (a,) = _frames(tx, "a")
    assert _receive(rx, a) == ["a"]
    tx.disconnect()
    rx.disconnect()
    (b,) = _frames(tx, "b")
    assert _receive(rx, b) == ["b"]


def test_held_frames_leave_the_named_connection_first():
    """flush_now(first=...): the connection whose peer waits (the follower whose client's
    write just committed) is sent to before the others, each send waking its receiver."""
    order = []

    class Conn:
        def __init__(self, name):
            self.name = name

        def flush(self):
            order.append(self.name)

    conns = [Conn(name) for name in "abcdefgh"]
    for first in conns:
        order.clear()
        synced = []
        held = SimpleNamespace(unsent=set(conns), before_send=lambda: synced.append(list(order)))
        PeerTransport.flush_now(held, first=first)
        assert order[0] == first.name and sorted(order) == list("abcdefgh"), order
        assert synced == [[]] and held.unsent == set()  # before_send once, before any send
    order.clear()
    held = SimpleNamespace(unsent=set(conns[:2]), before_send=None)
    PeerTransport.flush_now(held, first=conns[5])  # not held: nothing for it
    assert sorted(order) == ["a", "b"]


class _CountingSocket:
    """A socket whose recv and getsockopt calls are recorded."""

    def __init__(self, sock):
        self.sock = sock
        self.calls = []

    def recv(self, size):
        self.calls.append("recv")
        return self.sock.recv(size)

    def getsockopt(self, *args):
        self.calls.append("getsockopt")
        return self.sock.getsockopt(*args)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_a_read_event_reads_what_came_in_as_few_system_calls_as_it_can():
    """pysyncobj read until EAGAIN and asked for the socket's error after each
    read; a read shorter than the buffer has taken all there was. A message
    larger than the buffer is still read whole in one event, and a peer's
    close is seen."""
    a, b = socket.socketpair()
    a.setblocking(False)
    counting = _CountingSocket(a)
    got = []
    conn = PeerConnection.adopt(
        TcpConnection(poller=_NoPoller(), socket=counting, onMessageReceived=got.append, recvBufferSize=4096), KEY)
    try:
        sender = _conn()
        small, large = _frames(sender, "small", "x" * 20000)
        b.sendall(small)
        conn._TcpConnection__processConnection(a.fileno(), POLL_EVENT_TYPE.READ)
        assert got == ["small"]
        assert counting.calls == ["getsockopt", "recv"]  # pysyncobj's error check, then one read
        counting.calls.clear()
        b.sendall(large)
        for _ in range(100):  # the kernel may hand it over in parts: each event reads what is there
            if len(got) == 2:
                break
            conn._TcpConnection__processConnection(a.fileno(), POLL_EVENT_TYPE.READ)
        assert got[1] == "x" * 20000 and counting.calls.count("recv") >= 5  # at 4 KiB a read
        b.close()
        conn._TcpConnection__processConnection(a.fileno(), POLL_EVENT_TYPE.READ)
        assert conn.state == CONNECTION_STATE.DISCONNECTED
    finally:
        a.close()
        b.close()
