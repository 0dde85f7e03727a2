"""The real kubelet end to end: an apiserver on etcdlite, one node of a real fabric
with our CRI runtime (runc + conmon, busybox), and RealKubelet syncing the pods bound
to it. Pods go Running and Ready (a readiness httpGet through the node's netns),
a container killed from outside restarts with restartCount 1 and its lastState,
a crashing one backs off (CrashLoopBackOff, "back-off 10s"), restartPolicy Never
ends Succeeded or Failed with the exit code, init containers run first, a failing
liveness probe restarts, an unknown image and a missing ConfigMap give
Kubernetes' reasons while the other pods run, a deleted pod leaves nothing in
the runtime, and a restarted kubelet keeps the running containers.
Needs root, runc, conmon, busybox-static."""

from __future__ import annotations

import functools
import ipaddress
import os
import signal
import time

import pytest
from harness.nodes import RuntimeNode as Node
from harness.nodes import leftovers, need_runtime

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite
from node.kubelet.cri_status import read_pod
from node import mounts
from node.kubelet import volumes
from node.kubelet.real import RealKubelet
from node.network.netns import connect_in, http_get_in

pytestmark = pytest.mark.process

NS = "work"
HTTPD = "mkdir -p /www && echo page-of-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    need_runtime()
    with apiserver_on_etcdlite(tmp_path_factory, "realkubelet") as api, Client(api.endpoint, timeout=15) as c:
        c.create(core_pb2.Namespace(metadata={"name": NS}))
        yield c


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    need_runtime()
    n = Node(tmp_path_factory.mktemp("realnode"))
    try:
        n.start()
        yield n
    finally:
        problems = n.teardown()
    assert problems == []
    assert leftovers(n) == {}


def start_kubelet(client, node, root, **kw):
    return RealKubelet(client, node.client, node.client.images, node.net.name, node_ip=node.net.ip,
                       root=str(root), pod_cidr=node.net.pod_cidr,
                       capacity={"cpu": "4", "memory": "8Gi", "pods": "50"},
                       connect=functools.partial(connect_in, node.net.name),
                       sync_period=2.0, retry_period=0.5, heartbeat_interval=1.0, **kw).start()


@pytest.fixture(scope="module")
def kubelet(client, node, tmp_path_factory):
    root = tmp_path_factory.mktemp("kubelet")
    k = start_kubelet(client, node, root)
    k.root_dir = root
    try:
        yield k
    finally:
        k.stop()
        volumes.cleanup(str(root))  # pods still running keep their volumes mounted, as a kubelet's do
    assert mounts.mounts_under(str(root)) == []


def make_pod(node, name, containers, *, inits=(), policy="Always"):
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = name, NS
    p.spec.node_name = node.net.name
    p.spec.restart_policy = policy
    p.spec.termination_grace_period_seconds = 2
    for c in inits:
        p.spec.init_containers.add().CopyFrom(c)
    for c in containers:
        p.spec.containers.add().CopyFrom(c)
    return p


def sh(name, script, **fields):
    return core_pb2.Container(name=name, image="busybox", command=["sh", "-c", script], **fields)


def get(client, name):
    return client.get("pods", name, NS)


def cstatus(pod, name) -> core_pb2.ContainerStatus:
    """The container's status; an empty one until the kubelet wrote it."""
    return next((c for c in (*pod.status.container_statuses, *pod.status.init_container_statuses)
                 if c.name == name), core_pb2.ContainerStatus())


def ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def wait_pod(client, name, pred, timeout=30, what="pod state"):
    try:
        return wait_until(lambda: pred(get(client, name)), timeout=timeout, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}; the pod's status now:\n{get(client, name).status}") from None


def test_node_registers_ready(client, kubelet, node):
    wait_until(lambda: _node_ready(client, node.net.name), timeout=20, what="node Ready")
    n = client.get("nodes", node.net.name, "")
    assert n.spec.pod_cidr == node.net.pod_cidr
    assert n.status.node_info.container_runtime_version.startswith(kubelet.runtime_name + "://")


