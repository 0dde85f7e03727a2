"""TLS that asks for a client certificate without making the handshake depend on it.

Go's servers (kube-apiserver, the kubelet) use tls.RequestClientCert: the handshake
completes whatever certificate the client presents, and the authenticator decides
afterwards (a certificate that does not verify is a 401, not a failed handshake).
Python's ssl cannot do that: with a CA loaded it fails the handshake for a certificate
that does not verify. This layer runs OpenSSL (pyOpenSSL, memory BIOs) under asyncio
instead: a verify callback records OpenSSL's own verdict and lets the handshake go on,
and the connection then says whether a certificate was presented, whether it verified,
and why not. Chain verification is OpenSSL's; the certificates' usage is judged as Go's
verifier judges it for kube-apiserver (ExtKeyUsage clientAuth or any, or none at all:
go_allows_client_auth), where OpenSSL's own purpose check differs.

``ServerTLS(...).protocol_factory(app_factory)`` gives asyncio protocols for
``loop.create_server``; each wraps one app protocol (grpclite's Connection) and hands it a
transport with the extra info asyncio's SSL transport has (``peername``, ``socket``,
``sslcontext``, ``ssl_object``, ``peercert``: the verified certificate in ssl's
getpeercert() form, ``selected_alpn_protocol``) and ``client_certificate``: the verdict
(ClientCertificate) when a certificate was presented, verified or not.

What a client can make it hold is bounded: the handshake must end within
``handshake_timeout`` and within HANDSHAKE_BYTES read; afterwards, reading stops while the
app protocol has paused it, so at most one socket read waits undecrypted.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from OpenSSL import SSL

log = logging.getLogger("grpclite.tls")

# asyncio's own bound on a TLS handshake (ssl_handshake_timeout's default)
HANDSHAKE_TIMEOUT = 60.0
# ciphertext read before the handshake ends: a handshake with a long client chain is some 10
# KiB (OpenSSL refuses certificate lists over 100 KiB); one read after the client's Finished
# (up to 256 KiB) may carry its first requests
HANDSHAKE_BYTES = 1 << 20
# plaintext taken from OpenSSL per call (one record at most), ciphertext per read
READ_SIZE = 16 << 10
CIPHERTEXT_CHUNK = 256 << 10

# OpenSSL's X509_V_ERR_* codes, in Go's x509 words (what kube-apiserver logs)
_UNKNOWN_AUTHORITY = {2, 7, 18, 19, 20, 21, 30}  # no issuer, bad signature, self-signed, ...
_EXPIRED = {9, 10}  # not yet valid, expired
X509_V_ERR_INVALID_PURPOSE = 26
_INCOMPATIBLE_USAGE = {X509_V_ERR_INVALID_PURPOSE, 28}  # invalid purpose, rejected
X509_V_ERR_CA_MD_TOO_WEAK = 68  # signed with a digest below the security level (SHA-1)
# Go's names of the signature algorithms it calls insecure (x509.SignatureAlgorithm.String)
_GO_INSECURE = {"1.2.840.113549.1.1.5": "SHA1-RSA", "1.2.840.10045.4.1": "ECDSA-SHA1",
                "1.2.840.10040.4.3": "DSA-SHA1", "1.2.840.113549.1.1.4": "MD5-RSA"}
_SSL_NAMES = {NameOID.COUNTRY_NAME: "countryName", NameOID.STATE_OR_PROVINCE_NAME: "stateOrProvinceName",
              NameOID.LOCALITY_NAME: "localityName", NameOID.ORGANIZATION_NAME: "organizationName",
              NameOID.ORGANIZATIONAL_UNIT_NAME: "organizationalUnitName", NameOID.COMMON_NAME: "commonName",
              NameOID.EMAIL_ADDRESS: "emailAddress", NameOID.SERIAL_NUMBER: "serialNumber",
              NameOID.DOMAIN_COMPONENT: "domainComponent"}


def go_x509_error(code: int, cert: x509.Certificate | None = None, depth: int = 0) -> str:
    """OpenSSL's verify error ``code`` (at ``depth`` of the chain, 0: ``cert``, the client's
    own) as Go's crypto/x509 says it."""
    if code in _UNKNOWN_AUTHORITY:
        return "x509: certificate signed by unknown authority"
    if code == X509_V_ERR_CA_MD_TOO_WEAK:
        # Go rejects the candidate issuer's signature as insecure and finds no other: an
        # unknown authority, with the reason as its hint (Go 1.23, kube-apiserver 1.32's)
        name = _GO_INSECURE.get(cert.signature_algorithm_oid.dotted_string) if cert is not None and depth == 0 else None
        if name is None:
            return "x509: certificate signed by unknown authority"
        issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        hint = f"x509: cannot verify signature: insecure algorithm {name}"
        if name in ("SHA1-RSA", "ECDSA-SHA1"):
            hint += " (temporarily override with GODEBUG=x509sha1=1)"
        return ("x509: certificate signed by unknown authority (possibly because of "
                f"\"{hint}\" while trying to verify candidate authority certificate "
                f"\"{issuer[0].value if issuer else ''}\")")
    if code in _EXPIRED:
        text = "x509: certificate has expired or is not yet valid"
        if cert is not None:
            now = datetime.datetime.now(datetime.timezone.utc)
            before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
            stamp = "%Y-%m-%dT%H:%M:%SZ"
            if now > after:
                text += f": current time {now.strftime(stamp)} is after {after.strftime(stamp)}"
            elif now < before:
                text += f": current time {now.strftime(stamp)} is before {before.strftime(stamp)}"
        return text
    if code in _INCOMPATIBLE_USAGE:
        return "x509: certificate specifies an incompatible key usage"
    return f"x509: certificate verification failed (OpenSSL verify error {code})"


