"""grpclite.tls: the handshake completes whatever client certificate is presented, and the
connection says whether it verified and why not (Go's tls.RequestClientCert, as kube-apiserver
and the kubelet serve). Also ALPN by the server's preference, flow control, the ways a
connection ends, and the bounds on a handshake. No processes: a ServerTLS around a small
protocol in the test's own event loop, Python's ssl as the client."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import shutil
import socket
import ssl
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from apiserver.auth import pki
from grpclite import tls

WAIT = 10.0


class Recorder(asyncio.Protocol):
    """Records what it is given; echoes what it reads unless told to hold."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.transport = None
        self.made = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()
        self.eof = asyncio.get_running_loop().create_future()
        self.received = bytearray()
        self.keep_open_on_eof = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(data)

    def eof_received(self):
        self.eof.set_result(True)
        return self.keep_open_on_eof

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    ca = pki.CA(d / "ca")
    now = datetime.datetime.now(datetime.timezone.utc)
    namesake = pki.CA(d / "namesake")  # another CA by the same name (kubernetes-ca), another key
    stranger = pki.CA(d / "stranger", cn="another-ca")
    return {
        "ca": ca,
        "server": ca.issue("server", "server", server=True, client=False, ips=("127.0.0.1",)),
        "good": ca.issue("alice", "alice", ("devs", "ops")),
        "another-ca": stranger.issue("mallory", "mallory", ("system:masters",)),
        "same-name-ca": namesake.issue("mallory2", "mallory", ("system:masters",)),
        "expired": ca.issue("old", "old", not_after=now - datetime.timedelta(minutes=1)),
        "no-client-auth": ca.issue("web", "web", server=True, client=False),
    }


async def _serve(certs, factory=Recorder, **options):
    server_tls = tls.ServerTLS(str(certs["server"].cert), str(certs["server"].key), str(certs["ca"].cert_path),
                               alpn=options.pop("alpn", ("http/1.1", "h2")), **options)
    apps: list[Recorder] = []

    def app():
        apps.append(factory())
        return apps[-1]
    server = await asyncio.get_running_loop().create_server(server_tls.protocol_factory(app), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], apps


