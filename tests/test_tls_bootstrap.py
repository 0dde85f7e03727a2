"""Issue 23, every node its own identity: the kubelet's TLS bootstrap. A secure plane
(TLS, Node+RBAC, --enable-bootstrap-token-auth, the controller-manager's csrapproving
and csrsigning with the cluster CA) and one hollow-kubelet process whose two nodes hold
nothing but a bootstrap token: each asks for its client certificate with a
CertificateSigningRequest, csrapproving approves it (kubeadm's bindings let the token's
group create certificatesigningrequests/nodeclient), csrsigning signs it, the node
registers under system:node:<its name>. Then: a requester without nodeclient stays
pending; a token outside the bootstrappers' group or no credentials may not ask at all;
another signer's request waits for `kubectl certificate approve`; `deny` is final; the
Node authorizer keeps each node to its own pods' Secrets; a restart reuses the
certificate."""

from __future__ import annotations

import contextlib
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apiserver.auth import bootstrap as tokens
from apiserver.auth import pki as pkis
from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import certificates_pb2, core_pb2, rbac_pb2
from harness.etcd_client import wait_until as poll
from harness.plane import Component, start_control_plane
from harness.procs import Registry
from node.kubelet import bootstrap
from tests.test_kubectl import KUBECTL

pytestmark = pytest.mark.process

NODES = ("boot-0", "boot-1")
NS = "tls-bootstrap"
TIMEOUT = 30.0
TOKENS = "bob-token-0123456789,bob,1001\n"
BOB = "bob-token-0123456789"
RBAC_GROUP = "rbac.authorization.k8s.io"


def wait_until(check, what: str):
    return poll(check, TIMEOUT, what=what)


def _ready(admin, name: str) -> bool:
    try:
        node = admin.get("nodes", name, "")
    except ApiError:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    reg = Registry()
    tmp = tmp_path_factory.mktemp("tlsbootstrap")
    pki = pkis.plane_pki(tmp / "pki")
    (tmp / "tokens.csv").write_text(TOKENS)
    try:
        api = start_control_plane(tmp, reg, pki=pki, enable_bootstrap_token_auth=True,
                                  token_auth_file=str(tmp / "tokens.csv"))
        admin = api.client("admin")
        token = tokens.new_token()
        admin.create(tokens.token_secret(token, description="test_tls_bootstrap"))
        boot = api.kubeconfig(tmp / "bootstrap-kubelet.conf", "", token=token)
        certs = tmp / "certs"
        Component(tmp, "hollow", "node.kubelet.hollow", api.endpoint, reg, nodes=len(NODES), prefix="boot-",
                  bootstrap_kubeconfig=boot, cert_dir=str(certs), bootstrap_timeout=TIMEOUT,
                  log_level="info").start()
        with contextlib.closing(admin):
            for name in NODES:
                wait_until(lambda n=name: _ready(admin, n), f"hollow node {name} bootstrapped and Ready")
            yield api, pki, admin, token, boot, certs, tmp
    finally:
        reg.cleanup()


def _node_client(api, certs, name: str) -> Client:
    return Client(api.endpoint, kubeconfig=str(certs / name / "kubelet.conf"), timeout=10)


def _csr(cn: str, orgs=(), signer=bootstrap.SIGNER, usages=bootstrap.USAGES, name: str = ""):
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    req = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs)).sign(key, hashes.SHA256())
    csr = certificates_pb2.CertificateSigningRequest()
    csr.metadata.name = name or f"csr-{cn.replace(':', '-')}"
    csr.spec.request = req.public_bytes(serialization.Encoding.PEM)
    csr.spec.signer_name = signer
    csr.spec.usages.extend(usages)
    return csr, key


def _types(csr) -> list[str]:
    return [c.type for c in csr.status.conditions]


