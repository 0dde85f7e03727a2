"""kube-apiserver's node proxy: /api/v1/nodes/<name>/proxy/<path> relayed to that node's kubelet
(``kubectl get --raw /api/v1/nodes/N/proxy/stats/summary``).

The path parsing alone, then the secure plane and real node of test_kubelet_auth: kubectl reads
the kubelet's Summary, PodList and healthz through the apiserver; query strings, the kubelet's
content types, its own refusals and a chunked log pass through; a user RBAC gives no nodes/proxy
is refused by the apiserver in Kubernetes' words; an unknown node is NotFound, a node with no
kubelet endpoint or a kubelet that does not answer ServiceUnavailable. The plane tests need root,
runc, conmon, busybox-static."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import ssl
import subprocess

import pytest

from apiserver.pb import core_pb2
from apiserver.rest import nodeproxy, proxyrelay, routing
from harness.etcd_client import wait_until as poll
from harness.nodes import need_runtime, running_pod
from harness.procs import Registry
from tests.test_kubectl import KUBECTL
from tests.test_kubelet_auth import BOB, DAVE, secure_node

NS = "node-proxy"
TIMEOUT = 60.0


# ---- the path and the name, parsed ----

def test_the_path_after_proxy_is_kept_whole():
    t = routing.parse("/api/v1/nodes/n0/proxy/stats/summary")
    assert (t.res.name, t.name, t.subresource, t.path) == ("nodes", "n0", "proxy", "stats/summary")
    assert routing.parse("/api/v1/nodes/n0/proxy").path == ""
    assert routing.parse("/api/v1/nodes/n0:10250/proxy/a/b/c/d").path == "a/b/c/d"
    for path in ("/api/v1/pods/p/log/more", "/api/v1/nodes/n0/status/more",
                 "/api/v1/namespaces/ns/nodes/n0/proxy/x"):
        with pytest.raises(routing.NoRoute):
            routing.parse(path)


@pytest.mark.parametrize("node_id,expected", [
    ("n0", ("n0", "")), ("n0:10250", ("n0", "10250")), ("https:n0:10250", ("n0", "10250")),
    ("http:n0:", ("n0", "")), ("ftp:n0:1", None), (":10250", None), ("a:b:c:d", None)],
    ids=["name", "port", "scheme", "empty-port", "bad-scheme", "no-name", "too-many"])
def test_a_node_name_splits_as_upstreams(node_id, expected):
    if expected is None:
        with pytest.raises(Exception) as e:
            nodeproxy.split_node_id(node_id)
        assert (e.value.reason, e.value.message) == ("BadRequest", f'invalid node request "{node_id}"')
    else:
        assert nodeproxy.split_node_id(node_id) == expected


def test_the_kubelet_path_is_cleaned_and_encoded():
    assert proxyrelay.upstream_path("", False) == "/"
    assert proxyrelay.upstream_path("stats/summary", False) == "/stats/summary"
    assert proxyrelay.upstream_path("metrics/", True) == "/metrics/"
    assert proxyrelay.upstream_path("../../etc/passwd", False) == "/etc/passwd"
    assert proxyrelay.upstream_path("a b/%", False) == "/a%20b/%25"


def _pieces(data: bytes, headers: dict) -> list[bytes]:
    async def read():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return [p async for p in proxyrelay.body_pieces(reader, headers)]
    return asyncio.run(read())


def test_a_body_is_read_a_piece_at_a_time_as_the_kubelet_framed_it():
    big = b"x" * (proxyrelay.PIECE * 2 + 5)
    pieces = _pieces(b"%x\r\n%s\r\n3;ext=1\r\nabc\r\n0\r\n\r\nnot the body" % (len(big), big),
                     {"transfer-encoding": "chunked"})
    assert b"".join(pieces) == big + b"abc" and max(map(len, pieces)) == proxyrelay.PIECE
    assert b"".join(_pieces(b"hello, and more", {"content-length": "5"})) == b"hello"
    assert b"".join(_pieces(big, {})) == big  # no framing: up to the end of the connection
    assert b"".join(_pieces(b"5\r\nhel", {"transfer-encoding": "chunked"})) == b""  # cut: ends there
    assert b"".join(_pieces(b"zz\r\n", {"transfer-encoding": "chunked"})) == b""


# ---- through a real kubelet ----

@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    need_runtime()
    reg = Registry()
    tmp = tmp_path_factory.mktemp("nodeproxy")
    try:
        with secure_node(tmp, reg, NS) as (api, pki, admin, node):
            pod = core_pb2.Pod(metadata={"name": "talker", "namespace": NS})
            pod.spec.termination_grace_period_seconds = 0
            pod.spec.automount_service_account_token = False
            pod.spec.containers.add(name="c", image="busybox", command=["sh", "-c", "echo hello; sleep 3600"])
            admin.create(pod)
            poll(lambda: running_pod(admin, "talker", NS), TIMEOUT, what="the pod running")
            yield api, pki, admin, node, tmp
    finally:
        reg.cleanup()


def api_call(api, pki, method: str, path: str, *, token: str = "") -> tuple[int, str, str]:
    """(status, content type, text) of a call to the apiserver, as the admin unless ``token``."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    if not token:
        admin = pki.clients["admin"]
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
    conn = http.client.HTTPSConnection("127.0.0.1", api.port, context=ctx, timeout=30)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read().decode()
    finally:
        conn.close()


