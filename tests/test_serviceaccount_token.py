"""Issue 23: a pod reaches the apiserver through the `kubernetes` Service with its ServiceAccount
token, as in Kubernetes, and the token stops working when the account is deleted. A secure plane
(TLS, Node+RBAC, the ServiceAccount signing key, the controller-manager publishing
kube-root-ca.crt, an audit log) and one real node with kube-proxy and the cluster DNS, every
component with its own certificate. The apiserver's ServiceAccount admission gives a pod the
`default` account and the kube-api-access-xxxxx projected volume; the kubelet writes the token it
got by TokenRequest (bound to the pod), the CA and the namespace there.

The apiserver listens on the machine's 127.0.0.1 and also on 10.250.0.254 inside the plane's
control-plane namespace on the nodes' fabric (--bind-netns), the `kubernetes` Service's endpoint;
the node's kube-proxy leads 10.96.0.1:443 there. The requests are made from inside the pod:
- from the container, busybox's wget goes by name (https://kubernetes.default.svc, resolved by the
  cluster DNS through the pod's resolv.conf) and reaches the apiserver's TLS listener; but
  busybox's own TLS (the image has no openssl for it to call) sends no signature_algorithms, so
  it could only have SHA-1 handshake signatures, which the apiserver's OpenSSL (security level 2)
  refuses: the handshake ends there, and busybox cannot check a server against a CA anyway;
- so the request itself goes from the pod sandbox's network namespace (a socket made in it,
  node.network.netns) with Python's http.client + ssl, with the ca.crt and token read from
  inside the container (CRI ExecSync), the name resolved by the cluster DNS from there too: the
  server is verified with the mounted CA against the Service's name and its IP, as client-go in
  a pod would.
The audit log shows the pod's own address as the request's source. Needs root, runc, conmon,
busybox-static, nftables."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import time

import pytest

from apiserver.auth import pki as pkis
from apiserver.errors import ApiError
from apiserver.pb import core_pb2, rbac_pb2, serviceaccount_pb2
from harness.nodes import control_plane_flags, need_runtime, real_nodes
from harness.plane import start_control_plane
from harness.procs import Registry
from node.cri.client import CriClient
from node.kubelet.satoken import TokenManager
from node.network.fabric import CONTROL_PLANE_IP
from node.network.netns import connect_in, socket_in

pytestmark = pytest.mark.process

NS = "sa-test"
MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_IP = "10.96.0.1"
SERVICE_NAME = "kubernetes.default.svc"
TIMEOUT = 60.0


def wait_until(check, what, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


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
    audit = tmp / "audit.log"
    try:
        api = start_control_plane(tmp, reg, pki=pki, audit_log_path=str(audit), **control_plane_flags(tmp))
        admin = api.client("admin")

        def kubeconfig(who: str) -> str:
            return api.kubeconfig(tmp / f"{who}.kubeconfig", who)

        with real_nodes(tmp, api.endpoint, 1, services=True, kubeconfig=kubeconfig) as nodes, \
                contextlib.closing(admin):
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
            yield api, pki, admin, node, audit
    finally:
        reg.cleanup()


def rest(api, pki, method: str, path: str, token: str, body=None) -> tuple[int, dict]:
    """A request from the test process, on the apiserver's 127.0.0.1 (for a pod that is gone)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    conn = http.client.HTTPSConnection("127.0.0.1", api.port, context=ctx, timeout=10)
    return _request(conn, method, path, token, body)


def _request(conn: http.client.HTTPConnection, method: str, path: str, token: str, body=None):
    headers = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