def _client_ctx(certs, who: str = "", alpn=None, maximum=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs["ca"].cert_path))
    if who:
        ctx.load_cert_chain(str(certs[who].cert), str(certs[who].key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maximum:
        ctx.maximum_version = maximum
    return ctx


VERDICTS = {
    "good": "",
    "another-ca": "x509: certificate signed by unknown authority",
    "same-name-ca": "x509: certificate signed by unknown authority",
    "expired": "x509: certificate has expired or is not yet valid: current time ",
    "no-client-auth": "x509: certificate specifies an incompatible key usage",
}


@pytest.mark.parametrize("version", ["tls1.2", "tls1.3"])
@pytest.mark.parametrize("who", list(VERDICTS))
def test_the_handshake_completes_and_says_whether_the_certificate_verified(certs, who, version):
    async def main():
        server, port, apps = await _serve(certs)
        maximum = ssl.TLSVersion.TLSv1_2 if version == "tls1.2" else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx(certs, who, maximum=maximum))
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"ping"
        transport = await apps[0].made
        verdict = transport.get_extra_info("client_certificate")
        cn = "alice" if who == "good" else {"expired": "old", "no-client-auth": "web"}.get(who, "mallory")
        assert dict(rdn[0] for rdn in verdict.peercert["subject"])["commonName"] == cn
        assert verdict.error.startswith(VERDICTS[who]) and bool(verdict.error) == (who != "good"), verdict.error
        if who == "good":
            assert transport.get_extra_info("peercert")["subject"] == (
                (("organizationName", "devs"),), (("organizationName", "ops"),), (("commonName", "alice"),))
            assert verdict.failure() == ""
        else:
            assert transport.get_extra_info("peercert") is None
            assert verdict.failure() == f"verifying certificate SN={verdict.serial}, CN={cn} failed: {verdict.error}"
        assert transport.get_extra_info("ssl_object").get_protocol_version_name() == \
            ("TLSv1.2" if version == "tls1.2" else "TLSv1.3")
        writer.close()
        server.close()
    asyncio.run(main())


def _usage_cert(ca: pki.CA, d, name: str, *, digital_signature: bool | None, usages) -> pki.Issued:
    """A client certificate of ``ca`` with the keyUsage and ExtKeyUsage given (None: without)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(pki.subject(name)).issuer_name(ca.cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
    if digital_signature is not None:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=digital_signature, key_encipherment=not digital_signature, key_cert_sign=False,
            crl_sign=False, content_commitment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    if usages is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    issued = pki.Issued(d / f"{name}.crt", d / f"{name}.key")
    issued.cert.write_bytes(b.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    return issued


# Go's verifier (kube-apiserver's) on a client certificate's usages, where OpenSSL's sslclient
# purpose says otherwise for the two in the middle
USAGES = {
    "no-extensions": (None, None, True),
    "any-usage": (True, [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE], True),
    "key-usage-without-digital-signature": (False, [ExtendedKeyUsageOID.CLIENT_AUTH], True),
    "code-signing-only": (True, [ExtendedKeyUsageOID.CODE_SIGNING], False),
}


@pytest.mark.parametrize("kind", list(USAGES))
def test_usages_are_judged_as_go_judges_them(certs, tmp_path, kind):
    digital, usages, accepted = USAGES[kind]
    cert = _usage_cert(certs["ca"], tmp_path, kind, digital_signature=digital, usages=usages)

    async def main():
        server, port, apps = await _serve(certs)
        ctx = _client_ctx(certs)
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        writer.write(b"x")
        await asyncio.wait_for(reader.readexactly(1), WAIT)
        verdict = apps[0].transport.get_extra_info("client_certificate")
        assert verdict.error == ("" if accepted else "x509: certificate specifies an incompatible key usage")
        assert (apps[0].transport.get_extra_info("peercert") is not None) == accepted
        writer.close()
        server.close()
    asyncio.run(main())


@pytest.mark.process
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (cryptography signs no SHA-1)")
def test_a_sha1_signed_certificate_does_not_verify(certs, tmp_path):
    # Go refuses SHA-1 signatures (kube-apiserver: 401); OpenSSL at the machine's security
    # level too (CA_MD_TOO_WEAK), said in Go's words
    key, csr, crt = tmp_path / "sha1.key", tmp_path / "sha1.csr", tmp_path / "sha1.crt"
    (tmp_path / "ext").write_text("extendedKeyUsage=clientAuth\n")
    for cmd in (["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key],
                ["openssl", "req", "-new", "-key", key, "-subj", "/CN=sha1user", "-out", csr],
                ["openssl", "x509", "-req", "-in", csr, "-CA", certs["ca"].cert_path, "-CAkey", certs["ca"].key_path,
                 "-set_serial", "7", "-days", "1", "-sha1", "-extfile", tmp_path / "ext", "-out", crt]):
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=30)
    assert x509.load_pem_x509_certificate(crt.read_bytes()).signature_hash_algorithm.name == "sha1"

    async def main():
        server, port, apps = await _serve(certs)
        ctx = _client_ctx(certs)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # lets the client present it at all
        ctx.load_cert_chain(str(crt), str(key))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), WAIT) == b"x"
        transport = await apps[0].made
        verdict = transport.get_extra_info("client_certificate")
        assert not verdict.verified and transport.get_extra_info("peercert") is None
        assert verdict.error == (
            'x509: certificate signed by unknown authority (possibly because of "x509: cannot verify signature: '
            'insecure algorithm ECDSA-SHA1 (temporarily override with GODEBUG=x509sha1=1)" while trying to verify '
            'candidate authority certificate "kubernetes-ca")')
        writer.close()
        server.close()
    asyncio.run(main())


def test_no_certificate_is_no_verdict_and_the_ca_is_named(certs):
    async def main():
        server, port, apps = await _serve(certs)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx(certs))
        writer.write(b"x")
        await asyncio.wait_for(reader.readexactly(1), WAIT)
        transport = await apps[0].made
        assert transport.get_extra_info("client_certificate") is None
        assert transport.get_extra_info("peercert") is None
        assert transport.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert transport.get_extra_info("socket").fileno() >= 0
        # the CertificateRequest names the client CA, as Go's ClientCAs (clients pick by it)
        names = transport.get_extra_info("ssl_object").get_client_ca_list()
        assert [n.CN for n in names] == ["kubernetes-ca"]
        writer.close()
        server.close()
    asyncio.run(main())


def test_sessions_are_not_resumed(certs):
    """A resumed session would skip the verify callback: every connection gets a full
    handshake, and its own verdict."""
    async def main():
        server, port, apps = await _serve(certs)
        ctx = _client_ctx(certs, "expired", maximum=ssl.TLSVersion.TLSv1_2)

        def twice():
            first = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
            first.sendall(b"1")
            first.recv(1)
            again = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1",
                                    session=first.session)
            again.sendall(b"2")
            again.recv(1)
            reused = again.session_reused
            first.close()
            again.close()
            return reused
        assert await asyncio.to_thread(twice) is False
        errors = [a.transport.get_extra_info("client_certificate").error for a in apps]
        assert len(errors) == 2 and all(e.startswith(VERDICTS["expired"]) for e in errors), errors
        server.close()
    asyncio.run(main())


@pytest.mark.parametrize("offered,chosen", [(["h2", "http/1.1"], "http/1.1"), (["h2"], "h2"),
                                            (None, None), (["spdy/3"], None)],
                         ids=["both", "h2-only", "none", "unknown"])
def test_alpn_is_the_servers_preference(certs, offered, chosen):
    async def main():
        server, port, apps = await _serve(certs)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx(certs, alpn=offered))
        writer.write(b"x")
        await asyncio.wait_for(reader.readexactly(1), WAIT)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == chosen
        assert apps[0].transport.get_extra_info("selected_alpn_protocol") == chosen
        writer.close()
        server.close()
    asyncio.run(main())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused(certs):
    async def main():
        server, port, apps = await _serve(certs)
        ctx = _client_ctx(certs)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        try:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        except ssl.SSLError:
            pass
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), WAIT)
        assert apps == [] or not apps[0].made.done()
        server.close()
    asyncio.run(main())


def test_a_paused_reader_holds_the_sender_back(certs):
    """While the app has paused reading nothing more is delivered and the socket is not read:
    the client's writes back up; resumed, everything arrives intact and in order."""
    async def main():
        server, port, apps = await _serve(certs, factory=lambda: Recorder(echo=False))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 << 10)  # the kernel holds little
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, ssl=_client_ctx(certs),
                                                       server_hostname="127.0.0.1")
        writer.write(b"a")
        while not apps or not apps[0].received:
            await asyncio.sleep(0.01)
        app = apps[0]
        app.transport.pause_reading()
        assert not app.transport.is_reading()
        payload = hashlib.sha256(b"seed").digest() * (1 << 16)  # 2 MiB
        writer.write(payload)
        await asyncio.sleep(0.5)  # time for the client to send what the kernels take
        assert len(app.received) == 1  # nothing delivered while paused
        assert not app.transport._tls.raw.is_reading()  # the socket is not read: the client waits
        app.transport.resume_reading()
        await asyncio.wait_for(writer.drain(), WAIT)
        while len(app.received) < 1 + len(payload):
            await asyncio.sleep(0.01)
        assert bytes(app.received) == b"a" + payload
        writer.close()
        server.close()
    asyncio.run(main())