def test_each_node_bootstraps_its_own_certificate(plane):
    api, pki, admin, token, boot, certs, tmp = plane
    token_id = token.partition(".")[0]
    csrs = [c for c in admin.list("certificatesigningrequests").items if c.metadata.name.startswith("node-csr-")]
    assert len(csrs) == len(NODES), [c.metadata.name for c in csrs]
    subjects = set()
    for csr in csrs:
        # who asked: the bootstrap token's identity, set by the apiserver
        assert csr.spec.username == f"system:bootstrap:{token_id}"
        assert set(csr.spec.groups) == {"system:bootstrappers", tokens.KUBEADM_GROUP, "system:authenticated"}
        assert _types(csr) == ["Approved"]
        assert csr.status.conditions[0].reason == "AutoApproved"
        cert = x509.load_pem_x509_certificate(csr.status.certificate)
        cert.verify_directly_issued_by(pki.ca.cert)
        subjects.add(cert.subject.rfc4514_string())
    assert subjects == {f"CN=system:node:{n},O=system:nodes" for n in NODES}
    # each node's kubeconfig names it; the Node authorizer's identity works for its own Node only
    for name, other in (NODES, NODES[::-1]):
        creds = bootstrap.kubeconfigs.load(str(certs / name / "kubelet.conf"))
        cn = x509.load_pem_x509_certificate(creds.cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert cn[0].value == f"system:node:{name}"
        with _node_client(api, certs, name) as client:
            node = client.get("nodes", other, "")
            node.metadata.labels["touched"] = "yes"
            with pytest.raises(ApiError) as e:
                client.update(node)
            assert e.value.reason == "Forbidden"
            assert f'node "{name}" is not allowed to modify node "{other}"' in e.value.message


def test_a_restart_reuses_the_certificate(plane):
    api, pki, admin, token, boot, certs, tmp = plane
    before = len(admin.list("certificatesigningrequests").items)
    conf = str(certs / NODES[0] / "kubelet.conf")
    with open(conf, "rb") as f:
        kept = f.read()
    assert bootstrap.bootstrap(NODES[0], conf, boot, str(certs / NODES[0]), timeout=5) == conf
    with open(conf, "rb") as f:
        assert f.read() == kept
    assert len(admin.list("certificatesigningrequests").items) == before


def test_nodes_cannot_read_each_others_secrets(plane):
    api, pki, admin, token, boot, certs, tmp = plane
    admin.create(core_pb2.Namespace(metadata={"name": NS}))
    for i, name in enumerate(NODES):
        admin.create(core_pb2.Secret(metadata={"name": f"s{i}", "namespace": NS}, data={"k": b"v"}))
        pod = core_pb2.Pod(metadata={"name": f"p{i}", "namespace": NS})
        pod.spec.node_name = name
        pod.spec.automount_service_account_token = False
        pod.spec.containers.add(name="c", image="busybox")
        pod.spec.volumes.add(name="s").secret.secret_name = f"s{i}"
        admin.create(pod)
    for i, name in enumerate(NODES):
        with _node_client(api, certs, name) as client:
            assert client.get("secrets", f"s{i}", NS).data["k"] == b"v"
            with pytest.raises(ApiError) as e:
                client.get("secrets", f"s{1 - i}", NS)
            assert e.value.reason == "Forbidden"
            assert e.value.message.startswith(f'secrets "s{1 - i}" is forbidden: User "system:node:{name}" '
                                              f'cannot get resource "secrets" in API group "" in the namespace '
                                              f'"{NS}"'), e.value.message


def test_requesters_without_nodeclient_are_not_approved(plane):
    api, pki, admin, token, boot, certs, tmp = plane
    # bob may create CSRs (system:node-bootstrapper) but not .../nodeclient
    admin.create(rbac_pb2.ClusterRoleBinding(
        metadata={"name": "bob-csr"},
        role_ref=rbac_pb2.RoleRef(api_group=RBAC_GROUP, kind="ClusterRole", name="system:node-bootstrapper"),
        subjects=[rbac_pb2.Subject(kind="User", api_group=RBAC_GROUP, name="bob")]))
    evil, _ = _csr("system:node:boot-1", ("system:nodes",), name="bob-wants-boot-1")
    with api.client("", token=BOB) as bob:
        wait_until(lambda: _created(bob, evil), "bob allowed to create a CSR")
    # a legitimate request made after it, through the same single approving worker
    good, _ = _csr("system:node:boot-9", ("system:nodes",), name="token-wants-boot-9")
    with Client(api.endpoint, kubeconfig=boot, timeout=10) as client:
        client.create(good)
    wait_until(lambda: _types(admin.get("certificatesigningrequests", "token-wants-boot-9", "")) == ["Approved"],
               "the bootstrap token's CSR approved")
    stored = admin.get("certificatesigningrequests", "bob-wants-boot-1", "")
    assert stored.spec.username == "bob" and _types(stored) == [] and not stored.status.certificate
    # a token outside the bootstrappers' group, a bootstrap token of no Secret, no credentials
    other = tokens.new_token()
    admin.create(tokens.token_secret(other, extra_groups=()))
    for creds, reason in (({"token": other}, "Forbidden"), ({"token": tokens.new_token()}, "Unauthorized"),
                          ({}, "Unauthorized")):
        with api.client("", **creds) as client:
            with pytest.raises(ApiError) as e:
                client.create(_csr("system:node:boot-8", ("system:nodes",), name="nope")[0])
            assert e.value.reason == reason, creds
    with pytest.raises(ApiError):
        admin.get("certificatesigningrequests", "nope", "")


def _created(client, csr) -> bool:
    try:
        client.create(csr)
    except ApiError as e:
        if e.reason == "Forbidden":  # the binding not yet in the apiserver's cache
            return False
        raise
    return True


@pytest.fixture(scope="module")
def kubectl(plane, tmp_path_factory):
    if KUBECTL is None:
        pytest.skip("kubectl not found: run harness/get_kubectl.sh")
    api = plane[0]
    home = tmp_path_factory.mktemp("kubectl-home")
    config = api.kubeconfig(home / "kubeconfig", "admin")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([KUBECTL, "--kubeconfig", config, "--cache-dir", str(home / "cache"), *args],
                              capture_output=True, text=True, timeout=60,
                              env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    return run


def test_another_signer_waits_for_kubectl_certificate_approve(plane, kubectl):
    api, pki, admin, token, boot, certs, tmp = plane
    alice, key = _csr("alice", ("devs",), signer="kubernetes.io/kube-apiserver-client",
                      usages=("digital signature", "client auth"), name="alice")
    alice.spec.expiration_seconds = 3600
    admin.create(alice)
    mallory, _ = _csr("mallory", signer="kubernetes.io/kube-apiserver-client",
                      usages=("digital signature", "client auth"), name="mallory")
    admin.create(mallory)
    rows = [line.split() for line in kubectl("api-resources", "--api-group=certificates.k8s.io").stdout.splitlines()]
    assert rows[1:] == [["certificatesigningrequests", "csr", "certificates.k8s.io/v1", "false",
                         "CertificateSigningRequest"]]
    out = kubectl("explain", "csr.spec.signerName")
    assert out.returncode == 0 and "FIELD: signerName <string>" in out.stdout, out.stderr
    out = kubectl("get", "csr", "alice", "mallory")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "AGE", "SIGNERNAME", "REQUESTOR", "REQUESTEDDURATION", "CONDITION"]
    assert lines[1].split()[2:] == ["kubernetes.io/kube-apiserver-client", "kubernetes-admin", "60m", "Pending"]
    out = kubectl("certificate", "approve", "alice")
    assert (out.returncode, out.stdout) == (0, "certificatesigningrequest.certificates.k8s.io/alice approved\n"), \
        out.stderr
    out = kubectl("certificate", "deny", "mallory")
    assert (out.returncode, out.stdout) == (0, "certificatesigningrequest.certificates.k8s.io/mallory denied\n"), \
        out.stderr
    signed = wait_until(lambda: admin.get("certificatesigningrequests", "alice", "").status.certificate,
                        "alice's certificate signed")
    cert = x509.load_pem_x509_certificate(signed)
    cert.verify_directly_issued_by(pki.ca.cert)
    assert cert.subject.rfc4514_string() == "CN=alice,O=devs"
    assert abs((cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() - 3600 - 300) < 5
    out = kubectl("get", "csr", "alice", "mallory", "--no-headers")
    assert [line.split()[-1] for line in out.stdout.splitlines()] == ["Approved,Issued", "Denied"], out.stdout
    # a denial stays: approving it now is refused, as upstream's validation says
    denied = admin.get("certificatesigningrequests", "mallory", "")
    assert not denied.status.certificate
    denied.status.conditions[0].type = "Approved"
    with pytest.raises(ApiError) as e:
        admin.update_approval(denied)
    assert e.value.reason == "Invalid"
    assert 'status.conditions: Forbidden: updates may not remove a condition of type "Denied"' in e.value.message


def test_validation_says_what_upstream_says(plane):
    api, pki, admin, token, boot, certs, tmp = plane
    bad, _ = _csr("x", signer="nodomain", usages=("client auth", "flying", "client auth"), name="bad")
    bad.spec.request = b"not a request"
    bad.spec.expiration_seconds = 10
    with pytest.raises(ApiError) as e:
        admin.create(bad)
    assert e.value.reason == "Invalid"
    for text in ('spec.request: Invalid value: "<request data>": PEM block type must be CERTIFICATE REQUEST',
                 'spec.usages[1]: Unsupported value: "flying"',
                 'spec.usages[2]: Duplicate value: "client auth"',
                 "spec.signerName: Invalid value: \"nodomain\": must be a fully qualified domain and path of the "
                 "form 'example.com/signer-name'",
                 "spec.expirationSeconds: Invalid value: 10: may not specify a duration less than 600 seconds "
                 "(10 minutes)"):
        assert text in e.value.message, e.value.message
    # the status subresource may not approve; a non-admin may not approve a signer's requests
    pending, _ = _csr("carol", signer="example.com/carol-signer", usages=("client auth",), name="carol")
    admin.create(pending)
    stored = admin.get("certificatesigningrequests", "carol", "")
    stored.status.conditions.add(type="Approved", status="True", reason="ByHand")
    with pytest.raises(ApiError) as e:
        admin.update_status(stored)
    assert 'updates may not add a condition of type "Approved"' in e.value.message
    with _node_client(api, certs, NODES[0]) as node:
        with pytest.raises(ApiError) as e:
            node.update_approval(stored)
    assert e.value.reason == "Forbidden"
