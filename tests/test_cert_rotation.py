"""Kubelet client-certificate rotation (--rotate-certificates): a secure plane whose
csrsigning signs for 20 s (--cluster-signing-duration; half of it backdated), and one
hollow kubelet bootstrapped from a token. Its certificate manager renews before the
first certificate expires, with a CSR made under its own identity that csrapproving
approves as a `selfnodeclient` renewal; kubelet-client-current.pem moves to the new
file in one rename (a reader never sees half a pair); the node goes on heartbeating
after the first certificate expired (its connection was made again with the new one).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apiserver.auth import bootstrap as tokens
from apiserver.auth import pki as pkis
from apiserver.rest import kubeconfig as kubeconfigs
from harness.etcd_client import wait_until as poll
from harness.plane import Component, start_control_plane
from harness.procs import Registry
from node.kubelet import bootstrap
from node.kubelet.certrotation import ClientCertificateRotation, rotation_deadline
from tests.test_tls_bootstrap import _ready

pytestmark = pytest.mark.process

NODE = "rot-0"
DURATION = 20


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    reg = Registry()
    tmp = tmp_path_factory.mktemp("certrotation")
    pki = pkis.plane_pki(tmp / "pki")
    try:
        api = start_control_plane(tmp, reg, pki=pki, enable_bootstrap_token_auth=True,
                                  controller_manager_flags={"cluster_signing_duration": DURATION})
        admin = api.client("admin")
        token = tokens.new_token()
        admin.create(tokens.token_secret(token, description="test_cert_rotation"))
        boot = api.kubeconfig(tmp / "bootstrap-kubelet.conf", "", token=token)
        certs = tmp / "certs"
        Component(tmp, "hollow", "node.kubelet.hollow", api.endpoint, reg, nodes=1, prefix="rot-",
                  bootstrap_kubeconfig=boot, cert_dir=str(certs), bootstrap_timeout=30, heartbeat_interval=1,
                  log_level="info").start()
        with contextlib.closing(admin):
            poll(lambda: _ready(admin, NODE), 30, what="the hollow node bootstrapped and Ready")
            yield admin, pki, certs / NODE, str(boot)
    finally:
        reg.cleanup()


def _pair_matches(creds) -> bool:
    cert = x509.load_pem_x509_certificate(creds.cert)
    key = serialization.load_pem_private_key(creds.key, None)
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*der) == key.public_key().public_bytes(*der)


def test_the_kubelet_renews_before_expiry_and_goes_on_after_it(plane):
    admin, pki, certs, _ = plane
    conf = str(certs / "kubelet.conf")
    link = certs / bootstrap.CURRENT
    first_file = os.readlink(link)
    first = x509.load_pem_x509_certificate(kubeconfigs.load(conf).cert)
    lifetime = (first.not_valid_after_utc - first.not_valid_before_utc).total_seconds()
    assert lifetime == pytest.approx(DURATION * 1.5, abs=2)  # 20 s ahead, 10 s backdated

    # a reader of the kubeconfig all along: always a whole pair, the old one or the new one
    seen, torn, stop = set(), [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            creds = kubeconfigs.load(conf)
            if not _pair_matches(creds):
                torn.append(creds)
            seen.add(x509.load_pem_x509_certificate(creds.cert).serial_number)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        poll(lambda: os.readlink(link) != first_file, DURATION, what="kubelet-client-current.pem moved")
    finally:
        stop.set()
        reader.join(5)
    renewed_at = datetime.datetime.now(datetime.timezone.utc)
    assert renewed_at < first.not_valid_after_utc
    assert not torn and len(seen) >= 2
    second = x509.load_pem_x509_certificate(kubeconfigs.load(conf).cert)
    assert second.serial_number != first.serial_number
    assert second.subject == first.subject
    second.verify_directly_issued_by(pki.ca.cert)
    assert (certs / first_file).exists()  # the old file stays, as upstream's

    # the renewal was asked by the node itself and approved as selfnodeclient
    pem = second.public_bytes(serialization.Encoding.PEM)
    csr = next(c for c in admin.list("certificatesigningrequests").items if c.status.certificate == pem)
    assert csr.spec.username == f"system:node:{NODE}" and "system:nodes" in csr.spec.groups
    approved = next(c for c in csr.status.conditions if c.type == "Approved")
    assert (approved.reason, approved.message) == (
        "AutoApproved", "Auto approving self kubelet client certificate after SubjectAccessReview.")

    # past the first certificate's end, the node still renews its lease (a new connection)
    wait = (first.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    time.sleep(max(0.0, wait) + 1.0)  # the first certificate's expiry itself is what is waited for
    after = datetime.datetime.now(datetime.timezone.utc)

    def renewed_since() -> bool:
        lease = admin.get("leases", NODE, "kube-node-lease")
        stamp = datetime.datetime.strptime(lease.spec.renew_time, "%Y-%m-%dT%H:%M:%S.%fZ")
        return stamp.replace(tzinfo=datetime.timezone.utc) > after

    poll(renewed_since, 10, what="a lease renewal after the first certificate expired")
    assert _ready(admin, NODE)


def _self_signed(cn: str, start: datetime.datetime, seconds: float):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(seconds=seconds))
            .sign(key, hashes.SHA256()))


def test_the_rotation_deadline_is_70_to_90_percent_of_the_lifetime():
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = _self_signed("system:node:x", start, 1000)
    assert rotation_deadline(cert, 0.7) == start.timestamp() + 700
    assert rotation_deadline(cert, 0.9) == start.timestamp() + 900


def test_a_kubeconfig_with_the_pair_embedded_is_made_to_name_the_link(tmp_path):
    """A kubelet.conf written before rotation (certificate and key embedded) would never see
    the renewed pair: the first renewal rewrites it to name kubelet-client-current.pem."""
    start = datetime.datetime.now(datetime.timezone.utc)
    old = _self_signed("system:node:x", start, 1000)
    key = ec.generate_private_key(ec.SECP256R1())
    conf = str(tmp_path / "kubelet.conf")
    kubeconfigs.write_kubeconfig(conf, "https://127.0.0.1:6443", ca=b"", cert=old.public_bytes(
        serialization.Encoding.PEM), key=key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    new = _self_signed("system:node:x", start, 2000)
    bootstrap.store(str(tmp_path), new.public_bytes(serialization.Encoding.PEM), key)
    ClientCertificateRotation("x", conf, str(tmp_path)).stored()
    assert x509.load_pem_x509_certificate(kubeconfigs.load(conf).cert) == new


def test_closing_a_client_closes_the_connections_it_retired():
    from apiserver.client import Client

    client = Client("127.0.0.1:1")  # nothing listens: no call is made
    old = client._channel
    client.reload_credentials(grace=3600.0)  # the old connection would close an hour later
    assert client._channel is not old
    client.close()
    with pytest.raises(ValueError, match="closed channel"):
        old.unary_unary("/x")(b"", timeout=1)


def test_a_certificate_that_expired_unrenewed_is_replaced_with_the_bootstrap_credentials(plane, tmp_path):
    """The node's certificate ran out before it was renewed (a renewal made with it gets 401):
    as upstream's kubelet bootstraps again once restarted, the rotation asks with the
    bootstrap kubeconfig; without one it can only fail and retry."""
    admin, pki, _, boot = plane
    node, start = "rot-expired", datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
    key = ec.generate_private_key(ec.SECP256R1())
    expired = (x509.CertificateBuilder().subject_name(pkis.subject(f"system:node:{node}", ("system:nodes",)))
               .issuer_name(pki.ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(start)
               .not_valid_after(start + datetime.timedelta(hours=1)).sign(pki.ca.key, hashes.SHA256()))
    bootstrap.store(str(tmp_path), expired.public_bytes(serialization.Encoding.PEM), key)
    conf = str(tmp_path / "kubelet.conf")
    creds = kubeconfigs.load(boot)
    bootstrap.write_kubeconfig(conf, creds.server, creds.ca, str(tmp_path))

    assert not ClientCertificateRotation(node, conf, str(tmp_path), timeout=10).rotate()  # 401
    rotation = ClientCertificateRotation(node, conf, str(tmp_path), timeout=20, bootstrap_kubeconfig=boot)
    assert rotation.schedule() <= time.time()  # due at once
    assert rotation.rotate()
    renewed = x509.load_pem_x509_certificate(kubeconfigs.load(conf).cert)
    assert renewed.subject == expired.subject and renewed.not_valid_after_utc > datetime.datetime.now(
        datetime.timezone.utc)
    renewed.verify_directly_issued_by(pki.ca.cert)
    pem = renewed.public_bytes(serialization.Encoding.PEM)
    csr = next(c for c in admin.list("certificatesigningrequests").items if c.status.certificate == pem)
    assert csr.spec.username.startswith("system:bootstrap:") and "system:bootstrappers" in csr.spec.groups
