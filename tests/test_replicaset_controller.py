"""The ReplicaSet controller against a real etcdlite and apiserver, run
in-process. No kubelets: ``PodReadier`` plays one, making pods Running and
Ready through the status subresource. ``PodLedger`` follows pods from the
apiserver's watch stream, so what it counts is what really happened.

Also the home of the helpers the Deployment controller's tests share."""

from __future__ import annotations

import queue
import threading
import time

import pytest
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import apps_pb2, core_pb2
from controllers.informer import SharedInformerFactory, deep_copy
from controllers.podutil import controller_ref, is_pod_ready, now_rfc3339
from controllers.replicaset import ReplicaSetController

pytestmark = pytest.mark.process

TIMEOUT = 30.0


# ======================================================================
# shared helpers
# ======================================================================

class PodReadier:
    """A stand-in kubelet for one namespace: every pod that ``wanted(pod)``
    becomes Running and Ready ``delay`` seconds after it is first seen, at
    most one pod every ``interval`` seconds (oldest first)."""

    def __init__(self, client: Client, namespace: str, *, delay: float = 0.0, interval: float = 0.0,
                 wanted=lambda pod: True) -> None:
        self.client = client
        self.namespace = namespace
        self.delay = delay
        self.interval = interval
        self.wanted = wanted
        self.paused = False
        self._first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"readier-{namespace}")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if self.paused:
                continue
            try:
                pods = self.client.list("pods", self.namespace).items
            except ApiError:
                continue
            now = time.monotonic()
            pending = []
            for p in pods:
                self._first_seen.setdefault(p.metadata.uid, now)
                if not p.metadata.deletion_timestamp and not is_pod_ready(p) and self.wanted(p):
                    pending.append(p)
            pending.sort(key=lambda p: self._first_seen[p.metadata.uid])
            for p in pending:
                if self._first_seen[p.metadata.uid] + self.delay > time.monotonic() or self._stop.is_set():
                    break
                make_ready(self.client, p)
                if self.interval and self._stop.wait(self.interval):
                    return


def make_ready(client: Client, pod, *, ready_at: float | None = None) -> None:
    """Running and Ready (Ready's lastTransitionTime ``ready_at``, default now)."""
    p = deep_copy(pod)
    t = now_rfc3339(ready_at)
    p.status.phase = "Running"
    del p.status.conditions[:]
    for kind in ("Initialized", "ContainersReady", "Ready", "PodScheduled"):
        p.status.conditions.add(type=kind, status="True", last_transition_time=t)
    try:
        client.update_status(p)
    except ApiError as e:
        if e.reason not in ("Conflict", "NotFound"):
            raise


class PodLedger:
    """Follows the pods of a namespace from one watch stream (after a list)
    and keeps, since ``arm()``: the most pods that existed at once (not
    terminating), the fewest ready ones, every pod ever added, and whether
    ``overlap(pods)`` was ever true of the live pods."""

    def __init__(self, client: Client, namespace: str, selector: str = "") -> None:
        self.client = client
        self.namespace = namespace
        self.selector = selector
        self.pods: dict[str, core_pb2.Pod] = {}
        self.added: list[str] = []
        self.max_live = 0
        self.min_ready: int | None = None
        self.overlap = None
        self.overlapped = False
        self.armed = False
        self.lock = threading.Lock()
        first = client.list("pods", namespace, label_selector=selector)
        for p in first.items:
            self.pods[p.metadata.name] = p
        self._watch = client.watch("pods", namespace, label_selector=selector,
                                   resource_version=first.resource_version)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"ledger-{namespace}")
        self._thread.start()

    def close(self) -> None:
        self._watch.stop()
        self._thread.join(10)

    def arm(self) -> None:
        with self.lock:
            self.armed = True
            self.added = []
            self._observe()

    def _run(self) -> None:
        try:
            for ev in self._watch:
                if ev.type == "BOOKMARK":
                    continue
                with self.lock:
                    name = ev.object.metadata.name
                    if ev.type == "DELETED":
                        self.pods.pop(name, None)
                    else:
                        if ev.type == "ADDED":
                            self.added.append(name)
                        self.pods[name] = ev.object
                    self._observe()
        except ApiError:
            pass

    def live(self) -> list:
        return [p for p in self.pods.values() if not p.metadata.deletion_timestamp]

    def _observe(self) -> None:
        if not self.armed:
            return
        live = self.live()
        ready = sum(is_pod_ready(p) for p in live)
        self.max_live = max(self.max_live, len(live))
        self.min_ready = ready if self.min_ready is None else min(self.min_ready, ready)
        if self.overlap is not None and self.overlap(live):
            self.overlapped = True

    def snapshot(self) -> list:
        with self.lock:
            return self.live()


