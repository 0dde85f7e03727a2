"""kubectl exec, attach, port-forward and logs on a real node, through the apiserver's REST API,
the kubelet and the runtime's streaming server (issue 21's subresources, issue 18's streams).

One plane for the module: etcdlite, the apiserver, controller-manager and scheduler, one real
node (runtime on runc + conmon, kubelet). kubectl 1.32.3 speaks WebSocket v5.channel.k8s.io for
exec and attach and SPDY/3.1 tunnelled in a WebSocket for port-forward, as it does against
kube-apiserver 1.32; what each test expects is what kubectl prints there (the messages cited).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from apiserver.client import Client
from apiserver.manifest import from_dict
from apiserver.rest.kubeconfig import write_kubeconfig
from harness.etcd_client import wait_until
from harness.nodes import need_runtime, real_nodes
from harness.plane import start_control_plane
from harness.procs import Registry, free_port

pytestmark = pytest.mark.process

TIMEOUT = 60
RUN_TIMEOUT = 30

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: httpd
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo hello from web > /www/index.html && echo started && exec httpd -f -p 80 -h /www"]
---
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  containers:
  - name: tick
    image: busybox
    command: ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.3; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  restartPolicy: Never
  containers:
  - name: read
    image: busybox
    stdin: true
    stdinOnce: true
    command: ["sh", "-c", "while read l; do echo got $l; done; echo bye"]
---
apiVersion: v1
kind: Pod
metadata: {name: term}
spec:
  containers:
  - name: sh
    image: busybox
    stdin: true
    tty: true
    command: ["sh"]
---
apiVersion: v1
kind: Pod
metadata: {name: twice}
spec:
  restartPolicy: OnFailure
  volumes: [{name: d, emptyDir: {}}]
  containers:
  - name: run
    image: busybox
    volumeMounts: [{name: d, mountPath: /d}]
    command: ["sh", "-c", "if [ -f /d/x ]; then echo second run; sleep 3600; else touch /d/x; echo first run; exit 1; fi"]
---
apiVersion: v1
kind: Pod
metadata: {name: broken}
spec:
  containers:
  - name: app
    image: nosuchimage:1
"""


def kubectl_binary() -> str | None:
    from tests.test_kubectl import find_kubectl  # noqa: PLC0415 (its search, one place)
    return find_kubectl()


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    need_runtime()
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl not found: run harness/get_kubectl.sh or set KUBECTL")
    reg = Registry()
    tmp = tmp_path_factory.mktemp("streams")
    try:
        api = start_control_plane(tmp, reg)
        with real_nodes(tmp, api.endpoint, 1) as nodes, Client(api.endpoint, timeout=20) as client:
            import yaml
            for doc in yaml.safe_load_all(PODS):
                obj = from_dict(doc)
                obj.metadata.namespace = "default"
                client.create(obj)
            config = write_kubeconfig(str(tmp / "kubeconfig"), f"http://{api.endpoint}", namespace="default")
            yield Plane(client, binary, config, tmp / "cache", nodes, api.port)
    finally:
        reg.cleanup()


class Plane:
    def __init__(self, client, binary, config, cache, nodes, api_port):
        self.client, self.binary, self.config, self.cache, self.nodes = client, binary, config, cache, nodes
        self.api_port = api_port

    def argv(self, *args: str) -> list[str]:
        return [self.binary, "--kubeconfig", str(self.config), "--cache-dir", str(self.cache), *args]

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), input=input, capture_output=True, text=True, timeout=RUN_TIMEOUT)

    def pod(self, name: str):
        return self.client.get("pods", name, "default")

    def running(self, name: str):
        def ok():
            p = self.pod(name)
            return p if p.status.phase == "Running" and all(c.state.HasField("running")
                                                             for c in p.status.container_statuses) else None
        return wait_until(ok, TIMEOUT, what=f"pod {name} running")


