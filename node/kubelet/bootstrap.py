"""The kubelet's TLS bootstrap (--bootstrap-kubeconfig, --kubeconfig, --cert-dir), as
Kubernetes' kubelet does it: a node that has no client certificate of its own yet
makes a key, asks for a certificate with a CertificateSigningRequest (signer
kubernetes.io/kube-apiserver-client-kubelet, CN system:node:<name>, O system:nodes)
using the bootstrap kubeconfig's credentials (a bootstrap token), waits until the
controller-manager approved and signed it, then writes the certificate and key to
<cert-dir>/kubelet-client-<time>.pem (kubelet-client-current.pem links to it) and
--kubeconfig naming the link, which it uses from then on (node.kubelet.certrotation
renews the certificate before it expires and moves the link). A restart with a kubeconfig whose
certificate is still good skips all this. The key made while waiting is kept
(kubelet-client.key.tmp), so a restart asks again with the same key, and the same
request name, instead of leaving a CSR behind per try.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import os
import time

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apiserver.errors import ApiError
from apiserver.pb import certificates_pb2
from apiserver.rest import kubeconfig as kubeconfigs

log = logging.getLogger("node.kubelet.bootstrap")

SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
USAGES = ("digital signature", "client auth")  # an EC key: no key encipherment, as the kubelet asks
CURRENT = "kubelet-client-current.pem"
PENDING_KEY = "kubelet-client.key.tmp"
POLL = 0.2


class BootstrapError(Exception):
    """The certificate cannot be had (denied, failed, timed out): what to do is in the message."""


def _write(path: str, data: bytes, mode: int = 0o600) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def usable(kubeconfig: str, node_name: str, *, margin: float = 60.0) -> bool:
    """True when ``kubeconfig`` holds a client certificate for ``node_name`` valid for
    ``margin`` seconds more (the kubelet then needs no bootstrap)."""
    try:
        creds = kubeconfigs.load(kubeconfig)
        cert = x509.load_pem_x509_certificate(creds.cert)
    except (OSError, ValueError, yaml.YAMLError):
        return False
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    now = datetime.datetime.now(datetime.timezone.utc)
    return bool(cns) and cns[0].value == f"system:node:{node_name}" and bool(creds.key) and \
        cert.not_valid_after_utc > now + datetime.timedelta(seconds=margin)


def pending_key(cert_dir: str, file: str = PENDING_KEY):
    """The key waiting for its certificate, made (and kept, so a restart asks again with it) if none."""
    path = os.path.join(cert_dir, file)
    try:
        with open(path, "rb") as f:
            return serialization.load_pem_private_key(f.read(), None)
    except (OSError, ValueError):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        return key


def request_pem(key, node_name: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}")])
    req = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return req.public_bytes(serialization.Encoding.PEM)


def csr_name(key, node_name: str) -> str:
    """node-csr-<digest of the public key and the node>: the same key asks under the same name."""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "node-csr-" + hashlib.sha256(der + node_name.encode()).hexdigest()[:43]


def write_kubeconfig(path: str, server: str, ca: bytes, cert_dir: str) -> None:
    """The kubelet's kubeconfig: certificate and key both from kubelet-client-current.pem, as
    upstream's, so a rotated certificate is read from the link that moved to it."""
    current = os.path.abspath(os.path.join(cert_dir, CURRENT))
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "default-context",
           "clusters": [{"name": "default-cluster", "cluster": {
               "server": server, **({"certificate-authority-data": base64.b64encode(ca).decode()} if ca else {})}}],
           "contexts": [{"name": "default-context", "context": {"cluster": "default-cluster",
                                                                 "namespace": "default", "user": "default-auth"}}],
           "users": [{"name": "default-auth", "user": {"client-certificate": current, "client-key": current}}],
           "preferences": {}}
    _write(path, yaml.safe_dump(cfg, sort_keys=False).encode())


def _create(client, csr, node_name: str, deadline: float) -> None:
    """Creates ``csr`` (one of this name already there is ours: same key, same name). As the
    kubelet, tries again until ``deadline`` while the apiserver is not up or does not know the
    token yet (a plane whose bootstrap token Secret is written once the apiserver answers)."""
    name = csr.metadata.name
    while True:
        try:
            client.create(csr)
            log.info("%s: asked for a client certificate (csr %s)", node_name, name)
            return
        except ApiError as e:
            if e.reason == "AlreadyExists":
                return
            if e.reason not in ("Unauthorized", "Forbidden", "ServiceUnavailable", "Timeout", "InternalError") \
                    or time.monotonic() > deadline:
                raise BootstrapError(f"cannot create CertificateSigningRequest {name}: {e.message} (with a "
                                     "bootstrap token: is its Secret in kube-system, unexpired, and is its group "
                                     "allowed to create certificatesigningrequests?)") from None
            log.info("%s: cannot ask for a certificate yet (%s); trying again", node_name, e.message)
        time.sleep(1.0)


