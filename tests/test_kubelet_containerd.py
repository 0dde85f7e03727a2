"""Our kubelet on the reference runtime: ``python -m node.kubelet`` on Debian's containerd 1.6 CRI
plugin, on two real nodes of our fabric, as the apiserver runs on a real etcd. Nothing of our
runtime takes part: containerd runs runc through its shims, CNI's bridge plugin puts each pod on
its node's bridge (containerd runs inside the node's network namespace), the images are our busybox
and a sandbox image, imported with ``ctr``; the kubelet's --cgroup-root keeps the pods' cgroups
under the node's prefix.

What Kubernetes' kubelet tests show, here on containerd: the node goes Ready once the kubelet has
given the podCIDR (containerd writes its CNI config from it); an httpd pod is Ready through an
httpGet probe from the node's namespace and serves its page by pod IP, to pods on the other node
too; exec and logs (previous, follow) go through the apiserver to the kubelet and containerd (CRI
ExecSync, CRI-format files); ConfigMap env, ConfigMap/Secret/emptyDir volumes; restartPolicy,
init containers, liveness and readiness probes, OOMKilled, hooks, graceful deletion; a container
killed from outside restarts, a dead sandbox is replaced, a crashing container backs off; an
unknown image gives ErrImagePull then ImagePullBackOff (the pull reaches 127.0.0.1:1 only); bad
input gives Kubernetes' reasons; a restarted kubelet keeps the running containers; deleted pods
leave nothing in containerd nor in the cgroups, and everything is removed at the end.
Needs root, containerd, containernetworking-plugins, busybox-static."""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import os
import signal
import subprocess
import time

import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from harness import containerd as ctd_harness
from harness.containerd import PAUSE_IMAGE, Containerd, build_pause
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite
from harness.procs import PYTHON, REPO, Registry, ServerProcess
from httpstream import websocket
from node import network
from node.cri.client import CriClient
from node import mounts
from node.kubelet import crilog, podcgroups, volumes
from node.network.fabric import Fabric
from node.network.netns import http_get_in
from node.plane import busybox_version
from node.runtime import cgroups

pytestmark = [pytest.mark.process,
              pytest.mark.skipif(bool(ctd_harness.missing()), reason=str(ctd_harness.missing())),
              pytest.mark.skipif(not os.path.exists("/usr/bin/busybox"),
                                 reason="busybox-static is not installed (make node-deps)")]

NS = "work"
NODE = "ctd-node-0"  # the node most tests use
HTTPD = "mkdir -p /www && echo page-of-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"
TIMEOUT = 60
# a tagged name: ":latest" means imagePullPolicy Always, and containerd, unlike our runtime's
# local store, really pulls (from 127.0.0.1:1 here, so it fails), as a Kubernetes node would
BUSYBOX = f"docker.io/library/busybox:{busybox_version() or 'local'}"


class KubeletProcess(ServerProcess):
    """``python -m node.kubelet`` on containerd's socket; ready once its Node is registered."""

    kind = "kubelet"

    def __init__(self, dir, server: str, endpoint: str, name: str, net, registry: Registry) -> None:
        self.server, self.cri, self.node_name, self.net = server, endpoint, name, net
        self.root = os.path.join(dir, "kubelet")
        super().__init__("kubelet", dir, registry)

    @property
    def endpoint(self) -> str:
        return self.server

    def argv(self) -> list[str]:
        return [PYTHON, "-m", "node.kubelet", "--server", self.server, "--node-name", self.node_name,
                "--container-runtime-endpoint", self.cri, "--root-dir", self.root,
                "--node-ip", self.net.ip, "--pod-cidr", self.net.pod_cidr, "--node-netns", self.net.name,
                "--cgroup-root", "/" + self.net.name, "--heartbeat-interval", "2", "--log-level", "info",
                "--runtime-stream-netns", self.net.name, "--housekeeping-interval", "1s"]

    def ready_probe(self, rpc_timeout: float) -> str | None:
        with Client(self.server, timeout=rpc_timeout) as c:
            try:
                c.get("nodes", self.node_name, "")
            except ApiError as e:
                return str(e)
        return None


