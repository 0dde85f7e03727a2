"""Kubernetes' REST API (apiserver/rest/), over HTTP/1.1 on the gRPC port, against a real
etcdlite and apiserver. Expectations are kube-apiserver 1.32's answers; each cites what it
rests on (k8s.io/apiserver's handlers and registry, apimachinery's Status)."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
from harness.plane import apiserver_on_etcdlite

from apiserver.client import Client
from apiserver.pb import core_pb2

pytestmark = pytest.mark.process

AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
# a watch cache this small lets the 410 Expired tests age a resourceVersion out quickly
CACHE_SIZE = 20


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "rest", watch_cache_size=CACHE_SIZE) as api:
        yield api


class Api:
    """One keep-alive HTTP/1.1 connection, as client-go keeps them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)

    def call(self, method: str, path: str, body=None, *, content_type: str = "application/json",
             accept: str = "application/json", raw: bytes | None = None):
        headers = {"Accept": accept}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = content_type
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = resp.read()
        try:
            decoded = json.loads(payload) if payload else None
        except ValueError:
            decoded = payload
        return resp.status, resp, decoded

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def api(plane):
    a = Api(plane.port)
    yield a
    a.close()


def _cm(name: str, labels: dict | None = None, **data) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, **({"labels": labels} if labels else {})}, "data": data}


def _deployment(name: str, replicas: int = 2) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox:1",
                                                           "env": [{"name": "A", "value": "1"}]}]}}}}


# ---- discovery ----

def test_version_and_legacy_discovery(api):
    status, _, version = api.call("GET", "/version")
    assert status == 200 and (version["major"], version["minor"]) == ("1", "32")
    status, _, apis = api.call("GET", "/api")
    assert status == 200 and apis["kind"] == "APIVersions" and apis["versions"] == ["v1"]
    status, _, groups = api.call("GET", "/apis")
    names = [g["name"] for g in groups["groups"]]
    assert groups["kind"] == "APIGroupList" and names == ["apps", "coordination.k8s.io", "discovery.k8s.io",
                                                          "networking.k8s.io", "storage.k8s.io",
                                                          "rbac.authorization.k8s.io", "certificates.k8s.io",
                                                          "admissionregistration.k8s.io", "authentication.k8s.io",
                                                          "authorization.k8s.io", "metrics.k8s.io"]
    status, _, core = api.call("GET", "/api/v1")
    by_name = {r["name"]: r for r in core["resources"]}
    # upstream: pods carry short name "po" and category "all"; status is a subresource
    assert by_name["pods"]["shortNames"] == ["po"] and by_name["pods"]["categories"] == ["all"]
    assert by_name["pods"]["namespaced"] is True and "watch" in by_name["pods"]["verbs"]
    assert by_name["pods/status"]["verbs"] == ["get", "patch", "update"]
    assert "deletecollection" not in by_name["namespaces"]["verbs"]
    _, _, apps = api.call("GET", "/apis/apps/v1")
    scale = next(r for r in apps["resources"] if r["name"] == "deployments/scale")
    assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")


def test_aggregated_discovery(api):
    """kubectl 1.32 asks /api and /apis for apidiscovery.k8s.io/v2 first; the response says
    in its Content-Type which form it is."""
    status, resp, doc = api.call("GET", "/apis", accept=f"{AGGREGATED},application/json")
    assert status == 200 and resp.getheader("Content-Type") == AGGREGATED
    assert doc["kind"] == "APIGroupDiscoveryList"
    apps = next(i for i in doc["items"] if i["metadata"]["name"] == "apps")
    deploy = next(r for r in apps["versions"][0]["resources"] if r["resource"] == "deployments")
    assert deploy["scope"] == "Namespaced" and deploy["shortNames"] == ["deploy"]
    assert {s["subresource"] for s in deploy["subresources"]} == {"status", "scale"}
    _, _, core = api.call("GET", "/api", accept=AGGREGATED)
    assert [i["metadata"]["name"] for i in core["items"]] == [""]