def _node_ready(client, name):
    try:
        n = client.get("nodes", name, "")
    except ApiError:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)


def test_httpd_pod_runs_ready_and_serves_its_page(client, kubelet, node):
    probe = core_pb2.Probe(http_get=core_pb2.HTTPGetAction(path="/", port="web"), period_seconds=1)
    web = sh("web", HTTPD, ports=[core_pb2.ContainerPort(name="web", container_port=8080)], readiness_probe=probe)
    client.create(make_pod(node, "web", [web]))
    wait_pod(client, "web", lambda p: p.status.phase == "Running" and ready(p), what="web Running and Ready")
    p = get(client, "web")
    assert ipaddress.ip_address(p.status.pod_ip) in ipaddress.ip_network(node.net.pod_cidr)
    assert p.status.host_ip == node.net.ip
    cs = cstatus(p, "web")
    assert cs.container_id.startswith(f"{kubelet.runtime_name}://")
    assert (cs.ready, cs.started, cs.restart_count) == (True, True, 0)
    assert cs.state.running.started_at and cs.image_id
    page = http_get_in(node.net.name, f"http://{p.status.pod_ip}:8080/", 5)
    assert page.status == 200 and page.body.decode().strip() == "page-of-web"


def test_killed_container_restarts_with_last_state(client, kubelet, node):
    client.create(make_pod(node, "victim", [sh("main", "exec sleep 3600")]))
    wait_pod(client, "victim", lambda p: p.status.phase == "Running", what="victim Running")
    first = cstatus(get(client, "victim"), "main").container_id
    pid = _container_pid(node, first.split("://", 1)[1])
    os.kill(pid, signal.SIGKILL)
    wait_pod(client, "victim", lambda p: cstatus(p, "main").restart_count == 1
             and cstatus(p, "main").state.HasField("running"), what="victim restarted")
    cs = cstatus(get(client, "victim"), "main")
    assert cs.container_id != first
    assert (cs.last_state.terminated.exit_code, cs.last_state.terminated.reason) == (137, "Error")


def _container_pid(node, cid):
    """The container's init process, from the runtime's view (runc state)."""
    import json
    import subprocess
    out = subprocess.run(["runc", "--root", f"/run/{node.prefix}", "state", cid], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)["pid"]


def test_crashing_container_backs_off(client, kubelet, node):
    client.create(make_pod(node, "crasher", [sh("boom", "echo bye; exit 1")]))
    wait_pod(client, "crasher", lambda p: cstatus(p, "boom").state.waiting.reason == "CrashLoopBackOff",
             timeout=40, what="CrashLoopBackOff")
    cs = cstatus(get(client, "crasher"), "boom")
    assert cs.state.waiting.message.startswith("back-off 10s restarting failed container=boom pod=crasher_work(")
    assert cs.last_state.terminated.exit_code == 1
    assert cs.restart_count >= 1
    assert get(client, "crasher").status.phase == "Running"
    wait_until(lambda: _events(client, "crasher").get("BackOff", "").startswith(
        "Back-off restarting failed container boom in pod crasher_work("), timeout=10, what="BackOff event")


def test_restart_delays_grow(client, tmp_path):
    """A kubelet with a 1 s back-off (cap 8 s), on a node of its own, shows the doubling on real restarts."""
    node = Node(tmp_path / "node")
    try:
        node.start()
        k = start_kubelet(client, node, tmp_path / "kubelet", backoff=(1.0, 8.0))
        try:
            client.create(make_pod(node, "doubler", [sh("boom", "exit 1")]))
            uid = wait_until(lambda: _uid(client, "doubler"), timeout=10)
            runs: dict[str, tuple[float, float]] = {}  # container id -> (started, finished)

            def seen_runs():
                for c in read_pod(node.client, uid).containers:
                    if c.finished_at:
                        runs[c.id] = (c.started_at, c.finished_at)
                return len(runs) >= 5
            wait_until(seen_runs, timeout=40, interval=0.05, what="five runs")
            ordered = sorted(runs.values())
            gaps = [round(b[0] - a[1], 1) for a, b in zip(ordered, ordered[1:])]
            # the first restart is at once, then 1, 2, 4 s (plus the sync's own latency)
            assert gaps[0] < 1.0, gaps
            for want, got in zip((1, 2, 4), gaps[1:]):
                assert want <= got < want + 2.0, gaps
        finally:
            k.stop()
            client.delete("pods", "doubler", NS)
    finally:
        problems = node.teardown()
    assert problems == [] and leftovers(node) == {}


