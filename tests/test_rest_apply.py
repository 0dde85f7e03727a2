"""Server-side apply, managedFields and dryRun over the REST API (apiserver/rest/apply.py,
apiserver/fieldmanager.py), against a real etcdlite and apiserver, and the official Python
client's server-side apply. Expectations are kube-apiserver 1.32's answers: k8s.io/apiserver's
patch handler and fieldmanager, apimachinery's ValidatePatchOptions."""

from __future__ import annotations

import http.client
import json

import pytest
import yaml
from harness.plane import apiserver_on_etcdlite

pytestmark = pytest.mark.process

APPLY = "application/apply-patch+yaml"
BASE = "/api/v1/namespaces/default"


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "rest-apply") as api:
        yield api


@pytest.fixture
def call(plane):
    conn = http.client.HTTPConnection("127.0.0.1", plane.port, timeout=15)

    def call(method: str, path: str, body=None, *, content_type: str = "application/json",
             user_agent: str = "test-client/1.0"):
        headers = {"Accept": "application/json", "User-Agent": user_agent}
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, json.loads(payload) if payload else None

    yield call
    conn.close()


def _cm(name: str, **data) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})


def _entries(obj: dict) -> dict:
    return {(e["manager"], e["operation"], e.get("subresource", "")): e for e in obj["metadata"]["managedFields"]}


def test_apply_creates_and_a_repeat_writes_nothing(call):
    status, obj = call("PATCH", f"{BASE}/configmaps/one?fieldManager=tool", _cm("one", a="1"), content_type=APPLY)
    # the patch handler creates on apply: 201
    assert status == 201 and obj["data"] == {"a": "1"}
    entry = _entries(obj)[("tool", "Apply", "")]
    assert entry["apiVersion"] == "v1" and entry["fieldsType"] == "FieldsV1" and entry["time"].endswith("Z")
    assert entry["fieldsV1"] == {"f:data": {"f:a": {}}}
    status, again = call("PATCH", f"{BASE}/configmaps/one?fieldManager=tool", _cm("one", a="1"), content_type=APPLY)
    assert status == 200 and again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_apply_options_are_checked(call):
    # ValidatePatchOptions: apply needs a fieldManager; force is for apply only
    status, err = call("PATCH", f"{BASE}/configmaps/one", _cm("one", a="1"), content_type=APPLY)
    assert status == 422 and err["message"] == (
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch')
    status, err = call("PATCH", f"{BASE}/configmaps/one?force=true", {"data": {"a": "2"}},
                       content_type="application/merge-patch+json")
    assert status == 422 and "force: Forbidden: may not be specified for non-apply patch" in err["message"]
    status, err = call("PATCH", f"{BASE}/configmaps/one?fieldManager=tool",
                       "apiVersion: v1\nkind: Secret\nmetadata: {name: one}\n", content_type=APPLY)
    assert status == 400
    status, err = call("PATCH", f"{BASE}/configmaps/one?fieldManager=tool&fieldValidation=Strict",
                       "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\nbogus: 1\n", content_type=APPLY)
    assert status == 400 and 'unknown field "bogus"' in err["message"]
    status, err = call("PATCH", "/apis/apps/v1/namespaces/default/deployments/d?fieldManager=tool",
                       yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                                       "spec": {"template": {"spec": {"containers": [{"image": "i"}]}}}}),
                       content_type=APPLY)
    # a list item without its key: the client's error, not the server's
    assert status == 400 and 'omits key field "name"' in err["message"]


def test_conflict_is_409_with_a_cause_per_field(call):
    call("PATCH", f"{BASE}/configmaps/two?fieldManager=first", _cm("two", a="1", b="1"), content_type=APPLY)
    status, err = call("PATCH", f"{BASE}/configmaps/two?fieldManager=second", _cm("two", a="2", b="2"),
                       content_type=APPLY)
    assert status == 409 and err["reason"] == "Conflict" and err["kind"] == "Status"
    assert err["message"] == 'Apply failed with 2 conflicts: conflicts with "first":\n- .data.a\n- .data.b'
    assert err["details"]["causes"] == [
        {"reason": "FieldManagerConflict", "message": 'conflict with "first"', "field": ".data.a"},
        {"reason": "FieldManagerConflict", "message": 'conflict with "first"', "field": ".data.b"}]
    status, obj = call("PATCH", f"{BASE}/configmaps/two?fieldManager=second&force=true",
                       _cm("two", a="2"), content_type=APPLY)
    assert status == 200 and obj["data"] == {"a": "2", "b": "1"}
    entries = _entries(obj)
    assert entries[("first", "Apply", "")]["fieldsV1"] == {"f:data": {"f:b": {}}}
    assert entries[("second", "Apply", "")]["fieldsV1"] == {"f:data": {"f:a": {}}}


