"""etcd 3.4's remaining TLS flags: --client-crl-file, --peer-crl-file,
--client-cert-allowed-hostname, --peer-cert-allowed-hostname, --cipher-suites.
The client side runs against etcdlite and the real etcd 3.4 started with the
same flags, and both must accept and refuse the same connections; the peer
side is a 3-member etcdlite cluster with one member's certificate revoked,
and PeerTLS's checks on in-memory handshakes."""

from __future__ import annotations

import datetime
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from test_peer_tls import _has
from cryptography.hazmat.primitives import hashes, serialization

from apiserver.auth.pki import CA
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.raft.peer_transport import PeerTLS
from etcdlite.tls_policy import RevocationList, go_verify_hostname
from harness import procs as P
from harness.etcd_client import Client, wait_until

HOSTNAME = "client.example"
SUITE_GO, SUITE_OPENSSL = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"
OTHER_SUITE = "ECDHE-ECDSA-AES256-GCM-SHA384"  # a TLS 1.2 suite outside --cipher-suites
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def write_crl(ca: CA, path: Path, serials: list[int], der: bool = False) -> Path:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(now - datetime.timedelta(minutes=5)).next_update(now + datetime.timedelta(days=1)))
    for s in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(s).revocation_date(now).build())
    crl = builder.sign(ca.key, hashes.SHA256())
    path.write_bytes(crl.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM))
    return path


def serial_of(cert_path: Path) -> int:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number


# ---------------------------------------------------------------------------
# client side: etcdlite and etcd with the same flags


@pytest.fixture(scope="module")
def client_pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("tlsflags")
    ca = CA(d, name="ca", cn="etcd-ca")
    pki = {"ca": ca, "server": ca.issue("server", "server", server=True, client=False, ips=("127.0.0.1",))}
    for name, cn, dns in (("good", "good", (HOSTNAME,)), ("revoked", "revoked", (HOSTNAME,)),
                          ("wildcard", "wild", ("*.example",)), ("cn-only", HOSTNAME, ()),
                          ("other-host", "other", ("other.example",))):
        pki[name] = ca.issue(name, cn, client=True, dns_names=dns)
    pki["crl"] = write_crl(ca, d / "crl.pem", [serial_of(pki["revoked"].cert), 12345])
    return pki


class HTTPSMember(P.Member):
    """A member (etcdlite or etcd) on an https:// client URL, probed with a client certificate."""

    probe: tuple[Path, Path, Path]  # CA, certificate, key

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def ready_probe(self, rpc_timeout: float) -> str | None:
        ca, cert, key = (p.read_bytes() for p in self.probe)
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        with grpc.secure_channel(self.endpoint, creds) as ch:
            try:
                st = rpc_pb2_grpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=rpc_timeout)
            except grpc.RpcError as e:
                return f"Status: {e.code().name}"
        return None if st.leader else "no leader"


