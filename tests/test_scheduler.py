"""The scheduler: its queue and cache alone, then the whole loop against a real
etcdlite member and apiserver (Nodes created through the client, no kubelets)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from apiserver.quantity import milli_cpu
from controllers.scheduler import plugins
from controllers.scheduler.queue import ACTIVE, BACKOFF, IN_FLIGHT, UNSCHEDULABLE, SchedulingQueue
from controllers.scheduler.scheduler import Scheduler, SchedulerCache
from harness.etcd_client import wait_until
from harness.plane import apiserver_on_etcdlite


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_queue(**kw):
    clock = FakeClock()
    return SchedulingQueue(clock=clock, **kw), clock


# ---- the queue ----

def test_queue_pops_by_priority_then_arrival():
    q, _ = fake_queue()
    for key, prio in [("a", 0), ("b", 10), ("c", 0), ("d", 10), ("e", -1)]:
        q.add(key, prio)
    assert [q.pop(0).key for _ in range(5)] == ["b", "d", "a", "c", "e"]
    assert q.pop(0) is None
    # a priority change while active re-sorts; adding again does not duplicate
    q2, _ = fake_queue()
    q2.add("x", 0)
    q2.add("y", 0)
    q2.add("y", 5)
    q2.add("x", 0)
    assert [q2.pop(0).key for _ in range(2)] == ["y", "x"] and q2.pop(0) is None


def test_queue_backoff_doubles_up_to_the_maximum():
    q, _ = fake_queue(initial_backoff=1.0, max_backoff=10.0)
    assert [q.backoff_seconds(n) for n in range(7)] == [0, 1, 2, 4, 8, 10, 10]


def test_queue_failed_attempts_back_off():
    q, clock = fake_queue(initial_backoff=1.0, max_backoff=10.0)
    q.add("p")
    for attempt, wait in enumerate([1, 2, 4, 8, 10], start=1):
        item = q.pop(0)
        assert item.key == "p" and item.attempts == attempt - 1
        q.add_backoff("p")
        assert q.where("p") == BACKOFF
        clock.now += wait - 0.01
        assert q.pop(0) is None
        clock.now += 0.01
    assert q.pop(0).attempts == 5
    q.done("p")
    assert q.where("p") is None and len(q) == 0
    q.add("p")
    assert q.pop(0).attempts == 0  # done forgot its failures


def test_queue_unschedulable_pods_wait_for_a_cluster_change_within_their_backoff():
    q, clock = fake_queue(initial_backoff=1.0, max_backoff=10.0, max_unschedulable_seconds=60)
    q.add("p")
    q.pop(0)
    q.add_unschedulable("p")
    assert q.where("p") == UNSCHEDULABLE
    clock.now += 5  # the backoff (1 s) has expired, but nothing changed
    assert q.pop(0) is None
    q.move_all_to_active()
    assert q.where("p") == ACTIVE
    assert q.pop(0).attempts == 1
    q.add_unschedulable("p")  # second failure: 2 s backoff
    clock.now += 0.5
    q.move_all_to_active()
    assert q.where("p") == BACKOFF and q.pop(0) is None
    clock.now += 1.5
    assert q.pop(0).key == "p"


def test_queue_unschedulable_pods_come_back_after_the_maximum_wait():
    q, clock = fake_queue(max_unschedulable_seconds=30)
    q.add("p")
    q.pop(0)
    q.add_unschedulable("p")
    clock.now += 29
    assert q.pop(0) is None
    clock.now += 1
    assert q.pop(0).key == "p"


def test_queue_change_during_an_attempt_is_not_missed():
    q, clock = fake_queue(initial_backoff=1.0)
    q.add("p")
    q.add("r")
    assert q.pop(0).key == "p"
    q.move_all_to_active()  # e.g. a node was added while p was being scheduled
    q.add_unschedulable("p")
    assert q.where("p") == BACKOFF
    # an update of the pod itself during its attempt counts the same way
    assert q.pop(0).key == "r"
    q.add("r", 0)
    assert q.where("r") == IN_FLIGHT
    q.add_unschedulable("r")
    assert q.where("r") == BACKOFF
    clock.now += 1
    assert {q.pop(0).key, q.pop(0).key} == {"p", "r"}


def test_queue_update_of_an_unschedulable_pod_requeues_it():
    q, clock = fake_queue(initial_backoff=1.0)
    q.add("p")
    q.pop(0)
    q.add_unschedulable("p")
    clock.now += 1
    q.add("p", 0)  # its spec changed: it may fit now
    assert q.pop(0).key == "p"


def test_queue_delete_and_stale_reports():
    q, _ = fake_queue()
    q.add("p")
    q.add("r")
    q.delete("p")
    assert q.pop(0).key == "r"
    q.delete("r")
    q.add_unschedulable("r")  # the outcome of an attempt on a pod deleted meanwhile
    q.add_backoff("r")
    assert len(q) == 0 and q.counts() == {ACTIVE: 0, IN_FLIGHT: 0, BACKOFF: 0, UNSCHEDULABLE: 0}


def test_queue_pop_blocks_until_an_add_or_close():
    q = SchedulingQueue(initial_backoff=0.05, max_backoff=0.05)
    assert q.pop(timeout=0.05) is None
    got = []
    t = threading.Thread(target=lambda: got.append(q.pop(timeout=30)))
    t.start()
    q.add("p")
    t.join(30)
    assert got[0].key == "p"
    q.add_backoff("p")  # a real clock: back after 50 ms, with no one calling add
    assert q.pop(timeout=30).key == "p"
    t = threading.Thread(target=lambda: got.append(q.pop(timeout=None)))
    t.start()
    q.close()
    t.join(30)
    assert not t.is_alive() and got[1] is None


# ---- the cache ----

def _node(name, cpu="4", memory="8Gi", pods="110", labels=None, taints=(), ready="True"):
    n = core_pb2.Node()
    n.metadata.name = name
    n.metadata.labels.update(labels or {})
    for key, value, effect in taints:
        n.spec.taints.add(key=key, value=value, effect=effect)
    n.status.allocatable.update({"cpu": cpu, "memory": memory, "pods": pods})
    n.status.capacity.update(n.status.allocatable)
    n.status.conditions.add(type="Ready", status=ready, reason="KubeletReady")
    return n


def _pod(name, ns="default", cpu=None, node="", scheduler="", node_selector=None, tolerations=(),
         owner=None, affinity_names=()):
    p = core_pb2.Pod()
    p.metadata.name = name
    p.metadata.namespace = ns
    c = p.spec.containers.add(name="main", image="nginx:1.25")
    if cpu is not None:
        c.resources.requests["cpu"] = cpu
    p.spec.node_name = node
    p.spec.scheduler_name = scheduler
    p.spec.node_selector.update(node_selector or {})
    for key, op, value, effect in tolerations:
        p.spec.tolerations.add(key=key, operator=op, value=value, effect=effect)
    if owner is not None:
        p.metadata.owner_references.add(api_version="apps/v1", kind="ReplicaSet", name=owner[0],
                                         uid=owner[1], controller=True)
    if affinity_names:
        term = (p.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
                .node_selector_terms.add())
        term.match_fields.add(key="metadata.name", operator="In", values=list(affinity_names))
    return p


def test_cache_assume_confirm_forget():
    cache = SchedulerCache()
    cache.set_node(_node("a"))
    p = _pod("p", cpu="1", node="a")
    cache.assume(p)
    assert cache.is_assumed("default/p") and cache.node_info("a").requested.milli_cpu == 1000
    cache.forget("default/p")
    assert cache.node_info("a").requested.milli_cpu == 0
    cache.assume(p)
    cache.add_pod(p)  # the informer's event of the bound pod confirms it
    cache.forget("default/p")  # too late: stays
    assert not cache.is_assumed("default/p") and cache.node_info("a").requested.milli_cpu == 1000
    # a pod bound to a node the cache has not seen is kept apart, and counted once the node comes
    cache.add_pod(_pod("q", cpu="500m", node="b"))
    assert [i.name for i in cache.node_infos()] == ["a"]
    cache.set_node(_node("b"))
    assert cache.node_info("b").requested.milli_cpu == 500
    cache.remove_pod("default/q")
    cache.remove_node("b")
    assert cache.node_info("b") is None and [i.name for i in cache.node_infos()] == ["a"]


# ---- against a real apiserver ----

@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "scheduler") as api:
        yield api


@pytest.fixture(scope="module")
def c(plane):
    with Client(plane.endpoint, timeout=30) as client:
        yield client


@pytest.fixture
def cluster(c, request):
    """A namespace and a scheduler of this test's own name; no nodes from other tests."""
    name = request.node.name.replace("_", "-").lower()[:40].strip("-")
    c.create(core_pb2.Namespace(metadata={"name": name}))
    for n in c.list("nodes").items:
        c.delete("nodes", n.metadata.name)
    started = []

    def start(**kw):
        kw.setdefault("initial_backoff", 0.2)
        kw.setdefault("max_backoff", 1.0)
        s = Scheduler(Client(c.server, timeout=30), scheduler_name=name, **kw).start()
        started.append(s)
        return s

    yield name, start
    for s in started:
        s.stop()
        s.client.close()


