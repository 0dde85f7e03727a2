"""The official Python client (`kubernetes` on PyPI, 32.0.1: the 1.32 API) against the
apiserver's REST API: lists with paging, CRUD, each patch type, scale, eviction, watches
resumed from a resourceVersion and the 410 a too-old one gets. Skips where the package is not
installed (it is not a dependency yet: the lead decides)."""

from __future__ import annotations

import threading

import pytest
from harness.plane import apiserver_on_etcdlite

kubernetes = pytest.importorskip(
    "kubernetes", reason="the official Python client is not installed: pip install kubernetes==32.0.1")
from kubernetes import client as k8s  # noqa: E402
from kubernetes import config, watch  # noqa: E402

pytestmark = pytest.mark.process

CACHE_SIZE = 20
NS = "default"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "pyclient", watch_cache_size=CACHE_SIZE) as plane:
        conf = k8s.Configuration()
        conf.host = f"http://127.0.0.1:{plane.port}"
        with k8s.ApiClient(conf) as c:
            yield c


def _cm(name: str, **labels) -> k8s.V1ConfigMap:
    return k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name=name, labels=labels or None), data={"k": "v"})


def test_kubeconfig_is_read(tmp_path, api):
    from apiserver.rest.kubeconfig import write_kubeconfig
    path = write_kubeconfig(str(tmp_path / "kubeconfig"), api.configuration.host)
    conf = k8s.Configuration()
    config.load_kube_config(path, client_configuration=conf)
    assert conf.host == api.configuration.host
    with k8s.ApiClient(conf) as c:
        assert k8s.VersionApi(c).get_code().minor == "32"


def test_crud_and_errors(api):
    v1 = k8s.CoreV1Api(api)
    created = v1.create_namespaced_config_map(NS, _cm("crud"))
    assert created.metadata.uid and created.metadata.resource_version
    with pytest.raises(k8s.ApiException) as e:
        v1.create_namespaced_config_map(NS, _cm("crud"))
    assert e.value.status == 409
    created.data = {"k": "changed"}
    assert v1.replace_namespaced_config_map("crud", NS, created).data == {"k": "changed"}
    v1.delete_namespaced_config_map("crud", NS)
    with pytest.raises(k8s.ApiException) as e:
        v1.read_namespaced_config_map("crud", NS)
    assert e.value.status == 404


def test_list_paging_and_selectors(api):
    v1 = k8s.CoreV1Api(api)
    for i in range(5):
        v1.create_namespaced_config_map(NS, _cm(f"page-{i}", set="paging"))
    names, token = [], None
    while True:
        page = v1.list_namespaced_config_map(NS, label_selector="set=paging", limit=2, _continue=token)
        names += [c.metadata.name for c in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert names == [f"page-{i}" for i in range(5)]


def test_each_patch_type(api):
    apps = k8s.AppsV1Api(api)
    container = k8s.V1Container(name="c", image="busybox:1", env=[k8s.V1EnvVar(name="A", value="1")])
    deploy = k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name="patched"),
        spec=k8s.V1DeploymentSpec(
            replicas=1, selector=k8s.V1LabelSelector(match_labels={"app": "p"}),
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels={"app": "p"}),
                                           spec=k8s.V1PodSpec(containers=[container]))))
    apps.create_namespaced_deployment(NS, deploy)
    # a dict body goes as a strategic merge patch: env merges by name
    out = apps.patch_namespaced_deployment("patched", NS, {"spec": {"template": {"spec": {"containers": [
        {"name": "c", "env": [{"name": "B", "value": "2"}]}]}}}})
    assert [e.name for e in out.spec.template.spec.containers[0].env] == ["A", "B"]
    # a list body goes as a JSON patch
    out = apps.patch_namespaced_deployment("patched", NS, [{"op": "replace", "path": "/spec/replicas", "value": 2}])
    assert out.spec.replicas == 2
    # (32.0.1 cannot choose merge patch for a dict: tests/test_rest_api.py covers it)
    scale = apps.patch_namespaced_deployment_scale("patched", NS, {"spec": {"replicas": 4}})
    assert scale.spec.replicas == 4 and apps.read_namespaced_deployment("patched", NS).spec.replicas == 4


