"""kctl as its users run it: a subprocess against a real etcdlite member and
a real apiserver, checked through the typed client. No controllers run, so
the tests play their part by hand where needed (ReplicaSets with revision
annotations, Deployment status for `rollout status`).

The pure parts (durations, the three-way merge, pod and node status, rollout
messages, manifest parsing) are tested directly first.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite
from harness.procs import PYTHON, free_port

from apiserver import manifest
from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import apps_pb2, core_pb2
from controllers.kctl import printers
from controllers.kctl.apply import LAST_APPLIED, three_way_merge
from controllers.kctl.manifests import parse_documents
from controllers.kctl.rollout import parse_duration, status_message
from controllers.kctl.session import CommandError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "controllers" / "kctl" / "examples" / "web.yaml"
RUN_TIMEOUT = 60

SHOP = """
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web, tier: front}
spec:
  replicas: 4
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: nginx
          image: nginx:1.25
          ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
  labels: {tier: db}
data:
  mode: fast
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
stringData:
  password: s3cret
"""


# ---- the pure parts ----

@pytest.mark.parametrize("seconds,text", [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (59, "59s"), (119, "119s"), (120, "2m"),
    (125, "2m5s"), (600, "10m"), (179 * 60, "179m"), (3 * 3600 + 60, "3h1m"), (8 * 3600, "8h"),
    (47 * 3600, "47h"), (50 * 3600, "2d2h"), (8 * 86400, "8d"), (400 * 86400, "400d"),
    (3 * 365 * 86400 + 86400, "3y1d"), (9 * 365 * 86400, "9y"),
])
def test_human_duration_is_kubectls(seconds, text):
    assert printers.human_duration(seconds) == text


def test_three_way_merge_keeps_what_others_set_and_drops_what_the_manifest_dropped():
    live = {"replicas": 5, "paused": True, "selector": {"a": "1"},
            "containers": [{"name": "c", "image": "x", "imagePullPolicy": "Always"}],
            "args": ["a", "b"]}
    last = {"replicas": 3, "paused": True, "containers": [{"name": "c", "image": "x"}],
            "args": ["a", "b"]}
    config = {"replicas": 3, "containers": [{"name": "c", "image": "y"}], "args": ["a"]}
    merged = three_way_merge(live, config, last)
    assert merged == {"replicas": 3, "selector": {"a": "1"}, "args": ["a"],
                      "containers": [{"name": "c", "image": "y", "imagePullPolicy": "Always"}]}
    # a container renamed is a new one: nothing of the old one's defaults comes along
    renamed = three_way_merge(live, {"containers": [{"name": "d", "image": "y"}]}, {})
    assert renamed["containers"] == [{"name": "d", "image": "y"}]
    # no last-applied record: nothing is removed
    assert three_way_merge({"a": 1, "b": 2}, {"a": 3}, None) == {"a": 3, "b": 2}


def _pod(phase="Running", ready=True, waiting="", deleting=False, restarts=0):
    p = core_pb2.Pod()
    p.spec.containers.add(name="a", image="x")
    p.spec.containers.add(name="b", image="x")
    p.status.phase = phase
    for name in ("a", "b"):
        cs = p.status.container_statuses.add(name=name, ready=ready, restart_count=restarts)
        if waiting:
            cs.state.waiting.reason = waiting
        else:
            cs.state.running.started_at = "2024-01-01T00:00:00Z"
    if deleting:
        p.metadata.deletion_timestamp = "2024-01-01T00:00:00Z"
    return p


def test_pod_ready_status_and_restarts_as_kubectl_shows_them():
    assert printers.pod_state(_pod()) == ("2/2", "Running", 0)
    assert printers.pod_state(_pod(ready=False, restarts=2)) == ("0/2", "Running", 4)
    assert printers.pod_state(_pod("Pending", waiting="ContainerCreating")) == ("0/2", "ContainerCreating", 0)
    assert printers.pod_state(_pod(deleting=True))[1] == "Terminating"
    assert printers.pod_state(core_pb2.Pod(status={"phase": "Pending"})) == ("0/0", "Pending", 0)


def test_node_status_column():
    node = core_pb2.Node()
    assert printers.node_status(node) == "Unknown"
    node.status.conditions.add(type="Ready", status="True")
    assert printers.node_status(node) == "Ready"
    node.status.conditions[0].status = "Unknown"
    node.spec.unschedulable = True
    assert printers.node_status(node) == "NotReady,SchedulingDisabled"


def test_go_durations():
    assert parse_duration("0") == 0
    assert parse_duration("90s") == 90
    assert parse_duration("1m30s") == 90
    assert parse_duration("1.5h") == 5400
    assert parse_duration("250ms") == 0.25
    with pytest.raises(CommandError):
        parse_duration("soon")


def _deployment_status(generation=2, observed=2, replicas=10, spec_replicas=10, updated=10,
                       available=10, conditions=()):
    d = apps_pb2.Deployment()
    d.metadata.name = "web"
    d.metadata.generation = generation
    d.spec.replicas = spec_replicas
    d.status.observed_generation = observed
    d.status.replicas = replicas
    d.status.updated_replicas = updated
    d.status.available_replicas = available
    for c in conditions:
        d.status.conditions.add(**c)
    return d


def test_rollout_status_messages_are_kubectls():
    assert status_message(_deployment_status(observed=1)) == (
        "Waiting for deployment spec update to be observed...", False)
    assert status_message(_deployment_status(updated=3, replicas=12)) == (
        'Waiting for deployment "web" rollout to finish: 3 out of 10 new replicas have been updated...', False)
    assert status_message(_deployment_status(replicas=12)) == (
        'Waiting for deployment "web" rollout to finish: 2 old replicas are pending termination...', False)
    assert status_message(_deployment_status(available=2)) == (
        'Waiting for deployment "web" rollout to finish: 2 of 10 updated replicas are available...', False)
    assert status_message(_deployment_status()) == ('deployment "web" successfully rolled out', True)
    with pytest.raises(CommandError, match="exceeded its progress deadline"):
        status_message(_deployment_status(available=2, conditions=[
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]))


def test_manifest_documents_lists_and_timestamps():
    text = """