def verdict(port: int, ca: Path, issued=None, *, tls12_ciphers: str | None = None) -> str:
    """'accepted' when the member answers an HTTP/2 preface over TLS (1.3, or 1.2 with
    ``tls12_ciphers`` only) presenting ``issued``; 'refused' when it fails or closes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    if issued is not None:
        ctx.load_cert_chain(str(issued.cert), str(issued.key))
    if tls12_ciphers:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(tls12_ciphers)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(H2_PREFACE)
            return "accepted" if s.recv(9) else "refused"
    except (ssl.SSLError, OSError):
        return "refused"


CASES = {
    "good": ("good", None),
    "revoked": ("revoked", None),
    "no certificate": (None, None),
    "wildcard SAN": ("wildcard", None),
    "CN only (no CN fallback since Go 1.17)": ("cn-only", None),
    "SAN of another host": ("other-host", None),
    "TLS 1.2, the suite listed": ("good", SUITE_OPENSSL),
    "TLS 1.2, only a suite not listed": ("good", OTHER_SUITE),
    "TLS 1.2, revoked": ("revoked", SUITE_OPENSSL),
}
EXPECTED = {"good": "accepted", "wildcard SAN": "accepted", "TLS 1.2, the suite listed": "accepted"}


@pytest.mark.process
@pytest.mark.parametrize("kind", ["etcdlite", "etcd"])
def test_client_crl_hostname_and_suites_accept_and_refuse_as_etcd(kind, client_pki, tmp_path, etcdctl):
    if kind == "etcd":
        P.require_binary(P.ETCD_BIN, "etcd (the real etcd 3.4 server)")
    pki = client_pki
    ca = pki["ca"].cert_path
    flags = dict(cert_file=pki["server"].cert, key_file=pki["server"].key, trusted_ca_file=ca,
                 client_cert_auth=True, client_crl_file=pki["crl"], client_cert_allowed_hostname=HOSTNAME,
                 cipher_suites=SUITE_GO)
    reg = P.Registry()
    m = HTTPSMember(kind, kind, tmp_path, flags, reg)
    m.probe = (ca, pki["good"].cert, pki["good"].key)
    try:
        m.start()
        got = {case: verdict(m.client_port, ca, pki[who] if who else None, tls12_ciphers=ciphers)
               for case, (who, ciphers) in CASES.items()}
        assert got == {case: EXPECTED.get(case, "refused") for case in CASES}
        tls = ["--cacert", str(ca), "--dial-timeout=2s", "--command-timeout=3s"]
        rc, out, err = etcdctl(m.url, *tls, "--cert", str(pki["good"].cert), "--key", str(pki["good"].key),
                               "put", "k", "v")
        assert rc == 0 and out.strip() == "OK", err
        rc, out, err = etcdctl(m.url, *tls, "--cert", str(pki["revoked"].cert), "--key",
                               str(pki["revoked"].key), "get", "k")
        assert rc != 0 and "v" not in out, (out, err)
        if kind == "etcdlite":
            log = m.log_path.read_text(errors="replace")
            raw = serial_of(pki["revoked"].cert)
            assert f"transport: certificate serial {raw.to_bytes((raw.bit_length() + 7) // 8, 'big').hex()} " \
                   "revoked" in log, m.log_tail()
            assert "client certificate authentication failed" in log
    finally:
        P.kill_all([m])
        reg.cleanup()


# ---------------------------------------------------------------------------
# peers: a member whose certificate is revoked is not let in


def _status(m: P.Member, timeout: float = 1.0):
    with grpc.insecure_channel(m.endpoint) as ch:
        try:
            return rpc_pb2_grpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=timeout)
        except grpc.RpcError:
            return None


@pytest.mark.process
def test_a_member_with_a_revoked_peer_certificate_is_not_let_in(tmp_path):
    """m2's peer certificate is on the --peer-crl-file every member has: m0 and m1
    make a cluster, m2 finds no leader and gets no data while they log why; with a
    new certificate of the same CA m2 joins and catches up."""
    ca = CA(tmp_path / "pki", name="peer-ca", cn="etcd-peer-ca")
    reg = P.Registry()
    members = [P.Member("etcdlite", f"m{i}", tmp_path, {}, reg) for i in range(3)]
    issued = {m.name: ca.issue(m.name, m.name, server=True, client=True, ips=("127.0.0.1",)) for m in members}
    crl = write_crl(ca, tmp_path / "peer-crl.pem", [serial_of(issued["m2"].cert)], der=True)
    # pysyncobj's member of the greater address dials: m2 in the middle dials one and is dialled
    # by the other, so both sides' checks are needed to keep it out
    addresses = sorted((f"127.0.0.1:{m.peer_port}", m.peer_port) for m in members)
    for m, (_, port) in zip((members[0], members[2], members[1]), addresses):
        m.peer_port = port
        m.peer_scheme = "https"
    for m in members:
        m.initial_cluster = ",".join(f"{x.name}={x.peer_url}" for x in members)
        m.extra_flags = dict(peer_cert_file=issued[m.name].cert, peer_key_file=issued[m.name].key,
                             peer_trusted_ca_file=ca.cert_path, peer_client_cert_auth=True, peer_crl_file=crl,
                             peer_cert_allowed_hostname="127.0.0.1", cipher_suites=SUITE_GO)
    try:
        for m in members:
            m.launch()
        for m in members[:2]:
            m.wait_ready()
        value = secrets.token_hex(8).encode()
        with Client(members[0].endpoint) as c:
            c.put(b"/crl/k", value)
        wait_until(lambda: _has(members[1], b"/crl/k", value), 10, what="the write on m1")
        m2 = members[2]
        deadline = time.monotonic() + 2.0  # a few election timeouts: heartbeats would have reached it
        while time.monotonic() < deadline:
            assert m2.alive, m2.log_tail()
            st = _status(m2, timeout=0.5)
            assert st is None or st.leader == 0, "the revoked member found a leader"
            assert not _has(m2, b"/crl/k", value), "the revoked member got data"
            time.sleep(0.2)
        logs = lambda: "".join(m.log_path.read_text(errors="replace") for m in members[:2])  # noqa: E731
        wait_until(lambda: "revoked" in logs(), 10, what="m0 or m1 refusing m2")
        assert "peer connection" in logs() and "transport: certificate serial" in logs()
        # the same member with an unrevoked certificate gets in
        m2.kill()
        fresh = ca.issue("m2-new", "m2", server=True, client=True, ips=("127.0.0.1",))
        m2.extra_flags.update(peer_cert_file=fresh.cert, peer_key_file=fresh.key)
        m2.start()
        wait_until(lambda: _has(m2, b"/crl/k", value), 10, what="the write on m2")
    finally:
        P.kill_all(members)
        reg.cleanup()


# ---------------------------------------------------------------------------
# PeerTLS's checks, on handshakes in memory


def _handshake(client: PeerTLS, server: PeerTLS) -> tuple[str | None, str | None]:
    """Both ends' refusals (None: let in) after a TLS handshake between them in memory."""
    c, c_in, c_out = client.wrap(False, "127.0.0.1")
    s, s_in, s_out = server.wrap(True, None)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, obj in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        if c_out.pending:
            s_in.write(c_out.read())
        if s_out.pending:
            c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values()), "the handshake did not finish"
    return client.refusal(c, server_side=False), server.refusal(s, server_side=True)