class CtdNode:
    """Node ``index`` of the fabric, whose runtime is containerd (in the node's namespace)."""

    def __init__(self, dir, server: str, fabric: Fabric, index: int) -> None:
        self.dir, self.fabric, self.index = dir, fabric, index
        self.name = f"ctd-node-{index}"
        self.net = fabric.node(index)
        self.reg = Registry()
        self.containerd = Containerd(dir / "ctd", self.reg, netns=self.net.name)
        self.kubelet = KubeletProcess(dir, server, self.containerd.endpoint, self.name, self.net, self.reg)
        self.cri: CriClient | None = None

    def start(self, store) -> None:
        self.fabric.add_node(self.index)
        self.containerd.start()
        self.containerd.import_images(store, [BUSYBOX, PAUSE_IMAGE])
        self.cri = CriClient(self.containerd.endpoint, timeout=30)
        self.kubelet.start()

    def teardown(self) -> list[str]:
        """Everything the node's containerd and kubelet made is removed: what could not be."""
        if self.cri is not None:
            self.cri.close()
        self.kubelet.kill()
        problems = ctd_harness.cleanup(self.containerd.dir, self.containerd.socket, self.containerd,
                                       cgroup_root=self.net.name)
        self.reg.cleanup()
        volumes.cleanup(self.kubelet.root)  # what pods left mounted, as a kubelet's stop leaves them
        problems += [f"mounted: {m}" for m in mounts.mounts_under(str(self.dir))]
        problems += [f"cgroup {d}" for d in cgroups.tree(self.net.name)]
        return problems


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "ctdkubelet") as api, Client(api.endpoint, timeout=15) as c:
        c.create(core_pb2.Namespace(metadata={"name": NS}))
        c.server = api.endpoint
        yield c


@pytest.fixture(scope="module")
def nodes(client, tmp_path_factory):
    """Two containerd nodes on one fabric; everything they made is gone after."""
    from node.runtime.images import ImageStore, build_busybox

    dir = tmp_path_factory.mktemp("ctdnodes")
    prefix = network.new_prefix()
    fabric = Fabric(prefix)
    started: list[CtdNode] = []
    problems: list[str] = []
    try:
        fabric.create()
        store = ImageStore(str(dir / "images"))
        store.tag(build_busybox(store), BUSYBOX)
        build_pause(store, store.resolve(BUSYBOX))
        for i in range(2):
            started.append(CtdNode(dir / f"n{i}", client.server, fabric, i))
            started[-1].start(store)
        yield started
    finally:
        for n in started:
            problems += n.teardown()
        fabric.destroy()
        network.cleanup(prefix)
        problems += [f"netns {n}" for n in network.prefixed_netns(prefix)]
    assert problems == []


@pytest.fixture(scope="module")
def node(nodes):
    return nodes[0]


# ---- helpers ----

def make_pod(name, containers, *, policy="Always", node=NODE):
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = name, NS
    p.spec.node_name = node
    p.spec.restart_policy = policy
    p.spec.termination_grace_period_seconds = 2
    for c in containers:
        p.spec.containers.add().CopyFrom(c)
    return p


def sh(name, script, **fields):
    return core_pb2.Container(name=name, image=BUSYBOX, command=["sh", "-c", script], **fields)


def get(client, name):
    return client.get("pods", name, NS)


def cstatus(pod, name) -> core_pb2.ContainerStatus:
    return next((c for c in pod.status.container_statuses if c.name == name), core_pb2.ContainerStatus())


def ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def wait_pod(client, name, pred, timeout=TIMEOUT, what="pod state"):
    try:
        return wait_until(lambda: pred(get(client, name)), timeout=timeout, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}; the pod's status now:\n{get(client, name).status}") from None


def container_id(pod, name) -> str:
    cid = cstatus(pod, name).container_id
    assert cid.startswith("containerd://"), cid
    return cid.split("://", 1)[1]


def kctl(client, *argv):
    return subprocess.run([PYTHON, "-m", "controllers.kctl", "--server", client.server, "-n", NS, *argv],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def node_ready(client, name=NODE) -> bool:
    try:
        n = client.get("nodes", name, "")
    except ApiError:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)


def events(client, name) -> dict:
    """{reason: message} of the events about pod ``name``."""
    return {e.reason: e.message for e in client.list("events", NS).items if e.involved_object.name == name}


def secret_on_disk(data: bytes, top) -> list[str]:
    """Files under ``top`` holding ``data``, tmpfs and other mounts left out (a container's
    rootfs, the Secret volume's tmpfs, pod network namespaces)."""
    found = []
    for d, dirs, files in os.walk(top):
        dirs[:] = [x for x in dirs if not os.path.ismount(os.path.join(d, x))]
        for f in files:
            path = os.path.join(d, f)
            try:
                if os.path.isfile(path) and not os.path.islink(path) and not os.path.ismount(path) \
                        and os.path.getsize(path) < 16 << 20:
                    with open(path, "rb") as fh:
                        if data in fh.read():
                            found.append(path)
            except FileNotFoundError:
                pass  # removed while the walk went on (another pod torn down meanwhile)
    return found


def gone(client, name) -> bool:
    try:
        get(client, name)
    except ApiError as e:
        return e.reason == "NotFound"
    return False


# ---- the tests ----

