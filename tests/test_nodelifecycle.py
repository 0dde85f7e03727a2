"""The node lifecycle controller with hollow kubelets against a real etcdlite
member and apiserver (default tolerations of 2 s, a grace period of 2 s): a
silent node goes Unknown and gets the unreachable taints, its pods go NotReady
and are evicted when their toleration runs out; it recovers when its kubelet
comes back. Plus the eviction arithmetic as pure functions."""

from __future__ import annotations

import math
import time

import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from controllers.informer import SharedInformerFactory
from node.kubelet.hollow import HollowNodes
from controllers.nodelifecycle import NodeLifecycleController, TokenBucket, eviction_time, wanted_taint_keys
from controllers.podutil import now_rfc3339
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite

UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
GRACE = 2.0
NODES = [f"life-{i}" for i in range(4)]


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "nodelifecycle", default_not_ready_toleration_seconds=2,
                               default_unreachable_toleration_seconds=2) as api:
        yield api


@pytest.fixture(scope="module")
def client(plane):
    with Client(plane.endpoint, timeout=15) as c:
        c.create(core_pb2.Namespace(metadata={"name": "life"}))
        yield c


@pytest.fixture(scope="module")
def hollow(client):
    nodes = HollowNodes(client, NODES, ready_delay=0.1, heartbeat_interval=0.3,
                        status_report_interval=1.0, max_grace=0.2)
    nodes.start()
    assert nodes.wait_registered(30)
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def controller(client, hollow):
    factory = SharedInformerFactory(client)
    c = NodeLifecycleController(client, factory, node_monitor_grace_period=GRACE, monitor_period=0.5)
    factory.start()
    c.start()
    yield c
    c.stop()
    factory.stop()


def node_state(client, name):
    node = client.get("nodes", name, "")
    ready = next((c for c in node.status.conditions if c.type == "Ready"), None)
    taints = {(t.key, t.effect) for t in node.spec.taints}
    return (ready.status if ready else "", ready.reason if ready else ""), taints


def pod(name, node, tolerations=()):
    p = core_pb2.Pod()
    p.metadata.name = name
    p.metadata.namespace = "life"
    p.spec.containers.add(name="main", image="nginx:1.25")
    p.spec.node_name = node
    for t in tolerations:
        p.spec.tolerations.add(**t)
    return p


def running_and_ready(client, name):
    p = client.get("pods", name, "life")
    return p.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in p.status.conditions)