---
kind: List
apiVersion: v1
items:
  - {apiVersion: v1, kind: ConfigMap, metadata: {name: a, creationTimestamp: 2024-01-01T00:00:00Z}}
  - {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}
---
---
{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
"""
    docs = parse_documents(text, "x.yaml")
    assert [d["metadata"]["name"] for d in docs] == ["a", "b", "c"]
    assert docs[0]["metadata"]["creationTimestamp"] == "2024-01-01T00:00:00Z"  # a string, not a datetime
    with pytest.raises(CommandError, match="error parsing x.yaml"):
        parse_documents("a: [", "x.yaml")


# ---- against a real plane ----

@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "kctl") as api:
        yield api


@pytest.fixture(scope="module")
def client(plane):
    with Client(plane.endpoint, timeout=15) as c:
        yield c


def _argv(server: str, args) -> list[str]:
    return [PYTHON, "-m", "controllers.kctl", "--server", server, *args]


def _env() -> dict:
    env = dict(os.environ)
    env.pop("KCTL_SERVER", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def kctl(plane):
    def run(*args, stdin: str | None = None, ok: bool | None = True, server: str | None = None):
        proc = subprocess.run(_argv(server or plane.endpoint, args), check=False, input=stdin, capture_output=True,
                              text=True, cwd=REPO, env=_env(), timeout=RUN_TIMEOUT)
        if ok is True:
            assert proc.returncode == 0, f"kctl {' '.join(args)}: {proc.stderr}"
        elif ok is False:
            assert proc.returncode == 1, f"kctl {' '.join(args)} should fail: {proc.stdout}"
        return proc
    return run


class Streaming:
    """A long-running kctl (get -w, rollout status) whose output lines are
    collected as they come."""

    def __init__(self, server: str, *args) -> None:
        self.proc = subprocess.Popen(_argv(server, args), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, what: str, timeout: float = 30) -> str:
        def found():
            return next((line for line in list(self.lines) if predicate(line)), None)
        try:
            return wait_until(found, timeout, what=what)
        except AssertionError:
            raise AssertionError(f"{what}; output so far: {self.lines!r}; "
                                 f"stderr: {self._stderr_if_done()}") from None

    def _stderr_if_done(self) -> str:
        return self.proc.stderr.read() if self.proc.poll() is not None else "(running)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)


@pytest.fixture(scope="module")
def shop(kctl):
    out = kctl("apply", "-f", "-", stdin=SHOP).stdout.splitlines()
    assert out == ["namespace/shop created", "deployment.apps/web created", "service/web created",
                   "configmap/settings created", "secret/creds created"]
    return "shop"


@pytest.mark.process
def test_apply_creates_every_document(client, shop):
    d = client.get("deployments", "web", shop)
    assert d.spec.replicas == 4 and d.spec.template.spec.containers[0].image == "nginx:1.25"
    assert dict(d.metadata.labels) == {"app": "web", "tier": "front"}
    assert client.get("services", "web", shop).spec.ports[0].target_port == "8080"
    assert client.get("configmaps", "settings", shop).data["mode"] == "fast"
    secret = client.get("secrets", "creds", shop)
    assert secret.data["password"] == b"s3cret" and not secret.string_data
    # the recorded manifest keeps the keys only: annotations are not encrypted at rest
    recorded = json.loads(secret.metadata.annotations[LAST_APPLIED])
    assert recorded["stringData"] == {"password": ""}


@pytest.mark.process
def test_reapply_is_unchanged_then_configured_keeping_what_others_set(kctl, client, shop):
    again = kctl("apply", "-f", "-", stdin=SHOP).stdout.splitlines()
    assert again == ["namespace/shop unchanged", "deployment.apps/web unchanged",
                     "service/web unchanged", "configmap/settings unchanged", "secret/creds unchanged"]
    rv = client.get("deployments", "web", shop).metadata.resource_version
    # someone else labels the deployment; the manifest drops "tier" and changes the image
    client.patch("deployments", "web", {"metadata": {"labels": {"owner": "ops"}}}, shop)
    changed = SHOP.replace("image: nginx:1.25", "image: nginx:1.26").replace(
        "labels: {app: web, tier: front}", "labels: {app: web}")
    out = kctl("apply", "-f", "-", stdin=changed).stdout.splitlines()
    assert out[1] == "deployment.apps/web configured"
    assert out[2:] == ["service/web unchanged", "configmap/settings unchanged", "secret/creds unchanged"]
    d = client.get("deployments", "web", shop)
    assert d.metadata.resource_version != rv
    assert d.spec.template.spec.containers[0].image == "nginx:1.26"
    assert dict(d.metadata.labels) == {"app": "web", "owner": "ops"}
    # put the manifest back for the tests after this one
    assert kctl("apply", "-f", "-", stdin=SHOP).stdout.splitlines()[1] == "deployment.apps/web configured"


@pytest.mark.process
def test_get_tables(kctl, client, shop):
    lines = kctl("get", "deployments", "-n", shop).stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert lines[0].startswith("NAME   READY   UP-TO-DATE   AVAILABLE   AGE")
    assert lines[1].split()[:4] == ["web", "0/4", "0", "0"]
    svc = kctl("get", "svc", "web", "-n", shop).stdout.splitlines()
    assert svc[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    web_ip = client.get("services", "web", shop).spec.cluster_ip
    assert web_ip.startswith("10.")
    assert svc[1].split()[:5] == ["web", "ClusterIP", web_ip, "<none>", "80/TCP"]
    # the kubernetes Service the apiserver made, headless and NodePort ones, as kubectl prints them
    k = kctl("get", "svc", "kubernetes").stdout.splitlines()[1].split()
    assert k[:5] == ["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP"]
    np = core_pb2.Service(metadata={"name": "np", "namespace": shop})
    np.spec.type = "NodePort"
    np.spec.ports.add(port=80, node_port=30080)
    np.spec.ports.add(name="dns", port=53, protocol="UDP")
    np.spec.ports[0].name = "http"
    np = client.create(np)
    hl = core_pb2.Service(metadata={"name": "hl", "namespace": shop})
    hl.spec.cluster_ip = "None"
    hl.spec.selector["app"] = "web"
    hl.spec.ports.add(port=80)
    client.create(hl)
    ext = core_pb2.Service(metadata={"name": "ext", "namespace": shop})
    ext.spec.type, ext.spec.external_name = "ExternalName", "db.example.com"
    client.create(ext)
    rows = {line.split()[0]: line.split()[:5] for line in kctl("get", "svc", "-n", shop).stdout.splitlines()[1:]}
    assert rows["np"] == ["np", "NodePort", np.spec.cluster_ip, "<none>",
                          f"80:30080/TCP,53:{np.spec.ports[1].node_port}/UDP"]
    assert rows["hl"] == ["hl", "ClusterIP", "None", "<none>", "80/TCP"]
    assert rows["ext"] == ["ext", "ExternalName", "<none>", "db.example.com", "<none>"]
    described = kctl("describe", "svc", "np", "-n", shop).stdout
    assert "IP Family Policy:" in described and "SingleStack" in described and "NodePort:" in described
    for name in ("np", "hl", "ext"):
        client.delete("services", name, shop)
    slices = kctl("get", "endpointslices", "kubernetes").stdout.splitlines()
    assert slices[0].split() == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    assert slices[1].split()[:4] == ["kubernetes", "IPv4", str(client.get("services", "kubernetes").spec.ports[0].target_port), "127.0.0.1"]
    assert kctl("get", "secrets", "-n", shop).stdout.splitlines()[1].split()[:3] == ["creds", "Opaque", "1"]
    # several kinds at once: one table each, names qualified by kind
    both = kctl("get", "deploy,cm", "-n", shop).stdout
    assert "deployment.apps/web" in both and "configmap/settings" in both and "\n\n" in both
    # -A: a NAMESPACE column, namespaces from everywhere
    everywhere = kctl("get", "configmaps", "-A").stdout.splitlines()
    assert everywhere[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any(line.split()[:2] == [shop, "settings"] for line in everywhere[1:])
    assert kctl("get", "namespaces").stdout.splitlines()[0].split() == ["NAME", "STATUS", "AGE"]
    empty = kctl("get", "pods", "-n", shop)
    assert empty.stdout == "" and empty.stderr.strip() == f"No resources found in {shop} namespace."


@pytest.mark.process
def test_get_pods_wide(kctl, client, shop):
    pod = core_pb2.Pod()
    pod.metadata.name = "web-1"
    pod.metadata.namespace = shop
    pod.spec.containers.add(name="nginx", image="nginx:1.25")
    pod.spec.node_name = "node-a"
    pod = client.create(pod)
    pod.status.phase = "Running"
    pod.status.pod_ip = "10.1.0.7"
    pod.status.container_statuses.add(name="nginx", ready=True, restart_count=1).state.running.started_at = \
        "2024-01-01T00:00:00Z"
    client.update_status(pod)
    try:
        lines = kctl("get", "pods", "-n", shop, "-o", "wide").stdout.splitlines()
        assert lines[0].split()[:7] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
        assert lines[1].split()[:4] == ["web-1", "1/1", "Running", "1"]
        assert lines[1].split()[5:7] == ["10.1.0.7", "node-a"]
    finally:
        client.delete("pods", "web-1", shop, grace_period_seconds=0)


@pytest.mark.process
def test_output_yaml_and_json_round_trip(kctl, client, shop):
    as_json = json.loads(kctl("get", "deployment", "web", "-n", shop, "-o", "json").stdout)
    assert as_json == manifest.to_dict(client.get("deployments", "web", shop))
    kinds = ("deploy,svc,cm,secrets", "-n", shop, "-o", "yaml")
    text = kctl("get", *kinds).stdout
    listed = yaml.safe_load(text)
    assert listed["kind"] == "List"
    assert [(i["kind"], i["metadata"]["name"]) for i in listed["items"]] == [
        ("Deployment", "web"), ("Service", "web"), ("ConfigMap", "settings"), ("Secret", "creds")]
    assert base64.b64decode(listed["items"][3]["data"]["password"]) == b"s3cret"
    # what get -o yaml prints applies back cleanly (the recorded manifest
    # grows to the full object), and then is stable
    first = kctl("apply", "-f", "-", stdin=text).stdout.splitlines()
    assert [line.rsplit(" ", 1)[1] in ("configured", "unchanged") for line in first] == [True] * 4
    second = kctl("apply", "-f", "-", stdin=kctl("get", *kinds).stdout).stdout.splitlines()
    assert [line.rsplit(" ", 1)[1] for line in second] == ["unchanged"] * 4
    assert client.get("secrets", "creds", shop).data["password"] == b"s3cret"
    assert kctl("get", "deploy", "-n", shop, "-o", "name").stdout.split() == ["deployment.apps/web"]


@pytest.mark.process
def test_label_and_field_selectors(kctl, client, shop):
    client.create(core_pb2.ConfigMap(metadata={"name": "other", "namespace": shop,
                                               "labels": {"tier": "cache"}}))
    names = kctl("get", "cm", "-n", shop, "-l", "tier=db", "-o", "name").stdout.split()
    assert names == ["configmap/settings"]
    names = kctl("get", "cm", "-n", shop, "-l", "tier in (db,cache)", "-o", "name").stdout.split()
    assert names == ["configmap/other", "configmap/settings"]
    names = kctl("get", "cm", "-n", shop, "--field-selector", "metadata.name=other", "-o", "name").stdout
    assert names.split() == ["configmap/other"]
    kctl("delete", "cm", "other", "-n", shop)


@pytest.mark.process
def test_delete_by_name_and_by_file(kctl, client):
    kctl("apply", "-f", "-", stdin="""
apiVersion: v1
kind: Namespace
metadata: {name: trash}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: a, namespace: trash}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: b, namespace: trash}
""")
    assert kctl("delete", "configmap", "a", "-n", "trash").stdout.strip() == 'configmap "a" deleted'
    with pytest.raises(ApiError):
        client.get("configmaps", "a", "trash")
    doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b, namespace: trash}\n"
    assert kctl("delete", "-f", "-", stdin=doc).stdout.strip() == 'configmap "b" deleted'
    with pytest.raises(ApiError):
        client.get("configmaps", "b", "trash")
    gone = kctl("delete", "-f", "-", stdin=doc, ok=False)
    assert gone.stderr.strip() == ('Error from server (NotFound): error when deleting "-": '
                                   'configmaps "b" not found')
    kctl("delete", "-f", "-", "--ignore-not-found", stdin=doc)
    missing = kctl("delete", "deployment", "nope", "-n", "trash", ok=False)
    assert missing.stderr.strip() == 'Error from server (NotFound): deployments.apps "nope" not found'
    # orphan: the object waits for the garbage collector behind its finalizer
    client.create(core_pb2.ConfigMap(metadata={"name": "c", "namespace": "trash"}))
    kctl("delete", "cm/c", "-n", "trash", "--cascade=orphan")
    assert list(client.get("configmaps", "c", "trash").metadata.finalizers) == ["orphan"]
    assert "invalid cascade" in kctl("delete", "cm", "c", "--cascade=sideways", ok=False).stderr


@pytest.mark.process
def test_scale(kctl, client, shop):
    assert kctl("scale", "deployment/web", "--replicas=7", "-n", shop).stdout.strip() == \
        "deployment.apps/web scaled"
    assert client.get("deployments", "web", shop).spec.replicas == 7
    assert kctl("scale", "deploy", "web", "--replicas", "0", "-n", shop).stdout.strip() == \
        "deployment.apps/web scaled"
    assert client.get("deployments", "web", shop).spec.replicas == 0
    stale = kctl("scale", "deploy/web", "--replicas=2", "--current-replicas=5", "-n", shop, ok=False)
    assert "Expected replicas to be 5, was 0" in stale.stderr
    assert "cannot scale" in kctl("scale", "cm/settings", "--replicas=2", "-n", shop, ok=False).stderr
    kctl("apply", "-f", "-", stdin=SHOP)
    assert client.get("deployments", "web", shop).spec.replicas == 4


@pytest.mark.process
def test_cordon_and_uncordon(kctl, client):
    node = core_pb2.Node()
    node.metadata.name = "node-c"
    node.status.capacity.update({"cpu": "4", "memory": "8Gi", "pods": "110"})
    node.status.conditions.add(type="Ready", status="True")
    node.status.node_info.kubelet_version = "v1.30.0"
    client.create(node)
    assert kctl("cordon", "node-c").stdout.strip() == "node/node-c cordoned"
    assert client.get("nodes", "node-c").spec.unschedulable is True
    assert kctl("cordon", "node-c").stdout.strip() == "node/node-c already cordoned"
    row = kctl("get", "nodes", "node-c").stdout.splitlines()[1].split()
    assert row[:2] == ["node-c", "Ready,SchedulingDisabled"] and row[-1] == "v1.30.0"
    assert kctl("uncordon", "node-c").stdout.strip() == "node/node-c uncordoned"
    assert client.get("nodes", "node-c").spec.unschedulable is False
    kctl("cordon", "ghost", ok=False)


@pytest.mark.process
def test_set_image(kctl, client, shop):
    out = kctl("set", "image", "deployment/web", "nginx=nginx:1.27", "-n", shop).stdout.strip()
    assert out == "deployment.apps/web image updated"
    assert client.get("deployments", "web", shop).spec.template.spec.containers[0].image == "nginx:1.27"
    bad = kctl("set", "image", "deployment/web", "sidecar=busybox", "-n", shop, ok=False)
    assert bad.stderr.strip() == 'error: unable to find container named "sidecar"'
    kctl("apply", "-f", "-", stdin=SHOP)


def _replica_set(deployment, revision: int, image: str, cause: str = ""):
    rs = apps_pb2.ReplicaSet()
    h = f"h{revision}"
    rs.metadata.name = f"{deployment.metadata.name}-{h}"
    rs.metadata.namespace = deployment.metadata.namespace
    rs.metadata.labels.update({"app": "hist", "pod-template-hash": h})
    rs.metadata.annotations["deployment.kubernetes.io/revision"] = str(revision)
    if cause:
        rs.metadata.annotations["kubernetes.io/change-cause"] = cause
    rs.metadata.owner_references.add(api_version="apps/v1", kind="Deployment",
                                     name=deployment.metadata.name, uid=deployment.metadata.uid,
                                     controller=True)
    rs.spec.replicas = 0
    rs.spec.selector.match_labels.update({"app": "hist", "pod-template-hash": h})
    rs.spec.template.CopyFrom(deployment.spec.template)
    rs.spec.template.metadata.labels["pod-template-hash"] = h
    rs.spec.template.spec.containers[0].image = image
    return rs


@pytest.mark.process
def test_rollout_history_and_undo(kctl, client, shop):
    d = apps_pb2.Deployment()
    d.metadata.name = "hist"
    d.metadata.namespace = shop
    d.spec.replicas = 2
    d.spec.selector.match_labels["app"] = "hist"
    d.spec.template.metadata.labels["app"] = "hist"
    d.spec.template.spec.containers.add(name="app", image="app:v3")
    d = client.create(d)
    for revision, image in ((1, "app:v1"), (2, "app:v2"), (3, "app:v3")):
        client.create(_replica_set(d, revision, image, cause=f"deploy {image}" if revision > 1 else ""))
    # a ReplicaSet that matches the selector but belongs to no one is not history
    stray = _replica_set(d, 9, "app:stray")
    del stray.metadata.owner_references[:]
    client.create(stray)

    lines = kctl("rollout", "history", "deployment/hist", "-n", shop).stdout.splitlines()
    assert lines[0] == "deployment.apps/hist"
    assert [line.split(None, 1) for line in lines[1:5]] == [
        ["REVISION", "CHANGE-CAUSE"], ["1", "<none>"], ["2", "deploy app:v2"], ["3", "deploy app:v3"]]
    detail = kctl("rollout", "history", "deployment/hist", "--revision=1", "-n", shop).stdout
    assert "with revision #1" in detail and "app:v1" in detail and "pod-template-hash" not in detail

    # undo: the previous revision's template, without the hash label
    assert kctl("rollout", "undo", "deployment/hist", "-n", shop).stdout.strip() == \
        "deployment.apps/hist rolled back"
    d = client.get("deployments", "hist", shop)
    assert d.spec.template.spec.containers[0].image == "app:v2"
    assert dict(d.spec.template.metadata.labels) == {"app": "hist"}
    assert d.metadata.annotations["kubernetes.io/change-cause"] == "deploy app:v2"
    kctl("rollout", "undo", "deployment/hist", "--to-revision=1", "-n", shop)
    assert client.get("deployments", "hist", shop).spec.template.spec.containers[0].image == "app:v1"
    skipped = kctl("rollout", "undo", "deployment/hist", "--to-revision=1", "-n", shop).stdout.strip()
    assert skipped == ("deployment.apps/hist skipped rollback (current template already matches "
                       "revision 1)")
    missing = kctl("rollout", "undo", "deployment/hist", "--to-revision=7", "-n", shop, ok=False)
    assert missing.stderr.strip() == "error: unable to find specified revision 7 in history"

    # pause and resume; a paused deployment is not rolled back
    assert kctl("rollout", "pause", "deployment/hist", "-n", shop).stdout.strip() == \
        "deployment.apps/hist paused"
    assert client.get("deployments", "hist", shop).spec.paused is True
    assert "already paused" in kctl("rollout", "pause", "deployment/hist", "-n", shop, ok=False).stderr
    assert "cannot rollback a paused deployment" in kctl(
        "rollout", "undo", "deployment/hist", "-n", shop, ok=False).stderr
    assert kctl("rollout", "resume", "deployment/hist", "-n", shop).stdout.strip() == \
        "deployment.apps/hist resumed"
    assert client.get("deployments", "hist", shop).spec.paused is False


def _passes(check):
    """check()'s value, or None when it raised AssertionError."""
    try:
        return check()
    except AssertionError:
        return None


