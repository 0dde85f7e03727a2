"""Hollow kubelets against a real etcdlite member and apiserver process: 50
nodes in one process register and stay Ready, renew their Leases, take bound
pods to Running and Ready, finish graceful deletions, and stop and start."""

from __future__ import annotations

import ipaddress

import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from apiserver.resources import NAMESPACE_NODE_LEASE as LEASE_NAMESPACE
from node.kubelet.hollow import HollowNodes, node_internal_ip, node_pod_cidr, parse_taint
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite

NODES = [f"hollow-{i}" for i in range(50)]


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "kubelet") as api:
        yield api


@pytest.fixture(scope="module")
def client(plane):
    with Client(plane.endpoint, timeout=15) as c:
        c.create(core_pb2.Namespace(metadata={"name": "work"}))
        yield c


@pytest.fixture(scope="module")
def hollow(client):
    nodes = HollowNodes(client, NODES, cpu="2", memory="4Gi", pods=20, labels={"pool": "hollow"},
                        taints=["dedicated=sim:PreferNoSchedule"], ready_delay=0.3,
                        heartbeat_interval=0.5, status_report_interval=1.0, max_grace=0.5)
    nodes.start()
    assert nodes.wait_registered(60)
    yield nodes
    nodes.stop()


def ready_status(obj) -> str:
    return next((c.status for c in obj.status.conditions if c.type == "Ready"), "")


def pod(name, node="", namespace="work", containers=("main",)):
    p = core_pb2.Pod()
    p.metadata.name = name
    p.metadata.namespace = namespace
    for c in containers:
        p.spec.containers.add(name=c, image="nginx:1.25")
    p.spec.node_name = node
    return p


@pytest.mark.process
def test_fifty_nodes_register_ready_with_capacity(client, hollow):
    nodes = {n.metadata.name: n for n in client.list("nodes").items}
    assert set(NODES) <= set(nodes)
    for i, name in enumerate(NODES):
        n = nodes[name]
        assert ready_status(n) == "True"
        assert dict(n.status.capacity)["cpu"] == "2"
        assert dict(n.status.allocatable)["pods"] == "20"
        assert n.metadata.labels["pool"] == "hollow"
        assert n.metadata.labels["kubernetes.io/hostname"] == name
        assert [(t.key, t.value, t.effect) for t in n.spec.taints] == [("dedicated", "sim", "PreferNoSchedule")]
        assert {(a.type, a.address) for a in n.status.addresses} == {("InternalIP", node_internal_ip(i)),
                                                                     ("Hostname", name)}
        assert n.spec.pod_cidr == str(node_pod_cidr(i))
        assert n.status.node_info.kubelet_version
    # every node has distinct addresses
    assert len({node_internal_ip(i) for i in range(len(NODES))}) == len(NODES)


@pytest.mark.process
def test_leases_are_renewed_and_owned_by_their_node(client, hollow):
    leases = {lease.metadata.name: lease for lease in client.list("leases", LEASE_NAMESPACE).items}
    assert set(NODES) <= set(leases)
    first = leases[NODES[7]]
    assert first.spec.holder_identity == NODES[7]
    assert first.spec.lease_duration_seconds == 40
    node = client.get("nodes", NODES[7], "")
    assert [(r.kind, r.name, r.uid) for r in first.metadata.owner_references] == [("Node", NODES[7], node.metadata.uid)]
    wait_until(lambda: client.get("leases", NODES[7], LEASE_NAMESPACE).spec.renew_time != first.spec.renew_time,
               timeout=10, what="a lease renewal")
    # the Ready heartbeat moves too, less often
    beat = next(c.last_heartbeat_time for c in node.status.conditions if c.type == "Ready")
    wait_until(lambda: next(c.last_heartbeat_time for c in client.get("nodes", NODES[7], "").status.conditions
                            if c.type == "Ready") != beat, timeout=10, what="a Ready heartbeat")


@pytest.mark.process
def test_bound_pods_become_running_and_ready(client, hollow):
    created = [client.create(pod(f"run-{i}", node=NODES[i % 3], containers=("main", "side")))
               for i in range(6)]
    # a hollow node has no volumes to set up: a pod with a claim runs as any other
    with_claim = pod("run-claim", node=NODES[5])
    with_claim.spec.volumes.add(name="data", persistent_volume_claim=core_pb2.PersistentVolumeClaimVolumeSource(
        claim_name="data"))
    created.append(client.create(with_claim))
    # bound after creation, as the scheduler does
    client.create(pod("late"))
    client.patch("pods", "late", {"spec": {"nodeName": NODES[4]}}, "work")
    # bound to a node that is not ours: left alone
    client.create(pod("stranger", node="somebody-else"))

    def all_running():
        pods = [client.get("pods", p.metadata.name, "work") for p in created]
        pods.append(client.get("pods", "late", "work"))
        return pods if all(p.status.phase == "Running" for p in pods) else None

    pods = wait_until(all_running, timeout=20, what="pods Running")
    ips = set()
    for p in pods:
        index = NODES.index(p.spec.node_name)
        assert p.status.host_ip == node_internal_ip(index)
        assert ipaddress.ip_address(p.status.pod_ip) in node_pod_cidr(index)
        assert [x.ip for x in p.status.pod_ips] == [p.status.pod_ip]
        assert p.status.start_time
        assert {c.type: c.status for c in p.status.conditions} == {  # as the real kubelet writes them
            "PodScheduled": "True", "PodReadyToStartContainers": "True", "Initialized": "True",
            "ContainersReady": "True", "Ready": "True"}
        assert all(cs.container_id.startswith("hollow://") for cs in p.status.container_statuses)
        statuses = {cs.name: cs for cs in p.status.container_statuses}
        assert set(statuses) == {c.name for c in p.spec.containers}
        assert all(cs.ready and cs.state.running.started_at for cs in statuses.values())
        assert p.status.qos_class == "BestEffort"
        ips.add(p.status.pod_ip)
    assert len(ips) == len(pods)
    stranger = client.get("pods", "stranger", "work")
    assert stranger.status.phase == "Pending" and not stranger.status.pod_ip


