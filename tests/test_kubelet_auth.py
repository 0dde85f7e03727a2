"""Issue 23: the kubelet's API asks the apiserver who may use it, as Kubernetes'
kubelet with --client-ca-file, --authentication-token-webhook and
--authorization-mode=Webhook; the apiserver reaches kubelets with its own kubelet
client certificate (--kubelet-client-certificate), bound to system:kubelet-api-admin.

One secure plane (TLS, Node+RBAC, a token file) and one real node whose kubelet
serves its API over TLS with the cluster CA's certificate. Direct calls to the
kubelet's port: no credentials 401, a token or certificate of a user RBAC gives no
nodes/proxy 403 in the kubelet's words, a user granted system:kubelet-api-admin
(through its token, a TokenReview, then a SubjectAccessReview) served; gRPC the
same. Through the apiserver, kubectl logs and exec work with the apiserver's
certificate. Needs root, runc, conmon, busybox-static."""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import ssl
import subprocess

import grpc
import pytest

from apiserver.auth import pki as pkis
from apiserver.pb import core_pb2, rbac_pb2
from harness.etcd_client import wait_until as poll
from harness.nodes import need_runtime, real_nodes, running_pod
from harness.plane import start_control_plane
from harness.procs import Registry
from node.pb import kubelet_pb2, kubelet_pb2_grpc
from tests.test_kubectl import KUBECTL

pytestmark = pytest.mark.process

NS = "kubelet-auth"
TIMEOUT = 60.0
TOKENS = 'bob-token-0123456789,bob,1001\ndave-token-0123456789,dave,1002,"ops"\n'
BOB, DAVE = "bob-token-0123456789", "dave-token-0123456789"


def wait_until(check, what: str):
    return poll(check, TIMEOUT, what=what)



@contextlib.contextmanager
def secure_node(tmp, reg: Registry, namespace: str, *kubelet_extra: str, apiserver_flags: dict | None = None):
    """A secure plane (TLS, Node+RBAC, the TOKENS file) and one real node whose kubelet serves
    its API over TLS with the cluster CA's certificate, reviewing callers at the apiserver;
    dave (group ops) may use every kubelet's API, bob may view ``namespace`` only.
    ``apiserver_flags``: more of the apiserver's (harness spelling). Yields (api, pki, admin
    client, node)."""
    pki = pkis.plane_pki(tmp / "pki")
    token_file = tmp / "tokens.csv"
    token_file.write_text(TOKENS)
    serving = pki.kubelet_serving("n0")
    kubelet_args = ("--tls-cert-file", str(serving.cert), "--tls-private-key-file", str(serving.key),
                    "--client-ca-file", str(pki.ca.cert_path), "--authentication-token-webhook",
                    "--authorization-mode", "Webhook", "--anonymous-auth", "false", *kubelet_extra)
    api = start_control_plane(tmp, reg, pki=pki, token_auth_file=str(token_file), **pki.kubelet_client_flags(),
                              **(apiserver_flags or {}))
    admin = api.client("admin")

    def kubeconfig(who: str) -> str:  # who: "node-<name>" (the kubelet's identity)
        return api.kubeconfig(tmp / f"{who}.kubeconfig", who)

    with real_nodes(tmp, api.endpoint, 1, kubelet_args=kubelet_args, kubeconfig=kubeconfig) as nodes, \
            contextlib.closing(admin):
        node = nodes.layout.nodes[0]
        wait_until(lambda: any(c.type == "Ready" and c.status == "True"
                               for c in admin.get("nodes", node.name, "").status.conditions),
                   "the real node Ready")
        admin.create(rbac_pb2.ClusterRoleBinding(
            metadata={"name": "ops-kubelet-api"},
            role_ref=rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                      name="system:kubelet-api-admin"),
            subjects=[rbac_pb2.Subject(kind="Group", api_group="rbac.authorization.k8s.io", name="ops")]))
        admin.create(core_pb2.Namespace(metadata={"name": namespace}))
        admin.create(rbac_pb2.RoleBinding(
            metadata={"name": "bob-view", "namespace": namespace},
            role_ref=rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"),
            subjects=[rbac_pb2.Subject(kind="User", api_group="rbac.authorization.k8s.io", name="bob")]))
        yield api, pki, admin, node


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    need_runtime()
    reg = Registry()
    tmp = tmp_path_factory.mktemp("kubeletauth")
    try:
        with secure_node(tmp, reg, NS) as (api, pki, admin, node):
            pod = core_pb2.Pod(metadata={"name": "talker", "namespace": NS})
            pod.spec.termination_grace_period_seconds = 1
            pod.spec.automount_service_account_token = False
            pod.spec.containers.add(name="c", image="busybox",
                                    command=["sh", "-c", "echo hello from talker; sleep 3600"])
            admin.create(pod)
            wait_until(lambda: running_pod(admin, "talker", NS), "the pod running")
            port = admin.get("nodes", node.name, "").status.daemon_endpoints.kubelet_endpoint.port
            wait_until(lambda: admin_logs(api, pki, port, node.name), "the pod's first line in its log")
            yield api, pki, admin, node, port, tmp
    finally:
        reg.cleanup()