def test_updates_record_their_manager(call):
    status, obj = call("POST", f"{BASE}/configmaps?fieldManager=maker",
                       {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "three"}, "data": {"a": "1"}})
    assert status == 201
    assert _entries(obj)[("maker", "Update", "")]["fieldsV1"] == {"f:data": {".": {}, "f:a": {}}}
    # no fieldManager: the User-Agent's product names the manager
    obj["data"]["b"] = "2"
    status, obj = call("PUT", f"{BASE}/configmaps/three", obj, user_agent="my-tool/2.1 (linux)")
    assert status == 200
    assert _entries(obj)[("my-tool", "Update", "")]["fieldsV1"] == {"f:data": {"f:b": {}}}
    # an update that sends no managedFields keeps them
    del obj["metadata"]["managedFields"]
    obj["data"]["a"] = "9"
    status, obj = call("PUT", f"{BASE}/configmaps/three?fieldManager=maker", obj)
    assert set(_entries(obj)) == {("maker", "Update", ""), ("my-tool", "Update", "")}
    # a status writer owns status only, under the status subresource
    call("POST", f"{BASE}/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                  "spec": {"containers": [{"name": "c", "image": "i"}]}})
    status, pod = call("PATCH", f"{BASE}/pods/p/status?fieldManager=kubelet",
                       {"status": {"phase": "Running"}}, content_type="application/merge-patch+json")
    assert status == 200
    assert _entries(pod)[("kubelet", "Update", "status")]["fieldsV1"] == {"f:status": {"f:phase": {}}}


def test_apply_through_the_status_subresource(call):
    pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: sp}\nspec: {containers: [{name: c, image: i}]}\n"
    assert call("PATCH", f"{BASE}/pods/sp/status?fieldManager=kubelet", pod + "status: {phase: Running}\n",
                content_type=APPLY)[0] == 404  # no create through status
    assert call("PATCH", f"{BASE}/pods/sp?fieldManager=tool", pod + "status: {phase: Running}\n",
                content_type=APPLY)[0] == 201
    status, obj = call("PATCH", f"{BASE}/pods/sp/status?fieldManager=kubelet",
                       pod.replace("image: i", "image: other") + "status: {phase: Running}\n", content_type=APPLY)
    # the main resource's apply left status alone; the status apply changes status only
    assert status == 200 and obj["status"]["phase"] == "Running"
    assert obj["spec"]["containers"][0]["image"] == "i"
    entries = _entries(obj)
    assert entries[("kubelet", "Apply", "status")]["fieldsV1"] == {"f:status": {"f:phase": {}}}
    assert "f:status" not in entries[("tool", "Apply", "")]["fieldsV1"]


