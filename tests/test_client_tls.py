"""Client TLS with etcd's flags: --cert-file, --key-file, --trusted-ca-file,
--client-cert-auth; https:// listen URLs are served with TLS, http:// in plain
text. Certificates are generated per test run with `cryptography`."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from harness import procs as P
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etcdlite.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

pytestmark = pytest.mark.process

# ---------------------------------------------------------------------------
# a throwaway PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _write_cert(path: Path, cert) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class CA:
    def __init__(self, directory: Path, cn: str):
        now = datetime.datetime.now(datetime.UTC)
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{cn}.pem"
        _write_cert(self.path, self.cert)

    def issue(self, cn: str, *, server: bool) -> tuple[Path, Path]:
        """(cert.pem, key.pem) signed by this CA: a server certificate for
        127.0.0.1 (IP SAN) or a client certificate."""
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                             x509.DNSName("localhost")]),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{cn}.pem", self.dir / f"{cn}-key.pem"
        _write_cert(cert_path, cert)
        _write_key(key_path, key)
        return cert_path, key_path


@dataclass
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path          # an unrelated CA
    rogue_cert: Path        # a client certificate signed by the unrelated CA
    rogue_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca = CA(d, "test-ca")
    other = CA(d, "other-ca")
    server_cert, server_key = ca.issue("server", server=True)
    client_cert, client_key = ca.issue("client", server=False)
    rogue_cert, rogue_key = other.issue("rogue-client", server=False)
    return PKI(ca.path, server_cert, server_key, client_cert, client_key, other.path, rogue_cert, rogue_key)


# ---------------------------------------------------------------------------
# a member served over https, readiness checked over TLS


def _secure_ready_check(endpoint: str, creds: grpc.ChannelCredentials, rpc_timeout: float) -> str | None:
    with grpc.secure_channel(endpoint, creds) as ch:
        try:
            st = rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=rpc_timeout)
        except grpc.RpcError as e:
            return f"Status: {e.code().name} {e.details()}"
        if not st.leader:
            return "Status: no leader yet"
        try:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"\x00tests-readiness-probe"),
                                          timeout=rpc_timeout)
        except grpc.RpcError as e:
            return f"Range: {e.code().name} {e.details()}"
    return None


class TLSMember(P.Member):
    """procs.Member listening on an https:// client URL; readiness is probed
    with a TLS channel trusting `probe_ca` (and presenting `probe_cert` if set)."""

    probe_ca: Path
    probe_cert: tuple[Path, Path] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    @property
    def https_endpoint(self) -> str:
        return self.url

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return client_creds(self.probe_ca, self.probe_cert)

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        reason = "not polled yet"
        while True:
            if self.proc is None or self.proc.poll() is not None:
                rc = None if self.proc is None else self.proc.returncode
                raise P.MemberNotReady(
                    f"member {self.name!r} exited with rc={rc} before becoming ready.\n"
                    f"--- last lines of {self.log_path}:\n{self.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise P.MemberNotReady(
                    f"member {self.name!r} ({self.url}) not ready after {timeout:.0f}s "
                    f"(last probe: {reason}).\n--- last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                reason = _secure_ready_check(self.endpoint, self.channel_credentials(),
                                             rpc_timeout=max(0.2, min(2.0, left)))
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
            if reason is None:
                return
            time.sleep(0.1)


def client_creds(ca: Path, cert: tuple[Path, Path] | None = None) -> grpc.ChannelCredentials:
    if cert is None:
        return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes(),
                                        private_key=cert[1].read_bytes(),
                                        certificate_chain=cert[0].read_bytes())


def start_tls_member(procs, tmp_path, pki: PKI, name: str, *, client_cert_auth: bool = False) -> TLSMember:
    flags = dict(cert_file=pki.server_cert, key_file=pki.server_key)
    if client_cert_auth:
        flags.update(trusted_ca_file=pki.ca, client_cert_auth=True)
    m = TLSMember("etcdlite", name, tmp_path, flags, procs, P.DEFAULT_READY_TIMEOUT)
    m.probe_ca = pki.ca
    m.probe_cert = (pki.client_cert, pki.client_key) if client_cert_auth else None
    return m.start()


def run_etcdlite(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run etcdlite expecting it to refuse to start."""
    return subprocess.run([P.PYTHON, "-m", "etcdlite", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(P.REPO), stdin=subprocess.DEVNULL)


# quick failures: etcdctl otherwise retries for its 5 s dial timeout
FAST = ("--dial-timeout=3s", "--command-timeout=5s")


# ---------------------------------------------------------------------------
# serving TLS


def test_etcdctl_over_https(procs, tmp_path, pki, etcdctl):
    m = start_tls_member(procs, tmp_path, pki, "tls0")
    rc, out, err = etcdctl(m.url, "--cacert", pki.ca, "put", "foo", "bar")
    assert rc == 0, err
    assert out.strip() == "OK"
    rc, out, err = etcdctl(m.url, "--cacert", pki.ca, "get", "foo")
    assert rc == 0, err
    assert out.split() == ["foo", "bar"]
    # an endpoint without a scheme: etcdctl uses TLS when given --cacert
    rc, out, err = etcdctl(m.endpoint, "--cacert", pki.ca, "get", "foo", "--print-value-only")
    assert rc == 0, err
    assert out.strip() == "bar"


def test_plain_text_clients_fail_against_https(procs, tmp_path, pki, etcdctl):
    m = start_tls_member(procs, tmp_path, pki, "tls1")
    with grpc.insecure_channel(m.endpoint) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"foo"), timeout=3)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    rc, out, err = etcdctl(m.endpoint, *FAST, "get", "foo")  # no TLS flags: plain text
    assert rc != 0
    assert out == ""


