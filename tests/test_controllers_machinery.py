"""The controller machinery: the work queue and the store alone; informers,
leader election and events against a real etcdlite + apiserver.

Informers: initial sync, then adds/updates/deletes in order; across an
apiserver SIGKILL while another apiserver takes writes (the changes arrive
after the reconnect, none missed); a relist when the resourceVersion expired
(cut off through a fault proxy while more writes than the watch cache holds go
by). Leader election: exactly one of two candidates leads; the standby takes
over only after the lease duration when the leader dies (in process or as a
SIGKILLed process), at once when it releases; a leader cut off from the
apiserver gives up after renew_deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2, meta_pb2
from controllers.events import EventRecorder
from controllers.informer import (Informer, SharedInformerFactory, Store, deep_copy,
                                  meta_namespace_key, split_meta_namespace_key)
from controllers.leaderelection import LeaderElector
from controllers.workqueue import (BucketRateLimiter, ItemExponentialFailureRateLimiter,
                                   RateLimitingQueue)
from harness.etcd_client import wait_until
from harness.faultproxy import FaultProxy
from harness.plane import start_apiserver
from harness.procs import PYTHON, Registry

ROOT = Path(__file__).resolve().parent.parent
CACHE_SIZE = 20  # events each watch cache keeps: small, so resourceVersions expire


# ======================================================================
# work queue
# ======================================================================

def test_queue_dedupes_keys_waiting_and_keeps_order():
    q = RateLimitingQueue()
    for key in ["a", "b", "a", "c", "b"]:
        q.add(key)
    assert len(q) == 3
    assert [q.get(timeout=1), q.get(timeout=1), q.get(timeout=1)] == ["a", "b", "c"]
    assert q.get(timeout=0.05) is None


def test_queue_key_added_while_processing_waits_for_done():
    q = RateLimitingQueue()
    q.add("a")
    assert q.get(timeout=1) == "a"
    q.add("a")  # changed again while a worker holds it
    q.add("a")
    assert q.get(timeout=0.1) is None, "a key being processed was handed to a second worker"
    q.done("a")
    assert q.get(timeout=1) == "a", "the re-added key was lost"
    q.done("a")
    assert q.get(timeout=0.05) is None, "the key was queued twice"


def test_queue_never_processes_one_key_concurrently():
    q = RateLimitingQueue()
    keys = [f"k{i}" for i in range(5)]
    active = {k: 0 for k in keys}
    worst = {k: 0 for k in keys}
    last_added = {k: 0 for k in keys}  # the change each add announces
    handled = {k: 0 for k in keys}  # the newest change a worker has seen
    lock = threading.Lock()

    def worker():
        while (key := q.get()) is not None:
            with lock:
                active[key] += 1
                worst[key] = max(worst[key], active[key])
                seen = last_added[key]
            time.sleep(0.001)
            with lock:
                active[key] -= 1
                handled[key] = max(handled[key], seen)
            q.done(key)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(6)]
    for t in workers:
        t.start()
    for n in range(1, 301):
        key = keys[n % len(keys)]
        with lock:
            last_added[key] = n
        q.add(key)

    def settled():
        with lock:
            return handled == last_added

    wait_until(settled, 10, what="every key's last change handled")
    q.shut_down()
    for t in workers:
        t.join(5)
    assert max(worst.values()) == 1, f"a key was processed by two workers at once: {worst}"


def test_add_after_delays_and_the_earliest_wins():
    q = RateLimitingQueue()
    start = time.monotonic()
    q.add_after("late", 0.3)
    q.add_after("late", 5.0)  # a later time does not postpone it
    q.add_after("now", 0)
    assert q.get(timeout=1) == "now"
    assert q.num_waiting() == 1
    assert q.get(timeout=5) == "late"
    assert time.monotonic() - start >= 0.3
    q.done("late")
    assert q.get(timeout=0.05) is None


def test_exponential_backoff_grows_per_key_and_forget_resets_it():
    limiter = ItemExponentialFailureRateLimiter(0.005, 1000)
    delays = [limiter.when("x") for _ in range(6)]
    assert delays == [0.005, 0.01, 0.02, 0.04, 0.08, 0.16]
    assert limiter.when("y") == 0.005, "backoff leaked across keys"
    for _ in range(30):
        limiter.when("x")
    assert limiter.when("x") == 1000, "backoff not capped at max_delay"
    limiter.forget("x")
    assert limiter.num_requeues("x") == 0
    assert limiter.when("x") == 0.005


def test_token_bucket_allows_a_burst_then_spreads_out():
    bucket = BucketRateLimiter(qps=10, burst=100)
    assert all(bucket.when(i) == 0 for i in range(100))
    first, second = bucket.when("a"), bucket.when("b")
    assert 0.05 < first <= 0.1 and second > first


def test_rate_limited_queue_counts_requeues_and_delays_them():
    q = RateLimitingQueue(ItemExponentialFailureRateLimiter(0.2, 10))
    q.add("k")
    assert q.get(timeout=1) == "k"
    start = time.monotonic()
    q.add_rate_limited("k")  # first failure: 0.2 s
    q.done("k")
    assert q.num_requeues("k") == 1
    assert q.get(timeout=0.05) is None, "a rate-limited key came back at once"
    assert q.get(timeout=5) == "k"
    assert time.monotonic() - start >= 0.2
    q.add_rate_limited("k")
    assert q.num_requeues("k") == 2
    q.forget("k")
    assert q.num_requeues("k") == 0


def test_queue_shut_down_drains_then_returns_none():
    idle = RateLimitingQueue()
    got = []
    waiter = threading.Thread(target=lambda: got.append(idle.get()), daemon=True)
    waiter.start()
    q = RateLimitingQueue()
    q.add("a")
    q.add_after("later", 10)
    q.shut_down()
    q.add("b")  # ignored after shut_down
    assert q.shutting_down()
    assert q.get(timeout=1) == "a", "a queued key was dropped by shut_down"
    assert q.get(timeout=1) is None
    idle.shut_down()
    waiter.join(5)
    assert got == [None], "a worker blocked in get() was not woken by shut_down"


# ======================================================================
# store and indexes
# ======================================================================

def pod(name, namespace="default", node="", owner_uid="", labels=None):
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = name, namespace
    p.metadata.labels.update(labels or {})
    if owner_uid:
        p.metadata.owner_references.add(api_version="apps/v1", kind="ReplicaSet", name="rs",
                                        uid=owner_uid, controller=True)
    p.spec.node_name = node
    p.spec.containers.add(name="c", image="busybox")
    return p


def names(objs):
    return sorted(o.metadata.name for o in objs)


def test_store_indexes_follow_updates_and_removals():
    s = Store()
    s.put(pod("a", "ns1", node="n1", owner_uid="u1"))
    s.put(pod("b", "ns1", node="n2", owner_uid="u1"))
    s.put(pod("c", "ns2", node="n1"))
    not_controller = pod("d", "ns2")
    not_controller.metadata.owner_references.add(kind="ReplicaSet", name="x", uid="u9")
    s.put(not_controller)
    assert names(s.by_index("namespace", "ns1")) == ["a", "b"]
    assert names(s.by_index("node", "n1")) == ["a", "c"]
    assert names(s.by_index("owner", "u1")) == ["a", "b"]
    assert s.by_index("owner", "u9") == [], "a non-controller owner was indexed"
    s.put(pod("a", "ns1", node="n3"))  # moved, orphaned
    assert names(s.by_index("node", "n1")) == ["c"]
    assert names(s.by_index("node", "n3")) == ["a"]
    assert names(s.by_index("owner", "u1")) == ["b"]
    assert s.remove("ns1/b").metadata.name == "b"
    assert s.by_index("owner", "u1") == [] and s.get("ns1/b") is None
    s.add_indexer("app", lambda o: [o.metadata.labels["app"]] if "app" in o.metadata.labels else [])
    s.put(pod("e", "ns2", labels={"app": "web"}))
    assert names(s.by_index("app", "web")) == ["e"]
    with pytest.raises(KeyError):
        s.by_index("nope", "x")
    assert meta_namespace_key(pod("x", "ns")) == "ns/x"
    assert split_meta_namespace_key("ns/x") == ("ns", "x")
    assert split_meta_namespace_key("node1") == ("", "node1")


# ======================================================================
# a real control plane
# ======================================================================

@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    reg = Registry()
    tmp = tmp_path_factory.mktemp("machinery")
    etcd = reg.start_etcdlite(tmp, name="etcd")
    api = start_apiserver(tmp, etcd.url, registry=reg, watch_cache_size=CACHE_SIZE)
    client = Client(api.endpoint, timeout=15)
    try:
        yield reg, tmp, etcd, api, client
    finally:
        client.close()
        reg.cleanup()


_ns_counter = iter(range(1, 1000))


@pytest.fixture
def ns(plane):
    name = f"t{next(_ns_counter)}"
    plane[4].create(core_pb2.Namespace(metadata={"name": name}))
    return name


def cm(name, namespace, value="0"):
    m = core_pb2.ConfigMap()
    m.metadata.name, m.metadata.namespace = name, namespace
    m.data["v"] = value
    return m


class Recorder:
    """Handler calls as (kind, name, value) tuples, and a model of the state
    the handlers were told about."""

    def __init__(self, informer):
        self.calls: list[tuple] = []
        self.state: dict[str, str] = {}
        self.lock = threading.Lock()
        informer.add_handler(self.on_add, self.on_update, self.on_delete)

    def on_add(self, obj):
        with self.lock:
            assert obj.metadata.name not in self.state, f"add of a known object {obj.metadata.name}"
            self.calls.append(("add", obj.metadata.name, obj.data.get("v", "")))
            self.state[obj.metadata.name] = obj.data.get("v", "")

    def on_update(self, old, new):
        with self.lock:
            self.calls.append(("update", new.metadata.name, old.data.get("v", ""), new.data.get("v", "")))
            self.state[new.metadata.name] = new.data.get("v", "")

    def on_delete(self, obj):
        with self.lock:
            self.calls.append(("delete", obj.metadata.name))
            self.state.pop(obj.metadata.name, None)

    def snapshot(self):
        with self.lock:
            return list(self.calls), dict(self.state)


def server_state(client, namespace):
    return {o.metadata.name: o.data.get("v", "") for o in client.list("configmaps", namespace).items}


@pytest.mark.process
def test_informer_syncs_then_delivers_adds_updates_deletes_in_order(plane, ns):
    client = plane[4]
    for i in range(3):
        client.create(cm(f"k{i}", ns))
    inf = Informer(client, "configmaps", ns)
    rec = Recorder(inf)
    inf.start()
    try:
        assert inf.wait_for_sync(20)
        calls, _ = rec.snapshot()
        assert sorted(calls) == [("add", "k0", "0"), ("add", "k1", "0"), ("add", "k2", "0")]
        assert sorted(inf.store.keys()) == [f"{ns}/k0", f"{ns}/k1", f"{ns}/k2"]

        client.create(cm("k3", ns))
        k0 = client.get("configmaps", "k0", ns)
        k0.data["v"] = "1"
        client.update(k0)
        client.delete("configmaps", "k1", ns)
        client.patch("configmaps", "k3", {"data": {"v": "2"}}, ns)
        wait_until(lambda: len(rec.snapshot()[0]) >= 7, 20, what="4 more handler calls")
        calls, state = rec.snapshot()
        assert calls[3:] == [("add", "k3", "0"), ("update", "k0", "0", "1"), ("delete", "k1"),
                             ("update", "k3", "0", "2")]
        assert state == server_state(client, ns)
        assert inf.store.get(f"{ns}/k0").data["v"] == "1"
        assert inf.store.get(f"{ns}/k1") is None

        late = Recorder(inf)  # a handler added later first hears of every cached object
        assert sorted(late.snapshot()[0]) == [("add", "k0", "1"), ("add", "k2", "0"), ("add", "k3", "2")]
        copy = deep_copy(inf.store.get(f"{ns}/k2"))
        copy.data["v"] = "changed"
        assert inf.store.get(f"{ns}/k2").data["v"] == "0"
    finally:
        inf.stop()


@pytest.mark.process
def test_informer_with_a_label_selector_and_resync(plane, ns):
    client = plane[4]
    web = cm("web", ns)
    web.metadata.labels["app"] = "web"
    client.create(web)
    client.create(cm("db", ns))
    inf = Informer(client, "configmaps", ns, label_selector="app=web", resync_period=0.3)
    rec = Recorder(inf)
    inf.start()
    try:
        assert inf.wait_for_sync(20)
        assert inf.store.keys() == [f"{ns}/web"]
        client.patch("configmaps", "db", {"metadata": {"labels": {"app": "web"}}}, ns)
        client.patch("configmaps", "web", {"metadata": {"labels": {"app": None}}}, ns)
        wait_until(lambda: rec.snapshot()[1] == {"db": "0"}, 20, what="db in, web out")
        calls, _ = rec.snapshot()
        assert calls.index(("add", "db", "0")) < calls.index(("delete", "web"))
        # resync: the cached objects come back as updates with no change
        wait_until(lambda: ("update", "db", "0", "0") in rec.snapshot()[0], 20, what="a resync")
    finally:
        inf.stop()


@pytest.mark.process
def test_informer_indexes_pods_by_namespace_owner_and_node(plane, ns):
    client = plane[4]
    client.create(pod("a", ns, node="n1", owner_uid="uid-1"))
    client.create(pod("b", ns, owner_uid="uid-1"))
    client.create(pod("c", ns, node="n1"))
    factory = SharedInformerFactory(client)
    inf = factory.informer("pods", ns)
    assert factory.informer("po", ns) is inf, "the factory made two informers of one resource"
    assert factory.informer("pods") is not inf
    factory.start()
    try:
        assert factory.wait_for_cache_sync(20)
        store = inf.store
        assert names(store.by_index("namespace", ns)) == ["a", "b", "c"]
        assert names(store.by_index("owner", "uid-1")) == ["a", "b"]
        assert names(store.by_index("node", "n1")) == ["a", "c"]
        client.patch("pods", "b", {"spec": {"nodeName": "n2"}}, ns)  # bind b
        wait_until(lambda: names(store.by_index("node", "n2")) == ["b"], 20, what="b indexed on n2")
        client.delete("pods", "c", ns, grace_period_seconds=0)
        wait_until(lambda: names(store.by_index("node", "n1")) == ["a"], 20, what="c gone from n1")
        # the cluster-wide informer sees this namespace's pods too
        everywhere = factory.informer("pods").store
        wait_until(lambda: len(everywhere.by_index("namespace", ns)) == 2, 20, what="cluster-wide informer synced")
    finally:
        factory.stop()


@pytest.mark.process
def test_informer_misses_nothing_across_an_apiserver_sigkill(plane, ns):
    reg, tmp, etcd, api, client = plane
    for i in range(4):
        client.create(cm(f"k{i}", ns))
    informer_client = Client(api.endpoint, timeout=15)
    inf = Informer(informer_client, "configmaps", ns)
    rec = Recorder(inf)
    inf.start()
    other = start_apiserver(tmp / "other", etcd.url, registry=reg, watch_cache_size=CACHE_SIZE)
    try:
        assert inf.wait_for_sync(20)
        api.kill()
        # while the informer's apiserver is down, another one takes writes
        with Client(other.endpoint, timeout=15) as c2:
            c2.create(cm("new", ns))
            k0 = c2.get("configmaps", "k0", ns)
            k0.data["v"] = "1"
            c2.update(k0)
            c2.delete("configmaps", "k1", ns)
            c2.delete("configmaps", "k2", ns)
            c2.create(cm("k2", ns, "again"))  # deleted and created again: a new uid
            for i in range(CACHE_SIZE + 5):
                c2.patch("configmaps", "k3", {"data": {"v": str(i)}}, ns)
            expected = server_state(c2, ns)
        api.restart(kill=True)
        wait_until(lambda: rec.snapshot()[1] == expected, 30, what="the informer caught up")
        calls, _ = rec.snapshot()
        after = calls[4:]
        assert ("add", "new", "0") in after
        assert ("update", "k0", "0", "1") in after
        assert ("delete", "k1") in after
        assert after.index(("delete", "k2")) < after.index(("add", "k2", "again"))
        assert ("update", "k3", "0", str(CACHE_SIZE + 4)) in after
        # and the watch is live again
        client.patch("configmaps", "new", {"data": {"v": "live"}}, ns)
        wait_until(lambda: rec.snapshot()[1].get("new") == "live", 20, what="a change after the reconnect")
    finally:
        inf.stop()
        informer_client.close()
        other.kill()


@pytest.mark.process
def test_informer_relists_when_its_resource_version_expired(plane, ns):
    client, api = plane[4], plane[3]
    client.create(cm("gone", ns))
    client.create(cm("stays", ns))
    with FaultProxy(0, api.port) as proxy:
        informer_client = Client(f"127.0.0.1:{proxy.port}", timeout=15)
        inf = Informer(informer_client, "configmaps", ns)
        rec = Recorder(inf)
        inf.start()
        try:
            assert inf.wait_for_sync(20)
            wait_until(lambda: inf.last_resource_version, 5, what="a resourceVersion")
            proxy.block()  # the informer is cut off (its connections reset)
            client.delete("configmaps", "gone", ns)
            client.create(cm("born", ns))
            for i in range(CACHE_SIZE * 2):  # the watch cache forgets its resourceVersion
                client.patch("configmaps", "stays", {"data": {"v": str(i)}}, ns)
            client.create(cm("brief", ns))
            client.delete("configmaps", "brief", ns)
            expected = server_state(client, ns)
            relists = inf.relists
            proxy.unblock()
            wait_until(lambda: rec.snapshot()[1] == expected, 30, what="the informer caught up")
            assert inf.relists > relists, "caught up without a relist: the resourceVersion did not expire"
            calls, _ = rec.snapshot()
            after = calls[2:]
            # the relist's differences, each once; what lived and died unseen is not reported
            assert sorted(after) == sorted([("delete", "gone"), ("add", "born", "0"),
                                            ("update", "stays", "0", str(CACHE_SIZE * 2 - 1))])
            assert sorted(inf.store.keys()) == sorted(f"{ns}/{k}" for k in expected)
        finally:
            inf.stop()
            informer_client.close()


# ======================================================================
# leader election
# ======================================================================

class Candidate:
    def __init__(self, client, lease, identity, **kw):
        self.started = threading.Event()
        self.stopped = threading.Event()
        kw.setdefault("lease_duration", 2.0)
        kw.setdefault("renew_deadline", 1.5)
        kw.setdefault("retry_period", 0.2)
        self.elector = LeaderElector(client, lease, identity=identity,
                                     on_started_leading=self.started.set,
                                     on_stopped_leading=self.stopped.set, **kw)


def lease_of(client, name):
    return client.get("leases", name, "kube-system")


class _NoNamespaceReads:
    """An apiserver client whose identity may handle Leases but not read namespaces (the
    cloud-controller-manager's role)."""

    def __init__(self) -> None:
        self.created = []

    def get(self, kind, name, namespace=""):
        if kind == "namespaces":
            raise ApiError("Forbidden", f'namespaces "{name}" is forbidden')
        raise ApiError("NotFound", f'{kind} "{name}" not found')

    def create(self, obj):
        self.created.append(obj)
        return obj


def test_an_identity_that_may_not_read_namespaces_still_takes_the_lease():
    client = _NoNamespaceReads()
    elector = LeaderElector(client, "ccm", identity="me", lease_duration=2.0, renew_deadline=1.5,
                            retry_period=0.2)
    assert elector._try_acquire_or_renew()
    assert [(o.metadata.name, o.spec.holder_identity) for o in client.created] == [("ccm", "me")]


@pytest.mark.process
def test_two_candidates_exactly_one_leads_and_the_standby_waits_out_the_lease(plane):
    client = plane[4]
    a = Candidate(client, "lead-1", "a", release_on_stop=False)
    b = Candidate(client, "lead-1", "b", release_on_stop=False)
    a.elector.start()
    b.elector.start()
    try:
        wait_until(lambda: a.elector.is_leader() or b.elector.is_leader(), 20, what="a leader")
        deadline = time.monotonic() + 1.5  # several renew rounds
        while time.monotonic() < deadline:
            assert not (a.elector.is_leader() and b.elector.is_leader()), "two leaders at once"
            time.sleep(0.01)
        leader, standby = (a, b) if a.elector.is_leader() else (b, a)
        assert leader.started.wait(5) and not standby.started.is_set()
        before = lease_of(client, "lead-1")
        assert before.spec.holder_identity == leader.elector.identity
        assert before.spec.lease_duration_seconds == 2

        stopped_at = time.monotonic()
        leader.elector.stop()  # stops renewing, without releasing: as if it died
        assert leader.stopped.is_set() and not leader.elector.is_leader()
        assert lease_of(client, "lead-1").spec.holder_identity == leader.elector.identity
        wait_until(standby.elector.is_leader, 20, what="the standby took over")
        waited = time.monotonic() - stopped_at
        # the standby counts the 2 s from when it last saw the record change (at
        # most a retry period and a round before the stop); a standby that did
        # not wait would have taken over within a few retry periods
        assert waited >= 1.0, f"took over after {waited:.2f}s, before the lease expired"
        after = lease_of(client, "lead-1")
        assert after.spec.holder_identity == standby.elector.identity
        assert after.spec.lease_transitions == before.spec.lease_transitions + 1
        assert after.spec.acquire_time > before.spec.acquire_time
        assert standby.started.wait(5)
    finally:
        a.elector.stop()
        b.elector.stop()


@pytest.mark.process
def test_a_released_lease_is_taken_over_and_the_namespace_is_created(plane):
    client = plane[4]
    a = Candidate(client, "lead-2", "a", namespace="elections")
    a.elector.start()
    try:
        wait_until(a.elector.is_leader, 20, what="a leads")
        assert client.get("namespaces", "elections", "").metadata.name == "elections"
        b = Candidate(client, "lead-2", "b", namespace="elections", lease_duration=30.0,
                      renew_deadline=20.0)
        b.elector.start()
        time.sleep(0.5)  # b must not take a held lease
        assert not b.elector.is_leader()
        a.elector.stop()  # releases: b need not wait 2 s (nor its own 30 s)
        assert a.stopped.is_set()
        wait_until(b.elector.is_leader, 20, what="b took the released lease")
        assert client.get("leases", "lead-2", "elections").spec.holder_identity == "b"
        b.elector.stop()
        assert client.get("leases", "lead-2", "elections").spec.holder_identity == ""
    finally:
        a.elector.stop()


LEADER_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from apiserver.client import Client
from controllers.leaderelection import LeaderElector
e = LeaderElector(Client({endpoint!r}), "lead-3", identity="proc", lease_duration=2.0,
                  renew_deadline=1.5, retry_period=0.2,
                  on_started_leading=lambda: print("leading", flush=True))
e.run()
"""


@pytest.mark.process
def test_the_standby_takes_over_from_a_sigkilled_leader_process(plane):
    client = plane[4]
    proc = subprocess.Popen([PYTHON, "-c", LEADER_SCRIPT.format(root=str(ROOT), endpoint=plane[3].endpoint)],
                            stdout=subprocess.PIPE, text=True)
    standby = Candidate(client, "lead-3", "standby")
    try:
        assert proc.stdout.readline().strip() == "leading"
        standby.elector.start()
        time.sleep(0.6)
        assert not standby.elector.is_leader()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        wait_until(standby.elector.is_leader, 20, what="the standby took over")
        assert lease_of(client, "lead-3").spec.holder_identity == "standby"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        standby.elector.stop()


@pytest.mark.process
def test_a_leader_cut_off_from_the_apiserver_gives_up_after_renew_deadline(plane):
    with FaultProxy(0, plane[3].port, mode="blackhole") as proxy:
        # calls through the blackhole hang for the client's whole 60 s timeout
        cut_client = Client(f"127.0.0.1:{proxy.port}", timeout=60)
        c = Candidate(cut_client, "lead-4", "cut")
        c.elector.start()
        try:
            wait_until(c.elector.is_leader, 20, what="it leads")
            proxy.block()
            cut_at = time.monotonic()
            # renew_deadline is 1.5 s: is_leader() turns false by then, and the
            # elector gives up without waiting out a hung call
            wait_until(lambda: not c.elector.is_leader(), 10, what="is_leader() false")
            assert c.stopped.wait(15), "kept leading without renewing"
            assert time.monotonic() - cut_at < 15, "gave up only when the hung call timed out"
        finally:
            c.elector.stop()
            cut_client.close()


# ======================================================================
# events
# ======================================================================

@pytest.mark.process
def test_events_are_created_and_identical_ones_aggregated(plane, ns):
    client = plane[4]
    p = client.create(pod("web", ns))
    node = client.create(core_pb2.Node(metadata={"name": f"node-{ns}"}))
    rec = EventRecorder(client, "test-controller", host="h1")
    for _ in range(3):
        rec.event(p, "Warning", "FailedScheduling", "0/3 nodes are available")
    rec.event(p, "Normal", "Scheduled", "assigned to n1")
    rec.event(node, "Normal", "NodeReady", "ready")
    rec.event(p, "Bogus", "X", "dropped: not a valid type")
    assert rec.flush(20)
    events = {e.reason: e for e in client.list("events", ns).items}
    assert sorted(events) == ["FailedScheduling", "Scheduled"]
    failed = events["FailedScheduling"]
    assert failed.count == 3 and failed.type == "Warning"
    assert failed.involved_object.kind == "Pod" and failed.involved_object.name == "web"
    assert failed.involved_object.uid == p.metadata.uid
    assert failed.source.component == "test-controller" and failed.source.host == "h1"
    assert failed.metadata.name.startswith("web.")
    assert failed.first_timestamp <= failed.last_timestamp
    assert events["Scheduled"].count == 1
    on_node = [e for e in client.list("events", "default").items if e.involved_object.name == node.metadata.name]
    assert len(on_node) == 1 and on_node[0].involved_object.kind == "Node"
    rec.stop()


def test_event_recorder_never_raises_into_the_caller():
    ref = meta_pb2.ObjectReference(kind="Pod", namespace="x", name="y")
    with Client("127.0.0.1:1", timeout=0.2) as dead:
        rec = EventRecorder(dead, "c")
        rec.event(ref, "Normal", "R", "m")  # the apiserver is unreachable
        rec.event(object(), "Normal", "R", "not an object")
        assert rec.flush(10)
        rec.stop()