def test_openapi_v3_tells_kubectl_the_server_validates(api):
    """client-go's queryParamVerifierV3 looks for the kind's PATCH operation with a
    fieldValidation query parameter; finding it, kubectl leaves validation to the server."""
    _, _, root = api.call("GET", "/openapi/v3")
    url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
    status, _, doc = api.call("GET", url)
    assert status == 200
    ops = [p["patch"] for p in doc["paths"].values() if "patch" in p]
    deploy = next(o for o in ops if o["x-kubernetes-group-version-kind"]["kind"] == "Deployment")
    assert {"name": "fieldValidation", "in": "query"}.items() <= next(
        p for p in deploy["parameters"] if p["name"] == "fieldValidation").items()
    schema = doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]
    assert schema["x-kubernetes-group-version-kind"] == [{"group": "apps", "version": "v1", "kind": "Deployment"}]
    containers = doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"


def test_unknown_path_is_a_status_404(api):
    status, _, body = api.call("GET", "/api/v1/widgets")
    assert status == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"


# ---- one port, two protocols ----

def test_grpc_and_rest_share_the_port_and_the_objects(plane, api):
    status, _, created = api.call("POST", "/api/v1/namespaces/default/configmaps", _cm("shared", a="1"))
    assert status == 201
    with Client(plane.endpoint, timeout=10) as client:
        got = client.get("configmaps", "shared", namespace="default")
        assert got.data["a"] == "1" and got.metadata.resource_version == created["metadata"]["resourceVersion"]
        cm = core_pb2.ConfigMap()
        cm.metadata.name = "from-grpc"
        cm.metadata.namespace = "default"
        cm.data["b"] = "2"
        client.create(cm)
    status, _, body = api.call("GET", "/api/v1/namespaces/default/configmaps/from-grpc")
    assert status == 200 and body["data"] == {"b": "2"} and body["kind"] == "ConfigMap"


# ---- verbs ----

def test_create_get_update_delete_with_kubernetes_statuses(api):
    base = "/api/v1/namespaces/default/configmaps"
    status, _, created = api.call("POST", base, _cm("crud", x="1"))
    assert status == 201 and created["metadata"]["uid"] and created["apiVersion"] == "v1"
    # upstream: AlreadyExists, 409, details {name, kind: the resource}
    status, _, err = api.call("POST", base, _cm("crud", x="1"))
    assert status == 409 and err["reason"] == "AlreadyExists"
    assert err["message"] == 'configmaps "crud" already exists'
    assert err["details"] == {"name": "crud", "kind": "configmaps"}
    updated = dict(created, data={"x": "2"})
    status, _, stored = api.call("PUT", f"{base}/crud", updated)
    assert status == 200 and stored["data"] == {"x": "2"}
    # the stale resourceVersion: Conflict with upstream's message
    status, _, err = api.call("PUT", f"{base}/crud", dict(created, data={"x": "3"}))
    assert status == 409 and err["reason"] == "Conflict"
    assert err["message"].startswith('Operation cannot be fulfilled on configmaps "crud": the object has been modified')
    # a name in the body that is not the URL's: BadRequest
    status, _, err = api.call("PUT", f"{base}/crud", dict(stored, metadata={"name": "other"}))
    assert status == 400
    # the namespace of the body must be the path's
    status, _, err = api.call("POST", base, {**_cm("x"), "metadata": {"name": "x", "namespace": "kube-system"}})
    assert status == 400 and "does not match the namespace" in err["message"]
    status, _, gone = api.call("DELETE", f"{base}/crud")
    # upstream: an object deleted at once is answered with a Success Status naming it
    assert status == 200 and gone["status"] == "Success"
    assert gone["details"] == {"name": "crud", "kind": "configmaps", "uid": created["metadata"]["uid"]}
    status, _, err = api.call("GET", f"{base}/crud")
    assert status == 404 and err["message"] == 'configmaps "crud" not found'