def create_pod(c, ns, name, scheduler, **kw):
    return c.create(_pod(name, ns=ns, scheduler=scheduler, **kw))


def pods_of(c, ns):
    return {p.metadata.name: p for p in c.list("pods", ns).items}


def events_of(c, ns, reason=None):
    return [e for e in c.list("events", ns).items if reason is None or e.reason == reason]


def scheduled_condition(pod):
    return next((cond for cond in pod.status.conditions if cond.type == "PodScheduled"), None)


def all_bound(c, ns, n):
    pods = pods_of(c, ns)
    return len(pods) == n and all(p.spec.node_name for p in pods.values()) and pods


@pytest.mark.process
def test_pods_get_bound_with_scheduled_events(c, cluster):
    ns, start = cluster
    for n in ("n1", "n2"):
        c.create(_node(n))
    start()
    for i in range(5):
        create_pod(c, ns, f"p{i}", ns, cpu="100m")
    # a pod for another scheduler is left alone
    create_pod(c, ns, "other", "someone-else")
    wait_until(lambda: all(pods_of(c, ns)[f"p{i}"].spec.node_name for i in range(5)),
               timeout=30, what="5 pods bound")
    pods = pods_of(c, ns)
    assert {p.spec.node_name for name, p in pods.items() if name != "other"} <= {"n1", "n2"}
    events = wait_until(lambda: len(events_of(c, ns, "Scheduled")) == 5 and events_of(c, ns, "Scheduled"),
                        timeout=30, what="5 Scheduled events")
    messages = {e.message for e in events}
    assert messages == {f"Successfully assigned {ns}/p{i} to {pods[f'p{i}'].spec.node_name}" for i in range(5)}
    e = events[0]
    assert e.type == "Normal" and e.involved_object.kind == "Pod" and e.source.component == ns
    assert e.involved_object.uid == pods[e.involved_object.name].metadata.uid
    assert not c.get("pods", "other", ns).spec.node_name