class LaggingClient:
    """A client whose watch streams hand each event on ``lag`` seconds late:
    an informer built on it lags the apiserver the way a slow one would."""

    def __init__(self, client: Client, lag: float) -> None:
        self._client = client
        self.lag = lag

    def __getattr__(self, name):
        return getattr(self._client, name)

    def watch(self, *args, **kwargs):
        return _LaggingWatch(self._client.watch(*args, **kwargs), self.lag)


class _LaggingWatch:
    _END = object()

    def __init__(self, inner, lag: float) -> None:
        self._inner = inner
        self._lag = lag
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for ev in self._inner:
                self._q.put((time.monotonic() + self._lag, ev))
            self._q.put((0.0, self._END))
        except Exception as e:  # handed to the reader
            self._q.put((0.0, e))

    def __iter__(self):
        while True:
            due, item = self._q.get()
            if item is self._END:
                return
            if isinstance(item, Exception):
                raise item
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            yield item

    def stop(self) -> None:
        self._inner.stop()


def new_namespace(client: Client, name: str) -> str:
    client.create(core_pb2.Namespace(metadata={"name": name}))
    return name


def replica_set(name: str, replicas: int, namespace: str, *, app: str | None = None, image: str = "nginx:1",
                min_ready: int = 0) -> apps_pb2.ReplicaSet:
    r = apps_pb2.ReplicaSet()
    r.metadata.name = name
    r.metadata.namespace = namespace
    r.spec.replicas = replicas
    r.spec.min_ready_seconds = min_ready
    r.spec.selector.match_labels["app"] = app or name
    r.spec.template.metadata.labels["app"] = app or name
    r.spec.template.spec.containers.add(name="main", image=image)
    return r


def owned_by(obj, owner) -> bool:
    ref = controller_ref(obj)
    return ref is not None and ref.uid == owner.metadata.uid


# ======================================================================
# fixtures
# ======================================================================

@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "rsctl") as api:
        yield api


@pytest.fixture(scope="module")
def client(plane):
    with Client(plane.endpoint, timeout=15) as c:
        yield c


@pytest.fixture(scope="module")
def controller(client):
    factory = SharedInformerFactory(client)
    rsc = ReplicaSetController(client, factory, workers=2)
    factory.start()
    rsc.start()
    yield rsc
    rsc.stop()
    factory.stop()


def pods_of(client: Client, rs) -> list:
    return [p for p in client.list("pods", rs.metadata.namespace).items
            if owned_by(p, rs) and not p.metadata.deletion_timestamp]


def wait_for(fetch, done, what: str):
    """Calls ``fetch()`` until ``done(value)``; returns that value."""
    seen = []

    def check() -> bool:
        seen.append(fetch())
        return bool(done(seen[-1]))
    wait_until(check, TIMEOUT, what=what)
    return seen[-1]


def wait_pods(client: Client, rs, n: int, what: str = "") -> list:
    """The live pods of ``rs`` once there are ``n``."""
    return wait_for(lambda: pods_of(client, rs), lambda ps: len(ps) == n,
                    what or f"{n} pods of {rs.metadata.name}")


