"""Peer messages authenticated with HMAC-SHA256 instead of Fernet + zlib.

pysyncobj frames each peer message as zlib(pickle(message)), Fernet-encrypted
when a password is set. On the leader of a busy cluster that was most of the
work: zlib (the values are not compressible), Fernet (AES-CBC, HMAC, base64,
both ways) and pickle protocol 2, which turns every bytes object into a
latin-1 string (measured: benchmarks/why.md). `PeerConnection` sends

    length (4 bytes, little-endian) | HMAC-SHA256(key, seq | payload) | payload

with payload = pickle(message) at the highest protocol and seq the number of
messages sent before on this connection (each direction counts from 0 when a
connection is made). A frame is unpickled only after its MAC checks, so
nothing from a peer without the secret is ever unpickled; the counter stops a
frame from being replayed, dropped or reordered within a connection, and
pysyncobj's per-connection random keys (its handshake, kept as it is) stop
one from being replayed into another connection. Peer traffic is
authenticated, not encrypted, as etcd's without peer TLS.

`PeerTransport` is pysyncobj's TCP transport with its connections turned into
`PeerConnection`s as they are made. Between its `cork()` and `uncork()`, sent
frames wait in their connections' buffers and leave together at `uncork`:
one write (and one wake-up of the peer) per connection for all the messages
of a raft tick, instead of one per message. `before_send`, if set, runs
before any frame leaves (once for all those leaving at an `uncork`): the
member syncs its journal there (see `etcdlite.raft.node`).
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct

from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

_LENGTH = struct.Struct("<I")
_SEQ = struct.Struct("<Q")
_MAC_SIZE = 32
# larger than any AppendEntries or snapshot chunk pysyncobj sends; a length
# beyond it is garbage (or an attack) and drops the connection
MAX_FRAME_BYTES = 256 * 1024 * 1024
_KEY_SALT = b"etcdlite peer message authentication"


def mac_key(password: str | bytes) -> bytes:
    """The HMAC key for a cluster secret."""
    if isinstance(password, str):
        password = password.encode()
    return hashlib.pbkdf2_hmac("sha256", password, _KEY_SALT, 100_000)


def _mac(key: bytes, seq: int, payload: bytes) -> bytes:
    h = hmac.new(key, _SEQ.pack(seq), hashlib.sha256)
    h.update(payload)
    return h.digest()


class PeerConnection(TcpConnection):
    """A pysyncobj `TcpConnection` with the framing above. Instances are
    made by pysyncobj as `TcpConnection`s and adopted with `adopt`."""

    @classmethod
    def adopt(cls, conn: TcpConnection, key: bytes, transport: PeerTransport | None = None) -> PeerConnection:
        conn.__class__ = cls
        conn.mac_key = key
        conn.send_seq = conn.recv_seq = 0
        conn.transport = transport
        return conn

    def connect(self, host, port):
        self.send_seq = self.recv_seq = 0
        return super().connect(host, port)

    def disconnect(self):
        self.send_seq = self.recv_seq = 0
        super().disconnect()

    def send(self, message) -> None:
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        mac = _mac(self.mac_key, self.send_seq, payload)
        self.send_seq += 1
        self._TcpConnection__writeBuffer += _LENGTH.pack(_MAC_SIZE + len(payload)) + mac + payload
        transport = self.transport
        if transport is not None and transport.corked:
            transport.unsent.add(self)
        else:
            if transport is not None and transport.before_send is not None:
                transport.before_send()
            self._TcpConnection__trySendBuffer()

    def flush(self) -> None:
        if self.state != CONNECTION_STATE.DISCONNECTED:
            self._TcpConnection__trySendBuffer()

    # pysyncobj's reader calls this until it returns None
    def _TcpConnection__processParseMessage(self):
        buf = self._TcpConnection__readBuffer
        if len(buf) < 4:
            return None
        size = _LENGTH.unpack_from(buf)[0]
        if size < _MAC_SIZE or size > MAX_FRAME_BYTES:
            self.disconnect()
            return None
        end = 4 + size
        if len(buf) < end:
            return None
        mac = buf[4 : 4 + _MAC_SIZE]
        payload = buf[4 + _MAC_SIZE : end]
        if not hmac.compare_digest(mac, _mac(self.mac_key, self.recv_seq, payload)):
            self.disconnect()
            return None
        self._TcpConnection__readBuffer = buf[end:]
        self.recv_seq += 1
        try:
            message = pickle.loads(payload)
            if self.recvRandKey:
                rand_key, message = message
                if rand_key != self.recvRandKey:
                    raise ValueError("wrong connection key")
        except Exception:  # noqa: BLE001 (whatever is wrong with a frame, the connection goes)
            self.disconnect()
            return None
        return message


class PeerTransport(TCPTransport):
    """pysyncobj's TCP transport with `PeerConnection` framing; needs the
    SyncObj's `password` (its handshake runs only when one is set)."""

    def __init__(self, syncObj, selfNode, otherNodes):
        password = syncObj.conf.password
        if not password:
            raise ValueError("peer connections need a cluster secret")
        self._mac_key = mac_key(password)
        self.corked = 0
        self.unsent: set[PeerConnection] = set()
        self.before_send = None
        super().__init__(syncObj, selfNode, otherNodes)

    def cork(self) -> None:
        self.corked += 1

    def uncork(self) -> None:
        self.corked -= 1
        if not self.corked and self.unsent:
            if self.before_send is not None:
                self.before_send()
            unsent, self.unsent = self.unsent, set()
            for conn in unsent:
                conn.flush()

    def addNode(self, node):
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None and not isinstance(conn, PeerConnection):
            PeerConnection.adopt(conn, self._mac_key, self)

    def _onNewIncomingConnection(self, conn):
        PeerConnection.adopt(conn, self._mac_key, self)
        super()._onNewIncomingConnection(conn)
