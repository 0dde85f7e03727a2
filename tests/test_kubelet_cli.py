"""``python -m node.kubelet.real`` as a process, as the plane runs it: its node
goes Ready, a pod runs; the kubelet SIGKILLed and started again keeps the
running container (same id, same PID, restartCount 0); SIGTERM stops it
cleanly and leaves the pod running. Needs root, runc, conmon, busybox-static."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from harness.nodes import RuntimeNode as Node
from harness.nodes import leftovers, need_runtime

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite

pytestmark = pytest.mark.process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def plane(tmp_path_factory, tmp_path):
    need_runtime()
    node = Node(tmp_path / "node")
    try:
        node.start()
        with apiserver_on_etcdlite(tmp_path_factory, "kubeletcli") as api, \
                Client(api.endpoint, timeout=15) as client:
            yield api, client, node
    finally:
        problems = node.teardown()
    assert problems == [] and leftovers(node) == {}


def spawn_kubelet(api, node, root):
    log = open(os.path.join(root, "kubelet.log"), "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.kubelet", "--server", api.endpoint,
         "--container-runtime-endpoint", f"unix://{node.sock}", "--node-name", node.net.name, "--node-ip", node.net.ip,
         "--pod-cidr", node.net.pod_cidr, "--root-dir", str(root), "--node-netns", node.net.name,
         "--cpu", "2", "--memory", "4Gi", "--heartbeat-interval", "1"],
        stdout=log, stderr=log, env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO)
    log.close()
    return proc


def container_pid(node, cid):
    out = subprocess.run(["runc", "--root", f"/run/{node.prefix}", "state", cid], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)["pid"]


def running_status(client, name):
    try:
        p = client.get("pods", name, "default")
    except ApiError:
        return None
    cs = next(iter(p.status.container_statuses), None)
    if p.status.phase != "Running" or cs is None or not cs.state.HasField("running"):
        return None
    return cs


def test_kubelet_process_survives_sigkill_without_touching_containers(plane, tmp_path):
    api, client, node = plane
    root = tmp_path / "kubelet"
    root.mkdir()
    proc = spawn_kubelet(api, node, root)
    try:
        wait_until(lambda: _ready(client, node.net.name), timeout=30, what="node Ready")
        capacity = dict(client.get("nodes", node.net.name, "").status.capacity)
        assert (capacity["cpu"], capacity["memory"]) == ("2", "4Gi")
        pod = core_pb2.Pod()
        pod.metadata.name = "steady"
        pod.spec.node_name = node.net.name
        pod.spec.containers.add(name="main", image="busybox", command=["sleep", "3600"])
        client.create(pod)
        before = wait_until(lambda: running_status(client, "steady"), timeout=30, what="steady Running")
        cid = before.container_id.split("://", 1)[1]
        pid = container_pid(node, cid)

        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = spawn_kubelet(api, node, root)
        # the new kubelet heartbeats and syncs the pod; the container stays the same process
        first = client.get("leases", node.net.name, "kube-node-lease").spec.renew_time
        wait_until(lambda: client.get("leases", node.net.name, "kube-node-lease").spec.renew_time != first,
                   timeout=30, what="the restarted kubelet's heartbeat")
        # a pod created after the restart runs: the new kubelet has gone through its queue,
        # where "steady" came first (its informer's initial list)
        fresh = core_pb2.Pod()
        fresh.CopyFrom(pod)
        fresh.metadata.name = "fresh"
        client.create(fresh)
        wait_until(lambda: running_status(client, "fresh"), timeout=30, what="fresh Running")
        after = wait_until(lambda: running_status(client, "steady"), timeout=30)
        assert (after.container_id, after.restart_count) == (before.container_id, 0)
        assert container_pid(node, cid) == pid

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert container_pid(node, cid) == pid  # stopping the kubelet stops no pod
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ready(client, name):
    try:
        n = client.get("nodes", name, "")
    except ApiError:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
