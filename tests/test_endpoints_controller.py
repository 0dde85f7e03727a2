"""The endpoints controller against a real etcdlite member and apiserver. Pod
statuses are written by the test (no kubelet), so readiness is under its
control: Endpoints follow readiness, labels, deletion, named and numbered
target ports, selector changes and the Service's own deletion."""

from __future__ import annotations

import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from controllers.endpoints import EndpointsController, endpoint_subsets, resolve_target_port
from controllers.informer import SharedInformerFactory
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite

NS = "ep"


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "endpoints") as api:
        yield api


@pytest.fixture(scope="module")
def client(plane):
    with Client(plane.endpoint, timeout=15) as c:
        c.create(core_pb2.Namespace(metadata={"name": NS}))
        yield c


@pytest.fixture(scope="module")
def controller(client):
    factory = SharedInformerFactory(client)
    c = EndpointsController(client, factory)
    factory.start()
    c.start()
    yield c
    c.stop()
    factory.stop()


def pod_object(name, labels, *, http_port=8080, node="n1"):
    p = core_pb2.Pod()
    p.metadata.name = name
    p.metadata.namespace = NS
    p.metadata.labels.update(labels)
    c = p.spec.containers.add(name="main", image="nginx:1.25")
    if http_port:
        c.ports.add(name="http", container_port=http_port)
    p.spec.node_name = node
    return p


def set_status(client, name, ip, ready):
    p = client.get("pods", name, NS)
    p.status.phase = "Running"
    p.status.pod_ip = ip
    del p.status.conditions[:]
    p.status.conditions.add(type="Ready", status="True" if ready else "False")
    return client.update_status(p)


def service(client, name, selector, ports=(("http", 80, "http"), ("metrics", 9090, "9100"))):
    s = core_pb2.Service()
    s.metadata.name = name
    s.metadata.namespace = NS
    s.metadata.labels["tier"] = "front"
    s.spec.selector.update(selector)
    for port_name, port, target in ports:
        s.spec.ports.add(name=port_name, port=port, target_port=target)
    return client.create(s)


def endpoints_view(client, name):
    """{ports: (ready [(ip, pod, node)], not ready [...])} of the Endpoints, or None."""
    try:
        ep = client.get("endpoints", name, NS)
    except ApiError as e:
        if e.reason == "NotFound":
            return None
        raise
    out = {}
    for s in ep.subsets:
        ports = tuple(sorted((p.name, p.port, p.protocol) for p in s.ports))
        out[ports] = ([(a.ip, a.target_ref.name, a.node_name) for a in s.addresses],
                      [(a.ip, a.target_ref.name, a.node_name) for a in s.not_ready_addresses])
    return out


BOTH = (("http", 8080, "TCP"), ("metrics", 9100, "TCP"))


@pytest.mark.process
def test_endpoints_follow_pod_readiness(client, controller):
    service(client, "web", {"app": "web"})
    wait_until(lambda: endpoints_view(client, "web") == {}, timeout=10, what="empty endpoints")
    assert client.get("endpoints", "web", NS).metadata.labels["tier"] == "front"
    for i in range(3):
        client.create(pod_object(f"web-{i}", {"app": "web"}))
    client.create(pod_object("other", {"app": "db"}))
    set_status(client, "other", "10.0.0.99", True)
    set_status(client, "web-0", "10.0.0.10", True)
    set_status(client, "web-1", "10.0.0.11", False)
    # web-2 has no IP yet: not listed at all
    wait_until(lambda: endpoints_view(client, "web") == {
        BOTH: ([("10.0.0.10", "web-0", "n1")], [("10.0.0.11", "web-1", "n1")])}, timeout=10,
        what="one ready, one not ready")
    ep = client.get("endpoints", "web", NS)
    assert ep.subsets[0].addresses[0].target_ref.kind == "Pod"
    assert ep.subsets[0].addresses[0].target_ref.uid == client.get("pods", "web-0", NS).metadata.uid

    set_status(client, "web-1", "10.0.0.11", True)
    set_status(client, "web-2", "10.0.0.12", True)
    wait_until(lambda: endpoints_view(client, "web") == {
        BOTH: ([("10.0.0.10", "web-0", "n1"), ("10.0.0.11", "web-1", "n1"), ("10.0.0.12", "web-2", "n1")], [])},
        timeout=10, what="all ready")

    set_status(client, "web-0", "10.0.0.10", False)
    wait_until(lambda: endpoints_view(client, "web") == {
        BOTH: ([("10.0.0.11", "web-1", "n1"), ("10.0.0.12", "web-2", "n1")], [("10.0.0.10", "web-0", "n1")])},
        timeout=10, what="web-0 not ready")

    # relabelled away, deleted (graceful, so only terminating: it leaves at once too)
    client.patch("pods", "web-1", {"metadata": {"labels": {"app": "moved"}}}, NS)
    client.delete("pods", "web-2", NS)
    assert client.get("pods", "web-2", NS).metadata.deletion_timestamp
    wait_until(lambda: endpoints_view(client, "web") == {BOTH: ([], [("10.0.0.10", "web-0", "n1")])},
               timeout=10, what="relabelled and terminating pods gone")