class PodHTTPS(http.client.HTTPSConnection):
    """HTTPS from inside a pod's network namespace to ``address``, the server checked against
    ``host`` (a name or an IP) with the context's CA."""

    def __init__(self, netns: str, host: str, address: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(host, port, context=context, timeout=10)
        self.netns, self.address = netns, address

    def connect(self) -> None:
        sock = connect_in(self.netns, self.address, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class InPod:
    """What a process in the pod has and does: its files (read by CRI ExecSync in its container)
    and its network namespace (the sandbox's, from the runtime)."""

    def __init__(self, node, pod) -> None:
        self.node, self.pod = node, pod
        self.container = pod.status.container_statuses[0].container_id.split("://", 1)[1]
        with contextlib.closing(CriClient(node.cri_socket, timeout=30)) as cri:
            [c] = [c for c in cri.list_containers() if c.id == self.container]
            info = json.loads(cri.pod_sandbox_status(c.pod_sandbox_id, verbose=True).info["info"])
        self.netns = info["netns"]

    def run(self, cmd: list[str], check: bool = True):
        with contextlib.closing(CriClient(self.node.cri_socket, timeout=30)) as cri:
            resp = cri.exec_sync(self.container, cmd, timeout=20)
        if check:
            assert resp.exit_code == 0, (cmd, resp.stderr)
        return resp

    def cat(self, path: str) -> str:
        return self.run(["cat", path]).stdout.decode()

    def resolve(self, name: str) -> str:
        """``name`` as the pod's resolver would find it: an A query to the pod's nameserver, sent
        from its namespace, with its resolv.conf's search list."""
        import dns.message
        import dns.query
        import dns.rdatatype

        conf = self.cat("/etc/resolv.conf").split("\n")
        server = next(line.split()[1] for line in conf if line.startswith("nameserver"))
        search = next((line.split()[1:] for line in conf if line.startswith("search")), [])
        for fqdn in [f"{name}.{domain}" for domain in search] + [name]:
            sock = socket_in(self.netns, socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                answer = dns.query.udp(dns.message.make_query(fqdn, "A"), server, timeout=5, sock=sock)
            finally:
                sock.close()
            for rrset in answer.answer:
                if rrset.rdtype == dns.rdatatype.A:
                    return rrset[0].address
        raise AssertionError(f"{name} not found by {server} (search {search})")

    def https(self, method: str, path: str, token: str, *, host: str = SERVICE_IP, body=None):
        """A request to https://<host>:443 from the pod, the server verified with the pod's
        ca.crt; ``host`` a name is resolved by the cluster DNS from the pod."""
        ctx = ssl.create_default_context(cadata=self.cat(f"{MOUNT}/ca.crt"))
        address = host if host[0].isdigit() else self.resolve(host)
        return _request(PodHTTPS(self.netns, host, address, 443, ctx), method, path, token, body)

    def wget(self, path: str):
        """busybox wget in the container, with the mounted token, by the Service's name."""
        script = (f'timeout 15 wget -q -O - --no-check-certificate --header "Authorization: Bearer '
                  f'$(cat {MOUNT}/token)" https://{SERVICE_NAME}{path}')
        return self.run(["sh", "-c", script], check=False)


def running(admin, name):
    pod = admin.get("pods", name, NS)
    cs = pod.status.container_statuses
    return pod if cs and cs[0].state.HasField("running") else None


def sleeper(name: str) -> core_pb2.Pod:
    p = core_pb2.Pod(metadata={"name": name, "namespace": NS})
    p.spec.termination_grace_period_seconds = 1
    p.spec.containers.add(name="c", image="busybox", command=["sleep", "3600"])
    return p


def audited(audit, user: str) -> list[dict]:
    return [e for e in map(json.loads, audit.read_text().splitlines()) if e["user"].get("username") == user]


def test_a_pod_reaches_the_apiserver_through_the_kubernetes_service_with_its_token(plane):
    api, pki, admin, node, audit = plane
    endpoints = admin.get("endpoints", "kubernetes", "default")
    assert [(a.ip, p.port) for s in endpoints.subsets for a in s.addresses for p in s.ports] == \
        [(CONTROL_PLANE_IP, api.port)]
    admin.create(sleeper("reader"))
    created = admin.get("pods", "reader", NS)
    assert created.spec.service_account_name == "default"
    [volume] = [v for v in created.spec.volumes if v.name.startswith("kube-api-access-")]
    assert [s.service_account_token.expiration_seconds for s in volume.projected.sources
            if s.HasField("service_account_token")] == [3607]
    assert [(m.name, m.mount_path, m.read_only) for m in created.spec.containers[0].volume_mounts] == \
        [(volume.name, MOUNT, True)]

    pod = wait_until(lambda: running(admin, "reader"), "the pod running")
    inside = InPod(node, pod)
    assert sorted(inside.run(["ls", MOUNT]).stdout.decode().split()) == ["ca.crt", "namespace", "token"]
    assert inside.cat(f"{MOUNT}/namespace") == NS
    assert inside.cat(f"{MOUNT}/ca.crt") == pki.ca.cert_path.read_text()
    token = inside.cat(f"{MOUNT}/token")
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["sub"] == f"system:serviceaccount:{NS}:default"
    assert claims["kubernetes.io"]["pod"] == {"name": "reader", "uid": pod.metadata.uid}  # bound to the pod
    assert 3600 <= claims["exp"] - claims["iat"] <= 3607

    # from the container itself: the cluster DNS gives the name, kube-proxy leads to the apiserver,
    # whose TLS listener answers (busybox's TLS, offering SHA-1 handshake signatures only, is turned
    # away there; a busybox that could do more would get the pods)
    got = inside.wget(f"/api/v1/namespaces/{NS}/pods")
    assert (got.exit_code == 0 and [p["metadata"]["name"] for p in json.loads(got.stdout)["items"]] == ["reader"]) \
        or (got.exit_code != 0 and b"TLS" in got.stderr), got.stderr

    # from the pod's network namespace, the server verified with the mounted CA, by name and by IP
    assert inside.resolve(SERVICE_NAME) == SERVICE_IP
    code, review = inside.https("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", token,
                                host=SERVICE_NAME, body={
                                    "kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                                    "spec": {"resourceAttributes": {"verb": "list", "resource": "pods",
                                                                    "namespace": NS}}})
    assert (code, review["status"]["allowed"]) == (201, True), review
    code, listed = inside.https("GET", f"/api/v1/namespaces/{NS}/pods", token)
    assert code == 200 and [p["metadata"]["name"] for p in listed["items"]] == ["reader"]
    code, refused = inside.https("GET", f"/api/v1/namespaces/{NS}/secrets", token)
    assert code == 403 and f"system:serviceaccount:{NS}:default" in refused["message"], refused
    code, refused = inside.https("GET", "/api/v1/namespaces/default/pods", token)
    assert code == 403, refused
    code, refused = inside.https("DELETE", f"/api/v1/namespaces/{NS}/pods/reader", token)
    assert code == 403 and _get(admin, "pods", "reader") is not None
    # a server the CA does not vouch for is refused by the client: another CA's bundle
    other = pkis.CA(pki.dir / "other", cn="someone-else")
    with pytest.raises(ssl.SSLCertVerificationError):
        _request(PodHTTPS(inside.netns, SERVICE_IP, SERVICE_IP, 443,
                          ssl.create_default_context(cadata=other.pem.decode())), "GET", "/api", token)
    # the apiserver saw the pod's own address (no relay in between)
    events = audited(audit, f"system:serviceaccount:{NS}:default")
    assert events and {ip for e in events for ip in e["sourceIPs"]} == {pod.status.pod_ip}, events[-1:]

    # the account goes (the controller makes a new `default`, another uid): the token dies with it
    uid = admin.get("serviceaccounts", "default", NS).metadata.uid
    admin.delete("serviceaccounts", "default", NS)
    wait_until(lambda: inside.https("GET", f"/api/v1/namespaces/{NS}/pods", token)[0] == 401,
               "the deleted account's token refused", timeout=20)
    code, status = inside.https("GET", f"/api/v1/namespaces/{NS}/pods", token)
    assert (code, status["reason"], status["message"]) == (401, "Unauthorized", "Unauthorized")
    code, status = inside.https("POST", f"/api/v1/namespaces/{NS}/configmaps", token,
                                body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sneaky"}})
    assert code == 401 and _get(admin, "configmaps", "sneaky") is None  # nothing written
    again = wait_until(lambda: _get(admin, "serviceaccounts", "default"), "default made again")
    assert again.metadata.uid != uid
    assert inside.https("GET", f"/api/v1/namespaces/{NS}/pods", token)[0] == 401
    admin.delete("pods", "reader", NS)


def test_a_pods_token_stops_working_when_the_pod_is_gone(plane):
    api, pki, admin, node, _ = plane
    wait_until(lambda: _get(admin, "serviceaccounts", "default"), "the default ServiceAccount")
    admin.create(sleeper("brief"))
    pod = wait_until(lambda: running(admin, "brief"), "the pod running")
    inside = InPod(node, pod)
    token = inside.cat(f"{MOUNT}/token")
    assert inside.https("GET", f"/api/v1/namespaces/{NS}/configmaps", token)[0] == 200
    admin.delete("pods", "brief", NS)
    wait_until(lambda: _get(admin, "pods", "brief") is None, "the pod gone", timeout=30)
    # the pod and its namespace are gone: the token, presented from the machine, is dead
    code, status = rest(api, pki, "GET", f"/api/v1/namespaces/{NS}/configmaps", token)
    assert (code, status["message"]) == (401, "Unauthorized")


def test_automount_false_and_bad_token_sources(plane):
    api, pki, admin, node, _ = plane
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


def test_a_pod_naming_a_missing_account_is_refused(plane):
    """upstream's ServiceAccount admission: the account must exist (Forbidden, its message)."""
    api, pki, admin, node, _ = plane
    p = sleeper("ghostly")
    p.spec.service_account_name = "ghost"
    with pytest.raises(ApiError) as err:
        admin.create(p)
    assert (err.value.reason, err.value.message) == (
        "Forbidden", f'pods "ghostly" is forbidden: error looking up service account {NS}/ghost: '
                     'serviceaccount "ghost" not found')
    assert _get(admin, "pods", "ghostly") is None
    admin.create(serviceaccount_pb2.ServiceAccount(metadata={"name": "ghost", "namespace": NS}))
    admin.create(p)  # once it exists
    assert admin.get("pods", "ghostly", NS).spec.service_account_name == "ghost"
    admin.delete("pods", "ghostly", NS)


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