async def _blocking_client(certs, port: int) -> ssl.SSLSocket:
    """A client on a blocking socket (its handshake in a thread: the server runs in this loop)."""
    def connect():
        s = _client_ctx(certs).wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                           server_hostname="127.0.0.1")
        s.settimeout(WAIT)
        return s
    return await asyncio.to_thread(connect)


def test_the_ways_a_connection_ends(certs):
    async def main():
        server, port, apps = await _serve(certs)
        # the client's close_notify, then FIN: eof_received, then the connection is closed
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx(certs))
        writer.write(b"x")
        await reader.readexactly(1)
        writer.close()
        await asyncio.wait_for(apps[0].eof, WAIT)
        assert await asyncio.wait_for(apps[0].lost, WAIT) is None
        # a FIN without close_notify: the same
        s = await _blocking_client(certs, port)
        await asyncio.to_thread(s.sendall, b"y")
        assert await asyncio.to_thread(s.recv, 1) == b"y"
        socket.socket.shutdown(s, socket.SHUT_WR)  # TCP's FIN under TLS (SSLSocket's would unwrap)
        await asyncio.wait_for(apps[1].eof, WAIT)
        await asyncio.wait_for(apps[1].lost, WAIT)
        s.close()
        # the server closes: close_notify, and the client sees a clean end
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx(certs))
        writer.write(b"z")
        await reader.readexactly(1)
        apps[2].transport.write(b"bye")
        apps[2].transport.close()
        assert apps[2].transport.is_closing()
        assert await asyncio.wait_for(reader.read(), WAIT) == b"bye"
        writer.close()
        # abort: gone at once
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx(certs))
        writer.write(b"w")
        await reader.readexactly(1)
        apps[3].transport.abort()
        await asyncio.wait_for(apps[3].lost, WAIT)
        writer.close()
        server.close()
    asyncio.run(main())


