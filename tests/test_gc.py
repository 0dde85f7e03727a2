"""The garbage collector and the namespace controller against a real
etcdlite member and apiserver, with hollow kubelets finishing the graceful
deletion of bound pods: background, foreground and orphan deletion of a
ReplicaSet with pods (ownerReferences written by the test; no ReplicaSet
controller), owner chains, dangling and partial owners, cluster-scoped owners,
and a namespace emptied and removed."""

from __future__ import annotations

import threading

import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import apps_pb2, coordination_pb2, core_pb2, meta_pb2
from controllers.gc import GarbageCollector, NamespaceController
from controllers.informer import SharedInformerFactory
from apiserver.resources import NAMESPACE_NODE_LEASE as LEASE_NAMESPACE
from node.kubelet.hollow import HollowNodes
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite

pytestmark = pytest.mark.process

NS = "gc"
NODES = ["gc-node-0", "gc-node-1"]


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "gc") as api:
        yield api


@pytest.fixture(scope="module")
def client(plane):
    with Client(plane.endpoint, timeout=15) as c:
        c.create(core_pb2.Namespace(metadata={"name": NS}))
        yield c


@pytest.fixture(scope="module")
def controllers(client):
    hollow = HollowNodes(client, NODES, ready_delay=0.1, heartbeat_interval=1.0, max_grace=0.3).start()
    assert hollow.wait_registered(30)
    factory = SharedInformerFactory(client)
    gc = GarbageCollector(client, factory)
    namespaces = NamespaceController(client, factory, recheck_interval=0.2)
    factory.start()
    gc.start()
    namespaces.start()
    yield gc, hollow
    namespaces.stop()
    gc.stop()
    factory.stop()
    hollow.stop()


def ref(owner, *, controller=True, block=True):
    kind = "ReplicaSet" if isinstance(owner, apps_pb2.ReplicaSet) else type(owner).__name__
    api_version = "apps/v1" if isinstance(owner, (apps_pb2.ReplicaSet, apps_pb2.Deployment)) else "v1"
    return meta_pb2.OwnerReference(api_version=api_version, kind=kind, name=owner.metadata.name,
                                   uid=owner.metadata.uid, controller=controller,
                                   block_owner_deletion=block)


def replica_set(client, name, owner=None, namespace=NS):
    rs = apps_pb2.ReplicaSet()
    rs.metadata.name = name
    rs.metadata.namespace = namespace
    if owner is not None:
        rs.metadata.owner_references.append(ref(owner))
    rs.spec.replicas = 3
    rs.spec.selector.match_labels["app"] = name
    rs.spec.template.metadata.labels["app"] = name
    rs.spec.template.spec.containers.add(name="main", image="nginx:1.25")
    return client.create(rs)


def make_pod(client, name, owners=(), node="", namespace=NS, block=True):
    p = core_pb2.Pod()
    p.metadata.name = name
    p.metadata.namespace = namespace
    for i, owner in enumerate(owners):
        p.metadata.owner_references.append(ref(owner, controller=i == 0, block=block))
    p.spec.containers.add(name="main", image="nginx:1.25")
    p.spec.node_name = node
    return client.create(p)


def exists(client, kind, name, namespace=NS):
    try:
        client.get(kind, name, namespace)
        return True
    except ApiError as e:
        if e.reason == "NotFound":
            return False
        raise


def running(client, name):
    return client.get("pods", name, NS).status.phase == "Running"


class DeletionLog:
    """Every DELETED event of some resources, from now on, with its
    resourceVersion: the global order in which the objects went."""

    def __init__(self, client, kinds):
        self.deleted: dict[tuple[str, str], int] = {}
        self._watches = []
        for kind in kinds:
            rv = client.list(kind, NS, limit=1).resource_version
            w = client.watch(kind, NS, resource_version=rv)
            self._watches.append(w)
            threading.Thread(target=self._follow, args=(kind, w), daemon=True).start()

    def _follow(self, kind, watch):
        try:
            for ev in watch:
                if ev.type == "DELETED":
                    self.deleted[(kind, ev.object.metadata.name)] = int(ev.object.metadata.resource_version)
        except ApiError:
            pass

    def stop(self):
        for w in self._watches:
            w.stop()