@pytest.mark.process
def test_graceful_deletion_is_finished_by_the_kubelet(client, hollow):
    client.create(pod("doomed", node=NODES[10]))
    wait_until(lambda: client.get("pods", "doomed", "work").status.phase == "Running", timeout=20,
               what="doomed Running")
    deleted = client.delete("pods", "doomed", "work")  # 30 s grace by default
    assert deleted.metadata.deletion_timestamp

    def gone():
        try:
            client.get("pods", "doomed", "work")
        except ApiError as e:
            return e.reason == "NotFound"
        return False

    wait_until(gone, timeout=15, what="the kubelet deleting the pod")


@pytest.mark.process
def test_a_node_marked_not_ready_while_alive_says_ready_again(client, hollow):
    def mark_unknown():
        node = client.get("nodes", NODES[20], "")
        for c in node.status.conditions:
            if c.type == "Ready":
                c.status, c.reason = "Unknown", "NodeStatusUnknown"
        try:
            return client.update_status(node)
        except ApiError as e:  # the kubelet's own status write came first
            if e.reason != "Conflict":
                raise
            return None

    wait_until(mark_unknown, timeout=10, what="the node marked Unknown")
    wait_until(lambda: ready_status(client.get("nodes", NODES[20], "")) == "True", timeout=10,
               what="the kubelet restoring Ready")


@pytest.mark.process
def test_stopped_node_goes_silent_and_comes_back(client, hollow):
    name = NODES[30]
    client.create(pod("on-dying", node=name))
    wait_until(lambda: client.get("pods", "on-dying", "work").status.phase == "Running", timeout=20,
               what="pod Running")
    hollow.stop_node(name)
    # whatever renewal was in flight lands; then the lease freezes
    wait_until(lambda: _stable_renew(client, name, 1.5), timeout=20, what="renewals to stop")
    frozen = client.get("leases", name, LEASE_NAMESPACE).spec.renew_time
    # a stopped kubelet finishes no deletion and starts no pod
    client.delete("pods", "on-dying", "work")
    client.create(pod("on-dead", node=name))
    other = NODES[31]
    client.create(pod("on-live", node=other))
    wait_until(lambda: client.get("pods", "on-live", "work").status.phase == "Running", timeout=20,
               what="a pod on a live node Running")
    assert client.get("pods", "on-dying", "work").metadata.deletion_timestamp
    assert client.get("pods", "on-dead", "work").status.phase == "Pending"
    assert client.get("leases", name, LEASE_NAMESPACE).spec.renew_time == frozen

    hollow.start_node(name)
    wait_until(lambda: client.get("leases", name, LEASE_NAMESPACE).spec.renew_time != frozen, timeout=10,
               what="renewals to resume")
    wait_until(lambda: client.get("pods", "on-dead", "work").status.phase == "Running", timeout=20,
               what="the restarted kubelet starting its pod")

    def dying_gone():
        try:
            client.get("pods", "on-dying", "work")
        except ApiError as e:
            return e.reason == "NotFound"
        return False

    wait_until(dying_gone, timeout=15, what="the restarted kubelet finishing the deletion")


def _stable_renew(client, name, seconds):
    import time

    before = client.get("leases", name, LEASE_NAMESPACE).spec.renew_time
    time.sleep(seconds)  # observing that nothing changes needs a window of time
    return client.get("leases", name, LEASE_NAMESPACE).spec.renew_time == before


def test_parse_taint():
    t = parse_taint("a.io/k=v:NoExecute")
    assert (t.key, t.value, t.effect) == ("a.io/k", "v", "NoExecute")
    t = parse_taint("k:NoSchedule")
    assert (t.key, t.value, t.effect) == ("k", "", "NoSchedule")
    with pytest.raises(ValueError):
        parse_taint("novalue")


@pytest.mark.process
def test_unknown_node_name_is_refused(hollow):
    with pytest.raises(KeyError):
        hollow.stop_node("not-a-hollow-node")
