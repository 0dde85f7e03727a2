"""Persistent storage end to end on real nodes: etcdlite, the apiserver, the
controller-manager (with the directory provisioner over a storage area in this
module's tmp dir) and the scheduler as processes, and two real nodes. A pod
writes to its claim, is deleted, and a pod on the other node reads the same
bytes (read-only); the claim outlives nothing it should (pvc-protection holds it
while a pod uses it) and, with reclaim Delete, its directory goes with it; a
static volume with Retain stays Released with its data; a claim nothing can
satisfy stays Pending with an event saying why and its pod stays unschedulable
with Kubernetes' message; a `local` volume keeps every pod of its claim on its
node. Needs root, runc, conmon, busybox-static."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from harness.etcd_client import wait_until
from harness.nodes import need_runtime, real_nodes
from harness.plane import start_apiserver, start_component
from harness.procs import Registry

pytestmark = pytest.mark.process

NS = "default"
TIMEOUT = 60


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    need_runtime()
    reg = Registry()
    tmp = tmp_path_factory.mktemp("storageplane")
    storage = tmp / "storage"
    try:
        etcd = reg.start_etcdlite(tmp, name="etcd")
        api = start_apiserver(tmp, etcd.url, registry=reg)
        start_component(tmp, "cm", "controllers.manager", api.endpoint, reg, log_level="warning",
                        storage_dir=str(storage))
        start_component(tmp, "scheduler", "controllers.scheduler", api.endpoint, reg, log_level="warning")
        with real_nodes(tmp, api.endpoint, 2) as nodes, Client(api.endpoint, timeout=20) as client:
            names = wait_until(lambda: ready_nodes(client) if len(ready_nodes(client)) == 2 else None,
                               TIMEOUT, what="2 real nodes Ready")
            wait_until(lambda: _exists(client, "storageclasses", "standard", ""), TIMEOUT,
                       what="the provisioner's default StorageClass")
            yield client, sorted(names), storage, tmp, api.endpoint
    finally:
        reg.cleanup()


def ready_nodes(client) -> list[str]:
    return [n.metadata.name for n in client.list("nodes").items
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)]


def _exists(client, kind, name, ns=NS):
    try:
        return client.get(kind, name, ns)
    except ApiError as e:
        if e.reason == "NotFound":
            return None
        raise


def claim(name, size="10Mi", cls: str | None = None, modes=("ReadWriteOnce",)):
    c = core_pb2.PersistentVolumeClaim()
    c.metadata.name, c.metadata.namespace = name, NS
    c.spec.access_modes.extend(modes)
    c.spec.resources.requests["storage"] = size
    if cls is not None:
        c.spec.storage_class_name = cls
    return c


def pod(name, claim_name, script, *, node=None, read_only=False, avoid=None):
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = name, NS
    p.spec.restart_policy = "Never"
    p.spec.termination_grace_period_seconds = 1
    if node:
        p.spec.node_selector["kubernetes.io/hostname"] = node
    if avoid:  # prefer the other node: only a volume's nodeAffinity brings the pod back
        pref = p.spec.affinity.node_affinity.preferred_during_scheduling_ignored_during_execution.add(weight=100)
        pref.preference.match_expressions.add(key="kubernetes.io/hostname", operator="NotIn", values=[avoid])
    p.spec.volumes.add(name="data", persistent_volume_claim=core_pb2.PersistentVolumeClaimVolumeSource(
        claim_name=claim_name, read_only=read_only))
    p.spec.containers.add(name="c", image="busybox", command=["sh", "-c", script],
                          volume_mounts=[core_pb2.VolumeMount(name="data", mount_path="/data")])
    return p


def finished(client, name):
    """The pod once it ended (Succeeded or Failed), else None."""
    p = client.get("pods", name, NS)
    return p if p.status.phase in ("Succeeded", "Failed") else None


def run_to_end(client, p):
    client.create(p)
    try:
        done = wait_until(lambda: finished(client, p.metadata.name), TIMEOUT, what=f"{p.metadata.name} ended")
    except AssertionError as e:
        raise AssertionError(f"{e}; now: {client.get('pods', p.metadata.name, NS).status}") from None
    return done


def delete_pod(client, name):
    client.delete("pods", name, NS)
    wait_until(lambda: _exists(client, "pods", name) is None, TIMEOUT, what=f"pod {name} gone")


def events_of(client, kind, name) -> list[tuple[str, str, str]]:
    return [(e.type, e.reason, e.message) for e in client.list("events", NS).items
            if e.involved_object.kind == kind and e.involved_object.name == name]


def test_data_outlives_its_pod_and_is_read_on_another_node_then_deleted_with_its_claim(plane):
    client, (node_a, node_b), storage, *_ = plane
    token = secrets.token_hex(8)
    client.create(claim("shared"))
    c = client.get("persistentvolumeclaims", "shared", NS)
    assert c.status.phase == "Pending"
    writer = run_to_end(client, pod("writer", "shared", f"echo {token} > /data/msg", node=node_a))
    assert writer.status.phase == "Succeeded" and writer.spec.node_name == node_a
    c = client.get("persistentvolumeclaims", "shared", NS)
    assert (c.spec.storage_class_name, c.status.phase) == ("standard", "Bound"), "the default class, bound"
    assert c.metadata.annotations["volume.kubernetes.io/selected-node"] == node_a
    pv = client.get("persistentvolumes", c.spec.volume_name, "")
    path = pv.spec.host_path.path
    assert path.startswith(str(storage)) and not pv.spec.HasField("node_affinity")
    assert (pv.status.phase, pv.spec.claim_ref.uid) == ("Bound", c.metadata.uid)
    with open(os.path.join(path, "msg")) as f:
        assert f.read().strip() == token
    delete_pod(client, "writer")

    reader = run_to_end(client, pod("reader", "shared", f'test "$(cat /data/msg)" = {token} && ! touch /data/x',
                                    node=node_b, read_only=True))
    assert reader.spec.node_name == node_b
    assert reader.status.phase == "Succeeded", "the same bytes on the other node, and a read-only mount"
    assert not os.path.exists(os.path.join(path, "x"))

    client.delete("persistentvolumeclaims", "shared", NS)
    held = client.get("persistentvolumeclaims", "shared", NS)
    assert held.metadata.deletion_timestamp and "kubernetes.io/pvc-protection" in held.metadata.finalizers, \
        "a claim a pod uses stays until the pod is gone"
    delete_pod(client, "reader")
    wait_until(lambda: _exists(client, "persistentvolumeclaims", "shared") is None, TIMEOUT, what="claim gone")
    wait_until(lambda: not os.path.exists(path), TIMEOUT, what="the Delete volume's directory removed")
    wait_until(lambda: _exists(client, "persistentvolumes", pv.metadata.name, "") is None, TIMEOUT,
               what="the Delete volume's object removed")


def test_a_retained_static_volume_is_released_with_its_data(plane):
    client, (node_a, _), _, tmp, _ = plane
    disk = tmp / "static-disk"
    disk.mkdir()
    disk.chmod(0o777)
    pv = core_pb2.PersistentVolume()
    pv.metadata.name = "static-1"
    pv.spec.capacity["storage"] = "100Mi"
    pv.spec.access_modes.append("ReadWriteOnce")
    pv.spec.host_path.path, pv.spec.host_path.type = str(disk), "Directory"
    client.create(pv)
    assert client.get("persistentvolumes", "static-1", "").spec.persistent_volume_reclaim_policy == "Retain"
    client.create(claim("kept", size="50Mi", cls=""))
    c = wait_until(lambda: (x := client.get("persistentvolumeclaims", "kept", NS)).status.phase == "Bound" and x,
                   TIMEOUT, what="the claim bound at once (no class: Immediate)")
    assert c.spec.volume_name == "static-1" and c.status.capacity["storage"] == "100Mi"
    done = run_to_end(client, pod("keeper", "kept", "echo kept > /data/file", node=node_a))
    assert done.status.phase == "Succeeded"
    delete_pod(client, "keeper")
    client.delete("persistentvolumeclaims", "kept", NS)
    wait_until(lambda: _exists(client, "persistentvolumeclaims", "kept") is None, TIMEOUT, what="claim gone")
    released = wait_until(lambda: (v := client.get("persistentvolumes", "static-1", "")).status.phase == "Released"
                          and v, TIMEOUT, what="the volume Released")
    assert released.spec.claim_ref.name == "kept", "Retain: an administrator decides what becomes of it"
    assert (disk / "file").read_text().strip() == "kept"
    client.delete("persistentvolumes", "static-1", "")
    wait_until(lambda: _exists(client, "persistentvolumes", "static-1", "") is None, TIMEOUT,
               what="a Released volume's deletion goes through (pv-protection lets it)")
    assert (disk / "file").exists()


def test_a_claim_nothing_satisfies_stays_pending_and_its_pod_unschedulable(plane):
    client, nodes, *_ = plane
    client.create(claim("nothing", size="1Ti", cls=""))
    want = ("Normal", "FailedBinding", "no persistent volumes available for this claim and no storage class is set")
    wait_until(lambda: want in events_of(client, "PersistentVolumeClaim", "nothing"), TIMEOUT,
               what="the claim's FailedBinding event")
    client.create(pod("stuck", "nothing", "true"))

    def refused(name):
        p = client.get("pods", name, NS)
        cond = next((c for c in p.status.conditions if c.type == "PodScheduled"), None)
        return cond if cond is not None and cond.reason == "Unschedulable" else None

    cond = wait_until(lambda: refused("stuck"), TIMEOUT, what="stuck unschedulable")
    assert cond.message == f"0/{len(nodes)} nodes are available: pod has unbound immediate PersistentVolumeClaims."
    assert client.get("persistentvolumeclaims", "nothing", NS).status.phase == "Pending"

    from apiserver.pb import storage_pb2
    cls = storage_pb2.StorageClass(provisioner="kubernetes.io/no-provisioner",
                                   volume_binding_mode="WaitForFirstConsumer")
    cls.metadata.name = "no-disks"
    client.create(cls)
    client.create(claim("later", cls="no-disks"))
    want = ("Normal", "WaitForFirstConsumer", "waiting for first consumer to be created before binding")
    wait_until(lambda: want in events_of(client, "PersistentVolumeClaim", "later"), TIMEOUT,
               what="the claim's WaitForFirstConsumer event")
    client.create(pod("stuck-too", "later", "true"))
    cond = wait_until(lambda: refused("stuck-too"), TIMEOUT, what="stuck-too unschedulable")
    assert cond.message == (f"0/{len(nodes)} nodes are available: {len(nodes)} node(s) didn't find available "
                            "persistent volumes to bind.")
    for name in ("stuck", "stuck-too"):
        client.delete("pods", name, NS)
    for name in ("nothing", "later"):
        client.delete("persistentvolumeclaims", name, NS)


def test_a_local_volume_keeps_its_claims_pods_on_its_node(plane):
    client, _, storage, *_ = plane
    client.create(claim("near", cls="local"))
    first = run_to_end(client, pod("first", "near", "echo here > /data/f"))
    assert first.status.phase == "Succeeded"
    home = first.spec.node_name
    pv = client.get("persistentvolumes", client.get("persistentvolumeclaims", "near", NS).spec.volume_name, "")
    assert pv.spec.local.path.startswith(os.path.join(str(storage), "nodes", home))
    [term] = pv.spec.node_affinity.required.node_selector_terms
    assert list(term.match_expressions[0].values) == [home]
    delete_pod(client, "first")
    second = run_to_end(client, pod("second", "near", "grep -q here /data/f", avoid=home))
    assert second.spec.node_name == home, "the volume's nodeAffinity outweighs the pod's preference"
    assert second.status.phase == "Succeeded"
    delete_pod(client, "second")
    client.delete("persistentvolumeclaims", "near", NS)
    wait_until(lambda: not os.path.exists(pv.spec.local.path), TIMEOUT, what="the local directory removed")


def static_volume(name, size="10Mi", policy="", path="/srv/none", claim_name=""):
    pv = core_pb2.PersistentVolume()
    pv.metadata.name = name
    pv.spec.capacity["storage"] = size
    pv.spec.access_modes.append("ReadWriteOnce")
    pv.spec.host_path.path = path
    pv.spec.storage_class_name = "edge"
    pv.spec.persistent_volume_reclaim_policy = policy
    if claim_name:
        pv.spec.claim_ref.namespace, pv.spec.claim_ref.name = NS, claim_name
    return pv


def phase_of(client, kind, name, ns=NS):
    return client.get(kind, name, ns).status.phase


def test_the_binders_other_rules_prebinding_named_volumes_reclaim_failures_protection_and_lost_claims(plane):
    """API only (no pod): what the PV controller in the controller-manager does beyond the common path."""
    client = plane[0]
    client.create(static_volume("edge-best", "10Mi"))
    client.create(static_volume("edge-reserved", "50Mi", policy="Recycle", claim_name="wants-reserved"))
    client.create(static_volume("edge-tiny", "1Mi", policy="Delete"))
    client.create(claim("wants-reserved", cls="edge"))
    wait_until(lambda: phase_of(client, "persistentvolumeclaims", "wants-reserved") == "Bound", TIMEOUT,
               what="the claim bound")
    assert client.get("persistentvolumeclaims", "wants-reserved", NS).spec.volume_name == "edge-reserved", \
        "a volume pre-bound to the claim wins over a smaller free one"
    named = claim("wants-tiny", cls="edge")
    named.spec.volume_name = "edge-tiny"
    client.create(named)
    want = ("Warning", "FailedBinding", 'Cannot bind to requested volume "edge-tiny": requested PV is too small')
    wait_until(lambda: want in events_of(client, "PersistentVolumeClaim", "wants-tiny"), TIMEOUT,
               what="the named volume refused")
    assert phase_of(client, "persistentvolumeclaims", "wants-tiny") == "Pending"

    # pv-protection: a Bound volume's deletion waits for its claim to go
    client.delete("persistentvolumes", "edge-reserved", "")
    held = client.get("persistentvolumes", "edge-reserved", "")
    assert held.metadata.deletion_timestamp and held.status.phase == "Bound"
    client.delete("persistentvolumeclaims", "wants-reserved", NS)
    wait_until(lambda: _exists(client, "persistentvolumes", "edge-reserved", "") is None, TIMEOUT,
               what="the volume gone once its claim went")

    # reclaim failures: Recycle is not served, Delete of a volume no provisioner made has no deleter
    client.create(static_volume("edge-recycled", policy="Recycle", claim_name="short-lived"))
    client.create(static_volume("edge-deleted", policy="Delete", claim_name="short-lived-too"))
    for name in ("short-lived", "short-lived-too"):
        client.create(claim(name, cls="edge"))
    for name in ("short-lived", "short-lived-too"):
        wait_until(lambda: phase_of(client, "persistentvolumeclaims", name) == "Bound", TIMEOUT, what=f"{name} bound")
        client.delete("persistentvolumeclaims", name, NS)
    failed = wait_until(lambda: (v := client.get("persistentvolumes", "edge-recycled", "")).status.phase == "Failed"
                        and v, TIMEOUT, what="the Recycle volume Failed")
    assert failed.status.message == "No recycler plugin found for the volume!"
    failed = wait_until(lambda: (v := client.get("persistentvolumes", "edge-deleted", "")).status.phase == "Failed"
                        and v, TIMEOUT, what="the Delete volume Failed")
    message = 'error getting deleter volume plugin for volume "edge-deleted": no deletable volume plugin matched'
    assert failed.status.message == message
    assert ("Warning", "VolumeFailedDelete", message) in events_of(client, "PersistentVolume", "edge-deleted")

    # a bound claim whose volume is removed behind the controller's back is Lost
    client.create(static_volume("edge-doomed", claim_name="orphaned"))
    client.create(claim("orphaned", cls="edge"))
    wait_until(lambda: phase_of(client, "persistentvolumeclaims", "orphaned") == "Bound", TIMEOUT, what="bound")
    client.patch("persistentvolumes", "edge-doomed", {"metadata": {"finalizers": None}}, "")
    client.delete("persistentvolumes", "edge-doomed", "")
    wait_until(lambda: phase_of(client, "persistentvolumeclaims", "orphaned") == "Lost", TIMEOUT, what="Lost")
    assert ("Warning", "ClaimLost", "Bound claim has lost its PersistentVolume. Data on the volume is lost!") in \
        events_of(client, "PersistentVolumeClaim", "orphaned")
    for name in ("wants-tiny", "orphaned"):
        client.delete("persistentvolumeclaims", name, NS)
    for name in ("edge-best", "edge-tiny", "edge-recycled", "edge-deleted"):
        client.delete("persistentvolumes", name, "")


MANUAL = """\
apiVersion: v1
kind: PersistentVolume
metadata:
  name: manual-pv
  labels: {disk: manual}