def test_background_deletion_removes_dependents(client, controllers):
    rs = replica_set(client, "bg")
    for i in range(3):
        make_pod(client, f"bg-{i}", [rs])
    client.delete("replicasets", "bg", NS)
    assert not exists(client, "replicasets", "bg")  # the owner goes at once
    wait_until(lambda: not any(exists(client, "pods", f"bg-{i}") for i in range(3)), timeout=15,
               what="the dependents collected")


def test_foreground_deletion_waits_for_blocking_dependents(client, controllers):
    rs = replica_set(client, "fg")
    for i in range(3):
        make_pod(client, f"fg-{i}", [rs], node=NODES[i % 2])  # bound: the kubelet finishes their deletion
    wait_until(lambda: all(running(client, f"fg-{i}") for i in range(3)), timeout=20, what="pods running")
    log = DeletionLog(client, ["pods", "replicasets"])
    deleted = client.delete("replicasets", "fg", NS, propagation_policy="Foreground")
    assert deleted.metadata.deletion_timestamp and "foregroundDeletion" in deleted.metadata.finalizers
    wait_until(lambda: not exists(client, "replicasets", "fg"), timeout=20, what="the owner deleted")
    assert not any(exists(client, "pods", f"fg-{i}") for i in range(3))
    wait_until(lambda: ("replicasets", "fg") in log.deleted, timeout=10, what="the owner's DELETED event")
    log.stop()
    pod_times = [log.deleted[("pods", f"fg-{i}")] for i in range(3)]
    assert max(pod_times) < log.deleted[("replicasets", "fg")]


def test_foreground_deletion_of_an_owner_chain_goes_bottom_up(client, controllers):
    d = apps_pb2.Deployment()
    d.metadata.name = "chain"
    d.metadata.namespace = NS
    d.spec.selector.match_labels["app"] = "chain"
    d.spec.template.metadata.labels["app"] = "chain"
    d.spec.template.spec.containers.add(name="main", image="nginx:1.25")
    d = client.create(d)
    rs = replica_set(client, "chain-rs", owner=d)
    for i in range(2):
        make_pod(client, f"chain-{i}", [rs], node=NODES[0])
    wait_until(lambda: all(running(client, f"chain-{i}") for i in range(2)), timeout=20, what="pods running")
    log = DeletionLog(client, ["pods", "replicasets", "deployments"])
    client.delete("deployments", "chain", NS, propagation_policy="Foreground")
    wait_until(lambda: ("deployments", "chain") in log.deleted, timeout=20, what="the deployment deleted")
    log.stop()
    assert not exists(client, "replicasets", "chain-rs")
    assert max(log.deleted[("pods", f"chain-{i}")] for i in range(2)) < log.deleted[("replicasets", "chain-rs")]
    assert log.deleted[("replicasets", "chain-rs")] < log.deleted[("deployments", "chain")]


def test_orphan_deletion_keeps_dependents_without_the_reference(client, controllers):
    rs = replica_set(client, "orph")
    other = client.create(core_pb2.ConfigMap(metadata={"name": "orph-cm", "namespace": NS}))
    make_pod(client, "orph-0", [rs])
    make_pod(client, "orph-1", [rs, other])
    client.delete("replicasets", "orph", NS, propagation_policy="Orphan")
    wait_until(lambda: not exists(client, "replicasets", "orph"), timeout=15, what="the owner deleted")
    assert list(client.get("pods", "orph-0", NS).metadata.owner_references) == []
    assert [r.uid for r in client.get("pods", "orph-1", NS).metadata.owner_references] == [other.metadata.uid]
    # and they stay: nothing collects them later
    client.delete("configmaps", "orph-cm", NS, propagation_policy="Orphan")
    wait_until(lambda: not exists(client, "configmaps", "orph-cm"), timeout=15, what="the configmap deleted")
    assert exists(client, "pods", "orph-0") and exists(client, "pods", "orph-1")