def test_exec_separates_stdout_and_stderr_and_exits_with_the_commands_code(plane):
    plane.running("web")
    out = plane.run("exec", "web", "--", "sh", "-c", "echo out; echo err >&2")
    assert (out.returncode, out.stdout, out.stderr) == (0, "out\n", "err\n")
    # kubectl: "command terminated with exit code N" and exits with N (the NonZeroExitCode Status)
    failed = plane.run("exec", "web", "--", "sh", "-c", "exit 3")
    assert failed.returncode == 3
    assert "command terminated with exit code 3" in failed.stderr
    # a command runc cannot start: 127 and runc's words, as a shell says
    missing = plane.run("exec", "web", "--", "nosuchcommand")
    assert missing.returncode == 127 and "nosuchcommand" in missing.stderr


def test_exec_with_stdin_piped(plane):
    plane.running("web")
    text = "".join(f"line {i}\n" for i in range(2000))  # ~20 KB: several stdin messages
    got = plane.run("exec", "-i", "web", "--", "sh", "-c", "cat; echo done", input=text)
    assert got.returncode == 0, got.stderr
    assert got.stdout == text + "done\n"
    counted = plane.run("exec", "-i", "web", "--", "wc", "-l", input="a\nb\nc\n")
    assert counted.stdout.split() == ["3"]


