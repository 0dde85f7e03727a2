"""The CRI runtime as the kubelet meets it: ``python -m node.runtime`` on a unix socket, driven
through the CRI client. A pod sandbox on a node of a real fabric, busybox containers under runc +
conmon: CRI-format logs, ExecSync, stop with a grace period then SIGKILL, OOMKilled, exit codes
and reasons, a runtime restart that keeps containers running, and a cleanup that leaves nothing
with the node's prefix. Needs root, runc, conmon, busybox-static."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time

import grpc
import pytest

from harness.nodes import RuntimeNode as Node
from harness.nodes import leftovers, need_runtime
from node.cri.client import CriClient, CriError
from node.pb import cri_pb2
from node import mounts
from node.runtime import cgroups, runc
from node.runtime.cleanup import cleanup, conmon_pids
from node.runtime.images import ImageStore

pytestmark = pytest.mark.process

CRI_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d (stdout|stderr) [FP] (.*)$")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    need_runtime()
    n = Node(tmp_path_factory.mktemp("crinode"))
    try:
        n.start().update_runtime_config(n.net.pod_cidr)
        yield n
    finally:
        problems = n.teardown()
    assert problems == []
    left = leftovers(n)
    assert left == {}, left
    assert not [x for x in os.listdir("/run/netns") if x.startswith(n.plane)]


def sandbox_config(n: Node, name: str) -> cri_pb2.PodSandboxConfig:
    uid = secrets.token_hex(8)
    return cri_pb2.PodSandboxConfig(
        metadata=cri_pb2.PodSandboxMetadata(name=name, namespace="default", uid=uid),
        hostname=name, log_directory=os.path.join(n.base, "pods", f"default_{name}_{uid}"),
        labels={"app": name}, dns_config=cri_pb2.DNSConfig(servers=["10.96.0.10"], searches=["default.svc"]))


def container_config(name: str, command: list[str], memory: int = 0, labels=None) -> cri_pb2.ContainerConfig:
    res = cri_pb2.LinuxContainerResources(memory_limit_in_bytes=memory, cpu_shares=256)
    return cri_pb2.ContainerConfig(
        metadata=cri_pb2.ContainerMetadata(name=name), image=cri_pb2.ImageSpec(image="busybox"),
        command=command, log_path=f"{name}/0.log", labels=labels or {"container": name},
        envs=[cri_pb2.KeyValue(key="GREETING", value=b"hello")],
        linux=cri_pb2.LinuxContainerConfig(resources=res))


def run(n: Node, sandbox, name: str, command: list[str], **kw) -> str:
    cid = n.client.create_container(sandbox[0], container_config(name, command, **kw), sandbox[1])
    n.client.start_container(cid)
    return cid


def wait_state(n: Node, cid: str, state, timeout=20.0) -> cri_pb2.ContainerStatus:
    deadline = time.monotonic() + timeout
    while True:
        st = n.client.container_status(cid).status
        if st.state == state or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def wait_log(path: str, lines: int, timeout=10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            got = open(path).read().splitlines()
            if len(got) >= lines:
                return got
        time.sleep(0.02)
    return open(path).read().splitlines() if os.path.exists(path) else []


@pytest.fixture
def sandbox(node, request):
    cfg = sandbox_config(node, request.node.name.replace("_", "-")[:40].strip("-"))
    sid = node.client.run_pod_sandbox(cfg)
    yield sid, cfg
    node.client.stop_pod_sandbox(sid)
    node.client.remove_pod_sandbox(sid)


def test_version_and_network_ready_after_pod_cidr(node):
    v = node.client.version()
    assert v.runtime_name == "etcdlite-plane-runc" and v.runtime_api_version == "v1"
    conds = {c.type: c.status for c in node.client.status().status.conditions}
    assert conds == {"RuntimeReady": True, "NetworkReady": True}


def test_container_logs_exec_and_status(node, sandbox):
    sid, cfg = sandbox
    st = node.client.pod_sandbox_status(sid).status
    assert st.state == cri_pb2.SANDBOX_READY and st.network.ip.startswith("10.244.0.")
    cid = run(node, sandbox, "main", ["sh", "-c", "echo hi; echo to-stderr >&2; sleep 1000"])
    status = wait_state(node, cid, cri_pb2.CONTAINER_RUNNING)
    assert status.state == cri_pb2.CONTAINER_RUNNING
    assert status.started_at >= status.created_at > 0
    assert status.log_path == os.path.join(cfg.log_directory, "main/0.log")
    assert status.image.image == "docker.io/library/busybox:latest" and status.image_ref.startswith("sha256:")
    assert status.labels["container"] == "main"
    lines = wait_log(status.log_path, 2)
    assert sorted(CRI_LOG_LINE.match(x).groups() for x in lines) == [("stderr", "to-stderr"), ("stdout", "hi")]

    r = node.client.exec_sync(cid, ["sh", "-c", "echo $GREETING $(hostname); cat /etc/resolv.conf; "
                                                "ip -4 -o addr show eth0; exit 4"], timeout=10)
    out = r.stdout.decode()
    assert r.exit_code == 4 and out.startswith(f"hello {cfg.hostname}\n")
    assert "nameserver 10.96.0.10" in out and "search default.svc" in out
    assert st.network.ip in out
    r = node.client.exec_sync(cid, ["cat", "/sys/fs/cgroup/cpu/cpu.shares", "/sys/fs/cgroup/pids/pids.max"], timeout=10)
    assert r.stdout.split() == [b"256", b"4096"]  # the runtime's default pids limit
    with pytest.raises(CriError) as e:
        node.client.exec_sync(cid, ["sleep", "30"], timeout=1)
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    listed = node.client.list_containers(cri_pb2.ContainerFilter(pod_sandbox_id=sid))
    assert [c.id for c in listed] == [cid]
    assert node.client.list_containers(cri_pb2.ContainerFilter(label_selector={"container": "other"})) == []
    running = cri_pb2.ContainerStateValue(state=cri_pb2.CONTAINER_RUNNING)
    assert cid in [c.id for c in node.client.list_containers(cri_pb2.ContainerFilter(state=running))]
    assert [s.id for s in node.client.list_pod_sandbox(cri_pb2.PodSandboxFilter(label_selector={"app": cfg.metadata.name}))] == [sid]


def test_listing_by_labels_refreshes_only_the_matching_and_sees_their_exits(node, sandbox):
    """The kubelet lists one pod's containers by label many times a second: the filter comes
    before the refresh (which reads each container's exit), and a matching exit still shows."""
    done = run(node, sandbox, "quick", ["true"])
    stays = run(node, sandbox, "stays", ["sleep", "1000"])
    by_name = cri_pb2.ContainerFilter(label_selector={"container": "quick"})
    deadline = time.monotonic() + 20
    while (listed := [(c.id, c.state) for c in node.client.list_containers(by_name)]) != \
            [(done, cri_pb2.CONTAINER_EXITED)] and time.monotonic() < deadline:
        time.sleep(0.05)  # only the list reads the exit here (no ContainerStatus call)
    assert listed == [(done, cri_pb2.CONTAINER_EXITED)]
    running = cri_pb2.ContainerStateValue(state=cri_pb2.CONTAINER_RUNNING)
    assert node.client.list_containers(cri_pb2.ContainerFilter(label_selector={"container": "quick"},
                                                               state=running)) == []
    assert [c.id for c in node.client.list_containers(
        cri_pb2.ContainerFilter(label_selector={"container": "stays"}, state=running))] == [stays]
    node.client.stop_container(stays, 0)
    for cid in (done, stays):
        node.client.remove_container(cid)


def test_stop_grace_period_then_sigkill(node, sandbox):
    # pid 1 of a pid namespace ignores signals it has no handler for: a polite one traps TERM
    polite = run(node, sandbox, "polite", ["sh", "-c", "trap 'exit 7' TERM; sleep 1000 & wait"])
    stubborn = run(node, sandbox, "stubborn", ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"])
    for cid in (polite, stubborn):
        wait_state(node, cid, cri_pb2.CONTAINER_RUNNING)
    t = time.monotonic()
    node.client.stop_container(polite, 10)
    assert time.monotonic() - t < 3, "SIGTERM should have stopped it at once"
    st = node.client.container_status(polite).status
    assert (st.state, st.exit_code, st.reason) == (cri_pb2.CONTAINER_EXITED, 7, "Error")
    t = time.monotonic()
    node.client.stop_container(stubborn, 2)
    took = time.monotonic() - t
    assert 2 <= took < 6, took
    st = node.client.container_status(stubborn).status
    assert (st.state, st.exit_code, st.reason) == (cri_pb2.CONTAINER_EXITED, 137, "Error")
    assert st.finished_at > st.started_at
    node.client.stop_container(stubborn, 2)  # stopping an exited container is a no-op
    with pytest.raises(CriError) as e:
        node.client.exec_sync(stubborn, ["true"], timeout=5)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_exit_codes_and_oom_killed(node, sandbox):
    ok = run(node, sandbox, "ok", ["sh", "-c", "exit 0"])
    bad = run(node, sandbox, "bad", ["sh", "-c", "exit 3"])
    hog = run(node, sandbox, "hog", ["sh", "-c", "x=a; while true; do x=$x$x; done"], memory=32 << 20)
    got = {}
    for name, cid in (("ok", ok), ("bad", bad), ("hog", hog)):
        st = wait_state(node, cid, cri_pb2.CONTAINER_EXITED, timeout=30)
        got[name] = (st.state, st.exit_code, st.reason)
    exited = cri_pb2.CONTAINER_EXITED
    assert got == {"ok": (exited, 0, "Completed"), "bad": (exited, 3, "Error"), "hog": (exited, 137, "OOMKilled")}


def test_errors_the_kubelet_sees(node, sandbox):
    sid, cfg = sandbox
    with pytest.raises(CriError) as e:
        node.client.run_pod_sandbox(sandbox_config(node, "kata"), runtime_handler="kata")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "kata" in e.value.details
    with pytest.raises(CriError) as e:
        node.client.update_runtime_config("10.244.0.0/33")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(CriError) as e:
        node.client.create_container("0" * 64, container_config("x", ["true"]), cfg)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    missing = container_config("x", ["true"])
    missing.image.image = "example.com/not/pulled:1"
    with pytest.raises(CriError) as e:
        node.client.create_container(sid, missing, cfg)
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(CriError) as e:
        node.client.create_container(sid, container_config("nocmd", ["/no/such/binary"]), cfg)
    assert "no/such/binary" in e.value.details
    cid = node.client.create_container(sid, container_config("twice", ["true"]), cfg)
    with pytest.raises(CriError) as e:  # the name is reserved while the first exists
        node.client.create_container(sid, container_config("twice", ["true"]), cfg)
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
    node.client.remove_container(cid)
    node.client.remove_container(cid)  # removing twice is fine
    with pytest.raises(CriError) as e:
        node.client.container_status(cid)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_restart_keeps_containers_running(node, sandbox):
    sid, cfg = sandbox
    cid = run(node, sandbox, "survivor", ["sh", "-c", "echo before; sleep 1000"])
    wait_state(node, cid, cri_pb2.CONTAINER_RUNNING)
    pid = int(node.client.container_status(cid, verbose=True).info["pid"])
    done = run(node, sandbox, "done-while-down", ["sh", "-c", "sleep 1; exit 5"])
    broken_cfg = sandbox_config(node, "netns-lost")
    broken = node.client.run_pod_sandbox(broken_cfg)
    node.stop()
    assert node.proc.returncode == 0
    assert os.path.exists(f"/proc/{pid}"), "the container died with the runtime"
    subprocess.run(["ip", "netns", "del", f"{node.prefix}-{broken[:10]}"], check=True)
    time.sleep(1.5)  # done-while-down exits while no runtime runs
    node.start()
    assert node.client.pod_sandbox_status(broken).status.state == cri_pb2.SANDBOX_NOTREADY
    node.client.stop_pod_sandbox(broken)
    node.client.remove_pod_sandbox(broken)
    st = node.client.container_status(cid, verbose=True)
    assert st.status.state == cri_pb2.CONTAINER_RUNNING and int(st.info["pid"]) == pid
    assert cid in [c.id for c in node.client.list_containers()]
    assert node.client.exec_sync(cid, ["echo", "after"], timeout=10).stdout == b"after\n"
    st = wait_state(node, done, cri_pb2.CONTAINER_EXITED)
    assert (st.exit_code, st.reason) == (5, "Error")
    assert node.client.pod_sandbox_status(sid).status.state == cri_pb2.SANDBOX_READY
    assert {c.type: c.status for c in node.client.status().status.conditions}["NetworkReady"]


def test_stop_and_remove_sandbox_take_everything(node):
    cfg = sandbox_config(node, "gone")
    sid = node.client.run_pod_sandbox(cfg)
    netns = f"{node.prefix}-{sid[:10]}"
    assert os.path.exists(f"/run/netns/{netns}")
    cid = run(node, (sid, cfg), "app", ["sleep", "1000"])
    wait_state(node, cid, cri_pb2.CONTAINER_RUNNING)
    node.client.stop_pod_sandbox(sid)
    assert node.client.container_status(cid).status.state == cri_pb2.CONTAINER_EXITED
    assert node.client.pod_sandbox_status(sid).status.state == cri_pb2.SANDBOX_NOTREADY
    assert not os.path.exists(f"/run/netns/{netns}")
    node.client.remove_pod_sandbox(sid)
    node.client.remove_pod_sandbox(sid)
    assert node.client.list_containers(cri_pb2.ContainerFilter(pod_sandbox_id=sid)) == []
    assert not cgroups.tree(f"{node.prefix}/{sid}")
    assert not mounts.mounts_under(os.path.join(node.root, "containers", cid))


def test_update_resources_and_reopen_log(node, sandbox):
    cid = run(node, sandbox, "tuned", ["sh", "-c", "while true; do echo tick; sleep 0.1; done"])
    wait_state(node, cid, cri_pb2.CONTAINER_RUNNING)
    node.client.update_container_resources(cid, cri_pb2.LinuxContainerResources(
        cpu_shares=512, memory_limit_in_bytes=48 << 20))
    r = node.client.exec_sync(cid, ["cat", "/sys/fs/cgroup/cpu/cpu.shares",
                                    "/sys/fs/cgroup/memory/memory.limit_in_bytes"], timeout=10)
    assert r.stdout.split() == [b"512", str(48 << 20).encode()]
    assert node.client.container_status(cid).status.resources.linux.cpu_shares == 512
    # the kubelet's log rotation: rename the file, ask for a reopen, new lines go to a new file
    log = node.client.container_status(cid).status.log_path
    wait_log(log, 1)
    os.rename(log, log + ".1")
    node.client.reopen_container_log(cid)
    assert wait_log(log, 2) and CRI_LOG_LINE.match(wait_log(log, 2)[0]).groups() == ("stdout", "tick")


def test_images_served_beside_the_runtime(node):
    st = node.client.image_status("busybox")
    assert st.HasField("image") and "docker.io/library/busybox:latest" in st.image.repo_tags
    assert node.client.pull_image("busybox").startswith("sha256:")


def test_cleanup_after_runtime_killed_leaves_nothing(tmp_path):
    """A runtime SIGKILLed with pods running: cleanup(prefix, root) still removes every
    process, mount, cgroup and namespace of the node."""
    need_runtime()
    n = Node(tmp_path)
    pids = []
    try:
        n.start().update_runtime_config(n.net.pod_cidr)
        cfg = sandbox_config(n, "doomed")
        sid = n.client.run_pod_sandbox(cfg)
        for name in ("a", "b"):
            cid = run(n, (sid, cfg), name, ["sh", "-c", "sleep 1000 & sleep 1000"])
            wait_state(n, cid, cri_pb2.CONTAINER_RUNNING)
            pids.append(int(n.client.container_status(cid, verbose=True).info["pid"]))
        n.client.create_container(sid, container_config("never-started", ["sleep", "1"]), cfg)
        n.proc.kill()
        n.proc.wait()
        assert all(os.path.exists(f"/proc/{p}") for p in pids)
        assert leftovers(n), "nothing to clean: the test would prove nothing"
        # the plane's prefix alone is enough: the runtime recorded its root under /run
        assert cleanup(n.plane) == []
        assert leftovers(n) == {}
        assert os.path.exists(f"/run/netns/{n.prefix}"), "the node's own namespace is the fabric's"
    finally:
        problems = n.teardown()
    assert problems == []
    assert leftovers(n) == {}
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
    assert cleanup(n.prefix, n.root) == []  # idempotent


def test_pod_containers_share_ipc_uts_and_shm(node, sandbox):
    sid, cfg = sandbox
    a = run(node, sandbox, "a", ["sh", "-c", "echo from-a > /dev/shm/note; sleep 1000"])
    b = run(node, sandbox, "b", ["sleep", "1000"])
    for cid in (a, b):
        wait_state(node, cid, cri_pb2.CONTAINER_RUNNING)
    links = "for n in ipc uts net pid; do readlink /proc/self/ns/$n; done"
    ns = {cid: node.client.exec_sync(cid, ["sh", "-c", links], timeout=10).stdout.split() for cid in (a, b)}
    assert ns[a][:3] == ns[b][:3], "a pod's containers share IPC, UTS and network"
    assert ns[a][3] != ns[b][3], "each container has its own pid namespace"
    assert node.client.exec_sync(b, ["cat", "/dev/shm/note"], timeout=10).stdout == b"from-a\n"
    assert node.client.exec_sync(b, ["hostname"], timeout=10).stdout.decode().strip() == cfg.hostname


def test_volume_mounts_readonly_readwrite_and_created(node, sandbox, tmp_path):
    sid, cfg = sandbox
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "app.conf").write_text("answer=42\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    created = tmp_path / "made-by-runtime"
    cc = container_config("vols", ["sleep", "1000"])
    cc.mounts.add(container_path="/etc/app", host_path=str(config_dir), readonly=True)
    cc.mounts.add(container_path="/scratch", host_path=str(scratch))
    cc.mounts.add(container_path="/new", host_path=str(created))
    cid = node.client.create_container(sid, cc, cfg)
    node.client.start_container(cid)
    wait_state(node, cid, cri_pb2.CONTAINER_RUNNING)
    assert node.client.exec_sync(cid, ["cat", "/etc/app/app.conf"], timeout=10).stdout == b"answer=42\n"
    ro = node.client.exec_sync(cid, ["touch", "/etc/app/x"], timeout=10)
    assert ro.exit_code != 0 and b"Read-only" in ro.stderr
    assert node.client.exec_sync(cid, ["sh", "-c", "echo w > /scratch/out"], timeout=10).exit_code == 0
    assert (scratch / "out").read_text() == "w\n"
    assert created.is_dir()
    st = node.client.container_status(cid).status
    assert sorted(m.container_path for m in st.mounts) == ["/etc/app", "/new", "/scratch"]


def test_user_workdir_and_tty(node, sandbox):
    sid, cfg = sandbox
    cc = container_config("nobody", ["sh", "-c", "id -u; pwd; [ -t 1 ] && echo tty; sleep 1000"])
    cc.working_dir = "/work/dir"
    cc.tty = True
    cc.linux.security_context.run_as_user.value = 65534
    cid = node.client.create_container(sid, cc, cfg)
    node.client.start_container(cid)
    st = wait_state(node, cid, cri_pb2.CONTAINER_RUNNING)
    assert (st.user.linux.uid, st.user.linux.gid) == (65534, 65534)
    lines = [CRI_LOG_LINE.match(x).group(2).rstrip("\r") for x in wait_log(st.log_path, 3)]
    assert lines[:3] == ["65534", "/work/dir", "tty"]
    assert node.client.exec_sync(cid, ["id", "-u"], timeout=10).stdout == b"65534\n"


def test_container_and_sandbox_stats(node, sandbox):
    sid, cfg = sandbox
    cid = run(node, sandbox, "busy", ["sh", "-c", "head -c 8000000 /dev/zero > /tmp/blob; "
                                                  "while true; do :; done"], memory=64 << 20)
    wait_state(node, cid, cri_pb2.CONTAINER_RUNNING)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the blob is written
        if node.client.container_stats(cid).writable_layer.used_bytes.value >= 8_000_000:
            break
        time.sleep(0.1)
    first = node.client.container_stats(cid)
    time.sleep(0.5)
    st = node.client.container_stats(cid)
    assert st.attributes.id == cid and st.attributes.metadata.name == "busy"
    assert st.cpu.usage_core_nano_seconds.value > first.cpu.usage_core_nano_seconds.value
    assert st.cpu.usage_nano_cores.value > 10_000_000, "a busy loop gets its share of a core, even on a loaded machine"
    assert 0 < st.memory.working_set_bytes.value <= 64 << 20
    assert st.memory.available_bytes.value == (64 << 20) - st.memory.working_set_bytes.value
    assert st.writable_layer.used_bytes.value >= 8_000_000
    listed = node.client.list_container_stats(cri_pb2.ContainerStatsFilter(pod_sandbox_id=sid))
    assert [s.attributes.id for s in listed] == [cid]
    pod = node.client.pod_sandbox_stats(sid)
    assert pod.attributes.id == sid and [c.attributes.id for c in pod.linux.containers] == [cid]
    assert pod.linux.process.process_count.value >= 1
    assert pod.linux.cpu.usage_core_nano_seconds.value >= st.cpu.usage_core_nano_seconds.value


def test_restart_undoes_creates_cut_short(node, tmp_path):
    """A runtime that died inside RunPodSandbox/CreateContainer leaves a directory without its
    record: the next runtime removes what the half-done call made (runc container, conmon,
    mounts, netns, address) instead of leaking it."""
    from node.runtime.runtime_service import RuntimeService

    net = node.fabric.add_node(1)
    root = str(tmp_path / "root")
    first = RuntimeService(root, net.name, net.name, ImageStore(node.images))
    try:
        first.pod_cidr = net.pod_cidr
        cfg = sandbox_config(node, "cut-short")
        sid = first.sandboxes.run(cfg, "", net.pod_cidr)
        cid = first.containers.create(sid, container_config("half", ["sleep", "1000"]), cfg)
        pid = first.containers.get(cid)["pid"]
        os.unlink(os.path.join(root, "containers", cid, "container.json"))
        os.unlink(os.path.join(root, "sandboxes", sid, "sandbox.json"))
        second = RuntimeService(root, net.name, net.name, ImageStore(node.images))
        second.load()
        assert second.sandboxes.all() == [] and second.containers.all() == []
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.exists(f"/proc/{pid}")
        assert runc.Runc(f"/run/{net.name}").state(cid) is None
        assert mounts.mounts_under(root) == []
        assert not os.path.exists(f"/run/netns/{net.name}-{sid[:10]}")
        assert os.listdir(os.path.join(root, "sandboxes")) == [] == os.listdir(os.path.join(root, "containers"))
        from node.network.ipam import HostLocalIpam
        assert HostLocalIpam(os.path.join(root, "ipam")).lookup(sid) is None
        second.close()
    finally:
        first.close()
        assert cleanup(net.name, root) == []
        node.fabric.remove_node(1)


def test_privileged_and_default_capabilities(node, sandbox):
    sid, cfg = sandbox
    plain = run(node, sandbox, "plain", ["sleep", "1000"])
    cc = container_config("priv", ["sleep", "1000"])
    cc.linux.security_context.privileged = True
    priv = node.client.create_container(sid, cc, cfg)
    node.client.start_container(priv)
    for cid in (plain, priv):
        wait_state(node, cid, cri_pb2.CONTAINER_RUNNING)
    mount = ["sh", "-c", "mkdir -p /m && mount -t tmpfs none /m && echo mounted"]
    assert node.client.exec_sync(plain, mount, timeout=10).exit_code != 0, "CAP_SYS_ADMIN is not a default"
    assert node.client.exec_sync(priv, mount, timeout=10).stdout == b"mounted\n"
    masked = ["grep", "-c", " /proc/keys ", "/proc/self/mountinfo"]
    assert node.client.exec_sync(plain, masked, timeout=10).stdout.strip() == b"1", "/proc/keys is masked"
    assert node.client.exec_sync(priv, masked, timeout=10).stdout.strip() == b"0", "not for a privileged one"


def test_streaming_calls_answer_a_url_or_the_reason_they_cannot(node, sandbox):
    """Exec, Attach and PortForward answer a URL of the runtime's streaming server (what is
    behind it: tests/test_kubectl_streams.py); what the streaming server could not serve is
    refused here, in the words of the kubelet's streaming server."""
    sid, cfg = sandbox
    cid = run(node, sandbox, "streamed", ["sleep", "300"])
    url = node.client.exec(cri_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True))
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/exec/[\w-]+", url), url
    assert "/attach/" in node.client.attach(cri_pb2.AttachRequest(container_id=cid, stdout=True))
    assert "/portforward/" in node.client.port_forward(sid, [80])
    for request, words in ((cri_pb2.ExecRequest(container_id=cid, cmd=["true"]), "one of stdin, stdout, or stderr"),
                           (cri_pb2.ExecRequest(container_id=cid, cmd=["true"], tty=True, stdout=True, stderr=True),
                            "tty and stderr cannot both be true"),
                           (cri_pb2.ExecRequest(container_id=cid, stdout=True), "cmd must not be empty")):
        with pytest.raises(CriError) as e:
            node.client.exec(request)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details
    done = run(node, sandbox, "done", ["true"])
    wait_state(node, done, cri_pb2.CONTAINER_EXITED)
    with pytest.raises(CriError) as e:
        node.client.exec(cri_pb2.ExecRequest(container_id=done, cmd=["true"], stdout=True))
    assert (e.value.code, e.value.details) == (grpc.StatusCode.FAILED_PRECONDITION,
                                               "container is in CONTAINER_EXITED state")
    with pytest.raises(CriError) as e:
        node.client.port_forward("0" * 64, [80])
    assert e.value.code == grpc.StatusCode.NOT_FOUND
