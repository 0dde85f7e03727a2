"""Issue 23 on the apiserver: TLS, who is asking (client certificates, a
token file, ServiceAccount tokens) and RBAC, over REST (kubectl too) and gRPC.

One plane for the module: etcdlite, an apiserver with TLS, --client-ca-file,
--token-auth-file, ServiceAccount keys, RBAC and no anonymous requests, and a
controller-manager running as system:kube-controller-manager with its own
certificate. Every refusal is checked for its code and Kubernetes' message,
and for having written nothing.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import ssl
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from harness.plane import Component, SecureEtcdlite, start_control_plane
from harness.procs import Registry

from apiserver import manifest
from apiserver.auth import pki as pkis
from apiserver.auth import tokens
from apiserver.errors import ApiError
from apiserver.pb import api_pb2, api_pb2_grpc, core_pb2, rbac_pb2, serviceaccount_pb2
import jws
from tests.test_kubectl import KUBECTL

pytestmark = pytest.mark.process

TOKENS = 'bob-token-0123456789,bob,1001,"devs,testers"\n'
DEADLINE = 20.0


class Plane:
    def __init__(self, api, pki, tmp) -> None:
        self.api = api
        self.pki = pki
        self.tmp = tmp
        self.admin = api.client("admin")

    def ssl_context(self, who: str = "", ca: pkis.CA | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert_path))
        if who:
            issued = (ca or self.pki.ca).issue(f"t-{who}", who) if ca or who not in self.pki.clients \
                else self.pki.clients[who]
            ctx.load_cert_chain(str(issued.cert), str(issued.key))
        return ctx

    def rest(self, method: str, path: str, body=None, *, ctx: ssl.SSLContext | None = None,
             token: str = "", headers=()) -> tuple[int, dict]:
        """``headers``: more (name, value) pairs, a name repeated as often as given."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.api.port, context=ctx or self.ssl_context(),
                                           timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.putrequest(method, path)
            sent = [("Content-Type", "application/json"), ("Accept", "application/json"), *headers]
            if token:
                sent.append(("Authorization", f"Bearer {token}"))
            if data is not None:
                sent.append(("Content-Length", str(len(data))))
            for name, value in sent:
                conn.putheader(name, value)
            conn.endheaders(data)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def grpc_stub(self, *, cert=None, token: str = "", metadata=()):
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.pki.ca.cert_path.read_bytes(),
            private_key=cert.key.read_bytes() if cert else None,
            certificate_chain=cert.cert.read_bytes() if cert else None)
        if token:
            creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
        if metadata:  # sent with every call (Impersonate-* keys)
            creds = grpc.composite_channel_credentials(creds, grpc.metadata_call_credentials(
                lambda _context, callback: callback(tuple(metadata), None)))
        channel = grpc.secure_channel(self.api.endpoint, creds)
        return channel, api_pb2_grpc.ApiServerStub(channel)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    reg = Registry()
    tmp = tmp_path_factory.mktemp("security")
    pki = pkis.plane_pki(tmp / "pki")
    token_file = tmp / "tokens.csv"
    token_file.write_text(TOKENS)
    try:
        api = start_control_plane(tmp, reg, pki=pki, token_auth_file=str(token_file),
                                  audit_log_path=str(tmp / "audit.log"))
        p = Plane(api, pki, tmp)
        p.etcd = next(m for m in reg if isinstance(m, SecureEtcdlite))
        # one simulated node whose kubelet runs as system:hollow-nodes (group system:nodes)
        Component(tmp, "kubelets", "node.kubelet.hollow", api.endpoint, reg, nodes=1, prefix="hollow-",
                  heartbeat_interval=2, log_level="warning",
                  env={"KUBECONFIG": api.kubeconfig(tmp / "hollow.kubeconfig", "hollow-nodes")}).start()
        for ns in ("team-a", "team-b"):
            p.admin.create(core_pb2.Namespace(metadata={"name": ns}))
            p.admin.create(core_pb2.Secret(metadata={"name": "db", "namespace": ns}, data={"pw": b"hunter2"}))
            p.admin.create(core_pb2.ConfigMap(metadata={"name": "cfg", "namespace": ns}, data={"a": "1"}))
        # bob (token file) and carol (client certificate) may view team-a
        binding = rbac_pb2.RoleBinding(
            metadata={"name": "viewers", "namespace": "team-a"},
            role_ref=rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"),
            subjects=[rbac_pb2.Subject(kind="User", api_group="rbac.authorization.k8s.io", name="bob"),
                      rbac_pb2.Subject(kind="User", api_group="rbac.authorization.k8s.io", name="carol")])
        p.admin.create(binding)
        p.carol = pki.ca.issue("carol", "carol", ("devs",))
        # the controller-manager's root CA publisher puts kube-root-ca.crt in every namespace
        for ns in ("team-a", "team-b"):
            wait_until(lambda: root_ca_published(p.admin, ns), f"kube-root-ca.crt in {ns}")
        wait_until(lambda: p.rest("GET", "/api/v1/namespaces/team-a/configmaps",
                                  token="bob-token-0123456789")[0] == 200, "bob's RoleBinding to take effect")
        yield p
        p.admin.close()
    finally:
        reg.cleanup()


def root_ca_published(client, ns: str) -> bool:
    try:
        return bool(client.get("configmaps", "kube-root-ca.crt", ns))
    except ApiError:
        return False


def wait_until(check, what: str, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def forbidden_status(message: str, kind: str, name: str = "", group: str = "") -> dict:
    details = {"kind": kind}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": "Forbidden", "details": details, "code": 403}


UNAUTHORIZED = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Unauthorized", "reason": "Unauthorized", "code": 401}


def configmap(ns: str, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"x": "y"}}


def assert_not_written(plane: Plane, ns: str, name: str) -> None:
    with pytest.raises(ApiError) as err:
        plane.admin.get("configmaps", name, ns)
    assert err.value.reason == "NotFound"


# ---- authentication ----

def test_no_credentials_are_refused(plane):
    assert plane.rest("GET", "/api/v1/namespaces") == (401, UNAUTHORIZED)
    assert plane.rest("POST", "/api/v1/namespaces/team-a/configmaps", configmap("team-a", "anon")) == \
        (401, UNAUTHORIZED)
    channel, stub = plane.grpc_stub()
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.Create(api_pb2.CreateRequest(object=api_pb2.Object(config_map=core_pb2.ConfigMap(
            metadata={"name": "anon", "namespace": "team-a"}))), timeout=10)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, "Unauthorized")
    assert_not_written(plane, "team-a", "anon")


def _sa_token(plane, ns: str, name: str, *, key=None, exp_delta: int = 3600, uid: str = "") -> str:
    signer = tokens.Signer(key or tokens.load_private_key(str(plane.pki.sa_key)),
                           "https://kubernetes.default.svc.cluster.local")
    now = int(time.time())
    return signer.service_account_token(ns, name, uid, audiences=[signer.issuer], now=now + exp_delta - 3600)[0]