def _set_status(client, name, namespace, **fields):
    d = client.get("deployments", name, namespace)
    for key, value in fields.items():
        setattr(d.status, key, value)
    return client.update_status(d)


@pytest.mark.process
def test_rollout_status_follows_the_deployment(plane, kctl, client, shop):
    d = apps_pb2.Deployment()
    d.metadata.name = "roll"
    d.metadata.namespace = shop
    d.spec.replicas = 10
    d.spec.selector.match_labels["app"] = "roll"
    d.spec.template.metadata.labels["app"] = "roll"
    d.spec.template.spec.containers.add(name="app", image="app:v1")
    d = client.create(d)
    once = kctl("rollout", "status", "deployment/roll", "-n", shop, "--watch=false").stdout.strip()
    assert once == "Waiting for deployment spec update to be observed..."
    watcher = Streaming(plane.endpoint, "rollout", "status", "deployment/roll", "-n", shop,
                        "--timeout=60s")
    try:
        watcher.wait_for(lambda line: "spec update to be observed" in line, "the first status line")
        _set_status(client, "roll", shop, observed_generation=d.metadata.generation, replicas=10,
                    updated_replicas=10, available_replicas=2, ready_replicas=2)
        watcher.wait_for(lambda line: line == 'Waiting for deployment "roll" rollout to finish: '
                                              '2 of 10 updated replicas are available...',
                         "the availability line")
        _set_status(client, "roll", shop, available_replicas=10, ready_replicas=10)
        watcher.wait_for(lambda line: line == 'deployment "roll" successfully rolled out', "the end")
        assert watcher.proc.wait(timeout=30) == 0
    finally:
        watcher.stop()
    # a rollout that does not finish in time
    _set_status(client, "roll", shop, available_replicas=3)
    late = kctl("rollout", "status", "deployment/roll", "-n", shop, "--timeout=1s", ok=False)
    assert late.stderr.strip() == "error: timed out waiting for the condition"
    assert "3 of 10 updated replicas are available" in late.stdout