# ======================================================================
# tests
# ======================================================================

def test_creates_exactly_n_pods_even_when_the_cache_lags(client):
    """A pod informer 0.4 s behind the apiserver: without expectations every
    sync in that window would create the pods again."""
    ns = new_namespace(client, "lagging")
    factory = SharedInformerFactory(LaggingClient(client, 0.4))
    rsc = ReplicaSetController(client, factory, workers=2)
    factory.start()
    rsc.start()
    ledger = PodLedger(client, ns)
    ledger.arm()
    try:
        rs = client.create(replica_set("web", 6, ns))
        wait_pods(client, rs, 6)
        # the controller's own view catches up and reports the six
        wait_until(lambda: client.get("replicasets", "web", ns).status.replicas == 6, TIMEOUT,
                   what="status.replicas 6")
        # poke it: spec changes and pod updates bring more syncs; still six
        client.patch("replicasets", "web", {"metadata": {"labels": {"touched": "1"}}}, ns)
        for p in pods_of(client, rs)[:3]:
            make_ready(client, p)
        wait_until(lambda: client.get("replicasets", "web", ns).status.ready_replicas == 3, TIMEOUT,
                   what="3 ready")
        assert len(ledger.added) == 6 and ledger.max_live == 6
        assert all(owned_by(p, rs) for p in ledger.snapshot())
        p = ledger.snapshot()[0]
        assert p.metadata.generate_name == "web-" and p.metadata.name.startswith("web-")
        ref = controller_ref(p)
        assert (ref.kind, ref.api_version, ref.name, ref.block_owner_deletion) == ("ReplicaSet", "apps/v1",
                                                                                   "web", True)
    finally:
        ledger.close()
        rsc.stop()
        factory.stop()


def test_replaces_a_deleted_pod_and_scales(client, controller):
    ns = new_namespace(client, "replace")
    rs = client.create(replica_set("web", 3, ns))
    pods = wait_pods(client, rs, 3)
    victim = pods[0].metadata.name
    client.delete("pods", victim, ns)
    pods = wait_for(lambda: pods_of(client, rs),
                    lambda ps: len(ps) == 3 and victim not in {p.metadata.name for p in ps}, "a replacement")
    assert victim not in {p.metadata.name for p in pods}
    client.patch("replicasets", "web", {"spec": {"replicas": 5}}, ns)
    wait_pods(client, rs, 5)
    client.patch("replicasets", "web", {"spec": {"replicas": 0}}, ns)
    wait_pods(client, rs, 0)
    wait_until(lambda: client.get("replicasets", "web", ns).status.replicas == 0, TIMEOUT, what="status 0")


def test_scale_down_removes_pods_in_kubernetes_order(client, controller):
    ns = new_namespace(client, "order")
    rs = client.create(replica_set("web", 6, ns))
    pods = sorted(wait_pods(client, rs, 6), key=lambda p: p.metadata.name)
    unassigned_ready, pending, not_ready, ready_recent, ready_old, crashy = pods
    now = time.time()
    # every pod but one is bound to a node (binding is allowed once)
    for p in (pending, not_ready, ready_recent, ready_old, crashy):
        client.patch("pods", p.metadata.name, {"spec": {"nodeName": "node-1"}}, ns)

    def status(p, phase, ready_at=None, restarts=0):
        cur = client.get("pods", p.metadata.name, ns)
        cur.status.phase = phase
        if ready_at is not None:
            cur.status.conditions.add(type="Ready", status="True", last_transition_time=now_rfc3339(ready_at))
        if restarts:
            cur.status.container_statuses.add(name="main", restart_count=restarts)
        client.update_status(cur)

    status(unassigned_ready, "Running", ready_at=now - 100)
    status(pending, "Pending")
    status(not_ready, "Running")
    status(ready_recent, "Running", ready_at=now - 10)
    status(ready_old, "Running", ready_at=now - 500)
    status(crashy, "Running", ready_at=now - 500, restarts=7)
    wait_until(lambda: client.get("replicasets", "web", ns).status.ready_replicas == 4, TIMEOUT,
               what="4 ready in status")

    expected = [unassigned_ready, pending, not_ready, ready_recent, crashy]
    for n, gone in zip(range(5, 0, -1), expected):
        client.patch("replicasets", "web", {"spec": {"replicas": n}}, ns)
        # bound pods are deleted gracefully (no kubelet here): they linger with a deletionTimestamp
        left = wait_pods(client, rs, n, what=f"{n} pods")
        assert gone.metadata.name not in {p.metadata.name for p in left}, f"at {n}: {gone.metadata.name} stayed"
    assert [p.metadata.name for p in pods_of(client, rs)] == [ready_old.metadata.name]