def test_bad_tokens_are_refused(plane):
    sa = plane.admin.get("serviceaccounts", "default", "team-a") if _has_default(plane, "team-a") else None
    uid = sa.metadata.uid if sa else ""
    good = _sa_token(plane, "team-a", "default", uid=uid)
    head, body, sig = good.split(".")
    claims = json.loads(jws.unb64(body))
    claims["sub"] = "system:serviceaccount:kube-system:default"
    claims["kubernetes.io"]["namespace"] = "kube-system"
    forged = ".".join((head, jws.b64(json.dumps(claims).encode()), sig))
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = {
        "forged": forged,
        "wrongly signed": _sa_token(plane, "team-a", "default", key=other_key, uid=uid),
        "expired": _sa_token(plane, "team-a", "default", exp_delta=-3 * tokens.LEEWAY, uid=uid),
        "unknown": "no-such-token",
        "not bearer": None,
    }
    for why, token in bad.items():
        if token is None:
            conn = http.client.HTTPSConnection("127.0.0.1", plane.api.port, context=plane.ssl_context(), timeout=10)
            conn.request("GET", "/api/v1/namespaces", headers={"Authorization": "Basic Ym9iOmJvYg=="})
            resp = conn.getresponse()
            assert (resp.status, json.loads(resp.read())) == (401, UNAUTHORIZED), why
            conn.close()
            continue
        assert plane.rest("POST", "/api/v1/namespaces/team-a/configmaps", configmap("team-a", "bad"),
                          token=token) == (401, UNAUTHORIZED), why
        channel, stub = plane.grpc_stub(token=token)
        with channel, pytest.raises(grpc.RpcError) as err:
            stub.List(api_pb2.ListRequest(resource="configmaps", namespace="team-a"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, why
    assert_not_written(plane, "team-a", "bad")


def _has_default(plane, ns: str) -> bool:
    try:
        plane.admin.get("serviceaccounts", "default", ns)
        return True
    except ApiError:
        return False


# certificates that claim the cluster's admin (system:masters) and must not be taken
BAD_CERTS = {
    "another-ca": "x509: certificate signed by unknown authority",
    "same-name-ca": "x509: certificate signed by unknown authority",
    "expired": "x509: certificate has expired or is not yet valid: current time ",
    "no-client-auth": "x509: certificate specifies an incompatible key usage",
}


def bad_cert(plane, why: str) -> pkis.Issued:
    """A certificate for ``why`` (BAD_CERTS), kept in plane.pki.clients as "bad-<why>" (kubectl)."""
    name = f"bad-{why}"
    if name not in plane.pki.clients:
        ca = plane.pki.ca
        if why == "another-ca":
            ca = pkis.CA(plane.tmp / "another-ca", cn="another-ca")
        elif why == "same-name-ca":  # the cluster CA's name, another key
            cn = plane.pki.ca.cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
            ca = pkis.CA(plane.tmp / "namesake-ca", cn=cn)
        now = datetime.datetime.now(datetime.timezone.utc)
        plane.pki.clients[name] = ca.issue(
            name, "kubernetes-admin", ("system:masters",), server=why == "no-client-auth",
            client=why != "no-client-auth",
            not_after=now - datetime.timedelta(minutes=1) if why == "expired" else None)
    return plane.pki.clients[name]


def _bad_ctx(plane, why: str) -> ssl.SSLContext:
    issued = bad_cert(plane, why)
    ctx = plane.ssl_context()
    ctx.load_cert_chain(str(issued.cert), str(issued.key))
    return ctx


@pytest.mark.parametrize("why", list(BAD_CERTS))
def test_a_certificate_that_does_not_verify_is_unauthorized(plane, why):
    """As kube-apiserver (Go's tls.RequestClientCert): the handshake completes, the x509
    authenticator refuses the certificate (401, the reason in the apiserver's log only), and
    nothing is written; the same name from the good CA still works."""
    name = f"bad-{why}"
    ctx = _bad_ctx(plane, why)
    assert plane.rest("POST", "/api/v1/namespaces/team-a/configmaps", configmap("team-a", name), ctx=ctx) == \
        (401, UNAUTHORIZED)
    assert plane.rest("GET", "/api/v1/namespaces/team-a/secrets", ctx=ctx) == (401, UNAUTHORIZED)
    channel, stub = plane.grpc_stub(cert=bad_cert(plane, why))
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.Create(api_pb2.CreateRequest(object=api_pb2.Object(config_map=core_pb2.ConfigMap(
            metadata={"name": name, "namespace": "team-a"}))), timeout=10)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, "Unauthorized")
    assert_not_written(plane, "team-a", name)
    text = wait_until(lambda: (t := Path(plane.api.log_path).read_text()) and
                      f"failed: {BAD_CERTS[why]}" in t and t, f"the reason ({why}) in the apiserver's log")
    assert "Unable to authenticate the request: [verifying certificate SN=" in text
    events = [json.loads(line) for line in (plane.tmp / "audit.log").read_text().splitlines()]
    assert any(e["responseStatus"] == {"metadata": {}, "message": "Authentication failed, attempted: x509",
                                       "code": 401} and e["user"] == {} and e["verb"] == "create"
               and e["requestURI"] == "/api/v1/namespaces/team-a/configmaps" for e in events)
    # the admin's own certificate (the good CA) still works, on a new connection as on this one
    assert plane.rest("GET", "/api/v1/namespaces/team-a/secrets", ctx=plane.ssl_context("admin"))[0] == 200


@pytest.mark.parametrize("why", ["another-ca", "expired"])
def test_a_token_beside_a_bad_certificate_still_authenticates(plane, why):
    """kube-apiserver's authenticators are a union: the x509 one fails with an error, the
    token one is tried next and succeeds (bob: view in team-a, nothing more)."""
    ctx = _bad_ctx(plane, why)
    bob = "bob-token-0123456789"
    status, body = plane.rest("GET", "/api/v1/namespaces/team-a/configmaps", ctx=ctx, token=bob)
    assert status == 200 and "cfg" in [i["metadata"]["name"] for i in body["items"]]
    status, body = plane.rest("POST", "/api/v1/namespaces/team-a/configmaps", configmap("team-a", "bob-x"),
                              ctx=ctx, token=bob)
    assert (status, body["message"]) == (403, 'configmaps is forbidden: User "bob" cannot create resource '
                                              '"configmaps" in API group "" in the namespace "team-a"')
    # a bad token beside it: both fail, 401
    assert plane.rest("GET", "/api/v1/namespaces/team-a/configmaps", ctx=ctx, token="nobody") == (401, UNAUTHORIZED)
    channel, stub = plane.grpc_stub(cert=bad_cert(plane, why), token=bob)
    with channel:
        got = stub.List(api_pb2.ListRequest(resource="configmaps", namespace="team-a"), timeout=10)
        assert len(got.items) >= 2, got
        with pytest.raises(grpc.RpcError) as err:
            stub.Create(api_pb2.CreateRequest(object=api_pb2.Object(config_map=core_pb2.ConfigMap(
                metadata={"name": "bob-x", "namespace": "team-a"}))), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert_not_written(plane, "team-a", "bob-x")


def test_etcd_takes_only_the_apiservers_certificate(plane):
    """etcd serves TLS and wants a certificate of its own CA: no certificate, or one of
    the cluster CA (the admin's, a kubelet's), does not reach it; the apiserver's does."""
    from etcdlite.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    assert plane.etcd.url.startswith("https://") and plane.api.etcd_servers == plane.etcd.url
    etcd_ca = plane.pki.etcd_ca.cert_path.read_bytes()
    for who in (None, plane.pki.clients["admin"], plane.pki.node("n1")):
        creds = grpc.ssl_channel_credentials(root_certificates=etcd_ca,
                                             private_key=who.key.read_bytes() if who else None,
                                             certificate_chain=who.cert.read_bytes() if who else None)
        with grpc.secure_channel(plane.etcd.endpoint, creds) as ch, pytest.raises(grpc.RpcError) as err:
            rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"/registry/secrets/team-a/db"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, who
    with grpc.insecure_channel(plane.etcd.endpoint) as ch, pytest.raises(grpc.RpcError):
        rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"/registry/secrets/team-a/db"), timeout=5)
    client = plane.pki.etcd_client
    creds = grpc.ssl_channel_credentials(root_certificates=etcd_ca, private_key=client.key.read_bytes(),
                                         certificate_chain=client.cert.read_bytes())
    with grpc.secure_channel(plane.etcd.endpoint, creds) as ch:
        got = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"/registry/secrets/team-a/db"), timeout=5)
    assert got.count == 1