def bootstrap(node_name: str, kubeconfig: str, bootstrap_kubeconfig: str, cert_dir: str, *,
              timeout: float = 300.0) -> str:
    """``kubeconfig`` with a client certificate of node ``node_name``'s own, asked for with
    ``bootstrap_kubeconfig``'s credentials when it has none yet. Returns ``kubeconfig``;
    raises BootstrapError (also for an unreadable bootstrap kubeconfig)."""
    from apiserver.client import Client

    if usable(kubeconfig, node_name):
        log.info("%s: using the client certificate of %s", node_name, kubeconfig)
        return kubeconfig
    try:
        boot = kubeconfigs.load(bootstrap_kubeconfig)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise BootstrapError(f"cannot read --bootstrap-kubeconfig {bootstrap_kubeconfig}: {e}") from None
    os.makedirs(cert_dir, mode=0o700, exist_ok=True)
    key = pending_key(cert_dir)
    with Client(boot.address, kubeconfig=bootstrap_kubeconfig, timeout=10.0) as client:
        cert = request_certificate(client, client_csr(key, node_name), node_name, time.monotonic() + timeout,
                                   timeout)
    pem_path = store(cert_dir, cert, key)
    write_kubeconfig(kubeconfig, boot.server, boot.ca, cert_dir)
    os.unlink(os.path.join(cert_dir, PENDING_KEY))
    log.info("%s: client certificate written to %s", node_name, pem_path)
    return kubeconfig


def client_csr(key, node_name: str) -> certificates_pb2.CertificateSigningRequest:
    """The CertificateSigningRequest for a client certificate of node ``node_name`` with ``key``."""
    csr = certificates_pb2.CertificateSigningRequest()
    csr.metadata.name = csr_name(key, node_name)
    csr.spec.request = request_pem(key, node_name)
    csr.spec.signer_name = SIGNER
    csr.spec.usages.extend(USAGES)
    return csr


def request_certificate(client, csr, node_name: str, deadline: float, timeout: float) -> bytes:
    """Asks with ``client``'s credentials (a bootstrap token, or the node's current
    certificate when renewing) for the certificate ``csr`` asks; waits until it is signed
    (until ``deadline``, monotonic) and returns its PEM; raises BootstrapError."""
    name = csr.metadata.name
    _create(client, csr, node_name, deadline)
    while True:
        try:
            got = client.get("certificatesigningrequests", name, "")
        except ApiError as e:
            raise BootstrapError(f"cannot read CertificateSigningRequest {name}: {e.message}") from None
        if got.spec.request != csr.spec.request:
            raise BootstrapError(f"CertificateSigningRequest {name} exists with another request; delete it")
        for c in got.status.conditions:
            if c.type in ("Denied", "Failed"):
                raise BootstrapError(f"CertificateSigningRequest {name} was {c.type.lower()}: {c.reason} "
                                     f"{c.message}".rstrip())
        if got.status.certificate:
            return got.status.certificate
        if time.monotonic() > deadline:
            raise BootstrapError(f"CertificateSigningRequest {name} not signed within {timeout:.0f}s: is it "
                                 f"approved (kubectl get csr {name}; kubectl certificate approve {name}) and "
                                 "does the controller-manager run csrsigning (--cluster-signing-cert-file)?")
        time.sleep(POLL)


def store(cert_dir: str, cert: bytes, key, kind: str = "client") -> str:
    """Writes ``cert`` and ``key`` to <cert-dir>/kubelet-<kind>-<time>.pem and moves the
    kubelet-<kind>-current.pem link to it, each in one rename (a reader sees the old pair or
    the new one, never half); returns the new file's path."""
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H-%M-%S")
    pem_path = os.path.join(cert_dir, f"kubelet-{kind}-{stamp}.pem")
    _write(pem_path, cert + key_pem)
    current = os.path.join(cert_dir, f"kubelet-{kind}-current.pem")
    link = f"{current}.new"
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(os.path.basename(pem_path), link)
    os.replace(link, current)
    return pem_path
