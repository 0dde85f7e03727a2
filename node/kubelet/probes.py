"""Liveness, readiness and startup probes: how one is run, and the worker that
decides, from a run of results, what the kubelet believes about a container.

As Kubernetes' pkg/kubelet/prober: one worker per (container, probe kind); a
result only counts after ``successThreshold`` / ``failureThreshold`` equal
results in a row; nothing is probed during ``initialDelaySeconds``; liveness
and readiness wait for the startup probe to succeed; after a liveness or
startup failure the worker holds until a new container replaces the failed
one. A probe that could not be run at all (an error, not a failure) leaves the
belief unchanged.

The kubelet runs in the root namespace and pods live in their own: probes
reach them through injected callables, so the same code runs against a pod IP
inside a node's netns (node.network.netns.connect_in) or 127.0.0.1 in tests:

- ``exec_sync(container_id, command, timeout) -> (exit_code, output)``, CRI
  ExecSync; raises TimeoutError when the command outlives ``timeout``.
- ``connect(host, port, timeout) -> socket``, a connected TCP socket.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from apiserver.pb import core_pb2
from controllers.podutil import parse_time

log = logging.getLogger("node.kubelet.probes")

LIVENESS, READINESS, STARTUP = "liveness", "readiness", "startup"
SUCCESS, FAILURE, UNKNOWN = "Success", "Failure", "Unknown"

USER_AGENT = "kube-probe/1.30"
MAX_BODY = 10 * 1024       # bytes of an HTTP body kept as the probe's output
MAX_REDIRECTS = 10
MAX_RETRIES = 3            # runs of a probe that errors before its result is thrown away

# what a worker believes of a new container before any probe ran
INITIAL_RESULT = {LIVENESS: SUCCESS, READINESS: FAILURE, STARTUP: UNKNOWN}
_PROBE_FIELD = {LIVENESS: "liveness_probe", READINESS: "readiness_probe", STARTUP: "startup_probe"}


class ProbeError(Exception):
    """The probe could not be run (bad spec, runtime error): not a failure."""


ExecSync = Callable[[str, list, float], tuple]
Connect = Callable[[str, int, float], socket.socket]


def default_connect(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection from this network namespace."""
    return socket.create_connection((host, port), timeout=timeout)


# ---- results ----

