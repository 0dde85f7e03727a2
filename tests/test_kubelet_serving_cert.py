"""The kubelet's serving certificate by CSR (--rotate-server-certificates, upstream's
serverTLSBootstrap): a real kubelet without --tls-cert-file asks for one (signer
kubernetes.io/kubelet-serving) under its own identity; csrapproving leaves it pending,
as upstream, and the kubelet's port refuses handshakes meanwhile; once an administrator
approves it, csrsigning signs it with the node's addresses and the port serves it.
Needs root, runc, conmon, busybox-static."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from apiserver.auth import pki as pkis
from harness.etcd_client import wait_until as poll
from harness.nodes import need_runtime, real_nodes
from harness.plane import start_control_plane
from harness.procs import Registry
from node.kubelet.bootstrap import client_csr

pytestmark = pytest.mark.process

TIMEOUT = 60.0
SERVING = "kubernetes.io/kubelet-serving"


def _handshake(pki, port: int) -> x509.Certificate | None:
    """The kubelet's certificate, verified against the cluster CA for 127.0.0.1; None when
    the handshake fails."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    except (ssl.SSLError, OSError):
        return None


def _serving_csrs(admin, node: str) -> list:
    return [c for c in admin.list("certificatesigningrequests").items
            if c.spec.signer_name == SERVING and c.spec.username == f"system:node:{node}"]


def _approved(admin, name: str) -> bool:
    return any(c.type == "Approved" for c in admin.get("certificatesigningrequests", name, "").status.conditions)


def test_the_serving_certificate_waits_for_an_administrator_then_serves(tmp_path):
    need_runtime()
    reg = Registry()
    pki = pkis.plane_pki(tmp_path / "pki")
    args = ("--rotate-server-certificates", "--cert-dir", str(tmp_path / "certs"),
            "--client-ca-file", str(pki.ca.cert_path), "--authentication-token-webhook",
            "--authorization-mode", "Webhook", "--anonymous-auth", "false")
    try:
        api = start_control_plane(tmp_path, reg, pki=pki)
        with contextlib.closing(api.client("admin")) as admin, \
                real_nodes(tmp_path, api.endpoint, 1, kubelet_args=args,
                           kubeconfig=lambda who: api.kubeconfig(tmp_path / f"{who}.kubeconfig", who)) as nodes:
            node = nodes.layout.nodes[0]
            [csr] = poll(lambda: _serving_csrs(admin, node.name), TIMEOUT, what="the kubelet's serving CSR")
            assert list(csr.spec.usages) == ["digital signature", "server auth"]
            # csrapproving has seen it once it approved a request made after it: left pending
            later = admin.create(client_csr(ec.generate_private_key(ec.SECP256R1()), "someone")).metadata.name
            poll(lambda: _approved(admin, later), TIMEOUT, what="csrapproving to approve a later request")
            assert not admin.get("certificatesigningrequests", csr.metadata.name, "").status.conditions
            port = poll(lambda: admin.get("nodes", node.name, "").status.daemon_endpoints.kubelet_endpoint.port,
                        TIMEOUT, what="the kubelet's port")
            assert _handshake(pki, port) is None  # no serving certificate yet

            csr = admin.get("certificatesigningrequests", csr.metadata.name, "")  # kubectl certificate approve
            csr.status.conditions.add(type="Approved", status="True", reason="KubectlApprove",
                                      message="This CSR was approved by kubectl certificate approve.")
            admin.update_approval(csr)
            cert = poll(lambda: _handshake(pki, port), TIMEOUT, what="the kubelet serving its new certificate")
            assert cert.subject.rfc4514_string() == f"CN=system:node:{node.name},O=system:nodes"
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert node.name in sans.get_values_for_type(x509.DNSName)
            assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
            # and the API behind it, for a caller the apiserver allows
            ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
            ctx.load_cert_chain(str(pki.clients["admin"].cert), str(pki.clients["admin"].key))
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
            try:
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                assert (resp.status, resp.read()) == (200, b"ok")
            finally:
                conn.close()
    finally:
        reg.cleanup()