@pytest.mark.process
def test_get_watch_prints_a_row_per_change(plane, kctl, client, shop):
    watcher = Streaming(plane.endpoint, "get", "deployments", "-n", shop, "-w")
    try:
        watcher.wait_for(lambda line: line.split()[:2] == ["web", "0/4"], "the listed row")
        client.patch("deployments", "web", {"spec": {"replicas": 6}}, shop)
        watcher.wait_for(lambda line: line.split()[:2] == ["web", "0/6"], "the row after scaling")
        assert watcher.lines[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        assert sum(1 for line in watcher.lines if line.startswith("NAME")) == 1
    finally:
        watcher.stop()
    only = Streaming(plane.endpoint, "get", "configmap", "settings", "-n", shop, "--watch-only",
                     "--output-watch-events")
    try:
        # nothing is listed first; a change then prints the header and its row (changes
        # go on until one arrives: the watch may start after the first)
        changes = iter(range(1000))

        def modified_row():
            client.patch("configmaps", "settings", {"data": {"mode": f"slow-{next(changes)}"}}, shop)
            return only.wait_for(lambda line: line.startswith("MODIFIED"), "the modified row", timeout=1)
        row = wait_until(lambda: _passes(modified_row), 30, interval=0, what="a MODIFIED row")
        assert row.split()[:3] == ["MODIFIED", "settings", "1"]
        assert only.lines[0].split()[:2] == ["EVENT", "NAME"]
    finally:
        only.stop()
    kctl("apply", "-f", "-", stdin=SHOP)


@pytest.mark.process
def test_describe_shows_conditions_and_events(kctl, client, shop):
    d = client.get("deployments", "web", shop)
    d.status.observed_generation = d.metadata.generation
    d.status.conditions.add(type="Available", status="False", reason="MinimumReplicasUnavailable",
                            message="Deployment does not have minimum availability.")
    client.update_status(d)
    ev = core_pb2.Event()
    ev.metadata.name = "web.1"
    ev.metadata.namespace = shop
    ev.involved_object.CopyFrom(type(ev.involved_object)(
        kind="Deployment", namespace=shop, name="web", uid=d.metadata.uid, api_version="apps/v1"))
    ev.reason = "ScalingReplicaSet"
    ev.message = "Scaled up replica set web-abc to 4"
    ev.type = "Normal"
    ev.source.component = "deployment-controller"
    ev.count = 1
    client.create(ev)
    other = core_pb2.Event()
    other.CopyFrom(ev)
    other.metadata.name = "web.2"
    other.involved_object.uid = "someone-else"
    other.message = "about an older object of the same name"
    client.create(other)
    anonymous = core_pb2.Event()
    anonymous.CopyFrom(ev)
    anonymous.metadata.name = "web.3"
    anonymous.involved_object.uid = ""
    anonymous.message = "recorded without a uid"
    client.create(anonymous)
    text = kctl("describe", "deployment", "web", "-n", shop).stdout
    assert "Name:" in text and "Namespace:" in text
    assert "4 desired | 0 updated | 0 total | 0 available | 0 unavailable" in text
    assert "MinimumReplicasUnavailable" in text
    assert "Scaled up replica set web-abc to 4" in text and "deployment-controller" in text
    assert "about an older object" not in text and "recorded without a uid" in text
    assert "Image:" in text and "nginx:1.25" in text
    secret = kctl("describe", "secret", "creds", "-n", shop).stdout
    assert "password:" in secret and "6 bytes" in secret and "s3cret" not in secret


@pytest.mark.process
def test_errors_and_exit_codes(kctl, shop):
    unknown = kctl("get", "widgets", ok=False)
    assert unknown.stderr.strip() == 'error: the server doesn\'t have a resource type "widgets"'
    missing = kctl("get", "deployment", "nope", "-n", shop, ok=False)
    assert missing.stdout == ""
    assert missing.stderr.strip() == 'Error from server (NotFound): deployments.apps "nope" not found'
    strict = kctl("apply", "-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
                                             "spec: {}\n", ok=False)
    assert 'unknown field "spec"' in strict.stderr
    invalid = kctl("apply", "-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n",
                   ok=False)
    assert invalid.stderr.startswith('The ConfigMap "Bad_Name" is invalid: metadata.name')
    mismatch = kctl("apply", "-n", "default", "-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\n"
                                                              f"metadata: {{name: x, namespace: {shop}}}\n",
                    ok=False)
    assert f"You must pass '--namespace={shop}'" in mismatch.stderr
    no_ns = kctl("apply", "-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\n"
                                           "metadata: {name: x, namespace: nowhere}\n", ok=False)
    assert no_ns.stderr.strip() == ('Error from server (NotFound): error when applying "-": '
                                    'namespaces "nowhere" not found')
    exists = kctl("create", "-f", "-", stdin="apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
                  ok=False)
    assert exists.stderr.strip() == ('Error from server (AlreadyExists): error when creating "-": '
                                     'namespaces "shop" already exists')
    assert "does not exist" in kctl("apply", "-f", "/no/such/file.yaml", ok=False).stderr
    assert kctl("get", ok=False).stderr.startswith("error: You must specify the type of resource")
    assert kctl("frobnicate", ok=False).returncode == 1


@pytest.mark.process
def test_unreachable_server_gives_a_hint(kctl):
    server = f"127.0.0.1:{free_port()}"
    proc = kctl("get", "pods", server=server, ok=False)
    assert proc.stderr.strip().startswith(f"error: cannot reach the apiserver at {server}: "
                                          "is `make run` running? use --server")
    env = _env()
    env["KCTL_SERVER"] = server
    by_env = subprocess.run([PYTHON, "-m", "controllers.kctl", "version"], check=False, capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=RUN_TIMEOUT)
    assert by_env.returncode == 1 and f"at {server}" in by_env.stderr
    assert "Client Version: kctl" in by_env.stdout


@pytest.mark.process
def test_example_manifest_applies(kctl, client):
    client.create(core_pb2.Namespace(metadata={"name": "example"}))
    out = kctl("apply", "-n", "example", "-f", str(EXAMPLE)).stdout.splitlines()
    assert out == ["deployment.apps/web created", "service/web created"]
    d = client.get("deployments", "web", "example")
    assert d.spec.replicas == 6
    assert d.spec.strategy.type == "RollingUpdate"
    assert (d.spec.strategy.rolling_update.max_surge, d.spec.strategy.rolling_update.max_unavailable) == \
        ("25%", "25%")
    [c] = d.spec.template.spec.containers
    assert c.image == "busybox" and dict(c.resources.requests) == {"cpu": "50m", "memory": "16Mi"}
    assert c.command[-1].endswith("exec httpd -f -v -p 80 -h /www") and c.readiness_probe.http_get.port == "80"
    assert dict(client.get("services", "web", "example").spec.selector) == {"app": "web"}
    again = kctl("apply", "-n", "example", "-f", str(EXAMPLE)).stdout.splitlines()
    assert again == ["deployment.apps/web unchanged", "service/web unchanged"]