def test_plain_http_is_not_served(plane):
    conn = http.client.HTTPConnection("127.0.0.1", plane.api.port, timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", "/api/v1/namespaces/team-a/secrets")
        conn.getresponse().read()
    conn.close()


# ---- authorization ----

def test_view_in_one_namespace(plane):
    bob = dict(token="bob-token-0123456789")
    code, listed = plane.rest("GET", "/api/v1/namespaces/team-a/configmaps", **bob)
    assert code == 200 and [i["metadata"]["name"] for i in listed["items"]] == ["cfg", "kube-root-ca.crt"]
    assert plane.rest("GET", "/api/v1/namespaces/team-a/secrets", **bob) == (403, forbidden_status(
        'secrets is forbidden: User "bob" cannot list resource "secrets" in API group "" in the namespace "team-a"',
        "secrets"))
    assert plane.rest("GET", "/api/v1/namespaces/team-a/secrets/db", **bob) == (403, forbidden_status(
        'secrets "db" is forbidden: User "bob" cannot get resource "secrets" in API group "" in the namespace '
        '"team-a"', "secrets", "db"))
    assert plane.rest("GET", "/api/v1/namespaces/team-b/configmaps", **bob) == (403, forbidden_status(
        'configmaps is forbidden: User "bob" cannot list resource "configmaps" in API group "" in the namespace '
        '"team-b"', "configmaps"))
    assert plane.rest("GET", "/apis/apps/v1/deployments", **bob) == (403, forbidden_status(
        'deployments.apps is forbidden: User "bob" cannot list resource "deployments" in API group "apps" at '
        'the cluster scope', "deployments", group="apps"))
    # view does not write
    code, status = plane.rest("POST", "/api/v1/namespaces/team-a/configmaps", configmap("team-a", "bobs"), **bob)
    assert (code, status["message"]) == (403, 'configmaps is forbidden: User "bob" cannot create resource '
                                               '"configmaps" in API group "" in the namespace "team-a"')
    assert_not_written(plane, "team-a", "bobs")
    channel, stub = plane.grpc_stub(token=bob["token"])
    with channel:  # bob's token over gRPC
        listed = stub.List(api_pb2.ListRequest(resource="configmaps", namespace="team-a"), timeout=10)
        assert [o.config_map.metadata.name for o in listed.items] == ["cfg", "kube-root-ca.crt"]
    # the same over gRPC, as carol (a client certificate, view in team-a too)
    channel, stub = plane.grpc_stub(cert=plane.carol)
    with channel:
        listed = stub.List(api_pb2.ListRequest(resource="configmaps", namespace="team-a"), timeout=10)
        assert [o.config_map.metadata.name for o in listed.items] == ["cfg", "kube-root-ca.crt"]
        for request, message in (
                (lambda: stub.Get(api_pb2.GetRequest(resource="secrets", namespace="team-a", name="db"), timeout=10),
                 'secrets "db" is forbidden: User "carol" cannot get resource "secrets" in API group "" in the '
                 'namespace "team-a"'),
                (lambda: stub.List(api_pb2.ListRequest(resource="secrets", namespace="team-b"), timeout=10),
                 'secrets is forbidden: User "carol" cannot list resource "secrets" in API group "" in the '
                 'namespace "team-b"'),
                (lambda: stub.Watch(api_pb2.WatchRequest(resource="pods"), timeout=10).next(),
                 'pods is forbidden: User "carol" cannot watch resource "pods" in API group "" at the cluster '
                 'scope'),
                (lambda: stub.Delete(api_pb2.DeleteRequest(resource="configmaps", namespace="team-a", name="cfg"),
                                     timeout=10),
                 'configmaps "cfg" is forbidden: User "carol" cannot delete resource "configmaps" in API group "" '
                 'in the namespace "team-a"')):
            with pytest.raises(grpc.RpcError) as err:
                request()
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.PERMISSION_DENIED, message)
    assert plane.admin.get("configmaps", "cfg", "team-a").data["a"] == "1"


def test_a_kubelet_reads_only_what_its_pods_use(plane):
    """The Node authorizer: node n1's kubelet may get the Secret and ConfigMap of a pod
    bound to n1, not those of a pod on n2, and may list neither."""
    for node, secret in (("n1", "s1"), ("n2", "s2")):
        plane.admin.create(core_pb2.Secret(metadata={"name": secret, "namespace": "team-b"}, data={"k": b"v"}))
        plane.admin.create(core_pb2.ConfigMap(metadata={"name": f"c-{node}", "namespace": "team-b"}))
        plane.admin.create(manifest.from_dict({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p-{node}", "namespace": "team-b"},
            "spec": {"nodeName": node, "containers": [{
                "name": "c", "image": "busybox",
                "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": f"c-{node}"}}]}]}}))
    channel, stub = plane.grpc_stub(cert=plane.pki.node("n1"))
    with channel:
        def get(resource, name):
            return stub.Get(api_pb2.GetRequest(resource=resource, namespace="team-b", name=name), timeout=10)

        wait_until(lambda: _ok(lambda: get("secrets", "s1")), "n1's pod in the apiserver's cache")
        assert get("configmaps", "c-n1").config_map.metadata.name == "c-n1"
        for call, message in (
                (lambda: get("secrets", "s2"), 'secrets "s2" is forbidden: User "system:node:n1" cannot get '
                                               'resource "secrets" in API group "" in the namespace "team-b"'),
                (lambda: get("configmaps", "c-n2"), 'configmaps "c-n2" is forbidden: User "system:node:n1" cannot '
                                                    'get resource "configmaps" in API group "" in the namespace '
                                                    '"team-b"'),
                (lambda: stub.List(api_pb2.ListRequest(resource="secrets", namespace="team-b"), timeout=10),
                 'secrets is forbidden: User "system:node:n1" cannot list resource "secrets" in API group "" in '
                 'the namespace "team-b"')):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.PERMISSION_DENIED, message)
        # what RBAC's system:node grants still works: the node's pods
        assert len(stub.List(api_pb2.ListRequest(resource="pods", namespace="team-b"), timeout=10).items) >= 2
        # NodeRestriction: another node's pods, Node and Lease are not n1's to change
        for call, message in (
                (lambda: stub.Delete(api_pb2.DeleteRequest(resource="pods", namespace="team-b", name="p-n2"),
                                     timeout=10),
                 'pods "p-n2" is forbidden: node "n1" can only delete pods with spec.nodeName set to itself'),
                (lambda: stub.Patch(api_pb2.PatchRequest(resource="pods", namespace="team-b", name="p-n2",
                                                         merge_patch="{}", status=True), timeout=10),
                 'pods "p-n2" is forbidden: node "n1" can only update pod status for pods with spec.nodeName set '
                 'to itself'),
                (lambda: stub.Patch(api_pb2.PatchRequest(resource="nodes", name="n2", merge_patch="{}"), timeout=10),
                 'nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"'),
                (lambda: stub.Delete(api_pb2.DeleteRequest(resource="leases", namespace="kube-node-lease",
                                                           name="hollow-0"), timeout=10),
                 'leases.coordination.k8s.io "hollow-0" is forbidden: can only access node lease with the same '
                 'name as the requesting node')):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.PERMISSION_DENIED, message)
        assert plane.admin.get("pods", "p-n2", "team-b").metadata.name == "p-n2"
        assert stub.Patch(api_pb2.PatchRequest(resource="pods", namespace="team-b", name="p-n1", merge_patch="{}",
                                               status=True), timeout=10).pod.metadata.name == "p-n1"


