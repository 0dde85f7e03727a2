"""The cloud's parts that decide without processes: the load balancer's nftables table, the
API's routing and errors, providerIDs, the kubelet's registration taint, and the autoscaler's
scale-up and scale-down decisions on caches filled by hand (a fake cloud records the calls)."""

from __future__ import annotations

import pytest

from apiserver.pb import core_pb2
from cloud.autoscaler import Autoscaler
from cloud.ccm import SHUTDOWN_TAINT, UNINITIALIZED_TAINT, CloudNodeLifecycleController, find_instance, lb_name, lb_node
from cloud.loadbalancer import LoadBalancer, render_rules as render_lb_rules
from cloud.provider import INSTANCE_TYPES, CloudError, instance_id_of, provider_id
from cloud.server import route
from controllers.informer import Store
from node.kubelet.nodeagent import NodeAgent


def test_lb_rules_pick_a_node_at_random_and_masquerade():
    lb = LoadBalancer("a1", "10.250.254.1", [{"protocol": "TCP", "port": 80, "nodePort": 30080},
                                             {"protocol": "UDP", "port": 53, "nodePort": 30053}],
                      ["10.250.0.1", "10.250.0.2"])
    script = render_lb_rules([lb])
    assert script.startswith("add table ip cloud-lb\ndelete table ip cloud-lb\n")  # one transaction
    assert "ip daddr 10.250.254.1 tcp dport 80 goto lb0p0" in script
    assert "ip daddr 10.250.254.1 udp dport 53 goto lb0p1" in script
    assert "numgen random mod 2 vmap { 0 : goto lb0p0n0, 1 : goto lb0p0n1 }" in script
    assert "meta l4proto tcp dnat to 10.250.0.2:30080" in script
    assert "meta l4proto udp dnat to 10.250.0.1:30053" in script
    assert "ct status dnat masquerade" in script


def test_lb_without_nodes_has_no_rule():
    script = render_lb_rules([LoadBalancer("a1", "10.250.254.1", [{"protocol": "TCP", "port": 80,
                                                                   "nodePort": 30080}], [])])
    assert "10.250.254.1" not in script and "dnat to" not in script


def test_provider_id_round_trip_and_foreign_ids():
    assert provider_id("local-1a", "i-0123abcd") == "local:///local-1a/i-0123abcd"
    assert instance_id_of("local:///local-1a/i-0123abcd") == "i-0123abcd"
    assert instance_id_of("aws:///us-east-1a/i-0123") == ""
    assert instance_id_of("") == ""


class _NoCloud:
    """What route() may call on a cloud for these requests: nothing that changes it."""

    groups: dict = {}

    def get_instance(self, id_):
        raise CloudError(404, f"instance {id_} not found")


@pytest.mark.parametrize("method,path,body,status,text", [
    ("GET", "/instances", {}, 404, "under /v1"),
    ("GET", "/v1/instances/i-x", {}, 404, "instance i-x not found"),
    ("POST", "/v1/nodegroups", {"name": "Bad_Name", "min": 0, "max": 1, "type": "small"}, 400, "bad node group name"),
    ("POST", "/v1/nodegroups", {"name": "g", "min": "0", "max": 1, "type": "small"}, 400, "'min' (int)"),
    ("PATCH", "/v1/routes", {}, 405, "no PATCH"),
])
def test_api_errors(method, path, body, status, text):
    with pytest.raises(CloudError) as e:
        route(_NoCloud(), method, path, body)
    assert e.value.status == status and text in str(e.value)


def test_kubelet_registers_with_the_cloud_taint():
    agent = NodeAgent(None, "n1", node_ip="10.250.0.2", capacity={"cpu": "1", "memory": "1Gi", "pods": "16"},
                      register_taints=[(UNINITIALIZED_TAINT, "true", "NoSchedule")])
    node = agent.node_object()
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [(UNINITIALIZED_TAINT, "true", "NoSchedule")]
    assert not NodeAgent(None, "n1", node_ip="10.250.0.2", capacity={"cpu": "1"}).node_object().spec.taints


def _node(name: str, cpu: str = "1", ready: bool = True, taints=()) -> core_pb2.Node:
    n = core_pb2.Node()
    n.metadata.name = name
    n.status.allocatable.update({"cpu": cpu, "memory": "1Gi", "pods": "16"})
    n.status.conditions.add(type="Ready", status="True" if ready else "False")
    for key in taints:
        n.spec.taints.add(key=key, effect="NoSchedule")
    return n


