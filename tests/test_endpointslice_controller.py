"""The EndpointSlice controller: the reconciler's pure rules first (slices of at
most 100, few slices touched per change, a placeholder for no endpoints, the
ready/serving/terminating conditions), then the controller against a real
etcdlite member and apiserver, with hollow kubelets taking 250 pods to Running
and Ready, and pods on a node nobody plays whose status the test writes
(readiness, termination under a finalizer, publishNotReadyAddresses)."""

from __future__ import annotations

import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2, discovery_pb2
from controllers.endpointslice import EndpointSliceController
from controllers.endpointslicemirroring import (
    MIRRORING_CONTROLLER_NAME,
    EndpointSliceMirroringController,
    desired_from_endpoints,
)
from controllers.endpointslice_reconciler import (
    CONTROLLER_NAME,
    Changes,
    desired_endpoints,
    endpoint_of,
    reconcile,
)
from controllers.informer import SharedInformerFactory
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite
from node.kubelet.hollow import HollowNodes

NS = "eps"
NODES = ["eps-node-0", "eps-node-1", "eps-node-2"]
HOLD = "test.example.com/hold"


# ---- pure parts ----

def make_service(name="web", ports=(("http", 80, "http"),), publish_not_ready=False):
    s = core_pb2.Service()
    s.metadata.name, s.metadata.namespace = name, NS
    s.spec.selector["app"] = name
    for port_name, port, target in ports:
        s.spec.ports.add(name=port_name, port=port, target_port=target, protocol="TCP")
    s.spec.publish_not_ready_addresses = publish_not_ready
    return s


def make_pod(name, ip, *, ready=True, terminating=False, node="n1", app="web", http_port=8080):
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace, p.metadata.uid = name, NS, f"uid-{name}"
    p.metadata.labels["app"] = app
    c = p.spec.containers.add(name="main", image="nginx")
    c.ports.add(name="http", container_port=http_port)
    p.spec.node_name = node
    p.status.phase, p.status.pod_ip = "Running", ip
    p.status.conditions.add(type="Ready", status="True" if ready else "False")
    if terminating:
        p.metadata.deletion_timestamp = "2026-01-01T00:00:00Z"
    return p


def new_slice():
    return discovery_pb2.EndpointSlice(address_type="IPv4")


def apply(existing, changes: Changes):
    """The slices after ``changes`` (created ones get names)."""
    gone = {s.metadata.name for s in changes.delete}
    updated = {s.metadata.name: s for s in changes.update}
    out = [updated.get(s.metadata.name, s) for s in existing if s.metadata.name not in gone]
    for i, s in enumerate(changes.create):
        s.metadata.name = f"new-{len(existing)}-{i}"
        out.append(s)
    return out


def test_conditions_follow_readiness_termination_and_publish_not_ready():
    svc = make_service()
    cases = [  # (ready, terminating, publish) -> (ready, serving, terminating)
        ((True, False, False), (True, True, False)),
        ((False, False, False), (False, False, False)),
        ((True, True, False), (False, True, True)),
        ((False, True, False), (False, False, True)),
        ((False, False, True), (True, False, False)),
        ((True, True, True), (True, True, True)),
    ]
    for (ready, terminating, publish), want in cases:
        svc.spec.publish_not_ready_addresses = publish
        ep = endpoint_of(svc, make_pod("p", "10.0.0.1", ready=ready, terminating=terminating))
        c = ep.conditions
        assert (c.ready, c.serving, c.terminating) == want, (ready, terminating, publish)
        assert list(ep.addresses) == ["10.0.0.1"] and ep.target_ref.name == "p" and ep.node_name == "n1"


def test_pods_group_by_resolved_ports_and_unaddressed_or_finished_pods_are_left_out():
    svc = make_service()
    pods = [make_pod("a", "10.0.0.1"), make_pod("b", "10.0.0.2", http_port=9090),
            make_pod("noip", ""), make_pod("done", "10.0.0.4")]
    pods[3].status.phase = "Succeeded"
    groups = desired_endpoints(svc, pods)
    assert {k: [list(e.addresses) for e in v] for k, v in groups.items()} == {
        (("http", 8080, "TCP", None),): [["10.0.0.1"]], (("http", 9090, "TCP", None),): [["10.0.0.2"]]}