def test_delete_options_preconditions_and_graceful_pod(api):
    base = "/api/v1/namespaces/default/pods"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "graceful"},
           "spec": {"nodeName": "node-x", "containers": [{"name": "c", "image": "busybox:1"}]}}
    status, _, created = api.call("POST", base, pod)
    assert status == 201
    status, _, err = api.call("DELETE", f"{base}/graceful", {"preconditions": {"uid": "not-it"}})
    assert status == 409 and "Precondition failed: UID in precondition: not-it" in err["message"]
    # a bound pod is deleted gracefully: the answer is the pod, with its deletionTimestamp
    status, _, body = api.call("DELETE", f"{base}/graceful", {"gracePeriodSeconds": 30})
    assert status == 200 and body["kind"] == "Pod" and body["metadata"]["deletionTimestamp"]
    assert body["metadata"]["deletionGracePeriodSeconds"] == 30
    status, _, gone = api.call("DELETE", f"{base}/graceful?gracePeriodSeconds=0")
    assert status == 200 and gone["status"] == "Success"


def test_dry_run_writes_nothing(api):
    base = "/api/v1/namespaces/default/configmaps"
    status, _, body = api.call("POST", f"{base}?dryRun=All", _cm("dry", a="1"))
    assert status == 201 and body["metadata"]["name"] == "dry"
    assert api.call("GET", f"{base}/dry")[0] == 404
    status, _, err = api.call("POST", f"{base}?dryRun=Some", _cm("dry"))
    assert status == 400


def test_list_selectors_paging_and_resource_version(api):
    base = "/api/v1/namespaces/default/configmaps"
    for i in range(5):
        assert api.call("POST", base, _cm(f"page-{i}", {"set": "paging", "odd": str(i % 2)}))[0] == 201
    _, _, listed = api.call("GET", f"{base}?labelSelector=set%3Dpaging,odd%3D1")
    assert listed["kind"] == "ConfigMapList" and listed["apiVersion"] == "v1"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["page-1", "page-3"]
    # list items carry no apiVersion/kind, as kube-apiserver's typed lists
    assert "kind" not in listed["items"][0]
    _, _, by_field = api.call("GET", f"{base}?fieldSelector=metadata.name%3Dpage-2")
    assert [i["metadata"]["name"] for i in by_field["items"]] == ["page-2"]
    names, token, pages = [], "", 0
    while True:
        _, _, page = api.call("GET", f"{base}?labelSelector=set%3Dpaging&limit=2" + (f"&continue={token}" if token else ""))
        names += [i["metadata"]["name"] for i in page["items"]]
        pages += 1
        token = page["metadata"].get("continue", "")
        if not token:
            break
    assert names == [f"page-{i}" for i in range(5)] and pages == 3
    status, _, err = api.call("GET", f"{base}?resourceVersion=abc")
    assert status == 400 and err["reason"] == "BadRequest"
    # apimachinery's ListOptions validation: 422 Invalid, kind ListOptions
    status, _, err = api.call("GET", f"{base}?resourceVersionMatch=Exact")
    assert status == 422 and err["message"] == (
        'ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: '
        "resourceVersionMatch is forbidden unless resourceVersion is provided")
    assert api.call("GET", f"{base}?resourceVersionMatch=Exact&resourceVersion=0")[0] == 422
    status, _, exact = api.call("GET", f"{base}?resourceVersionMatch=Exact&resourceVersion={listed['metadata']['resourceVersion']}"
                                      "&labelSelector=set%3Dpaging")
    assert status == 200 and len(exact["items"]) == 5


def test_delete_collection_by_label(api):
    base = "/api/v1/namespaces/default/configmaps"
    for i in range(3):
        api.call("POST", base, _cm(f"dc-{i}", {"dc": "yes" if i < 2 else "no"}))
    status, _, body = api.call("DELETE", f"{base}?labelSelector=dc%3Dyes")
    assert status == 200 and sorted(i["metadata"]["name"] for i in body["items"]) == ["dc-0", "dc-1"]
    _, _, left = api.call("GET", f"{base}?labelSelector=dc")
    assert [i["metadata"]["name"] for i in left["items"]] == ["dc-2"]


# ---- patch ----

