"""The kubelet's serving certificate by CertificateSigningRequest (--rotate-server-certificates,
the kubelet config's serverTLSBootstrap): without --tls-cert-file, the kubelet asks with its
client credentials for a certificate of signer kubernetes.io/kubelet-serving (CN
system:node:<name>, O system:nodes, its addresses and name as SANs, digital signature +
server auth), keeps it in <cert-dir>/kubelet-server-<time>.pem (kubelet-server-current.pem
links to it) and renews it as the client certificate (node.kubelet.certrotation). Nobody
approves such a request on its own (upstream's csrapproving does not: it cannot tell the
SANs are the node's): an administrator does, with `kubectl certificate approve`.

Its API port is served from the start: until there is a certificate a connection is closed
before any handshake; each connection takes the certificate current when it is accepted, so
a renewed one is used by the next connection.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import asyncio
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from apiserver.pb import certificates_pb2
from node.kubelet.auth import server_ssl_context
from node.kubelet.bootstrap import pending_key
from node.kubelet.certrotation import CertificateRotation

log = logging.getLogger("node.kubelet.servingcert")

SIGNER = "kubernetes.io/kubelet-serving"
USAGES = ("digital signature", "server auth")  # an EC key: no key encipherment
CURRENT = "kubelet-server-current.pem"
PENDING_KEY = "kubelet-server.key.tmp"


def serving_csr(key, node_name: str, addresses: list[str]) -> certificates_pb2.CertificateSigningRequest:
    """The request for ``node_name``'s serving certificate: ``addresses`` (IPs, else DNS names)
    and the node's name as SANs."""
    sans: list[x509.GeneralName] = [x509.DNSName(node_name)]
    for a in addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            sans.append(x509.DNSName(a))
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}")])
    req = (x509.CertificateSigningRequestBuilder().subject_name(subject)
           .add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(key, hashes.SHA256()))
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    csr = certificates_pb2.CertificateSigningRequest()
    csr.metadata.name = "csr-" + hashlib.sha256(der + node_name.encode()).hexdigest()[:40]
    csr.spec.request = req.public_bytes(serialization.Encoding.PEM)
    csr.spec.signer_name = SIGNER
    csr.spec.usages.extend(USAGES)
    return csr


class ServingCertificate(CertificateRotation):
    """The kubelet API's certificate, asked for by CSR with the kubelet's client credentials
    (``kubeconfig``: its path, None for $KUBECONFIG's) and renewed when due; ``context()`` is
    the SSLContext its server listens with."""

    kind = "server"

    def __init__(self, node_name: str, cert_dir: str, addresses: list[str], *, kubeconfig: str | None = None,
                 client_ca_file: str = "", **options) -> None:
        super().__init__(node_name, cert_dir, **options)
        self.addresses = [a for a in addresses if a and a not in ("0.0.0.0", "::")]
        self.kubeconfig = kubeconfig
        self.client_ca_file = client_ca_file
        self.path = os.path.join(cert_dir, CURRENT)
        self._current = None  # grpclite.tls.ServerTLS of the certificate, once there is one
        os.makedirs(cert_dir, mode=0o700, exist_ok=True)
        self.on_rotated.insert(0, self._load)
        self._load()

    def certificate(self) -> x509.Certificate | None:
        try:
            with open(self.path, "rb") as f:
                return x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError):
            return None

    def new_key(self):
        # kept while the request waits for an administrator: asking again (a retry, a restart)
        # names the same request instead of leaving one more behind
        return pending_key(self.cert_dir, PENDING_KEY)

    def new_csr(self, key):
        return serving_csr(key, self.node_name, self.addresses)

    def asker(self):
        from apiserver.client import Client

        return Client("", kubeconfig=self.kubeconfig, timeout=10.0)

    def stored(self) -> None:
        os.unlink(os.path.join(self.cert_dir, PENDING_KEY))

    def _load(self) -> None:
        if self.certificate() is None:
            return
        self._current = server_ssl_context(self.path, self.path, self.client_ca_file)
        log.info("%s: serving with %s", self.node_name, os.path.realpath(self.path))

    def context(self) -> "_CurrentCertificate":
        """What the port listens with (GrpcServer.listen's ssl_context): each connection is
        served with the certificate current when it comes, and closed while there is none."""
        return _CurrentCertificate(self)


class _CurrentCertificate:
    def __init__(self, serving: ServingCertificate) -> None:
        self.serving = serving

    def protocol_factory(self, app_factory):
        def protocol() -> asyncio.BaseProtocol:
            current = self.serving._current
            if current is None:
                return _Refused()  # no serving certificate yet
            return current.protocol_factory(app_factory)()
        return protocol


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()
