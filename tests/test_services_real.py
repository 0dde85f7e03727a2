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

import threading
import time

import pytest

from apiserver.client import Client
from apiserver.manifest import from_dict
from harness.etcd_client import wait_until
from harness.nodes import need_runtime, real_nodes
from harness.plane import start_control_plane
from harness.procs import Registry
from node.cri.client import CriClient
from node.plane import KUBE_DNS_IP
from node.proxy import nft

pytestmark = pytest.mark.process

NODES = 3
TIMEOUT = 120
REQUESTS = 30  # per client: a backend of 3 missed by chance has probability 3 * (2/3)^30 ~ 2e-5
PRE_STOP_SLEEP = 4  # s: longer than an endpoint change takes to reach every node's rules
GRACE = 10


# httpd runs in the background and the shell, PID 1, exits on SIGTERM (taking httpd with it), as a
# server that handles SIGTERM does; httpd itself as PID 1 would ignore it (it sets no handler) and
# every pod would take the whole grace period to go.
SERVE = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"


def web_deployment(replicas: int) -> dict:
    """busybox httpd answering "<pod> v<VERSION>"; Ready while /www/ready exists."""
    page = 'echo "$(hostname) v$VERSION" > /www/index.html && touch /www/ready'
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": GRACE,
                    "containers": [{
                        "name": "web", "image": "busybox",
                        "env": [{"name": "VERSION", "value": "1"}],
                        "command": ["sh", "-c", f"mkdir -p /www && {page} && httpd -p 80 -h /www && {SERVE}"],
                        "ports": [{"containerPort": 80, "name": "http"}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 80},
                                           "periodSeconds": 1, "failureThreshold": 1},
                        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP}}},
                    }],
                },
            },
        },
    }


WEB_SERVICE = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
}


def client_pod(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"client-{i}", "namespace": "default", "labels": {"role": "client"}},
            "spec": {"nodeName": f"node-{i}", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]}}


def is_ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


class Cluster:
    def __init__(self, client: Client, nodes) -> None:
        self.client, self.nodes = client, nodes
        self.runtimes = {n.name: CriClient(n.cri_socket, timeout=60) for n in nodes.layout.nodes}

    def close(self) -> None:
        for r in self.runtimes.values():
            r.close()

    def container(self, pod) -> tuple[CriClient, str]:
        runtime = self.runtimes[pod.spec.node_name]
        found = [c.id for c in runtime.list_containers()
                 if c.labels.get("io.kubernetes.pod.uid") == pod.metadata.uid and c.state == 1]
        assert found, f"no running container of {pod.metadata.name}"
        return runtime, found[0]

    def exec(self, pod, command: list[str], timeout: float = 60) -> tuple[int, str]:
        runtime, cid = self.container(pod)
        got = runtime.exec_sync(cid, command, timeout=timeout)
        return got.exit_code, got.stdout.decode() + got.stderr.decode()

    def client_pod(self, i: int):
        return self.client.get("pods", f"client-{i}", "default")

    def fetch(self, i: int, n: int = REQUESTS) -> list[str]:
        """``n`` requests to http://web/ from the client pod on node ``i``: what each answered
        ("<pod> v<version>", or FAILED with wget's words)."""
        loop = (f"i=0; while [ $i -lt {n} ]; do wget -qO- http://web/ 2>&1 || echo FAILED; "
                "i=$((i+1)); done")
        code, out = self.exec(self.client_pod(i), ["sh", "-c", loop])
        assert code == 0, out
        return out.splitlines()

    def web_pods(self, want: int | None = None):
        pods = [p for p in self.client.list("pods", "default", label_selector="app=web").items
                if not p.metadata.deletion_timestamp and p.status.pod_ip and is_ready(p)]
        return pods if want is None or len(pods) == want else None

    def programmed(self, ips: set[str]) -> bool:
        """Every node's kube-proxy has exactly these web endpoints in its rules."""
        every = {p.status.pod_ip for p in self.client.list("pods", "default", label_selector="app=web").items
                 if p.status.pod_ip}
        for node in self.nodes.layout.nodes:
            table = nft.list_table(node.netns)
            have = {ip for ip in every | ips if f"dnat to {ip}:80" in table}
            if have != ips:
                return False
        return True

    def settle(self, replicas: int):
        """``replicas`` ready web pods not being deleted, and exactly they in every node's rules
        (pods being deleted may still be running their preStop hook)."""
        def done():
            live = [p for p in self.client.list("pods", "default", label_selector="app=web").items
                    if not p.metadata.deletion_timestamp]
            ready = [p for p in live if p.status.pod_ip and is_ready(p)]
            if not len(live) == len(ready) == replicas:
                return None
            return ready if self.programmed({p.status.pod_ip for p in ready}) else None
        return wait_until(done, TIMEOUT, what=f"{replicas} ready web pods, and only they, in every node's rules")


