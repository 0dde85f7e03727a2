"""The whole control plane, every component its own process: etcdlite, the
apiserver, two controller-managers (leader and standby), the scheduler and
simulated nodes. A Deployment is declared and the plane makes it so, and
keeps it so through a rolling update, a rollback, scaling, a deleted pod, a
stopped node and the death of the leading controller-manager. A watch on
pods checks, at every event, that no node is ever given more than its
allocatable cpu and that rollouts stay within maxSurge / maxUnavailable.
"""

from __future__ import annotations

import signal
import subprocess
import threading

import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import apps_pb2
from apiserver.quantity import milli_cpu
from harness.etcd_client import wait_until
from harness.plane import start_apiserver, start_component
from harness.procs import PYTHON, REPO, Registry

pytestmark = pytest.mark.process

REPLICAS = 10
NODE_CPU = "1200m"
POD_CPU = "300m"
MAX_SURGE, MAX_UNAVAILABLE = 3, 2  # 25% of 10, rounded up and down
TIMEOUT = 90


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    reg = Registry()
    tmp = tmp_path_factory.mktemp("plane")
    etcd = reg.start_etcdlite(tmp, name="etcd")
    api = start_apiserver(tmp, etcd.url, registry=reg, default_not_ready_toleration_seconds=2,
                          default_unreachable_toleration_seconds=2)
    server = api.endpoint
    election = dict(leader_elect=True, leader_elect_lease_duration=3, leader_elect_renew_deadline=2,
                    leader_elect_retry_period=0.5, log_level="warning")
    managers = {
        ident: start_component(tmp, ident, "controllers.manager", server, reg, leader_elect_identity=ident,
                               node_monitor_grace_period=3, node_monitor_period=0.5, **election)
        for ident in ("cm-a", "cm-b")
    }
    start_component(tmp, "scheduler", "controllers.scheduler", server, reg, log_level="warning")
    nodes = dict(cpu=NODE_CPU, heartbeat_interval=1, ready_delay=0.3, log_level="warning")
    start_component(tmp, "kubelets", "node.kubelet.hollow", server, reg, nodes=4, **nodes)
    lone = start_component(tmp, "kubelet-4", "node.kubelet.hollow", server, reg, nodes=1, start_index=4, **nodes)
    client = Client(server, timeout=20)
    wait_until(lambda: len(ready_nodes(client)) == 5, TIMEOUT, what="5 Ready nodes")
    checker = PodChecker(client)
    yield {"client": client, "api": api, "managers": managers, "lone": lone, "checker": checker}
    checker.stop()
    client.close()
    reg.cleanup()


def ready_nodes(client) -> list[str]:
    out = []
    for node in client.list("nodes").items:
        if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions):
            out.append(node.metadata.name)
    return out


def is_ready(pod) -> bool:
    return not pod.metadata.deletion_timestamp and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


class PodChecker:
    """Follows every pod from the watch stream and records violations:
    a node's bound cpu requests above its allocatable (any time), and, while
    ``rollout`` is set, more than replicas+maxSurge live pods of the
    deployment or fewer than replicas-maxUnavailable ready ones."""

    def __init__(self, client) -> None:
        self.client = client
        self.pods: dict[str, object] = {}
        self.violations: list[str] = []
        self.rollout: int | None = None  # the replicas a rollout must respect
        self.max_live = self.min_ready = None
        self.lock = threading.Lock()
        self.allocatable = {n.metadata.name: milli_cpu(n.status.allocatable["cpu"])
                            for n in client.list("nodes").items}
        listed = client.list("pods")
        for p in listed.items:
            self.pods[p.metadata.name] = p
        self.watch = client.watch("pods", resource_version=listed.resource_version)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                with self.lock:
                    name = event.object.metadata.name
                    if event.type == "DELETED":
                        self.pods.pop(name, None)
                    elif event.type in ("ADDED", "MODIFIED"):
                        self.pods[name] = event.object
                    self._check()
        except ApiError as e:
            self.violations.append(f"pod watch ended: {e}")

    def _check(self) -> None:
        per_node: dict[str, int] = {}
        for p in self.pods.values():
            if p.spec.node_name and p.status.phase not in ("Succeeded", "Failed"):
                per_node[p.spec.node_name] = per_node.get(p.spec.node_name, 0) + sum(
                    milli_cpu(c.resources.requests.get("cpu", "0")) for c in p.spec.containers)
        for node, used in per_node.items():
            if used > self.allocatable.get(node, 0):
                self.violations.append(f"node {node}: {used}m cpu bound, allocatable {self.allocatable.get(node)}m")
        if self.rollout is not None:
            web = [p for p in self.pods.values() if p.metadata.labels.get("app") == "web"]
            live = sum(1 for p in web if not p.metadata.deletion_timestamp)
            ready = sum(1 for p in web if is_ready(p))
            if live > self.rollout + MAX_SURGE:
                self.violations.append(f"{live} live pods > {self.rollout} + maxSurge {MAX_SURGE}")
            if ready < self.rollout - MAX_UNAVAILABLE:
                self.violations.append(f"{ready} ready pods < {self.rollout} - maxUnavailable {MAX_UNAVAILABLE}")

    def stop(self) -> None:
        self.watch.stop()
        self.thread.join(5)


def web_deployment(image="nginx:1.25"):
    d = apps_pb2.Deployment()
    d.metadata.name, d.metadata.namespace = "web", "default"
    d.spec.replicas = REPLICAS
    d.spec.selector.match_labels["app"] = "web"
    d.spec.strategy.type = "RollingUpdate"
    d.spec.strategy.rolling_update.max_surge = "25%"
    d.spec.strategy.rolling_update.max_unavailable = "25%"
    t = d.spec.template
    t.metadata.labels["app"] = "web"
    c = t.spec.containers.add(name="nginx", image=image)
    c.resources.requests["cpu"] = POD_CPU
    return d


