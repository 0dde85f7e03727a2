"""`kctl logs` and `kctl exec` end to end: kctl -> apiserver -> the node's kubelet API server.

A real etcdlite member and apiserver; a kubelet API server (node.kubelet.server) started by the
test, whose Containers are real processes: each container instance is a `sh -c` process whose
stdout and stderr a pump thread writes to a CRI-format log file as conmon does, and exec runs
the command with subprocess. The Node's status.daemonEndpoints.kubeletEndpoint.port points at
that server. No CRI runtime is needed: the real kubelet gives the same server its CRI-backed
Containers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite
from harness.procs import PYTHON, free_port

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.kubelet import pick_container
from apiserver.pb import core_pb2
from node.kubelet.crilog import format_timestamp
from node.kubelet.server import ContainerError, KubeletServer, pod_not_found, previous_not_found, waiting_to_start
from node.pb import kubelet_pb2, kubelet_pb2_grpc

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 60
NS = "default"
NODE = "n1"
CHUNK = 4096  # a pump writes at most this much of a line in one record (conmon: 8 KiB), P if cut


class Instance:
    """One run of a container: a shell process and the pumps writing its CRI log."""

    def __init__(self, root: Path, script: str) -> None:
        self.id = uuid.uuid4().hex
        self.dir = root / self.id[:12]
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "0.log"
        self.log_path.touch()
        self._log = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 (closed by the last pump)
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(["sh", "-c", script], cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.pumps = [threading.Thread(target=self._pump, args=(pipe, name), daemon=True)
                      for pipe, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))]
        for t in self.pumps:
            t.start()

    def _pump(self, pipe, stream: str) -> None:
        fd = pipe.fileno()
        while True:
            data = os.read(fd, CHUNK)
            if not data:
                break
            lines = data.split(b"\n")
            records = []
            for i, line in enumerate(lines):
                last = i == len(lines) - 1
                if last and not line:
                    break
                tag = b"P" if last else b"F"
                records.append(format_timestamp(time.time_ns()).encode() + b" " + stream.encode()
                               + b" " + tag + b" " + line + b"\n")
            with self._lock:
                self._log.write(b"".join(records))
        pipe.close()

    @property
    def running(self) -> bool:
        """Until the process has exited and its output is all in the log (conmon's order)."""
        return self.proc.poll() is None or any(t.is_alive() for t in self.pumps)

    def stop(self) -> None:
        """The whole process group: its children hold the pipes too."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        for t in self.pumps:
            t.join(10)
        self._log.close()


class ProcessContainers:
    """node.kubelet.server.Containers over real processes (see the module's docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances: dict[tuple[str, str, str], list[Instance]] = {}
        self.by_id: dict[str, Instance] = {}

    def run(self, pod: str, container: str, script: str, namespace: str = NS) -> Instance:
        inst = Instance(self.root, script)
        self.instances.setdefault((namespace, pod, container), []).append(inst)
        self.by_id[inst.id] = inst
        return inst

    def stop_all(self) -> None:
        for inst in self.by_id.values():
            inst.stop()

    # --- the Containers interface ---

    def find_container(self, namespace, pod, container, previous):
        runs = self.instances.get((namespace, pod, container))
        if not runs:
            if any(key[:2] == (namespace, pod) for key in self.instances):
                raise waiting_to_start(pod, container, "ContainerCreating")
            raise pod_not_found(pod)
        if previous:
            if len(runs) < 2:
                raise previous_not_found(pod, container)
            inst = runs[-2]
        else:
            inst = runs[-1]
        return inst.id, str(inst.log_path), inst.running

    def container_running(self, container_id):
        inst = self.by_id.get(container_id)
        return inst is not None and inst.running

    def exec_sync(self, container_id, command, timeout):
        inst = self.by_id[container_id]
        try:
            done = subprocess.run(command, cwd=inst.dir, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout, check=False)
        except FileNotFoundError:
            return b"", f'exec: "{command[0]}": executable file not found in $PATH\n'.encode(), 127
        except subprocess.TimeoutExpired:
            raise ContainerError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                 f"command {command!r} timed out after {timeout} s") from None
        return done.stdout, done.stderr, done.returncode


# ---- the plane ----

@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "podio") as api:
        yield api


@pytest.fixture(scope="module")
def client(plane):
    with Client(plane.endpoint, timeout=15) as c:
        yield c


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    containers = ProcessContainers(tmp_path_factory.mktemp("containers"))
    try:
        yield containers
    finally:
        containers.stop_all()


@pytest.fixture(scope="module")
def kubelet(runtime):
    server = KubeletServer(runtime, poll=0.02, state_check=0.1)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _node(name: str, port: int) -> core_pb2.Node:
    node = core_pb2.Node()
    node.metadata.name = name
    node.status.daemon_endpoints.kubelet_endpoint.port = port
    return node


