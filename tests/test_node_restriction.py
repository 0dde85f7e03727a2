"""NodeRestriction judging what a kubelet writes, as kube-apiserver's admission
plugin: one test per rule, as node n1 (system:node:n1, a client certificate),
over gRPC and, for what only REST serves (eviction, TokenRequest), over REST.
Every refusal is 403 Forbidden with upstream's message, and wrote nothing.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from harness.plane import start_control_plane
from harness.procs import Registry

from apiserver import manifest
from apiserver.auth import pki as pkis
from apiserver.errors import ApiError
from apiserver.pb import coordination_pb2, core_pb2, rbac_pb2
from node.kubelet.bootstrap import client_csr
from tests.test_apiserver_security import Plane, forbidden_status, wait_until

pytestmark = pytest.mark.process

NS = "work"


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    reg = Registry()
    tmp = tmp_path_factory.mktemp("noderestriction")
    pki = pkis.plane_pki(tmp / "pki")
    try:
        api = start_control_plane(tmp, reg, pki=pki)
        p = Plane(api, pki, tmp)
        pki.node("n1")
        p.n1 = api.client("node-n1")
        p.admin.create(core_pb2.Namespace(metadata={"name": NS}))
        wait_until(lambda: _exists(p.admin, "serviceaccounts", "default", NS), "the default ServiceAccount")
        # n1 registers itself; n2 is another node's
        p.n1_node = p.n1.create(core_pb2.Node(metadata={"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}))
        p.admin.create(core_pb2.Node(metadata={"name": "n2"}))
        for node in ("n1", "n2"):
            p.admin.create(manifest.from_dict({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p-{node}", "namespace": NS},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}))
        wait_until(lambda: _exists(p.n1, "pods", "p-n2", NS), "the pods in the apiserver's cache")
        # RBAC granting n1 more than system:node does: NodeRestriction still refuses
        p.admin.create(rbac_pb2.Role(metadata={"name": "too-much", "namespace": NS}, rules=[rbac_pb2.PolicyRule(
            verbs=["update", "patch"], api_groups=[""], resources=["pods", "persistentvolumeclaims"])]))
        p.admin.create(rbac_pb2.RoleBinding(
            metadata={"name": "too-much", "namespace": NS},
            role_ref=rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="too-much"),
            subjects=[rbac_pb2.Subject(kind="User", api_group="rbac.authorization.k8s.io", name="system:node:n1")]))
        yield p
        p.n1.close()
        p.admin.close()
    finally:
        reg.cleanup()


def _exists(client, kind: str, name: str, ns: str = "") -> bool:
    try:
        client.get(kind, name, ns)
        return True
    except ApiError:
        return False


def refused(call, message: str) -> None:
    with pytest.raises(ApiError) as err:
        call()
    assert (err.value.reason, err.value.message) == ("Forbidden", message)


def mirror_pod(plane, name: str, **changes) -> dict:
    """A mirror pod n1 may create; ``changes`` replace its metadata/spec parts."""
    owner = {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": plane.n1_node.metadata.uid, "controller": True}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "annotations": {"kubernetes.io/config.mirror": "abc"},
                        "ownerReferences": [owner]},
           "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}
    for key, value in changes.items():
        part, field = key.split("__")
        if value is None:
            pod[part].pop(field, None)
        else:
            pod[part][field] = value
    return pod


# ---- pods ----

def test_a_node_creates_its_own_mirror_pod(plane):
    created = plane.n1.create(manifest.from_dict(mirror_pod(plane, "static-ok")))
    assert created.spec.node_name == "n1"
    # upstream's ServiceAccount admission leaves mirror pods be: no account, no token volume
    assert not created.spec.service_account_name and not created.spec.volumes


OTHER_OWNER = [{"apiVersion": "v1", "kind": "Node", "name": "n2", "uid": "x", "controller": True}]


@pytest.mark.parametrize("changes,why", [
    ({"metadata__annotations": None}, 'pod does not have "kubernetes.io/config.mirror" annotation, node "n1" can '
                                      'only create mirror pods'),
    ({"spec__nodeName": "n2"}, 'node "n1" can only create pods with spec.nodeName set to itself'),
    ({"metadata__ownerReferences": None}, 'node "n1" can only create pods with an owner reference set to itself'),
    ({"metadata__ownerReferences": OTHER_OWNER}, 'node "n1" can only create pods with an owner reference set to '
                                                 'itself'),
    ({"spec__serviceAccountName": "default"}, 'node "n1" can not create pods that reference a service account'),
    ({"spec__volumes": [{"name": "v", "secret": {"secretName": "s"}}]},
     'node "n1" can not create pods that reference secrets'),
    ({"spec__volumes": [{"name": "v", "configMap": {"name": "c"}}]},
     'node "n1" can not create pods that reference configmaps'),
    ({"spec__volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}]},
     'node "n1" can not create pods that reference persistentvolumeclaims'),
], ids=["not-mirror", "other-node", "no-owner", "other-owner", "serviceaccount", "secret", "configmap", "claim"])
def test_a_node_creates_no_other_pod(plane, changes, why):
    name = f"static-{len(why)}-{len(changes)}"
    refused(lambda: plane.n1.create(manifest.from_dict(mirror_pod(plane, name, **changes))),
            f'pods "{name}" is forbidden: {why}')
    assert not _exists(plane.admin, "pods", name, NS)


def test_a_mirror_pod_owned_by_a_stale_node_uid_is_refused(plane):
    owner = [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "stale", "controller": True}]
    refused(lambda: plane.n1.create(manifest.from_dict(mirror_pod(plane, "static-stale",
                                                                  metadata__ownerReferences=owner))),
            f'pods "static-stale" is forbidden: node n1 UID mismatch: expected stale got '
            f'{plane.n1_node.metadata.uid}')


def test_a_node_updates_no_pod_but_through_status(plane):
    """Not even with RBAC's leave (the Role "too-much")."""
    refused(lambda: plane.n1.patch("pods", "p-n1", {"metadata": {"labels": {"a": "b"}}}, NS),
            'pods "p-n1" is forbidden: unexpected operation "UPDATE", node "n1" can only create and delete '
            'mirror pods')
    assert not plane.admin.get("pods", "p-n1", NS).metadata.labels