def test_eviction(api):
    v1 = k8s.CoreV1Api(api)
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="evicted"),
                    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="c", image="busybox:1")]))
    v1.create_namespaced_pod(NS, pod)
    v1.create_namespaced_pod_eviction("evicted", NS, k8s.V1Eviction(metadata=k8s.V1ObjectMeta(name="evicted")))
    with pytest.raises(k8s.ApiException) as e:
        v1.read_namespaced_pod("evicted", NS)
    assert e.value.status == 404


def test_watch_resumes_from_a_resource_version(api):
    v1 = k8s.CoreV1Api(api)
    listed = v1.list_namespaced_config_map(NS, label_selector="w=1")
    rv = listed.metadata.resource_version
    for name in ("w-a", "w-b"):
        v1.create_namespaced_config_map(NS, _cm(name, w="1"))
    seen = []
    for event in watch.Watch().stream(v1.list_namespaced_config_map, NS, label_selector="w=1",
                                      resource_version=rv, timeout_seconds=2):
        seen.append((event["type"], event["object"].metadata.name, event["object"].metadata.resource_version))
        if len(seen) == 2:
            break
    assert [s[:2] for s in seen] == [("ADDED", "w-a"), ("ADDED", "w-b")]
    # resumed from the last event seen: only what came after it
    threading.Timer(0.3, lambda: v1.create_namespaced_config_map(NS, _cm("w-c", w="1"))).start()
    later = []
    for event in watch.Watch().stream(v1.list_namespaced_config_map, NS, label_selector="w=1",
                                      resource_version=seen[-1][2], timeout_seconds=3):
        later.append(event["object"].metadata.name)
        break
    assert later == ["w-c"]


def test_a_too_old_resource_version_is_410(api):
    v1 = k8s.CoreV1Api(api)
    first = v1.create_namespaced_config_map(NS, _cm("aging"))
    for i in range(CACHE_SIZE + 5):
        v1.patch_namespaced_config_map("aging", NS, {"data": {"n": str(i)}})
    with pytest.raises(k8s.ApiException) as e:
        for _ in watch.Watch().stream(v1.list_namespaced_config_map, NS,
                                      resource_version=first.metadata.resource_version, timeout_seconds=3):
            pass
    # the client turns the ERROR event's Status into an ApiException (its reflector relists)
    assert e.value.status == 410


def test_pod_binding_as_a_custom_scheduler_posts_it(api):
    """pods/binding: what kube-scheduler (or a custom scheduler) posts to place a pod."""
    import json
    v1 = k8s.CoreV1Api(api)
    pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="bound"),
                    spec=k8s.V1PodSpec(scheduler_name="my-scheduler",
                                       containers=[k8s.V1Container(name="c", image="busybox:1")]))
    v1.create_namespaced_pod(NS, pod)

    def bind(node, name="bound", kind="Node", **meta):
        body = k8s.V1Binding(metadata=k8s.V1ObjectMeta(name=name, **meta),
                             target=k8s.V1ObjectReference(kind=kind, name=node))
        # the answer is a Status, which this client would read as a Binding: take it raw
        return v1.create_namespaced_pod_binding("bound", NS, body, _preload_content=False)

    with pytest.raises(k8s.ApiException) as e:
        bind("")
    assert e.value.status == 422 and 'target.name: Required value' in json.loads(e.value.body)["message"]
    with pytest.raises(k8s.ApiException) as e:
        bind("node-a", kind="Pod")
    assert e.value.status == 422 and 'target.kind: Unsupported value: "Pod"' in json.loads(e.value.body)["message"]
    with pytest.raises(k8s.ApiException) as e:
        bind("node-a", name="other")
    assert e.value.status == 400
    answer = bind("node-a", annotations={"scheduled-by": "my-scheduler"})
    assert answer.status == 201 and json.loads(answer.data)["status"] == "Success"
    placed = v1.read_namespaced_pod("bound", NS)
    assert placed.spec.node_name == "node-a"
    assert placed.metadata.annotations["scheduled-by"] == "my-scheduler"
    assert [(c.type, c.status) for c in placed.status.conditions if c.type == "PodScheduled"] == [("PodScheduled", "True")]
    with pytest.raises(k8s.ApiException) as e:
        bind("node-b")
    assert e.value.status == 409
    assert json.loads(e.value.body)["message"] == (
        'Operation cannot be fulfilled on pods/binding "bound": pod bound is already assigned to node "node-a"')