@pytest.fixture(scope="module")
def peer_ca(tmp_path_factory):
    return CA(tmp_path_factory.mktemp("peerflags"), name="peer-ca", cn="etcd-peer-ca")


def test_peer_allowed_hostname_is_checked_both_ways(peer_ca):
    ca = peer_ca

    def tls(name, **kw):
        issued = ca.issue(name, name, server=True, client=True, **kw)
        return PeerTLS(str(issued.cert), str(issued.key), str(ca.cert_path), client_cert_auth=True,
                       allowed_hostname="peer.example")

    named = dict(ips=("127.0.0.1",), dns_names=("peer.example",))
    assert _handshake(tls("a", **named), tls("b", **named)) == (None, None)
    wildcard = dict(ips=("127.0.0.1",), dns_names=("*.example",))
    assert _handshake(tls("c", **wildcard), tls("d", **named)) == (None, None)
    refused = "client certificate authentication failed"
    # the dialling member's certificate lacks the name: the accepting one refuses it, and the other way
    assert _handshake(tls("e", ips=("127.0.0.1",)), tls("f", **named)) == (None, refused)
    assert _handshake(tls("g", **named), tls("h", ips=("127.0.0.1",))) == (refused, None)


def test_peer_crl_is_checked_both_ways_and_read_again_when_it_changes(peer_ca, tmp_path):
    ca = peer_ca
    a = ca.issue("crl-a", "a", server=True, client=True, ips=("127.0.0.1",))
    b = ca.issue("crl-b", "b", server=True, client=True, ips=("127.0.0.1",))
    crl_path = write_crl(ca, tmp_path / "crl.pem", [serial_of(b.cert)])
    crl = RevocationList("--peer-crl-file", str(crl_path))

    def tls(issued):
        return PeerTLS(str(issued.cert), str(issued.key), str(ca.cert_path), client_cert_auth=True, crl=crl)

    raw = serial_of(b.cert)
    why = f"transport: certificate serial {raw.to_bytes((raw.bit_length() + 7) // 8, 'big').hex()} revoked"
    assert _handshake(tls(b), tls(a)) == (None, why)  # a accepts b: refused
    assert _handshake(tls(a), tls(b)) == (why, None)  # a dials b: refused too
    write_crl(ca, crl_path, [], der=True)  # a new CRL without b (DER this time)
    os.utime(crl_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert _handshake(tls(b), tls(a)) == (None, None)


def test_peer_cipher_suites_limit_tls12_on_both_sides(peer_ca):
    ca = peer_ca

    def tls(name, tls12_ciphers=None, **kw):
        issued = ca.issue(name, name, server=True, client=True, ips=("127.0.0.1",))
        t = PeerTLS(str(issued.cert), str(issued.key), str(ca.cert_path), client_cert_auth=True, **kw)
        if tls12_ciphers:
            for ctx in (t.client_context, t.server_context):
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2
                ctx.set_ciphers(tls12_ciphers)
        return t

    limited = dict(cipher_suites=(SUITE_GO,))
    assert _handshake(tls("s1", SUITE_OPENSSL), tls("s2", **limited)) == (None, None)
    for client, server in ((tls("s3", OTHER_SUITE), tls("s4", **limited)),   # dialling an etcdlite
                           (tls("s5", **limited), tls("s6", OTHER_SUITE))):  # an etcdlite dialling
        with pytest.raises(ssl.SSLError, match="NO_SHARED_CIPHER|HANDSHAKE_FAILURE|no shared cipher"):
            _handshake(client, server)


def test_go_verify_hostname_cases(peer_ca):
    ca = peer_ca

    def cert(**kw):
        return x509.load_pem_x509_certificate(ca.issue("h", "cn.example", **kw).cert.read_bytes())

    c = cert(dns_names=("*.example.com", "Exact.Example"), ips=("10.0.0.1", "::1"))
    assert go_verify_hostname(c, "a.example.com") and go_verify_hostname(c, "A.Example.com.")
    assert not go_verify_hostname(c, "a.b.example.com") and not go_verify_hostname(c, "example.com")
    assert go_verify_hostname(c, "exact.example") and go_verify_hostname(c, "10.0.0.1")
    assert go_verify_hostname(c, "[::1]") and not go_verify_hostname(c, "10.0.0.2")
    assert not go_verify_hostname(cert(), "cn.example")  # no Common Name fallback


# ---------------------------------------------------------------------------
# start-up errors, etcd's words (etcd's own, side by side, where it says them at start)


def _etcd_exit_message(tmp_path: Path, *args: str) -> str:
    port, peer = P.free_port(), P.free_port()
    argv = [P.ETCD_BIN, "--data-dir", str(tmp_path / f"e{port}"),
            "--listen-client-urls", f"http://127.0.0.1:{port}", "--advertise-client-urls",
            f"http://127.0.0.1:{port}", *args]
    if "--listen-peer-urls" not in args:
        argv += ["--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
                 f"http://127.0.0.1:{peer}", "--initial-cluster", f"default=http://127.0.0.1:{peer}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
    p = subprocess.run(argv, capture_output=True, timeout=15, env=env)
    assert p.returncode != 0
    return p.stderr.decode(errors="replace")


def _etcdlite_exit_message(tmp_path: Path, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "etcdlite", "--data-dir", str(tmp_path / "l"),
                        "--listen-client-urls", f"http://127.0.0.1:{P.free_port()}", *args],
                       capture_output=True, timeout=15, cwd=str(P.REPO))
    assert p.returncode == 2, p.stderr
    return p.stderr.decode(errors="replace")


@pytest.mark.process
def test_startup_errors_are_etcds(tmp_path, peer_ca):
    P.require_binary(P.ETCD_BIN, "etcd (the real etcd 3.4 server)")
    bad = ["--cipher-suites", f"{SUITE_GO},TLS_FOO"]
    want = 'unexpected TLS cipher suite "TLS_FOO"'
    assert want in _etcd_exit_message(tmp_path, *bad)
    assert f"etcdlite: {want}" in _etcdlite_exit_message(tmp_path, *bad)

    issued = peer_ca.issue("start", "start", server=True, client=True, ips=("127.0.0.1",))
    peer = P.free_port()
    both = ["--listen-peer-urls", f"https://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
            f"https://127.0.0.1:{peer}", "--initial-cluster", f"default=https://127.0.0.1:{peer}",
            "--peer-cert-file", str(issued.cert), "--peer-key-file", str(issued.key),
            "--peer-cert-allowed-cn", "a", "--peer-cert-allowed-hostname", "b"]
    want = 'AllowedCN and AllowedHostname are mutually exclusive (cn="a", hostname="b")'
    assert want in _etcd_exit_message(tmp_path, *both)
    assert f"etcdlite: {want}" in _etcdlite_exit_message(tmp_path, "--name", "default", *both)

    # a CRL that cannot be read or parsed stops etcdlite at start (etcd would refuse every client later)
    for crl in (tmp_path / "missing.pem", issued.cert):
        out = _etcdlite_exit_message(tmp_path, "--listen-client-urls", f"https://127.0.0.1:{P.free_port()}",
                                     "--cert-file", str(issued.cert), "--key-file", str(issued.key),
                                     "--client-crl-file", str(crl))
        assert "--client-crl-file" in out and ("cannot read it" in out or "revocation list" in out), out
