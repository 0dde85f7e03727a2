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
of a raft tick, instead of one per message (`flush_now` sends them earlier:
the leader's new entries, before its own sync). `before_send`, if set, runs
before any frame leaves (once for all those leaving at an `uncork`): the
member syncs its journal there (see `etcdlite.raft.node`).

Peer TLS (etcd's --peer-cert-file & co., `PeerTLS`): the frames above are
carried inside TLS, run through an `ssl.SSLObject` over memory BIOs rather
than an `SSLSocket`, so pysyncobj's non-blocking socket, its poller and its
partial writes stay as they are. Frames sent are kept as plaintext until
the handshake is done and then encrypted together at the next send attempt
(one TLS write for all the frames of an `uncork`); the write buffer pysyncobj
drains holds ciphertext only, and bytes read are decrypted before the
framing sees them. The peer's certificate is checked in the handshake (the
peer CA, the peer URL's host on connections this member makes, and
--peer-cert-allowed-cn, --peer-cert-allowed-hostname and --peer-crl-file
after it): a peer that fails is dropped before any of its frames is read. No thread: the handshake advances as the socket
becomes readable, as the framing does.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import itertools
import logging
import pickle
import re
import ssl
import struct

import pysyncobj.tcp_connection
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

from etcdlite.tls_policy import HandshakePolicy, RevocationList, apply_cipher_suites

_LENGTH = struct.Struct("<I")
_SEQ = struct.Struct("<Q")
# a connection's `generation`: a number never used before, new at each adopt, connect and disconnect
# (what it sent before a new one may be lost: see LoopSyncObj._SyncObj__sendNextNodeIdx)
_GENERATIONS = itertools.count(1)
_MAC_SIZE = 32
# larger than any AppendEntries or snapshot chunk pysyncobj sends; a length
# beyond it is garbage (or an attack) and drops the connection
MAX_FRAME_BYTES = 256 * 1024 * 1024
_KEY_SALT = b"etcdlite peer message authentication"
# decrypted bytes taken from TLS at once (a frame may be larger: it is read in pieces)
_TLS_READ = 1 << 20
_WANT_WRITE = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR

log = logging.getLogger("etcdlite.peer")


def _why(err: ssl.SSLError) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {err.verify_message}"
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(err))