def test_dangling_and_partial_owners(client, controllers):
    rs = replica_set(client, "partial")
    cm = client.create(core_pb2.ConfigMap(metadata={"name": "partial-cm", "namespace": NS}))
    make_pod(client, "two-owners", [rs, cm])
    ghost = core_pb2.ConfigMap(metadata={"name": "ghost", "namespace": NS, "uid": "0000-not-there"})
    make_pod(client, "dangling", [ghost])
    # a namesake of the owner, with another uid, does not count as the owner
    client.create(core_pb2.ConfigMap(metadata={"name": "namesake", "namespace": NS}))
    fake = core_pb2.ConfigMap(metadata={"name": "namesake", "namespace": NS, "uid": "1111-other"})
    make_pod(client, "namesake-dependent", [fake])
    wait_until(lambda: not exists(client, "pods", "dangling"), timeout=15, what="the dangling pod collected")
    wait_until(lambda: not exists(client, "pods", "namesake-dependent"), timeout=15,
               what="the namesake's pod collected")
    client.delete("configmaps", "partial-cm", NS)
    wait_until(lambda: [r.uid for r in client.get("pods", "two-owners", NS).metadata.owner_references]
               == [rs.metadata.uid], timeout=15, what="the reference to the gone owner dropped")
    assert exists(client, "pods", "two-owners")


def test_cluster_scoped_owner(client, controllers):
    node = client.create(core_pb2.Node(metadata={"name": "gc-short-lived"}))
    try:
        client.create(core_pb2.Namespace(metadata={"name": LEASE_NAMESPACE}))
    except ApiError as e:
        assert e.reason == "AlreadyExists"
    lease = coordination_pb2.Lease(metadata={"name": "gc-short-lived", "namespace": LEASE_NAMESPACE})
    lease.metadata.owner_references.append(ref(node))
    client.create(lease)
    wait_until(lambda: exists(client, "leases", "gc-short-lived", LEASE_NAMESPACE), timeout=5,
               what="the lease")
    client.delete("nodes", "gc-short-lived", "")
    wait_until(lambda: not exists(client, "leases", "gc-short-lived", LEASE_NAMESPACE), timeout=15,
               what="the node's lease collected")


def test_namespace_deletion_empties_and_removes_it(client, controllers):
    ns = "doomed"
    client.create(core_pb2.Namespace(metadata={"name": ns}))
    client.create(core_pb2.ConfigMap(metadata={"name": "cm", "namespace": ns}, data={"a": "b"}))
    client.create(core_pb2.Secret(metadata={"name": "s", "namespace": ns}, string_data={"k": "v"}))
    svc = core_pb2.Service(metadata={"name": "svc", "namespace": ns})
    svc.spec.ports.add(port=80)
    client.create(svc)
    rs = replica_set(client, "rs", namespace=ns)
    make_pod(client, "unbound", [rs], namespace=ns)
    make_pod(client, "bound", [rs], node=NODES[1], namespace=ns)
    wait_until(lambda: client.get("pods", "bound", ns).status.phase == "Running", timeout=20, what="pod running")
    client.delete("namespaces", ns, "")
    assert client.get("namespaces", ns, "").status.phase == "Terminating"
    wait_until(lambda: not exists(client, "namespaces", ns, ""), timeout=30, what="the namespace removed")
    for kind in ("configmaps", "secrets", "services", "replicasets", "pods"):
        assert client.list(kind, ns).items == []
    # the name is free again
    client.create(core_pb2.Namespace(metadata={"name": ns}))