def test_patch_types(api):
    base = "/apis/apps/v1/namespaces/default/deployments"
    assert api.call("POST", base, _deployment("patched"))[0] == 201
    status, _, body = api.call("PATCH", f"{base}/patched", {"spec": {"replicas": 3}},
                               content_type="application/merge-patch+json")
    assert status == 200 and body["spec"]["replicas"] == 3
    status, _, body = api.call("PATCH", f"{base}/patched",
                               [{"op": "replace", "path": "/spec/replicas", "value": 4},
                                {"op": "add", "path": "/metadata/labels/tier", "value": "web"}],
                               content_type="application/json-patch+json")
    assert status == 200 and body["spec"]["replicas"] == 4 and body["metadata"]["labels"]["tier"] == "web"
    # strategic merge: containers merge by name, env by name (k8s.io/api patchMergeKey tags)
    smp = {"spec": {"template": {"spec": {"containers": [
        {"name": "c", "image": "busybox:2", "env": [{"name": "B", "value": "2"}]}]}}}}
    status, _, body = api.call("PATCH", f"{base}/patched", smp,
                               content_type="application/strategic-merge-patch+json")
    container = body["spec"]["template"]["spec"]["containers"][0]
    assert status == 200 and container["image"] == "busybox:2"
    assert container["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    # ... and $patch: delete removes one element by its key
    smp = {"spec": {"template": {"spec": {"containers": [
        {"name": "c", "env": [{"name": "A", "$patch": "delete"}]}]}}}}
    _, _, body = api.call("PATCH", f"{base}/patched", smp, content_type="application/strategic-merge-patch+json")
    assert body["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "B", "value": "2"}]
    # a merge patch replaces the list (RFC 7386)
    mp = {"spec": {"template": {"spec": {"containers": [{"name": "d", "image": "busybox:3"}]}}}}
    _, _, body = api.call("PATCH", f"{base}/patched", mp, content_type="application/merge-patch+json")
    assert [c["name"] for c in body["spec"]["template"]["spec"]["containers"]] == ["d"]
    # a JSON patch whose test fails does not apply (upstream: 422 Invalid)
    status, _, err = api.call("PATCH", f"{base}/patched", [{"op": "test", "path": "/spec/replicas", "value": 9}],
                              content_type="application/json-patch+json")
    assert status == 422 and err["reason"] == "Invalid"
    assert err["message"] == "the server rejected our request due to an error in our request"
    assert err["details"]["causes"][0]["reason"] == "UnexpectedServerResponse"
    # an unknown patch type: 415 UnsupportedMediaType
    status, _, err = api.call("PATCH", f"{base}/patched", {}, content_type="application/x-unknown")
    assert status == 415 and err["reason"] == "UnsupportedMediaType"
    status, _, err = api.call("PATCH", f"{base}/missing", {"spec": {}},
                              content_type="application/merge-patch+json")
    assert status == 404 and err["details"] == {"name": "missing", "group": "apps", "kind": "deployments"}


def test_status_subresource_changes_only_status(api):
    base = "/apis/apps/v1/namespaces/default/deployments"
    assert api.call("POST", base, _deployment("stat"))[0] == 201
    status, _, body = api.call("PATCH", f"{base}/stat/status",
                               {"spec": {"replicas": 9}, "status": {"replicas": 7}},
                               content_type="application/merge-patch+json")
    assert status == 200 and body["status"]["replicas"] == 7 and body["spec"]["replicas"] == 2


def test_scale_subresource(api):
    base = "/apis/apps/v1/namespaces/default/deployments"
    assert api.call("POST", base, _deployment("scaled", 1))[0] == 201
    _, _, scale = api.call("GET", f"{base}/scaled/scale")
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"] == {"replicas": 1} and scale["status"]["selector"] == "app=scaled"
    # kubectl scale sends a merge patch of the Scale
    _, _, scale = api.call("PATCH", f"{base}/scaled/scale", {"spec": {"replicas": 4}},
                           content_type="application/merge-patch+json")
    assert scale["spec"]["replicas"] == 4
    _, _, scale = api.call("PUT", f"{base}/scaled/scale", dict(scale, spec={"replicas": 2}))
    assert scale["spec"]["replicas"] == 2
    assert api.call("GET", f"{base}/scaled")[2]["spec"]["replicas"] == 2
    status, _, err = api.call("PUT", f"{base}/scaled/scale", dict(scale, spec={"replicas": -1}))
    assert status == 422 and err["reason"] == "Invalid"


def test_eviction_deletes_the_pod(api):
    """policy/v1 Eviction on pods/eviction: 201 with a Success Status (no
    PodDisruptionBudget kind is served to refuse it)."""
    base = "/api/v1/namespaces/default/pods"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "evicted"},
           "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}
    assert api.call("POST", base, pod)[0] == 201
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "other"}}
    status, _, err = api.call("POST", f"{base}/evicted/eviction", eviction)
    assert status == 400 and err["message"] == "name in URL does not match name in Eviction object"
    eviction["metadata"]["name"] = "evicted"
    status, _, body = api.call("POST", f"{base}/evicted/eviction", eviction)
    assert status == 201 and body["status"] == "Success" and body["code"] == 201
    assert api.call("GET", f"{base}/evicted")[0] == 404