def kubelet_get(pki, port: int, path: str, *, token: str = "", cert=None) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    ctx.set_alpn_protocols(["h2", "http/1.1"])  # as curl offers: the kubelet picks HTTP/1.1
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def admin_logs(api, pki, port, node) -> bool:
    code, text = kubelet_get(pki, port, f"/containerLogs/{NS}/talker/c", cert=pki.clients["admin"])
    return code == 200 and "hello from talker" in text


def test_kubelet_refuses_who_the_apiserver_does_not_allow(plane):
    api, pki, admin, node, port, tmp = plane
    logs = f"/containerLogs/{NS}/talker/c"
    assert kubelet_get(pki, port, logs) == (401, "Unauthorized\n")
    assert kubelet_get(pki, port, "/healthz") == (401, "Unauthorized\n")
    assert kubelet_get(pki, port, logs, token="no-such-token") == (401, "Unauthorized\n")
    forbidden = "Forbidden (user={}, verb={}, resource=nodes, subresource={})\n"
    assert kubelet_get(pki, port, logs, token=BOB) == (403, forbidden.format("bob", "get", "proxy"))
    assert kubelet_get(pki, port, "/metrics", token=BOB) == (403, forbidden.format("bob", "get", "metrics"))
    # a certificate of the cluster CA: who it names, and what RBAC gives that user
    assert kubelet_get(pki, port, logs, cert=pki.clients["scheduler"]) == \
        (403, forbidden.format("system:kube-scheduler", "get", "proxy"))
    # served: dave's token (the ops group, system:kubelet-api-admin), the admin's certificate
    code, text = kubelet_get(pki, port, logs, token=DAVE)
    assert code == 200 and text.startswith("hello from talker"), text
    assert kubelet_get(pki, port, "/healthz", cert=pki.clients["admin"]) == (200, "ok")
    # the gRPC side of the port: the same answers
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_path.read_bytes())
    request = kubelet_pb2.LogsRequest(namespace=NS, pod="talker", container="c")
    for metadata, code, details in (
            ((), grpc.StatusCode.UNAUTHENTICATED, "Unauthorized"),
            ((("authorization", f"Bearer {BOB}"),), grpc.StatusCode.PERMISSION_DENIED,
             "Forbidden (user=bob, verb=get, resource=nodes, subresource=proxy)")):
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            with pytest.raises(grpc.RpcError) as err:
                list(kubelet_pb2_grpc.KubeletStub(channel).ContainerLogs(request, metadata=metadata, timeout=10))
            assert (err.value.code(), err.value.details()) == (code, details)
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        chunks = kubelet_pb2_grpc.KubeletStub(channel).ContainerLogs(
            request, metadata=(("authorization", f"Bearer {DAVE}"),), timeout=10)
        assert b"".join(c.data for c in chunks).startswith(b"hello from talker")


def test_a_certificate_that_does_not_verify_is_unauthorized_at_the_kubelet(plane):
    """As the kubelet (Go's tls.RequestClientCert): the handshake completes, a certificate
    from another CA or expired authenticates no one (401, anonymous or not), and a token
    beside it is still tried."""
    api, pki, admin, node, port, tmp = plane
    now = datetime.datetime.now(datetime.timezone.utc)
    bad = {"another-ca": pkis.CA(tmp / "another-ca", cn="another-ca").issue("admin2", "kubernetes-admin",
                                                                          ("system:masters", "ops")),
           "expired": pki.ca.issue("old-admin", "kubernetes-admin", ("system:masters", "ops"),
                                   not_after=now - datetime.timedelta(minutes=1))}
    logs = f"/containerLogs/{NS}/talker/c"
    for why, cert in bad.items():
        assert kubelet_get(pki, port, logs, cert=cert) == (401, "Unauthorized\n"), why
        code, text = kubelet_get(pki, port, logs, cert=cert, token=DAVE)
        assert code == 200 and text.startswith("hello from talker"), (why, text)
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_path.read_bytes(),
                                             private_key=cert.key.read_bytes(),
                                             certificate_chain=cert.cert.read_bytes())
        request = kubelet_pb2.LogsRequest(namespace=NS, pod="talker", container="c")
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            with pytest.raises(grpc.RpcError) as err:
                list(kubelet_pb2_grpc.KubeletStub(channel).ContainerLogs(request, timeout=10))
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, "Unauthorized"), why