class PeerTLS:
    """TLS for peer connections with etcd's semantics: this member serves
    `cert_file` on its peer port and presents it when it dials a peer; it
    verifies the peers' certificates against `trusted_ca_file` (the
    system's CAs without one) and, dialling, the peer URL's host against
    the certificate; with `client_cert_auth` a dialling peer must present a
    certificate from `trusted_ca_file`; `allowed_cn`, if set, is the only
    Common Name accepted in a verified peer certificate (etcd checks it on
    both sides: a served certificate too). `auto` (etcd's --peer-auto-tls):
    a self-signed certificate, and peers' certificates taken unverified
    (encryption without authentication, as etcd's). `allowed_hostname`
    (--peer-cert-allowed-hostname) is checked where `allowed_cn` would be,
    `crl` (--peer-crl-file, a `RevocationList`) on every connection, both
    ways (see `refusal`), and `cipher_suites` (Go's names) limit TLS 1.2's
    suites on both sides, as etcd's --cipher-suites."""

    def __init__(self, cert_file: str, key_file: str, trusted_ca_file: str = "", *,
                 client_cert_auth: bool = False, allowed_cn: str = "", auto: bool = False,
                 allowed_hostname: str = "", crl: RevocationList | None = None,
                 cipher_suites: tuple[str, ...] = ()):
        self.allowed_cn = allowed_cn
        self.client_cert_auth = client_cert_auth and not auto
        self.policy = HandshakePolicy(crl, allowed_hostname)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for ctx in (server, client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert_file, key_file)
            apply_cipher_suites(ctx, list(cipher_suites))
        server.num_tickets = 0  # connections are never resumed: no session tickets to make
        if self.client_cert_auth:
            if trusted_ca_file:
                server.load_verify_locations(cafile=trusted_ca_file)
            else:
                server.load_default_certs(ssl.Purpose.CLIENT_AUTH)
            server.verify_mode = ssl.CERT_REQUIRED
        if auto:
            client.check_hostname = False
            client.verify_mode = ssl.CERT_NONE
        elif trusted_ca_file:
            client.load_verify_locations(cafile=trusted_ca_file)
        else:
            client.load_default_certs(ssl.Purpose.SERVER_AUTH)
        self.server_context = server
        self.client_context = client

    def wrap(self, server_side: bool, server_hostname: str | None):
        """(SSLObject, incoming BIO, outgoing BIO) for a new connection."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        if server_side:
            obj = self.server_context.wrap_bio(incoming, outgoing, server_side=True)
        else:
            obj = self.client_context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
        return obj, incoming, outgoing

    def refusal(self, obj: ssl.SSLObject, server_side: bool) -> str | None:
        """Why a peer whose handshake completed is refused all the same
        (None: it is not): --peer-cert-allowed-cn or --peer-cert-allowed-hostname,
        checked on a verified certificate as etcd does (a server that asks
        for no client certificate checks neither), then --peer-crl-file on
        the chain the peer sent. etcd checks its CRL on the connections it
        accepts only, but each pair of etcd members talks over connections
        dialled both ways, so a revoked member hears no one; pysyncobj's one
        connection per pair carries both directions, so the dialling side
        checks the CRL too, to the same end."""
        asked = not server_side or self.client_cert_auth
        if self.policy:
            reason = self.policy.refusal(obj, check_hostname=asked)
            if reason is not None:
                return reason
        if not self.allowed_cn or not asked:
            return None
        cert = obj.getpeercert() or {}
        names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
        if self.allowed_cn in names:
            return None
        return (f"client certificate authentication failed: CN {', '.join(names) or '(none)'!s} "
                f"is not the --peer-cert-allowed-cn {self.allowed_cn!r}")


def mac_key(password: str | bytes) -> bytes:
    """The HMAC key for a cluster secret."""
    if isinstance(password, str):
        password = password.encode()
    return hashlib.pbkdf2_hmac("sha256", password, _KEY_SALT, 100_000)


def _mac(key: bytes, seq: int, payload: bytes) -> bytes:
    return hmac.digest(key, _SEQ.pack(seq) + payload, "sha256")  # one C call, not hmac.new's Python


class PeerConnection(TcpConnection):
    """A pysyncobj `TcpConnection` with the framing above. Instances are
    made by pysyncobj as `TcpConnection`s and adopted with `adopt`."""

    @classmethod
    def adopt(cls, conn: TcpConnection, key: bytes, transport: PeerTransport | None = None,
              tls: PeerTLS | None = None, server_hostname: str | None = None) -> PeerConnection:
        """`conn` made a PeerConnection; with `tls`, an accepted connection
        (it has a socket) starts its server side of the handshake, a dialling
        one (no socket yet) its client side at each `connect`, checking the
        peer's certificate against `server_hostname`."""
        conn.__class__ = cls
        conn.mac_key = key
        conn.send_seq = conn.recv_seq = 0
        conn.generation = next(_GENERATIONS)
        conn.transport = transport
        conn.tls = tls
        conn.tls_server_name = server_hostname
        conn._tls_reset()
        if tls is not None and conn._TcpConnection__socket is not None:
            conn._tls_start(server_side=True)
        return conn

    def connect(self, host, port):
        self.send_seq = self.recv_seq = 0
        self.generation = next(_GENERATIONS)
        self._tls_reset()
        ok = super().connect(host, port)
        if ok and self.tls is not None:
            self._tls_start(server_side=False)
        return ok

    def disconnect(self):
        self.send_seq = self.recv_seq = 0
        self.generation = next(_GENERATIONS)
        self._tls_reset()
        super().disconnect()

    # TLS over memory BIOs (see the module's docstring)

    def _tls_reset(self) -> None:
        self.tls_obj = self.tls_in = self.tls_out = None
        self.tls_ready = False
        self.tls_server_side = False
        self.tls_plain = b""

    def _tls_start(self, server_side: bool) -> None:
        self.tls_obj, self.tls_in, self.tls_out = self.tls.wrap(server_side, self.tls_server_name)
        self.tls_server_side = server_side

    def _peer_label(self) -> str:
        sock = self._TcpConnection__socket
        try:
            host, port = sock.getpeername()[:2]
            where = f"{host}:{port}"
        except (OSError, AttributeError):
            where = "?"
        return f"from {where}" if self.tls_server_side else f"to {self.tls_server_name} ({where})"

    def _tls_refuse(self, reason) -> None:
        """Drop a peer whose TLS failed, after a best-effort send of the
        alert OpenSSL wrote (so the other side logs why)."""
        log.warning("peer connection %s refused: %s", self._peer_label(), reason)
        alert = self.tls_out.read() if self.tls_out is not None else b""
        sock = self._TcpConnection__socket
        if alert and sock is not None:
            try:
                sock.send(alert)
            except OSError:
                pass
        self.disconnect()

    def _tls_pump(self) -> bool:
        """Advance the handshake, encrypt the plaintext waiting once it is
        done, and move what TLS wrote into the socket's write buffer.
        False: the connection failed and is gone."""
        obj = self.tls_obj
        try:
            if not self.tls_ready:
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                else:
                    reason = self.tls.refusal(obj, self.tls_server_side)
                    if reason is not None:
                        self._tls_refuse(reason)
                        return False
                    self.tls_ready = True
            if self.tls_ready and self.tls_plain:
                # a memory BIO takes everything: the whole buffer is encrypted now
                obj.write(self.tls_plain)
                self.tls_plain = b""
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as err:
            self._tls_refuse(_why(err))
            return False
        if self.tls_out.pending:
            self._TcpConnection__writeBuffer += self.tls_out.read()
        return True

    def _TcpConnection__trySendBuffer(self):
        if self.tls_obj is None:
            return super()._TcpConnection__trySendBuffer()
        if self.state == CONNECTION_STATE.DISCONNECTED or not self._tls_pump():
            return None
        super()._TcpConnection__trySendBuffer()
        # pysyncobj asks for a writable event only after one; ciphertext
        # left over (a large batch, handshake bytes written on a read) must
        # not wait for the next message to be sent
        fileno = self._TcpConnection__fileno
        if self._TcpConnection__writeBuffer and fileno is not None:
            self._TcpConnection__poller.subscribe(fileno, self._TcpConnection__processConnection, _WANT_WRITE)
        return None

    def _TcpConnection__tryReadBuffer(self):
        """pysyncobj reads until recv fails with EAGAIN, asking the socket
        for a pending error after each read: two more system calls and a
        raised exception per message. A read shorter than the buffer took
        everything there was (the loop's poller calls again when more
        comes), and a socket's error surfaces at its next recv."""
        if self.tls_obj is not None:
            return super()._TcpConnection__tryReadBuffer()
        sock = self._TcpConnection__socket
        size = self._TcpConnection__recvBufferSize
        while True:
            try:
                incoming = sock.recv(size)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.disconnect()
                break
            if not incoming:
                self.disconnect()
                break
            self._TcpConnection__readBuffer += incoming
            if len(incoming) < size:
                break
        self._TcpConnection__lastReadTime = pysyncobj.tcp_connection.monotonicTime()  # its clock

    def _TcpConnection__processRead(self):
        if self.tls_obj is None:
            return super()._TcpConnection__processRead()
        try:
            incoming = self._TcpConnection__socket.recv(self._TcpConnection__recvBufferSize)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if not incoming:
            self.disconnect()
            return False
        self.tls_in.write(incoming)
        was_ready = self.tls_ready
        if not self._tls_pump():
            return False
        obj = self.tls_obj
        chunks = []
        if self.tls_ready:
            try:
                while data := obj.read(_TLS_READ):
                    chunks.append(data)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # the peer closed its TLS side
                self.disconnect()
                return False
            except ssl.SSLError as err:
                self._tls_refuse(_why(err))
                return False
        if chunks:
            self._TcpConnection__readBuffer += b"".join(chunks)
        if self._TcpConnection__writeBuffer or self.tls_out.pending or (self.tls_ready and not was_ready):
            # handshake replies, session tickets, or frames held for the handshake
            self._TcpConnection__trySendBuffer()
            if self.state == CONNECTION_STATE.DISCONNECTED:
                return False
        return True

    def send(self, message) -> None:
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        mac = _mac(self.mac_key, self.send_seq, payload)
        self.send_seq += 1
        frame = _LENGTH.pack(_MAC_SIZE + len(payload)) + mac + payload
        if self.tls is None:
            self._TcpConnection__writeBuffer += frame
        else:  # encrypted on the way out (`_tls_pump`), all waiting frames at once
            self.tls_plain += frame
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

    def getSendBufferSize(self):
        return len(self._TcpConnection__writeBuffer) + len(self.tls_plain)

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
    SyncObj's `password` (its handshake runs only when one is set); in TLS
    when the SyncObj has a `peer_tls` (a `PeerTLS`)."""

    def __init__(self, syncObj, selfNode, otherNodes):
        password = syncObj.conf.password
        if not password:
            raise ValueError("peer connections need a cluster secret")
        self._mac_key = mac_key(password)
        self.tls: PeerTLS | None = getattr(syncObj, "peer_tls", None)
        self.corked = 0
        self.unsent: set[PeerConnection] = set()
        self.before_send = None
        super().__init__(syncObj, selfNode, otherNodes)

    def cork(self) -> None:
        self.corked += 1

    def uncork(self) -> None:
        self.corked -= 1
        if not self.corked:
            self.flush_now()

    def flush_now(self, first: PeerConnection | None = None) -> None:
        """Send the frames held by `cork` now (the cork stays on for later ones),
        `first`'s before the others' (each send wakes its receiver)."""
        if self.unsent:
            if self.before_send is not None:
                self.before_send()
            unsent, self.unsent = self.unsent, set()
            if first in unsent:
                unsent.discard(first)
                first.flush()
            for conn in unsent:
                conn.flush()

    def addNode(self, node):
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None and not isinstance(conn, PeerConnection):
            # the certificate must name the peer as its URL does, not as it is dialled (a test's proxy)
            host = node.address.rsplit(":", 1)[0].strip("[]")
            PeerConnection.adopt(conn, self._mac_key, self, self.tls, host)

    def _onNewIncomingConnection(self, conn):
        PeerConnection.adopt(conn, self._mac_key, self, self.tls)
        super()._onNewIncomingConnection(conn)
