"""kubectl 1.32's server-side apply, managedFields and server dry runs against the
apiserver's REST API (issue 21), in test_kubectl.py's style: the expected outputs
are what kubectl prints against kube-apiserver 1.32, the comments say which upstream
behaviour each rests on. Times, uids and resourceVersions are never compared.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from harness.plane import apiserver_on_etcdlite

from apiserver.rest.kubeconfig import write_kubeconfig
from tests.test_kubectl import KUBECTL, RUN_TIMEOUT

pytestmark = pytest.mark.process

CONF = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: conf
  namespace: ssa
  labels: {team: a, tier: config}
data:
  mode: fast
  size: "3"
"""

APP = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  namespace: ssa
spec:
  replicas: 2
  selector:
    matchLabels: {app: app}
  template:
    metadata:
      labels: {app: app}
    spec:
      containers:
      - name: main
        image: nginx:1.27
        ports:
        - containerPort: 80
"""

SIDECAR = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  namespace: ssa
spec:
  template:
    spec:
      containers:
      - name: sidecar
        image: busybox:1
"""


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "kubectl-apply") as api:
        home = tmp_path_factory.mktemp("kubectl-apply-home")
        config = Path(write_kubeconfig(str(home / "kubeconfig"), f"http://127.0.0.1:{api.port}",
                                       namespace="ssa"))
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "KUBECONFIG": str(config)}

        def run(*args, stdin: str | None = None, ok: bool = True, editor: str = ""):
            proc = subprocess.run([KUBECTL, "--kubeconfig", str(config), "--cache-dir", str(home / "cache"), *args],
                                  input=stdin, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                                  env={**env, "KUBE_EDITOR": editor} if editor else env)
            if ok:
                assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
            else:
                assert proc.returncode != 0, f"kubectl {' '.join(args)} should fail: {proc.stdout}"
            return proc

        run("create", "namespace", "ssa")
        yield run


def managed(kubectl, *what) -> dict:
    """(manager, operation, subresource) -> fieldsV1 of the object's managedFields."""
    obj = yaml.safe_load(kubectl("get", *what, "-o", "yaml", "--show-managed-fields").stdout)
    return {(e["manager"], e["operation"], e.get("subresource", "")): e["fieldsV1"]
            for e in obj["metadata"]["managedFields"]}


def test_apply_creates_then_updates(kubectl):
    # upstream kubectl prints "serverside-applied" for every server-side apply
    assert kubectl("apply", "--server-side", "-f", "-", stdin=CONF).stdout.strip() == \
        "configmap/conf serverside-applied"
    # managedFields are hidden unless asked for (kubectl strips them client-side)
    assert "managedFields" not in kubectl("get", "cm", "conf", "-o", "yaml").stdout
    # kubectl's --field-manager defaults to "kubectl" for server-side apply
    assert managed(kubectl, "cm", "conf") == {("kubectl", "Apply", ""): {
        "f:data": {"f:mode": {}, "f:size": {}},
        "f:metadata": {"f:labels": {"f:team": {}, "f:tier": {}}}}}
    again = kubectl("apply", "--server-side", "-f", "-", stdin=CONF.replace("fast", "slow"))
    assert again.stdout.strip() == "configmap/conf serverside-applied"
    assert kubectl("get", "cm", "conf", "-o", "jsonpath={.data.mode}").stdout == "slow"


def test_conflict_then_force(kubectl):
    # kubectl patch names its manager "kubectl-patch"; the field is then its
    kubectl("patch", "cm", "conf", "--type", "merge", "-p", '{"data":{"mode":"medium"}}')
    fields = managed(kubectl, "cm", "conf")
    assert fields[("kubectl-patch", "Update", "")] == {"f:data": {"f:mode": {}}}
    assert fields[("kubectl", "Apply", "")]["f:data"] == {"f:size": {}}
    # applying another value of a field someone else owns: 409 Conflict, the message of
    # k8s.io/apiserver's fieldmanager (manager identity, apiVersion, path), and kubectl's advice
    err = kubectl("apply", "--server-side", "-f", "-", stdin=CONF, ok=False).stderr
    assert err.startswith('error: Apply failed with 1 conflict: conflict with "kubectl-patch" using v1: .data.mode\n')
    assert "--force-conflicts" in err
    assert kubectl("get", "cm", "conf", "-o", "jsonpath={.data.mode}").stdout == "medium"
    # co-owning: applying the value the field already has is no conflict
    out = kubectl("apply", "--server-side", "-f", "-", stdin=CONF.replace("fast", "medium")).stdout.strip()
    assert out == "configmap/conf serverside-applied"
    out = kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=CONF).stdout.strip()
    assert out == "configmap/conf serverside-applied"
    assert kubectl("get", "cm", "conf", "-o", "jsonpath={.data.mode}").stdout == "fast"
    # forcing takes the field: kubectl-patch owned nothing else, so its entry goes
    assert set(managed(kubectl, "cm", "conf")) == {("kubectl", "Apply", "")}