def test_node_is_ready_once_the_kubelet_gave_containerd_its_pod_cidr(client, node):
    wait_until(lambda: node_ready(client), timeout=TIMEOUT, what="node Ready")
    n = client.get("nodes", NODE, "")
    assert n.status.node_info.container_runtime_version.startswith("containerd://1.")
    assert n.spec.pod_cidr == node.net.pod_cidr
    conds = {c.type: c.status for c in node.cri.status().status.conditions}
    assert conds == {"RuntimeReady": True, "NetworkReady": True}
    # containerd wrote its CNI config from the template with the podCIDR the kubelet sent
    [conf] = os.listdir(node.containerd.cni_conf_dir)
    assert node.net.pod_cidr in (node.containerd.cni_conf_dir / conf).read_text()


def test_httpd_pod_is_ready_through_its_probe_and_serves_its_page_by_pod_ip(client, node):
    probe = core_pb2.Probe(http_get=core_pb2.HTTPGetAction(path="/", port="web"), period_seconds=1)
    web = sh("web", HTTPD, ports=[core_pb2.ContainerPort(name="web", container_port=8080)], readiness_probe=probe)
    client.create(make_pod("web", [web]))
    wait_pod(client, "web", lambda p: p.status.phase == "Running" and ready(p), what="web Running and Ready")
    p = get(client, "web")
    assert ipaddress.ip_address(p.status.pod_ip) in ipaddress.ip_network(node.net.pod_cidr)
    assert p.status.host_ip == node.net.ip
    cs = cstatus(p, "web")
    assert (cs.ready, cs.started, cs.restart_count) == (True, True, 0)
    assert cs.image_id.startswith("sha256:") and cs.state.running.started_at
    page = http_get_in(node.net.name, f"http://{p.status.pod_ip}:8080/", 5)
    assert page.status == 200 and page.body.decode().strip() == "page-of-web"
    # the container's cgroup is the pod's under the node's prefix (the kubelet's --cgroup-root)
    cgroup = f"/sys/fs/cgroup/memory/{node.net.name}/kubepods/besteffort/pod{p.metadata.uid}/{container_id(p, 'web')}"
    assert os.path.isdir(cgroup)
    assert node.containerd.tasks()[container_id(p, "web")] in cgroups.tasks(cgroup)


def test_pods_on_two_containerd_nodes_reach_each_other_by_ip(client, nodes):
    """Each node's pods are on its own bridge and podCIDR (its containerd's CNI config from its
    kubelet); the fabric routes between nodes carry pod-to-pod traffic."""
    far_node = nodes[1]
    wait_until(lambda: node_ready(client, far_node.name), timeout=TIMEOUT, what=f"{far_node.name} Ready")
    probe = core_pb2.Probe(http_get=core_pb2.HTTPGetAction(path="/", port="8080"), period_seconds=1)
    client.create(make_pod("far", [sh("web", HTTPD, readiness_probe=probe)], node=far_node.name))
    wait_pod(client, "far", ready, what="far Ready")
    far = get(client, "far")
    assert ipaddress.ip_address(far.status.pod_ip) in ipaddress.ip_network(far_node.net.pod_cidr)
    assert far.status.host_ip == far_node.net.ip
    web = wait_pod(client, "web", lambda p: ready(p) and p, what="web Ready")
    # (no -T: Debian busybox 1.35 wget crashes when given one)
    got = nodes[0].cri.exec_sync(container_id(web, "web"), ["wget", "-qO-", f"http://{far.status.pod_ip}:8080/"], 10)
    assert (got.exit_code, got.stdout.decode().strip()) == (0, "page-of-far"), got.stderr
    back = far_node.cri.exec_sync(container_id(far, "web"), ["wget", "-qO-", f"http://{web.status.pod_ip}:8080/"], 10)
    assert (back.exit_code, back.stdout.decode().strip()) == (0, "page-of-web"), back.stderr


def test_stats_summary_reads_containerds_cgroups_and_pod_namespaces(client, node):
    """/stats/summary on containerd: each container's cgroup found from containerd's verbose
    status (below --cgroup-root), the pod's the containers' parent, its interfaces from the
    network namespace containerd's runtime spec names."""
    web = wait_pod(client, "web", lambda p: ready(p) and p, what="web Ready")
    port = client.get("nodes", NODE, "").status.daemon_endpoints.kubelet_endpoint.port

    def web_stats():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/stats/summary")
            summary = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        pod = next((p for p in summary["pods"] if p["podRef"]["name"] == "web"), None)
        return pod if pod and pod["containers"] and "usageNanoCores" in pod.get("cpu", {}) and \
            (pod.get("network") or {}).get("name") == "eth0" else None

    pod = wait_until(web_stats, timeout=TIMEOUT, what="the web pod's stats")
    assert pod["podRef"] == {"name": "web", "namespace": NS, "uid": web.metadata.uid}
    [c] = pod["containers"]
    assert c["name"] == "web" and c["cpu"]["usageCoreNanoSeconds"] > 0 and c["memory"]["workingSetBytes"] > 0
    assert pod["memory"]["workingSetBytes"] >= c["memory"]["workingSetBytes"]
    assert pod["network"]["rxBytes"] > 0  # the readiness probes' requests


