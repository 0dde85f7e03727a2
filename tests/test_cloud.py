"""The cloud of issue 20 on real nodes: ``python -m cloud`` runs instances (a node namespace with
its runtime, kubelet and kube-proxy each) in a node group of 2..3 "small" instances (1 cpu),
the cloud-controller-manager initializes their Nodes, routes their podCIDRs and makes load
balancers, and the autoscaler grows and shrinks the group. One plane for the module; the tests
run in order on it (each leaves the cluster at the group's minimum). The plane is secure, as
`make run` has it (TLS, Node,RBAC, each component under its own certificate: costs nothing
measurable here), and its audit log is read at the end for refusals: a role short of a rule
fails the module."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from apiserver.errors import ApiError
from apiserver.pb import apps_pb2, core_pb2
from harness.cloud import cloud_plane
from harness.etcd_client import wait_until
from harness.nodes import need_runtime
from node.network import netns

pytestmark = pytest.mark.process

UNINITIALIZED = "node.cloudprovider.kubernetes.io/uninitialized"
SHUTDOWN = "node.cloudprovider.kubernetes.io/shutdown"
LB_FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
TIMEOUT = 60
SCALE_UP_BOUND = 45  # seconds from "pods unschedulable" to all of them Running on a new node
HTTPD = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    need_runtime()
    with cloud_plane(tmp_path_factory.mktemp("cloud"), node_groups=("pool:2:3:small",), secure=True,
                     kubelet_args=("--heartbeat-interval=1",),
                     cm_flags={"node_monitor_grace_period": 4, "node_monitor_period": 1, "pod_gc_period": 1},
                     ccm_flags={"node_monitor_period": 1, "route_reconciliation_period": 2},
                     autoscaler_flags={"scan_interval": 1, "scale_down_unneeded_time": 2,
                                       "scale_down_delay_after_add": 0}) as p:
        wait_until(lambda: len(initialized(p.client)) == 2, TIMEOUT, 0.2, what="2 initialized Ready nodes")
        yield p


def ready(obj) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in obj.status.conditions)


def initialized(client) -> list:
    return [n for n in client.list("nodes").items
            if ready(n) and not any(t.key == UNINITIALIZED for t in n.spec.taints)]


def deployment(name: str, replicas: int, cpu: str) -> apps_pb2.Deployment:
    d = apps_pb2.Deployment()
    d.metadata.name, d.metadata.namespace = name, "default"
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = name
    t = d.spec.template
    t.metadata.labels["app"] = name
    t.spec.termination_grace_period_seconds = 1
    c = t.spec.containers.add(name="web", image="busybox", command=["sh", "-c", HTTPD])
    c.ports.add(container_port=8080)
    c.resources.requests["cpu"] = cpu
    return d


def running_pods(client, app: str, want: int) -> list | None:
    pods = [p for p in client.list("pods", "default", label_selector=f"app={app}").items
            if not p.metadata.deletion_timestamp]
    ok = [p for p in pods if p.status.phase == "Running" and ready(p)]
    return ok if len(pods) == want and len(ok) == want else None


def _holder(client, lease: str) -> str:
    try:
        return client.get("leases", lease, "kube-system").spec.holder_identity
    except ApiError as e:
        if e.reason == "NotFound":
            return ""
        raise


def scale(client, name: str, replicas: int) -> None:
    client.patch("deployments", name, {"spec": {"replicas": replicas}})


def exec_through_the_apiserver(plane, pod: str) -> None:
    """The apiserver reaches an instance's kubelet (TLS both ways, the caller checked by a
    TokenReview and a SubjectAccessReview the kubelet makes as system:cloud-nodes): over gRPC,
    and with kubectl over the WebSocket the runtime's streaming server answers."""
    out = plane.client.exec(pod, ["hostname"])
    assert (out.exit_code, out.stdout.decode().strip()) == (0, pod)
    from tests.test_kubectl import find_kubectl  # noqa: PLC0415 (its search, one place)

    kubectl = find_kubectl()
    if kubectl is None:
        return
    config = plane.api.kubeconfig(plane.api.tmp_path / "admin.kubeconfig") if plane.api.pki else None
    done = subprocess.run([kubectl, "--server", plane.api.url, *(["--kubeconfig", config] if config else []),
                           "exec", pod, "--", "hostname"], capture_output=True, text=True, timeout=TIMEOUT)
    assert (done.returncode, done.stdout.strip()) == (0, pod), done.stderr