def test_slices_hold_at_most_100_and_a_change_touches_few_slices():
    svc = make_service()
    pods = [make_pod(f"p{i:03}", f"10.1.{i // 250}.{i % 250 + 1}") for i in range(250)]
    changes = reconcile([], desired_endpoints(svc, pods), new_slice)
    assert [len(s.endpoints) for s in changes.create] == [100, 100, 50] and not changes.update
    slices = apply([], changes)
    assert not reconcile(slices, desired_endpoints(svc, pods), new_slice)  # level-based: nothing to do
    # 10 pods leave the first slice: only that slice changes
    gone = {e.target_ref.name for e in slices[0].endpoints[:10]}
    fewer = [p for p in pods if p.metadata.name not in gone]
    changes = reconcile(slices, desired_endpoints(svc, fewer), new_slice)
    assert [s.metadata.name for s in changes.update] == [slices[0].metadata.name]
    assert not changes.create and not changes.delete and len(changes.update[0].endpoints) == 90
    slices = apply(slices, changes)
    # 5 new pods go into the slice with room that was just written... or any with room: no new slice
    more = fewer + [make_pod(f"q{i}", f"10.2.0.{i + 1}") for i in range(5)]
    changes = reconcile(slices, desired_endpoints(svc, more), new_slice)
    assert not changes.create and len(changes.update) == 1
    slices = apply(slices, changes)
    assert sum(len(s.endpoints) for s in slices) == 245 and all(len(s.endpoints) <= 100 for s in slices)
    # one pod turns not ready: one slice updated in place
    changed = list(more)
    changed[0] = make_pod(more[0].metadata.name, more[0].status.pod_ip, ready=False)
    changes = reconcile(slices, desired_endpoints(svc, changed), new_slice)
    assert len(changes.update) == 1 and not changes.create and not changes.delete
    # nobody left: one empty placeholder remains
    changes = reconcile(slices, {}, new_slice)
    assert len(changes.delete) == len(slices) and len(changes.create) == 1
    placeholder = apply(slices, changes)
    assert len(placeholder) == 1 and not placeholder[0].endpoints and not placeholder[0].ports
    assert not reconcile(placeholder, {}, new_slice)
    # and when pods come back, the placeholder goes
    changes = reconcile(placeholder, desired_endpoints(svc, pods[:3]), new_slice)
    assert len(changes.create) == 1 and changes.delete == placeholder


# ---- against an apiserver, with hollow kubelets ----

@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "endpointslices") as api:
        yield api


@pytest.fixture(scope="module")
def client(plane):
    with Client(plane.endpoint, timeout=15) as c:
        c.create(core_pb2.Namespace(metadata={"name": NS}))
        yield c


@pytest.fixture(scope="module")
def controller(client):
    factory = SharedInformerFactory(client)
    c = EndpointSliceController(client, factory)
    mirroring = EndpointSliceMirroringController(client, factory)
    hollow = HollowNodes(client, NODES, ready_delay=0.1, heartbeat_interval=1.0, max_grace=0.3).start()
    assert hollow.wait_registered(30)
    factory.start()
    c.start()
    mirroring.start()
    yield c
    mirroring.stop()
    c.stop()
    hollow.stop()
    factory.stop()


def slices_of(client, service):
    return client.list("endpointslices", NS, label_selector=f"kubernetes.io/service-name={service}").items


def view(client, service):
    """{pod name: (ip, ready, serving, terminating, node)} over all the Service's slices."""
    out = {}
    for s in slices_of(client, service):
        for e in s.endpoints:
            c = e.conditions
            out[e.target_ref.name] = (e.addresses[0], c.ready, c.serving, c.terminating, e.node_name)
    return out


def create_pods(client, app, count, node_of, **kw):
    for i in range(count):
        p = core_pb2.Pod()
        p.metadata.name, p.metadata.namespace = f"{app}-{i}", NS
        p.metadata.labels["app"] = app
        c = p.spec.containers.add(name="main", image="nginx")
        c.ports.add(name="http", container_port=8080)
        p.spec.node_name = node_of(i)
        for k, v in kw.items():
            setattr(p.spec, k, v)
        client.create(p)