class ProbeResults:
    """The kubelet's belief per (probe kind, container id), shared by the probe
    workers (writers) and the pod sync and status (readers). ``on_change(kind,
    container_id, result, pod_uid)`` is called outside the lock when a result
    changes: a liveness or startup failure needs a sync, readiness a status."""

    def __init__(self, on_change: Callable[[str, str, str, str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._results: dict[tuple[str, str], str] = {}
        self._on_change = on_change

    def get(self, kind: str, container_id: str) -> str | None:
        with self._lock:
            return self._results.get((kind, container_id))

    def set(self, kind: str, container_id: str, result: str, pod_uid: str = "") -> None:
        """A new container's first belief (INITIAL_RESULT) is no change: the kubelet already
        reads a missing result as that belief (not ready, not started, alive)."""
        with self._lock:
            before = self._results.get((kind, container_id))
            self._results[(kind, container_id)] = result
        if before is None and result == INITIAL_RESULT[kind]:
            return
        if before != result and self._on_change is not None:
            self._on_change(kind, container_id, result, pod_uid)

    def remove(self, kind: str, container_id: str) -> None:
        with self._lock:
            self._results.pop((kind, container_id), None)


# ---- running one probe ----

def resolve_port(port: str, container: core_pb2.Container) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if port.isdigit():
        number = int(port)
    else:
        number = next((p.container_port for p in container.ports if p.name == port), 0)
        if not number:
            raise ProbeError(f"port {port!r} is not a number nor the name of a port of container "
                             f"{container.name!r}: name one in its ports or give the number")
    if not 0 < number < 65536:
        raise ProbeError(f"port {number} is out of range 1-65535")
    return number


def exec_probe(exec_sync: ExecSync, container_id: str, command: list[str],
               timeout: float) -> tuple[str, str]:
    """Success when the command exits 0 within ``timeout``."""
    try:
        exit_code, output = exec_sync(container_id, list(command), timeout)
    except TimeoutError:
        return FAILURE, f"command {command!r} timed out after {timeout:g}s"
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    if exit_code == 0:
        return SUCCESS, text
    return FAILURE, text or f"command {command!r} exited with {exit_code}"


def tcp_probe(connect: Connect, host: str, port: int, timeout: float) -> tuple[str, str]:
    """Success when a TCP connection opens within ``timeout``."""
    try:
        sock = connect(host, port, timeout)
    except OSError as e:
        return FAILURE, f"dial tcp {host}:{port}: {e}"
    sock.close()
    return SUCCESS, ""


class _Connection(http.client.HTTPConnection):
    """HTTP/1.1 over a socket the injected connector opens (inside a netns)."""

    def __init__(self, connect: Connect, host: str, port: int, timeout: float, tls: bool) -> None:
        super().__init__(host, port, timeout=timeout)
        self._connect, self._tls = connect, tls

    def connect(self) -> None:
        sock = self._connect(self.host, self.port, self.timeout)
        sock.settimeout(self.timeout)
        if self._tls:  # as Kubernetes: HTTPS probes do not verify the certificate
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


def http_probe(connect: Connect, host: str, port: int, path: str, timeout: float, *,
               scheme: str = "HTTP", headers: dict[str, str] | None = None) -> tuple[str, str]:
    """Success on a status in [200, 400) within ``timeout``. Redirects to the same
    host are followed; one to another host counts as success, as Kubernetes'."""
    hdrs = {"User-Agent": USER_AGENT, "Accept": "*/*", "Connection": "close", **(headers or {})}
    path = path or "/"
    for _ in range(MAX_REDIRECTS + 1):
        conn = _Connection(connect, host, port, timeout, scheme.upper() == "HTTPS")
        try:
            conn.request("GET", path, headers=hdrs)
            resp = conn.getresponse()
            body = resp.read(MAX_BODY).decode(errors="replace")
        except (OSError, http.client.HTTPException) as e:
            return FAILURE, f"Get {scheme.lower()}://{host}:{port}{path}: {e}"
        finally:
            conn.close()
        if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            target = urlsplit(resp.getheader("Location"))
            if target.hostname and (target.hostname, target.port or port) != (host, port):
                return SUCCESS, f"probe terminated redirects to another host: {resp.getheader('Location')}"
            path = (target.path or "/") + (f"?{target.query}" if target.query else "")
            continue
        if 200 <= resp.status < 400:
            return SUCCESS, body
        return FAILURE, f"HTTP probe failed with statuscode: {resp.status}"
    return FAILURE, f"stopped after {MAX_REDIRECTS} redirects"


class Prober:
    """Runs a container's probe of one kind with the injected executors."""

    def __init__(self, exec_sync: ExecSync | None = None, connect: Connect = default_connect) -> None:
        self.exec_sync = exec_sync
        self.connect = connect

    def probe(self, kind: str, probe: core_pb2.Probe, container: core_pb2.Container,
              container_id: str, pod_ip: str) -> tuple[str, str]:
        """(result, output); raises ProbeError when it could not run, after retries."""
        last: ProbeError | None = None
        for _ in range(MAX_RETRIES):
            try:
                return self._run(probe, container, container_id, pod_ip)
            except ProbeError as e:
                last = e
        raise ProbeError(f"{kind} probe of container {container.name!r} errored: {last}")

    def _run(self, probe: core_pb2.Probe, container: core_pb2.Container, container_id: str,
             pod_ip: str) -> tuple[str, str]:
        timeout = float(probe.timeout_seconds or 1)
        if probe.HasField("exec"):
            if self.exec_sync is None:
                raise ProbeError("no ExecSync was given to run exec probes")
            try:
                return exec_probe(self.exec_sync, container_id, list(probe.exec.command), timeout)
            except Exception as e:  # the runtime's error (gRPC status, container gone)
                raise ProbeError(str(e)) from e
        if probe.HasField("http_get"):
            g = probe.http_get
            host = g.host or pod_ip
            if not host:
                raise ProbeError("the pod has no IP yet")
            return http_probe(self.connect, host, resolve_port(g.port, container), g.path or "/",
                              timeout, scheme=g.scheme or "HTTP",
                              headers={h.name: h.value for h in g.http_headers})
        if probe.HasField("tcp_socket"):
            t = probe.tcp_socket
            host = t.host or pod_ip
            if not host:
                raise ProbeError("the pod has no IP yet")
            return tcp_probe(self.connect, host, resolve_port(t.port, container), timeout)
        raise ProbeError("the probe has no handler: give exec, httpGet or tcpSocket")


# ---- the worker ----

def _container_status(status: core_pb2.PodStatus, name: str) -> core_pb2.ContainerStatus | None:
    for cs in status.container_statuses:
        if cs.name == name:
            return cs
    return None


class ProbeWorker:
    """One probe of one container of one pod (Kubernetes' prober worker).

    ``status_of(pod_uid) -> PodStatus | None`` gives the status the kubelet
    last generated (container ids, running/started); ``clock`` is wall time,
    compared with the container's startedAt."""

    def __init__(self, kind: str, pod: core_pb2.Pod, container: core_pb2.Container,
                 results: ProbeResults, prober: Prober,
                 status_of: Callable[[str], core_pb2.PodStatus | None],
                 clock: Callable[[], float] = time.time,
                 on_failure: Callable[[core_pb2.Pod, str, str, str], None] | None = None) -> None:
        """``on_failure(pod, kind, container name, output)``: each failed run (an Unhealthy event)."""
        self.kind = kind
        self.on_failure = on_failure
        self.pod = pod
        self.container = container
        self.spec: core_pb2.Probe = getattr(container, _PROBE_FIELD[kind])
        self.results, self.prober, self.status_of, self.clock = results, prober, status_of, clock
        self.container_id = ""
        self.on_hold = False
        self.last_result: str | None = None
        self.result_run = 0
        self.last_output = ""

    @property
    def period(self) -> float:
        return float(self.spec.period_seconds or 10)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.pod.metadata.uid, self.container.name, self.kind)

    def do_probe(self) -> bool:
        """One tick; False when the worker should stop (the pod is finished, or
        the container will not run again)."""
        status = self.status_of(self.pod.metadata.uid)
        if status is None:
            return True  # not synced yet, or gone: wait for more information
        if status.phase in ("Succeeded", "Failed"):
            return False
        cs = _container_status(status, self.container.name)
        if cs is None or not cs.container_id:
            return True
        container_id = cs.container_id.split("://", 1)[-1]  # results are keyed by the runtime's id
        if container_id != self.container_id:
            if self.container_id:
                self.results.remove(self.kind, self.container_id)
            self.container_id = container_id
            self.results.set(self.kind, self.container_id, INITIAL_RESULT[self.kind], self.pod.metadata.uid)
            self.on_hold = False
            self.last_result, self.result_run = None, 0
        if self.on_hold:
            return True
        if not cs.state.HasField("running"):
            self.results.set(self.kind, self.container_id, FAILURE, self.pod.metadata.uid)
            return not cs.state.HasField("terminated") or self.pod.spec.restart_policy != "Never"
        if self.pod.metadata.deletion_timestamp and self.kind in (LIVENESS, STARTUP):
            self.results.set(self.kind, self.container_id, SUCCESS, self.pod.metadata.uid)
            return False  # a terminating pod is not restarted for failing these
        started_at = parse_time(cs.state.running.started_at)
        if started_at is not None and self.clock() - started_at < self.spec.initial_delay_seconds:
            return True
        started = cs.HasField("started") and cs.started
        if started and self.kind == STARTUP:
            return True  # started: the startup probe rests (and resumes for a new container)
        if not started and self.kind != STARTUP:
            return True  # the others wait for the startup probe
        pod_ip = status.pod_ip
        try:
            result, self.last_output = self.prober.probe(self.kind, self.spec, self.container,
                                                         self.container_id, pod_ip)
        except ProbeError as e:
            log.info("pod %s: %s", self.pod.metadata.name, e)
            return True  # thrown away: the belief stays
        if result == FAILURE:
            log.info("pod %s: %s probe of %s failed: %s", self.pod.metadata.name, self.kind,
                     self.container.name, self.last_output[:200])
            if self.on_failure is not None:
                self.on_failure(self.pod, self.kind, self.container.name, self.last_output)
        if result == self.last_result:
            self.result_run += 1
        else:
            self.last_result, self.result_run = result, 1
        failure_threshold = self.spec.failure_threshold or 3
        success_threshold = self.spec.success_threshold or 1
        if (result == FAILURE and self.result_run < failure_threshold) or \
                (result == SUCCESS and self.result_run < success_threshold):
            return True
        self.results.set(self.kind, self.container_id, result, self.pod.metadata.uid)
        if result == FAILURE and self.kind in (LIVENESS, STARTUP):
            # the container will be killed: stop probing it until its replacement shows up
            self.on_hold = True
            self.result_run = 0
        return True

    def forget(self) -> None:
        if self.container_id:
            self.results.remove(self.kind, self.container_id)


# ---- the manager ----

class ProbeManager:
    """Runs every probe worker of the node's pods on one timer thread and a small
    pool (never a thread per probe). ``add_pod`` starts a worker per container
    probe; a worker ticks every periodSeconds and stops on its own when
    ``do_probe`` says so, or with ``remove_pod``."""

    def __init__(self, results: ProbeResults, prober: Prober,
                 status_of: Callable[[str], core_pb2.PodStatus | None], *, workers: int = 4,
                 clock: Callable[[], float] = time.time, jitter_first: bool = False,
                 on_failure: Callable[[core_pb2.Pod, str, str, str], None] | None = None) -> None:
        self.results, self.prober, self.status_of, self.clock = results, prober, status_of, clock
        self.on_failure = on_failure
        self.jitter_first = jitter_first  # a restarted kubelet spreads its first probes over a period
        self._lock = threading.Condition()
        self._workers: dict[tuple[str, str, str], ProbeWorker] = {}
        self._heap: list[tuple[float, int, ProbeWorker]] = []
        self._seq = itertools.count()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
        self._running: set[tuple[str, str, str]] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="probe-timer", daemon=True)

    def start(self) -> ProbeManager:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def add_pod(self, pod: core_pb2.Pod) -> None:
        """Starts the workers of the pod's container probes not running yet."""
        with self._lock:
            for c in pod.spec.containers:
                for kind, fieldname in _PROBE_FIELD.items():
                    if not c.HasField(fieldname):
                        continue
                    key = (pod.metadata.uid, c.name, kind)
                    if key in self._workers:
                        self._workers[key].pod = pod
                        continue
                    w = ProbeWorker(kind, pod, c, self.results, self.prober, self.status_of, self.clock,
                                    self.on_failure)
                    self._workers[key] = w
                    delay = random.uniform(0, w.period) if self.jitter_first else 0.0
                    self._push(time.monotonic() + delay, w)

    def update_pod(self, pod: core_pb2.Pod) -> None:
        """A newer copy of the pod (a deletionTimestamp matters to the workers)."""
        with self._lock:
            for key, w in self._workers.items():
                if key[0] == pod.metadata.uid:
                    w.pod = pod

    def remove_pod(self, uid: str) -> None:
        with self._lock:
            for key in [k for k in self._workers if k[0] == uid]:
                self._workers.pop(key).forget()

    def has_worker(self, uid: str, container: str, kind: str) -> bool:
        with self._lock:
            return (uid, container, kind) in self._workers

    def trigger(self, uid: str, container: str, kind: str) -> None:
        """Runs that probe now (Kubernetes triggers readiness when a status is made)."""
        with self._lock:
            w = self._workers.get((uid, container, kind))
            if w is not None and w.key not in self._running:
                self._push(time.monotonic(), w)

    def _push(self, due: float, w: ProbeWorker) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), w))
        self._lock.notify_all()

    def _loop(self) -> None:
        with self._lock:
            while not self._stopped:
                now = time.monotonic()
                if not self._heap:
                    self._lock.wait()
                    continue
                due, _, w = self._heap[0]
                if due > now:
                    self._lock.wait(due - now)
                    continue
                heapq.heappop(self._heap)
                if self._workers.get(w.key) is not w or w.key in self._running:
                    continue  # removed, replaced, or already running (a trigger raced a tick)
                self._running.add(w.key)
                self._pool.submit(self._tick, w)

    def _tick(self, w: ProbeWorker) -> None:
        try:
            keep = w.do_probe()
        except Exception:
            log.exception("probe worker %s crashed; it goes on at its next period", w.key)
            keep = True
        with self._lock:
            self._running.discard(w.key)
            if self._workers.get(w.key) is not w:
                return
            if keep:
                # drop queued early triggers for this worker: the next tick is a period away
                self._heap = [e for e in self._heap if e[2] is not w]
                heapq.heapify(self._heap)
                self._push(time.monotonic() + w.period, w)
            else:
                self._workers.pop(w.key)