def test_a_node_writes_the_status_of_its_own_pods_only(plane):
    pod = plane.n1.get("pods", "p-n2", NS)
    pod.status.phase = "Failed"
    refused(lambda: plane.n1.update_status(pod),
            'pods "p-n2" is forbidden: node "n1" can only update pod status for pods with spec.nodeName set to '
            'itself')
    assert plane.admin.get("pods", "p-n2", NS).status.phase == "Pending"
    pod = plane.n1.get("pods", "p-n1", NS)
    pod.status.phase = "Running"
    assert plane.n1.update_status(pod).status.phase == "Running"


def test_a_node_deletes_its_own_pods_only(plane):
    refused(lambda: plane.n1.delete("pods", "p-n2", NS),
            'pods "p-n2" is forbidden: node "n1" can only delete pods with spec.nodeName set to itself')
    assert not plane.admin.get("pods", "p-n2", NS).metadata.deletion_timestamp


def test_a_node_evicts_its_own_pods_only(plane):
    plane.admin.create(manifest.from_dict({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "evictee", "namespace": NS},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}))
    wait_until(lambda: _exists(plane.n1, "pods", "evictee", NS), "the pod in the cache")
    ctx = plane.ssl_context("node-n1")

    def evict(name):
        return plane.rest("POST", f"/api/v1/namespaces/{NS}/pods/{name}/eviction",
                          {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}, ctx=ctx)

    assert evict("p-n2") == (403, forbidden_status(
        'pods "p-n2" is forbidden: node n1 can only evict pods with spec.nodeName set to itself', "pods", "p-n2"))
    assert not plane.admin.get("pods", "p-n2", NS).metadata.deletion_timestamp
    assert evict("evictee")[0] == 201
    assert plane.admin.get("pods", "evictee", NS).metadata.deletion_timestamp


# ---- nodes ----