def settled(client, replicas, image=None):
    """The deployment has rolled out ``replicas`` pods (of ``image``) that are all available."""
    def check():
        d = client.get("deployments", "web")
        s = d.status
        done = (s.observed_generation >= d.metadata.generation and s.updated_replicas == replicas
                and s.available_replicas == replicas and s.replicas == replicas)
        if not done:
            return False
        pods = [p for p in client.list("pods", "default", label_selector="app=web").items
                if not p.metadata.deletion_timestamp]
        return len(pods) == replicas and all(is_ready(p) for p in pods) and (
            image is None or all(p.spec.containers[0].image == image for p in pods))
    return check


def scale(client, replicas):
    client.patch("deployments", "web", {"spec": {"replicas": replicas}})


def test_a_deployment_of_10_reaches_available_on_5_nodes(plane):
    c = plane["client"]
    c.create(web_deployment())
    wait_until(settled(c, REPLICAS), TIMEOUT, what="10 available replicas")
    d = c.get("deployments", "web")
    available = {cond.type: cond.status for cond in d.status.conditions}
    assert available.get("Available") == "True" and available.get("Progressing") == "True"
    nodes = {p.spec.node_name for p in c.list("pods", "default", label_selector="app=web").items}
    assert len(nodes) >= 4, nodes  # spread over the nodes
    assert not plane["checker"].violations


def test_an_image_change_rolls_over_within_surge_and_unavailability(plane):
    c, checker = plane["client"], plane["checker"]
    old_rs = {rs.metadata.name for rs in c.list("replicasets", "default").items}
    checker.rollout = REPLICAS
    try:
        c.patch("deployments", "web", {"spec": {"template": {"spec": {"containers": [
            {"name": "nginx", "image": "nginx:1.27", "resources": {"requests": {"cpu": POD_CPU}}}]}}}})
        wait_until(settled(c, REPLICAS, "nginx:1.27"), TIMEOUT, what="rollout to nginx:1.27")
    finally:
        checker.rollout = None
    assert not checker.violations, checker.violations[:5]
    rs = {r.metadata.name: r for r in c.list("replicasets", "default").items}
    assert len(rs) == 2 and old_rs < set(rs)
    assert [r.spec.replicas for r in rs.values() if r.metadata.name in old_rs] == [0]


def test_rollback_restores_the_old_template(plane):
    c = plane["client"]
    before = {rs.metadata.name for rs in c.list("replicasets", "default").items}
    out = subprocess.run([PYTHON, "-m", "controllers.kctl", "--server", plane["api"].endpoint,
                          "rollout", "undo", "deployment/web"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    wait_until(settled(c, REPLICAS, "nginx:1.25"), TIMEOUT, what="rollback to nginx:1.25")
    after = {rs.metadata.name: rs for rs in c.list("replicasets", "default").items}
    assert set(after) == before  # the old ReplicaSet came back, no new one
    assert sorted(rs.spec.replicas for rs in after.values()) == [0, REPLICAS]
    assert not plane["checker"].violations


def test_scale_to_zero_and_back(plane):
    c = plane["client"]
    scale(c, 0)
    wait_until(lambda: not c.list("pods", "default", label_selector="app=web").items, TIMEOUT,
               what="no pods left")
    scale(c, REPLICAS)
    wait_until(settled(c, REPLICAS), TIMEOUT, what="back to 10")


def test_a_deleted_pod_is_replaced(plane):
    c = plane["client"]
    victim = c.list("pods", "default", label_selector="app=web").items[0]
    c.delete("pods", victim.metadata.name, "default")
    wait_until(lambda: victim.metadata.name not in
               {p.metadata.name for p in c.list("pods", "default", label_selector="app=web").items}, TIMEOUT,
               what="the deleted pod gone")
    wait_until(settled(c, REPLICAS), TIMEOUT, what="a replacement")


def test_a_stopped_node_loses_its_pods_to_the_others(plane):
    c, lone = plane["client"], plane["lone"]
    on_it = [p.metadata.name for p in c.list("pods", "default", field_selector="spec.nodeName=node-4").items]
    assert on_it, "the scheduler spread nothing onto node-4"
    lone._signal(signal.SIGSTOP)  # its heartbeats stop; the node is not deleted
    try:
        def moved():
            pods = [p for p in c.list("pods", "default", label_selector="app=web").items
                    if not p.metadata.deletion_timestamp]
            return len(pods) == REPLICAS and all(is_ready(p) and p.spec.node_name != "node-4" for p in pods)
        wait_until(moved, TIMEOUT, what="pods moved off node-4")
        node = c.get("nodes", "node-4")
        ready = [cond for cond in node.status.conditions if cond.type == "Ready"]
        assert ready and ready[0].status == "Unknown"
        assert "node.kubernetes.io/unreachable" in {t.key for t in node.spec.taints}
    finally:
        lone.kill()
    assert not plane["checker"].violations


def test_the_standby_controller_manager_takes_over(plane):
    c, managers = plane["client"], plane["managers"]
    holder = c.get("leases", "kube-controller-manager", "kube-system").spec.holder_identity
    assert holder in managers
    managers[holder].kill()
    scale(c, REPLICAS + 2)
    wait_until(settled(c, REPLICAS + 2), TIMEOUT, what="12 replicas under the standby")
    lease = c.get("leases", "kube-controller-manager", "kube-system")
    assert lease.spec.holder_identity != holder and lease.spec.holder_identity in managers
    assert not plane["checker"].violations