def audit_events(plane) -> list[dict]:
    return [json.loads(line) for line in plane.audit_log.read_text().splitlines()]


def test_nodes_are_initialized_from_the_cloud_and_routed(plane):
    c, cloud = plane.client, plane.cloud
    instances = {i["name"]: i for i in cloud.instances()}
    nodes = initialized(c)
    assert sorted(n.metadata.name for n in nodes) == sorted(instances)
    for node in nodes:
        inst = instances[node.metadata.name]
        assert node.spec.provider_id == inst["providerID"] == f"local:///{inst['zone']}/{inst['id']}"
        labels = node.metadata.labels
        assert labels["topology.kubernetes.io/zone"] == inst["zone"]
        assert labels["topology.kubernetes.io/region"] == "local-1"
        assert labels["node.kubernetes.io/instance-type"] == "small"
        assert node.status.allocatable["cpu"] == "1"
        assert [(a.type, a.address) for a in node.status.addresses] == [
            ("InternalIP", inst["internalIP"]), ("Hostname", inst["name"])]
    assert len({n.metadata.labels["topology.kubernetes.io/zone"] for n in nodes}) == 2  # spread
    if plane.audit_log is not None:  # each kubelet registered its Node under its bootstrapped identity
        registered = {e["user"]["username"] for e in audit_events(plane)
                      if e["verb"] == "create" and e.get("objectRef", {}).get("resource") == "nodes"}
        assert registered == {f"system:node:{name}" for name in instances}
    # the cloud-controller-manager and the autoscaler each lead through their Lease (the
    # autoscaler's may come after the nodes: nothing in the fixture waits for it)
    for lease in ("cloud-controller-manager", "cluster-autoscaler"):
        wait_until(lambda: _holder(c, lease), TIMEOUT, 0.2, what=f"the {lease} Lease held")
    # the route controller: each podCIDR routed to its instance, and the node says so
    wait_until(lambda: sorted((r["cidr"], r["instance"]) for r in cloud.routes()) ==
               sorted((i["podCIDR"], i["id"]) for i in instances.values()), TIMEOUT, 0.2, what="routes")
    wait_until(lambda: all(any(x.type == "NetworkUnavailable" and x.status == "False" and x.reason == "RouteCreated"
                               for x in n.status.conditions) for n in c.list("nodes").items),
               TIMEOUT, 0.2, what="NetworkUnavailable=False on every node")