def _uid(client, name):
    try:
        return get(client, name).metadata.uid
    except ApiError:
        return None


@pytest.mark.parametrize("script,phase,code,reason", [("exit 0", "Succeeded", 0, "Completed"),
                                                      ("exit 3", "Failed", 3, "Error")])
def test_never_restart_policy_ends_the_pod(client, kubelet, node, script, phase, code, reason):
    name = f"once-{code}"
    client.create(make_pod(node, name, [sh("job", script)], policy="Never"))
    wait_pod(client, name, lambda p: p.status.phase == phase, what=phase)
    t = cstatus(get(client, name), "job").state.terminated
    assert (t.exit_code, t.reason) == (code, reason)
    uid = get(client, name).metadata.uid
    # the finished pod's sandbox is stopped
    wait_until(lambda: all(s.state != "SANDBOX_READY" for s in read_pod(node.client, uid).sandboxes),
               timeout=10, what="sandbox stopped")


def test_init_containers_run_first(client, kubelet, node):
    client.create(make_pod(node, "inits", [sh("main", "exec sleep 3600")],
                           inits=[sh("first", "exit 0"), sh("second", "sleep 1")]))
    wait_pod(client, "inits", lambda p: p.status.phase == "Running", what="inits Running")
    p = get(client, "inits")
    first, second, main = cstatus(p, "first"), cstatus(p, "second"), cstatus(p, "main")
    assert first.state.terminated.reason == second.state.terminated.reason == "Completed"
    assert first.state.terminated.finished_at <= second.state.terminated.started_at
    assert second.state.terminated.finished_at <= main.state.running.started_at
    assert any(c.type == "Initialized" and c.status == "True" for c in p.status.conditions)