@pytest.mark.process
def test_node_selector_taints_and_readiness_are_respected(c, cluster):
    ns, start = cluster
    c.create(_node("ssd", labels={"disk": "ssd"}))
    c.create(_node("db", labels={"disk": "hdd"}, taints=[("dedicated", "db", "NoSchedule")]))
    c.create(_node("down", labels={"disk": "nvme"}, ready="False"))
    start()
    create_pod(c, ns, "plain", ns)
    create_pod(c, ns, "wants-ssd", ns, node_selector={"disk": "ssd"})
    create_pod(c, ns, "database", ns, tolerations=[("dedicated", "Equal", "db", "NoSchedule")],
               affinity_names=["db"])
    create_pod(c, ns, "wants-nvme", ns, node_selector={"disk": "nvme"})
    create_pod(c, ns, "wants-hdd", ns, node_selector={"disk": "hdd"})
    wait_until(lambda: all(pods_of(c, ns)[n].spec.node_name for n in ("plain", "wants-ssd", "database")),
               timeout=30, what="the fitting pods bound")
    pods = pods_of(c, ns)
    assert pods["plain"].spec.node_name == "ssd"  # db is tainted, down is not ready
    assert pods["wants-ssd"].spec.node_name == "ssd"
    assert pods["database"].spec.node_name == "db"

    def failed(name):
        return [e for e in events_of(c, ns, "FailedScheduling") if e.involved_object.name == name]

    wait_until(lambda: failed("wants-nvme") and failed("wants-hdd"), timeout=30, what="FailedScheduling events")
    assert failed("wants-nvme")[0].message == (
        "0/3 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }.")
    assert failed("wants-hdd")[0].message == (
        "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
        "1 node(s) had untolerated taint {dedicated: db}, "
        "1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }.")
    assert failed("wants-hdd")[0].type == "Warning"
    pods = pods_of(c, ns)
    assert not pods["wants-nvme"].spec.node_name and not pods["wants-hdd"].spec.node_name

    # the node becomes Ready: the pod that waited for it is scheduled (a node update moves it back)
    down = c.get("nodes", "down")
    down.status.conditions[0].status = "True"
    c.update_status(down)
    wait_until(lambda: c.get("pods", "wants-nvme", ns).spec.node_name == "down", timeout=30,
               what="wants-nvme bound once its node is Ready")