def test_etcdctl_with_the_wrong_ca_fails(procs, tmp_path, pki, etcdctl):
    m = start_tls_member(procs, tmp_path, pki, "tls2")
    rc, out, err = etcdctl(m.url, *FAST, "--cacert", pki.other_ca, "get", "foo")
    assert rc != 0
    assert out == ""
    assert "certificate" in err or "deadline exceeded" in err, err


def test_python_grpc_secure_channel(procs, tmp_path, pki):
    m = start_tls_member(procs, tmp_path, pki, "tls3")
    with grpc.secure_channel(m.endpoint, client_creds(pki.ca)) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        put = kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), timeout=10)
        got = kv.Range(rpc_pb2.RangeRequest(key=b"k"), timeout=10)
    assert got.header.revision == put.header.revision
    assert [(kv.key, kv.value) for kv in got.kvs] == [(b"k", b"v")]
    # a client that does not trust the CA cannot connect
    with grpc.secure_channel(m.endpoint, client_creds(pki.other_ca)) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=3)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_gateway_over_https(procs, tmp_path, pki):
    """The gRPC gateway on an https:// URL, for an HTTP/1.1 client (one that does not
    ask for h2 through ALPN), beside gRPC on the same port."""
    m = start_tls_member(procs, tmp_path, pki, "tls-gw")
    conn = http.client.HTTPSConnection("127.0.0.1", m.client_port, timeout=10,
                                       context=ssl.create_default_context(cafile=str(pki.ca)))
    try:
        conn.request("POST", "/v3/kv/put", body=json.dumps({"key": "Zm9v", "value": "YmFy"}))
        put = conn.getresponse()
        assert put.status == 200
        revision = json.loads(put.read())["header"]["revision"]
        conn.request("GET", "/health")
        health = conn.getresponse()
        assert (health.status, health.read()) == (200, b'{"health":"true"}')
    finally:
        conn.close()
    with grpc.secure_channel(m.endpoint, client_creds(pki.ca)) as ch:
        got = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"foo"), timeout=10)
    assert [(kv.value, kv.mod_revision) for kv in got.kvs] == [(b"bar", int(revision))]


def test_mutual_tls(procs, tmp_path, pki, etcdctl):
    m = start_tls_member(procs, tmp_path, pki, "mtls0", client_cert_auth=True)
    # no client certificate: rejected
    rc, out, err = etcdctl(m.url, *FAST, "--cacert", pki.ca, "put", "foo", "bar")
    assert rc != 0
    assert out == ""
    # a client certificate from another CA: rejected
    rc, out, err = etcdctl(m.url, *FAST, "--cacert", pki.ca, "--cert", pki.rogue_cert,
                           "--key", pki.rogue_key, "put", "foo", "bar")
    assert rc != 0
    assert out == ""
    # a client certificate signed by --trusted-ca-file: served
    auth = ("--cacert", pki.ca, "--cert", pki.client_cert, "--key", pki.client_key)
    rc, out, err = etcdctl(m.url, *auth, "put", "foo", "bar")
    assert rc == 0, err
    rc, out, err = etcdctl(m.url, *auth, "get", "foo", "--print-value-only")
    assert rc == 0, err
    assert out.strip() == "bar"
    # the same from Python: without a client certificate the handshake fails
    with grpc.secure_channel(m.endpoint, client_creds(pki.ca)) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"foo"), timeout=3)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(m.endpoint, client_creds(pki.ca, (pki.client_cert, pki.client_key))) as ch:
        got = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"foo"), timeout=10)
    assert [kv.value for kv in got.kvs] == [b"bar"]


