"""The whole plane on real nodes: etcdlite, the apiserver, the controller-manager and the
scheduler as processes, and three real nodes (a network namespace, a CRI runtime on runc +
conmon and a kubelet each, laid out by node.plane as `make run` does). The example Deployment's
busybox httpd pods run as containers; each pod's page is fetched by its IP from a pod on another
node; a container killed from outside is restarted; everything the nodes made is gone after."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from apiserver.client import Client
from apiserver.manifest import from_dict
from harness.etcd_client import wait_until
from harness.nodes import need_runtime, real_nodes
from harness.plane import start_control_plane
from harness.procs import PYTHON, REPO, Registry
from node.cri.client import CriClient

pytestmark = pytest.mark.process

EXAMPLE = Path(REPO) / "controllers" / "kctl" / "examples" / "web.yaml"
TIMEOUT = 120


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    need_runtime()
    reg = Registry()
    tmp = tmp_path_factory.mktemp("realplane")
    try:
        api = start_control_plane(tmp, reg)
        with real_nodes(tmp, api.endpoint, 3) as nodes, Client(api.endpoint, timeout=20) as client:
            wait_until(lambda: len(ready_nodes(client)) == 3, TIMEOUT, what="3 real nodes Ready")
            yield client, nodes, api.endpoint
    finally:
        reg.cleanup()


def ready_nodes(client) -> list[str]:
    return [n.metadata.name for n in client.list("nodes").items
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)]


def ready_web_pods(client, want: int):
    pods = [p for p in client.list("pods", "default", label_selector="app=web").items
            if not p.metadata.deletion_timestamp and p.status.pod_ip
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)]
    return pods if len(pods) == want else None


@contextlib.contextmanager
def cri(nodes, node_name: str):
    node = next(n for n in nodes.layout.nodes if n.name == node_name)
    client = CriClient(node.cri_socket, timeout=30)
    try:
        yield client
    finally:
        client.close()


def container_of(client: CriClient, pod) -> str:
    found = [c for c in client.list_containers()
             if c.labels.get("io.kubernetes.pod.uid") == pod.metadata.uid and c.state == 1]  # RUNNING
    assert found, f"no running container of {pod.metadata.name}"
    return found[0].id


def test_example_deployment_serves_each_pods_page_to_pods_on_other_nodes(plane):
    client, nodes, _ = plane
    for doc in yaml.safe_load_all(EXAMPLE.read_text()):
        obj = from_dict(doc)
        obj.metadata.namespace = "default"
        client.create(obj)
    pods = wait_until(lambda: ready_web_pods(client, 6), TIMEOUT, what="6 web pods Ready")
    assert len({p.spec.node_name for p in pods}) == 3, "the scheduler spreads the replicas"
    assert len({p.status.pod_ip for p in pods}) == 6
    for pod in pods:
        other = next(p for p in pods if p.spec.node_name != pod.spec.node_name)
        with cri(nodes, other.spec.node_name) as runtime:
            # (no -T: Debian busybox 1.35 wget crashes when given one)
            got = runtime.exec_sync(container_of(runtime, other),
                                    ["wget", "-qO-", f"http://{pod.status.pod_ip}/"], timeout=10)
        assert got.exit_code == 0, (pod.spec.node_name, other.spec.node_name, got.stderr)
        assert got.stdout.decode().strip() == f"hello from {pod.metadata.name}"


def test_a_container_killed_from_outside_is_restarted(plane):
    client, nodes, _ = plane
    pod = wait_until(lambda: ready_web_pods(client, 6), TIMEOUT, what="6 web pods Ready")[0]
    with cri(nodes, pod.spec.node_name) as runtime:
        cid = container_of(runtime, pod)
        pid = int(runtime.container_status(cid, verbose=True).info["pid"])
    os.kill(pid, signal.SIGKILL)

    def restarted():
        p = client.get("pods", pod.metadata.name, "default")
        [cs] = p.status.container_statuses
        return cs if cs.restart_count == 1 and cs.state.HasField("running") and cs.ready else None

    cs = wait_until(restarted, TIMEOUT, what="the killed container restarted and Ready")
    assert cs.last_state.terminated.exit_code == 137 and cs.last_state.terminated.reason == "Error"


def test_kctl_logs_and_exec_reach_a_pods_container_through_the_apiserver(plane):
    client, _, server = plane
    pod = wait_until(lambda: ready_web_pods(client, 6), TIMEOUT, what="6 web pods Ready")[-1]

    def kctl(*argv):
        return subprocess.run([PYTHON, "-m", "controllers.kctl", "--server", server, *argv],
                              capture_output=True, text=True, timeout=60, cwd=REPO)

    logs = kctl("logs", pod.metadata.name)
    assert logs.returncode == 0, logs.stderr
    assert "serving /www on port 80" in logs.stdout.splitlines()
    page = kctl("exec", pod.metadata.name, "--", "cat", "/www/index.html")
    assert (page.returncode, page.stdout.strip()) == (0, f"hello from {pod.metadata.name}")
    failing = kctl("exec", pod.metadata.name, "--", "sh", "-c", "exit 3")
    assert failing.returncode == 3
