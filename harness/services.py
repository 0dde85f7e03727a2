"""A Deployment behind a Service on real nodes, and client pods that request it, as the Services
tests (tests/test_services_real.py) and the rollout benchmark (benchmarks/rollout_bench.py) use
them: busybox httpd pods answering "<pod> v<VERSION>", a busybox client pod pinned to each node,
requests made with the client's own `wget http://web/` (cluster DNS, then kube-proxy), and a
request loop that runs in a client pod until told to stop."""

from __future__ import annotations

import contextlib
import threading
import time

from apiserver.client import Client
from apiserver.manifest import from_dict
from harness.etcd_client import wait_until
from harness.nodes import real_nodes
from harness.plane import start_control_plane
from harness.procs import Registry
from node.cri.client import CriClient
from node.proxy import nft

TIMEOUT = 120
# One line per request: the page ("<pod> v<version>"), or FAILED and what wget said. A request
# to an endpoint that vanished mid-way (no RST: its veth is gone) would wait for TCP's own
# timeouts, minutes: `timeout` gives up after 5 s, as a client with a deadline would (wget's own
# -T crashes Debian's busybox 1.35).
ONE_REQUEST = ('out=$(timeout 5 wget -qO- http://web/ 2>&1); rc=$?; if [ $rc = 0 ]; then echo "$out"; '
               'elif [ $rc = 143 ]; then echo FAILED: no answer in 5 s; else echo FAILED $out; fi')
PRE_STOP_SLEEP = 5  # s: longer than an endpoint change takes to reach every node's rules (~1 s; margin for a busy machine)
GRACE = 10

# httpd runs in the background and the shell, PID 1, exits on SIGTERM (taking httpd with it), as a
# server that handles SIGTERM does; httpd itself as PID 1 would ignore it (it sets no handler) and
# every pod would take the whole grace period to go.
SERVE = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"


def web_deployment(replicas: int, version: str = "1", pre_stop_sleep: int = PRE_STOP_SLEEP, grace: int = GRACE,
                   readiness: bool = True) -> dict:
    """busybox httpd answering "<pod> v<VERSION>"; Ready while /www/ready exists (with
    ``readiness``: else Ready once started); rolled out one pod at a time (maxSurge 1,
    maxUnavailable 0); a preStop sleep of ``pre_stop_sleep`` seconds (0: no hook)."""
    page = 'echo "$(hostname) v$VERSION" > /www/index.html && touch /www/ready'
    container = {
        "name": "web", "image": "busybox",
        "env": [{"name": "VERSION", "value": version}],
        "command": ["sh", "-c", f"mkdir -p /www && {page} && httpd -p 80 -h /www && {SERVE}"],
        "ports": [{"containerPort": 80, "name": "http"}],
    }
    if readiness:
        container["readinessProbe"] = {"httpGet": {"path": "/ready", "port": 80},
                                       "periodSeconds": 1, "failureThreshold": 1}
    if pre_stop_sleep:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": pre_stop_sleep}}}
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
                    "terminationGracePeriodSeconds": grace,
                    "containers": [container],
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

    def exec(self, pod, command: list[str], timeout: float = 60, stderr: bool = True) -> tuple[int, str]:
        """The command's exit code and output (stdout, then stderr unless ``stderr`` is False)."""
        runtime, cid = self.container(pod)
        got = runtime.exec_sync(cid, command, timeout=timeout)
        return got.exit_code, got.stdout.decode() + (got.stderr.decode() if stderr else "")

    def client_pod(self, i: int):
        return self.client.get("pods", f"client-{i}", "default")

    def fetch(self, i: int, n: int = 30) -> list[str]:
        """``n`` requests to http://web/ from the client pod on node ``i``: what each answered
        ("<pod> v<version>", or FAILED with wget's words)."""
        loop = f"i=0; while [ $i -lt {n} ]; do {ONE_REQUEST}; i=$((i+1)); done"
        code, out = self.exec(self.client_pod(i), ["sh", "-c", loop], stderr=False)
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
                f"{ONE_REQUEST}; usleep 100000; i=$((i+1)); done")
        try:
            # (the shell's own "Terminated" for a request given up goes to stderr: one line each)
            code, out = self.cluster.exec(self.cluster.client_pod(self.i), ["sh", "-c", loop], timeout=TIMEOUT,
                                          stderr=False)
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




def rollout(cluster: Cluster, clients: int, replicas: int, **template) -> dict:
    """Roll the web Deployment (``replicas`` ready) to the next VERSION with ``template``'s
    settings (web_deployment's) while ``clients`` client pods request http://web/ in loops;
    returns the requests, the failures (their lines) and the rollout's seconds (until every old
    pod is gone, so that their shutdown is inside the loops)."""
    old_pods = cluster.settle(replicas)
    old = {p.metadata.name for p in old_pods}
    version = str(int(cluster.client.get("deployments", "web", "default").spec.template.spec.containers[0]
                      .env[0].value) + 1)
    loops = [RequestLoop(cluster, i) for i in range(clients)]
    for loop in loops:
        loop.start()
    t0 = time.monotonic()
    try:
        spec = web_deployment(replicas, version=version, **template)["spec"]
        cluster.client.patch("deployments", "web", {"spec": {"template": spec["template"]}})

        def rolled():  # the new pods serve, and every old pod has exited (its container is gone)
            pods = cluster.client.list("pods", "default", label_selector="app=web").items
            names = {p.metadata.name for p in pods}
            return len(pods) == replicas and not names & old and all(is_ready(p) for p in pods)
        wait_until(rolled, TIMEOUT, what=f"the rollout to VERSION={version} done and the old pods gone")
        seconds = time.monotonic() - t0
    finally:
        results = [lp.stop() for lp in loops]
    lines = [x for r in results for x in r]
    failed = [x for x in lines if x.startswith("FAILED") or len(x.split()) != 2]
    return {"requests": len(lines), "failed": failed, "seconds": seconds, "version": version,
            "versions": {x.split()[1] for x in lines if x not in failed}}


@contextlib.contextmanager
def web_cluster(tmp, nodes: int, replicas: int, **template):
    """The control plane, ``nodes`` real nodes with kube-proxy and the cluster DNS, the web
    Service and Deployment (``replicas`` ready, ``template`` as web_deployment takes it) and a
    Ready client pod on every node; yields the Cluster, removes everything on exit."""
    reg = Registry()
    try:
        api = start_control_plane(tmp, reg)
        with real_nodes(tmp, api.endpoint, nodes, services=True) as started, \
                Client(api.endpoint, timeout=20) as client:
            c = Cluster(client, started)
            try:
                client.create(from_dict(WEB_SERVICE))
                client.create(from_dict(web_deployment(replicas, **template)))
                for i in range(nodes):
                    client.create(from_dict(client_pod(i)))
                wait_until(lambda: all(is_ready(c.client_pod(i)) for i in range(nodes)), TIMEOUT,
                           what="a Ready client pod on every node")
                dns = f"dnat to {started.layout.dns_listen}:53"
                wait_until(lambda: all(dns in nft.list_table(n.netns) for n in started.layout.nodes), TIMEOUT,
                           what="the kube-dns Service in every node's rules")
                c.settle(replicas)
                yield c
            finally:
                c.close()
    finally:
        reg.cleanup()