def _ok(call) -> bool:
    try:
        call()
        return True
    except grpc.RpcError:
        return False


# ---- ServiceAccounts ----

def test_service_account_token_works_until_the_account_is_deleted(plane):
    wait_until(lambda: _has_default(plane, "team-b"), "the default ServiceAccount in team-b")
    plane.admin.create(serviceaccount_pb2.ServiceAccount(metadata={"name": "robot", "namespace": "team-b"}))
    plane.admin.create(rbac_pb2.Role(metadata={"name": "cm-reader", "namespace": "team-b"}, rules=[
        rbac_pb2.PolicyRule(verbs=["get", "list"], api_groups=[""], resources=["configmaps"])]))
    plane.admin.create(rbac_pb2.RoleBinding(
        metadata={"name": "robot", "namespace": "team-b"},
        role_ref=rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="cm-reader"),
        subjects=[rbac_pb2.Subject(kind="ServiceAccount", name="robot")]))
    # TokenRequest, as `kubectl create token` sends it
    code, tr = plane.rest("POST", "/api/v1/namespaces/team-b/serviceaccounts/robot/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
                          ctx=plane.ssl_context("admin"))
    assert code == 201, tr
    token = tr["status"]["token"]
    wait_until(lambda: plane.rest("GET", "/api/v1/namespaces/team-b/configmaps/cfg", token=token)[0] == 200,
               "the robot's Role to take effect")
    assert plane.rest("GET", "/api/v1/namespaces/team-b/secrets/db", token=token)[1]["message"] == (
        'secrets "db" is forbidden: User "system:serviceaccount:team-b:robot" cannot get resource "secrets" in '
        'API group "" in the namespace "team-b"')
    plane.admin.delete("serviceaccounts", "robot", "team-b")
    wait_until(lambda: plane.rest("GET", "/api/v1/namespaces/team-b/configmaps/cfg", token=token) ==
               (401, UNAUTHORIZED), "the deleted account's token to be refused")
    # an account made again under the same name is another account: the old token stays refused
    plane.admin.create(serviceaccount_pb2.ServiceAccount(metadata={"name": "robot", "namespace": "team-b"}))
    time.sleep(0.3)  # let the cache see it; the token must still be refused after
    assert plane.rest("GET", "/api/v1/namespaces/team-b/configmaps/cfg", token=token) == (401, UNAUTHORIZED)


def test_components_run_under_their_own_identities(plane):
    """Each component's certificate and RBAC role suffice for its work: the
    controller-manager makes the Deployment's ReplicaSet and pods, the scheduler binds
    them, the (simulated) kubelet runs them."""
    plane.admin.create(manifest.from_dict({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "team-a"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "busybox"}]}}}}))
    def running():
        pods = plane.admin.list("pods", "team-a", label_selector="app=web").items
        return len(pods) == 2 and all(p.spec.node_name == "hollow-0" and p.status.phase == "Running" for p in pods)
    wait_until(running, "the Deployment's pods running on hollow-0", timeout=40)


# ---- kubectl ----