@pytest.mark.process
def test_live_nodes_stay_ready_and_untainted(client, controller):
    time.sleep(GRACE + 1)  # a whole grace period must pass without a false alarm
    for name in NODES:
        (status, _), taints = node_state(client, name)
        assert status == "True"
        assert not taints & {(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")}


@pytest.mark.process
def test_silent_node_is_tainted_its_pods_evicted_and_it_recovers(client, hollow, controller):
    dying = NODES[1]
    client.create(pod("default-tol", dying))  # the apiserver's 2 s default toleration
    client.create(pod("forever", dying, [dict(key=UNREACHABLE, operator="Exists", effect="NoExecute")]))
    client.create(pod("bystander", NODES[2]))
    for name in ("default-tol", "forever", "bystander"):
        wait_until(lambda name=name: running_and_ready(client, name), timeout=20, what=f"{name} ready")

    hollow.stop_node(dying)
    stopped = time.monotonic()
    wait_until(lambda: node_state(client, dying) == (
        ("Unknown", "NodeStatusUnknown"), {(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")}),
        timeout=GRACE + 10, what="the node Unknown and tainted unreachable")
    assert time.monotonic() - stopped >= GRACE - 0.5  # not before its grace period
    # its pods are marked not ready at once, evicted when their toleration runs out
    wait_until(lambda: not running_and_ready(client, "forever"), timeout=10, what="pods marked NotReady")
    wait_until(lambda: client.get("pods", "default-tol", "life").metadata.deletion_timestamp,
               timeout=10, what="eviction after the 2 s toleration")
    assert not client.get("pods", "forever", "life").metadata.deletion_timestamp
    assert not client.get("pods", "bystander", "life").metadata.deletion_timestamp
    assert running_and_ready(client, "bystander")
    assert controller.evictions >= 1

    hollow.start_node(dying)
    wait_until(lambda: node_state(client, dying) == (("True", "KubeletReady"), set()), timeout=15,
               what="the node Ready and untainted again")
    # the restarted kubelet finishes the eviction and makes its pod ready again
    wait_until(lambda: running_and_ready(client, "forever"), timeout=15, what="the surviving pod ready")
    wait_until(lambda: "default-tol" not in {p.metadata.name for p in client.list("pods", "life").items},
               timeout=15, what="the evicted pod deleted by its kubelet")


@pytest.mark.process
def test_not_tolerated_noexecute_taint_evicts_at_once(client, hollow, controller):
    name = NODES[3]
    client.create(pod("plain", name))
    client.create(pod("tolerant", name, [dict(key="dedicated", operator="Equal", value="gpu",
                                              effect="NoExecute")]))
    for p in ("plain", "tolerant"):
        wait_until(lambda p=p: running_and_ready(client, p), timeout=20, what=f"{p} ready")

    def add_taint():
        node = client.get("nodes", name, "")
        node.spec.taints.add(key="dedicated", value="gpu", effect="NoExecute", time_added=now_rfc3339())
        try:
            return client.update(node)
        except ApiError as e:  # the kubelet's status write came first
            if e.reason != "Conflict":
                raise
            return None

    wait_until(add_taint, timeout=10, what="the taint added")
    wait_until(lambda: client.get("pods", "plain", "life").metadata.deletion_timestamp, timeout=10,
               what="the untolerating pod evicted")
    time.sleep(1.0)  # the tolerating pod must not follow
    assert not client.get("pods", "tolerant", "life").metadata.deletion_timestamp
    # the controller leaves taints it does not own alone
    assert ("dedicated", "NoExecute") in node_state(client, name)[1]


@pytest.mark.process
def test_node_reporting_not_ready_gets_not_ready_then_unreachable(client, controller):
    node = core_pb2.Node()
    node.metadata.name = "manual"
    node.status.capacity.update({"cpu": "1", "memory": "1Gi", "pods": "10"})
    node.status.conditions.add(type="Ready", status="False", reason="KubeletNotReady",
                               last_heartbeat_time=now_rfc3339(), last_transition_time=now_rfc3339())
    client.create(node)
    wait_until(lambda: node_state(client, "manual")[1] == {(NOT_READY, "NoExecute"), (NOT_READY, "NoSchedule")},
               timeout=10, what="not-ready taints")
    # nobody heartbeats it: after the grace period it is unreachable instead
    wait_until(lambda: node_state(client, "manual") == (
        ("Unknown", "NodeStatusUnknown"), {(UNREACHABLE, "NoExecute"), (UNREACHABLE, "NoSchedule")}),
        timeout=GRACE + 10, what="unreachable taints")


# ---- pure parts ----

def taint(key, effect="NoExecute", added=""):
    return core_pb2.Taint(key=key, effect=effect, time_added=added)


def tolerating(*tolerations):
    p = core_pb2.Pod()
    for t in tolerations:
        p.spec.tolerations.add(**t)
    return p


def test_eviction_time():
    added = "2024-01-01T00:00:00Z"
    t0 = 1704067200.0
    unreachable = taint(UNREACHABLE, added=added)
    assert eviction_time(tolerating(), [unreachable], first_seen=0) == -math.inf
    p = tolerating(dict(key=UNREACHABLE, operator="Exists", effect="NoExecute", toleration_seconds=30))
    assert eviction_time(p, [unreachable], first_seen=0) == t0 + 30
    # the smallest of several matching tolerations wins; one without seconds does not extend it
    p = tolerating(dict(key=UNREACHABLE, operator="Exists", effect="NoExecute", toleration_seconds=30),
                   dict(operator="Exists", toleration_seconds=10),
                   dict(key=UNREACHABLE, operator="Exists"))
    assert eviction_time(p, [unreachable], first_seen=0) == t0 + 10
    p = tolerating(dict(key=UNREACHABLE, operator="Exists"))
    assert eviction_time(p, [unreachable], first_seen=0) == math.inf
    # every taint must be tolerated; the earliest deadline counts
    p = tolerating(dict(key=UNREACHABLE, operator="Exists", toleration_seconds=50))
    assert eviction_time(p, [unreachable, taint("other", added=added)], first_seen=0) == -math.inf
    p = tolerating(dict(key=UNREACHABLE, operator="Exists", toleration_seconds=50),
                   dict(key="other", operator="Exists", toleration_seconds=5))
    assert eviction_time(p, [unreachable, taint("other")], first_seen=t0 + 100) == t0 + 50
    # negative seconds mean at once
    p = tolerating(dict(key=UNREACHABLE, operator="Exists", toleration_seconds=-5))
    assert eviction_time(p, [unreachable], first_seen=0) == t0


def test_wanted_taint_keys():
    n = core_pb2.Node()
    assert wanted_taint_keys(n) == set()
    c = n.status.conditions.add(type="Ready", status="True")
    assert wanted_taint_keys(n) == set()
    c.status = "False"
    assert wanted_taint_keys(n) == {NOT_READY}
    c.status = "Unknown"
    assert wanted_taint_keys(n) == {UNREACHABLE}


def test_token_bucket():
    bucket = TokenBucket(qps=1.0, burst=2)
    assert bucket.take() == 0 and bucket.take() == 0
    wait = bucket.take()
    assert 0 < wait <= 1.0


class RecordingClient:
    def __init__(self):
        self.deleted = []

    def delete(self, kind, name, namespace, **kw):
        self.deleted.append((kind, namespace, name))


def cached_node(name, ready, taints=()):
    n = core_pb2.Node(metadata={"name": name})
    n.status.conditions.add(type="Ready", status=ready)
    n.spec.taints.extend(taints)
    return n


def test_evictions_pause_while_no_node_is_ready():
    client = RecordingClient()
    c = NodeLifecycleController(client, SharedInformerFactory(client), eviction_qps=100)
    c.nodes.store.put(cached_node("dark", "Unknown", [taint(UNREACHABLE, added="2024-01-01T00:00:00Z")]))
    p = core_pb2.Pod(metadata={"name": "p", "namespace": "default"})
    p.spec.node_name = "dark"
    c.pods.store.put(p)
    c.sync_pod("default/p")
    assert client.deleted == []  # every node down: more likely our fault than theirs
    c.nodes.store.put(cached_node("lit", "True"))
    c.sync_pod("default/p")
    assert client.deleted == [("pods", "default", "p")]
    c.stop()