def test_exec_and_logs_reach_the_container_through_the_apiserver(client, node):
    c = sh("talker", "echo out-line; echo err-line >&2; exec sleep 3600")
    client.create(make_pod("talker", [c]))
    wait_pod(client, "talker", lambda p: p.status.phase == "Running", what="talker Running")
    p = get(client, "talker")
    # the file containerd writes is in the CRI format, where the kubelet said
    path = os.path.join(node.kubelet.root, "logs", f"{NS}_talker_{p.metadata.uid}", "talker", "0.log")
    wait_until(lambda: os.path.exists(path) and len(open(path, "rb").readlines()) == 2, timeout=10,
               what="two log records")
    records = sorted((crilog.parse_record(line.rstrip(b"\n")) for line in open(path, "rb")), key=lambda r: r.stream)
    assert [(r.stream, r.partial, r.content) for r in records] == [
        ("stderr", False, b"err-line"), ("stdout", False, b"out-line")]
    logs = kctl(client, "logs", "talker")
    assert logs.returncode == 0, logs.stderr
    assert sorted(logs.stdout.splitlines()) == ["err-line", "out-line"]
    got = kctl(client, "exec", "talker", "--", "sh", "-c", "echo $((6*7)); hostname")
    assert (got.returncode, got.stdout.split()) == (0, ["42", "talker"])
    assert kctl(client, "exec", "talker", "--", "sh", "-c", "exit 3").returncode == 3
    # CRI ExecSync straight to containerd, as the kubelet's exec probes use it
    resp = node.cri.exec_sync(container_id(p, "talker"), ["cat", "/etc/hostname"], 5)
    assert (resp.exit_code, resp.stdout.decode().strip()) == (0, "talker")
    # an interactive exec on the REST API: the apiserver and the kubelet relay it to containerd's
    # own streaming server (dialled in the node's namespace: --runtime-stream-netns)
    host, port = client.server.rsplit(":", 1)

    async def ws_exec():
        ws = await websocket.connect(host, int(port), f"/api/v1/namespaces/{NS}/pods/talker/exec?"
                                     "command=head&command=-n1&stdin=true&stdout=true",
                                     ["v5.channel.k8s.io", "v4.channel.k8s.io"])
        await ws.send(b"\x00piped line\n")
        got = []
        async with asyncio.timeout(30):
            while (msg := await ws.recv()) is not None:
                got.append(msg[1])
        return ws.subprotocol, got
    protocol, got = asyncio.run(ws_exec())
    assert b"\x01piped line\n" in got, (protocol, got)
    assert json.loads(got[-1][1:])["status"] == "Success"


def test_logs_follow_a_container_until_it_exits(client, node):
    client.create(make_pod("chatty", [sh("c", "echo one; sleep 2; echo two; sleep 1; echo three")], policy="Never"))
    wait_pod(client, "chatty", lambda p: cstatus(p, "c").state.HasField("running"), what="chatty running")
    t0 = time.monotonic()
    followed = kctl(client, "logs", "-f", "chatty")
    assert (followed.returncode, followed.stdout) == (0, "one\ntwo\nthree\n"), followed.stderr
    assert time.monotonic() - t0 >= 1.0  # it waited for the lines the container had not written yet


def test_config_map_env(client, node):
    cm = core_pb2.ConfigMap(data={"greeting": "hello", "LEVEL": "3"})
    cm.metadata.name, cm.metadata.namespace = "settings", NS
    client.create(cm)
    env = [core_pb2.EnvVar(name="GREETING", value_from=core_pb2.EnvVarSource(
        config_map_key_ref=core_pb2.ConfigMapKeySelector(name="settings", key="greeting")))]
    c = sh("app", "echo $GREETING-$LEVEL; exec sleep 3600", env=env,
           env_from=[core_pb2.EnvFromSource(config_map_ref=core_pb2.ConfigMapEnvSource(name="settings"))])
    client.create(make_pod("configured", [c]))
    wait_pod(client, "configured", lambda p: p.status.phase == "Running", what="configured Running")
    wait_until(lambda: kctl(client, "logs", "configured").stdout == "hello-3\n", timeout=10, what="the env in the log")