# ---- tables ----

def test_tables_have_kubectls_columns(api):
    base = "/apis/apps/v1/namespaces/default/deployments"
    assert api.call("POST", base, _deployment("tabled", 3))[0] == 201
    status, resp, table = api.call("GET", f"{base}?labelSelector=app%3Dtabled",
                                   accept=f"{TABLE},application/json")
    assert status == 200 and resp.getheader("Content-Type") == TABLE and table["kind"] == "Table"
    # pkg/printers/internalversion: deployments print these, the wide ones at priority 1
    assert [(c["name"], c["priority"]) for c in table["columnDefinitions"]] == [
        ("Name", 0), ("Ready", 0), ("Up-to-date", 0), ("Available", 0), ("Age", 0),
        ("Containers", 1), ("Images", 1), ("Selector", 1)]
    row = table["rows"][0]
    assert row["cells"][:4] == ["tabled", "0/3", 0, 0] and row["cells"][5:] == ["c", "busybox:1", "app=tabled"]
    assert row["object"]["kind"] == "PartialObjectMetadata"
    _, _, pods = api.call("GET", "/api/v1/namespaces/default/pods", accept=TABLE)
    assert [c["name"] for c in pods["columnDefinitions"]] == [
        "Name", "Ready", "Status", "Restarts", "Age", "IP", "Node", "Nominated Node", "Readiness Gates"]


# ---- watch ----

