"""Dynamic admission webhooks (apiserver/admission/) against a real etcdlite and apiserver,
with an HTTPS webhook server in this process (127.0.0.1, a certificate of a test CA given
as caBundle). Expectations are kube-apiserver 1.32's: the AdmissionReview it sends
(k8s.io/api admission/v1), the errors it answers (webhookerrors.ToStatusErr,
"failed calling webhook"), validation of the configurations.

Every test works in a namespace of its own, and its configurations select only that
namespace (namespaceSelector on a label the test gives it), so that tests do not see each
other's webhooks."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from harness.plane import apiserver_on_etcdlite
from harness.procs import free_port

from apiserver.auth.pki import CA
from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from apiserver.rest.kubeconfig import write_kubeconfig

pytestmark = pytest.mark.process

GROUP = "/apis/admissionregistration.k8s.io/v1"


# ---- the webhook server ----

class WebhookServer:
    """HTTPS on 127.0.0.1; ``behave[path](request) -> response fields`` (allowed, status,
    patch, warnings...), each AdmissionReview received kept in ``received[path]``."""

    def __init__(self, tmp: Path, *, sock: socket.socket | None = None, dns_names: tuple[str, ...] = ()) -> None:
        """``sock``: a listening socket to serve on (one made in another network namespace),
        else one on 127.0.0.1; ``dns_names``: names the certificate carries besides 127.0.0.1."""
        ca = CA(tmp / "webhook-ca", cn="webhook-test-ca")
        served = ca.issue("webhook", "webhook.test", server=True, client=False, ips=("127.0.0.1",),
                          dns_names=dns_names)
        self.ca_bundle = base64.b64encode(ca.pem).decode()
        self.received: dict[str, list[dict]] = {}
        self.behave: dict[str, object] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's name)
                url = urllib.parse.urlsplit(self.path)
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                review["_query"] = url.query
                outer.received.setdefault(url.path, []).append(review)
                behave = outer.behave.get(url.path)
                answer = behave(review["request"]) if behave else {"allowed": True}
                if isinstance(answer, bytes):
                    body = answer
                else:
                    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                       "response": {"uid": review["request"]["uid"], **answer}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        if sock is None:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        else:
            self.httpd = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
            self.httpd.socket.close()
            self.httpd.socket = sock
        self.httpd.daemon_threads = True
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(served.cert, served.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


TOKEN = "alice-token"


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    # bearer tokens: a request's user reaches the AdmissionReview (anonymous ones still allowed)
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.csv"
    tokens.write_text(f'{TOKEN},alice,alice-uid,"devs,qa"\n')
    with apiserver_on_etcdlite(tmp_path_factory, "webhooks", token_auth_file=str(tokens)) as api:
        yield api


@pytest.fixture(scope="module")
def hooks(tmp_path_factory):
    server = WebhookServer(tmp_path_factory.mktemp("webhook-server"))
    yield server
    server.close()


class Api:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body=None, *, content_type: str = "application/json",
             timeout: float = 20, token: str = ""):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": content_type, "Accept": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, resp, json.loads(payload) if payload else None
        finally:
            conn.close()

    def wait_in_cache(self, resource: str, name: str) -> None:
        """Until the apiserver's watch cache of ``resource`` (what admission reads) holds
        ``name``: a watch from "0" starts with the cache's objects."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", f"{GROUP}/{resource}?watch=true&resourceVersion=0&timeoutSeconds=2"
                                    f"&fieldSelector=metadata.name%3D{name}")
                resp = conn.getresponse()
                for line in resp:
                    if json.loads(line)["object"]["metadata"]["name"] == name:
                        return
            finally:
                conn.close()
        raise AssertionError(f"{resource}/{name} never reached the watch cache")


@pytest.fixture
def api(plane):
    return Api(plane.port)


@pytest.fixture
def ns(api, request):
    """A namespace of this test, labelled admission-test=<its name>."""
    name = request.node.name.replace("_", "-")[:50].strip("-")
    status, _, body = api.call("POST", "/api/v1/namespaces",
                               {"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": name, "labels": {"admission-test": name}}})
    assert status == 201, body
    created: list[tuple[str, str]] = []
    yield Namespace(api, name, created)
    for resource, config in created:
        api.call("DELETE", f"{GROUP}/{resource}/{config}")
    api.call("DELETE", f"/api/v1/namespaces/{name}")


