"""Issue 23: a ServiceAccount token works from inside a pod and stops working when the account
is deleted. A secure plane (TLS, Node+RBAC, the ServiceAccount signing key, the controller-
manager publishing kube-root-ca.crt) and one real node whose kubelet runs with its own node
certificate. The apiserver's ServiceAccount admission gives a pod the `default` account and
the kube-api-access-xxxxx projected volume; the kubelet writes the token it got by TokenRequest
(bound to the pod), the CA and the namespace there. The token ends with its account, and
with its pod.

Pods cannot reach the apiserver: it listens on the machine's 127.0.0.1 and a pod's network
namespace has its own loopback. So the token is read from inside the container (CRI ExecSync,
as `kubectl exec` ends up doing) and presented by the test process, which is what a process in
the pod would send. Needs root, runc, conmon, busybox-static."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import ssl
import time

import pytest

from apiserver.auth import pki as pkis
from apiserver.errors import ApiError
from apiserver.pb import core_pb2, rbac_pb2, serviceaccount_pb2
from harness.nodes import need_runtime, real_nodes
from harness.plane import start_control_plane
from harness.procs import Registry
from node.cri.client import CriClient
from node.kubelet.satoken import TokenManager

pytestmark = pytest.mark.process

NS = "sa-test"
MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
TIMEOUT = 60.0


def wait_until(check, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _get(client, kind, name, ns=NS):
    try:
        return client.get(kind, name, ns)
    except ApiError as e:
        if e.reason == "NotFound":
            return None
        raise


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    need_runtime()
    reg = Registry()
    tmp = tmp_path_factory.mktemp("satoken")
    pki = pkis.plane_pki(tmp / "pki")
    try:
        api = start_control_plane(tmp, reg, pki=pki)
        admin = api.client("admin")

        def kubeconfig(node: str) -> str:
            return api.kubeconfig(tmp / f"kubelet-{node}.kubeconfig", f"node-{node}")

        with real_nodes(tmp, api.endpoint, 1, kubeconfig=kubeconfig) as nodes, contextlib.closing(admin):
            node = nodes.layout.nodes[0]
            wait_until(lambda: any(c.type == "Ready" and c.status == "True"
                                   for c in admin.get("nodes", node.name, "").status.conditions),
                       "the real node Ready")
            admin.create(core_pb2.Namespace(metadata={"name": NS}))
            # the account may view its own namespace, nothing else
            admin.create(rbac_pb2.RoleBinding(
                metadata={"name": "default-view", "namespace": NS},
                role_ref=rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="view"),
                subjects=[rbac_pb2.Subject(kind="ServiceAccount", name="default", namespace=NS)]))
            wait_until(lambda: _get(admin, "serviceaccounts", "default"), "the default ServiceAccount")
            wait_until(lambda: _get(admin, "configmaps", "kube-root-ca.crt"), "the root CA ConfigMap")
            yield api, pki, admin, node
    finally:
        reg.cleanup()


def rest(api, pki, method: str, path: str, token: str, body=None) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    conn = http.client.HTTPSConnection("127.0.0.1", api.port, context=ctx, timeout=10)
    headers = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def exec_in(node, pod, cmd: list[str]) -> str:
    with contextlib.closing(CriClient(node.cri_socket, timeout=30)) as cri:
        cid = pod.status.container_statuses[0].container_id.split("://", 1)[1]
        resp = cri.exec_sync(cid, cmd, timeout=10)
    assert resp.exit_code == 0, (cmd, resp.stderr)
    return resp.stdout.decode()


def running(admin, name):
    pod = admin.get("pods", name, NS)
    cs = pod.status.container_statuses
    return pod if cs and cs[0].state.HasField("running") else None


def sleeper(name: str) -> core_pb2.Pod:
    p = core_pb2.Pod(metadata={"name": name, "namespace": NS})
    p.spec.termination_grace_period_seconds = 1
    p.spec.containers.add(name="c", image="busybox", command=["sleep", "3600"])
    return p


def test_a_pods_token_authenticates_as_its_account_until_the_account_is_deleted(plane):
    api, pki, admin, node = plane
    admin.create(sleeper("reader"))
    created = admin.get("pods", "reader", NS)
    assert created.spec.service_account_name == "default"
    [volume] = [v for v in created.spec.volumes if v.name.startswith("kube-api-access-")]
    assert [s.service_account_token.expiration_seconds for s in volume.projected.sources
            if s.HasField("service_account_token")] == [3607]
    assert [(m.name, m.mount_path, m.read_only) for m in created.spec.containers[0].volume_mounts] == \
        [(volume.name, MOUNT, True)]

    pod = wait_until(lambda: running(admin, "reader"), "the pod running")
    assert sorted(exec_in(node, pod, ["ls", MOUNT]).split()) == ["ca.crt", "namespace", "token"]
    assert exec_in(node, pod, ["cat", f"{MOUNT}/namespace"]) == NS
    assert exec_in(node, pod, ["cat", f"{MOUNT}/ca.crt"]) == pki.ca.cert_path.read_text()
    token = exec_in(node, pod, ["cat", f"{MOUNT}/token"])
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["sub"] == f"system:serviceaccount:{NS}:default"
    assert claims["kubernetes.io"]["pod"] == {"name": "reader", "uid": pod.metadata.uid}  # bound to the pod
    assert 3600 <= claims["exp"] - claims["iat"] <= 3607

    # who the token is, and what RBAC gives that account: view in its namespace only
    code, review = rest(api, pki, "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", token,
                        {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                         "spec": {"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": NS}}})
    assert (code, review["status"]["allowed"]) == (201, True), review
    code, listed = rest(api, pki, "GET", f"/api/v1/namespaces/{NS}/pods", token)
    assert code == 200 and [p["metadata"]["name"] for p in listed["items"]] == ["reader"]
    code, refused = rest(api, pki, "GET", f"/api/v1/namespaces/{NS}/secrets", token)
    assert code == 403 and f"system:serviceaccount:{NS}:default" in refused["message"], refused
    code, refused = rest(api, pki, "GET", "/api/v1/namespaces/default/pods", token)
    assert code == 403, refused
    code, refused = rest(api, pki, "DELETE", f"/api/v1/namespaces/{NS}/pods/reader", token)
    assert code == 403 and _get(admin, "pods", "reader") is not None

    # the account goes (the controller makes a new `default`, another uid): the token dies with it
    uid = admin.get("serviceaccounts", "default", NS).metadata.uid
    admin.delete("serviceaccounts", "default", NS)
    wait_until(lambda: rest(api, pki, "GET", f"/api/v1/namespaces/{NS}/pods", token)[0] == 401,
               "the deleted account's token refused", timeout=20)
    code, status = rest(api, pki, "GET", f"/api/v1/namespaces/{NS}/pods", token)
    assert (code, status["reason"], status["message"]) == (401, "Unauthorized", "Unauthorized")
    again = wait_until(lambda: _get(admin, "serviceaccounts", "default"), "default made again")
    assert again.metadata.uid != uid
    assert rest(api, pki, "GET", f"/api/v1/namespaces/{NS}/pods", token)[0] == 401
    admin.delete("pods", "reader", NS)


def test_a_pods_token_stops_working_when_the_pod_is_gone(plane):
    api, pki, admin, node = plane
    wait_until(lambda: _get(admin, "serviceaccounts", "default"), "the default ServiceAccount")
    admin.create(sleeper("brief"))
    pod = wait_until(lambda: running(admin, "brief"), "the pod running")
    token = exec_in(node, pod, ["cat", f"{MOUNT}/token"])
    assert rest(api, pki, "GET", f"/api/v1/namespaces/{NS}/configmaps", token)[0] == 200
    admin.delete("pods", "brief", NS)
    wait_until(lambda: _get(admin, "pods", "brief") is None, "the pod gone", timeout=30)
    code, status = rest(api, pki, "GET", f"/api/v1/namespaces/{NS}/configmaps", token)
    assert (code, status["message"]) == (401, "Unauthorized")


def test_automount_false_and_bad_token_sources(plane):
    api, pki, admin, node = plane
    p = sleeper("no-token")
    p.spec.automount_service_account_token = False
    admin.create(p)
    got = admin.get("pods", "no-token", NS)
    assert got.spec.service_account_name == "default" and not got.spec.volumes
    assert not got.spec.containers[0].volume_mounts
    admin.delete("pods", "no-token", NS)
    # an account that says no: its pods get no token unless they ask for one
    admin.create(serviceaccount_pb2.ServiceAccount(metadata={"name": "quiet", "namespace": NS},
                                                   automount_service_account_token=False))
    p = sleeper("quiet-pod")
    p.spec.service_account_name = "quiet"
    admin.create(p)
    assert not admin.get("pods", "quiet-pod", NS).spec.volumes
    p = sleeper("asks")
    p.spec.service_account_name, p.spec.automount_service_account_token = "quiet", True
    admin.create(p)
    assert [v.name[:16] for v in admin.get("pods", "asks", NS).spec.volumes] == ["kube-api-access-"]
    for name in ("quiet-pod", "asks"):
        admin.delete("pods", name, NS)

    bad = sleeper("short")
    bad.spec.volumes.add(name="t", projected=core_pb2.ProjectedVolumeSource(sources=[core_pb2.VolumeProjection(
        service_account_token=core_pb2.ServiceAccountTokenProjection(path="../t", expiration_seconds=60))]))
    with pytest.raises(ApiError) as err:
        admin.create(bad)
    assert err.value.reason == "Invalid"
    assert "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds: Invalid value: 60: " \
           "may not specify a duration less than 10 minutes" in err.value.message
    assert "must not contain '..'" in err.value.message
    bad = sleeper("downward")
    bad.spec.volumes.add(name="d", downward_api=core_pb2.DownwardAPIVolumeSource(items=[
        core_pb2.DownwardAPIVolumeFile(path="ip", field_ref=core_pb2.ObjectFieldSelector(field_path="status.podIP"))]))
    with pytest.raises(ApiError) as err:
        admin.create(bad)
    assert 'spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath: Unsupported value: "status.podIP"' \
        in err.value.message


def test_the_token_manager_renews_after_80_percent_of_a_tokens_life():
    now = [1000.0]
    issued = []

    def request(ns, account, pod, uid, audience, seconds):
        issued.append(now[0])
        return f"t{len(issued)}", now[0] + seconds

    tokens = TokenManager(request, clock=lambda: now[0])
    args = (NS, "default", "p", "uid-1", "", 3607)
    assert tokens.token(*args) == "t1"
    now[0] += 0.79 * 3607
    assert tokens.token(*args) == "t1"
    now[0] += 0.02 * 3607
    assert tokens.token(*args) == "t2"
    tokens.forget("uid-1")
    assert tokens.token(*args) == "t3"