@pytest.mark.process
def test_forty_pods_on_four_nodes_never_exceed_allocatable(c, cluster):
    ns, start = cluster
    for i in range(4):
        c.create(_node(f"w{i}", cpu="2", memory="4Gi"))
    # every change of every pod, from before the scheduler starts
    seen: dict[str, core_pb2.Pod] = {}
    overcommits = []
    listed = c.list("pods", ns)
    watch = c.watch("pods", ns, resource_version=listed.resource_version)

    def follow():
        try:
            for ev in watch:
                seen[ev.object.metadata.name] = ev.object
                used = Counter()
                for p in seen.values():
                    if p.spec.node_name:
                        used[p.spec.node_name] += sum(milli_cpu(ct.resources.requests["cpu"])
                                                      for ct in p.spec.containers)
                overcommits.extend(n for n, m in used.items() if m > 2000)
        except ApiError:
            pass

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    for i in range(40):
        create_pod(c, ns, f"p{i:02d}", ns, cpu="300m")
    sched = start()

    def settled():
        pods = pods_of(c, ns)
        bound = [p for p in pods.values() if p.spec.node_name]
        waiting = [p for p in pods.values() if not p.spec.node_name]
        marked = [p for p in waiting if (cond := scheduled_condition(p)) is not None
                  and (cond.status, cond.reason) == ("False", "Unschedulable")]
        return len(bound) == 24 and len(marked) == 16 and (bound, marked)

    bound, waiting = wait_until(settled, timeout=45, what="24 pods bound and 16 marked Unschedulable")
    per_node = Counter(p.spec.node_name for p in bound)
    assert per_node == {f"w{i}": 6 for i in range(4)}  # 6 x 300m = 1800m <= 2 cpu; a 7th would not fit
    for p in waiting:
        assert scheduled_condition(p).message == "0/4 nodes are available: 4 Insufficient cpu."
    # events are written in the background: wait for all of them
    wanted = {p.metadata.name for p in waiting}
    failed = wait_until(lambda: {e.involved_object.name for e in events_of(c, ns, "FailedScheduling")}
                        == wanted and events_of(c, ns, "FailedScheduling"), timeout=30,
                        what="a FailedScheduling event for every waiting pod")
    assert {e.message for e in failed} == {"0/4 nodes are available: 4 Insufficient cpu."}
    assert sched.stats["scheduled"] == 24
    watch.stop()
    follower.join(10)
    assert not overcommits
    assert sum(1 for p in seen.values() if p.spec.node_name) == 24

    # freeing room: deleting a bound pod (graceful, then for good) lets a waiting one in
    victim = bound[0]
    c.delete("pods", victim.metadata.name, ns, grace_period_seconds=0)
    wait_until(lambda: sum(1 for p in pods_of(c, ns).values() if p.spec.node_name) == 24
               and victim.metadata.name not in pods_of(c, ns), timeout=30,
               what="a waiting pod bound in the freed room")
    used = Counter()
    for p in pods_of(c, ns).values():
        if p.spec.node_name:
            used[p.spec.node_name] += 300
    assert max(used.values()) <= 2000
    # the retries of the pods still waiting repeat their Event (count 2) instead of adding one
    wait_until(lambda: any(e.count >= 2 for e in events_of(c, ns, "FailedScheduling")), timeout=30,
               what="a FailedScheduling event counted twice")
    assert len(events_of(c, ns, "FailedScheduling")) == 16