def test_the_apiserver_reaches_the_kubelet_with_its_own_certificate(plane):
    """kubectl logs and exec as the admin and as bob (pods/log is view's): the apiserver's
    kubelet client certificate passes the kubelet's review, whoever asked the apiserver."""
    api, pki, admin, node, port, tmp = plane
    if KUBECTL is None:
        pytest.skip("kubectl not found: run harness/get_kubectl.sh")
    home = tmp / "kubectl-home"
    home.mkdir(exist_ok=True)

    def kubectl(who: str, *args: str, token: str = "") -> subprocess.CompletedProcess:
        config = api.kubeconfig(home / f"kubeconfig-{who or 'token'}", who, token=token)
        return subprocess.run([KUBECTL, "--kubeconfig", config, "-n", NS, *args], capture_output=True, text=True,
                              timeout=60, env={"HOME": str(home), "PATH": "/usr/bin:/bin"})

    out = kubectl("", "logs", "talker", token=BOB)
    assert (out.returncode, out.stdout) == (0, "hello from talker\n"), out.stderr
    out = kubectl("admin", "exec", "talker", "--", "echo", "exec through the apiserver")
    assert (out.returncode, out.stdout) == (0, "exec through the apiserver\n"), out.stderr
    out = kubectl("", "exec", "talker", "--", "true", token=BOB)  # view has no pods/exec
    assert out.returncode != 0 and 'User "bob" cannot' in out.stderr and '"pods/exec"' in out.stderr, out.stderr
    # the apiserver's identity is what the kubelet saw: its SubjectAccessReview, as RBAC answers it
    code, review = _sar(api, pki, "kube-apiserver-kubelet-client", "create", "proxy", node.name)
    assert (code, review["status"]) == (201, {
        "allowed": True, "reason": 'RBAC: allowed by ClusterRoleBinding "system:kube-apiserver-kubelet-client" of '
                                   'ClusterRole "system:kubelet-api-admin" to User "kube-apiserver-kubelet-client"'})


def _sar(api, pki, user: str, verb: str, subresource: str, node: str) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    admin = pki.clients["admin"]
    ctx.load_cert_chain(str(admin.cert), str(admin.key))
    conn = http.client.HTTPSConnection("127.0.0.1", api.port, context=ctx, timeout=10)
    body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": ["system:authenticated"],
                     "resourceAttributes": {"verb": verb, "resource": "nodes", "subresource": subresource,
                                            "name": node}}}
    try:
        conn.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_kubelets_pods_endpoint_lists_its_pods_with_their_status(plane):
    """GET /pods on the kubelet's port: the PodList of the pods bound to the node, each with the
    status the kubelet made (upstream's GetPods), for who may use nodes/proxy."""
    api, pki, admin, node, port, tmp = plane
    code, text = kubelet_get(pki, port, "/pods", token=DAVE)
    assert code == 200, text
    body = json.loads(text)
    assert (body["kind"], body["apiVersion"]) == ("PodList", "v1")
    (talker,) = [p for p in body["items"] if p["metadata"]["name"] == "talker"]
    assert (talker["kind"], talker["apiVersion"], talker["metadata"]["namespace"]) == ("Pod", "v1", NS)
    assert talker["spec"]["nodeName"] == node.name
    assert talker["metadata"]["uid"] == admin.get("pods", "talker", NS).metadata.uid
    assert talker["status"]["phase"] == "Running"
    (c,) = talker["status"]["containerStatuses"]
    assert c["name"] == "c" and "running" in c["state"] and c["ready"] is True
    assert kubelet_get(pki, port, "/pods", token=BOB) == (
        403, "Forbidden (user=bob, verb=get, resource=nodes, subresource=proxy)\n")
    assert kubelet_get(pki, port, "/pods") == (401, "Unauthorized\n")
