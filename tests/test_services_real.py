"""Services on real nodes, as a Kubernetes user sees them: three real nodes (runtime, kubelet and
kube-proxy each, the cluster DNS in node 0, pods' resolv.conf naming the kube-dns clusterIP), a
Deployment of busybox httpd pods behind a Service, and a client pod on every node fetching
``http://web/`` with busybox wget, so every request goes name -> cluster DNS (itself reached
through kube-proxy) -> clusterIP -> kube-proxy's random choice -> a pod.

What is checked: every ready backend answers clients on every node; a pod failing its readiness
probe gets no traffic until it passes again; scaling changes the backends; a rolling update under
a loop of requests from every node, with readiness, maxUnavailable 0 and a preStop sleep (what a
Kubernetes user sets for zero-downtime rollouts), fails no request. The failed-request count is
printed (``pytest -s``) and must be 0, as on Kubernetes with the same settings."""

from __future__ import annotations

import pytest

from harness.etcd_client import wait_until
from harness.nodes import need_runtime
from harness.services import GRACE, PRE_STOP_SLEEP, TIMEOUT, answered_by, is_ready, rollout, web_cluster
from node.plane import KUBE_DNS_IP

pytestmark = pytest.mark.process

NODES = 3
REQUESTS = 30  # per client: a backend of 3 missed by chance has probability 3 * (2/3)^30 ~ 2e-5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need_runtime()
    with web_cluster(tmp_path_factory.mktemp("svcreal"), NODES, replicas=3) as c:
        yield c


def test_pods_on_every_node_reach_every_ready_backend_by_the_service_name(cluster):
    # the kubelets point pods at the kube-dns Service, as Kubernetes does
    code, conf = cluster.exec(cluster.client_pod(1), ["cat", "/etc/resolv.conf"])
    assert code == 0 and conf.splitlines()[0] == f"nameserver {KUBE_DNS_IP}", conf
    backends = {p.metadata.name for p in cluster.web_pods(3)}
    for i in range(NODES):
        lines = cluster.fetch(i)
        assert len(lines) == REQUESTS and not [x for x in lines if x.startswith("FAILED")], (i, lines)
        assert answered_by(lines) == backends, (i, lines)


def test_a_pod_failing_readiness_gets_no_traffic_until_it_passes_again(cluster):
    pods = cluster.web_pods(3)
    victim = pods[0]
    others = {p.metadata.name for p in pods[1:]}
    code, out = cluster.exec(victim, ["rm", "/www/ready"])
    assert code == 0, out
    wait_until(lambda: not is_ready(cluster.client.get("pods", victim.metadata.name, "default")), TIMEOUT,
               what=f"{victim.metadata.name} not Ready")
    wait_until(lambda: cluster.programmed({p.status.pod_ip for p in pods[1:]}), TIMEOUT,
               what="the unready pod out of every node's rules")
    for i in range(NODES):
        lines = cluster.fetch(i)
        assert answered_by(lines) == others and len(lines) == REQUESTS, (i, lines)
    # it still serves when asked directly: it is the Service that leaves it out
    code, out = cluster.exec(cluster.client_pod(0), ["wget", "-qO-", f"http://{victim.status.pod_ip}/"])
    assert (code, out.split()[0]) == (0, victim.metadata.name), out

    code, out = cluster.exec(victim, ["touch", "/www/ready"])
    assert code == 0, out
    cluster.settle(3)
    assert victim.metadata.name in answered_by(cluster.fetch(2))


def test_scaling_the_deployment_changes_the_backends(cluster):
    cluster.client.patch("deployments", "web", {"spec": {"replicas": 5}})
    five = {p.metadata.name for p in cluster.settle(5)}
    assert answered_by(cluster.fetch(0, 50)) == five  # 5 * (4/5)^50 ~ 7e-5 to miss one by chance
    cluster.client.patch("deployments", "web", {"spec": {"replicas": 2}})
    two = {p.metadata.name for p in cluster.settle(2)}
    assert two < five
    for i in range(NODES):
        lines = cluster.fetch(i)
        assert answered_by(lines) == two and len(lines) == REQUESTS, (i, lines)
    cluster.client.patch("deployments", "web", {"spec": {"replicas": 3}})
    cluster.settle(3)


def test_a_rolling_update_under_a_request_loop_on_every_node_fails_no_request(cluster):
    got = rollout(cluster, NODES, 3)
    print(f"\nrolling update of 3 pods (maxSurge 1, maxUnavailable 0, preStop sleep {PRE_STOP_SLEEP} s, "
          f"grace {GRACE} s) in {got['seconds']:.1f} s under {NODES} request loops: {got['requests']} requests, "
          f"{len(got['failed'])} failed")
    assert got["requests"] >= NODES * 20, "the loops made too few requests to show anything"
    assert got["versions"] == {"v1", "v2"}, got["versions"]  # the loops saw the rollout happen
    assert got["failed"] == [], got["failed"][:10]
    # afterwards only the new version answers, from every node
    for i in range(NODES):
        lines = cluster.fetch(i, 10)
        assert {x.split()[1] for x in lines} == {"v2"}, lines