class Namespace:
    def __init__(self, api: Api, name: str, created: list) -> None:
        self.api, self.name, self.created = api, name, created

    def register(self, kind: str, *webhooks: dict, config_name: str = "") -> str:
        """A configuration of ``kind`` with ``webhooks`` (each selecting this namespace unless it
        says otherwise), once admission sees it."""
        resource = kind.lower() + "s"
        name = config_name or f"{self.name}-{kind.lower()[:4]}"
        hooks = [{"namespaceSelector": {"matchLabels": {"admission-test": self.name}},
                  "sideEffects": "None", "admissionReviewVersions": ["v1"], **w} for w in webhooks]
        status, _, body = self.api.call("POST", f"{GROUP}/{resource}",
                                        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
                                         "metadata": {"name": name}, "webhooks": hooks})
        assert status == 201, body
        self.created.append((resource, name))
        self.api.wait_in_cache(resource, name)
        return name

    def create(self, resource: str, obj: dict, query: str = ""):
        path = f"/api/v1/namespaces/{self.name}/{resource}" + (f"?{query}" if query else "")
        return self.api.call("POST", path, obj)


def _rule(resources=("pods",), operations=("CREATE",), groups=("",), versions=("v1",), **extra) -> dict:
    return {"operations": list(operations), "apiGroups": list(groups), "apiVersions": list(versions),
            "resources": list(resources), **extra}


def _pod(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}


def _cm(name: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}},
            "data": {"k": "v"}}


def _deny_forbidden(request: dict) -> dict:
    labels = ((request.get("object") or {}).get("metadata") or {}).get("labels") or {}
    if labels.get("forbidden") == "yes":
        return {"allowed": False, "status": {"code": 403, "message": "pods labelled forbidden=yes are not allowed"}}
    return {"allowed": True}


# ---- the tests ----

def test_a_validating_webhook_refuses_with_upstreams_words_to_kubectl(api, ns, hooks, tmp_path):
    hooks.behave["/deny"] = _deny_forbidden
    kubectl = _kubectl(api, tmp_path, ns.name)
    config = f"""\
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: {ns.name}-vali
webhooks:
- name: deny.webhooks.test
  namespaceSelector: {{matchLabels: {{admission-test: {ns.name}}}}}
  rules:
  - {{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}}
  clientConfig:
    url: {hooks.url("/deny")}
    caBundle: {hooks.ca_bundle}
  sideEffects: None
  admissionReviewVersions: [v1]
"""
    out = kubectl("apply", "-f", "-", stdin=config).stdout
    ns.created.append(("validatingwebhookconfigurations", f"{ns.name}-vali"))
    assert out.strip() == f"validatingwebhookconfiguration.admissionregistration.k8s.io/{ns.name}-vali created"
    api.wait_in_cache("validatingwebhookconfigurations", f"{ns.name}-vali")
    bad = kubectl("run", "bad", "--image=busybox:1", "--labels=forbidden=yes", ok=False)
    assert bad.stderr.strip() == ('Error from server: admission webhook "deny.webhooks.test" denied the '
                                  'request: pods labelled forbidden=yes are not allowed')
    out = kubectl("run", "good", "--image=busybox:1", "--labels=app=good").stdout
    assert out.strip() == "pod/good created"
    listed = kubectl("get", "validatingwebhookconfigurations", f"{ns.name}-vali").stdout.split()
    assert listed[:5] == ["NAME", "WEBHOOKS", "AGE", f"{ns.name}-vali", "1"]
    # a second apply patches the webhook (strategic merge: the list merges by name)
    out = kubectl("apply", "-f", "-", stdin=config.replace("sideEffects: None", "sideEffects: None\n  timeoutSeconds: 5"))
    assert out.stdout.strip().endswith(" configured")
    _, _, stored = api.call("GET", f"{GROUP}/validatingwebhookconfigurations/{ns.name}-vali")
    assert [(w["name"], w["timeoutSeconds"]) for w in stored["webhooks"]] == [("deny.webhooks.test", 5)]
    # nothing of the refused one was stored
    status, _, _ = api.call("GET", f"/api/v1/namespaces/{ns.name}/pods/bad")
    assert status == 404
    # the Status: the webhook's code, no reason since it gave none
    status, _, body = ns.create("pods", _pod("bad", {"forbidden": "yes"}))
    assert status == 403 and body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 403,
        "message": 'admission webhook "deny.webhooks.test" denied the request: pods labelled forbidden=yes '
                   "are not allowed"}


