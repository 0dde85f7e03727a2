"""A small PKI for a plane: one CA, a serving certificate for the apiserver,
a client certificate for every component (the identity RBAC knows it by:
CN = user, O = groups, as kube-apiserver's x509 authenticator reads them) and
the ServiceAccount token signing key. What `make run` and the secure test
harness make; kubeadm's layout in spirit (ca.crt, apiserver.crt, sa.key, ...).

Keys are EC P-256 (fast to make; Go and OpenSSL both speak it) except the
ServiceAccount key, RSA 2048, for RS256 tokens as Kubernetes signs them.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# where the apiserver may be reached: loopback, the `kubernetes` Service's names and clusterIP (the
# first of the default service range), and its address on a plane's fabric, where pods reach it
# (node/network/fabric.py's CONTROL_PLANE_IP, the apiserver's --advertise-address there)
SERVER_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local")
SERVER_IPS = ("127.0.0.1", "10.96.0.1", "10.250.0.254")
VALIDITY = datetime.timedelta(days=365)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def subject(cn: str, groups: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


@dataclass
class Issued:
    cert: Path
    key: Path


class CA:
    """A certificate authority whose certificate and key live in ``directory``
    (ca.crt, ca.key): made on first use, loaded after."""

    def __init__(self, directory: str | os.PathLike, name: str = "ca", cn: str = "kubernetes-ca") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert_path = self.dir / f"{name}.crt"
        self.key_path = self.dir / f"{name}.key"
        if self.cert_path.exists() and self.key_path.exists():
            self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            self.key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder().subject_name(subject(cn)).issuer_name(subject(cn))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + 10 * VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256()))
        _write(self.key_path, _pem_key(self.key), private=True)
        _write(self.cert_path, _pem_cert(self.cert))

    @property
    def pem(self) -> bytes:
        return _pem_cert(self.cert)

    def issue(self, name: str, cn: str, groups: tuple[str, ...] = (), *, server: bool = False,
              client: bool = True, dns_names: tuple[str, ...] = (), ips: tuple[str, ...] = (),
              not_after: datetime.datetime | None = None) -> Issued:
        """<name>.crt and <name>.key in the CA's directory, signed by it (made
        again each call)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
                 ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder().subject_name(subject(cn, groups)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(not_after or now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False))
        if dns_names or ips:
            alt = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        _write(issued.key, _pem_key(key), private=True)
        _write(issued.cert, _pem_cert(cert))
        return issued


def service_account_key(directory: str | os.PathLike) -> tuple[Path, Path]:
    """(sa.key, sa.pub): the RSA key ServiceAccount tokens are signed with and
    its public half that verifies them; made on first use."""
    d = Path(directory)
    key_path, pub_path = d / "sa.key", d / "sa.pub"
    if not key_path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write(key_path, _pem_key(key), private=True)
        _write(pub_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub_path


# identity of every component, as kubeadm names them: (file name, CN, groups)
COMPONENTS = (
    ("admin", "kubernetes-admin", ("system:masters",)),
    ("controller-manager", "system:kube-controller-manager", ()),
    ("scheduler", "system:kube-scheduler", ()),
    ("kube-proxy", "system:kube-proxy", ()),
    ("dns", "system:coredns", ()),
    # simulated kubelets: many nodes in one process, one identity in system:nodes but no
    # system:node:NAME (which would tie it to one node)
    ("hollow-nodes", "system:hollow-nodes", ("system:nodes",)),
    # the cloud (issue 20): its controller-manager, the autoscaler, and its instances' kubelets
    # (one identity for every instance, see policy.py)
    ("cloud-controller-manager", "system:cloud-controller-manager", ()),
    ("cluster-autoscaler", "system:cluster-autoscaler", ()),
    ("cloud-nodes", "system:cloud-nodes", ("system:nodes",)),
    # what the apiserver presents to kubelets (--kubelet-client-certificate), bound to
    # system:kubelet-api-admin (policy.py)
    ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ()),
)


@dataclass
class PlanePKI:
    """Every file a secure plane needs, under one directory. etcd has a CA of its
    own (as kubeadm's etcd/ca): a component's certificate, signed by the cluster
    CA, does not open etcd; only the apiserver's etcd client certificate does."""

    dir: Path
    ca: CA
    apiserver: Issued
    clients: dict[str, Issued]
    sa_key: Path
    sa_pub: Path
    etcd_ca: CA
    etcd_server: Issued
    etcd_client: Issued

    def etcd_flags(self) -> dict[str, str]:
        """etcd's (and etcdlite's) client TLS flags: serve TLS, require certificates of the etcd CA."""
        return {"cert_file": str(self.etcd_server.cert), "key_file": str(self.etcd_server.key),
                "trusted_ca_file": str(self.etcd_ca.cert_path), "client_cert_auth": True}

    def apiserver_etcd_flags(self) -> dict[str, str]:
        return {"etcd_cafile": str(self.etcd_ca.cert_path), "etcd_certfile": str(self.etcd_client.cert),
                "etcd_keyfile": str(self.etcd_client.key)}

    def node(self, name: str) -> Issued:
        """The kubelet client certificate of node ``name`` (system:node:<name>, group system:nodes)."""
        issued = self.clients.get(f"node-{name}")
        if issued is None:
            issued = self.clients[f"node-{name}"] = self.ca.issue(
                f"node-{name}", f"system:node:{name}", ("system:nodes",))
        return issued

    def kubelet_serving(self, name: str) -> Issued:
        """The serving certificate of node ``name``'s kubelet API (every kubelet of a
        one-machine plane listens on 127.0.0.1), signed by the cluster CA, which is the
        apiserver's --kubelet-certificate-authority."""
        return self.ca.issue(f"kubelet-serving-{name}", f"system:node:{name}", ("system:nodes",), server=True,
                             client=False, dns_names=("localhost", name), ips=("127.0.0.1",))

    def kubelet_client_flags(self) -> dict[str, str]:
        """kube-apiserver's flags to reach kubelets with its own client certificate."""
        issued = self.clients["apiserver-kubelet-client"]
        return {"kubelet_client_certificate": str(issued.cert), "kubelet_client_key": str(issued.key),
                "kubelet_certificate_authority": str(self.ca.cert_path)}

    def apiserver_flags(self) -> dict[str, str]:
        """kube-apiserver's flags for these files (harness spelling: underscores)."""
        return {"tls_cert_file": str(self.apiserver.cert), "tls_private_key_file": str(self.apiserver.key),
                "client_ca_file": str(self.ca.cert_path), "service_account_key_file": str(self.sa_pub),
                "service_account_signing_key_file": str(self.sa_key)}


def plane_pki(directory: str | os.PathLike) -> PlanePKI:
    """The CA (kept once made), a fresh apiserver serving certificate and
    component client certificates, and the ServiceAccount key (kept)."""
    d = Path(directory)
    ca = CA(d)
    server = ca.issue("apiserver", "kube-apiserver", server=True, client=False,
                      dns_names=SERVER_NAMES, ips=SERVER_IPS)
    clients = {name: ca.issue(name, cn, groups) for name, cn, groups in COMPONENTS}
    sa_key, sa_pub = service_account_key(d)
    etcd_ca = CA(d, name="etcd-ca", cn="etcd-ca")
    etcd_server = etcd_ca.issue("etcd-server", "etcd", server=True, client=False, dns_names=("localhost",),
                                ips=("127.0.0.1",))
    etcd_client = etcd_ca.issue("apiserver-etcd-client", "kube-apiserver-etcd-client")
    return PlanePKI(d, ca, server, clients, sa_key, sa_pub, etcd_ca, etcd_server, etcd_client)