@pytest.mark.process
def test_adding_a_node_schedules_a_waiting_pod(c, cluster):
    ns, start = cluster
    c.create(_node("small", cpu="1"))
    # max_unschedulable_seconds is long: only the node's arrival can bring the pod back in time
    sched = start(max_unschedulable_seconds=600)
    create_pod(c, ns, "big", ns, cpu="2")
    wait_until(lambda: (cond := scheduled_condition(c.get("pods", "big", ns))) is not None
               and cond.reason == "Unschedulable", timeout=30, what="big marked Unschedulable")
    cond = scheduled_condition(c.get("pods", "big", ns))
    assert cond.status == "False" and cond.message == "0/1 nodes are available: 1 Insufficient cpu."
    assert cond.last_transition_time
    wait_until(lambda: sched.queue.where(f"{ns}/big") == UNSCHEDULABLE, timeout=30, what="big waiting")
    c.create(_node("large", cpu="4"))
    wait_until(lambda: c.get("pods", "big", ns).spec.node_name == "large", timeout=30,
               what="big bound to the new node")


@pytest.mark.process
def test_replicas_of_one_owner_spread_across_nodes(c, cluster):
    ns, start = cluster
    # one node much larger: least-allocated alone would stack everything on it
    c.create(_node("huge", cpu="64", memory="256Gi"))
    for i in range(3):
        c.create(_node(f"s{i}"))
    start()
    for i in range(8):
        create_pod(c, ns, f"orphan{i}", ns)
    pods = wait_until(lambda: all_bound(c, ns, 8), timeout=30, what="orphans bound")
    assert Counter(p.spec.node_name for p in pods.values()) == {"huge": 8}
    for i in range(8):
        create_pod(c, ns, f"web{i}", ns, owner=("web", "0000-web-uid"))
    pods = wait_until(lambda: all_bound(c, ns, 16), timeout=30, what="replicas bound")
    spread = Counter(p.spec.node_name for name, p in pods.items() if name.startswith("web"))
    assert spread == {"huge": 2, "s0": 2, "s1": 2, "s2": 2}


class FailingFirstBind(Client):
    """A client whose first bind is refused as if the pod had changed meanwhile."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.refused = 0

    def patch(self, kind, name, patch, namespace="default", **kw):
        if kind == "pods" and "spec" in patch and not self.refused:
            self.refused += 1
            raise ApiError("Conflict", f'Operation cannot be fulfilled on pods "{name}": '
                           "the object has been modified")
        return super().patch(kind, name, patch, namespace, **kw)


@pytest.mark.process
def test_a_refused_bind_is_forgotten_and_retried(c, cluster):
    ns, _ = cluster
    c.create(_node("only", cpu="1"))
    client = FailingFirstBind(c.server, timeout=30)
    sched = Scheduler(client, scheduler_name=ns, initial_backoff=0.2, max_backoff=1.0).start()
    try:
        # the pod takes the whole node: had the refused bind's assumption stayed, it would fit nowhere
        create_pod(c, ns, "p", ns, cpu="1")
        wait_until(lambda: c.get("pods", "p", ns).spec.node_name == "only", timeout=30, what="p bound")
        assert client.refused == 1 and sched.stats["bind_errors"] == 1 and sched.stats["unschedulable"] == 0
        failed = wait_until(lambda: events_of(c, ns, "FailedScheduling"), timeout=30, what="the event")
        assert failed[0].message.startswith("Binding rejected: Operation cannot be fulfilled")
        assert sched.cache.node_info("only").requested.milli_cpu == 1000
    finally:
        sched.stop()
        client.close()


@pytest.mark.process
def test_entry_point_schedules(c, cluster, tmp_path):
    import subprocess
    import sys

    ns, _ = cluster
    c.create(_node("solo"))
    with open(tmp_path / "scheduler.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "controllers.scheduler", "--server", c.server,
                                 "--scheduler-name", ns, "--leader-elect", "--leader-elect-retry-period",
                                 "0.5", "--leader-elect-lease-name", ns],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        create_pod(c, ns, "p", ns)
        wait_until(lambda: c.get("pods", "p", ns).spec.node_name == "solo", timeout=30, what="p bound")
        lease = c.get("leases", ns, "kube-system")
        assert lease.spec.holder_identity
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    # it released its lease on the way out
    assert not c.get("leases", ns, "kube-system").spec.holder_identity


def test_unschedulable_plugin_reasons_match_the_filters():
    # the FailedScheduling text is built from the filters' own reasons
    infos = [plugins.NodeInfo.build(_node("x", cpu="1"))]
    reasons = [plugins.run_filters(_pod("p", cpu="2"), i) for i in infos]
    assert plugins.failed_scheduling_message(1, reasons) == "0/1 nodes are available: 1 Insufficient cpu."