@pytest.fixture(scope="module")
def kubectl(plane, tmp_path_factory):
    if KUBECTL is None:
        pytest.skip("kubectl not found: run harness/get_kubectl.sh")
    home = tmp_path_factory.mktemp("kubectl-home")

    def run(who: str, *args: str, token: str = "") -> subprocess.CompletedProcess:
        config = plane.api.kubeconfig(home / f"kubeconfig-{who}", who, token=token)
        return subprocess.run([KUBECTL, "--kubeconfig", config, "--cache-dir", str(home / "cache" / who), *args],
                              capture_output=True, text=True, timeout=60,
                              env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    return run


def test_kubectl_with_client_certificates(plane, kubectl):
    out = kubectl("admin", "get", "secrets", "-n", "team-a", "-o", "name")
    assert (out.returncode, out.stdout) == (0, "secret/db\n"), out.stderr
    out = kubectl("", "get", "secrets", "-n", "team-a", token="bob-token-0123456789")
    assert out.returncode == 1
    assert out.stderr.strip() == ('Error from server (Forbidden): secrets is forbidden: User "bob" cannot list '
                                  'resource "secrets" in API group "" in the namespace "team-a"')
    out = kubectl("", "get", "configmaps", "-n", "team-a", "-o", "name", token="bob-token-0123456789")
    assert (out.returncode, out.stdout) == (0, "configmap/cfg\nconfigmap/kube-root-ca.crt\n"), out.stderr


@pytest.mark.parametrize("why", list(BAD_CERTS))
def test_kubectl_with_a_certificate_that_does_not_verify(plane, kubectl, why):
    """kubectl sends its certificate whatever CA names the apiserver's CertificateRequest
    lists (client-go answers with GetClientCertificate), so each is refused as the x509
    authenticator's (the audit log says so), kubectl says what it says to kube-apiserver,
    and a token beside the certificate still works."""
    who = f"bad-{why}"
    bad_cert(plane, why)
    audit = plane.tmp / "audit.log"
    seen = len(audit.read_text().splitlines())
    out = kubectl(who, "get", "secrets", "-n", "team-a")  # discovery first: its 401 is what kubectl says
    assert (out.returncode, out.stderr.strip().splitlines()[-1]) == (
        1, "error: You must be logged in to the server (the server has asked for the client to provide credentials)")
    refused = wait_until(lambda: [e for e in map(json.loads, audit.read_text().splitlines()[seen:])
                                  if e["userAgent"].startswith("kubectl") and e["responseStatus"]["code"] == 401],
                         "kubectl's refused requests in the audit log")
    assert {e["responseStatus"]["message"] for e in refused} == {"Authentication failed, attempted: x509"}
    out = kubectl(who, "create", "configmap", f"kubectl-{why}", "-n", "team-a")
    assert (out.returncode, out.stderr.strip()) == (1, "error: failed to create configmap: Unauthorized")
    out = kubectl(who, "get", "configmaps", "-n", "team-a", "-o", "name", token="bob-token-0123456789")
    assert (out.returncode, out.stdout) == (0, "configmap/cfg\nconfigmap/kube-root-ca.crt\n"), out.stderr
    assert_not_written(plane, "team-a", f"kubectl-{why}")


def test_kubectl_auth_can_i(plane, kubectl):
    bob = "bob-token-0123456789"
    for args, want in ((("list", "configmaps", "-n", "team-a"), "yes"),
                       (("get", "secrets", "-n", "team-a"), "no"),
                       (("list", "pods", "-n", "team-b"), "no"),
                       (("create", "configmaps", "-n", "team-a"), "no"),
                       (("create", "selfsubjectaccessreviews"), "yes")):
        out = kubectl("", "auth", "can-i", *args, token=bob)
        assert out.stdout.strip() == want, (args, out.stdout, out.stderr)
    out = kubectl("", "auth", "can-i", "--list", "-n", "team-a", token=bob)
    lines = out.stdout.splitlines()[1:]
    by_resource = {line.split()[0]: line for line in lines if not line.startswith(" ")}
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    assert by_resource["configmaps"].endswith("[get list watch]") and "secrets" not in by_resource, out.stdout
    assert any(line.split()[0] == "[/version]" for line in lines if line.startswith(" ")), out.stdout
    out = kubectl("admin", "auth", "can-i", "delete", "secrets", "--all-namespaces")
    assert (out.returncode, out.stdout.strip()) == (0, "yes"), out.stderr
    # granted with kubectl (a protobuf body), then allowed
    out = kubectl("admin", "create", "rolebinding", "bob-edit", "--clusterrole=edit", "--user=bob", "-n", "team-b")
    assert (out.returncode, out.stdout) == (0, "rolebinding.rbac.authorization.k8s.io/bob-edit created\n"), out.stderr
    out = kubectl("admin", "get", "rolebindings", "-n", "team-b", "-o", "wide")
    row = out.stdout.splitlines()[1].split()
    assert row[:2] + row[3:] == ["bob-edit", "ClusterRole/edit", "bob"], out.stdout  # (row[2]: its age)
    wait_until(lambda: kubectl("", "auth", "can-i", "create", "configmaps", "-n", "team-b",
                               token=bob).stdout.strip() == "yes", "bob's edit in team-b")
    # edit holds view's rules too (aggregated twice: view into edit)
    out = kubectl("", "get", "configmaps", "-n", "team-b", "-o", "name", token=bob)
    assert out.returncode == 0 and "configmap/cfg" in out.stdout.splitlines(), out.stderr
    out = kubectl("admin", "create", "token", "default", "-n", "team-a")
    assert out.returncode == 0 and tokens.looks_like_jwt(out.stdout.strip()), out.stderr


def test_python_client_with_a_client_certificate_kubeconfig(plane, tmp_path):
    """The official Python client (urllib3 over TLS) with the admin's kubeconfig, and as
    bob (a token): allowed and forbidden as kubectl is."""
    k8s = pytest.importorskip("kubernetes.client", reason="the official Python client is not installed")
    from kubernetes import config

    for who, token, want in (("admin", "", 200), ("", "bob-token-0123456789", 403)):
        conf = k8s.Configuration()
        config.load_kube_config(plane.api.kubeconfig(tmp_path / f"kc-{who}", who, token=token),
                                client_configuration=conf)
        with k8s.ApiClient(conf) as c:
            v1 = k8s.CoreV1Api(c)
            names = [cm.metadata.name for cm in v1.list_namespaced_config_map("team-a").items]
            assert names == ["cfg", "kube-root-ca.crt"]
            try:
                got = v1.read_namespaced_secret("db", "team-a")
                assert (want, got.data["pw"]) == (200, base64.b64encode(b"hunter2").decode())
            except k8s.ApiException as e:
                assert (e.status, json.loads(e.body)["message"]) == (want, (
                    'secrets "db" is forbidden: User "bob" cannot get resource "secrets" in API group "" in the '
                    'namespace "team-a"'))


# ---- audit ----

def test_audit_log_says_who_did_what(plane):
    bob = "bob-token-0123456789"
    assert plane.rest("GET", "/api/v1/namespaces/team-a/secrets?limit=5", token=bob)[0] == 403
    assert plane.rest("GET", "/api/v1/namespaces/team-a/pods")[0] == 401
    channel, stub = plane.grpc_stub(cert=plane.carol)
    with channel:
        stub.Get(api_pb2.GetRequest(resource="configmaps", namespace="team-a", name="cfg"), timeout=10)
    path = plane.tmp / "audit.log"

    def events():
        return [json.loads(line) for line in path.read_text().splitlines()]

    def find(user, verb, resource, code):
        return [e for e in events() if e["user"].get("username") == user and e["verb"] == verb
                and e.get("objectRef", {}).get("resource") == resource and e["responseStatus"]["code"] == code]

    rest = wait_until(lambda: find("bob", "list", "secrets", 403), "bob's refused list in the audit log")[-1]
    assert rest["requestURI"] == "/api/v1/namespaces/team-a/secrets?limit=5"
    assert rest["objectRef"] == {"resource": "secrets", "namespace": "team-a"}
    assert rest["user"]["groups"] == ["devs", "testers", "system:authenticated"]
    assert (rest["kind"], rest["apiVersion"], rest["level"], rest["stage"]) == \
        ("Event", "audit.k8s.io/v1", "Metadata", "ResponseComplete")
    grpc_event = wait_until(lambda: find("carol", "get", "configmaps", 200), "carol's gRPC Get")[-1]
    assert grpc_event["objectRef"] == {"resource": "configmaps", "namespace": "team-a", "name": "cfg"}
    assert grpc_event["requestURI"] == "/apiserver.v1.ApiServer/Get"
    wait_until(lambda: any(e["responseStatus"]["code"] == 401 and e["user"] == {} and
                           e["requestURI"] == "/api/v1/namespaces/team-a/pods" for e in events()),
               "the unauthenticated request in the audit log")
    # no Secret's data anywhere: not in the audit log, not in the apiserver's log
    for log in (path, plane.api.log_path):
        text = Path(log).read_bytes()
        assert b"hunter2" not in text and base64.b64encode(b"hunter2") not in text, log


# ---- impersonation (kubectl --as) ----

def _rbac(kind: str, name: str, **fields) -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name}, **fields}