def _watch(port: int, path: str):
    """A raw watch: (socket file, first lines reader)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n".encode())
    reader = sock.makefile("rb")
    head = []
    while (line := reader.readline()) not in (b"\r\n", b""):
        head.append(line.decode().strip())
    return sock, reader, head


def _event(reader) -> dict:
    """The next watch event of a chunked stream (one event a chunk, as the server sends)."""
    size = int(reader.readline().strip(), 16)
    data = reader.read(size)
    reader.readline()
    return json.loads(data)


def test_watch_streams_events_and_bookmarks(plane, api):
    base = "/api/v1/namespaces/default/configmaps"
    _, _, listed = api.call("GET", f"{base}?labelSelector=w%3D1")
    rv = listed["metadata"]["resourceVersion"]
    sock, reader, head = _watch(plane.port, f"{base}?watch=true&labelSelector=w%3D1&resourceVersion={rv}"
                                           "&allowWatchBookmarks=true")
    try:
        assert head[0] == "HTTP/1.1 200 OK" and "Transfer-Encoding: chunked" in head
        api.call("POST", base, _cm("watched", {"w": "1"}, a="1"))
        api.call("PATCH", f"{base}/watched", {"data": {"a": "2"}}, content_type="application/merge-patch+json")
        api.call("DELETE", f"{base}/watched")
        events = [_event(reader) for _ in range(3)]
        assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
        assert events[0]["object"]["kind"] == "ConfigMap" and events[1]["object"]["data"] == {"a": "2"}
    finally:
        sock.close()
    # the server noticed the client left and keeps serving
    assert api.call("GET", "/version")[0] == 200


def test_watch_send_initial_events_ends_with_the_annotated_bookmark(plane, api):
    """KEP-3157 (client-go's WatchList): the current objects as ADDED, a BOOKMARK annotated
    k8s.io/initial-events-end, then the changes; apimachinery refuses it without
    resourceVersionMatch=NotOlderThan and allowWatchBookmarks."""
    base = "/api/v1/namespaces/default/configmaps"
    for name in ("init-a", "init-b"):
        api.call("POST", base, _cm(name, {"init": "1"}))
    status, _, err = api.call("GET", f"{base}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true")
    assert status == 422 and err["reason"] == "Invalid" and "NotOlderThan" in err["message"]
    status, _, err = api.call("GET", f"{base}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan")
    assert status == 422 and "allowWatchBookmarks" in err["message"]
    sock, reader, head = _watch(plane.port, f"{base}?watch=true&sendInitialEvents=true&labelSelector=init%3D1"
                                           "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
    try:
        assert head[0] == "HTTP/1.1 200 OK"
        first = [_event(reader) for _ in range(3)]
        assert [(e["type"], e["object"]["metadata"].get("name")) for e in first] == [
            ("ADDED", "init-a"), ("ADDED", "init-b"), ("BOOKMARK", None)]
        assert first[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        api.call("POST", base, _cm("init-c", {"init": "1"}))
        event = _event(reader)
        while event["type"] == "BOOKMARK":  # a periodic bookmark may come first
            event = _event(reader)
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "init-c")
    finally:
        sock.close()


def test_watch_as_table(plane, api):
    """kubectl get -w asks for Tables: each event's object is a Table of one row."""
    base = "/apis/apps/v1/namespaces/default/deployments"
    sock = socket.create_connection(("127.0.0.1", plane.port), timeout=10)
    try:
        sock.sendall(f"GET {base}?watch=true&labelSelector=app%3Dwatched-table HTTP/1.1\r\nHost: x\r\n"
                     f"Accept: {TABLE}\r\n\r\n".encode())
        reader = sock.makefile("rb")
        while reader.readline() not in (b"\r\n", b""):
            pass
        api.call("POST", base, _deployment("watched-table"))
        event = _event(reader)
        assert event["type"] == "ADDED" and event["object"]["kind"] == "Table"
        assert event["object"]["rows"][0]["cells"][0] == "watched-table"
        assert event["object"]["columnDefinitions"][0]["name"] == "Name"
    finally:
        sock.close()


def test_watch_from_a_too_old_resource_version_is_an_error_event_410(plane, api):
    """kube-apiserver answers 200 and then an ERROR event whose object is a Status with
    code 410, reason Expired (the reflector relists on it)."""
    base = "/api/v1/namespaces/default/configmaps"
    _, _, first = api.call("POST", base, _cm("aging", n="0"))
    for i in range(CACHE_SIZE + 5):
        api.call("PATCH", f"{base}/aging", {"data": {"n": str(i)}}, content_type="application/merge-patch+json")
    old = first["metadata"]["resourceVersion"]
    sock, reader, head = _watch(plane.port, f"{base}?watch=true&resourceVersion={old}")
    try:
        assert head[0] == "HTTP/1.1 200 OK"
        event = _event(reader)
        assert event["type"] == "ERROR"
        assert event["object"]["kind"] == "Status" and event["object"]["code"] == 410
        assert event["object"]["reason"] in ("Expired", "Gone")
    finally:
        sock.close()


def test_watch_timeout_seconds_ends_the_stream(plane, api):
    # booleans as Go's ParseBool reads them: the Python client sends watch=True
    for flag in ("true", "True", "1"):
        started = time.monotonic()
        status, resp, body = api.call("GET", f"/api/v1/namespaces/default/secrets?watch={flag}&timeoutSeconds=1")
        assert status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
        assert 0.9 < time.monotonic() - started < 10


# ---- bad input ----

def test_bad_input_answers_status_and_the_server_keeps_serving(api):
    base = "/api/v1/namespaces/default/configmaps"
    status, _, err = api.call("POST", base, raw=b"{not json")
    assert status == 400 and err["reason"] == "BadRequest"
    # fieldValidation=Strict (what kubectl sends): unknown fields are a BadRequest naming them
    status, _, err = api.call("POST", f"{base}?fieldValidation=Strict", {**_cm("strict"), "bogus": 1})
    assert status == 400 and 'unknown field "bogus"' in err["message"]
    # Warn (the server's default): created, with a Warning header
    status, resp, body = api.call("POST", base, {**_cm("warned"), "bogus": 1})
    assert status == 201 and resp.getheader("Warning") == '299 - "unknown field \\"bogus\\""'
    status, _, err = api.call("POST", base, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})
    assert status == 400
    status, _, err = api.call("POST", base, {"apiVersion": "v2", "kind": "ConfigMap", "metadata": {"name": "s"}})
    assert status == 400
    status, _, err = api.call("POST", base, _cm("big", blob="x" * (3 * 1024 * 1024 + 10)))
    assert status == 413 and err["reason"] == "RequestEntityTooLarge"
    fresh = Api(api.port)
    try:
        assert fresh.call("GET", "/api/v1/namespaces/default")[0] == 200
    finally:
        fresh.close()


