"""How soon the real kubelet reports a pod Ready (the pod startup benchmark's finding,
benchmarks/plane_results.md "Real nodes"): a container seen running is probed at once rather
than a probe period after its pod arrived, and a readiness change is written by the status
workers while every pod worker is busy. One node of a real fabric with our CRI runtime, as
test_kubelet_real (whose fixtures these are); needs root, runc, conmon, busybox-static."""

from __future__ import annotations

import time

import pytest
from test_kubelet_real import (NS, client, cstatus, get, make_pod, node, ready,  # noqa: F401
                               sh, start_kubelet, wait_pod)

from apiserver.pb import core_pb2
from harness.etcd_client import wait_until
from node import mounts
from node.kubelet import volumes

pytestmark = pytest.mark.process


@pytest.fixture
def one_worker_kubelet(client, node, tmp_path):  # noqa: F811
    """A kubelet with a single pod worker: a pod whose sync blocks holds every other pod's."""
    k = start_kubelet(client, node, tmp_path, workers=1)
    try:
        yield k
    finally:
        for p in client.list("pods", NS).items:
            client.delete("pods", p.metadata.name, NS, grace_period_seconds=0)
        # a postStart hook still running (the blocker's sleep) holds the only pod worker, and
        # with it the deletions, for its whole time: end it with its container
        for c in node.client.list_containers():
            node.client.stop_container(c.id, 0)
        try:
            wait_until(lambda: not node.client.list_containers(), timeout=60, what="the pods' containers removed")
        finally:
            k.stop()
            volumes.cleanup(str(tmp_path))
    assert mounts.mounts_under(str(tmp_path)) == []


def test_first_readiness_probe_runs_when_the_container_is_seen_running(client, node, one_worker_kubelet):  # noqa: F811
    # a period of 60 s: Ready within it only if the first probe does not wait a period (a probe
    # that passes at once: the first one comes when the container is seen running)
    probe = core_pb2.Probe(exec=core_pb2.ExecAction(command=["true"]), period_seconds=60)
    web = sh("web", "exec sleep 3600", readiness_probe=probe)
    client.create(make_pod(node, "soon", [web]))
    running = wait_pod(client, "soon", lambda p: p.status.phase == "Running" and p, timeout=60, what="Running")
    t = time.monotonic()
    wait_pod(client, "soon", ready, timeout=30, what="Ready long before the probe's 60 s period")
    assert time.monotonic() - t < 30
    assert cstatus(running, "web").container_id


def test_readiness_is_written_while_the_pod_workers_are_busy(client, node, one_worker_kubelet):  # noqa: F811
    probe = core_pb2.Probe(exec=core_pb2.ExecAction(command=["test", "-e", "/tmp/ready"]),
                           period_seconds=1, failure_threshold=1)
    app = sh("app", "exec sleep 3600", readiness_probe=probe)
    client.create(make_pod(node, "waiting", [app]))
    p = wait_pod(client, "waiting", lambda p: p.status.phase == "Running" and p, timeout=60, what="Running")
    assert not ready(p)
    # the only pod worker is held by this pod's postStart hook for 40 s
    hook = core_pb2.Lifecycle(post_start=core_pb2.LifecycleHandler(
        exec=core_pb2.ExecAction(command=["sleep", "40"])))
    blocker = make_pod(node, "blocker", [sh("slow", "exec sleep 3600", lifecycle=hook)])
    blocker.spec.termination_grace_period_seconds = 60  # the hook's time limit
    client.create(blocker)
    wait_until(lambda: node.client.list_containers() and any(
        c.labels.get("io.kubernetes.pod.name") == "blocker" and c.state == 1
        for c in node.client.list_containers()), timeout=60, what="the blocker's container running")
    cid = cstatus(get(client, "waiting"), "app").container_id.split("://", 1)[1]
    assert node.client.exec_sync(cid, ["touch", "/tmp/ready"], 5).exit_code == 0
    t = time.monotonic()
    wait_pod(client, "waiting", ready, timeout=30, what="Ready while the pod worker runs the blocker's hook")
    assert time.monotonic() - t < 20, "Ready waited for the pod worker"
    blocker = get(client, "blocker")
    assert not blocker.status.container_statuses or not cstatus(blocker, "slow").ready, \
        "the blocker's hook was still running: its sync had not finished"