@pytest.fixture(scope="module")
def impersonator(plane):
    """carol may impersonate the user bob and the group testers, and nothing else;
    the group testers may view team-c (bob himself may not; kube-root-ca.crt is waited for)."""
    code, _ = plane.rest("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", _rbac(
        "ClusterRole", "impersonate-bob", rules=[
            {"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"], "resourceNames": ["bob"]},
            {"apiGroups": [""], "resources": ["groups"], "verbs": ["impersonate"], "resourceNames": ["testers"]}]),
        ctx=plane.ssl_context("admin"))
    assert code == 201
    code, _ = plane.rest("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", _rbac(
        "ClusterRoleBinding", "carol-impersonates-bob",
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "impersonate-bob"},
        subjects=[{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "carol"}]),
        ctx=plane.ssl_context("admin"))
    assert code == 201
    plane.admin.create(core_pb2.Namespace(metadata={"name": "team-c"}))
    plane.admin.create(core_pb2.ConfigMap(metadata={"name": "cfg", "namespace": "team-c"}, data={"a": "1"}))
    binding = rbac_pb2.RoleBinding(
        metadata={"name": "testers-view", "namespace": "team-c"},
        role_ref=rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"),
        subjects=[rbac_pb2.Subject(kind="Group", api_group="rbac.authorization.k8s.io", name="testers")])
    plane.admin.create(binding)
    carol = _carol_ctx(plane)
    wait_until(lambda: root_ca_published(plane.admin, "team-c"), "kube-root-ca.crt in team-c")
    wait_until(lambda: plane.rest("GET", "/api/v1/namespaces/team-c/configmaps", ctx=carol,
                                  headers=[("Impersonate-User", "bob"), ("Impersonate-Group", "testers")])[0] == 200,
               "carol's impersonation rights and the testers' view of team-c")
    return carol


def _carol_ctx(plane) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(plane.pki.ca.cert_path))
    ctx.load_cert_chain(str(plane.carol.cert), str(plane.carol.key))
    return ctx


def test_impersonation_allowed_and_refused(plane, impersonator):
    carol = impersonator
    as_bob = [("Impersonate-User", "bob")]
    # as bob: bob's rights, not carol's (both view team-a; neither reads its Secrets)
    code, listed = plane.rest("GET", "/api/v1/namespaces/team-a/configmaps", ctx=carol, headers=as_bob)
    assert code == 200 and [i["metadata"]["name"] for i in listed["items"]] == ["cfg", "kube-root-ca.crt"]
    assert plane.rest("GET", "/api/v1/namespaces/team-a/secrets", ctx=carol, headers=as_bob) == (403, forbidden_status(
        'secrets is forbidden: User "bob" cannot list resource "secrets" in API group "" in the namespace "team-a"',
        "secrets"))
    # bob alone may not view team-c; bob with the group testers (asked for, and allowed) may
    assert plane.rest("GET", "/api/v1/namespaces/team-c/configmaps", ctx=carol, headers=as_bob)[0] == 403
    code, whoami = plane.rest("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}, ctx=carol,
                              headers=[*as_bob, ("Impersonate-Group", "testers"), ("Impersonate-Extra-Scopes", "a"),
                                       ("Impersonate-Extra-Scopes", "b")])
    assert code == 403, whoami  # carol may not set extras
    assert whoami["message"] == ('userextras.authentication.k8s.io "a" is forbidden: User "carol" cannot impersonate '
                                 'resource "userextras/scopes" in API group "authentication.k8s.io" at the '
                                 'cluster scope')
    code, whoami = plane.rest("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
                              ctx=plane.ssl_context("admin"),
                              headers=[*as_bob, ("Impersonate-Group", "testers"), ("Impersonate-Group", "devs"),
                                       ("Impersonate-Uid", "u-1"), ("Impersonate-Extra-Scopes", "a"),
                                       ("Impersonate-Extra-Scopes", "b")])
    assert (code, whoami["status"]["userInfo"]) == (201, {
        "username": "bob", "uid": "u-1", "groups": ["testers", "devs", "system:authenticated"],
        "extra": {"scopes": ["a", "b"]}})
    # refused: another user, a group not granted, a ServiceAccount; nothing is written
    for headers, message in (
            ([("Impersonate-User", "dave")],
             'users "dave" is forbidden: User "carol" cannot impersonate resource "users" in API group "" at the '
             'cluster scope'),
            ([*as_bob, ("Impersonate-Group", "system:masters")],
             'groups "system:masters" is forbidden: User "carol" cannot impersonate resource "groups" in API group '
             '"" at the cluster scope'),
            ([("Impersonate-User", "system:serviceaccount:team-a:default")],
             'serviceaccounts "default" is forbidden: User "carol" cannot impersonate resource "serviceaccounts" in '
             'API group "" in the namespace "team-a"')):
        code, status = plane.rest("POST", "/api/v1/namespaces/team-a/configmaps", configmap("team-a", "imp"),
                                  ctx=carol, headers=headers)
        assert (code, status["reason"], status["message"]) == (403, "Forbidden", message), status
    assert_not_written(plane, "team-a", "imp")
    code, status = plane.rest("GET", "/api/v1/namespaces/team-a/configmaps", ctx=carol,
                              headers=[("Impersonate-Group", "testers")])
    assert (code, status["message"]) == (500, "requested [Group testers] without impersonating a user")
    # a ServiceAccount impersonated (by the admin), no groups asked for: the account's groups
    code, whoami = plane.rest("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
                              ctx=plane.ssl_context("admin"),
                              headers=[("Impersonate-User", "system:serviceaccount:team-a:default")])
    assert whoami["status"]["userInfo"]["groups"] == ["system:serviceaccounts", "system:serviceaccounts:team-a",
                                                     "system:authenticated"]


def test_impersonation_over_grpc(plane, impersonator):
    channel, stub = plane.grpc_stub(cert=plane.carol, metadata=[("impersonate-user", "bob"),
                                                                ("impersonate-group", "testers")])
    with channel:
        got = stub.Get(api_pb2.GetRequest(resource="configmaps", namespace="team-c", name="cfg"), timeout=10)
        assert got.config_map.metadata.name == "cfg"
        with pytest.raises(grpc.RpcError) as err:  # testers view, they do not edit
            stub.Create(api_pb2.CreateRequest(object=api_pb2.Object(config_map=core_pb2.ConfigMap(
                metadata={"name": "imp-grpc", "namespace": "team-c"}))), timeout=10)
        assert (err.value.code(), err.value.details()) == (grpc.StatusCode.PERMISSION_DENIED, (
            'configmaps is forbidden: User "bob" cannot create resource "configmaps" in API group "" in the '
            'namespace "team-c"'))
    channel, stub = plane.grpc_stub(cert=plane.carol, metadata=[("impersonate-user", "dave")])
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.Create(api_pb2.CreateRequest(object=api_pb2.Object(config_map=core_pb2.ConfigMap(
            metadata={"name": "imp-grpc", "namespace": "team-c"}))), timeout=10)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.PERMISSION_DENIED, (
        'users "dave" is forbidden: User "carol" cannot impersonate resource "users" in API group "" at the '
        'cluster scope'))
    with pytest.raises(ApiError):
        plane.admin.get("configmaps", "imp-grpc", "team-c")
    # the audit log names both: who sent it and whom it acted as
    path = plane.tmp / "audit.log"

    def acted():
        return [e for e in map(json.loads, path.read_text().splitlines())
                if e["user"].get("username") == "carol" and e.get("impersonatedUser", {}).get("username") == "bob"
                and e["requestURI"] == "/apiserver.v1.ApiServer/Get"]
    event = wait_until(acted, "carol acting as bob in the audit log")[-1]
    assert event["impersonatedUser"]["groups"] == ["testers", "system:authenticated"]
    assert event["objectRef"] == {"resource": "configmaps", "namespace": "team-c", "name": "cfg"}


