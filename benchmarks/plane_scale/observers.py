"""The benchmark's two observers of the plane: a probe client in its own
process (so the watch here never inflates its latencies) timing
Get/List/Create/Update/Delete calls phase by phase, over the gRPC API and over
Kubernetes' REST API in turns (the same port), and a pod watch noting when each
pod was created, bound, Running and Ready, and deleted."""

from __future__ import annotations

import functools
import http.client
import json
import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from benchmarks.plane_scale import APP, NAMESPACE, PHASES, PROBE_NAMESPACE, log
from controllers.podutil import parse_time

PROBE_OPS = ("get", "list", "create", "update", "delete")
PROBE_PAUSE = 0.1  # seconds between two probe calls: ~8 calls/s, a light load


class RestCallError(Exception):
    pass


class Rest:
    """Kubernetes' REST API as kubectl and client-go call it: HTTP/1.1 keep-alive, JSON
    bodies; a new connection after one breaks."""

    def __init__(self, server: str) -> None:
        self.host, port = server.rsplit(":", 1)
        self.port = int(port)
        self.conn = None

    def call(self, method: str, path: str, body=None):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.conn.close()
            self.conn = None
            raise RestCallError(f"{type(e).__name__}: {e}") from None
        if resp.status >= 300:
            raise RestCallError(f"{resp.status} {json.loads(payload).get('message', '')}")
        return json.loads(payload)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def probe_main(server: str, phase, calls, stop, conn) -> None:
    """Calls the apiserver in a loop, one call at a time (counting them in
    ``calls``), a round of gRPC calls then a round of REST calls, and sends back
    {"samples": {phase: {op: [seconds]}} (gRPC), "rest_samples": the same over
    REST} and the errors when ``stop`` is set."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    samples = {p: {op: [] for op in PROBE_OPS} for p in PHASES}
    rest_samples = {p: {op: [] for op in PROBE_OPS} for p in PHASES}
    errors: list[str] = []
    client = Client(server, timeout=30)
    rest = Rest(server)
    i = 0

    def timed(into: dict, op: str, call) -> None:
        current = PHASES[phase.value]
        t = time.perf_counter()
        try:
            call()
        except (ApiError, RestCallError) as e:
            errors.append(f"{'REST ' if into is rest_samples else ''}{op}: {getattr(e, 'reason', '')} {e}")
        else:
            into[current][op].append(time.perf_counter() - t)
            calls.value += 1
        time.sleep(PROBE_PAUSE)

    while not stop.is_set():
        i += 1
        name = f"probe-{i}"
        cm = core_pb2.ConfigMap()
        cm.metadata.name, cm.metadata.namespace = name, PROBE_NAMESPACE
        cm.data["n"] = str(i)
        changed = core_pb2.ConfigMap()
        changed.CopyFrom(cm)
        changed.data["n"] = f"{i}-updated"
        timed(samples, "create", functools.partial(client.create, cm))
        timed(samples, "get", functools.partial(client.get, "configmaps", name, PROBE_NAMESPACE))
        timed(samples, "update", functools.partial(client.update, changed))
        timed(samples, "list", functools.partial(client.list, "pods", NAMESPACE, limit=100))
        timed(samples, "delete", functools.partial(client.delete, "configmaps", name, PROBE_NAMESPACE))
        name = f"probe-rest-{i}"
        base = f"/api/v1/namespaces/{PROBE_NAMESPACE}/configmaps"
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": str(i)}}
        timed(rest_samples, "create", functools.partial(rest.call, "POST", base, body))
        timed(rest_samples, "get", functools.partial(rest.call, "GET", f"{base}/{name}"))
        timed(rest_samples, "update", functools.partial(rest.call, "PUT", f"{base}/{name}",
                                                        {**body, "data": {"n": f"{i}-updated"}}))
        timed(rest_samples, "list", functools.partial(rest.call, "GET",
                                                      f"/api/v1/namespaces/{NAMESPACE}/pods?limit=100"))
        timed(rest_samples, "delete", functools.partial(rest.call, "DELETE", f"{base}/{name}"))
    client.close()
    rest.close()
    conn.send({"samples": samples, "rest_samples": rest_samples, "errors": errors[:20], "error_count": len(errors)})
    conn.close()


class Probe:
    def __init__(self, server: str) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork after gRPC started here
        self.phase = ctx.Value("i", 0)
        self.calls = ctx.Value("i", 0)
        self.stop_event = ctx.Event()
        self.conn, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=probe_main, args=(server, self.phase, self.calls, self.stop_event, child),
                                daemon=True, name="plane-probe")
        self.proc.start()

    def wait_started(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.calls.value == 0 and self.proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def set_phase(self, name: str) -> None:
        self.phase.value = PHASES.index(name)

    def finish(self, timeout: float = 60) -> dict:
        self.stop_event.set()
        result = self.conn.recv() if self.conn.poll(timeout) else {"samples": {}, "errors": ["no answer"]}
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        return result


# ---- following the pods ------------------------------------------------------

@dataclass
class PodTimes:
    seen: float
    bound: float | None = None
    ready: float | None = None  # Running and Ready
    running: float | None = None  # phase Running
    created_wall: float | None = None  # its creationTimestamp (whole seconds), epoch seconds
    terminating: float | None = None
    deleted: float | None = None


def running_and_ready(pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


class PodTracker:
    """When each pod labelled ``app=<app>`` (the Deployment's by default) was first
    seen, bound, Running+Ready, marked for deletion and deleted, from a watch
    (relisting when it expires)."""

    def __init__(self, client: Client, app: str = APP) -> None:
        self.client = client
        self.selector = f"app={app}"
        self.lock = threading.Lock()
        self.pods: dict[str, PodTimes] = {}
        self.relists = 0
        self.watch = None
        self.stopping = threading.Event()
        rv = self._list()
        self.thread = threading.Thread(target=self._run, args=(rv,), daemon=True, name="pod-tracker")
        self.thread.start()

    def _list(self) -> str:
        listed = self.client.list_all("pods", NAMESPACE, label_selector=self.selector)
        now = time.monotonic()
        with self.lock:
            present = set()
            for pod in listed.items:
                present.add(pod.metadata.uid)
                self._see(pod, now)
            for uid, t in self.pods.items():
                if uid not in present and t.deleted is None:
                    t.deleted = now
        return listed.resource_version

    def _see(self, pod, now: float, deleted: bool = False) -> None:
        t = self.pods.get(pod.metadata.uid)
        if t is None:
            t = self.pods[pod.metadata.uid] = PodTimes(seen=now)
            t.created_wall = parse_time(pod.metadata.creation_timestamp) if pod.metadata.creation_timestamp else None
        if t.bound is None and pod.spec.node_name:
            t.bound = now
        if t.running is None and pod.status.phase == "Running":
            t.running = now
        if t.ready is None and running_and_ready(pod):
            t.ready = now
        if t.terminating is None and pod.metadata.deletion_timestamp:
            t.terminating = now
        if deleted and t.deleted is None:
            t.deleted = now

    def _run(self, rv: str) -> None:
        while not self.stopping.is_set():
            try:
                self.watch = self.client.watch("pods", NAMESPACE, label_selector=self.selector,
                                               resource_version=rv, bookmarks=True)
                for event in self.watch:
                    now = time.monotonic()
                    rv = event.object.metadata.resource_version or rv
                    if event.type == "BOOKMARK":
                        continue
                    with self.lock:
                        self._see(event.object, now, deleted=event.type == "DELETED")
            except ApiError as e:
                if self.stopping.is_set():
                    return
                if e.reason not in ("Expired", "Gone"):
                    log(f"pod watch broke ({e.reason}: {e}); watching again")
                    time.sleep(1)
                    continue
                self.relists += 1  # history gone: what changed meanwhile is seen now
                while not self.stopping.is_set():
                    try:
                        rv = self._list()
                        break
                    except ApiError:
                        time.sleep(1)

    def counts(self) -> dict[str, int]:
        with self.lock:
            live = [t for t in self.pods.values() if t.deleted is None]
            return {"live": len(live), "bound": sum(t.bound is not None for t in live),
                    "ready": sum(t.ready is not None for t in live),
                    "terminating": sum(t.terminating is not None for t in live)}

    def times(self) -> list[PodTimes]:
        with self.lock:
            return list(self.pods.values())

    def stop(self) -> None:
        self.stopping.set()
        if self.watch is not None:
            self.watch.stop()
        self.thread.join(5)