def _pod(name: str, cpu: str, node: str = "", pending: bool = False, owned: bool = True) -> core_pb2.Pod:
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace, p.metadata.uid = name, "default", f"uid-{name}"
    p.metadata.creation_timestamp = f"2026-01-01T00:00:0{len(name) % 10}Z"
    if owned:
        p.metadata.owner_references.add(api_version="apps/v1", kind="ReplicaSet", name="rs", uid="rs1",
                                        controller=True)
    c = p.spec.containers.add(name="c", image="busybox")
    c.resources.requests["cpu"] = cpu
    p.spec.node_name = node
    p.status.phase = "Running" if node else "Pending"
    if pending:
        p.status.conditions.add(type="PodScheduled", status="False", reason="Unschedulable")
    return p


class _Informers:
    def __init__(self, nodes, pods) -> None:
        self.stores = {"nodes": Store(), "pods": Store()}
        for obj in nodes:
            self.stores["nodes"].put(obj)
        for obj in pods:
            self.stores["pods"].put(obj)

    def informer(self, name):
        return type("I", (), {"store": self.stores[name]})()


class _Cloud:
    def __init__(self, groups, instances) -> None:
        self.groups, self._instances, self.calls = groups, instances, []

    def metadata(self):
        return {"instanceTypes": INSTANCE_TYPES}

    def node_groups(self):
        return self.groups

    def instances(self):
        return self._instances

    def increase_size(self, name, delta):
        self.calls.append(("increase", name, delta))

    def delete_group_instances(self, name, ids):
        self.calls.append(("delete", name, list(ids)))


class _Recorder:
    def __init__(self) -> None:
        self.events = []

    def event(self, obj, type_, reason, message):
        self.events.append((obj.metadata.name, reason, message))


def _scaler(nodes, pods, groups, instances, **kw):
    cloud, rec = _Cloud(groups, instances), _Recorder()
    return Autoscaler(None, cloud, _Informers(nodes, pods), rec, **kw), cloud, rec


GROUP = {"name": "pool", "min": 1, "max": 3, "type": "small", "targetSize": 1}
INST = [{"name": "n0", "group": "pool", "id": "i-0", "state": "running", "launchTime": 0.0}]


def test_scale_up_for_pods_that_fit_a_new_node_only():
    pods = [_pod("a", "900m", "n0"), _pod("p1", "400m", pending=True), _pod("p2", "400m", pending=True),
            _pod("p3", "400m", pending=True)]
    scaler, cloud, rec = _scaler([_node("n0")], pods, [dict(GROUP)], INST)
    scaler.run_once()
    assert cloud.calls == [("increase", "pool", 2)]  # 2 x 400m per 1-cpu node: 3 pods, 2 nodes
    assert sorted(e[0] for e in rec.events if e[1] == "TriggeredScaleUp") == ["p1", "p2", "p3"]


def test_no_scale_up_when_the_pods_fit_existing_or_upcoming_nodes():
    pods = [_pod("p1", "400m", pending=True)]
    scaler, cloud, _ = _scaler([_node("n0")], pods, [dict(GROUP)], INST)
    scaler.run_once()  # fits n0: the scheduler has not retried yet
    assert cloud.calls == []
    full = [_pod("a", "900m", "n0"), _pod("p1", "400m", pending=True)]
    scaler, cloud, _ = _scaler([_node("n0")], full, [dict(GROUP, targetSize=2)], INST)
    scaler.run_once()  # the group's second node is on its way
    assert cloud.calls == []


def test_pods_no_group_can_take_get_an_event_and_no_scale_up():
    pods = [_pod("huge", "2", pending=True)]
    scaler, cloud, rec = _scaler([_node("n0")], pods, [dict(GROUP)], INST)
    scaler.run_once()
    assert cloud.calls == []
    assert [e[1] for e in rec.events] == ["NotTriggerScaleUp"]