def test_kubectl_as(plane, kubectl, impersonator):
    out = kubectl("admin", "--as", "bob", "get", "configmaps", "-n", "team-a", "-o", "name")
    assert (out.returncode, out.stdout) == (0, "configmap/cfg\nconfigmap/kube-root-ca.crt\n"), out.stderr
    out = kubectl("admin", "--as", "bob", "get", "configmaps", "-n", "team-c")
    assert out.stderr.strip() == ('Error from server (Forbidden): configmaps is forbidden: User "bob" cannot list '
                                  'resource "configmaps" in API group "" in the namespace "team-c"')
    out = kubectl("admin", "--as", "bob", "--as-group", "testers", "get", "configmaps", "-n", "team-c", "-o", "name")
    assert (out.returncode, out.stdout) == (0, "configmap/cfg\nconfigmap/kube-root-ca.crt\n"), out.stderr
    for args, want in ((("get", "configmaps", "-n", "team-c"), "no"),
                       (("get", "configmaps", "-n", "team-c", "--as-group", "testers"), "yes"),
                       (("get", "secrets", "-n", "team-a"), "no"),
                       (("list", "configmaps", "-n", "team-a"), "yes")):
        out = kubectl("admin", "auth", "can-i", "--as", "bob", *args)
        assert out.stdout.strip() == want, (args, out.stdout, out.stderr)
    out = kubectl("admin", "auth", "whoami", "--as", "bob", "--as-group", "testers", "-o", "json")
    assert json.loads(out.stdout)["status"]["userInfo"] == {"username": "bob",
                                                            "groups": ["testers", "system:authenticated"]}, out.stderr


# ---- TokenReview and SubjectAccessReview ----

def _token_review(token: str, audiences=()) -> dict:
    spec = {"token": token}
    if audiences:
        spec["audiences"] = list(audiences)
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}


def _sar(user: str, verb: str, resource: str, namespace: str = "", groups=(), name: str = "",
         group: str = "") -> dict:
    attrs = {"verb": verb, "resource": resource, "group": group}
    if namespace:
        attrs["namespace"] = namespace
    if name:
        attrs["name"] = name
    spec = {"resourceAttributes": attrs, "user": user}
    if groups:
        spec["groups"] = list(groups)
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def test_token_review(plane):
    admin = plane.ssl_context("admin")
    path = "/apis/authentication.k8s.io/v1/tokenreviews"
    code, review = plane.rest("POST", path, _token_review("bob-token-0123456789"), ctx=admin)
    issuer = "https://kubernetes.default.svc.cluster.local"
    assert (code, review["status"]) == (201, {
        "authenticated": True, "audiences": [issuer],
        "user": {"username": "bob", "uid": "1001", "groups": ["devs", "testers", "system:authenticated"]}})
    assert review["kind"] == "TokenReview" and review["spec"]["token"] == "bob-token-0123456789"
    sa = plane.admin.get("serviceaccounts", "default", "team-a")
    good = _sa_token(plane, "team-a", "default", uid=sa.metadata.uid)
    code, review = plane.rest("POST", path, _token_review(good), ctx=admin)
    assert review["status"]["user"] == {"username": "system:serviceaccount:team-a:default", "uid": sa.metadata.uid,
                                        "groups": ["system:serviceaccounts", "system:serviceaccounts:team-a",
                                                   "system:authenticated"]}
    # a token for another audience, an expired one, an unknown one: not authenticated, never an error
    for token, audiences, error in (
            (good, ["https://elsewhere"], "[invalid bearer token, token audiences are not accepted]"),
            (_sa_token(plane, "team-a", "default", exp_delta=-3 * tokens.LEEWAY, uid=sa.metadata.uid), (),
             "[invalid bearer token, token has expired]"),
            ("no-such-token", (), "invalid bearer token")):
        code, review = plane.rest("POST", path, _token_review(token, audiences), ctx=admin)
        assert (code, review["status"]) == (201, {"user": {}, "error": error})
    code, status = plane.rest("POST", path, _token_review(""), ctx=admin)
    assert (code, status["message"]) == (400, "token is required for TokenReview in authentication")
    # who may ask: system:auth-delegator's holders (not bob)
    code, status = plane.rest("POST", path, _token_review("bob-token-0123456789"), token="bob-token-0123456789")
    assert (code, status["message"]) == (403, (
        'tokenreviews.authentication.k8s.io is forbidden: User "bob" cannot create resource "tokenreviews" in API '
        'group "authentication.k8s.io" at the cluster scope'))