spec:
  capacity: {storage: 20Mi}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  hostPath: {path: %(path)s, type: DirectoryOrCreate}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: manual-claim
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  selector:
    matchLabels: {disk: manual}
  resources:
    requests: {storage: 10Mi}
"""


def test_kubectl_lists_applies_and_prints_the_storage_kinds(plane):
    from test_kubectl import KUBECTL  # skips this module's kubectl test where kubectl is missing
    from apiserver.rest.kubeconfig import write_kubeconfig

    client, _, _, tmp, endpoint = plane
    config = write_kubeconfig(str(tmp / "kubeconfig"), f"http://{endpoint}")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp)}

    def kubectl(*args, stdin=None):
        proc = subprocess.run([KUBECTL, "--kubeconfig", config, "--cache-dir", str(tmp / "kcache"), *args],
                              input=stdin, capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    rows = [line.split() for line in kubectl("api-resources").splitlines()]
    assert ["persistentvolumeclaims", "pvc", "v1", "true", "PersistentVolumeClaim"] in rows
    assert ["persistentvolumes", "pv", "v1", "false", "PersistentVolume"] in rows
    assert ["storageclasses", "sc", "storage.k8s.io/v1", "false", "StorageClass"] in rows
    rows = [line.split() for line in kubectl("get", "sc").splitlines()]
    assert rows[0] == ["NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE", "ALLOWVOLUMEEXPANSION", "AGE"]
    assert ["standard", "(default)", "storage.plane.local/shared-dir", "Delete", "WaitForFirstConsumer",
            "false"] in [r[:-1] for r in rows]
    out = kubectl("apply", "-f", "-", stdin=MANUAL % {"path": tmp / "manual-disk"})
    assert out.splitlines() == ["persistentvolume/manual-pv created", "persistentvolumeclaim/manual-claim created"]
    wait_until(lambda: client.get("persistentvolumeclaims", "manual-claim", NS).status.phase == "Bound", TIMEOUT,
               what="manual-claim Bound (a class name without a StorageClass: bound at once)")
    rows = [line.split() for line in kubectl("get", "pvc", "manual-claim").splitlines()]
    assert rows[0] == ["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS", "MODES", "STORAGECLASS",
                       "VOLUMEATTRIBUTESCLASS", "AGE"]
    assert rows[1][:-1] == ["manual-claim", "Bound", "manual-pv", "20Mi", "RWO", "manual", "<unset>"]
    rows = [line.split() for line in kubectl("get", "pv", "manual-pv", "-o", "wide").splitlines()]
    assert rows[1][:7] == ["manual-pv", "20Mi", "RWO", "Retain", "Bound", "default/manual-claim", "manual"]
    assert rows[1][-1] == "Filesystem"
    kubectl("delete", "pvc", "manual-claim")
    released = wait_until(lambda: (v := client.get("persistentvolumes", "manual-pv", "")).status.phase == "Released"
                          and v, TIMEOUT, what="manual-pv Released")
    assert released.spec.claim_ref.name == "manual-claim"
    kubectl("delete", "pv", "manual-pv")

