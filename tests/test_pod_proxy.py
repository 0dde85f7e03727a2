"""kube-apiserver's pods/ and services/NAME/proxy: the request relayed to a pod's IP from the
apiserver's machine on the plane's network (``kubectl get --raw .../pods/web:8080/proxy/``).

The name rules alone, then the secure plane of test_kubelet_auth with the apiserver on the
plane's control-plane host (``--bind-netns``) and one real node running busybox httpd (a page and
a CGI script echoing the method, query and X-Forwarded-For) behind a Service with a named port:
kubectl reads the page through the pod (by port number, by the first declared port) and through
the Service (by port name, by port number, with a scheme); the query and the method reach the
pod; bob, whom RBAC gives view only, is refused pods/proxy and services/proxy in Kubernetes'
words; unknown pods and Services are NotFound as upstream has them, a Service without ready
endpoints or without the port asked ServiceUnavailable, a port nothing listens on
ServiceUnavailable with the dial's words, a pod without an IP "address not allowed", and a pod of
a hollow-like node (no kubelet endpoint) unreachable; Endpoints not naming the pod of that IP
are not dialled; ``https:`` speaks TLS to a server in the pod's namespace. The plane tests need
root, runc, conmon, busybox-static."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys

import pytest

from apiserver.pb import core_pb2
from apiserver import resources
from apiserver.rest import discovery, podproxy, proxyrelay, routing
from harness.etcd_client import wait_until as poll
from harness.nodes import control_plane_flags, need_runtime, running_pod
from harness.procs import Registry
from tests.test_kubelet_auth import BOB, secure_node
from tests.test_node_proxy import kubectl

NS = "pod-proxy"
TIMEOUT = 60.0
# a CGI script (printf's escapes) echoing what reached the pod
CGI = ('#!/bin/sh\\necho "Content-Type: text/plain"\\necho\\n'
       'echo "$REQUEST_METHOD $QUERY_STRING xff=$HTTP_X_FORWARDED_FOR"\\n')
# and one that never ends, a line every 0.2 s
TICKS = '#!/bin/sh\\necho "Content-Type: text/plain"\\necho\\nwhile :; do echo tick; sleep 0.2; done\\n'
HTTPD = (f"mkdir -p /www/cgi-bin && echo page of $(hostname) > /www/index.html && printf '{CGI}' > /www/cgi-bin/q "
         f"&& printf '{TICKS}' > /www/cgi-bin/ticks && chmod +x /www/cgi-bin/q /www/cgi-bin/ticks "
         f"&& exec httpd -f -p 8080 -h /www")


# ---- names and addresses ----

def test_pod_and_service_proxy_paths_parse():
    t = routing.parse("/api/v1/namespaces/ns/pods/web:8080/proxy/a/b")
    assert (t.res.name, t.namespace, t.name, t.subresource, t.path) == ("pods", "ns", "web:8080", "proxy", "a/b")
    t = routing.parse("/api/v1/namespaces/ns/services/https:web:http/proxy/")
    assert (t.res.name, t.name, t.path) == ("services", "https:web:http", "")
    assert proxyrelay.split_scheme_name_port("https:web:http") == ("https", "web", "http")
    assert proxyrelay.split_scheme_name_port("web") == ("", "web", "")
    assert proxyrelay.split_scheme_name_port("ftp:web:80") is None


def test_discovery_lists_the_proxy_subresources_as_upstream():
    verbs = ["create", "delete", "get", "patch", "update"]
    for resource, kind in (("pods", "PodProxyOptions"), ("services", "ServiceProxyOptions"),
                           ("nodes", "NodeProxyOptions")):
        assert ("proxy", "", kind, verbs) in discovery.subresources(resources.lookup(resource)), resource


def test_only_global_unicast_addresses_and_go_ports():
    assert podproxy._global_unicast("10.244.0.5") and podproxy._global_unicast("10.250.0.1")
    for ip in ("127.0.0.1", "169.254.169.254", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "x"):
        assert not podproxy._global_unicast(ip), ip
    assert podproxy._port_number("", "") == 80 and podproxy._port_number("", "https") == 443
    assert podproxy._port_number("8080", "") == 8080 and podproxy._port_number("http", "") == 80
    with pytest.raises(Exception) as e:
        podproxy._port_number("nosuchport", "")
    assert (e.value.reason, e.value.message) == (
        "ServiceUnavailable", "error trying to reach service: dial tcp: lookup tcp/nosuchport: unknown port")


# ---- through a real node ----

@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    need_runtime()
    reg = Registry()
    tmp = tmp_path_factory.mktemp("podproxy")
    try:
        with secure_node(tmp, reg, NS, apiserver_flags=control_plane_flags(tmp)) as (api, pki, admin, node):
            pod = core_pb2.Pod(metadata={"name": "web", "namespace": NS, "labels": {"app": "web"}})
            pod.spec.termination_grace_period_seconds = 0
            pod.spec.automount_service_account_token = False
            c = pod.spec.containers.add(name="httpd", image="busybox", command=["sh", "-c", HTTPD])
            c.ports.add(container_port=8080, name="http")
            admin.create(pod)
            for name, app in (("web", "web"), ("empty", "nothing")):
                svc = core_pb2.Service(metadata={"name": name, "namespace": NS})
                svc.spec.selector["app"] = app
                svc.spec.ports.add(name="http", port=80, target_port="http")
                admin.create(svc)
            poll(lambda: running_pod(admin, "web", NS), TIMEOUT, what="the pod running")
            poll(lambda: _ready_addresses(admin, "web"), TIMEOUT, what="the Service's endpoint ready")
            poll(lambda: _endpoints(admin, "empty") is not None, TIMEOUT, what="the empty Service's Endpoints")
            yield api, pki, admin, node, tmp
    finally:
        reg.cleanup()


def _endpoints(admin, name):
    with contextlib.suppress(Exception):
        return admin.get("endpoints", name, NS)
    return None


def _ready_addresses(admin, name) -> list[str]:
    eps = _endpoints(admin, name)
    return [a.ip for s in eps.subsets for a in s.addresses] if eps is not None else []


def api_call(api, pki, method: str, path: str, *, token: str = "") -> tuple[int, str]:
    """(status, text) of a call to the apiserver, as the admin unless ``token``."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    if not token:
        ctx.load_cert_chain(str(pki.clients["admin"].cert), str(pki.clients["admin"].key))
    conn = http.client.HTTPSConnection("127.0.0.1", api.port, context=ctx, timeout=30)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _redirect(api, pki, path: str) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    ctx.load_cert_chain(str(pki.clients["admin"].cert), str(pki.clients["admin"].key))
    conn = http.client.HTTPSConnection("127.0.0.1", api.port, context=ctx, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location", "")
    finally:
        conn.close()


def _status(api, pki, path: str, method: str = "GET") -> tuple[int, str, str]:
    code, text = api_call(api, pki, method, path)
    status = json.loads(text)
    return code, status["reason"], status["message"]


@pytest.mark.process
def test_kubectl_reads_the_pods_page_through_the_pod_and_the_service(plane):
    api, pki, admin, node, tmp = plane
    pod_ip = admin.get("pods", "web", NS).status.pod_ip
    assert pod_ip.startswith("10.244.") and pod_ip in _ready_addresses(admin, "web")
    base = f"/api/v1/namespaces/{NS}"
    for path in (f"{base}/pods/web:8080/proxy/",  # the port by number
                 f"{base}/pods/web/proxy/index.html",  # no port: the first the pod declares
                 f"{base}/pods/http:web:8080/proxy/",
                 f"{base}/services/web:http/proxy/",  # the Service's port by name
                 f"{base}/services/web:80/proxy/",  # by number: the Service port's name
                 f"{base}/services/http:web:http/proxy/index.html"):
        out = kubectl(api, tmp, "get", "--raw", path)
        assert (out.returncode, out.stdout) == (0, "page of web\n"), (path, out.stderr)


@pytest.mark.process
def test_queries_and_methods_reach_the_pod(plane):
    api, pki, admin, node, tmp = plane
    base = f"/api/v1/namespaces/{NS}"
    assert api_call(api, pki, "GET", f"{base}/pods/web:8080/proxy/cgi-bin/q?a=1&b=x%20y") == (
        200, "GET a=1&b=x+y xff=127.0.0.1\n")
    assert api_call(api, pki, "POST", f"{base}/services/web:http/proxy/cgi-bin/q?watch=true") == (
        200, "POST watch=true xff=127.0.0.1\n")
    # the root without its slash: redirected to it (query kept), as upstream, the pod not asked
    conn_status, location = _redirect(api, pki, f"{base}/pods/web:8080/proxy?a=1")
    assert (conn_status, location) == (301, f"{base}/pods/web:8080/proxy/?a=1")
    assert _redirect(api, pki, f"{base}/services/web:http/proxy")[1] == f"{base}/services/web:http/proxy/"
    # only upstream's ConnectMethods
    assert api_call(api, pki, "TRACE", f"{base}/pods/web:8080/proxy/")[0] == 405
    # the pod's own answers pass as it gave them
    assert api_call(api, pki, "GET", f"{base}/pods/web:8080/proxy/nosuch")[0] == 404


@pytest.mark.process
def test_who_rbac_gives_no_proxy_is_forbidden(plane):
    api, pki, admin, node, tmp = plane
    for resource, name in (("pods", "web:8080"), ("services", "web:http")):
        out = kubectl(api, tmp, "get", "--raw", f"/api/v1/namespaces/{NS}/{resource}/{name}/proxy/", token=BOB)
        assert out.returncode != 0
        assert out.stderr.strip() == (
            f'Error from server (Forbidden): {resource} "{name}" is forbidden: User "bob" cannot get resource '
            f'"{resource}/proxy" in API group "" in the namespace "{NS}"'), out.stderr


@pytest.mark.process
def test_unknown_unready_and_unreachable_targets(plane):
    api, pki, admin, node, tmp = plane
    base = f"/api/v1/namespaces/{NS}"
    pod_ip = admin.get("pods", "web", NS).status.pod_ip
    assert _status(api, pki, f"{base}/pods/nosuch/proxy/") == (404, "NotFound", 'pods "nosuch" not found')
    # upstream reads the Service only to turn a port number into its name, else its Endpoints
    assert _status(api, pki, f"{base}/services/nosuch:http/proxy/") == (
        404, "NotFound", 'endpoints "nosuch" not found')
    assert _status(api, pki, f"{base}/services/nosuch:80/proxy/") == (404, "NotFound", 'services "nosuch" not found')
    assert _status(api, pki, f"{base}/services/web:81/proxy/") == (
        503, "ServiceUnavailable", 'no service port 81 found for service "web"')
    assert _status(api, pki, f"{base}/services/empty/proxy/") == (
        503, "ServiceUnavailable", 'no endpoints available for service "empty"')
    assert _status(api, pki, f"{base}/services/web:other/proxy/") == (
        503, "ServiceUnavailable", 'no endpoints available for service "web:other"')
    assert _status(api, pki, f"{base}/pods/ftp:web:80/proxy/") == (
        400, "BadRequest", 'invalid pod request "ftp:web:80"')
    out = kubectl(api, tmp, "get", "--raw", f"{base}/pods/web:8081/proxy/")  # nothing listens there
    assert out.stderr.strip() == (f"Error from server (ServiceUnavailable): error trying to reach service: "
                                  f"dial tcp {pod_ip}:8081: connect: connection refused"), out.stderr
    # a node with no kubelet endpoint (as hollow nodes): its pod, first without an IP, then with one
    admin.create(core_pb2.Node(metadata={"name": "ghost"}))
    pod = core_pb2.Pod(metadata={"name": "idle", "namespace": NS})
    pod.spec.node_name = "ghost"
    pod.spec.automount_service_account_token = False
    pod.spec.containers.add(name="c", image="busybox")
    admin.create(pod)
    try:
        assert _status(api, pki, f"{base}/pods/idle/proxy/") == (400, "BadRequest", "address not allowed")
        admin.patch("pods", "idle", {"status": {"podIP": "10.244.200.7", "podIPs": [{"ip": "10.244.200.7"}]}}, NS,
                    status=True)
        assert _status(api, pki, f"{base}/pods/idle:8080/proxy/") == (
            503, "ServiceUnavailable",
            "error trying to reach service: dial tcp 10.244.200.7:8080: connect: network is unreachable")
        # once the node says it has a kubelet, its podCIDR bounds its pods' addresses; inside it,
        # the plane's network has no route there
        admin.patch("nodes", "ghost", {"spec": {"podCIDR": "10.244.201.0/24"}}, "")
        admin.patch("nodes", "ghost", {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": 1}}}}, "",
                    status=True)
        assert _status(api, pki, f"{base}/pods/idle:8080/proxy/") == (400, "BadRequest", "address not allowed")
        admin.patch("pods", "idle", {"status": {"podIP": "10.244.201.7", "podIPs": [{"ip": "10.244.201.7"}]}}, NS,
                    status=True)
        assert _status(api, pki, f"{base}/pods/idle:8080/proxy/") == (
            503, "ServiceUnavailable",
            "error trying to reach service: dial tcp 10.244.201.7:8080: connect: network is unreachable")
    finally:
        admin.delete("pods", "idle", NS)
        admin.delete("nodes", "ghost", "")


@pytest.mark.process
def test_endpoints_that_are_not_the_pods_are_not_dialled(plane):
    """An address is used only if its targetRef is a pod of the namespace with that IP (upstream's
    isValidAddress): hand-written Endpoints cannot send the apiserver elsewhere."""
    api, pki, admin, node, tmp = plane
    pod_ip = admin.get("pods", "web", NS).status.pod_ip
    svc = core_pb2.Service(metadata={"name": "manual", "namespace": NS})
    svc.spec.ports.add(name="http", port=80, target_port="8080")
    admin.create(svc)
    base = f"/api/v1/namespaces/{NS}/services/manual:http/proxy/"
    try:
        for ip, ref in (("127.0.0.1", None), ("10.244.0.250", "web"), (pod_ip, "other"), (pod_ip, None)):
            address = {"ip": ip, **({"targetRef": {"kind": "Pod", "namespace": NS, "name": ref}} if ref else {})}
            admin.apply({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "manual", "namespace": NS},
                         "subsets": [{"addresses": [address], "ports": [{"name": "http", "port": 8080}]}]},
                        field_manager="test", force=True)
            assert _status(api, pki, base) == (
                503, "ServiceUnavailable", 'no endpoints available for service "manual:http"'), (ip, ref)
        address = {"ip": pod_ip, "targetRef": {"kind": "Pod", "namespace": NS, "name": "web"}}
        admin.apply({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "manual", "namespace": NS},
                     "subsets": [{"addresses": [address], "ports": [{"name": "http", "port": 8080}]}]},
                    field_manager="test", force=True)
        assert api_call(api, pki, "GET", base) == (200, "page of web\n")
    finally:
        admin.delete("services", "manual", NS)