@pytest.mark.process
def test_named_ports_resolve_per_pod(client, controller):
    service(client, "named", {"app": "named"})
    client.create(pod_object("named-a", {"app": "named"}, http_port=8080))
    client.create(pod_object("named-b", {"app": "named"}, http_port=9000))
    client.create(pod_object("named-c", {"app": "named"}, http_port=0))  # no "http" port
    set_status(client, "named-a", "10.0.1.1", True)
    set_status(client, "named-b", "10.0.1.2", True)
    set_status(client, "named-c", "10.0.1.3", True)
    wait_until(lambda: endpoints_view(client, "named") == {
        (("http", 8080, "TCP"), ("metrics", 9100, "TCP")): ([("10.0.1.1", "named-a", "n1")], []),
        (("http", 9000, "TCP"), ("metrics", 9100, "TCP")): ([("10.0.1.2", "named-b", "n1")], []),
        (("metrics", 9100, "TCP"),): ([("10.0.1.3", "named-c", "n1")], []),
    }, timeout=10, what="one subset per port set")


@pytest.mark.process
def test_selector_change_and_service_deletion(client, controller):
    service(client, "sel", {"app": "blue"}, ports=(("", 80, ""),))
    client.create(pod_object("blue", {"app": "blue"}))
    client.create(pod_object("green", {"app": "green"}))
    set_status(client, "blue", "10.0.2.1", True)
    set_status(client, "green", "10.0.2.2", True)
    wait_until(lambda: endpoints_view(client, "sel") == {(("", 80, "TCP"),): ([("10.0.2.1", "blue", "n1")], [])},
               timeout=10, what="blue selected")
    client.patch("services", "sel", {"spec": {"selector": {"app": "green"}}}, NS)
    wait_until(lambda: endpoints_view(client, "sel") == {(("", 80, "TCP"),): ([("10.0.2.2", "green", "n1")], [])},
               timeout=10, what="green selected")
    # hand edits to managed endpoints are put back
    def clear():
        ep = client.get("endpoints", "sel", NS)
        del ep.subsets[:]
        try:
            return client.update(ep)
        except ApiError as e:
            if e.reason != "Conflict":
                raise
            return None

    wait_until(clear, timeout=10, what="the endpoints cleared by hand")
    wait_until(lambda: endpoints_view(client, "sel") == {(("", 80, "TCP"),): ([("10.0.2.2", "green", "n1")], [])},
               timeout=10, what="endpoints restored")
    client.delete("services", "sel", NS)
    wait_until(lambda: endpoints_view(client, "sel") is None, timeout=10, what="endpoints deleted")


@pytest.mark.process
def test_service_without_selector_is_left_alone(client, controller):
    s = core_pb2.Service(metadata={"name": "manual", "namespace": NS})
    s.spec.ports.add(port=5432)
    client.create(s)
    ep = core_pb2.Endpoints(metadata={"name": "manual", "namespace": NS})
    subset = ep.subsets.add()
    subset.addresses.add(ip="192.168.1.5")
    subset.ports.add(port=5432)
    client.create(ep)
    # a change that wakes the controller for every service of the namespace
    client.create(pod_object("wake", {"app": "x"}))
    set_status(client, "wake", "10.0.3.1", True)
    service(client, "probe", {"app": "x"}, ports=(("", 80, ""),))
    wait_until(lambda: endpoints_view(client, "probe"), timeout=10, what="the probe service handled")
    assert endpoints_view(client, "manual") == {(("", 5432, "TCP"),): ([("192.168.1.5", "", "")], [])}


# ---- pure parts ----

def test_resolve_target_port():
    p = pod_object("p", {}, http_port=8080)
    p.spec.containers[0].ports.add(name="dns", container_port=53, protocol="UDP")
    assert resolve_target_port(core_pb2.ServicePort(port=80), p) == 80
    assert resolve_target_port(core_pb2.ServicePort(port=80, target_port="8443"), p) == 8443
    assert resolve_target_port(core_pb2.ServicePort(port=80, target_port="http"), p) == 8080
    assert resolve_target_port(core_pb2.ServicePort(port=53, target_port="dns"), p) is None  # TCP by default
    assert resolve_target_port(core_pb2.ServicePort(port=53, target_port="dns", protocol="UDP"), p) == 53


def test_subsets_skip_finished_and_unaddressed_pods():
    svc = core_pb2.Service(metadata={"name": "s"})
    svc.spec.ports.add(port=80)
    pods = []
    for name, ip, phase in (("ok", "10.1.0.2", "Running"), ("done", "10.1.0.3", "Succeeded"),
                            ("noip", "", "Running"), ("ok2", "10.1.0.1", "Running")):
        p = pod_object(name, {})
        p.status.pod_ip, p.status.phase = ip, phase
        p.status.conditions.add(type="Ready", status="True")
        pods.append(p)
    [subset] = endpoint_subsets(svc, pods)
    assert [a.ip for a in subset.addresses] == ["10.1.0.1", "10.1.0.2"]
    assert [(p.port, p.protocol) for p in subset.ports] == [(80, "TCP")]
    # no ports: addresses only, as Kubernetes does for a headless service without ports
    assert [a.ip for a in endpoint_subsets(core_pb2.Service(), pods)[0].addresses] == ["10.1.0.1", "10.1.0.2"]