def _read_until_exit(fd: int, proc: subprocess.Popen, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: kubectl exited, the terminal is gone
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    return out


def _terminal_session(plane, *args: str, rows: int = 33, cols: int = 101):
    """kubectl on a pty made here, as its controlling terminal (``setsid -c``: a resize of the
    pty sends kubectl SIGWINCH, as a user's terminal does): (process, master fd)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(["setsid", "-c", *plane.argv(*args)], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    return proc, master


def _read_until(fd: int, want: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while want not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out


def test_exec_with_a_terminal(plane):
    """kubectl exec -it: the command sees a terminal of the user's size (kubectl's first resize
    message), what is typed reaches it, a resize of the user's terminal reaches it (the resize
    channel), and its exit code is kubectl's."""
    plane.running("web")
    proc, master = _terminal_session(plane, "exec", "-it", "web", "--", "sh")
    try:
        os.write(master, b"stty size; tty; echo $((6*7))\n")
        out = _read_until(master, b"\r\n42\r\n", RUN_TIMEOUT)
        assert b"33 101" in out and b"/dev/pts/" in out, out
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 132, 0, 0))

        def resized():
            os.write(master, b"stty size\n")
            return b"50 132" in _read_until(master, b"50 132", 1)
        wait_until(resized, 15, what="the new size inside the container")
        os.write(master, b"exit 7\n")
        out = _read_until_exit(master, proc, RUN_TIMEOUT)
        assert proc.wait(10) == 7, out
        assert b"command terminated with exit code 7" in out
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_attach_follows_a_running_containers_output(plane):
    plane.running("ticker")
    proc = subprocess.Popen(plane.argv("attach", "ticker"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.kill()
        proc.wait()
    numbers = [int(line.split()[1]) for line in seen]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3, seen


def test_attach_with_stdin_reaches_the_container_and_ends_with_it(plane):
    """stdinOnce: the container's stdin closes when the attached client's ends, so `read`
    sees EOF, the container exits and kubectl attach with it."""
    plane.running("reader")
    got = plane.run("attach", "-i", "reader", input="x\ny\n")
    assert got.returncode == 0, got.stderr
    assert "got x\ngot y\nbye\n" in got.stdout
    wait_until(lambda: plane.pod("reader").status.phase == "Succeeded", TIMEOUT, what="reader Succeeded")
    # kubectl's own check (pkg/cmd/exec: a completed pod)
    done = plane.run("exec", "reader", "--", "ls")
    assert done.returncode == 1
    assert "cannot exec into a container in a completed pod; current phase is Succeeded" in done.stderr


def test_attach_to_a_terminal(plane):
    """kubectl attach -it to a container with tty and stdin: conmon's terminal, at the user's
    size. kubectl sends the size plus one, then the size (pkg/cmd/attach: a resize makes the
    program redraw), each a line on conmon's control fifo; the last one wins."""
    plane.running("term")
    proc, master = _terminal_session(plane, "attach", "-it", "term")
    seen = []
    try:
        def answered():
            os.write(master, b"stty size; echo $((2*21))\n")
            seen.append(_read_until(master, b"\r\n42\r\n", 1))
            return b"33 101" in seen[-1]
        try:
            wait_until(answered, 15, what="the attached shell answering at the user's size")
        except AssertionError:
            raise AssertionError(b"".join(seen)[-2000:]) from None
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def test_the_kubelets_http_endpoints(plane):
    """What the apiserver calls on the kubelet's port, directly: /containerLogs with the log
    options, and the kubelet's own refusals (plain text, as Kubernetes' kubelet writes them)."""
    plane.running("ticker")
    node = plane.client.get("nodes", plane.pod("ticker").spec.node_name)
    base = f"http://127.0.0.1:{node.status.daemon_endpoints.kubelet_endpoint.port}"
    with urllib.request.urlopen(f"{base}/containerLogs/default/ticker/tick?tailLines=2", timeout=10) as resp:  # noqa: S310
        lines = resp.read().decode().splitlines()
    assert len(lines) == 2 and all(line.startswith("tick ") for line in lines)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{base}/exec/default/nosuchpod/c?command=ls&stdout=1", timeout=10)  # noqa: S310
    assert (e.value.code, e.value.read()) == (404, b"pod does not exist\n")
    # the apiserver refuses an exec that is no upgrade (kube-apiserver: "Upgrade request required")
    req = urllib.request.Request(f"http://127.0.0.1:{plane.api_port}/api/v1/namespaces/default/pods/ticker/"
                                 f"exec?command=ls&stdout=true", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)  # noqa: S310
    assert e.value.code == 400 and json.loads(e.value.read())["message"] == "Upgrade request required"


def test_logs_follow_prints_new_lines(plane):
    plane.running("ticker")
    proc = subprocess.Popen(plane.argv("logs", "-f", "--tail=1", "ticker"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        seen = [proc.stdout.readline().decode() for _ in range(4)]
    finally:
        proc.kill()
        proc.wait()
    assert all(seen), (seen, proc.stderr.read())
    numbers = [int(line.split()[1]) for line in seen]
    assert numbers == list(range(numbers[0], numbers[0] + 4)), seen  # the tail, then new lines in order


def test_logs_options_and_previous(plane):
    def restarted():
        p = plane.pod("twice")
        return p if p.status.container_statuses and p.status.container_statuses[0].restart_count >= 1 \
            and p.status.container_statuses[0].state.HasField("running") else None
    wait_until(restarted, TIMEOUT, what="twice restarted")
    assert plane.run("logs", "twice").stdout == "second run\n"
    assert plane.run("logs", "twice", "--previous").stdout == "first run\n"
    stamped = plane.run("logs", "twice", "--timestamps").stdout
    assert stamped.endswith(" second run\n") and stamped[:4].isdigit()
    assert plane.run("logs", "ticker", "--tail=2").stdout.count("\n") == 2
    whole = wait_until(lambda: (n := plane.run("logs", "ticker").stdout.count("\n")) >= 20 and n, TIMEOUT,
                       what="20 ticks logged")
    since = plane.run("logs", "ticker", "--since=2s").stdout.count("\n")
    assert 0 < since < whole  # a line every 0.3 s: the last 2 s hold some, not all


def test_errors_in_kubernetes_words(plane):
    plane.running("web")
    missing = plane.run("exec", "nosuchpod", "--", "ls")
    assert 'Error from server (NotFound): pods "nosuchpod" not found' in missing.stderr
    bad = plane.run("exec", "web", "-c", "nope", "--", "ls")
    assert "Error from server (BadRequest): container nope is not valid for pod web" in bad.stderr
    logs = plane.run("logs", "web", "-c", "nope")  # kubectl checks this one itself
    assert "error: container nope is not valid for pod web" in logs.stderr
    previous = plane.run("logs", "web", "--previous")
    assert 'Error from server (BadRequest): previous terminated container "httpd" in pod "web" not found' \
        in previous.stderr
    wait_until(lambda: any(c.state.waiting.reason in ("ErrImagePull", "ImagePullBackOff")
                           for c in plane.pod("broken").status.container_statuses), TIMEOUT,
               what="broken waiting on its image")
    # the kubelet has no running container: its words, as kubectl prints a failed upgrade
    waiting = plane.run("exec", "broken", "--", "ls")
    assert waiting.returncode == 1
    assert 'error: unable to upgrade connection: container not found ("app")' in waiting.stderr
    waiting_logs = plane.run("logs", "broken")
    assert 'is waiting to start: ' in waiting_logs.stderr


@contextlib.contextmanager
def port_forward(plane, *args: str, env: dict | None = None):
    """kubectl port-forward running until the block ends; yields its local port."""
    local = free_port()
    proc = subprocess.Popen(plane.argv("port-forward", *args, f"{local}:80"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, **(env or {})))
    try:
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:<local> -> 80"
        assert line.startswith(f"Forwarding from 127.0.0.1:{local} -> 80"), (line, proc.stderr.read())
        yield local, proc
    finally:
        proc.kill()
        proc.wait()


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:  # noqa: S310 (loopback)
        return resp.read().decode()


def test_port_forward_reaches_the_pods_httpd(plane):
    plane.running("web")
    with port_forward(plane, "pod/web") as (local, _):
        assert _get(local) == "hello from web\n"
        assert [_get(local) for _ in range(3)] == ["hello from web\n"] * 3  # one connection each


def test_port_forward_over_plain_spdy(plane):
    """kubectl's fallback when the WebSocket tunnel is refused (or turned off): SPDY/3.1 on the
    upgraded connection itself."""
    plane.running("web")
    with port_forward(plane, "pod/web", env={"KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}) as (local, _):
        assert _get(local) == "hello from web\n"


def test_exec_over_v4_channel_protocol(plane):
    """A client offering only v4.channel.k8s.io (client-go before 1.30) is served: no close
    signal, the same channels and Status."""
    import asyncio

    from httpstream import websocket
    plane.running("web")

    async def run(server_port: int):
        ws = await websocket.connect("127.0.0.1", server_port, "/api/v1/namespaces/default/pods/web/exec?"
                                     "command=sh&command=-c&command=echo+hi%3B+exit+4&stdout=true&stderr=true",
                                     ["v4.channel.k8s.io"])
        assert ws.subprotocol == "v4.channel.k8s.io"
        got = []
        while (msg := await ws.recv()) is not None:
            got.append(msg[1])
        return got
    got = asyncio.run(run(plane.api_port))
    assert got[0] == b"\x01hi\n"
    status = json.loads(got[-1][1:])
    assert got[-1][:1] == b"\x03" and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"][0]["message"] == "4"


def test_port_forward_to_a_closed_port_says_why(plane):
    """Nothing listens on 80 in the ticker pod: the forward reports the pod's refusal on the
    error stream and kubectl keeps forwarding other connections."""
    plane.running("ticker")
    with port_forward(plane, "pod/ticker") as (local, proc):
        with pytest.raises(OSError):
            _get(local)
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert "an error occurred forwarding" in err and "connection refused" in err.lower(), err


def test_the_official_python_clients_logs_and_exec(plane):
    """kubernetes==32.0.1 (another client's WebSocket: websocket-client, v4.channel.k8s.io)."""
    k8s = pytest.importorskip("kubernetes.client", reason="the official Python client is not installed")
    from kubernetes.stream import stream  # noqa: PLC0415
    plane.running("web")
    conf = k8s.Configuration()
    conf.host = f"http://127.0.0.1:{plane.api_port}"
    with k8s.ApiClient(conf) as api:
        v1 = k8s.CoreV1Api(api)
        wait_until(lambda: plane.pod("twice").status.container_statuses[0].restart_count >= 1, TIMEOUT,
                   what="twice restarted")
        assert v1.read_namespaced_pod_log("twice", "default", previous=True) == "first run\n"
        assert v1.read_namespaced_pod_log("web", "default", tail_lines=1) == "started\n"
        out = stream(v1.connect_get_namespaced_pod_exec, "web", "default",
                     command=["sh", "-c", "echo from python"], stderr=True, stdin=False, stdout=True, tty=False)
        assert out == "from python\n"


def test_kubectl_cp_both_ways(plane, tmp_path):
    """kubectl cp is tar through exec: binary stdin ended by v5's close signal, binary stdout."""
    plane.running("web")
    data = os.urandom(200_000)
    (tmp_path / "blob").write_bytes(data)
    up = plane.run("cp", str(tmp_path / "blob"), "web:/tmp/blob")
    assert up.returncode == 0, up.stderr
    down = plane.run("cp", "web:/tmp/blob", str(tmp_path / "back"))
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "back").read_bytes() == data
