"""The REST front's pure parts (apiserver/rest/): paths, patches, content negotiation, ages,
protobuf bodies and HTTP/1.1 request parsing, without processes."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from apiserver.errors import ApiError
from apiserver.rest import discovery, patch, protobuf, routing, tables
from apiserver.rest.http1 import _BadRequest, _read_request


# ---- routing ----

@pytest.mark.parametrize("path, want", [
    ("/api/v1/pods", ("pods", "", "", "")),
    ("/api/v1/namespaces/ns1/pods", ("pods", "ns1", "", "")),
    ("/api/v1/namespaces/ns1/pods/p/status", ("pods", "ns1", "p", "status")),
    ("/api/v1/namespaces", ("namespaces", "", "", "")),
    ("/api/v1/namespaces/ns1", ("namespaces", "", "ns1", "")),
    ("/api/v1/namespaces/ns1/status", ("namespaces", "", "ns1", "status")),
    ("/api/v1/nodes/n1", ("nodes", "", "n1", "")),
    ("/apis/apps/v1/namespaces/d/deployments/web/scale", ("deployments", "d", "web", "scale")),
    ("/apis/coordination.k8s.io/v1/leases", ("leases", "", "", "")),
])
def test_routing(path, want):
    t = routing.parse(path)
    assert (t.res.name, t.namespace, t.name, t.subresource) == want


@pytest.mark.parametrize("path", ["/api/v1/widgets", "/apis/apps/v1/pods", "/api/v1/deployments",
                                  "/api/v1/namespaces/a/nodes", "/api/v1/pods/a/b/c"])
def test_routing_refuses_what_is_not_served(path):
    with pytest.raises(routing.NoRoute):
        routing.parse(path)


def test_routing_leaves_discovery_paths_alone():
    assert routing.parse("/api/v1") is None and routing.parse("/apis/apps/v1") is None
    assert routing.parse("/version") is None


# ---- negotiation ----

def test_aggregated_discovery_and_table_negotiation():
    kubectl = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
               "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")
    assert discovery.wants_aggregated(kubectl) == discovery.AGGREGATED_V2
    assert discovery.wants_aggregated("application/json") == ""
    get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
    assert tables.wants_table(get) == tables.TABLE_TYPE
    # JSON listed first: JSON wins
    assert tables.wants_table("application/json, application/json;as=Table;v=v1;g=meta.k8s.io") == ""


@pytest.mark.parametrize("seconds, text", [(5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"),
                                           (3 * 3600 + 60, "3h1m"), (9 * 3600, "9h"), (50 * 3600, "2d2h"),
                                           (30 * 86400, "30d"), (800 * 86400, "2y70d")])
def test_age_as_kubectl_prints_it(seconds, text):
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    then = (now - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert tables.age(then, now) == text


# ---- patches ----

def test_json_patch_operations():
    doc = {"a": {"b": [1, 2]}, "c": "x"}
    out = patch.json_patch(doc, [
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "copy", "from": "/c", "path": "/d"},
        {"op": "move", "from": "/c", "path": "/e"},
        {"op": "replace", "path": "/a/b/1", "value": 10},
        {"op": "remove", "path": "/a/b/2"},
        {"op": "test", "path": "/d", "value": "x"},
        {"op": "add", "path": "/f~1g", "value": 1},
    ])
    assert out == {"a": {"b": [0, 10, 3]}, "d": "x", "e": "x", "f/g": 1}
    assert doc == {"a": {"b": [1, 2]}, "c": "x"}  # the input is not changed
    for bad in ([{"op": "remove", "path": "/nope"}], [{"op": "test", "path": "/c", "value": "y"}],
                [{"op": "replace", "path": "/a/b/9", "value": 1}], [{"op": "frob", "path": "/c"}],
                [{"op": "add", "path": "/a"}]):
        with pytest.raises(ApiError) as e:
            patch.json_patch(doc, bad)
        assert e.value.reason == "Invalid"


def test_strategic_merge_by_keys_and_directives():
    live = {"spec": {"containers": [
        {"name": "a", "image": "x:1", "env": [{"name": "E1", "value": "1"}, {"name": "E2", "value": "2"}],
         "ports": [{"containerPort": 80}]},
        {"name": "b", "image": "y:1"}],
        "tolerations": [{"key": "t1"}]},
        "metadata": {"finalizers": ["f1"]}}
    smp = {"spec": {"containers": [
        {"name": "a", "env": [{"name": "E2", "$patch": "delete"}, {"name": "E3", "value": "3"}],
         "ports": [{"containerPort": 80, "name": "http"}]},
        {"name": "c", "image": "z:1"}],
        "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "tolerations": [{"key": "t2"}]},
        "metadata": {"finalizers": ["f2"]}}
    out = patch.strategic_merge(live, smp)
    a, b, c = out["spec"]["containers"]
    assert a == {"name": "a", "image": "x:1", "env": [{"name": "E1", "value": "1"}, {"name": "E3", "value": "3"}],
                 "ports": [{"containerPort": 80, "name": "http"}]}
    assert b == {"name": "b", "image": "y:1"} and c == {"name": "c", "image": "z:1"}
    # a list without a merge key is replaced; finalizers merge as a set
    assert out["spec"]["tolerations"] == [{"key": "t2"}]
    assert out["metadata"]["finalizers"] == ["f1", "f2"]
    # $patch: replace on a map, $deleteFromPrimitiveList, null deletes
    out = patch.strategic_merge({"m": {"x": 1, "y": 2}, "l": ["a", "b"], "k": 1},
                                {"m": {"$patch": "replace", "z": 3}, "$deleteFromPrimitiveList/l": ["a"], "k": None})
    assert out == {"m": {"z": 3}, "l": ["b"]}
    with pytest.raises(ApiError):
        patch.strategic_merge(live, {"spec": {"containers": [{"image": "no-name"}]}})


def test_patch_bodies_that_are_not_json():
    with pytest.raises(ApiError) as e:
        patch.apply({}, patch.MERGE, b"{")
    assert e.value.reason == "BadRequest"
    with pytest.raises(ApiError):
        patch.apply({}, patch.MERGE, b"[1]")


# ---- protobuf bodies ----

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value & (2 ** 64 - 1))


def test_protobuf_deployment_with_k8s_types():
    """k8s.io/api apps/v1 numbers: Deployment{metadata=1, spec=2}; DeploymentSpec{replicas=1,
    selector=2, template=3, strategy=4}; DeploymentStrategy{type=1, rollingUpdate=2};
    RollingUpdateDeployment{maxUnavailable=1, maxSurge=2} (IntOrString); ResourceRequirements
    {limits=1} map<string, Quantity{string=1}>; ObjectMeta.creationTimestamp=8 Time{seconds=1}."""
    meta = _len(1, b"d") + _len(8, _int(1, 1767225600))
    resources = _len(1, _len(1, b"cpu") + _len(2, _len(1, b"500m")))
    container = _len(1, b"c") + _len(2, b"busybox:1") + _len(8, resources)
    template = _len(1, _len(11, _len(1, b"app") + _len(2, b"d"))) + _len(2, _len(2, container))
    rolling = _len(1, _int(1, 1) + _len(3, b"25%")) + _len(2, _int(1, 0) + _int(2, 2))
    spec = (_int(1, 3) + _len(2, _len(1, _len(1, b"app") + _len(2, b"d"))) + _len(3, template)
            + _len(4, _len(1, b"RollingUpdate") + _len(2, rolling)))
    raw = _len(1, meta) + _len(2, spec)
    body = b"k8s\x00" + _len(1, _len(1, b"apps/v1") + _len(2, b"Deployment")) + _len(2, raw)
    d = protobuf.decode(body)
    assert d["metadata"] == {"name": "d", "creationTimestamp": "2026-01-01T00:00:00Z"}
    assert d["spec"]["replicas"] == 3
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": "25%", "maxSurge": 2}
    assert d["spec"]["template"]["spec"]["containers"][0]["resources"] == {"limits": {"cpu": "500m"}}
    with pytest.raises(ApiError):
        protobuf.decode(b"k8s\x00" + _len(1, _len(1, b"v9") + _len(2, b"Widget")))
    with pytest.raises(ApiError):
        protobuf.decode(b"not protobuf")


# ---- HTTP/1.1 requests ----

def _parse(data: bytes):
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await _read_request(reader)
    return asyncio.run(go())


def test_http1_request_parsing():
    req = _parse(b"GET /api/v1/namespaces/a%2Db/pods?labelSelector=app%3Dx&watch=true HTTP/1.1\r\n"
                 b"Accept: application/json\r\nX-Multi: 1\r\nx-multi: 2\r\n\r\n")
    assert (req.method, req.path) == ("GET", "/api/v1/namespaces/a-b/pods")
    assert req.param("labelSelector") == "app=x" and req.param("watch") == "true"
    assert req.headers["x-multi"] == "1,2"
    req = _parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n")
    assert req.body == b"abcde"
    assert _parse(b"") is None
    with pytest.raises(_BadRequest):
        _parse(b"GARBAGE\r\n\r\n")
    with pytest.raises(_BadRequest):
        _parse(b"GET / HTTP/2.0\r\n\r\n")
    with pytest.raises(_BadRequest) as e:
        _parse(b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n")
    assert e.value.status == 413


def test_event_rows_as_kubes_printer():
    now = datetime.now(timezone.utc)
    stamp = (now - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {"metadata": {"name": "web.1"}, "type": "Normal", "reason": "ScalingReplicaSet",
             "involvedObject": {"kind": "Deployment", "name": "web"}, "source": {"component": "controller-manager"},
             "message": " Scaled up ", "firstTimestamp": stamp, "lastTimestamp": stamp}
    row = tables.row("events", event, "None")["cells"]
    assert row[1:] == ["Normal", "ScalingReplicaSet", "deployment/web", "", "controller-manager", "Scaled up",
                       row[7], 1, "web.1"]
    assert row[0].endswith("s") and [c["name"] for c in tables.columns("events")][:4] == [
        "Last Seen", "Type", "Reason", "Object"]


def test_int_or_string_numbers_are_json_numbers():
    from apiserver import manifest
    from apiserver.rest import convert
    svc = manifest.from_dict({"kind": "Service", "metadata": {"name": "s"},
                              "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 81, "targetPort": "web"}]}})
    assert [p["targetPort"] for p in convert.to_json(svc)["spec"]["ports"]] == [8080, "web"]
    probe = {"httpGet": {"port": 8080}, "tcpSocket": {"port": "http"}}
    deploy = manifest.from_dict({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}},
                 "template": {"spec": {"containers": [{"name": "c", "image": "i", "livenessProbe": probe}]}}}})
    out = convert.to_json(deploy)["spec"]
    assert out["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": "25%"}
    liveness = out["template"]["spec"]["containers"][0]["livenessProbe"]
    assert liveness["httpGet"]["port"] == 8080 and liveness["tcpSocket"]["port"] == "http"


def test_item_cache_keys_on_the_resource_version():
    import json as _json

    from apiserver.pb import core_pb2
    from apiserver.rest.convert import ItemCache
    cache = ItemCache(capacity=2)
    cm = core_pb2.ConfigMap()
    cm.metadata.name, cm.metadata.namespace, cm.metadata.resource_version = "a", "ns", "5"
    cm.data["k"] = "1"
    first = cache.item(cm)
    assert _json.loads(first) == {"metadata": {"name": "a", "namespace": "ns", "resourceVersion": "5"},
                                  "data": {"k": "1"}}
    cm.data["k"] = "2"
    assert cache.item(cm) is first  # same object and resourceVersion: the same content by contract
    cm.metadata.resource_version = "6"
    assert _json.loads(cache.item(cm))["data"] == {"k": "2"}
    for rv in ("7", "8", "9"):
        cm.metadata.resource_version = rv
        cache.item(cm)
    assert len(cache._items) == 2


def test_a_streamed_response_ends_when_the_client_goes_away():
    """A watch whose client closed its connection is released at once, not at its next
    event (which may never come): http1 watches the connection while it streams."""
    from apiserver.rest.http1 import Http1Server, Response
    from apiserver.rest.status import http_error

    async def go():
        closed = asyncio.Event()
        started = asyncio.Event()

        async def never_ending():
            try:
                yield b'{"type":"ADDED"}\n'
                started.set()
                await asyncio.Event().wait()
            finally:
                closed.set()

        async def handler(req):
            return Response(200, stream=never_ending())

        server = Http1Server(handler, http_error)
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(server.protocol, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /watch HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(started.wait(), 5)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head
        writer.close()
        await asyncio.wait_for(closed.wait(), 5)
        await server.close()
        listener.close()
        await listener.wait_closed()

    asyncio.run(go())


def test_fields_kubernetes_always_writes_are_written():
    """k8s.io/api fields without omitempty are in the JSON even when empty; the official
    Python client refuses a ContainerStatus without imageID, a ReplicaSetStatus without replicas."""
    from apiserver.pb import apps_pb2, core_pb2
    from apiserver.rest import convert
    pod = core_pb2.Pod()
    pod.metadata.name = "p"
    pod.spec.containers.add(name="c", image="i")
    pod.status.container_statuses.add(name="c", image="i")
    pod.status.conditions.add(type="Ready", status="False")
    out = convert.to_json(pod)
    assert out["status"]["containerStatuses"] == [
        {"name": "c", "image": "i", "imageID": "", "ready": False, "restartCount": 0}]
    rs = apps_pb2.ReplicaSet()
    rs.metadata.name = "r"
    rs.status.SetInParent()
    assert convert.to_json(rs)["status"]["replicas"] == 0
    cm = core_pb2.ConfigMap()
    cm.metadata.name = "c"
    assert convert.to_json(cm) == {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}


def test_times_are_normalized_as_kubernetes_reencodes_them():
    from apiserver.rest import convert
    body = {"metadata": {"creationTimestamp": "2026-12-06T23:53:50+00:00"},
            "status": {"conditions": [{"lastTransitionTime": "2026-12-07T01:53:50.123+02:00"}]},
            "spec": {"renewTime": "2026-12-06T23:53:50Z"}}
    convert.normalize_times(body)
    assert body == {"metadata": {"creationTimestamp": "2026-12-06T23:53:50Z"},
                    "status": {"conditions": [{"lastTransitionTime": "2026-12-06T23:53:50Z"}]},
                    "spec": {"renewTime": "2026-12-06T23:53:50.000000Z"}}
    with pytest.raises(ApiError) as e:
        convert.normalize_times({"metadata": {"creationTimestamp": "yesterday"}})
    assert e.value.reason == "BadRequest"


@pytest.mark.parametrize("status, meta, want", [
    ({"phase": "Running", "containerStatuses": [
        {"ready": True, "restartCount": 2, "state": {"running": {}}},
        {"ready": False, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]},
     {}, ("CrashLoopBackOff", 1, 3)),
    ({"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 2}}}]}, {}, ("ExitCode:2", 0, 0)),
    ({"phase": "Running", "containerStatuses": [{"ready": True, "state": {"running": {}}}]},
     {"deletionTimestamp": "2026-01-01T00:00:00Z"}, ("Terminating", 1, 0)),
    ({"phase": "Pending", "initContainerStatuses": [{"state": {"waiting": {"reason": "PodInitializing"}}}]},
     {}, ("Init:0/1", 0, 0)),
    ({"phase": "Pending", "initContainerStatuses": [{"state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]},
     {}, ("Init:Error", 0, 0)),
    ({"phase": "Pending", "reason": "Evicted"}, {}, ("Evicted", 0, 0)),
])
def test_pod_status_column_as_kubectls_printer(status, meta, want):
    spec = {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}
    reason, ready, restarts, _ = tables._pod_status(spec, status, meta)
    assert (reason, ready, restarts) == want


def test_watch_lines_are_shared_between_watchers():
    from apiserver.pb import core_pb2
    from apiserver.rest.watch import SharedLines
    shared = SharedLines(capacity=1)
    cm = core_pb2.ConfigMap()
    cm.metadata.name = "a"
    first = shared.line("ADDED", cm)
    assert shared.line("ADDED", cm) is first
    assert json.loads(first) == {"type": "ADDED", "object": {"apiVersion": "v1", "kind": "ConfigMap",
                                                               "metadata": {"name": "a"}}}
    other = core_pb2.ConfigMap()
    shared.line("ADDED", other)  # evicts the first: capacity 1
    assert shared.line("ADDED", cm) is not first