def test_load_balancer_spreads_over_backends_and_goes_with_the_service(plane):
    c, cloud = plane.client, plane.cloud
    web = deployment("web", 2, "100m")
    # both pods on one node: the other node's share of the traffic crosses to them over the routes
    home = sorted(n.metadata.name for n in initialized(c))[0]
    web.spec.template.spec.node_selector["kubernetes.io/hostname"] = home
    c.create(web)
    svc = core_pb2.Service()
    svc.metadata.name, svc.metadata.namespace = "web", "default"
    svc.spec.type = "LoadBalancer"
    svc.spec.selector["app"] = "web"
    svc.spec.ports.add(name="http", port=80, target_port="8080")
    c.create(svc)
    pods = wait_until(lambda: running_pods(c, "web", 2), TIMEOUT, 0.2, what="2 web pods Running")
    exec_through_the_apiserver(plane, pods[0].metadata.name)
    svc = wait_until(lambda: (s := c.get("services", "web")).status.load_balancer.ingress and s,
                     TIMEOUT, 0.1, what="the Service's status.loadBalancer.ingress")
    assert LB_FINALIZER in svc.metadata.finalizers
    vip = svc.status.load_balancer.ingress[0].ip
    lbs = cloud.load_balancers()
    assert [lb["ip"] for lb in lbs] == [vip]
    assert lbs[0]["ports"] == [{"protocol": "TCP", "port": 80, "nodePort": svc.spec.ports[0].node_port}]
    assert sorted(lbs[0]["nodes"]) == sorted(n.status.addresses[0].address for n in initialized(c))

    names = {p.metadata.name for p in pods}
    seen: dict[str, int] = {}
    deadline = time.monotonic() + TIMEOUT
    while set(seen) != names or sum(seen.values()) < 20:  # the rules or the endpoints may lag
        assert time.monotonic() < deadline, f"answers from the load balancer: {seen}, pods {names}"
        try:
            body = netns.http_get_in(plane.internet, f"http://{vip}/", timeout=2).body.decode().strip()
        except OSError:
            time.sleep(0.1)
            continue
        assert body in names, f"{body!r} is not a web pod"
        seen[body] = seen.get(body, 0) + 1

    # externalTrafficPolicy Local: only the nodes running a ready web pod get traffic
    hosts = [next(a.address for a in c.get("nodes", home, "").status.addresses if a.type == "InternalIP")]
    assert len(lbs[0]["nodes"]) == 2
    c.patch("services", "web", {"spec": {"externalTrafficPolicy": "Local"}})
    wait_until(lambda: sorted(cloud.load_balancers()[0]["nodes"]) == hosts, TIMEOUT, 0.1,
               what=f"the load balancer sending only to {hosts}")
    for _ in range(5):
        assert netns.http_get_in(plane.internet, f"http://{vip}/", timeout=2).body.decode().strip() in names

    c.delete("services", "web")
    wait_until(lambda: not cloud.load_balancers(), TIMEOUT, 0.1, what="the load balancer deleted")

    def service_gone():
        try:
            c.get("services", "web")
            return False
        except ApiError as e:
            return e.reason == "NotFound"
    wait_until(service_gone, TIMEOUT, 0.1, what="the Service gone once its finalizer was removed")
    with pytest.raises(OSError):
        netns.http_get_in(plane.internet, f"http://{vip}/", timeout=2)
    c.delete("deployments", "web")
    wait_until(lambda: running_pods(c, "web", 0) is not None, TIMEOUT, 0.2, what="web pods gone")


def test_autoscaler_adds_a_node_for_unschedulable_pods_and_removes_it_when_idle(plane):
    c, cloud = plane.client, plane.cloud
    before = {n.metadata.name for n in initialized(c)}
    assert len(before) == 2
    # 300m each: 3 per 1-cpu node, so 2 nodes take 6 and 8 need a third
    svc = core_pb2.Service()
    svc.metadata.name, svc.metadata.namespace = "load", "default"
    svc.spec.type = "LoadBalancer"
    svc.spec.selector["app"] = "load"
    svc.spec.ports.add(name="http", port=80, target_port="8080")
    c.create(svc)

    def lb_nodes():
        lbs = cloud.load_balancers()
        return sorted(lbs[0]["nodes"]) if lbs else None

    def node_ips():
        return sorted(n.status.addresses[0].address for n in initialized(c))

    c.create(deployment("load", 8, "300m"))
    started = time.monotonic()
    pods = wait_until(lambda: running_pods(c, "load", 8), SCALE_UP_BOUND, 0.2,
                      what=f"8 pods Running within {SCALE_UP_BOUND}s (a third node)")
    took = time.monotonic() - started
    nodes = initialized(c)
    assert len(nodes) == 3, [n.metadata.name for n in nodes]
    new = [n for n in nodes if n.metadata.name not in before]
    assert len(new) == 1 and new[0].metadata.labels["node.kubernetes.io/instance-type"] == "small"
    assert any(p.spec.node_name == new[0].metadata.name for p in pods)
    assert cloud.node_group("pool")["targetSize"] == 3
    events = [e for e in c.list("events", "default").items if e.reason == "TriggeredScaleUp"]
    assert events, "no TriggeredScaleUp event on the pods"
    print(f"8 pods Running {took:.1f}s after creation, with a new node")
    wait_until(lambda: lb_nodes() == node_ips() and len(node_ips()) == 3, TIMEOUT, 0.2,
               what="the load balancer sending to the 3 nodes")

    scale(c, "load", 2)  # a node is idle now; after 2 s unneeded it is drained and removed
    wait_until(lambda: len(c.list("nodes").items) == 2 and cloud.node_group("pool")["targetSize"] == 2,
               TIMEOUT, 0.2, what="back to the group's minimum, 2 nodes")
    wait_until(lambda: len(cloud.instances()) == 2, TIMEOUT, 0.2, what="2 instances left")
    wait_until(lambda: running_pods(c, "load", 2), TIMEOUT, 0.2, what="the 2 pods Running")
    wait_until(lambda: lb_nodes() == node_ips() and len(node_ips()) == 2, TIMEOUT, 0.2,
               what="the load balancer following the nodes down to 2")
    c.delete("services", "load")
    wait_until(lambda: not cloud.load_balancers(), TIMEOUT, 0.1, what="the load balancer deleted")