def test_https_and_http_urls_side_by_side(procs, tmp_path, pki, etcdctl):
    """One URL per scheme: TLS on the https URL, plain text on the http one."""
    plain_port = P.free_port()
    plain = f"http://127.0.0.1:{plain_port}"

    class Mixed(TLSMember):
        def argv(self):
            argv = super().argv()
            i = argv.index("--listen-client-urls")
            argv[i + 1] = f"{self.url},{plain}"
            return argv

    m = Mixed("etcdlite", "mixed0", tmp_path, dict(cert_file=pki.server_cert, key_file=pki.server_key),
              procs, P.DEFAULT_READY_TIMEOUT)
    m.probe_ca = pki.ca
    m.start()
    rc, out, err = etcdctl(m.url, "--cacert", pki.ca, "put", "k", "over-tls")
    assert rc == 0, err
    rc, out, err = etcdctl(f"127.0.0.1:{plain_port}", "get", "k", "--print-value-only")
    assert rc == 0, err
    assert out.strip() == "over-tls"


# ---------------------------------------------------------------------------
# refusing to start


def _member_args(tmp_path, url: str) -> list[str]:
    peer = f"http://127.0.0.1:{P.free_port()}"
    return ["--name", "bad", "--data-dir", str(tmp_path / "bad.etcd"),
            "--listen-client-urls", url, "--listen-peer-urls", peer]


def _assert_refused(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    for needle in needles:
        assert needle in p.stderr, p.stderr


def test_https_url_without_certificate_is_refused(tmp_path):
    url = f"https://127.0.0.1:{P.free_port()}"
    p = run_etcdlite(*_member_args(tmp_path, url))
    _assert_refused(p, url, "--cert-file", "--key-file")
    assert not (tmp_path / "bad.etcd").exists()


def test_https_url_with_only_a_certificate_is_refused(tmp_path, pki):
    url = f"https://127.0.0.1:{P.free_port()}"
    p = run_etcdlite(*_member_args(tmp_path, url), "--cert-file", str(pki.server_cert))
    _assert_refused(p, "missing --key-file")
    assert "--cert-file" not in p.stderr.split("missing", 1)[1]


def test_certificate_without_https_url_is_refused(tmp_path, pki):
    p = run_etcdlite(*_member_args(tmp_path, f"http://127.0.0.1:{P.free_port()}"),
                     "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key))
    _assert_refused(p, "https://")


def test_client_cert_auth_needs_trusted_ca(tmp_path, pki):
    p = run_etcdlite(*_member_args(tmp_path, f"https://127.0.0.1:{P.free_port()}"),
                     "--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key),
                     "--client-cert-auth")
    _assert_refused(p, "--trusted-ca-file")


@pytest.mark.parametrize("which", ["cert", "key", "ca"])
def test_missing_tls_file_is_refused(tmp_path, pki, which):
    files = {"cert": str(pki.server_cert), "key": str(pki.server_key), "ca": str(pki.ca)}
    files[which] = str(tmp_path / "nonexistent.pem")
    p = run_etcdlite(*_member_args(tmp_path, f"https://127.0.0.1:{P.free_port()}"),
                     "--cert-file", files["cert"], "--key-file", files["key"],
                     "--trusted-ca-file", files["ca"], "--client-cert-auth")
    flag = {"cert": "--cert-file", "key": "--key-file", "ca": "--trusted-ca-file"}[which]
    _assert_refused(p, flag, "nonexistent.pem", "No such file")


def test_unreadable_or_mismatched_tls_files_are_refused(tmp_path, pki):
    url = f"https://127.0.0.1:{P.free_port()}"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    p = run_etcdlite(*_member_args(tmp_path, url), "--cert-file", str(garbage),
                     "--key-file", str(pki.server_key))
    _assert_refused(p, "--cert-file", "no PEM certificate")
    p = run_etcdlite(*_member_args(tmp_path, url), "--cert-file", str(pki.server_cert),
                     "--key-file", str(garbage))
    _assert_refused(p, "--key-file", "private key")
    # the client's key with the server's certificate
    p = run_etcdlite(*_member_args(tmp_path, url), "--cert-file", str(pki.server_cert),
                     "--key-file", str(pki.client_key))
    _assert_refused(p, "is not the key of")