def kubectl(api, tmp, *args: str, token: str = "") -> subprocess.CompletedProcess:
    if KUBECTL is None:
        pytest.skip("kubectl not found: run harness/get_kubectl.sh")
    home = tmp / "kubectl-home"
    home.mkdir(exist_ok=True)
    config = api.kubeconfig(home / f"kubeconfig-{token or 'admin'}", "" if token else "admin", token=token)
    return subprocess.run([KUBECTL, "--kubeconfig", config, *args], capture_output=True, text=True,
                          timeout=60, env={"HOME": str(home), "PATH": "/usr/bin:/bin"})


@pytest.mark.process
def test_kubectl_reads_the_kubelets_summary_pods_and_healthz(plane):
    api, pki, admin, node, tmp = plane
    base = f"/api/v1/nodes/{node.name}/proxy"
    out = kubectl(api, tmp, "get", "--raw", f"{base}/stats/summary")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["node"]["nodeName"] == node.name and "cpu" in summary["node"]
    out = kubectl(api, tmp, "get", "--raw", f"{base}/pods")
    assert out.returncode == 0, out.stderr
    pods = json.loads(out.stdout)
    assert (pods["kind"], pods["apiVersion"]) == ("PodList", "v1")
    (talker,) = [p for p in pods["items"] if p["metadata"]["name"] == "talker"]
    assert talker["spec"]["nodeName"] == node.name
    assert talker["metadata"]["uid"] == admin.get("pods", "talker", NS).metadata.uid
    out = kubectl(api, tmp, "get", "--raw", f"{base}/healthz")
    assert (out.returncode, out.stdout) == (0, "ok"), out.stderr
    # dave's group has system:kubelet-api-admin, which grants nodes/proxy: served too
    out = kubectl(api, tmp, "get", "--raw", f"{base}/healthz", token=DAVE)
    assert (out.returncode, out.stdout) == (0, "ok"), out.stderr


@pytest.mark.process
def test_queries_types_refusals_and_streams_pass_through(plane):
    api, pki, admin, node, tmp = plane
    base = f"/api/v1/nodes/{node.name}/proxy"
    code, ctype, text = api_call(api, pki, "GET", f"{base}/stats/summary?only_cpu_and_memory=true")
    assert (code, ctype) == (200, "application/json"), text
    assert set(json.loads(text)["node"]) <= {"nodeName", "startTime", "cpu", "memory"}
    # the kubelet's own refusal, in its words
    assert api_call(api, pki, "GET", f"{base}/stats/summary?only_cpu_and_memory=maybe") == (
        400, "text/plain; charset=utf-8", 'strconv.ParseBool: parsing "maybe": invalid syntax\n')
    code, ctype, text = api_call(api, pki, "GET", f"{base}/metrics/resource")
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4"), (code, ctype)
    assert "# TYPE node_cpu_usage_seconds_total counter" in text
    # a chunked answer (the container's log), streamed through
    code, ctype, text = api_call(api, pki, "GET", f"{base}/containerLogs/{NS}/talker/c")
    assert (code, ctype, text) == (200, "text/plain", "hello\n")
    # the root: the kubelet serves nothing there; without its slash, redirected to it, as upstream
    assert api_call(api, pki, "GET", base + "/")[:2] == (404, "text/plain; charset=utf-8")
    assert api_call(api, pki, "GET", base)[:2] == (301, "")
    # <node>:<kubelet port> is the same kubelet; another port is refused as upstream refuses loopback
    port = admin.get("nodes", node.name, "").status.daemon_endpoints.kubelet_endpoint.port
    assert api_call(api, pki, "GET", f"/api/v1/nodes/https:{node.name}:{port}/proxy/healthz")[::2] == (200, "ok")
    code, _, text = api_call(api, pki, "GET", f"/api/v1/nodes/{node.name}:2379/proxy/metrics")
    assert (code, json.loads(text)["message"]) == (400, "address not allowed")
    code, _, text = api_call(api, pki, "PUT", f"{base}/pods")
    assert (code, text) == (405, "405: Method Not Allowed\n")  # the kubelet's answer to a PUT