def test_container_killed_from_outside_restarts(client, node):
    client.create(make_pod("victim", [sh("main", "exec sleep 3600")]))
    wait_pod(client, "victim", lambda p: p.status.phase == "Running", what="victim Running")
    first = container_id(get(client, "victim"), "main")
    os.kill(node.containerd.tasks()[first], signal.SIGKILL)  # containerd's own view of the pid
    wait_pod(client, "victim", lambda p: cstatus(p, "main").restart_count == 1
             and cstatus(p, "main").state.HasField("running"), what="victim restarted")
    cs = cstatus(get(client, "victim"), "main")
    assert cs.container_id != "containerd://" + first
    assert (cs.last_state.terminated.exit_code, cs.last_state.terminated.reason) == (137, "Error")


def test_crashing_container_backs_off(client, node):
    client.create(make_pod("crasher", [sh("boom", "echo bye; exit 1")]))
    wait_pod(client, "crasher", lambda p: cstatus(p, "boom").state.waiting.reason == "CrashLoopBackOff",
             what="CrashLoopBackOff")
    cs = cstatus(get(client, "crasher"), "boom")
    assert cs.state.waiting.message.startswith("back-off 10s restarting failed container=boom pod=crasher_work(")
    assert (cs.last_state.terminated.exit_code, cs.last_state.terminated.reason) == (1, "Error")
    assert cs.restart_count >= 1
    assert get(client, "crasher").status.phase == "Running"
    # the previous instance's log, from the file containerd wrote, through the apiserver
    previous = kctl(client, "logs", "crasher", "--previous")
    assert (previous.returncode, previous.stdout) == (0, "bye\n"), previous.stderr


def test_unknown_image_gives_err_image_pull_then_back_off(client, node):
    client.create(make_pod("noimage", [core_pb2.Container(name="c", image="example.invalid/nosuch:1",
                                                           command=["true"])]))
    wait_pod(client, "noimage", lambda p: cstatus(p, "c").state.waiting.reason in ("ErrImagePull", "ImagePullBackOff"),
             what="ErrImagePull")
    wait_pod(client, "noimage", lambda p: cstatus(p, "c").state.waiting.reason == "ImagePullBackOff",
             what="ImagePullBackOff")
    # the pull's error, in the Failed event: containerd tried the only registry it has, where
    # nothing listens (127.0.0.1:1)
    failed = wait_until(lambda: events(client, "noimage").get("Failed"), timeout=10, what="Failed event")
    assert "example.invalid/nosuch:1" in failed and "127.0.0.1:1: connect: connection refused" in failed, failed
    p = get(client, "noimage")
    assert p.status.phase == "Pending"
    assert cstatus(p, "c").state.waiting.message == 'Back-off pulling image "example.invalid/nosuch:1"'
    assert ready(get(client, "web"))  # the other pods are still served


@pytest.mark.parametrize("script,phase,code,reason", [("exit 0", "Succeeded", 0, "Completed"),
                                                      ("exit 3", "Failed", 3, "Error")])
def test_never_restart_policy_ends_the_pod(client, node, script, phase, code, reason):
    name = f"once-{code}"
    client.create(make_pod(name, [sh("job", script)], policy="Never"))
    wait_pod(client, name, lambda p: p.status.phase == phase, what=phase)
    t = cstatus(get(client, name), "job").state.terminated
    assert (t.exit_code, t.reason) == (code, reason)
    # the finished pod's sandbox is stopped
    uid = get(client, name).metadata.uid
    wait_until(lambda: [s.state for s in node.cri.list_pod_sandbox()
                        if s.metadata.uid == uid] == [1], timeout=20, what="its sandbox NOTREADY")


def test_init_containers_run_first(client, node):
    p = make_pod("inits", [sh("main", "exec sleep 3600")])
    for c in (sh("first", "exit 0"), sh("second", "sleep 1")):
        p.spec.init_containers.add().CopyFrom(c)
    client.create(p)
    wait_pod(client, "inits", lambda p: p.status.phase == "Running", what="inits Running")
    p = get(client, "inits")
    [first, second] = p.status.init_container_statuses
    main = cstatus(p, "main")
    assert first.state.terminated.reason == second.state.terminated.reason == "Completed"
    assert first.state.terminated.finished_at <= second.state.terminated.started_at
    assert second.state.terminated.finished_at <= main.state.running.started_at