def test_dry_run_goes_through_the_registry(call):
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dry"},
           "spec": {"ports": [{"port": 80}]}}
    status, planned = call("POST", f"{BASE}/services?dryRun=All", svc)
    # defaults and the ClusterIP allocation happen, as the real create would...
    assert status == 201 and planned["spec"]["clusterIP"] and planned["spec"]["type"] == "ClusterIP"
    assert call("GET", f"{BASE}/services/dry")[0] == 404
    # ...and the address is not kept: a real create may ask for it
    svc["spec"]["clusterIP"] = planned["spec"]["clusterIP"]
    assert call("POST", f"{BASE}/services", svc)[0] == 201
    status, cm = call("POST", f"{BASE}/configmaps", {"apiVersion": "v1", "kind": "ConfigMap",
                                                     "metadata": {"name": "keep"}, "data": {"a": "1"}})
    rv = cm["metadata"]["resourceVersion"]
    # validation runs: an invalid update is refused as it would be
    bad = json.loads(json.dumps(cm))
    bad["metadata"]["name"] = "keep"
    bad["data"] = {"not a key!": "x"}
    assert call("PUT", f"{BASE}/configmaps/keep?dryRun=All", bad)[0] == 422
    cm["data"] = {"a": "2"}
    status, seen = call("PUT", f"{BASE}/configmaps/keep?dryRun=All", cm)
    assert status == 200 and seen["data"] == {"a": "2"}
    status, seen = call("PATCH", f"{BASE}/configmaps/keep?dryRun=All", {"data": {"a": "3"}},
                        content_type="application/merge-patch+json")
    assert status == 200 and seen["data"] == {"a": "3"}
    # (the creator owns data.a: forced)
    status, seen = call("PATCH", f"{BASE}/configmaps/keep?dryRun=All&fieldManager=x&force=true", _cm("keep", a="4"),
                        content_type=APPLY)
    assert status == 200 and seen["data"] == {"a": "4"}
    status, gone = call("DELETE", f"{BASE}/configmaps/keep?dryRun=All")
    assert status == 200 and gone["status"] == "Success"
    status, listed = call("DELETE", f"{BASE}/configmaps?dryRun=All&fieldSelector=metadata.name%3Dkeep")
    assert status == 200 and [i["metadata"]["name"] for i in listed["items"]] == ["keep"]
    status, stored = call("GET", f"{BASE}/configmaps/keep")
    assert stored["data"] == {"a": "1"} and stored["metadata"]["resourceVersion"] == rv


def test_python_client_server_side_apply(plane):
    kubernetes = pytest.importorskip(
        "kubernetes", reason="the official Python client is not installed: pip install kubernetes==32.0.1")
    from kubernetes import client as k8s
    from kubernetes import dynamic

    conf = k8s.Configuration()
    conf.host = f"http://127.0.0.1:{plane.port}"
    with k8s.ApiClient(conf) as c:
        configmaps = dynamic.DynamicClient(c).resources.get(api_version="v1", kind="ConfigMap")
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py", "namespace": "default"},
                "data": {"k": "v"}}
        made = configmaps.server_side_apply(body=body, name="py", namespace="default", field_manager="py-tool")
        assert made.data.k == "v" and made.metadata.managedFields[0].manager == "py-tool"
        body["data"]["k"] = "w"
        with pytest.raises(kubernetes.client.exceptions.ApiException) as e:
            configmaps.server_side_apply(body=body, name="py", namespace="default", field_manager="other")
        assert e.value.status == 409
        forced = configmaps.server_side_apply(body=body, name="py", namespace="default", field_manager="other",
                                              force_conflicts=True)
        assert forced.data.k == "w"


def test_grpc_apply_dry_run_and_managers(plane):
    """The gRPC API's Patch applies too (apply_patch), and its writes record a manager when
    they name one; the REST API sees the same managedFields."""
    from apiserver.client import Client
    from apiserver.errors import ApiError

    with Client(plane.endpoint, timeout=10) as client:
        made = client.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "g"},
                             "data": {"a": "1"}}, field_manager="grpc-tool")
        assert [(e.manager, e.operation) for e in made.metadata.managed_fields] == [("grpc-tool", "Apply")]
        with pytest.raises(ApiError) as e:
            client.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: g}\ndata: {a: '2'}\n",
                         field_manager="other")
        assert e.value.reason == "Conflict" and e.value.causes[0][0] == ".data.a"
        with pytest.raises(ApiError) as e:
            client.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "g"}}, field_manager="")
        assert e.value.reason == "Invalid"
        client.patch("configmap", "g", {"data": {"b": "2"}})  # no manager: ownership unchanged
        dry = client.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "g"},
                            "data": {"a": "3"}}, field_manager="other", force=True, dry_run=True)
        assert dry.data["a"] == "3"
        stored = client.get("configmap", "g")
        assert dict(stored.data) == {"a": "1", "b": "2"}
        assert [(e.manager, e.operation) for e in stored.metadata.managed_fields] == [("grpc-tool", "Apply")]