def test_a_node_registers_only_itself(plane):
    refused(lambda: plane.n1.create(core_pb2.Node(metadata={"name": "n3"})),
            'nodes "n3" is forbidden: node "n1" is not allowed to modify node "n3"')
    assert not _exists(plane.admin, "nodes", "n3")


def test_a_node_registers_without_restricted_labels(plane):
    plane.pki.node("n9")
    n9 = plane.api.client("node-n9")
    try:
        labels = {"node-restriction.kubernetes.io/pci": "true", "node-role.kubernetes.io/control-plane": "",
                  "kubernetes.io/hostname": "n9", "topology.kubernetes.io/zone": "a", "example.com/x": "y"}
        refused(lambda: n9.create(core_pb2.Node(metadata={"name": "n9", "labels": labels})),
                'nodes "n9" is forbidden: node "n9" is not allowed to set the following labels: '
                'node-restriction.kubernetes.io/pci, node-role.kubernetes.io/control-plane')
        assert not _exists(plane.admin, "nodes", "n9")
    finally:
        n9.close()


@pytest.mark.parametrize("patch,why", [
    ({"metadata": {"labels": {"node-restriction.kubernetes.io/pci": "true"}}},
     "is not allowed to modify labels: node-restriction.kubernetes.io/pci"),
    ({"metadata": {"labels": {"kubernetes.io/hostname": None}}}, None),  # a kubelet label: its own to change
    ({"spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]}},
     'node "n1" is not allowed to modify taints'),
    ({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n2", "uid": "u"}]}},
     'node "n1" is not allowed to modify ownerReferences'),
], ids=["restricted-label", "kubelet-label", "taints", "owners"])
def test_a_node_changes_no_label_taint_or_owner_that_steers_pods(plane, patch, why):
    before = plane.admin.get("nodes", "n1", "")
    if why is None:
        assert "kubernetes.io/hostname" not in plane.n1.patch("nodes", "n1", patch, "").metadata.labels
        plane.n1.patch("nodes", "n1", {"metadata": {"labels": {"kubernetes.io/hostname": "n1"}}}, "")
        return
    refused(lambda: plane.n1.patch("nodes", "n1", patch, ""), f'nodes "n1" is forbidden: {why}')
    assert plane.admin.get("nodes", "n1", "").metadata.resource_version == before.metadata.resource_version


def test_a_node_modifies_and_deletes_no_other_node(plane):
    refused(lambda: plane.n1.patch("nodes", "n2", {"metadata": {"labels": {"a": "b"}}}, ""),
            'nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"')
    refused(lambda: plane.n1.delete("nodes", "n2", ""),
            'nodes "n2" is forbidden: node "n1" is not allowed to modify node "n2"')
    assert not plane.admin.get("nodes", "n2", "").metadata.labels


# ---- leases ----

def _lease(name: str, ns: str) -> coordination_pb2.Lease:
    lease = coordination_pb2.Lease()
    lease.metadata.name, lease.metadata.namespace = name, ns
    lease.spec.holder_identity = name
    return lease


def test_a_node_holds_only_its_own_lease(plane):
    refused(lambda: plane.n1.create(_lease("n2", "kube-node-lease")),
            'leases.coordination.k8s.io "n2" is forbidden: can only access node lease with the same name as the '
            'requesting node')
    refused(lambda: plane.n1.create(_lease("n1", NS)),
            'leases.coordination.k8s.io is forbidden: can only access leases in the "kube-node-lease" system '
            'namespace')
    assert not _exists(plane.admin, "leases", "n2", "kube-node-lease")
    assert not _exists(plane.admin, "leases", "n1", NS)
    assert plane.n1.create(_lease("n1", "kube-node-lease")).metadata.name == "n1"


# ---- claims ----

def test_a_node_changes_only_a_claims_capacity_and_conditions(plane):
    plane.admin.create(manifest.from_dict({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "none",
                 "resources": {"requests": {"storage": "1Gi"}}}}))
    # the Node authorizer lets n1 at a claim one of its pods uses
    plane.admin.create(manifest.from_dict({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "uses-data", "namespace": NS},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}))
    wait_until(lambda: _exists(plane.n1, "persistentvolumeclaims", "data", NS), "the pod in the cache")
    refused(lambda: plane.n1.patch("persistentvolumeclaims", "data", {"metadata": {"labels": {"a": "b"}}}, NS),
            'persistentvolumeclaims "data" is forbidden: may only update PVC status')
    claim = plane.n1.get("persistentvolumeclaims", "data", NS)
    claim.status.phase = "Bound"
    refused(lambda: plane.n1.update_status(claim),
            'persistentvolumeclaims "data" is forbidden: node "n1" is not allowed to update fields other than '
            'status.capacity and status.conditions: status.phase')
    claim = plane.n1.get("persistentvolumeclaims", "data", NS)
    assert claim.status.phase != "Bound" and not claim.metadata.labels
    claim.status.capacity["storage"] = "2Gi"
    assert plane.n1.update_status(claim).status.capacity["storage"] == "2Gi"