def answered_by(lines: list[str]) -> set[str]:
    return {line.split()[0] for line in lines if not line.startswith("FAILED")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need_runtime()
    reg = Registry()
    tmp = tmp_path_factory.mktemp("svcreal")
    try:
        api = start_control_plane(tmp, reg)
        with real_nodes(tmp, api.endpoint, NODES, services=True) as nodes, \
                Client(api.endpoint, timeout=20) as client:
            c = Cluster(client, nodes)
            try:
                client.create(from_dict(WEB_SERVICE))
                client.create(from_dict(web_deployment(3)))
                for i in range(NODES):
                    client.create(from_dict(client_pod(i)))
                wait_until(lambda: all(is_ready(c.client_pod(i)) for i in range(NODES)), TIMEOUT,
                           what="a Ready client pod on every node")
                c.settle(3)
                yield c
            finally:
                c.close()
    finally:
        reg.cleanup()


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


class RequestLoop:
    """A client pod requesting http://web/ back to back (10 a second at most) until stopped:
    each answer or failure is one line of the exec's output."""

    def __init__(self, cluster: Cluster, i: int) -> None:
        self.cluster, self.i = cluster, i
        self.lines: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        loop = ("i=0; while [ ! -e /tmp/stop ] && [ $i -lt 900 ]; do "
                "wget -qO- http://web/ 2>&1 || echo FAILED; usleep 100000; i=$((i+1)); done")
        try:
            code, out = self.cluster.exec(self.cluster.client_pod(self.i), ["sh", "-c", loop], timeout=TIMEOUT)
            self.lines = out.splitlines()
        except BaseException as e:  # reported by stop()
            self.error = e

    def start(self) -> None:
        code, out = self.cluster.exec(self.cluster.client_pod(self.i), ["rm", "-f", "/tmp/stop"])
        assert code == 0, out
        self.thread.start()

    def stop(self) -> list[str]:
        self.cluster.exec(self.cluster.client_pod(self.i), ["touch", "/tmp/stop"])
        self.thread.join(TIMEOUT)
        if self.error is not None:
            raise self.error
        return self.lines


def test_a_rolling_update_under_a_request_loop_on_every_node_fails_no_request(cluster):
    old = {p.metadata.name for p in cluster.settle(3)}
    loops = [RequestLoop(cluster, i) for i in range(NODES)]
    for loop in loops:
        loop.start()
    t0 = time.monotonic()
    try:
        template = web_deployment(3)["spec"]["template"]
        template["spec"]["containers"][0]["env"] = [{"name": "VERSION", "value": "2"}]
        cluster.client.patch("deployments", "web", {"spec": {"template": template}})

        def rolled():  # the new pods serve, and every old pod has exited (its container is gone)
            pods = cluster.client.list("pods", "default", label_selector="app=web").items
            names = {p.metadata.name for p in pods}
            return len(pods) == 3 and not names & old and all(is_ready(p) for p in pods)
        wait_until(rolled, TIMEOUT, what="the rollout to VERSION=2 done and the old pods gone")
        rollout = time.monotonic() - t0
    finally:
        results = [lp.stop() for lp in loops]
    lines = [x for r in results for x in r]
    failed = [x for x in lines if x.startswith("FAILED") or len(x.split()) != 2]
    versions = {x.split()[1] for x in lines if x not in failed}
    print(f"\nrolling update of 3 pods (maxSurge 1, maxUnavailable 0, preStop sleep {PRE_STOP_SLEEP} s, "
          f"grace {GRACE} s) in {rollout:.1f} s under 3 request loops: {len(lines)} requests, "
          f"{len(failed)} failed")
    assert len(lines) >= 3 * 20, "the loops made too few requests to show anything"
    assert versions == {"v1", "v2"}, versions  # the loops saw the rollout happen
    assert failed == [], failed[:10]
    # afterwards only the new version answers, from every node
    for i in range(NODES):
        lines = cluster.fetch(i, 10)
        assert {x.split()[1] for x in lines} == {"v2"}, lines