def test_half_close_both_ways(certs):
    """write_eof ends our side (close_notify and FIN) and reading goes on; an app that keeps
    the connection open at the client's end of input may still answer."""
    async def main():
        server, port, apps = await _serve(certs, factory=lambda: Recorder(echo=False))
        s = await _blocking_client(certs, port)
        await asyncio.to_thread(s.sendall, b"hello")
        while not apps or len(apps[0].received) < 5:
            await asyncio.sleep(0.01)
        app = apps[0]
        assert app.transport.can_write_eof()
        app.transport.write(b"answer")
        app.transport.write_eof()
        app.transport.write(b"dropped")  # nothing after the end

        def read_all():
            got = b""
            while chunk := s.recv(100):
                got += chunk
            return got
        assert await asyncio.to_thread(read_all) == b"answer"
        await asyncio.to_thread(s.sendall, b" more")  # the client may still send
        while bytes(app.received) != b"hello more":
            await asyncio.sleep(0.01)
        # the other way: the client ends its side, the app keeps the connection and answers
        s2 = await _blocking_client(certs, port)
        await asyncio.to_thread(s2.sendall, b"q")
        while len(apps) < 2 or not apps[1].received:
            await asyncio.sleep(0.01)
        apps[1].keep_open_on_eof = True
        socket.socket.shutdown(s2, socket.SHUT_WR)  # a FIN, TLS still on (SSLSocket's would unwrap)
        await asyncio.wait_for(apps[1].eof, WAIT)
        assert not apps[1].transport.is_closing()
        apps[1].transport.write(b"late answer")
        assert await asyncio.to_thread(s2.recv, 100) == b"late answer"
        apps[1].transport.close()
        s.close()
        s2.close()
        server.close()
    asyncio.run(main())


def test_a_slow_handshake_times_out(certs):
    """A client that starts a handshake and never finishes it (slow loris) is closed."""
    async def main():
        server, port, apps = await _serve(certs, handshake_timeout=0.5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
        start = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        assert 0.4 < asyncio.get_running_loop().time() - start < 5
        assert apps == [] or not apps[0].made.done()
        writer.close()
        server.close()
    asyncio.run(main())


def test_a_handshake_may_not_read_without_bound(certs, monkeypatch):
    monkeypatch.setattr(tls, "HANDSHAKE_BYTES", 64)
    async def main():
        server, port, apps = await _serve(certs)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            # TLS 1.3: the client is done before its Finished reaches the server
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=_client_ctx(certs, "good")), WAIT)
            writer.write(b"x")
            await asyncio.wait_for(reader.readexactly(1), WAIT)
        assert not apps[0].made.done()
        server.close()
    asyncio.run(main())


def test_garbage_instead_of_a_handshake_is_closed(certs):
    async def main():
        server, port, apps = await _serve(certs)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(reader.read(), WAIT)  # an alert, then the end
        assert not apps or not apps[0].made.done()
        writer.close()
        server.close()
    asyncio.run(main())


def test_unreadable_files_are_a_value_error(tmp_path, certs):
    with pytest.raises(ValueError):
        tls.ServerTLS(str(tmp_path / "missing.crt"), str(certs["server"].key))
    with pytest.raises(ValueError):
        tls.ServerTLS(str(certs["server"].cert), str(certs["good"].key))  # not its key
