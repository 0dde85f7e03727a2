"""A real node's registration and heartbeats (node/kubelet/nodeagent.py) against a
real etcdlite member and apiserver process: capacity (given or the machine's),
the Lease renewed, Ready following the runtime's readiness, a restarted agent
taking its Node back."""

from __future__ import annotations

import os

import pytest

from apiserver.client import Client
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite
from node.kubelet.nodeagent import LEASE_NAMESPACE, NodeAgent, machine_capacity

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "nodeagent") as api, Client(api.endpoint, timeout=15) as c:
        yield c


def ready_of(node):
    return next(((c.status, c.reason, c.message) for c in node.status.conditions if c.type == "Ready"), None)


def test_machine_capacity_is_this_machine():
    cap = machine_capacity("/")
    assert cap["cpu"] == str(os.cpu_count())
    assert cap["memory"].endswith("Ki") and int(cap["memory"][:-2]) > 0
    assert int(cap["ephemeral-storage"]) > 0 and cap["pods"] == "110"


def test_register_heartbeat_and_readiness(client):
    state = {"ready": (True, "")}
    agent = NodeAgent(client, "real-0", node_ip="10.250.0.1", pod_cidr="10.244.0.0/24",
                      capacity={"cpu": "2", "memory": "4Gi", "pods": "30"}, labels={"plane": "real"},
                      runtime_version="ours://0.1", ready=lambda: state["ready"],
                      heartbeat_interval=0.3, status_interval=30).start()
    try:
        assert wait_until(lambda: _get(client, "nodes", "real-0", ""), timeout=20)
        node = client.get("nodes", "real-0", "")
        assert dict(node.status.capacity) == {"cpu": "2", "memory": "4Gi", "pods": "30"}
        assert node.spec.pod_cidr == "10.244.0.0/24"
        assert {(a.type, a.address) for a in node.status.addresses} == {("InternalIP", "10.250.0.1"),
                                                                         ("Hostname", "real-0")}
        assert node.status.node_info.container_runtime_version == "ours://0.1"
        assert node.metadata.labels["plane"] == "real"
        assert ready_of(node)[:2] == ("True", "KubeletReady")
        # the Lease comes from its own loop, as the kubelet's lease controller: not always before Ready
        lease = wait_until(lambda: _get(client, "leases", "real-0", LEASE_NAMESPACE), timeout=20)
        first = lease.spec.renew_time
        assert wait_until(lambda: client.get("leases", "real-0", LEASE_NAMESPACE).spec.renew_time != first,
                          timeout=10)
        # the runtime goes down: the node says NotReady at once, not at the next status period
        state["ready"] = (False, "container runtime is down: UNAVAILABLE")
        assert wait_until(lambda: ready_of(client.get("nodes", "real-0", ""))[0] == "False", timeout=10)
        assert ready_of(client.get("nodes", "real-0", "")) == \
            ("False", "KubeletNotReady", "container runtime is down: UNAVAILABLE")
        state["ready"] = (True, "")
        assert wait_until(lambda: ready_of(client.get("nodes", "real-0", ""))[0] == "True", timeout=10)
    finally:
        agent.stop()
    # a restarted kubelet: the Node is there; it is taken back, not recreated
    uid = client.get("nodes", "real-0", "").metadata.uid
    again = NodeAgent(client, "real-0", node_ip="10.250.0.1", capacity={"cpu": "4", "memory": "4Gi", "pods": "30"},
                      heartbeat_interval=0.3)
    again.register()
    node = client.get("nodes", "real-0", "")
    assert node.metadata.uid == uid == again.uid
    assert dict(node.status.capacity)["cpu"] == "4"


def _get(client, kind, name, ns):
    from apiserver.errors import ApiError
    try:
        return client.get(kind, name, ns)
    except ApiError:
        return None