def test_failing_liveness_probe_restarts(client, kubelet, node):
    probe = core_pb2.Probe(exec=core_pb2.ExecAction(command=["test", "-e", "/tmp/healthy"]),
                           period_seconds=1, failure_threshold=1)
    c = sh("app", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 3600", liveness_probe=probe)
    client.create(make_pod(node, "unhealthy", [c]))
    wait_pod(client, "unhealthy", lambda p: cstatus(p, "app").restart_count >= 1, timeout=40,
             what="liveness restart")
    seen = wait_until(lambda: (lambda ev: ev if {"Unhealthy", "Killing", "Started"} <= set(ev) else None)(
        _events(client, "unhealthy")), timeout=10, what="the kubelet's events")
    assert seen["Unhealthy"].startswith("Liveness probe failed")
    assert seen["Killing"] == "Container app failed liveness probe, will be restarted"
    assert seen["Started"] == "Started container app"


def test_failing_readiness_probe_drops_ready_without_restart(client, kubelet, node):
    probe = core_pb2.Probe(exec=core_pb2.ExecAction(command=["test", "-e", "/tmp/ready"]),
                           period_seconds=1, failure_threshold=1)
    c = sh("app", "touch /tmp/ready; exec sleep 3600", readiness_probe=probe)
    client.create(make_pod(node, "flaky", [c]))
    wait_pod(client, "flaky", ready, what="flaky Ready")
    cid = cstatus(get(client, "flaky"), "app").container_id.split("://", 1)[1]
    assert node.client.exec_sync(cid, ["rm", "/tmp/ready"], 5).exit_code == 0
    wait_pod(client, "flaky", lambda p: not ready(p) and not cstatus(p, "app").ready, what="flaky not Ready")
    p = get(client, "flaky")
    assert next(c.reason for c in p.status.conditions if c.type == "Ready") == "ContainersNotReady"
    assert (cstatus(p, "app").restart_count, p.status.phase) == (0, "Running")
    assert node.client.exec_sync(cid, ["touch", "/tmp/ready"], 5).exit_code == 0
    wait_pod(client, "flaky", ready, what="flaky Ready again")


def test_memory_hog_is_oom_killed(client, kubelet, node):
    hog = sh("hog", "a=xxxxxxxx; while true; do a=$a$a; done",
             resources=core_pb2.ResourceRequirements(limits={"memory": "32Mi"}))
    client.create(make_pod(node, "hog", [hog], policy="Never"))
    wait_pod(client, "hog", lambda p: p.status.phase == "Failed", timeout=60, what="hog Failed")
    t = cstatus(get(client, "hog"), "hog").state.terminated
    assert (t.reason, t.exit_code) == ("OOMKilled", 137)


def test_bad_input_gives_kubernetes_reasons(client, kubelet, node):
    client.create(make_pod(node, "noimage", [core_pb2.Container(name="c", image="nosuch/image:1",
                                                                 command=["true"])]))
    env = core_pb2.EnvVar(name="X", value_from=core_pb2.EnvVarSource(
        config_map_key_ref=core_pb2.ConfigMapKeySelector(name="missing", key="k")))
    client.create(make_pod(node, "noconfig", [sh("c", "sleep 3600", env=[env])]))
    wait_pod(client, "noimage", lambda p: cstatus(p, "c").state.waiting.reason in ("ErrImagePull", "ImagePullBackOff"),
             what="ErrImagePull")
    wait_pod(client, "noimage", lambda p: cstatus(p, "c").state.waiting.reason == "ImagePullBackOff",
             what="ImagePullBackOff")
    wait_pod(client, "noconfig", lambda p: cstatus(p, "c").state.waiting.reason == "CreateContainerConfigError",
             what="CreateContainerConfigError")
    assert cstatus(get(client, "noconfig"), "c").state.waiting.message == 'configmap "missing" not found'
    assert get(client, "noimage").status.phase == "Pending"
    # a volume naming a missing ConfigMap: ContainerCreating, and a FailedMount event
    p = make_pod(node, "novolume", [sh("c", "sleep 3600", volume_mounts=[
        core_pb2.VolumeMount(name="v", mount_path="/v")])])
    p.spec.volumes.add(name="v", config_map=core_pb2.ConfigMapVolumeSource(name="absent"))
    client.create(p)
    wait_until(lambda: _events(client, "novolume").get("FailedMount") ==
               'MountVolume.SetUp failed for volume "v" : configmap "absent" not found', timeout=10,
               what="FailedMount event")
    p = get(client, "novolume")
    assert p.status.phase == "Pending"
    assert cstatus(p, "c").state.waiting.reason == "ContainerCreating"
    # the ConfigMap appears: the container starts
    cm = core_pb2.ConfigMap(data={"k": "v"})
    cm.metadata.name, cm.metadata.namespace = "missing", NS
    client.create(cm)
    wait_pod(client, "noconfig", lambda p: p.status.phase == "Running", what="noconfig Running")
    assert ready(get(client, "web"))  # the other pods kept being served


def test_deleted_pod_leaves_nothing(client, kubelet, node):
    client.create(make_pod(node, "doomed", [sh("main", "exec sleep 3600")]))
    wait_pod(client, "doomed", lambda p: p.status.phase == "Running", what="doomed Running")
    uid = get(client, "doomed").metadata.uid
    client.delete("pods", "doomed", NS)
    wait_until(lambda: _gone(client, "doomed"), timeout=30, what="doomed deleted")
    wait_until(lambda: not read_pod(node.client, uid).containers and not read_pod(node.client, uid).sandboxes,
               timeout=20, what="runtime cleaned")


def test_graceful_deletion_runs_pre_stop_then_kills_after_the_grace(client, kubelet, node):
    c = sh("main", "trap '' TERM; echo started; while true; do sleep 0.2; done")
    c.lifecycle.pre_stop.exec.command[:] = ["sh", "-c", "echo pre-stop-ran > /proc/1/fd/1"]
    client.create(make_pod(node, "stubborn", [c]))  # terminationGracePeriodSeconds: 2
    wait_pod(client, "stubborn", lambda p: p.status.phase == "Running", what="stubborn Running")
    p = get(client, "stubborn")
    uid = p.metadata.uid
    t0 = time.monotonic()
    client.delete("pods", "stubborn", NS)
    wait_until(lambda: _gone(client, "stubborn"), timeout=30, what="stubborn deleted")
    took = time.monotonic() - t0
    assert 2 <= took < 15, took  # SIGTERM ignored: SIGKILL came after the grace period
    log = os.path.join(kubelet.root_dir, "logs", f"{NS}_stubborn_{uid}", "main", "0.log")
    text = open(log).read()
    assert "started" in text and "pre-stop-ran" in text


def test_failing_post_start_hook_kills_the_container(client, kubelet, node):
    c = sh("main", "exec sleep 3600")
    c.lifecycle.post_start.exec.command[:] = ["sh", "-c", "exit 7"]
    client.create(make_pod(node, "badhook", [c]))
    wait_pod(client, "badhook", lambda p: cstatus(p, "main").state.waiting.reason in
             ("PostStartHookError", "CrashLoopBackOff") and cstatus(p, "main").restart_count >= 1,
             what="PostStartHookError")
    cs = cstatus(get(client, "badhook"), "main")
    assert cs.last_state.terminated.exit_code == 137  # killed by the kubelet


def exec_out(node, pod, container, cmd) -> str:
    cid = cstatus(pod, container).container_id.split("://", 1)[1]
    resp = node.client.exec_sync(cid, cmd, 5)
    assert resp.exit_code == 0, (cmd, resp.stderr)
    return resp.stdout.decode()


def test_config_map_env_and_volume_follow_the_object(client, kubelet, node):
    cm = core_pb2.ConfigMap(data={"greeting": "hello", "mode": "a"})
    cm.metadata.name, cm.metadata.namespace = "settings", NS
    client.create(cm)
    c = sh("app", "exec sleep 3600", env=[core_pb2.EnvVar(name="GREETING", value_from=core_pb2.EnvVarSource(
        config_map_key_ref=core_pb2.ConfigMapKeySelector(name="settings", key="greeting")))],
        volume_mounts=[core_pb2.VolumeMount(name="cfg", mount_path="/etc/settings")])
    p = make_pod(node, "configured", [c])
    p.spec.volumes.add(name="cfg", config_map=core_pb2.ConfigMapVolumeSource(name="settings"))
    client.create(p)
    wait_pod(client, "configured", lambda p: p.status.phase == "Running", what="configured Running")
    p = get(client, "configured")
    assert exec_out(node, p, "app", ["sh", "-c", "echo $GREETING"]).strip() == "hello"
    assert exec_out(node, p, "app", ["cat", "/etc/settings/mode"]) == "a"
    cm = client.get("configmaps", "settings", NS)
    cm.data["mode"] = "b"
    client.update(cm)
    # within the kubelet's sync period (2 s here), in the running container
    wait_until(lambda: exec_out(node, p, "app", ["cat", "/etc/settings/mode"]) == "b", timeout=10,
               what="the new file in the container")
    assert cstatus(get(client, "configured"), "app").restart_count == 0


def test_secret_volume_is_tmpfs_and_nowhere_on_disk(client, kubelet, node):
    secret_bytes = f"s3cr3t-{os.getpid()}-{time.monotonic_ns()}".encode()
    sec = core_pb2.Secret(data={"password": secret_bytes})
    sec.metadata.name, sec.metadata.namespace = "creds", NS
    client.create(sec)
    c = sh("app", "exec sleep 3600", volume_mounts=[core_pb2.VolumeMount(name="creds", mount_path="/etc/creds",
                                                                          read_only=True)])
    p = make_pod(node, "secretive", [c])
    p.spec.volumes.add(name="creds", secret=core_pb2.SecretVolumeSource(secret_name="creds"))
    client.create(p)
    wait_pod(client, "secretive", lambda p: p.status.phase == "Running", what="secretive Running")
    p = get(client, "secretive")
    assert exec_out(node, p, "app", ["cat", "/etc/creds/password"]).encode() == secret_bytes
    mounts = [line.split() for line in exec_out(node, p, "app", ["cat", "/proc/mounts"]).splitlines()]
    assert any(m[1] == "/etc/creds" and m[2] == "tmpfs" for m in mounts), mounts
    tmpfs = {line.split()[1] for line in open("/proc/self/mounts") if line.split()[2] == "tmpfs"}
    for top in (str(kubelet.root_dir), node.root, node.images):
        for d, dirs, files in os.walk(top):
            dirs[:] = [x for x in dirs if os.path.join(d, x) not in tmpfs]
            for f in files:
                path = os.path.join(d, f)
                try:
                    if not (os.path.isfile(path) and not os.path.islink(path) and not os.path.ismount(path)
                            and os.path.getsize(path) < 16 << 20):  # (a bind-mounted namespace is no file to read)
                        continue
                    with open(path, "rb") as fh:
                        data = fh.read()
                except FileNotFoundError:
                    continue  # gone meanwhile: another pod's container torn down during the walk
                assert secret_bytes not in data, f"the secret is on disk in {path}"


def test_empty_dir_survives_a_restart_and_goes_with_the_pod(client, kubelet, node):
    c = sh("app", "exec sleep 3600", volume_mounts=[core_pb2.VolumeMount(name="cache", mount_path="/cache")])
    p = make_pod(node, "scratchy", [c])
    p.spec.volumes.add(name="cache", empty_dir=core_pb2.EmptyDirVolumeSource())
    client.create(p)
    wait_pod(client, "scratchy", lambda p: p.status.phase == "Running", what="scratchy Running")
    p = get(client, "scratchy")
    exec_out(node, p, "app", ["sh", "-c", "echo kept > /cache/file"])
    os.kill(_container_pid(node, cstatus(p, "app").container_id.split("://", 1)[1]), signal.SIGKILL)
    wait_pod(client, "scratchy", lambda p: cstatus(p, "app").restart_count == 1
             and cstatus(p, "app").state.HasField("running"), what="scratchy restarted")
    p = get(client, "scratchy")
    assert exec_out(node, p, "app", ["cat", "/cache/file"]) == "kept\n"
    vol = kubelet.volumes.pod_dir(p.metadata.uid)
    assert os.path.isdir(vol)
    client.delete("pods", "scratchy", NS)
    wait_until(lambda: _gone(client, "scratchy"), timeout=30, what="scratchy deleted")
    wait_until(lambda: not os.path.exists(vol), timeout=20, what="its volumes removed")


def _events(client, name) -> dict:
    """{reason: message} of the events about pod ``name``."""
    return {e.reason: e.message for e in client.list("events", NS).items if e.involved_object.name == name}


def _gone(client, name):
    try:
        get(client, name)
    except ApiError as e:
        return e.reason == "NotFound"
    return False


def test_restarted_kubelet_keeps_running_containers(client, kubelet, node):
    before = cstatus(get(client, "web"), "web")
    kubelet.stop()
    again = start_kubelet(client, node, kubelet.root_dir)
    try:
        assert again.wait_synced(20)
        assert again.adopt_or_clean() == 0
        # a change of the pod makes the new kubelet sync it: it must keep the container
        p = get(client, "web")
        p.metadata.labels["touched"] = "yes"
        client.update(p)
        wait_until(lambda: "web" in {k.split("/")[1] for k in again.pods.store.keys()}, timeout=10)
        uid = before_uid = get(client, "web").metadata.uid
        # the new kubelet synced the pod and wrote its status from what the runtime runs
        wait_until(lambda: again._status_of(uid) is not None, timeout=20, what="web synced by the new kubelet")
        wait_pod(client, "web", lambda p: ready(p), what="web still Ready")
        assert before_uid == uid
        after = cstatus(get(client, "web"), "web")
        assert (after.container_id, after.restart_count) == (before.container_id, before.restart_count)
    finally:
        again.stop()