def test_fields_no_longer_applied_are_removed(kubectl):
    shrunk = CONF.replace("labels: {team: a, tier: config}", "labels: {team: a}").replace('  size: "3"\n', "")
    kubectl("apply", "--server-side", "-f", "-", stdin=shrunk)
    obj = json.loads(kubectl("get", "cm", "conf", "-o", "json").stdout)
    assert obj["metadata"]["labels"] == {"team": "a"} and obj["data"] == {"mode": "fast"}
    # a field another manager also owns stays when the applier lets go of it
    kubectl("label", "cm", "conf", "owner=ops")
    kubectl("apply", "--server-side", "--field-manager=second", "-f", "-",
            stdin=shrunk.replace("labels: {team: a}", "labels: {team: a, owner: ops}"))
    kubectl("apply", "--server-side", "--field-manager=second", "-f", "-", stdin=shrunk)
    assert json.loads(kubectl("get", "cm", "conf", "-o", "jsonpath={.metadata.labels}").stdout) == \
        {"team": "a", "owner": "ops"}


def test_lists_merge_by_key(kubectl):
    """Two appliers of one Deployment's containers: the list is associative by name
    (+listType=map), so each owns its own item."""
    kubectl("apply", "--server-side", "-f", "-", stdin=APP)
    kubectl("apply", "--server-side", "--field-manager=mesh", "-f", "-", stdin=SIDECAR)
    containers = json.loads(kubectl("get", "deploy", "app", "-o", "jsonpath={.spec.template.spec.containers}").stdout)
    assert [(c["name"], c["image"]) for c in containers] == [("main", "nginx:1.27"), ("sidecar", "busybox:1")]
    fields = managed(kubectl, "deploy", "app")
    mesh = fields[("mesh", "Apply", "")]["f:spec"]["f:template"]["f:spec"]["f:containers"]
    assert mesh == {'k:{"name":"sidecar"}': {".": {}, "f:image": {}, "f:name": {}}}
    mine = fields[("kubectl", "Apply", "")]["f:spec"]
    assert mine["f:replicas"] == {} and mine["f:selector"] == {}  # LabelSelector is atomic
    ports = mine["f:template"]["f:spec"]["f:containers"]['k:{"name":"main"}']["f:ports"]
    # container ports are keyed by containerPort and protocol, protocol defaulting to TCP
    assert ports == {'k:{"containerPort":80,"protocol":"TCP"}': {".": {}, "f:containerPort": {}}}
    # the sidecar's manager lets go of its item: it goes; main stays
    kubectl("apply", "--server-side", "--field-manager=mesh", "-f", "-",
            stdin=SIDECAR.replace("      containers:\n      - name: sidecar\n        image: busybox:1\n",
                                  "      containers: []\n"))
    containers = json.loads(kubectl("get", "deploy", "app", "-o", "jsonpath={.spec.template.spec.containers}").stdout)
    assert [c["name"] for c in containers] == ["main"]


def test_scale_is_an_update_through_the_scale_subresource(kubectl):
    kubectl("scale", "deploy/app", "--replicas=4")
    fields = managed(kubectl, "deploy", "app")
    # kubectl scale names no manager: the default is the User-Agent's product, "kubectl"
    assert fields[("kubectl", "Update", "scale")] == {"f:spec": {"f:replicas": {}}}
    err = kubectl("apply", "--server-side", "-f", "-", stdin=APP, ok=False).stderr
    assert err.startswith('error: Apply failed with 1 conflict: conflict with "kubectl" with subresource '
                          '"scale" using apps/v1: .spec.replicas\n')