def test_adopts_orphans_and_releases_relabelled_pods(client, controller):
    ns = new_namespace(client, "adopt")
    orphan = core_pb2.Pod()
    orphan.metadata.name = "orphan"
    orphan.metadata.namespace = ns
    orphan.metadata.labels["app"] = "web"
    orphan.spec.containers.add(name="main", image="nginx:1")
    client.create(orphan)
    bystander = deep_copy(orphan)
    bystander.metadata.name = "bystander"
    bystander.metadata.labels["app"] = "db"
    client.create(bystander)
    rs = client.create(replica_set("web", 3, ns))
    pods = wait_pods(client, rs, 3)
    assert "orphan" in {p.metadata.name for p in pods}
    adopted = client.get("pods", "orphan", ns)
    ref = controller_ref(adopted)
    assert ref.uid == rs.metadata.uid and ref.controller and ref.block_owner_deletion
    assert not client.get("pods", "bystander", ns).metadata.owner_references

    # relabel one: released (ownerReference gone) and replaced
    client.patch("pods", "orphan", {"metadata": {"labels": {"app": "debug"}}}, ns)
    wait_until(lambda: not client.get("pods", "orphan", ns).metadata.owner_references, TIMEOUT,
               what="the relabelled pod released")
    pods = wait_pods(client, rs, 3, what="a replacement for the released pod")
    assert "orphan" not in {p.metadata.name for p in pods}
    assert all(p.metadata.labels["app"] == "web" for p in pods)


def test_status_counts_ready_and_available_after_min_ready_seconds(client, controller):
    ns = new_namespace(client, "status")
    rs = client.create(replica_set("web", 3, ns, min_ready=2))
    pods = wait_pods(client, rs, 3)
    for p in pods:
        make_ready(client, p)
    t_ready = time.monotonic()
    st = wait_for(lambda: client.get("replicasets", "web", ns).status, lambda s: s.ready_replicas == 3,
                  "3 ready")
    assert st.replicas == 3 and st.fully_labeled_replicas == 3
    wait_for(lambda: client.get("replicasets", "web", ns).status, lambda s: s.available_replicas == 3,
             "3 available")
    # minReadySeconds 2, measured from a lastTransitionTime kept to the second
    assert time.monotonic() - t_ready >= 0.9
    current = client.get("replicasets", "web", ns)
    assert current.status.observed_generation == current.metadata.generation
    # a pod that is not labelled as the template says is not "fully labeled"
    client.patch("replicasets", "web", {"spec": {"template": {"metadata": {"labels": {"tier": "x"}}}}}, ns)
    wait_for(lambda: client.get("replicasets", "web", ns),
             lambda r: r.status.observed_generation == r.metadata.generation
             and r.status.fully_labeled_replicas == 0, "fullyLabeledReplicas 0 at the new generation")
    # and status is written only on change: nothing more happens while nothing changes
    rv = client.get("replicasets", "web", ns).metadata.resource_version
    time.sleep(0.5)  # a quiet period, not a wait for a result
    assert client.get("replicasets", "web", ns).metadata.resource_version == rv