def _pod(name: str, containers: list[str], node: str = NODE, annotations: dict | None = None,
         init: list[str] = ()) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = NS
    pod.metadata.annotations.update(annotations or {})
    for c in containers:
        pod.spec.containers.add(name=c, image="busybox")
    for c in init:
        pod.spec.init_containers.add(name=c, image="busybox")
    pod.spec.node_name = node
    return pod


@pytest.fixture(scope="module")
def cluster(client, runtime, kubelet):
    """Node n1 (its kubelet: the test's server), a node without a kubelet endpoint, one whose
    kubelet does not listen; pods on them, and their containers' first runs."""
    client.create(_node(NODE, kubelet.port))
    client.create(_node("hollow", 0))
    client.create(_node("gone", free_port()))
    web = client.create(_pod("web", ["app"]))
    web.status.phase = "Running"
    client.update_status(web)
    # the first run of web/app ended (exit 1); its second runs and talks when asked to
    # (stdout and stderr reach the log through two pumps: the pause puts "oops" after "line 3")
    first = runtime.run("web", "app", "for i in 1 2 3; do echo line $i; done; sleep 0.3; echo oops >&2; exit 1")
    wait_until(lambda: not first.running, 10, what="the first run to end")
    runtime.run("web", "app", "echo started; while [ ! -f stop ]; do "
                              "if [ -f say ]; then cat say; rm say; fi; sleep 0.02; done; echo bye")
    client.create(_pod("duo", ["a", "b"], init=["setup"]))
    client.create(_pod("picked", ["a", "b"], annotations={"kubectl.kubernetes.io/default-container": "b"}))
    runtime.run("picked", "b", "echo from b; sleep 600")
    client.create(_pod("shell", ["sh"]))
    runtime.run("shell", "sh", "sleep 600")
    client.create(_pod("ended", ["app"]))
    ended = runtime.run("ended", "app", "echo done")
    wait_until(lambda: not ended.running, 10, what="ended/app to end")
    client.create(_pod("lonely", ["app"], node=""))
    client.create(_pod("unserved", ["app"], node="hollow"))
    client.create(_pod("orphan", ["app"], node="gone"))
    return runtime