def _ssl_name(name: x509.Name) -> tuple:
    return tuple(tuple((_SSL_NAMES.get(a.oid, a.oid.dotted_string), a.value) for a in rdn) for rdn in name.rdns)


def _ssl_time(t: datetime.datetime) -> str:
    return f"{t:%b} {t.day:2d} {t:%H:%M:%S %Y} GMT"  # as ssl: "Jan  5 09:34:43 2027 GMT"


def peercert_dict(cert: x509.Certificate) -> dict:
    """``cert`` in ssl's SSLSocket.getpeercert() form (what the authenticators read)."""
    out = {"subject": _ssl_name(cert.subject), "issuer": _ssl_name(cert.issuer),
           "version": cert.version.value + 1, "serialNumber": f"{cert.serial_number:X}",
           "notBefore": _ssl_time(cert.not_valid_before_utc), "notAfter": _ssl_time(cert.not_valid_after_utc)}
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        out["subjectAltName"] = tuple([("DNS", n) for n in san.get_values_for_type(x509.DNSName)]
                                      + [("IP Address", str(ip)) for ip in san.get_values_for_type(x509.IPAddress)])
    except x509.ExtensionNotFound:
        pass
    return out


@dataclass(frozen=True)
class ClientCertificate:
    """The certificate a client presented: ``peercert`` (ssl's getpeercert() form) and
    ``error``, why it did not verify in Go's words ("" when it did)."""
    peercert: dict
    error: str = ""
    serial: str = ""

    @property
    def verified(self) -> bool:
        return not self.error

    def failure(self) -> str:
        """Why it is refused, as kube-apiserver's x509 authenticator says it; "" when it verified."""
        if not self.error:
            return ""
        cn = [v for rdn in self.peercert.get("subject", ()) for k, v in rdn if k == "commonName"]
        return f"verifying certificate SN={self.serial}, CN={cn[0] if cn else ''} failed: {self.error}"


class ServerTLS:
    """A server's TLS: TLS 1.2+, ALPN by the server's preference (``alpn``), and with
    ``client_ca_file`` a client certificate asked for (the CA's name sent, as Go's
    ClientCAs) and verified against it, never required."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = "",
                 alpn: tuple[str, ...] = ("h2",), handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        try:
            ctx.use_certificate_chain_file(cert_file)
            ctx.use_privatekey_file(key_file)
            ctx.check_privatekey()
            if client_ca_file:
                ctx.load_verify_locations(client_ca_file)
                ctx.load_client_ca(client_ca_file.encode())
        except SSL.Error as e:  # OpenSSL says which call failed, not which file
            raise ValueError(f"cannot load {cert_file}, {key_file} or {client_ca_file or 'no CA'}: {e}") from None
        # no renegotiation, no resumption: a resumed session would skip the verify callback
        ctx.set_options(SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION
                        | SSL.OP_CIPHER_SERVER_PREFERENCE)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # an idle connection holds no record buffers (as Python's ssl)
        self.alpn = [p.encode() for p in alpn]
        if self.alpn:
            ctx.set_alpn_select_callback(self._select_alpn)
        if client_ca_file:
            ctx.set_verify(SSL.VERIFY_PEER, _record_verdict)
        self.context = ctx
        self.client_ca = bool(client_ca_file)
        self.handshake_timeout = handshake_timeout

    def _select_alpn(self, conn: SSL.Connection, offered: list[bytes]) -> bytes:
        for proto in self.alpn:
            if proto in offered:
                return proto
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def protocol_factory(self, app_factory):
        """A protocol factory for loop.create_server: TLS around ``app_factory()``'s protocols."""
        return lambda: TLSProtocol(self, app_factory())