def test_client_side_apply_and_create_record_their_managers(kubectl):
    kubectl("apply", "-f", "-", stdin=CONF.replace("name: conf", "name: csa"))
    assert set(managed(kubectl, "cm", "csa")) == {("kubectl-client-side-apply", "Update", "")}
    # moving to server-side apply: the server lets manager "kubectl" take the fields whose
    # values are still those of the last-applied-configuration (upstream's lastAppliedManager);
    # kubectl then writes that annotation as "kubectl-last-applied" and hands the client-side
    # manager's remaining fields to itself (csaupgrade, a JSON patch of managedFields)
    out = kubectl("apply", "--server-side", "-f", "-", stdin=CONF.replace("name: conf", "name: csa")
                  .replace("fast", "slow")).stdout.strip()
    assert out == "configmap/csa serverside-applied"
    assert set(managed(kubectl, "cm", "csa")) == {("kubectl", "Apply", ""), ("kubectl-last-applied", "Apply", "")}
    assert kubectl("get", "cm", "csa", "-o", "jsonpath={.data.mode}").stdout == "slow"
    kubectl("create", "configmap", "made", "--from-literal=a=b")
    assert managed(kubectl, "cm", "made") == {("kubectl-create", "Update", ""): {"f:data": {".": {}, "f:a": {}}}}
    # kubectl edit patches as "kubectl-edit" (here the editor is sed)
    out = kubectl("edit", "cm", "made", editor="sed -i -e 's/^  a: b$/  a: edited/'").stdout.strip()
    assert out == "configmap/made edited"
    assert kubectl("get", "cm", "made", "-o", "jsonpath={.data.a}").stdout == "edited"
    # the changed field moves to kubectl-edit; the creator keeps the map itself (it added it)
    assert managed(kubectl, "cm", "made") == {("kubectl-edit", "Update", ""): {"f:data": {"f:a": {}}},
                                              ("kubectl-create", "Update", ""): {"f:data": {}}}
    # what kube-apiserver 1.32 records for `kubectl create deployment`: the fields sent and the
    # ones defaulted; "." on what the update added itself (maps, list items, pointer structs),
    # none on value structs (strategy, template) nor on containers (null in Go's empty object)
    kubectl("create", "deployment", "made", "--image=nginx")
    labels = {"f:labels": {".": {}, "f:app": {}}}
    assert managed(kubectl, "deploy", "made") == {("kubectl-create", "Update", ""): {
        "f:metadata": labels,
        "f:spec": {
            "f:progressDeadlineSeconds": {}, "f:replicas": {}, "f:revisionHistoryLimit": {}, "f:selector": {},
            "f:strategy": {"f:rollingUpdate": {".": {}, "f:maxSurge": {}, "f:maxUnavailable": {}}, "f:type": {}},
            "f:template": {"f:metadata": labels, "f:spec": {
                "f:containers": {'k:{"name":"nginx"}': {
                    ".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {}, "f:resources": {},
                    "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}}},
                "f:dnsPolicy": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:securityContext": {},
                "f:terminationGracePeriodSeconds": {}}}}}}


def test_server_dry_run(kubectl):
    # upstream: a server dry run goes through validation and defaults, and stores nothing
    out = kubectl("create", "configmap", "ghost", "--from-literal=a=b", "--dry-run=server").stdout.strip()
    assert out == "configmap/ghost created (server dry run)"
    kubectl("get", "cm", "ghost", ok=False)
    out = kubectl("apply", "--server-side", "--dry-run=server", "-f", "-",
                  stdin=CONF.replace("name: conf", "name: ghost")).stdout.strip()
    assert out == "configmap/ghost serverside-applied (server dry run)"
    kubectl("get", "cm", "ghost", ok=False)
    # validation runs (kubectl makes no container of an empty --image)
    err = kubectl("create", "deployment", "bad", "--image=", "--dry-run=server", ok=False).stderr
    assert err.strip() == ('error: failed to create deployment: Deployment "bad" is invalid: '
                           'spec.template.spec.containers: Required value')
    assert kubectl("delete", "cm", "conf", "--dry-run=server").stdout.strip() == \
        'configmap "conf" deleted (server dry run)'
    kubectl("get", "cm", "conf")
    out = kubectl("label", "cm", "conf", "dry=run", "--dry-run=server").stdout.strip()
    assert out == "configmap/conf labeled (server dry run)"
    assert "dry" not in json.loads(kubectl("get", "cm", "conf", "-o", "jsonpath={.metadata.labels}").stdout)
