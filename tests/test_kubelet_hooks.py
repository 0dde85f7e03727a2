"""Lifecycle hooks (node/kubelet/hooks.py): exec through an injected ExecSync,
httpGet and tcpSocket against real sockets on 127.0.0.1 through an injected
connector; preStop takes its time from the grace period (Kubernetes'
handlers.go and killContainer)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubelet_fixtures import make_pod

from apiserver.pb import core_pb2
from node.kubelet.hooks import HookRunner


class _Handler(BaseHTTPRequestHandler):
    hits: list = []

    def do_GET(self):
        _Handler.hits.append(self.path)
        self.send_response(200 if self.path == "/ok" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def port():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def to_loopback(host, port, timeout):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def handler(**kw) -> core_pb2.LifecycleHandler:
    return core_pb2.LifecycleHandler(**kw)


def test_exec_hook():
    calls = []

    def exec_sync(cid, cmd, timeout):
        calls.append((cid, cmd, timeout))
        return (0, b"") if cmd[0] == "ok" else (2, b"no such thing")
    pod = make_pod(("app",))
    runner = HookRunner(exec_sync=exec_sync)
    assert runner.run(handler(exec=core_pb2.ExecAction(command=["ok"])), pod, pod.spec.containers[0], "c1", "", 5) == ""
    msg = runner.run(handler(exec=core_pb2.ExecAction(command=["bad"])), pod, pod.spec.containers[0], "c1", "", 5)
    assert msg == ("Exec lifecycle hook (['bad']) for Container \"app\" in Pod \"web_default(uid-1)\" "
                   "failed - error: no such thing")
    assert calls[0] == ("c1", ["ok"], 5)


def test_http_and_tcp_hooks_through_the_connector(port):
    pod = make_pod(("app",))
    c = pod.spec.containers[0]
    runner = HookRunner(connect=to_loopback)
    _Handler.hits.clear()
    ok = handler(http_get=core_pb2.HTTPGetAction(path="/ok", port=str(port)))
    bad = handler(http_get=core_pb2.HTTPGetAction(path="/down", port=str(port)))
    assert runner.run(ok, pod, c, "c1", "10.244.0.9", 2) == ""
    assert "HTTP probe failed with statuscode: 503" in runner.run(bad, pod, c, "c1", "10.244.0.9", 2)
    assert _Handler.hits == ["/ok", "/down"]
    assert runner.run(handler(tcp_socket=core_pb2.TCPSocketAction(port=str(port))), pod, c, "c1", "10.244.0.9", 2) == ""
    assert "has no handler" in runner.run(handler(), pod, c, "c1", "10.244.0.9", 2)


def test_pre_stop_uses_the_grace_period():
    now = [100.0]

    def slow_exec(cid, cmd, timeout):
        now[0] += 7  # the hook took 7 s
        return 0, b""
    pod = make_pod(("app",))
    c = pod.spec.containers[0]
    runner = HookRunner(exec_sync=slow_exec, clock=lambda: now[0])
    assert runner.pre_stop(pod, c, "c1", "", 30) == (30, "")  # no hook: the whole grace
    c.lifecycle.pre_stop.exec.command[:] = ["sleep", "7"]
    assert runner.pre_stop(pod, c, "c1", "", 30) == (23, "")
    assert runner.pre_stop(pod, c, "c1", "", 5) == (2, "")   # at least 2 s are left for the stop
    assert runner.pre_stop(pod, c, "c1", "", 0) == (2, "")   # no grace: no hook