def test_subject_access_reviews_answer_as_rbac(plane, kubectl):
    admin = plane.ssl_context("admin")
    path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    for review, status in (
            (_sar("bob", "list", "configmaps", "team-a"),
             {"allowed": True, "reason": 'RBAC: allowed by RoleBinding "viewers/team-a" of ClusterRole "view" to '
                                         'User "bob"'}),
            (_sar("bob", "get", "secrets", "team-a", name="db"), {"allowed": False}),
            (_sar("bob", "list", "configmaps", "kube-system"), {"allowed": False}),
            (_sar("nobody", "delete", "secrets", "team-b", groups=["system:masters"]), {"allowed": True}),
            (_sar("system:serviceaccount:team-a:default", "create", "selfsubjectaccessreviews",
                  groups=["system:authenticated"], group="authorization.k8s.io"),
             {"allowed": True, "reason": 'RBAC: allowed by ClusterRoleBinding "system:basic-user" of ClusterRole '
                                         '"system:basic-user" to Group "system:authenticated"'}),
            # the groups are taken as given: without system:authenticated, no basic-user
            (_sar("system:serviceaccount:team-a:default", "create", "selfsubjectaccessreviews",
                  group="authorization.k8s.io"), {"allowed": False})):
        code, got = plane.rest("POST", path, review, ctx=admin)
        assert (code, got["status"]) == (201, status), review
    code, got = plane.rest("POST", path, {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                                          "spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}}},
                           ctx=admin)
    assert (code, got["message"]) == (422, 'SubjectAccessReview.authorization.k8s.io "" is invalid: spec.user: '
                                           'Invalid value: "": at least one of user or group must be specified')
    # bob may not ask about others until he holds system:auth-delegator
    bob = "bob-token-0123456789"
    code, got = plane.rest("POST", path, _sar("carol", "get", "secrets", "team-a"), token=bob)
    assert (code, got["message"]) == (403, (
        'subjectaccessreviews.authorization.k8s.io is forbidden: User "bob" cannot create resource '
        '"subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope'))
    out = kubectl("admin", "create", "clusterrolebinding", "bob-delegator", "--clusterrole=system:auth-delegator",
                  "--user=bob")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: plane.rest("POST", path, _sar("carol", "get", "secrets", "team-a"), token=bob)[0] == 201,
               "bob's system:auth-delegator")
    assert plane.rest("POST", "/apis/authentication.k8s.io/v1/tokenreviews", _token_review(bob),
                      token=bob)[1]["status"]["user"]["username"] == "bob"
    # LocalSubjectAccessReview: one namespace, the path's; kubectl create -f answers with the status
    lsar = {"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
            "metadata": {"namespace": "team-a"},
            "spec": {"user": "carol", "resourceAttributes": {"namespace": "team-a", "verb": "watch",
                                                             "resource": "configmaps"}}}
    manifest_path = plane.tmp / "lsar.json"
    manifest_path.write_text(json.dumps(lsar))
    out = kubectl("admin", "create", "-f", str(manifest_path), "-o", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == {
        "allowed": True, "reason": 'RBAC: allowed by RoleBinding "viewers/team-a" of ClusterRole "view" to User "carol"'}
    lsar["spec"]["resourceAttributes"]["namespace"] = "team-b"
    code, got = plane.rest("POST", "/apis/authorization.k8s.io/v1/namespaces/team-a/localsubjectaccessreviews",
                           lsar, ctx=admin)
    assert (code, got["message"]) == (400, "spec.resourceAttributes.namespace must match namespace: team-a")
    # kubectl sends fieldValidation=Strict (the openapi document says these kinds take it)
    typo = _sar("carol", "get", "secrets", "team-a")
    typo["spec"]["resourceAttributes"]["nmespace"] = "team-a"
    code, got = plane.rest("POST", path + "?fieldValidation=Strict", typo, ctx=admin)
    assert (code, got["message"]) == (400, 'strict decoding error: unknown field "spec.resourceAttributes.nmespace"')
    sar_path = plane.tmp / "sar.json"
    sar_path.write_text(json.dumps(_sar("carol", "get", "secrets", "team-a")))
    out = kubectl("admin", "create", "-f", str(sar_path), "-o", "jsonpath={.status.allowed}")
    assert (out.returncode, out.stdout) == (0, "false"), out.stderr
    out = kubectl("admin", "api-resources", "--api-group=authorization.k8s.io", "-o", "name")
    assert out.stdout.split() == ["localsubjectaccessreviews.authorization.k8s.io",
                                  "selfsubjectaccessreviews.authorization.k8s.io",
                                  "selfsubjectrulesreviews.authorization.k8s.io",
                                  "subjectaccessreviews.authorization.k8s.io"], out.stderr
    out = kubectl("admin", "api-resources", "--api-group=authentication.k8s.io", "-o", "name")
    assert out.stdout.split() == ["selfsubjectreviews.authentication.k8s.io",
                                  "tokenreviews.authentication.k8s.io"], out.stderr


# ---- make run's commands ----

def test_make_run_is_secure_by_default(tmp_path):
    """`make run` (controllers.plane): the apiserver on TLS with RBAC and no anonymous
    requests, every component with a kubeconfig of its own identity, the admin's
    kubeconfig with a client certificate; --insecure as before."""
    import yaml

    from controllers import plane as make_run

    args = make_run.build_parser().parse_args(["--data-dir", str(tmp_path), "--real-nodes", "0", "--nodes", "2"])
    make_run.choose_nodes(args)
    cmds = make_run.commands(args)
    api = cmds["apiserver"]
    for flag in ("--tls-cert-file", "--tls-private-key-file", "--client-ca-file", "--service-account-key-file",
                 "--service-account-signing-key-file"):
        assert Path(api[api.index(flag) + 1]).exists(), flag
    assert api[api.index("--authorization-mode") + 1] == "Node,RBAC"
    assert api[api.index("--anonymous-auth") + 1] == "false"
    # the apiserver reaches kubelets with its own certificate (system:kubelet-api-admin)
    cert = x509.load_pem_x509_certificate(Path(api[api.index("--kubelet-client-certificate") + 1]).read_bytes())
    assert cert.subject.rfc4514_string() == "CN=kube-apiserver-kubelet-client"
    etcd = cmds["etcdlite"]
    assert etcd[etcd.index("--listen-client-urls") + 1].startswith("https://") and "--client-cert-auth" in etcd
    assert api[api.index("--etcd-servers") + 1] == etcd[etcd.index("--listen-client-urls") + 1]
    assert Path(api[api.index("--etcd-certfile") + 1]).exists()
    cm = cmds["controller-manager"]
    assert Path(cm[cm.index("--root-ca-file") + 1]).read_bytes() == args.security.pki.ca.cert_path.read_bytes()
    users = {}
    for name in ("controller-manager", "scheduler"):
        config = yaml.safe_load(Path(args.envs[name]["KUBECONFIG"]).read_text())
        assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
        cert = x509.load_pem_x509_certificate(base64.b64decode(config["users"][0]["user"]["client-certificate-data"]))
        users[name] = cert.subject.rfc4514_string()
    assert users == {"controller-manager": "CN=system:kube-controller-manager",
                     "scheduler": "CN=system:kube-scheduler"}
    # the hollow nodes join with a bootstrap token and get a certificate each (TLS bootstrap)
    assert "kubelets" not in args.envs and "--enable-bootstrap-token-auth" in api
    assert Path(cm[cm.index("--cluster-signing-key-file") + 1]) == args.security.pki.ca.key_path
    kubelets = cmds["kubelets"]
    boot = yaml.safe_load(Path(kubelets[kubelets.index("--bootstrap-kubeconfig") + 1]).read_text())
    assert boot["users"][0]["user"] == {"token": args.security.bootstrap_token}
    admin = yaml.safe_load((tmp_path / "kubeconfig").read_text())
    assert admin["users"][0]["user"]["client-key-data"] and (tmp_path / "kubeconfig").stat().st_mode & 0o077 == 0
    # the cloud's kubelets serve their API on TLS and ask the apiserver who may use it
    (tmp_path / "c").mkdir()
    cloud = make_run.build_parser().parse_args(["--data-dir", str(tmp_path / "c"), "--cloud", "1:2"])
    try:
        make_run.choose_nodes(cloud)
    except SystemExit:  # a machine that cannot run real nodes has no cloud
        cloud = None
    if cloud is not None:
        kubelet = [a.split("=", 1)[1] for a in make_run.commands(cloud)["cloud"] if a.startswith("--kubelet-arg=")]
        assert kubelet[kubelet.index("--authorization-mode") + 1] == "Webhook"
        assert "--authentication-token-webhook" in kubelet
        assert Path(kubelet[kubelet.index("--tls-cert-file") + 1]).exists()
    insecure = make_run.build_parser().parse_args(["--data-dir", str(tmp_path / "i"), "--insecure", "--real-nodes",
                                                   "0"])
    (tmp_path / "i").mkdir()
    make_run.choose_nodes(insecure)
    insecure_cmds = make_run.commands(insecure)
    assert "--tls-cert-file" not in insecure_cmds["apiserver"] and insecure.envs == {}
    assert "--root-ca-file" not in insecure_cmds["controller-manager"]