def test_scale_down_waits_for_the_unneeded_time_and_keeps_the_minimum():
    nodes = [_node("n0"), _node("n1")]
    insts = [dict(INST[0]), dict(INST[0], name="n1", id="i-1")]
    pods = [_pod("a", "200m", "n0"), _pod("b", "200m", "n1")]
    scaler, _, _ = _scaler(nodes, pods, [dict(GROUP, targetSize=2)], insts, unneeded_time=100.0)
    drained = []
    scaler._drain_and_delete = lambda node, inst: drained.append(node.metadata.name)
    scaler.run_once()
    assert len(scaler.unneeded_since) == 1  # min 1: only one of the two may go
    assert drained == []
    first = next(iter(scaler.unneeded_since))
    scaler.unneeded_since[first] -= 101
    scaler.run_once()
    scaler._draining.join(5)
    assert drained == [first]


def test_a_pod_without_a_controller_blocks_scale_down():
    nodes = [_node("n0"), _node("n1")]
    insts = [dict(INST[0]), dict(INST[0], name="n1", id="i-1")]
    pods = [_pod("a", "200m", "n0", owned=False), _pod("b", "600m", "n1")]
    scaler, _, _ = _scaler(nodes, pods, [dict(GROUP, targetSize=2)], insts, unneeded_time=0.0)
    scaler._drain_and_delete = lambda node, inst: None
    scaler.run_once()
    assert list(scaler.unneeded_since) in ([], ["n1"]) and "n0" not in scaler.unneeded_since


def test_ccm_helpers():
    svc = core_pb2.Service()
    svc.metadata.uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert lb_name(svc) == "a0f1e2d3c4b5a69788796a5b4c3d2e1f"  # 32 characters, as k8s.io/cloud-provider's
    ok = _node("n0")
    ok.status.addresses.add(type="InternalIP", address="10.250.0.1")
    assert lb_node(ok)
    assert not lb_node(_node("n1", ready=False))
    tainted = _node("n2", taints=[UNINITIALIZED_TAINT])
    tainted.status.addresses.add(type="InternalIP", address="10.250.0.3")
    assert not lb_node(tainted)
    insts = [{"id": "i-1", "name": "node-1"}, {"id": "i-2", "name": "node-2"}]
    by_id = _node("node-1")
    by_id.spec.provider_id = "local:///local-1a/i-2"
    assert find_instance(insts, by_id)["id"] == "i-2"  # the providerID wins over the name
    assert find_instance(insts, _node("node-1"))["id"] == "i-1"
    assert find_instance(insts, _node("node-9")) is None


class _Api:
    """A client holding nodes by name: get, update, delete (recorded)."""

    def __init__(self, nodes) -> None:
        self.nodes = {n.metadata.name: n for n in nodes}
        self.deleted, self.updated = [], []

    def get(self, kind, name, namespace=""):
        return self.nodes[name]

    def update(self, node):
        self.updated.append((node.metadata.name, [t.key for t in node.spec.taints]))
        self.nodes[node.metadata.name] = node
        return node

    def delete(self, kind, name, namespace="", uid=""):
        self.deleted.append(name)


def test_node_lifecycle_deletes_gone_instances_and_taints_stopped_ones():
    gone, stopped, back = _node("gone", ready=False), _node("stopped", ready=False), \
        _node("back", taints=[SHUTDOWN_TAINT])
    insts = [{"id": "i-s", "name": "stopped", "state": "stopped"}, {"id": "i-b", "name": "back", "state": "running"}]
    api = _Api([gone, stopped, back])
    ctl = CloudNodeLifecycleController(api, _Cloud([], insts), _Informers([gone, stopped, back], []), _Recorder(), 1.0)
    ctl.monitor()
    assert api.deleted == ["gone"]
    assert sorted(api.updated) == [("back", []), ("stopped", [SHUTDOWN_TAINT])]


def test_an_instance_that_never_becomes_a_node_is_given_up():
    import time

    insts = [dict(INST[0]), dict(INST[0], name="n1", id="i-1", launchTime=time.time() - 50),
             dict(INST[0], name="n2", id="i-2", launchTime=time.time() - 5)]
    scaler, cloud, _ = _scaler([_node("n0")], [], [dict(GROUP, targetSize=3)], insts, max_provision_time=30.0,
                               scale_down=False)
    scaler.run_once()
    assert cloud.calls == [("delete", "pool", ["i-1"])]  # n0 is Ready, n2 is still young