@pytest.mark.process
def test_250_pods_on_hollow_nodes_fill_three_slices(client, controller):
    svc = client.create(make_service("big"))
    create_pods(client, "big", 250, lambda i: NODES[i % 3])
    wait_until(lambda: len(view(client, "big")) == 250 and all(v[1] for v in view(client, "big").values()),
               timeout=60, what="250 ready endpoints")
    slices = slices_of(client, "big")
    assert sorted(len(s.endpoints) for s in slices) == [50, 100, 100]
    for s in slices:
        assert s.address_type == "IPv4"
        assert s.metadata.labels["endpointslice.kubernetes.io/managed-by"] == CONTROLLER_NAME
        assert s.metadata.name.startswith("big-")
        [owner] = s.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid, owner.controller) == ("Service", "big", svc.metadata.uid, True)
        assert [(p.name, p.port, p.protocol) for p in s.ports] == [("http", 8080, "TCP")]
    by_pod = view(client, "big")
    pods = {p.metadata.name: p for p in client.list("pods", NS, label_selector="app=big").items}
    assert all(by_pod[n][0] == pods[n].status.pod_ip and by_pod[n][4] == pods[n].spec.node_name for n in pods)
    # scale down by 60: the kubelets finish the graceful deletions, the slices shrink, none is duplicated
    for i in range(60):
        client.delete("pods", f"big-{i}", NS)
    wait_until(lambda: len(view(client, "big")) == 190, timeout=60, what="190 endpoints")
    slices = slices_of(client, "big")
    assert sum(len(s.endpoints) for s in slices) == 190 and len(slices) <= 3
    # a slice deleted by hand comes back
    victim = slices[0]
    client.delete("endpointslices", victim.metadata.name, NS)
    wait_until(lambda: len(view(client, "big")) == 190 and victim.metadata.name not in
               [s.metadata.name for s in slices_of(client, "big")], timeout=30, what="slice restored")
    # the Service goes: its slices go
    client.delete("services", "big", NS)
    wait_until(lambda: not slices_of(client, "big"), timeout=30, what="slices deleted")


def set_status(client, name, ip, ready):
    p = client.get("pods", name, NS)
    p.status.phase = "Running"
    p.status.pod_ip = ip
    del p.status.conditions[:]
    p.status.conditions.add(type="Ready", status="True" if ready else "False")
    return client.update_status(p)


@pytest.mark.process
def test_readiness_termination_and_publish_not_ready(client, controller):
    client.create(make_service("term"))
    client.create(make_service("pub", publish_not_ready=True))
    # pods on a node no kubelet plays: the test writes their status
    for name, app in (("term-a", "term"), ("term-b", "term"), ("pub-a", "pub")):
        p = core_pb2.Pod()
        p.metadata.name, p.metadata.namespace = name, NS
        p.metadata.labels["app"] = app
        p.metadata.finalizers.append(HOLD)
        c = p.spec.containers.add(name="main", image="nginx")
        c.ports.add(name="http", container_port=8080)
        p.spec.node_name = "manual"
        client.create(p)
    set_status(client, "term-a", "10.9.0.1", True)
    set_status(client, "term-b", "10.9.0.2", False)
    set_status(client, "pub-a", "10.9.0.3", False)
    wait_until(lambda: view(client, "term") == {"term-a": ("10.9.0.1", True, True, False, "manual"),
                                                "term-b": ("10.9.0.2", False, False, False, "manual")},
               timeout=20, what="ready and not ready")
    wait_until(lambda: view(client, "pub") == {"pub-a": ("10.9.0.3", True, False, False, "manual")},
               timeout=20, what="publishNotReadyAddresses")
    # terminating (graceful deletion held by a finalizer): still listed, serving, not ready
    client.delete("pods", "term-a", NS)
    wait_until(lambda: view(client, "term").get("term-a") == ("10.9.0.1", False, True, True, "manual"),
               timeout=20, what="terminating and serving")
    set_status(client, "term-a", "10.9.0.1", False)
    wait_until(lambda: view(client, "term").get("term-a") == ("10.9.0.1", False, False, True, "manual"),
               timeout=20, what="terminating, not serving")
    for name in ("term-a", "term-b", "pub-a"):
        client.patch("pods", name, {"metadata": {"finalizers": None}}, NS)
        try:
            client.delete("pods", name, NS, grace_period_seconds=0)
        except ApiError as e:
            if e.reason != "NotFound":
                raise
    wait_until(lambda: view(client, "term") == {} and len(slices_of(client, "term")) == 1,
               timeout=20, what="an empty placeholder")
    [placeholder] = slices_of(client, "term")
    assert not placeholder.endpoints and not placeholder.ports