def test_keep_alive_and_chunked_request_bodies(plane):
    sock = socket.create_connection(("127.0.0.1", plane.port), timeout=10)
    try:
        body = json.dumps(_cm("chunked", a="1")).encode()
        half = len(body) // 2
        sock.sendall(b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
                     + b"GET /api/v1/namespaces/default/configmaps/chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = sock.makefile("rb")
        statuses = []
        for _ in range(2):
            statuses.append(reader.readline().decode().strip())
            length = 0
            while (line := reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            payload = json.loads(reader.read(length))
        assert statuses == ["HTTP/1.1 201 Created", "HTTP/1.1 200 OK"] and payload["data"] == {"a": "1"}
    finally:
        sock.close()


# ---- protobuf bodies ----

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _k8s_protobuf(api_version: str, kind: str, raw: bytes) -> bytes:
    """runtime.Unknown behind the k8s\\0 magic, as client-go's protobuf serializer writes it."""
    type_meta = _len(1, api_version.encode()) + _len(2, kind.encode())
    return b"k8s\x00" + _len(1, type_meta) + _len(2, raw)


def test_protobuf_bodies_as_typed_clients_send_them(api):
    """k8s.io/api generated.proto numbers: Service{metadata=1, spec=2}, ServiceSpec{ports=1,
    selector=2}, ServicePort{name=1, protocol=2, port=3, targetPort=4 (IntOrString{type=1,
    intVal=2, strVal=3})}, ObjectMeta{name=1, creationTimestamp=8 (Time{seconds=1})}."""
    meta = _len(1, b"pb-svc") + _len(8, b"")  # a zero Time: no timestamp
    port = _len(1, b"http") + _len(2, b"TCP") + _int(3, 8080) + _len(4, _int(1, 0) + _int(2, 80))
    named = _len(1, b"metrics") + _len(2, b"TCP") + _int(3, 9090) + _len(4, _int(1, 1) + _len(3, b"metrics"))
    spec = _len(1, port) + _len(1, named) + _len(2, _len(1, b"app") + _len(2, b"pb"))
    body = _k8s_protobuf("v1", "Service", _len(1, meta) + _len(2, spec))
    status, _, svc = api.call("POST", "/api/v1/namespaces/default/services", raw=body,
                              content_type="application/vnd.kubernetes.protobuf")
    assert status == 201, svc["message"]
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, 80), (9090, "metrics")]
    assert svc["spec"]["selector"] == {"app": "pb"}
    # DeleteOptions{gracePeriodSeconds=1, preconditions=2{uid=1}} (kubectl drain sends these)
    options = _k8s_protobuf("meta.k8s.io/v1", "DeleteOptions", _int(1, 0) + _len(2, _len(1, b"other-uid")))
    status, _, err = api.call("DELETE", "/api/v1/namespaces/default/services/pb-svc", raw=options,
                              content_type="application/vnd.kubernetes.protobuf")
    assert status == 409 and "UID in precondition: other-uid" in err["message"]
    status, _, err = api.call("POST", "/api/v1/namespaces/default/services", raw=b"k8s\x00\xff",
                              content_type="application/vnd.kubernetes.protobuf")
    assert status == 400 and err["reason"] == "BadRequest"


def test_expect_100_continue(plane):
    """curl sends Expect: 100-continue before a body over 1 KiB and waits for the interim answer."""
    body = json.dumps(_cm("continued", a="x" * 2000)).encode()
    sock = socket.create_connection(("127.0.0.1", plane.port), timeout=10)
    try:
        sock.sendall(b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        reader = sock.makefile("rb")
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n" and reader.readline() == b"\r\n"
        sock.sendall(body)
        assert reader.readline() == b"HTTP/1.1 201 Created\r\n"
    finally:
        sock.close()