@pytest.mark.process
def test_who_rbac_gives_no_nodes_proxy_is_forbidden_by_the_apiserver(plane):
    api, pki, admin, node, tmp = plane
    out = kubectl(api, tmp, "get", "--raw", f"/api/v1/nodes/{node.name}/proxy/stats/summary", token=BOB)
    assert out.returncode != 0
    assert out.stderr.strip() == (
        f'Error from server (Forbidden): nodes "{node.name}" is forbidden: User "bob" cannot get resource '
        f'"nodes/proxy" in API group "" at the cluster scope'), out.stderr
    code, _, text = api_call(api, pki, "POST", f"/api/v1/nodes/{node.name}/proxy/stats/summary", token=BOB)
    assert (code, json.loads(text)["message"]) == (403, f'nodes "{node.name}" is forbidden: User "bob" cannot '
                                                        f'create resource "nodes/proxy" in API group "" at the '
                                                        f'cluster scope')


def _kubelet_connections(port: int) -> int:
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{port} )"], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    return len(out.splitlines())


@pytest.mark.process
def test_a_followed_log_streams_and_its_kubelet_connection_ends_with_the_client(plane):
    api, pki, admin, node, tmp = plane
    port = admin.get("nodes", node.name, "").status.daemon_endpoints.kubelet_endpoint.port
    before = _kubelet_connections(port)
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    ctx.load_cert_chain(str(pki.clients["admin"].cert), str(pki.clients["admin"].key))
    raw = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        conn.sendall(f"GET /api/v1/nodes/{node.name}/proxy/containerLogs/{NS}/talker/c?follow=true HTTP/1.1\r\n"
                     f"Host: 127.0.0.1\r\n\r\n".encode())
        seen = b""
        while b"hello" not in seen:
            data = conn.recv(4096)
            assert data, seen
            seen += data
        assert seen.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in seen, seen
        poll(lambda: _kubelet_connections(port) == before + 1, 10, what="the follow's kubelet connection open")
    poll(lambda: _kubelet_connections(port) == before, 10, what="the kubelet connection closed with the client")


def _closed_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.process
def test_unknown_nodes_and_nodes_without_a_kubelet(plane):
    api, pki, admin, node, tmp = plane
    code, _, text = api_call(api, pki, "GET", "/api/v1/nodes/nosuch/proxy/healthz")
    status = json.loads(text)
    assert (code, status["reason"], status["message"]) == (404, "NotFound", 'nodes "nosuch" not found')
    admin.create(core_pb2.Node(metadata={"name": "ghost"}))
    try:
        code, _, text = api_call(api, pki, "GET", "/api/v1/nodes/ghost/proxy/healthz")
        status = json.loads(text)
        assert (code, status["reason"]) == (503, "ServiceUnavailable")
        assert status["message"].startswith('node "ghost" has no kubelet endpoint'), status
        port = _closed_port()
        admin.patch("nodes", "ghost", {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}}, "",
                    status=True)
        out = kubectl(api, tmp, "get", "--raw", "/api/v1/nodes/ghost/proxy/healthz")
        assert out.returncode != 0
        assert out.stderr.startswith('Error from server (ServiceUnavailable): error trying to reach service: '
                                     f'the kubelet of node "ghost" at 127.0.0.1:{port} does not answer'), out.stderr
    finally:
        admin.delete("nodes", "ghost", "")