def test_instance_stopped_then_deleted_behind_the_clusters_back(plane):
    c, cloud = plane.client, plane.cloud
    pods = wait_until(lambda: running_pods(c, "load", 2), TIMEOUT, 0.2, what="the 2 load pods")
    victim = pods[0].spec.node_name
    inst = next(i for i in cloud.instances() if i["name"] == victim)
    # stopped (powered off): NotReady after the grace period, then the cloud's shutdown taint
    assert cloud.stop_instance(inst["id"])["state"] == "stopped"
    wait_until(lambda: any(t.key == SHUTDOWN and t.effect == "NoSchedule"
                           for t in c.get("nodes", victim, "").spec.taints),
               TIMEOUT, 0.2, what=f"the shutdown taint on {victim}")
    cloud.delete_instance(inst["id"])  # not through the group: the cluster is not told

    def node_gone():
        return victim not in {n.metadata.name for n in c.list("nodes").items}
    wait_until(node_gone, TIMEOUT, 0.2, what=f"Node {victim} deleted by the cloud node lifecycle controller")
    moved = wait_until(lambda: (ps := running_pods(c, "load", 2)) and
                       all(p.spec.node_name != victim for p in ps) and ps, TIMEOUT, 0.2,
                       what="the pods Running on other nodes")
    assert all(p.spec.node_name != victim for p in moved)
    # the group replaces its lost instance, as a cloud's instance group does
    wait_until(lambda: inst["id"] not in {i["id"] for i in cloud.instances()} and len(cloud.instances()) == 2,
               TIMEOUT, 0.2, what="the instance gone and a replacement launched")


# Refusals a component meets by design: leader election asks for its namespace, which the
# cloud-controller-manager may not read (controllers/leaderelection.py takes Forbidden as "it
# exists"); a kubelet makes kube-node-lease if missing, which a node may not (the apiserver made it).
EXPECTED_REFUSALS = {("system:cloud-controller-manager", "get", "namespaces"),
                     ("system:node:*", "create", "namespaces")}


def test_no_component_was_refused_what_it_needs(plane):
    """Every component of the secure plane under its own identity (apiserver/auth/policy.py's
    system:cloud-controller-manager, system:cluster-autoscaler, system:cloud-nodes, ...): the
    audit log of the whole module shows no 403 beyond the expected ones."""
    audit = plane.audit_log
    if audit is None:
        pytest.skip("an insecure plane: nothing is refused")
    refused = set()
    for event in audit_events(plane):
        if event["responseStatus"]["code"] == 403:
            ref = event.get("objectRef", {})
            user = event["user"]["username"]
            refused.add(("system:node:*" if user.startswith("system:node:") else user, event["verb"],
                         "/".join(x for x in (ref.get("resource"), ref.get("subresource")) if x)))
    assert refused <= EXPECTED_REFUSALS, f"refused: {sorted(refused - EXPECTED_REFUSALS)}"


def test_the_instances_runtimes_served_every_stream_cleanly(plane):
    """The execs above ended without an error in any instance's runtime (its streaming server
    once logged a RuntimeError after each WebSocket exec: two readers on one connection)."""
    logs = sorted((plane.cloud_proc.data_dir / "nodes").glob("*/runtime.log"))
    assert logs, "no instance's runtime log"
    failed = [f"{log.parent.name}: {line}" for log in logs for line in log.read_text().splitlines()
              if "stream failed" in line or "readexactly() called" in line]
    assert not failed, failed