def go_allows_client_auth(cert: x509.Certificate) -> bool:
    """Go's x509 usage check for a client certificate's chain, one certificate of it: no
    ExtKeyUsage at all, or one naming clientAuth or any usage. (OpenSSL's sslclient purpose
    also refuses anyExtendedKeyUsage alone and a keyUsage without digitalSignature; Go, hence
    kube-apiserver, takes both.)"""
    try:
        usages = cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    except x509.ExtensionNotFound:
        return True
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages


def _record_verdict(conn: SSL.Connection, cert, errnum: int, depth: int, ok: int) -> bool:
    """OpenSSL's verify callback: remember the first failure, go on with the handshake. A
    purpose failure is judged by Go's rule instead (go_allows_client_auth)."""
    if not ok and errnum == X509_V_ERR_INVALID_PURPOSE and go_allows_client_auth(cert.to_cryptography()):
        return True
    if not ok:
        proto = conn.get_app_data()
        if proto is not None and proto.verify_error is None:
            proto.verify_error = (errnum, depth)
    return True


class TLSProtocol(asyncio.Protocol):
    """The socket's protocol: ciphertext in and out, plaintext to and from ``app``."""

    def __init__(self, tls: ServerTLS, app: asyncio.BaseProtocol) -> None:
        self.tls = tls
        self.app = app
        self.raw: asyncio.Transport | None = None
        self.conn = SSL.Connection(tls.context, None)
        self.conn.set_app_data(self)
        self.conn.set_accept_state()
        self.verify_error: tuple[int, int] | None = None  # set by _record_verdict
        self.transport: TLSTransport | None = None  # the app's, once the handshake is done
        self.handshake_read = 0
        self.timer: asyncio.TimerHandle | None = None
        self.reading_paused = False  # by the app
        self.eof = False  # the peer's close_notify or FIN came
        self.eof_told = False
        self.closing = False
        self.write_closed = False  # our close_notify is out
        self.extra: dict = {}

    # --- the socket's side -------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.raw = transport
        self.timer = asyncio.get_running_loop().call_later(self.tls.handshake_timeout, self._handshake_timed_out)

    def connection_lost(self, exc) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.conn.set_app_data(None)
        if self.transport is not None:
            self.transport.closed = True
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.app.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.conn.bio_write(data)
        if self.transport is None:
            self.handshake_read += len(data)
            if not self._handshake():
                return
        self._deliver()

    def eof_received(self) -> bool:
        self.eof = True
        if self.transport is None:  # before the handshake ended: nothing to tell anyone
            self._abort()
        else:
            self._deliver()
        return True  # we close (or the app half-closes) ourselves

    # --- handshake ---------------------------------------------------------------

    def _handshake(self) -> bool:
        """Another step; True once the handshake is done (the app protocol then has its transport)."""
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            if self.handshake_read > HANDSHAKE_BYTES:
                log.info("TLS handshake from %s: over %d bytes, closed", self._peer(), HANDSHAKE_BYTES)
                self._abort()
                return False
            self._flush()
            return False
        except SSL.Error as e:
            log.debug("TLS handshake from %s failed: %s", self._peer(), e)
            self._flush()  # the alert
            self._abort()
            return False
        self._flush()  # the server's last flight
        self.timer.cancel()
        self.timer = None
        self._connected()
        return True

    def _handshake_timed_out(self) -> None:
        self.timer = None
        if self.transport is None:
            log.info("TLS handshake from %s: not done in %.0f s, closed", self._peer(), self.tls.handshake_timeout)
            self._abort()

    def _connected(self) -> None:
        conn, raw = self.conn, self.raw
        alpn = conn.get_alpn_proto_negotiated()
        extra = {"peername": raw.get_extra_info("peername"), "sockname": raw.get_extra_info("sockname"),
                 "socket": raw.get_extra_info("socket"), "sslcontext": self.tls.context, "ssl_object": conn,
                 "cipher": (conn.get_cipher_name(), conn.get_protocol_version_name(), conn.get_cipher_bits()),
                 "compression": None, "selected_alpn_protocol": alpn.decode() if alpn else None,
                 "peercert": None, "client_certificate": None}
        cert = conn.get_peer_certificate(as_cryptography=True)
        if cert is not None:
            error = ""
            if not self.tls.client_ca:
                error = "x509: no client CA configured"
            elif self.verify_error is not None:
                error = go_x509_error(self.verify_error[0], cert, self.verify_error[1])
            elif conn.get_verified_chain() is None:  # no verdict recorded: never take it as verified
                error = "x509: certificate was not verified"
            verdict = ClientCertificate(peercert_dict(cert), error, f"{cert.serial_number:X}")
            extra["client_certificate"] = verdict
            if verdict.verified:
                extra["peercert"] = verdict.peercert
        self.extra = extra
        self.transport = TLSTransport(self)
        self.app.connection_made(self.transport)

    # --- reading ----------------------------------------------------------------------

    def _deliver(self) -> None:
        """What OpenSSL can decrypt, to the app in one call (as asyncio's SSL transport: the
        records of one socket read at most), unless the app has paused reading."""
        if self.reading_paused or self.closing or self.transport is None:
            return
        conn = self.conn
        chunks = []
        failure = None
        while True:
            try:
                chunks.append(conn.recv(READ_SIZE))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # close_notify
                self.eof = True
                break
            except SSL.Error as e:
                failure = e
                break
        if chunks:
            self.app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if failure is not None:
            if not self.eof:
                log.debug("TLS from %s: %s", self._peer(), failure)
            self._flush()  # the alert
            self._abort()
            return
        self._flush()  # what reading made OpenSSL say (an alert, a key update)
        if self.eof and not self.eof_told and not self.reading_paused and not self.closing \
                and self.transport is not None:
            self.eof_told = True
            keep_open = self.app.eof_received()
            if not keep_open:
                self.close()

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            if not self.eof:
                self.raw.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if not self.eof:
                self.raw.resume_reading()
            # what was read and not delivered yet
            asyncio.get_running_loop().call_soon(self._deliver)

    # --- writing ----------------------------------------------------------------------

    def write(self, data) -> None:
        if self.closing or self.write_closed or not data:
            return
        try:
            self.conn.sendall(data)
        except SSL.Error as e:
            log.debug("TLS to %s: %s", self._peer(), e)
            self._abort()
            return
        self._flush()

    def _flush(self) -> None:
        """Ciphertext OpenSSL has made, to the socket."""
        chunks = []
        while True:
            try:
                chunk = self.conn.bio_read(CIPHERTEXT_CHUNK)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < CIPHERTEXT_CHUNK:
                break
        if chunks and not self.raw.is_closing():
            self.raw.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def write_eof(self) -> None:
        """close_notify (TLS's end of our side), then the socket's FIN; reading goes on."""
        if self.closing or self.write_closed:
            return
        self._shutdown()
        if self.raw.can_write_eof():
            self.raw.write_eof()

    def _shutdown(self) -> None:
        if self.write_closed:
            return
        self.write_closed = True
        try:
            self.conn.shutdown()
        except SSL.Error:
            pass
        self._flush()

    def close(self) -> None:
        if self.closing:
            return
        self._shutdown()
        self.closing = True
        self.raw.close()  # after what is buffered

    def _abort(self) -> None:
        self.closing = True
        self.raw.abort()

    def _peer(self) -> str:
        peer = self.raw.get_extra_info("peername") if self.raw is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


class TLSTransport(asyncio.Transport):
    """The app protocol's transport: plaintext over a TLSProtocol."""

    def __init__(self, tls: TLSProtocol) -> None:
        super().__init__(tls.extra)
        self._tls = tls
        self.closed = False

    def get_extra_info(self, name, default=None):
        return self._tls.extra.get(name, default)

    def get_protocol(self):
        return self._tls.app

    def set_protocol(self, protocol) -> None:
        self._tls.app = protocol

    def is_closing(self) -> bool:
        return self._tls.closing or self.closed

    def close(self) -> None:
        self._tls.close()

    def abort(self) -> None:
        self._tls._abort()

    def write(self, data) -> None:
        self._tls.write(data)

    def writelines(self, list_of_data) -> None:
        self._tls.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._tls.write_eof()

    def is_reading(self) -> bool:
        return not self._tls.reading_paused and not self.is_closing()

    def pause_reading(self) -> None:
        self._tls.pause_reading()

    def resume_reading(self) -> None:
        self._tls.resume_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._tls.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self):
        return self._tls.raw.get_write_buffer_limits()

    def get_write_buffer_size(self) -> int:
        return self._tls.raw.get_write_buffer_size()