# ---- ServiceAccount tokens ----

def test_a_node_gets_tokens_only_for_its_own_pods(plane):
    ctx = plane.ssl_context("node-n1")
    pods = {n: plane.admin.get("pods", f"p-{n}", NS) for n in ("n1", "n2")}

    def token(ref):
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"boundObjectRef": ref}}
        return plane.rest("POST", f"/api/v1/namespaces/{NS}/serviceaccounts/default/token", body, ctx=ctx)

    def ref(node, uid=True):
        pod = pods[node]
        return {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name,
                **({"uid": pod.metadata.uid} if uid else {})}

    for bound, why in ((None, "node requested token not bound to a pod"),
                       (ref("n1", uid=False), "node requested token with a pod binding without a uid"),
                       (ref("n2"), "node requested token bound to a pod scheduled on a different node")):
        assert token(bound) == (403, forbidden_status(f'serviceaccounts "default" is forbidden: {why}',
                                                      "serviceaccounts", "default"))
    status, body = token(ref("n1"))
    assert status == 201 and body["status"]["token"]


# ---- CertificateSigningRequests ----

def _csr(name: str, node: str):
    csr = client_csr(ec.generate_private_key(ec.SECP256R1()), node)
    csr.metadata.name = name
    return csr


def test_a_node_asks_certificates_only_in_its_own_name(plane):
    refused(lambda: plane.n1.create(_csr("steal-n2", "n2")),
            'certificatesigningrequests.certificates.k8s.io "steal-n2" is forbidden: can only create a node CSR '
            'with CN=system:node:n1')
    assert not _exists(plane.admin, "certificatesigningrequests", "steal-n2")
    assert plane.n1.create(_csr("renew-n1", "n1")).spec.username == "system:node:n1"


@pytest.mark.parametrize("changes,why", [
    ({"spec__serviceAccountName": "default"}, "a mirror pod may not reference service accounts"),
    ({"spec__volumes": [{"name": "v", "secret": {"secretName": "s"}}]}, "a mirror pod may not reference secrets"),
    ({"spec__volumes": [{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]},
     "a mirror pod may not use ServiceAccountToken volume projections"),
], ids=["serviceaccount", "secret", "token-projection"])
def test_no_one_creates_a_mirror_pod_with_an_account_or_secrets(plane, changes, why):
    """upstream's ServiceAccount admission, for the admin too: a mirror pod gets no token."""
    name = f"admin-static-{len(why)}"
    refused(lambda: plane.admin.create(manifest.from_dict(mirror_pod(plane, name, **changes))),
            f'pods "{name}" is forbidden: {why}')
    assert not _exists(plane.admin, "pods", name, NS)


def test_a_node_identity_without_a_name_writes_nothing(plane):
    plane.pki.clients["nameless"] = plane.pki.ca.issue("nameless", "system:node:", ("system:nodes",))
    with plane.api.client("nameless") as nameless:
        refused(lambda: nameless.create(_lease("x", "kube-node-lease")),
                'leases.coordination.k8s.io is forbidden: could not determine node from user "system:node:"')
    assert not _exists(plane.admin, "leases", "x", "kube-node-lease")