def manual_endpoints(name, ready, not_ready, port=5432, labels=None):
    ep = core_pb2.Endpoints()
    ep.metadata.name, ep.metadata.namespace = name, NS
    ep.metadata.labels.update(labels or {})
    subset = ep.subsets.add()
    for ip in ready:
        subset.addresses.add(ip=ip)
    for ip in not_ready:
        subset.not_ready_addresses.add(ip=ip)
    subset.ports.add(name="db", port=port, protocol="TCP")
    return ep


def test_mirrored_endpoints_keep_readiness_and_ports():
    ep = manual_endpoints("db", ["10.5.0.1", "10.5.0.2"], ["10.5.0.3"])
    [(key, eps)] = desired_from_endpoints(ep).items()
    assert key == (("db", 5432, "TCP", None),)
    assert [(list(e.addresses), e.conditions.ready, e.conditions.HasField("serving")) for e in eps] == [
        (["10.5.0.1"], True, False), (["10.5.0.2"], True, False), (["10.5.0.3"], False, False)]


@pytest.mark.process
def test_endpoints_of_selectorless_services_are_mirrored(client, controller):
    s = core_pb2.Service(metadata={"name": "db", "namespace": NS})
    s.spec.ports.add(name="db", port=5432)
    client.create(s)
    client.create(manual_endpoints("db", ["10.5.0.1", "10.5.0.2"], ["10.5.0.3"], labels={"team": "data"}))

    def mirrored():
        return {e.addresses[0]: e.conditions.ready for sl in slices_of(client, "db") for e in sl.endpoints}

    wait_until(lambda: mirrored() == {"10.5.0.1": True, "10.5.0.2": True, "10.5.0.3": False},
               timeout=20, what="mirrored slice")
    [sl] = slices_of(client, "db")
    assert sl.metadata.labels["endpointslice.kubernetes.io/managed-by"] == MIRRORING_CONTROLLER_NAME
    assert sl.metadata.labels["team"] == "data"
    assert [(p.name, p.port) for p in sl.ports] == [("db", 5432)]
    assert sl.metadata.owner_references[0].kind == "Endpoints"
    ep = client.get("endpoints", "db", NS)
    del ep.subsets[0].not_ready_addresses[:]
    ep.subsets[0].addresses.add(ip="10.5.0.4")
    client.update(ep)
    wait_until(lambda: mirrored() == {"10.5.0.1": True, "10.5.0.2": True, "10.5.0.4": True},
               timeout=20, what="mirror follows")
    # skip-mirror, as the apiserver's own kubernetes Endpoints carry
    client.patch("endpoints", "db", {"metadata": {"labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}}}, NS)
    wait_until(lambda: not slices_of(client, "db"), timeout=20, what="mirror removed on skip-mirror")
    assert [sl.metadata.name for sl in client.list("endpointslices", "default").items] == ["kubernetes"]


@pytest.mark.process
def test_services_without_selector_and_the_kubernetes_slice_are_left_alone(client, controller):
    s = core_pb2.Service(metadata={"name": "manual", "namespace": NS})
    s.spec.ports.add(port=5432)
    client.create(s)
    client.create(make_service("probe"))
    wait_until(lambda: slices_of(client, "probe"), timeout=20, what="the probe service handled")
    assert slices_of(client, "manual") == []
    k = client.get("endpointslices", "kubernetes", "default")
    assert "endpointslice.kubernetes.io/managed-by" not in k.metadata.labels and k.endpoints