# a TLS server beside the pod's httpd, in the pod's own network namespace (its certificate names
# no pod IP: the proxy does not verify it, as upstream's proxy transport)
TLS_SERVER = """
import http.server, ssl, sys
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"tls {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((sys.argv[3], 8443), Echo)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("serving", flush=True)
server.serve_forever()
"""


def _pod_netns(node, pod_ip: str) -> str:
    """The network namespace (of node ``node``'s pods) that has ``pod_ip``."""
    for name in sorted(os.listdir("/run/netns")):
        if name.startswith(node.netns + "-"):
            out = subprocess.run(["ip", "-n", name, "-o", "-4", "addr"], capture_output=True, text=True, timeout=10)
            if f" {pod_ip}/" in out.stdout:
                return name
    raise AssertionError(f"no namespace of {node.netns} has {pod_ip}")


@pytest.mark.process
def test_https_reaches_a_tls_server_in_the_pod(plane):
    api, pki, admin, node, tmp = plane
    pod_ip = admin.get("pods", "web", NS).status.pod_ip
    cert = pki.kubelet_serving("tls-in-pod")
    server = subprocess.Popen(["ip", "netns", "exec", _pod_netns(node, pod_ip), sys.executable, "-c", TLS_SERVER,
                               str(cert.cert), str(cert.key), pod_ip], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "serving\n"
        base = f"/api/v1/namespaces/{NS}/pods"
        assert api_call(api, pki, "GET", f"{base}/https:web:8443/proxy/a/b?c=d") == (200, "tls /a/b?c=d")
        # TLS to the plain httpd: no handshake
        status = _status(api, pki, f"{base}/https:web:8080/proxy/")
        assert status[:2] == (503, "ServiceUnavailable") and status[2].startswith(
            "error trying to reach service: tls: "), status
        # plain HTTP to a TLS port: the server's refusal, or its hang-up, is what comes back
        status = _status(api, pki, f"{base}/web:8443/proxy/")
        assert status[:2] == (503, "ServiceUnavailable") and status[2] in (
            f"error trying to reach service: read tcp {pod_ip}:8443: read: connection reset by peer",
            "error trying to reach service: EOF"), status
    finally:
        server.kill()
        server.wait(timeout=10)


def _connections_to(netns: str, ip: str, port: int) -> int:
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htn", "state", "established",
                          f"( dst {ip} and dport = :{port} )"], capture_output=True, text=True, check=True,
                         timeout=10).stdout
    return len(out.splitlines())


@pytest.mark.process
def test_an_endless_answer_streams_and_its_pod_connection_ends_with_the_client(plane):
    api, pki, admin, node, tmp = plane
    pod_ip = admin.get("pods", "web", NS).status.pod_ip
    cp = control_plane_flags(tmp)["bind_netns"]
    poll(lambda: _connections_to(cp, pod_ip, 8080) == 0, 10, what="earlier requests' connections closed")
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    ctx.load_cert_chain(str(pki.clients["admin"].cert), str(pki.clients["admin"].key))
    raw = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        conn.sendall(f"GET /api/v1/namespaces/{NS}/services/web:http/proxy/cgi-bin/ticks HTTP/1.1\r\n"
                     f"Host: 127.0.0.1\r\n\r\n".encode())
        seen = b""
        while seen.count(b"tick") < 3:
            data = conn.recv(4096)
            assert data, seen
            seen += data
        assert seen.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in seen, seen
        assert _connections_to(cp, pod_ip, 8080) == 1  # from the apiserver's machine on the plane
    poll(lambda: _connections_to(cp, pod_ip, 8080) == 0, 10, what="the pod connection closed with the client")
