"""Probes (node/kubelet/probes.py): httpGet and tcpSocket against real sockets on
127.0.0.1 reached through an injected connector (as the kubelet reaches a pod
IP inside a node's netns), exec through an injected ExecSync, and the worker's
rules from Kubernetes' prober/worker.go (worker_test.go TestInitialDelay,
TestFailureThreshold, TestSuccessThreshold, TestOnHoldOnLivenessOrStartupCheckFailure,
TestStartupProbe...)."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubelet_fixtures import make_pod

from apiserver.pb import core_pb2
from controllers.podutil import now_rfc3339
from node.kubelet import probes
from node.kubelet.probes import (FAILURE, LIVENESS, READINESS, STARTUP, SUCCESS, UNKNOWN, ProbeError,
                                 ProbeManager, Prober, ProbeResults, ProbeWorker)

POD_IP = "10.244.0.5"  # what the probe is aimed at; the connector takes it to 127.0.0.1


class _Handler(BaseHTTPRequestHandler):
    seen_headers: list = []

    def do_GET(self):
        _Handler.seen_headers.append(dict(self.headers))
        routes = {"/ok": (200, None), "/fail": (500, None), "/redir": (302, "/ok"),
                  "/redir-fail": (302, "/fail"), "/away": (302, "http://elsewhere.example:81/x"),
                  "/loop": (302, "/loop")}
        code, location = routes.get(self.path.split("?")[0], (404, None))
        body = f"path {self.path}".encode()
        self.send_response(code)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_port():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class Connector:
    """Stands in for node.network.netns.connect_in(netns, ...): pod IPs go to loopback."""

    def __init__(self):
        self.calls = []

    def __call__(self, host, port, timeout):
        self.calls.append((host, port, timeout))
        return socket.create_connection(("127.0.0.1" if host == POD_IP else host, port), timeout=timeout)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- executors ----

@pytest.mark.parametrize("path,result,output", [
    ("/ok", SUCCESS, "path /ok"),
    ("/fail", FAILURE, "HTTP probe failed with statuscode: 500"),
    ("/nowhere", FAILURE, "HTTP probe failed with statuscode: 404"),
    ("/redir", SUCCESS, "path /ok"),            # same-host redirect followed
    ("/redir-fail", FAILURE, "HTTP probe failed with statuscode: 500"),
    ("/away", SUCCESS, "probe terminated redirects to another host: http://elsewhere.example:81/x"),
    ("/loop", FAILURE, "stopped after 10 redirects"),
])
def test_http_probe_outcomes(http_port, path, result, output):
    connect = Connector()
    got = probes.http_probe(connect, POD_IP, http_port, path, 1.0)
    assert got == (result, output)
    assert connect.calls[0] == (POD_IP, http_port, 1.0)


def test_http_probe_sends_kubernetes_headers(http_port):
    _Handler.seen_headers.clear()
    probes.http_probe(Connector(), POD_IP, http_port, "/ok", 1.0)
    h = _Handler.seen_headers[-1]
    assert h["User-Agent"].startswith("kube-probe/")
    assert h["Accept"] == "*/*"
    assert h["Host"] == f"{POD_IP}:{http_port}"


def test_http_probe_headers_from_the_spec(http_port):
    _Handler.seen_headers.clear()
    c = core_pb2.Container(name="app")
    probe = core_pb2.Probe(http_get=core_pb2.HTTPGetAction(
        path="/ok", port=str(http_port), http_headers=[core_pb2.HTTPHeader(name="X-Probe", value="yes"),
                                                       core_pb2.HTTPHeader(name="Accept", value="text/plain")]))
    assert Prober(connect=Connector()).probe(READINESS, probe, c, "cid", POD_IP)[0] == SUCCESS
    h = _Handler.seen_headers[-1]
    assert (h["X-Probe"], h["Accept"]) == ("yes", "text/plain")  # the spec's Accept replaces */*


def test_http_probe_refused_and_timeout_are_failures():
    result, output = probes.http_probe(Connector(), POD_IP, closed_port(), "/", 1.0)
    assert result == FAILURE and "refused" in output.lower()
    silent = socket.socket()  # accepts connections (backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        t0 = time.monotonic()
        result, output = probes.http_probe(Connector(), POD_IP, silent.getsockname()[1], "/", 0.5)
        assert result == FAILURE and "timed out" in output
        assert 0.4 < time.monotonic() - t0 < 5
    finally:
        silent.close()


def test_tcp_probe(http_port):
    assert probes.tcp_probe(Connector(), POD_IP, http_port, 1.0) == (SUCCESS, "")
    result, output = probes.tcp_probe(Connector(), POD_IP, closed_port(), 1.0)
    assert result == FAILURE and output.startswith(f"dial tcp {POD_IP}:")


def test_exec_probe_through_exec_sync():
    calls = []

    def exec_sync(cid, cmd, timeout):
        calls.append((cid, cmd, timeout))
        if cmd[0] == "slow":
            raise TimeoutError
        return (0, b"fine") if cmd[0] == "true" else (1, b"")

    assert probes.exec_probe(exec_sync, "c1", ["true"], 1) == (SUCCESS, "fine")
    assert probes.exec_probe(exec_sync, "c1", ["false"], 1) == (FAILURE, "command ['false'] exited with 1")
    assert probes.exec_probe(exec_sync, "c1", ["slow"], 2) == (FAILURE, "command ['slow'] timed out after 2s")
    assert calls[0] == ("c1", ["true"], 1)


def test_ports_by_number_or_name():
    c = core_pb2.Container(name="app", ports=[core_pb2.ContainerPort(name="http", container_port=8080)])
    assert probes.resolve_port("8080", c) == 8080
    assert probes.resolve_port("http", c) == 8080
    with pytest.raises(ProbeError, match="not a number nor the name"):
        probes.resolve_port("grpc", c)
    with pytest.raises(ProbeError, match="out of range"):
        probes.resolve_port("70000", c)


def test_prober_dispatches_by_handler(http_port):
    prober = Prober(exec_sync=lambda cid, cmd, t: (0, b"ok"), connect=Connector())
    c = core_pb2.Container(name="app", ports=[core_pb2.ContainerPort(name="web", container_port=http_port)])
    http = core_pb2.Probe(http_get=core_pb2.HTTPGetAction(path="/ok", port="web"), timeout_seconds=1)
    tcp = core_pb2.Probe(tcp_socket=core_pb2.TCPSocketAction(port=str(http_port)), timeout_seconds=1)
    ex = core_pb2.Probe(exec=core_pb2.ExecAction(command=["true"]))
    assert prober.probe(READINESS, http, c, "cid", POD_IP)[0] == SUCCESS
    assert prober.probe(LIVENESS, tcp, c, "cid", POD_IP)[0] == SUCCESS
    assert prober.probe(LIVENESS, ex, c, "cid", POD_IP)[0] == SUCCESS
    with pytest.raises(ProbeError, match="no handler"):
        prober.probe(LIVENESS, core_pb2.Probe(), c, "cid", POD_IP)
    with pytest.raises(ProbeError, match="no IP"):
        prober.probe(LIVENESS, tcp, c, "cid", "")


def test_exec_runtime_errors_are_errors_not_failures():
    def broken(cid, cmd, timeout):
        raise RuntimeError("container not found")
    with pytest.raises(ProbeError, match="container not found"):
        Prober(exec_sync=broken).probe(LIVENESS, core_pb2.Probe(exec=core_pb2.ExecAction(command=["x"])),
                                       core_pb2.Container(name="a"), "cid", POD_IP)


# ---- the worker ----

class FakeProber:
    def __init__(self):
        self.next = []
        self.calls = 0

    def probe(self, kind, spec, container, cid, pod_ip):
        self.calls += 1
        out = self.next.pop(0) if self.next else SUCCESS
        if out == "error":
            raise ProbeError("boom")
        return out, ""


def worker_setup(kind, *, started=True, state="running", started_ago=100.0, policy="Always",
                 **probe_fields):
    fields = {"period_seconds": 1, "success_threshold": 1, "failure_threshold": 3, **probe_fields}
    probe = core_pb2.Probe(exec=core_pb2.ExecAction(command=["x"]), **fields)
    field = {LIVENESS: "liveness_probe", READINESS: "readiness_probe", STARTUP: "startup_probe"}[kind]
    pod = make_pod(("app",), policy=policy, **{field: probe})
    now = [1_800_000_000.0]
    status = core_pb2.PodStatus(phase="Running", pod_ip=POD_IP)
    cs = status.container_statuses.add(name="app", container_id="fake://c1", started=started)
    if state == "running":
        cs.state.running.started_at = now_rfc3339(now[0] - started_ago)
    elif state == "terminated":
        cs.state.terminated.exit_code = 1
    results = ProbeResults()
    prober = FakeProber()
    w = ProbeWorker(kind, pod, pod.spec.containers[0], results, prober, lambda uid: status,
                    clock=lambda: now[0])
    return w, results, prober, status, now


@pytest.mark.parametrize("kind,initial", [(LIVENESS, SUCCESS), (READINESS, FAILURE), (STARTUP, UNKNOWN)])
def test_initial_results_before_any_probe(kind, initial):
    w, results, prober, _, _ = worker_setup(kind, initial_delay_seconds=60, started_ago=5,
                                            started=kind != STARTUP)
    assert w.do_probe()
    assert results.get(kind, "c1") == initial
    assert prober.calls == 0  # still inside initialDelaySeconds


def test_initial_delay_then_probing():
    w, results, prober, _, now = worker_setup(READINESS, initial_delay_seconds=10, started_ago=5)
    w.do_probe()
    assert prober.calls == 0
    now[0] += 6
    w.do_probe()
    assert (prober.calls, results.get(READINESS, "c1")) == (1, SUCCESS)


def test_failure_threshold_then_hold_until_a_new_container():
    w, results, prober, status, _ = worker_setup(LIVENESS)
    prober.next = [FAILURE, FAILURE, FAILURE, FAILURE]
    for expect in (SUCCESS, SUCCESS, FAILURE):
        w.do_probe()
        assert results.get(LIVENESS, "c1") == expect
    w.do_probe()
    assert prober.calls == 3  # on hold: the failed container is not probed again
    status.container_statuses[0].container_id = "fake://c2"
    w.do_probe()
    assert prober.calls == 4
    assert results.get(LIVENESS, "c2") == SUCCESS  # a new container starts from the initial belief
    assert results.get(LIVENESS, "c1") is None


def test_success_threshold():
    w, results, prober, _, _ = worker_setup(READINESS, success_threshold=2)
    w.do_probe()
    assert results.get(READINESS, "c1") == FAILURE
    w.do_probe()
    assert results.get(READINESS, "c1") == SUCCESS
    prober.next = [FAILURE, SUCCESS, FAILURE, FAILURE, FAILURE]
    for _ in range(4):
        w.do_probe()
    assert results.get(READINESS, "c1") == SUCCESS  # the run of failures was broken
    w.do_probe()
    assert results.get(READINESS, "c1") == FAILURE  # readiness never holds
    w.do_probe()
    assert prober.calls == 8


def test_probe_errors_leave_the_belief():
    w, results, prober, _, _ = worker_setup(READINESS, failure_threshold=1)
    w.do_probe()
    prober.next = ["error", "error"]
    w.do_probe()
    w.do_probe()
    assert results.get(READINESS, "c1") == SUCCESS


def test_startup_gates_the_others():
    w, results, prober, status, _ = worker_setup(LIVENESS, started=False)
    w.do_probe()
    assert prober.calls == 0
    s, sresults, sprober, _, _ = worker_setup(STARTUP, started=False, failure_threshold=1)
    s.do_probe()
    assert (sprober.calls, sresults.get(STARTUP, "c1")) == (1, SUCCESS)
    status.container_statuses[0].started = True
    w.do_probe()
    assert prober.calls == 1
    s2, _, sprober2, _, _ = worker_setup(STARTUP, started=True)
    s2.do_probe()
    assert sprober2.calls == 0  # started: the startup probe rests


def test_not_running_container_fails_and_never_policy_stops_the_worker():
    w, results, _, _, _ = worker_setup(READINESS, state="terminated", policy="Never")
    assert w.do_probe() is False
    assert results.get(READINESS, "c1") == FAILURE
    w, _, _, _, _ = worker_setup(READINESS, state="terminated", policy="Always")
    assert w.do_probe() is True


def test_terminating_pod_stops_liveness_and_finished_pod_stops_all():
    w, results, _, _, _ = worker_setup(LIVENESS)
    w.pod.metadata.deletion_timestamp = "2027-01-01T00:00:00Z"
    assert w.do_probe() is False
    assert results.get(LIVENESS, "c1") == SUCCESS
    w, _, _, status, _ = worker_setup(READINESS)
    status.phase = "Succeeded"
    assert w.do_probe() is False


# ---- the manager, end to end on a real HTTP server ----

def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_manager_runs_readiness_and_liveness_on_real_sockets(http_port):
    changes = []
    results = ProbeResults(on_change=lambda *a: changes.append(a))
    ready = core_pb2.Probe(http_get=core_pb2.HTTPGetAction(path="/ok", port=str(http_port)),
                           period_seconds=1, timeout_seconds=1, success_threshold=1, failure_threshold=1)
    alive = core_pb2.Probe(tcp_socket=core_pb2.TCPSocketAction(port=str(closed_port())),
                           period_seconds=1, timeout_seconds=1, success_threshold=1, failure_threshold=2)
    pod = make_pod(("app",), readiness_probe=ready, liveness_probe=alive)
    status = core_pb2.PodStatus(phase="Running", pod_ip=POD_IP)
    cs = status.container_statuses.add(name="app", container_id="fake://c1", started=True)
    cs.state.running.started_at = now_rfc3339()
    connect = Connector()
    mgr = ProbeManager(results, Prober(connect=connect), lambda uid: status).start()
    try:
        mgr.add_pod(pod)
        assert mgr.has_worker("uid-1", "app", READINESS) and mgr.has_worker("uid-1", "app", LIVENESS)
        assert wait_for(lambda: results.get(READINESS, "c1") == SUCCESS)
        # the liveness target refuses: two periods later the container is declared dead
        assert wait_for(lambda: results.get(LIVENESS, "c1") == FAILURE)
        assert (LIVENESS, "c1", FAILURE, "uid-1") in changes
        assert all(host == POD_IP for host, _, _ in connect.calls)
        # readiness turns when the page starts failing
        pod.spec.containers[0].readiness_probe.http_get.path = "/fail"
        mgr.trigger("uid-1", "app", READINESS)
        assert wait_for(lambda: results.get(READINESS, "c1") == FAILURE)
        mgr.remove_pod("uid-1")
        assert not mgr.has_worker("uid-1", "app", READINESS)
        assert results.get(READINESS, "c1") is None
    finally:
        mgr.stop()


def test_a_new_containers_first_belief_is_not_a_change():
    """The kubelet reads a missing result as the initial belief: telling it would cost a sync."""
    changes = []
    results = ProbeResults(on_change=lambda *a: changes.append(a))
    results.set(READINESS, "c1", FAILURE, "uid-1")
    results.set(LIVENESS, "c1", SUCCESS, "uid-1")
    assert changes == []
    results.set(READINESS, "c1", SUCCESS, "uid-1")
    results.set(LIVENESS, "c1", FAILURE, "uid-1")
    assert changes == [(READINESS, "c1", SUCCESS, "uid-1"), (LIVENESS, "c1", FAILURE, "uid-1")]
    results.set(READINESS, "c2", SUCCESS, "uid-1")  # a first result other than the belief is one
    assert changes[-1] == (READINESS, "c2", SUCCESS, "uid-1")