def test_the_admission_review_has_upstreams_fields(api, ns, hooks):
    hooks.received.pop("/record", None)
    ns.register("ValidatingWebhookConfiguration",
                {"name": "record.webhooks.test", "timeoutSeconds": 7,
                 "rules": [_rule(operations=("*",), resources=("pods", "pods/status"))],
                 "clientConfig": {"url": hooks.url("/record"), "caBundle": hooks.ca_bundle}})
    status, _, pod = ns.create("pods", _pod("p1", {"app": "a"}), "fieldManager=tester")
    assert status == 201, pod
    sent = hooks.received["/record"][-1]
    assert sent["apiVersion"] == "admission.k8s.io/v1" and sent["kind"] == "AdmissionReview"
    assert sent["_query"] == "timeout=7s"  # as kube-apiserver's client puts it on the URL
    req = sent["request"]
    assert len(req["uid"]) == 36
    assert req["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert req["resource"] == {"group": "", "version": "v1", "resource": "pods"}
    assert req["requestKind"] == req["kind"] and req["requestResource"] == req["resource"]
    assert "subResource" not in req
    assert (req["name"], req["namespace"], req["operation"]) == ("p1", ns.name, "CREATE")
    assert req["userInfo"] == {"username": "system:anonymous", "groups": ["system:unauthenticated"]}
    assert req["object"]["metadata"]["labels"] == {"app": "a"}
    assert req["object"]["spec"]["containers"][0]["terminationMessagePolicy"] == "File"  # defaulted
    assert req["oldObject"] is None and req["dryRun"] is False
    assert req["options"] == {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "tester"}

    pod["metadata"]["labels"]["app"] = "b"
    status, _, _ = api.call("PUT", f"/api/v1/namespaces/{ns.name}/pods/p1?dryRun=All", pod, token=TOKEN)
    assert status == 200
    req = hooks.received["/record"][-1]["request"]
    assert req["userInfo"] == {"username": "alice", "uid": "alice-uid",
                               "groups": ["devs", "qa", "system:authenticated"]}
    assert req["operation"] == "UPDATE" and req["dryRun"] is True
    assert req["oldObject"]["metadata"]["labels"] == {"app": "a"}
    assert req["object"]["metadata"]["labels"] == {"app": "b"}
    assert req["options"]["kind"] == "UpdateOptions" and req["options"]["dryRun"] == ["All"]

    status, _, _ = api.call("PATCH", f"/api/v1/namespaces/{ns.name}/pods/p1/status",
                            {"status": {"message": "m"}}, content_type="application/merge-patch+json")
    assert status == 200
    req = hooks.received["/record"][-1]["request"]
    assert req["subResource"] == "status" and req["requestSubResource"] == "status"

    status, _, _ = api.call("DELETE", f"/api/v1/namespaces/{ns.name}/pods/p1?gracePeriodSeconds=0")
    assert status == 200
    req = hooks.received["/record"][-1]["request"]
    assert req["operation"] == "DELETE" and req["object"] is None
    assert req["oldObject"]["metadata"]["name"] == "p1"
    assert req["options"] == {"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1", "gracePeriodSeconds": 0}


def test_a_mutating_webhook_patches_before_validating_webhooks_see_it(api, ns, hooks):
    def add_label(request: dict) -> dict:
        labels = request["object"]["metadata"].get("labels")
        ops = ([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}] if labels
               else [{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
        return {"allowed": True, "patchType": "JSONPatch", "warnings": ["label added by mutate.webhooks.test"],
                "patch": base64.b64encode(json.dumps(ops).encode()).decode()}

    hooks.behave["/mutate"] = add_label
    hooks.received.pop("/after-mutate", None)
    ns.register("MutatingWebhookConfiguration",
                {"name": "mutate.webhooks.test", "rules": [_rule(resources=("configmaps",))],
                 "clientConfig": {"url": hooks.url("/mutate"), "caBundle": hooks.ca_bundle}})
    ns.register("ValidatingWebhookConfiguration",
                {"name": "after-mutate.webhooks.test", "rules": [_rule(resources=("configmaps",))],
                 "clientConfig": {"url": hooks.url("/after-mutate"), "caBundle": hooks.ca_bundle}})
    status, resp, body = ns.create("configmaps", _cm("c1", {"app": "x"}))
    assert status == 201, body
    assert body["metadata"]["labels"] == {"app": "x", "mutated": "yes"}
    assert resp.getheader("Warning") == '299 - "label added by mutate.webhooks.test"'
    _, _, stored = api.call("GET", f"/api/v1/namespaces/{ns.name}/configmaps/c1")
    assert stored["metadata"]["labels"] == {"app": "x", "mutated": "yes"}
    seen = hooks.received["/after-mutate"][-1]["request"]["object"]
    assert seen["metadata"]["labels"] == {"app": "x", "mutated": "yes"}
    status, _, body = ns.create("configmaps", _cm("c2"))
    assert status == 201 and body["metadata"]["labels"] == {"mutated": "yes"}
    # a patch may not move the object to another namespace
    hooks.behave["/move"] = lambda request: {
        "allowed": True, "patchType": "JSONPatch",
        "patch": base64.b64encode(b'[{"op":"replace","path":"/metadata/namespace","value":"default"}]').decode()}
    ns.register("MutatingWebhookConfiguration",
                {"name": "move.webhooks.test", "rules": [_rule(resources=("configmaps",))],
                 "objectSelector": {"matchLabels": {"case": "move"}},
                 "clientConfig": {"url": hooks.url("/move"), "caBundle": hooks.ca_bundle}},
                config_name=f"{ns.name}-move")
    status, _, body = ns.create("configmaps", _cm("moved", {"case": "move"}))
    assert (status, body["message"]) == (400, "the namespace of the provided object does not match the "
                                              "namespace sent on the request")


def test_if_needed_webhooks_are_called_again_after_a_later_change(ns, hooks):
    def patch(*ops) -> dict:
        return {"allowed": True, "patchType": "JSONPatch", "patch": base64.b64encode(json.dumps(ops).encode()).decode()}

    def first(request: dict) -> dict:
        seen = request["object"]["metadata"]["labels"].get("b", "no")
        return patch({"op": "add", "path": "/metadata/labels/seen-b", "value": seen})

    hooks.behave["/first"] = first
    hooks.behave["/second"] = lambda request: patch({"op": "add", "path": "/metadata/labels/b", "value": "yes"})
    hooks.received.pop("/first", None)
    for order, path, policy in (("1", "/first", "IfNeeded"), ("2", "/second", "Never")):
        ns.register("MutatingWebhookConfiguration",
                    {"name": f"m{order}.webhooks.test", "reinvocationPolicy": policy,
                     "rules": [_rule(resources=("configmaps",))],
                     "clientConfig": {"url": hooks.url(path), "caBundle": hooks.ca_bundle}},
                    config_name=f"{ns.name}-{order}")
    status, _, body = ns.create("configmaps", _cm("again", {"x": "1"}))
    assert status == 201, body
    assert body["metadata"]["labels"] == {"x": "1", "b": "yes", "seen-b": "yes"}
    assert [r["request"]["object"]["metadata"]["labels"].get("b") for r in hooks.received["/first"]] == [None, "yes"]


def test_failure_policy_when_the_webhook_is_down(api, ns):
    down = f"https://127.0.0.1:{free_port()}/down"
    hook = {"rules": [_rule(resources=("configmaps",))], "clientConfig": {"url": down}}
    ns.register("ValidatingWebhookConfiguration",
                {"name": "fail.webhooks.test", "failurePolicy": "Fail",
                 "objectSelector": {"matchLabels": {"policy": "fail"}}, **hook},
                {"name": "ignore.webhooks.test", "failurePolicy": "Ignore",
                 "objectSelector": {"matchLabels": {"policy": "ignore"}}, **hook})
    status, _, body = ns.create("configmaps", _cm("ignored", {"policy": "ignore"}))
    assert status == 201, body
    status, _, body = ns.create("configmaps", _cm("failed", {"policy": "fail"}))
    assert status == 500
    assert body["reason"] == "InternalError"
    assert body["message"] == (f'Internal error occurred: failed calling webhook "fail.webhooks.test": failed to '
                               f'call webhook: Post "{down}?timeout=10s": dial tcp 127.0.0.1:{down.split(":")[2][:-5]}: '
                               'connect: connection refused')


def test_a_slow_webhook_times_out_and_slows_only_its_own_requests(api, ns, hooks):
    release = threading.Event()

    def slow(request: dict) -> dict:
        release.wait(5)
        return {"allowed": True}

    hooks.behave["/slow"] = slow
    hooks.received.pop("/slow", None)
    ns.register("ValidatingWebhookConfiguration",
                {"name": "slow.webhooks.test", "timeoutSeconds": 2, "rules": [_rule(resources=("configmaps",))],
                 "clientConfig": {"url": hooks.url("/slow"), "caBundle": hooks.ca_bundle}})
    outcome = {}

    def create():
        started = time.monotonic()
        outcome["status"], _, outcome["body"] = ns.create("configmaps", _cm("slow"))
        outcome["took"] = time.monotonic() - started

    writer = threading.Thread(target=create)
    writer.start()
    try:
        deadline = time.monotonic() + 5
        while not hooks.received.get("/slow") and time.monotonic() < deadline:
            time.sleep(0.02)  # until the create waits on the webhook
        # an apiserver that waited for the webhook would answer this after the create's 2 s
        started = time.monotonic()
        status, _, _ = api.call("GET", f"/api/v1/namespaces/{ns.name}/configmaps")
        assert status == 200 and time.monotonic() - started < 1.0
        writer.join(10)
    finally:
        release.set()
    assert outcome["status"] == 500, outcome
    assert outcome["body"]["message"].endswith(
        f'failed calling webhook "slow.webhooks.test": failed to call webhook: Post '
        f'"{hooks.url("/slow")}?timeout=2s": context deadline exceeded')
    assert 1.9 < outcome["took"] < 4.5


def test_namespace_and_object_selectors_choose_what_is_sent(api, ns, hooks):
    hooks.behave["/deny-all"] = lambda request: {"allowed": False, "status": {"message": "no", "code": 422,
                                                                              "reason": "Invalid"}}
    ns.register("ValidatingWebhookConfiguration",
                {"name": "select.webhooks.test", "rules": [_rule(resources=("configmaps",))],
                 "objectSelector": {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]},
                 "clientConfig": {"url": hooks.url("/deny-all"), "caBundle": hooks.ca_bundle}})
    status, _, body = ns.create("configmaps", _cm("refused"))
    assert (status, body["reason"], body["message"]) == (
        422, "Invalid", 'admission webhook "select.webhooks.test" denied the request: no')
    status, _, _ = ns.create("configmaps", _cm("skipped", {"skip": "yes"}))
    assert status == 201
    # the gRPC API's writes are admitted alike; the webhook's code and reason ride in the Status
    client = Client(f"127.0.0.1:{api.port}")
    try:
        with pytest.raises(ApiError) as refused:
            client.create(core_pb2.ConfigMap(metadata={"name": "over-grpc", "namespace": ns.name}))
    finally:
        client.close()
    assert (refused.value.reason, refused.value.http_code, refused.value.message) == (
        "Invalid", 422, 'admission webhook "select.webhooks.test" denied the request: no')
    # another namespace, without the label the namespaceSelector wants: not sent
    other = f"{ns.name}-other"[:60]
    api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        status, _, body = api.call("POST", f"/api/v1/namespaces/{other}/configmaps", _cm("elsewhere"))
        assert status == 201, body
    finally:
        api.call("DELETE", f"/api/v1/namespaces/{other}")
    # the configuration kinds themselves are never sent to webhooks
    status, _, _ = api.call("DELETE", f"{GROUP}/validatingwebhookconfigurations/{ns.created[0][1]}")
    assert status == 200


def test_bad_answers_fail_the_request(api, ns, hooks):
    hooks.behave["/wrong-uid"] = lambda request: {"allowed": True, "uid": "not-it"}
    hooks.behave["/huge"] = lambda request: b" " * (3 * 1024 * 1024 + 10)
    hooks.behave["/patching"] = lambda request: {"allowed": True, "patchType": "JSONPatch",
                                                 "patch": base64.b64encode(b"[]").decode()}
    for path, label in (("/wrong-uid", "uid"), ("/huge", "huge"), ("/patching", "patch")):
        ns.register("ValidatingWebhookConfiguration",
                    {"name": f"{label}.webhooks.test", "rules": [_rule(resources=("configmaps",))],
                     "objectSelector": {"matchLabels": {"case": label}},
                     "clientConfig": {"url": hooks.url(path), "caBundle": hooks.ca_bundle}},
                    config_name=f"{ns.name}-{label}")
    expected = {"uid": 'received invalid webhook response: expected response.uid="',
                "huge": "failed to call webhook: the response body is larger than 3145728 bytes",
                "patch": "received invalid webhook response: validating webhooks may not return patches"}
    for label, why in expected.items():
        status, _, body = ns.create("configmaps", _cm(label, {"case": label}))
        assert status == 500, body
        assert body["message"].startswith(f'Internal error occurred: failed calling webhook "{label}.webhooks.test": '
                                          f"{why}"), body["message"]


def test_a_service_webhook_is_reached_through_the_planes_network(tmp_path_factory, hooks):
    """clientConfig.service: the Service's endpoint (an address on the plane's fabric, where
    pods are) dialled from the apiserver's --bind-netns namespace, the certificate checked
    for <service>.<namespace>.svc. The webhook server listens in a node's namespace."""
    from node import network
    from node.network import iproute
    from node.network.fabric import CONTROL_PLANE_IP, Fabric, node_ip
    from node.network.netns import socket_in

    if os.geteuid() != 0 or iproute.ip_binary() is None:
        pytest.skip("needs root and iproute2: network namespaces")
    fabric = Fabric(network.new_prefix())
    server = None
    try:
        fabric.create()
        cp = fabric.add_control_plane()
        fabric.add_node(0)
        sock = socket_in(fabric.node_netns(0))
        sock.bind((node_ip(0), 8443))
        sock.listen(16)
        server = WebhookServer(tmp_path_factory.mktemp("svc-webhook"), sock=sock,
                               dns_names=("policy.hooks.svc",))
        server.behave["/svc"] = _deny_forbidden
        with apiserver_on_etcdlite(tmp_path_factory, "webhooks-netns", bind_netns=cp,
                                   advertise_address=CONTROL_PLANE_IP) as plane:
            api = Api(plane.port)
            api.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": "hooks", "labels": {"admission-test": "hooks"}}})
            status, _, body = api.call("POST", "/api/v1/namespaces/hooks/services", {
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "policy"},
                "spec": {"ports": [{"name": "https", "port": 443, "targetPort": 8443}]}})
            assert status == 201, body
            status, _, body = api.call("POST", "/api/v1/namespaces/hooks/endpoints", {
                "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "policy"},
                "subsets": [{"addresses": [{"ip": node_ip(0)}], "ports": [{"name": "https", "port": 8443}]}]})
            assert status == 201, body
            hooked = Namespace(api, "hooks", [])
            hooked.register("ValidatingWebhookConfiguration",
                            {"name": "svc.webhooks.test", "rules": [_rule()],
                             "clientConfig": {"service": {"namespace": "hooks", "name": "policy", "path": "/svc"},
                                              "caBundle": server.ca_bundle}})
            status, _, body = hooked.create("pods", _pod("refused", {"forbidden": "yes"}))
            assert (status, body["message"]) == (403, 'admission webhook "svc.webhooks.test" denied the request: '
                                                       "pods labelled forbidden=yes are not allowed"), body
            assert server.received["/svc"][-1]["_query"] == "timeout=10s"
            status, _, body = hooked.create("pods", _pod("allowed"))
            assert status == 201, body
    finally:
        if server is not None:
            server.close()
        network.cleanup(fabric.prefix)


def test_a_service_webhook_without_the_planes_network_fails_as_its_policy_says(api, ns, hooks):
    ns.register("ValidatingWebhookConfiguration",
                {"name": "svc-down.webhooks.test", "rules": [_rule(resources=("configmaps",))],
                 "clientConfig": {"service": {"namespace": ns.name, "name": "missing"}}})
    status, _, body = ns.create("configmaps", _cm("c"))
    assert (status, body["message"]) == (500, 'Internal error occurred: failed calling webhook "svc-down.webhooks.test": '
                                              f'failed to call webhook: Post "https://missing.{ns.name}.svc:443?timeout=10s": '
                                              'service "missing" not found')


def test_configurations_are_validated_as_upstream(api):
    bad = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
           "metadata": {"name": "bad"},
           "webhooks": [{"name": "short.test", "clientConfig": {"url": "http://127.0.0.1:1/x"},
                         "rules": [_rule(operations=("CREATE", "*"))], "timeoutSeconds": 31,
                         "admissionReviewVersions": ["v1beta2"]}]}
    status, _, body = api.call("POST", f"{GROUP}/validatingwebhookconfigurations", bad)
    assert status == 422
    causes = {(c["field"], c["message"]) for c in body["details"]["causes"]}
    assert causes == {
        ("webhooks[0].name", 'Invalid value: "short.test": should be a domain with at least three segments '
                             "separated by dots"),
        ("webhooks[0].rules[0].operations", 'Invalid value: []string{"CREATE", "*"}: if \'*\' is present, '
                                            "must not specify other operations"),
        ("webhooks[0].sideEffects", "Required value: must specify one of None, NoneOnDryRun"),
        ("webhooks[0].timeoutSeconds", "Invalid value: 31: the timeout value must be between 1 and 30 seconds"),
        ("webhooks[0].clientConfig.url", 'Invalid value: "http://127.0.0.1:1/x": \'https\' is the only allowed '
                                         "URL scheme"),
        ("webhooks[0].admissionReviewVersions", 'Invalid value: []string{"v1beta2"}: must include at least one '
                                                "of v1, v1beta1"),
    }
    good = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "defaults"},
            "webhooks": [{"name": "d.webhooks.test", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                          "clientConfig": {"service": {"namespace": "default", "name": "nowhere"}},
                          "rules": [_rule()]}]}
    status, _, body = api.call("POST", f"{GROUP}/mutatingwebhookconfigurations", good)
    assert status == 201, body
    try:
        hook = body["webhooks"][0]
        assert (hook["failurePolicy"], hook["matchPolicy"], hook["timeoutSeconds"], hook["reinvocationPolicy"],
                hook["namespaceSelector"], hook["objectSelector"], hook["rules"][0]["scope"],
                hook["clientConfig"]["service"]["port"]) == ("Fail", "Equivalent", 10, "Never", {}, {}, "*", 443)
    finally:
        api.call("DELETE", f"{GROUP}/mutatingwebhookconfigurations/defaults")


# ---- kubectl ----

def _kubectl(api: Api, tmp_path: Path, namespace: str):
    from tests.test_kubectl import find_kubectl  # noqa: PLC0415 (its search, one place)

    binary = find_kubectl()
    if binary is None:
        pytest.skip("kubectl not found: run harness/get_kubectl.sh")
    config = write_kubeconfig(str(tmp_path / "kubeconfig"), f"http://127.0.0.1:{api.port}", namespace=namespace)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}

    def run(*args, ok: bool = True, stdin: str | None = None):
        proc = subprocess.run([binary, "--kubeconfig", config, "--cache-dir", str(tmp_path / "cache"), *args],
                              input=stdin, capture_output=True, text=True, env=env, timeout=60)
        assert (proc.returncode == 0) == ok, f"kubectl {' '.join(args)}: {proc.stdout} {proc.stderr}"
        return proc

    return run