def _env() -> dict:
    env = dict(os.environ)
    env.pop("KCTL_SERVER", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def kctl(plane):
    def run(*args, code: int | None = 0):
        proc = subprocess.run([PYTHON, "-m", "controllers.kctl", "--server", plane.endpoint, *args],
                              capture_output=True, cwd=REPO, env=_env(), timeout=RUN_TIMEOUT, check=False)
        if code is not None:
            assert proc.returncode == code, f"kctl {' '.join(args)}: rc {proc.returncode}: {proc.stderr!r}"
        return proc
    return run


def _readers_of(path: Path) -> int:
    """Descriptors of this process open read-only on ``path`` (the kubelet server's readers;
    the pumps write)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != str(path):
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                flags = int(next(line for line in info if line.startswith("flags:")).split()[1], 8)
        except (OSError, StopIteration):
            continue
        if flags & os.O_ACCMODE == os.O_RDONLY:
            n += 1
    return n


# ---- logs ----

def test_pick_container_as_kubernetes():
    assert pick_container(_pod("p", ["only"]), "") == "only"
    assert pick_container(_pod("p", ["a", "b"], init=["i"]), "i") == "i"
    with pytest.raises(ApiError, match=r"a container name must be specified for pod p, choose one of: \[a b i\]"):
        pick_container(_pod("p", ["a", "b"], init=["i"]), "")
    with pytest.raises(ApiError, match="container c is not valid for pod p"):
        pick_container(_pod("p", ["a", "b"]), "c")
    assert pick_container(_pod("p", ["a", "b"], annotations={"kubectl.kubernetes.io/default-container": "b"}), "") == "b"


def test_logs_previous_tail_timestamps_limit(cluster, kctl):
    assert kctl("logs", "web", "--previous").stdout == b"line 1\nline 2\nline 3\noops\n"
    assert kctl("logs", "pod/web", "-p", "--tail", "2").stdout == b"line 3\noops\n"
    assert kctl("logs", "web", "-p", "--limit-bytes", "9").stdout == b"line 1\nli"
    assert kctl("logs", "web", "-p", "--since", "1h").stdout == b"line 1\nline 2\nline 3\noops\n"
    future = format_timestamp(time.time_ns() + 3600 * 10**9)
    assert kctl("logs", "web", "-p", "--since-time", future).stdout == b""
    stamped = kctl("logs", "web", "-p", "--timestamps").stdout.decode().splitlines()
    assert len(stamped) == 4
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (line \d|oops)", line) for line in stamped)
    # the current run, not following: what it wrote so far
    wait_until(lambda: b"started" in kctl("logs", "web").stdout, 10, what="the second run's first line")


def test_logs_follow_prints_as_written_and_ends_when_the_container_exits(cluster, plane):
    inst = cluster.instances[(NS, "web", "app")][-1]
    proc = subprocess.Popen([PYTHON, "-m", "controllers.kctl", "--server", plane.endpoint, "logs", "-f", "web"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=_env())
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, b"")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: b"started\n" in lines, 20, what="kctl logs -f to print the first line")
        (inst.dir / "say.tmp").write_bytes(b"hello while following\n")
        os.rename(inst.dir / "say.tmp", inst.dir / "say")
        wait_until(lambda: b"hello while following\n" in lines, 10, what="a line written while following")
        (inst.dir / "stop").touch()
        # the container exits: its last line comes, then kctl ends by itself
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
        reader.join(10)
        assert lines == [b"started\n", b"hello while following\n", b"bye\n"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_follow_ends_at_the_kubelet_when_its_client_goes(cluster, plane):
    inst = cluster.instances[(NS, "picked", "b")][-1]
    assert _readers_of(inst.log_path) == 0
    proc = subprocess.Popen([PYTHON, "-m", "controllers.kctl", "--server", plane.endpoint, "logs", "-f", "picked"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=_env())
    try:
        assert proc.stdout.readline() == b"from b\n"  # the default container's
        assert _readers_of(inst.log_path) == 1  # the kubelet server (in this process) follows it
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_until(lambda: _readers_of(inst.log_path) == 0, 10,
               what="the kubelet to close the log once kctl went away")


def test_logs_errors_in_kubernetes_words(cluster, kctl):
    def err(*args) -> str:
        return kctl(*args, code=1).stderr.decode().strip()
    assert err("logs", "lonely") == "Error from server (BadRequest): pod lonely does not have a host assigned"
    assert err("logs", "web", "--tail", "-2") == ('The PodLogOptions "web" is invalid: '
                                                 "tailLines: Invalid value: -2: must be greater than or equal to 0")
    assert err("logs", "web", "-c", "nope") == "Error from server (BadRequest): container nope is not valid for pod web"
    assert err("logs", "duo") == ("Error from server (BadRequest): a container name must be specified for pod duo, "
                                  "choose one of: [a b setup]")
    assert err("logs", "nothere") == 'Error from server (NotFound): pods "nothere" not found'
    # the kubelet's answers: a pod it does not run, a container not started, no previous one
    assert err("logs", "duo", "-c", "a") == 'Error from server (NotFound): pod "duo" does not exist'
    assert err("logs", "picked", "-c", "a") == \
        'Error from server (BadRequest): container "a" in pod "picked" is waiting to start: ContainerCreating'
    assert err("logs", "picked", "-p") == \
        'Error from server (BadRequest): previous terminated container "b" in pod "picked" not found'
    assert "has no kubelet endpoint" in err("logs", "unserved")
    gone = err("logs", "orphan")
    assert gone.startswith("Error from server (ServiceUnavailable): the kubelet of node \"gone\"") and \
        "does not answer" in gone


def test_log_options_are_validated_by_the_apiserver(cluster, client):
    with pytest.raises(ApiError) as e:
        list(client.logs("web", tail_lines=-1))
    assert e.value.reason == "Invalid" and "tailLines: Invalid value: -1: must be greater than or equal to 0" in e.value.message
    with pytest.raises(ApiError) as e:
        list(client.logs("web", since_seconds=5, since_time="2024-01-01T00:00:00Z"))
    assert "at most one of `sinceTime` or `sinceSeconds` may be specified" in e.value.message
    with pytest.raises(ApiError) as e:
        list(client.logs("web", stream="Stdout", tail_lines=3))
    assert "`tailLines` and specific `stream` are mutually exclusive for now" in e.value.message
    assert b"".join(client.logs("web", previous=True, stream="Stderr")) == b"oops\n"


# ---- exec ----

def test_exec_prints_output_and_exits_with_the_commands_code(cluster, kctl):
    ok = kctl("exec", "shell", "--", "sh", "-c", "echo out; pwd")
    assert ok.stdout.decode().splitlines() == ["out", str(cluster.instances[(NS, "shell", "sh")][-1].dir)]
    failed = kctl("exec", "shell", "-c", "sh", "--", "sh", "-c", "echo out; echo err >&2; exit 3", code=3)
    assert failed.stdout == b"out\n"
    assert failed.stderr == b"err\ncommand terminated with exit code 3\n"
    missing = kctl("exec", "pod/shell", "--", "no-such-command", code=127)
    assert b'"no-such-command": executable file not found' in missing.stderr


def test_exec_errors(cluster, kctl, client):
    def err(*args) -> str:
        return kctl(*args, code=1).stderr.decode().strip()
    assert err("exec", "lonely", "--", "true") == \
        "Error from server (BadRequest): pod lonely does not have a host assigned"
    assert err("exec", "shell", "-c", "x", "--", "true") == \
        "Error from server (BadRequest): container x is not valid for pod shell"
    assert err("exec", "shell", "-i", "--", "sh").startswith("error: -i/--stdin and -t/--tty are not supported yet")
    assert err("exec", "shell", "ls") == \
        "error: exec [POD] [COMMAND] is not supported anymore. Use exec [POD] -- [COMMAND] instead"
    assert err("exec", "ended", "--", "true") == \
        'Error from server (BadRequest): container "app" in pod "ended" is not running'
    assert err("exec", "duo", "-c", "b", "--", "true") == 'Error from server (NotFound): pod "duo" does not exist'
    done = client.get("pods", "duo", NS)
    done.status.phase = "Succeeded"
    client.update_status(done)
    assert err("exec", "duo", "-c", "a", "--", "true") == \
        "error: cannot exec into a container in a completed pod; current phase is Succeeded"


def test_the_kubelet_server_alone(cluster, kubelet):
    """The kubelet's own API, as the apiserver calls it: codes, and a container that stopped."""
    with grpc.insecure_channel(f"127.0.0.1:{kubelet.port}") as ch:
        stub = kubelet_pb2_grpc.KubeletStub(ch)
        chunks = stub.ContainerLogs(kubelet_pb2.LogsRequest(namespace=NS, pod="web", container="app",
                                                            previous=True, tail_lines=1), timeout=10)
        assert b"".join(c.data for c in chunks) == b"oops\n"
        with pytest.raises(grpc.RpcError) as e:
            list(stub.ContainerLogs(kubelet_pb2.LogsRequest(namespace=NS, pod="x", container="y"), timeout=10))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            list(stub.ContainerLogs(kubelet_pb2.LogsRequest(namespace=NS, pod="web", container="app",
                                                            stream="stdin"), timeout=10))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # a container that exited: its log, no follow wait; no exec
        follow = stub.ContainerLogs(kubelet_pb2.LogsRequest(namespace=NS, pod="ended", container="app",
                                                            follow=True), timeout=10)
        assert b"".join(c.data for c in follow) == b"done\n"
        with pytest.raises(grpc.RpcError) as e:
            stub.Exec(kubelet_pb2.ExecRequest(namespace=NS, pod="ended", container="app", command=["true"]),
                      timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:
            stub.Exec(kubelet_pb2.ExecRequest(namespace=NS, pod="shell", container="sh",
                                              command=["sleep", "5"], timeout_seconds=1), timeout=10)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def _read_position(path: Path) -> int | None:
    """Where this process's read-only descriptor on ``path`` stands (the kubelet's reader)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != str(path):
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                fields = dict(line.split(":", 1) for line in info if ":" in line)
        except OSError:
            continue
        if int(fields["flags"].split()[0], 8) & os.O_ACCMODE == os.O_RDONLY:
            return int(fields["pos"].split()[0])
    return None


def test_a_client_that_does_not_read_holds_the_kubelet_back(cluster, client):
    """Nothing in between buffers without bound: while the client reads nothing, the kubelet
    stops reading the file once the windows and stream buffers on the way are full."""
    lines = 300_000  # of 100 bytes: 30 MB to show, a 42 MB log with the records' headers
    client.create(_pod("chatty", ["app"]))
    inst = cluster.run("chatty", "app", f"yes $(printf '%099d' 0) | head -n {lines}; sleep 600")
    wait_until(lambda: inst.log_path.stat().st_size >= lines * 140, 60, what="the log to be written")
    file_size = inst.log_path.stat().st_size
    stream = client.logs("chatty", follow=True)
    chunks = iter(stream)
    first = next(chunks)  # the call is up; then the client reads nothing for a while
    try:
        # the kubelet's reader must come to rest (still for 0.6 s) before it has read half the
        # file; how soon it gets there depends on the machine's load, so it is polled
        positions = []

        def at_rest_or_past_half() -> bool:
            positions.append(_read_position(inst.log_path) or 0)
            return (len(positions) >= 4 and positions[-1] == positions[-4]) or positions[-1] >= file_size // 2
        wait_until(at_rest_or_past_half, 60, interval=0.2, what=f"the kubelet's reader to stop: {positions}")
        held = positions[-1]
        assert positions[-1] == positions[-4], f"the kubelet kept reading: {positions}"
        assert held < file_size // 2, f"read {held} of {file_size} bytes for a client that reads nothing"
        got = len(first)
        for chunk in chunks:
            got += len(chunk)
            if got >= lines * 100:
                break
        assert got == lines * 100
    finally:
        stream.stop()