def test_failing_liveness_probe_restarts(client, node):
    probe = core_pb2.Probe(exec=core_pb2.ExecAction(command=["test", "-e", "/tmp/healthy"]),
                           period_seconds=1, failure_threshold=1)
    c = sh("app", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 3600", liveness_probe=probe)
    client.create(make_pod("unhealthy", [c]))
    wait_pod(client, "unhealthy", lambda p: cstatus(p, "app").restart_count >= 1, what="liveness restart")
    seen = wait_until(lambda: (lambda ev: ev if {"Unhealthy", "Killing"} <= set(ev) else None)(
        events(client, "unhealthy")), timeout=10, what="the kubelet's events")
    assert seen["Unhealthy"].startswith("Liveness probe failed")
    assert seen["Killing"] == "Container app failed liveness probe, will be restarted"


def test_failing_readiness_probe_drops_ready_without_restart(client, node):
    probe = core_pb2.Probe(exec=core_pb2.ExecAction(command=["test", "-e", "/tmp/ready"]),
                           period_seconds=1, failure_threshold=1)
    client.create(make_pod("flaky", [sh("app", "touch /tmp/ready; exec sleep 3600", readiness_probe=probe)]))
    wait_pod(client, "flaky", ready, what="flaky Ready")
    cid = container_id(get(client, "flaky"), "app")
    assert node.cri.exec_sync(cid, ["rm", "/tmp/ready"], 5).exit_code == 0
    wait_pod(client, "flaky", lambda p: not ready(p) and not cstatus(p, "app").ready, what="flaky not Ready")
    assert cstatus(get(client, "flaky"), "app").restart_count == 0
    assert node.cri.exec_sync(cid, ["touch", "/tmp/ready"], 5).exit_code == 0
    wait_pod(client, "flaky", ready, what="flaky Ready again")


def test_memory_hog_is_oom_killed(client, node):
    hog = sh("hog", "a=xxxxxxxx; while true; do a=$a$a; done",
             resources=core_pb2.ResourceRequirements(limits={"memory": "32Mi"}))
    client.create(make_pod("hog", [hog], policy="Never"))
    wait_pod(client, "hog", lambda p: p.status.phase == "Failed", what="hog Failed")
    t = cstatus(get(client, "hog"), "hog").state.terminated
    assert (t.reason, t.exit_code) == ("OOMKilled", 137)


def test_volumes_on_containerd(client, node):
    """The kubelet's volumes reach containerd's containers as CRI mounts: a ConfigMap file that
    follows its object, a Secret on tmpfs, an emptyDir that survives a restart."""
    cm = core_pb2.ConfigMap(data={"mode": "a"})
    cm.metadata.name, cm.metadata.namespace = "files", NS
    client.create(cm)
    sec = core_pb2.Secret(data={"password": b"s3cr3t"})
    sec.metadata.name, sec.metadata.namespace = "creds", NS
    client.create(sec)
    c = sh("app", "exec sleep 3600", volume_mounts=[
        core_pb2.VolumeMount(name="cfg", mount_path="/etc/files"),
        core_pb2.VolumeMount(name="creds", mount_path="/etc/creds", read_only=True),
        core_pb2.VolumeMount(name="cache", mount_path="/cache")])
    p = make_pod("mounted", [c])
    p.spec.volumes.add(name="cfg", config_map=core_pb2.ConfigMapVolumeSource(name="files"))
    p.spec.volumes.add(name="creds", secret=core_pb2.SecretVolumeSource(secret_name="creds"))
    p.spec.volumes.add(name="cache", empty_dir=core_pb2.EmptyDirVolumeSource())
    client.create(p)
    wait_pod(client, "mounted", lambda p: p.status.phase == "Running", what="mounted Running")
    p = get(client, "mounted")

    def run(*cmd):
        resp = node.cri.exec_sync(container_id(get(client, "mounted"), "app"), list(cmd), 5)
        assert resp.exit_code == 0, (cmd, resp.stderr)
        return resp.stdout.decode()

    assert run("cat", "/etc/files/mode") == "a" and run("cat", "/etc/creds/password") == "s3cr3t"
    mounts = [line.split() for line in run("cat", "/proc/mounts").splitlines()]
    assert any(m[1] == "/etc/creds" and m[2] == "tmpfs" and "ro" in m[3].split(",") for m in mounts), mounts
    assert not secret_on_disk(b"s3cr3t", node.dir)  # not in the kubelet's nor in containerd's directories
    cm = client.get("configmaps", "files", NS)
    cm.data["mode"] = "b"
    client.update(cm)
    wait_until(lambda: run("cat", "/etc/files/mode") == "b", timeout=30, what="the new file in the container")
    run("sh", "-c", "echo kept > /cache/file")
    os.kill(node.containerd.tasks()[container_id(p, "app")], signal.SIGKILL)
    wait_pod(client, "mounted", lambda p: cstatus(p, "app").restart_count == 1
             and cstatus(p, "app").state.HasField("running"), what="mounted restarted")
    assert run("cat", "/cache/file") == "kept\n"


def test_bad_input_gives_kubernetes_reasons(client, node):
    env = core_pb2.EnvVar(name="X", value_from=core_pb2.EnvVarSource(
        config_map_key_ref=core_pb2.ConfigMapKeySelector(name="missing", key="k")))
    client.create(make_pod("noconfig", [sh("c", "exec sleep 3600", env=[env])]))
    p = make_pod("novolume", [sh("c", "exec sleep 3600", volume_mounts=[
        core_pb2.VolumeMount(name="v", mount_path="/v")])])
    p.spec.volumes.add(name="v", config_map=core_pb2.ConfigMapVolumeSource(name="absent"))
    client.create(p)
    wait_pod(client, "noconfig", lambda p: cstatus(p, "c").state.waiting.reason == "CreateContainerConfigError",
             what="CreateContainerConfigError")
    assert cstatus(get(client, "noconfig"), "c").state.waiting.message == 'configmap "missing" not found'
    wait_until(lambda: events(client, "novolume").get("FailedMount") ==
               'MountVolume.SetUp failed for volume "v" : configmap "absent" not found', timeout=20,
               what="FailedMount event")
    assert cstatus(get(client, "novolume"), "c").state.waiting.reason == "ContainerCreating"
    # an invalid command: containerd's StartContainer fails; the container's run ends as upstream's
    # (exit code 128, StartError with runc's words) and it backs off
    client.create(make_pod("nocommand", [core_pb2.Container(name="c", image=BUSYBOX, command=["/no/such/binary"])]))
    p = wait_pod(client, "nocommand", lambda p: cstatus(p, "c").last_state.terminated.reason == "StartError" and p,
                 what="StartError")
    t = cstatus(p, "c").last_state.terminated
    assert t.exit_code == 128 and "/no/such/binary" in t.message and "no such file" in t.message, t
    assert events(client, "nocommand")["Failed"].startswith("Error: failed to create containerd task")
    cm = core_pb2.ConfigMap(data={"k": "v"})
    cm.metadata.name, cm.metadata.namespace = "missing", NS
    client.create(cm)
    wait_pod(client, "noconfig", lambda p: p.status.phase == "Running", what="noconfig Running")
    assert ready(get(client, "web"))  # the other pods kept being served


def test_failing_post_start_hook_kills_the_container(client, node):
    c = sh("main", "exec sleep 3600")
    c.lifecycle.post_start.exec.command[:] = ["sh", "-c", "exit 7"]
    client.create(make_pod("badhook", [c]))
    wait_pod(client, "badhook", lambda p: cstatus(p, "main").state.waiting.reason in
             ("PostStartHookError", "CrashLoopBackOff") and cstatus(p, "main").restart_count >= 1,
             what="PostStartHookError")
    assert cstatus(get(client, "badhook"), "main").last_state.terminated.exit_code == 137  # killed by the kubelet
    message = events(client, "badhook")["FailedPostStartHook"]
    assert message.startswith("Exec lifecycle hook (") and message.endswith("exited with 7"), message


def test_graceful_deletion_runs_pre_stop_then_kills_after_the_grace(client, node):
    c = sh("main", "trap '' TERM; echo started; while true; do sleep 0.2; done")
    c.lifecycle.pre_stop.exec.command[:] = ["sh", "-c", "echo pre-stop-ran > /proc/1/fd/1"]
    client.create(make_pod("stubborn", [c]))  # terminationGracePeriodSeconds: 2
    wait_pod(client, "stubborn", lambda p: p.status.phase == "Running", what="stubborn Running")
    uid = get(client, "stubborn").metadata.uid
    t0 = time.monotonic()
    client.delete("pods", "stubborn", NS)
    wait_until(lambda: gone(client, "stubborn"), timeout=30, what="stubborn deleted")
    took = time.monotonic() - t0
    assert 2 <= took < 15, took  # SIGTERM ignored: SIGKILL came after the grace period
    text = open(os.path.join(node.kubelet.root, "logs", f"{NS}_stubborn_{uid}", "main", "0.log")).read()
    assert "started" in text and "pre-stop-ran" in text


def test_process_namespace_per_container_or_shared(client, node):
    """Each container has its own pid namespace (its command is pid 1) unless the pod shares one:
    then containerd's sandbox process is pid 1 and the containers see each other."""
    client.create(make_pod("apart", [sh("a", "exec sleep 3601"), sh("b", "exec sleep 3602")]))
    shared = make_pod("together", [sh("a", "exec sleep 3601"), sh("b", "exec sleep 3602")])
    shared.spec.share_process_namespace = True
    client.create(shared)
    for name in ("apart", "together"):
        wait_pod(client, name, lambda p: p.status.phase == "Running" and len(p.status.container_statuses) == 2
                 and all(c.state.HasField("running") for c in p.status.container_statuses), what=f"{name} Running")

    def ps(pod_name):
        out = node.cri.exec_sync(container_id(get(client, pod_name), "a"), ["ps", "-o", "pid,args"], 5)
        return {line.split(None, 1)[1]: int(line.split(None, 1)[0]) for line in out.stdout.decode().splitlines()[1:]}

    apart, together = ps("apart"), ps("together")
    assert apart["sleep 3601"] == 1 and "sleep 3602" not in apart, apart
    assert together["sleep 2147483647"] == 1, together  # the sandbox image's process
    assert {"sleep 3601", "sleep 3602"} <= set(together), together


def test_a_dead_sandbox_is_replaced_and_its_containers_restarted(client, node):
    """On containerd the sandbox is a process (the pause image's): when it dies the pod's network
    namespace is gone with it, and the kubelet makes a new sandbox (attempt 1) and starts the
    containers again in it, counting the restart."""
    probe = core_pb2.Probe(http_get=core_pb2.HTTPGetAction(path="/", port="8080"), period_seconds=1)
    client.create(make_pod("phoenix", [sh("web", HTTPD, readiness_probe=probe)]))
    wait_pod(client, "phoenix", lambda p: ready(p), what="phoenix Ready")
    uid = get(client, "phoenix").metadata.uid
    [old] = [s for s in node.cri.list_pod_sandbox() if s.metadata.uid == uid]
    os.kill(node.containerd.tasks()[old.id], signal.SIGKILL)
    wait_pod(client, "phoenix", lambda p: ready(p) and cstatus(p, "web").restart_count == 1,
             what="phoenix Ready in a new sandbox")
    sandboxes = {s.metadata.attempt: s for s in node.cri.list_pod_sandbox() if s.metadata.uid == uid}
    assert sandboxes[1].state == 0 and 0 not in sandboxes or sandboxes[0].state == 1, sandboxes  # READY / NOTREADY
    p = get(client, "phoenix")
    page = http_get_in(node.net.name, f"http://{p.status.pod_ip}:8080/", 5)
    assert page.status == 200 and page.body.decode().strip() == "page-of-phoenix"


def test_restarted_kubelet_keeps_the_running_containers(client, node):
    """containerd keeps the kubelet's labels and annotations: a new kubelet (SIGKILL, start)
    finds its containers by them and keeps them, with their restart counts and processes."""
    before = {n: cstatus(get(client, n), c) for n, c in (("web", "web"), ("victim", "main"))}
    pids = node.containerd.tasks()
    port = client.get("nodes", NODE, "").status.daemon_endpoints.kubelet_endpoint.port
    node.kubelet.kill()
    node.kubelet.start()
    wait_until(lambda: client.get("nodes", NODE, "").status.daemon_endpoints.kubelet_endpoint.port != port,
               timeout=TIMEOUT, what="the new kubelet's port published")
    # a pod created now runs: the new kubelet has synced the pods it listed at start before it
    client.create(make_pod("newcomer", [sh("main", "exec sleep 3600")]))
    wait_pod(client, "newcomer", lambda p: p.status.phase == "Running", what="newcomer Running")
    wait_pod(client, "web", ready, what="web Ready (its probe runs again in the new kubelet)")
    after = node.containerd.tasks()
    for name, cs in before.items():
        now = cstatus(get(client, name), cs.name)
        assert (now.container_id, now.restart_count) == (cs.container_id, cs.restart_count), name
        cid = cs.container_id.split("://", 1)[1]
        assert after[cid] == pids[cid], name


def test_deleted_pods_leave_nothing_in_containerd(client, node):
    names = [p.metadata.name for p in client.list("pods", NS).items]
    assert names
    for name in names:
        client.delete("pods", name, NS)
    wait_until(lambda: all(gone(client, n) for n in names), timeout=TIMEOUT, what="every pod deleted")
    wait_until(lambda: not node.containerd.tasks(), timeout=30, what="no task left in containerd")
    wait_until(lambda: node.containerd.ctr("containers", "ls", "-q").split() == [], timeout=30,
               what="no container left in containerd")
    assert node.cri.list_pod_sandbox() == [] and node.cri.list_containers() == []
    # the pods' cgroups went with them (the runtime removed its levels, the kubelet the pods')
    wait_until(lambda: podcgroups.pod_uids("/" + node.net.name) == set(), timeout=10, what="no pod cgroup left")
    assert {os.path.basename(d) for d in cgroups.tree(node.net.name)} <= {node.net.name, "kubepods", "besteffort",
                                                                          "burstable"}
    netns_dir = node.containerd.dir / "state" / "io.containerd.grpc.v1.cri" / "netns"
    assert not os.path.isdir(netns_dir) or os.listdir(netns_dir) == []


def test_the_kubelets_never_failed_a_sync(nodes):
    """Whatever the runtime answered, no pod's sync raised (a traceback in a kubelet's log is a
    kubelet bug: the work queue retried it blindly)."""
    for n in nodes:
        log = n.kubelet.log_path.read_text()
        assert "Traceback" not in log, log[log.index("Traceback") - 300:][:3000]
