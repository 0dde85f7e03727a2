"""The pure parts of the ReplicaSet and Deployment controllers: pod ranking
and availability, claiming, the pod-template-hash, expectations, slow start,
status, the rolling-update arithmetic (and a Hypothesis model of a rollout
with lagging statuses that must never break maxSurge or maxUnavailable),
proportional scaling, revisions, history pruning and the conditions."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiserver.errors import ApiError
from apiserver.pb import apps_pb2, core_pb2
from apiserver.selectors import LabelSelector
from controllers import deploymentutil as dep
from controllers import podutil as pu
from controllers.replicaset import calculate_status, pod_from_template, slow_start_batch

T0 = 1_700_000_000.0


# ---- builders ----

def pod(name, *, node="", phase="Running", ready=False, ready_at=None, restarts=0, created=T0,
        labels=None, owner=None, deleting=False):
    p = core_pb2.Pod()
    p.metadata.name = name
    p.metadata.namespace = "ns"
    p.metadata.uid = f"uid-{name}"
    p.metadata.creation_timestamp = pu.now_rfc3339(created)
    p.metadata.labels.update(labels or {})
    if owner is not None:
        p.metadata.owner_references.append(pu.new_controller_ref(owner))
    if deleting:
        p.metadata.deletion_timestamp = pu.now_rfc3339(created + 100)
    p.spec.node_name = node
    p.status.phase = phase
    if ready or ready_at is not None:
        p.status.conditions.add(type="Ready", status="True" if ready or ready_at else "False",
                                last_transition_time=pu.now_rfc3339(ready_at or created))
    if restarts:
        p.status.container_statuses.add(name="c", restart_count=restarts)
    return p


def rs(name, replicas, *, available=None, status_replicas=None, created=T0, revision=None,
       image="img:1", uid=None, ready=None):
    r = apps_pb2.ReplicaSet()
    r.metadata.name = name
    r.metadata.namespace = "ns"
    r.metadata.uid = uid or f"uid-{name}"
    r.metadata.creation_timestamp = pu.now_rfc3339(created)
    r.metadata.generation = 1
    if revision is not None:
        r.metadata.annotations[dep.REVISION_ANNOTATION] = str(revision)
    r.spec.replicas = replicas
    r.spec.selector.match_labels["app"] = "web"
    r.spec.template.metadata.labels["app"] = "web"
    r.spec.template.spec.containers.add(name="c", image=image)
    r.status.replicas = replicas if status_replicas is None else status_replicas
    r.status.available_replicas = r.status.replicas if available is None else available
    r.status.ready_replicas = r.status.available_replicas if ready is None else ready
    r.status.observed_generation = 1
    return r


def deployment(replicas=10, *, surge="25%", unavailable="25%", strategy="RollingUpdate", image="img:1"):
    d = apps_pb2.Deployment()
    d.metadata.name = "web"
    d.metadata.namespace = "ns"
    d.metadata.uid = "uid-web"
    d.metadata.generation = 1
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = "web"
    d.spec.template.metadata.labels["app"] = "web"
    d.spec.template.spec.containers.add(name="c", image=image)
    d.spec.strategy.type = strategy
    if strategy == "RollingUpdate":
        d.spec.strategy.rolling_update.max_surge = surge
        d.spec.strategy.rolling_update.max_unavailable = unavailable
    d.spec.revision_history_limit = 10
    d.spec.progress_deadline_seconds = 600
    return d


# ======================================================================
# pods
# ======================================================================

def test_active_ready_available():
    assert pu.is_pod_active(pod("a"))
    assert not pu.is_pod_active(pod("a", deleting=True))
    assert not pu.is_pod_active(pod("a", phase="Succeeded"))
    assert not pu.is_pod_active(pod("a", phase="Failed"))
    assert not pu.is_pod_ready(pod("a"))
    p = pod("a", ready_at=T0 + 10)
    assert pu.is_pod_ready(p) and pu.pod_ready_since(p) == T0 + 10
    assert pu.is_pod_available(p, 0, now=T0)  # minReadySeconds 0: ready is enough
    assert not pu.is_pod_available(p, 5, now=T0 + 14)
    assert pu.is_pod_available(p, 5, now=T0 + 15)
    not_ready = pod("b")
    not_ready.status.conditions.add(type="Ready", status="False", last_transition_time=pu.now_rfc3339(T0))
    assert not pu.is_pod_ready(not_ready) and not pu.is_pod_available(not_ready, 0)


@pytest.mark.parametrize("first,second", [
    (pod("unassigned", node=""), pod("assigned", node="n1")),
    (pod("pending", node="n", phase="Pending"), pod("unknown", node="n", phase="Unknown")),
    (pod("unknown", node="n", phase="Unknown"), pod("running", node="n", phase="Running")),
    (pod("notready", node="n"), pod("ready", node="n", ready=True)),
    (pod("recent", node="n", ready_at=T0 + 50), pod("earlier", node="n", ready_at=T0 + 10)),
    (pod("crashy", node="n", ready_at=T0, restarts=5), pod("steady", node="n", ready_at=T0, restarts=1)),
    (pod("newer", node="n", ready_at=T0, created=T0 + 5), pod("older", node="n", ready_at=T0, created=T0)),
])
def test_deletion_order_pairs(first, second):
    assert pu.deletion_rank(first) < pu.deletion_rank(second)
    assert [p.metadata.name for p in pu.pods_to_delete([second, first], 1)] == [first.metadata.name]


def test_deletion_order_criteria_take_precedence_in_order():
    # an unassigned running ready pod goes before an assigned pending one
    assert pu.deletion_rank(pod("a", ready=True)) < pu.deletion_rank(pod("b", node="n", phase="Pending"))
    # a not-ready old pod goes before a ready new one with many restarts
    assert pu.deletion_rank(pod("a", node="n", created=T0)) < \
        pu.deletion_rank(pod("b", node="n", ready=True, restarts=9, created=T0 + 99))
    pods = [pod(f"p{i}", node="n", ready_at=T0 + i) for i in range(6)]
    assert [p.metadata.name for p in pu.pods_to_delete(pods, 3)] == ["p5", "p4", "p3"]
    assert pu.pods_to_delete(pods, 0) == []


# ======================================================================
# ownership
# ======================================================================

def test_classify_owned_adopt_release_and_foreign():
    owner = rs("web", 3)
    other = rs("other", 1)
    sel = LabelSelector.from_labels({"app": "web"})
    mine = pod("mine", labels={"app": "web"}, owner=owner)
    orphan = pod("orphan", labels={"app": "web"})
    orphan_other_labels = pod("stranger", labels={"app": "db"})
    relabelled = pod("relabelled", labels={"app": "debug"}, owner=owner)
    foreign = pod("foreign", labels={"app": "web"}, owner=other)
    dying_orphan = pod("dying", labels={"app": "web"}, deleting=True)
    c = pu.classify(owner, sel.matches, [mine, orphan, orphan_other_labels, relabelled, foreign, dying_orphan])
    assert [p.metadata.name for p in c.owned] == ["mine"]
    assert [p.metadata.name for p in c.adopt] == ["orphan"]
    assert [p.metadata.name for p in c.release] == ["relabelled"]
    owner.metadata.deletion_timestamp = pu.now_rfc3339(T0)
    c = pu.classify(owner, sel.matches, [mine, orphan, relabelled])
    assert [p.metadata.name for p in c.owned] == ["mine"] and not c.adopt and not c.release


def test_controller_ref_and_patch():
    owner = rs("web", 1)
    ref = pu.new_controller_ref(owner)
    assert (ref.kind, ref.api_version, ref.name, ref.uid, ref.controller, ref.block_owner_deletion) == \
        ("ReplicaSet", "apps/v1", "web", "uid-web", True, True)
    p = pod("p", owner=owner)
    assert pu.controller_ref(p) == ref and pu.controller_ref(pod("q")) is None
    p.metadata.resource_version = "42"
    patch = pu.owner_refs_patch(p, [ref])
    assert patch == {"metadata": {"uid": "uid-p", "resourceVersion": "42", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "uid-web",
         "controller": True, "blockOwnerDeletion": True}]}}


class FakeClient:
    def __init__(self, fail=None):
        self.patches = []
        self.fail = fail

    def patch(self, resource, name, body, namespace):
        if self.fail:
            raise ApiError(self.fail, "nope")
        self.patches.append((resource, name, body))
        p = pod(name, labels={"app": "web"})
        return p


def test_ref_manager_checks_owner_once_and_reports_errors():
    owner = rs("web", 3)
    sel = LabelSelector.from_labels({"app": "web"})
    checks = []
    client = FakeClient()
    m = pu.ControllerRefManager(client, "pods", owner, sel.matches, lambda: checks.append(1))
    claimed = m.claim([pod("a", labels={"app": "web"}), pod("b", labels={"app": "web"}),
                       pod("c", labels={"app": "x"}, owner=owner)])
    assert sorted(p.metadata.name for p in claimed) == ["a", "b"]
    assert checks == [1]
    assert [(r, n) for r, n, _ in client.patches] == [("pods", "a"), ("pods", "b"), ("pods", "c")]
    assert client.patches[2][2]["metadata"]["ownerReferences"] == []

    def refuse():
        raise ApiError("Conflict", "owner is being deleted")
    m = pu.ControllerRefManager(FakeClient(), "pods", owner, sel.matches, refuse)
    with pytest.raises(ApiError):
        m.claim([pod("a", labels={"app": "web"})])
    # an object gone meanwhile is no error
    m = pu.ControllerRefManager(FakeClient(fail="NotFound"), "pods", owner, sel.matches, lambda: None)
    assert m.claim([pod("a", labels={"app": "web"})]) == []


# ======================================================================
# pod-template-hash
# ======================================================================

def test_hash_is_stable_safe_and_sensitive():
    d = deployment()
    h = pu.compute_hash(d.spec.template)
    assert h == pu.compute_hash(deployment().spec.template)
    assert 1 <= len(h) <= 10 and set(h) <= set(pu.SAFE_ALPHABET)
    assert h != pu.compute_hash(deployment(image="img:2").spec.template)
    assert h != pu.compute_hash(d.spec.template, 1)
    assert pu.compute_hash(d.spec.template, 1) != pu.compute_hash(d.spec.template, 2)
    assert pu.fnv32a(b"") == 0x811C9DC5 and pu.fnv32a(b"a") == 0xE40C292C  # FNV-1a test vectors
    assert pu.safe_encode("0123") == "".join(pu.SAFE_ALPHABET[ord(c) % 27] for c in "0123")


def test_equal_ignore_hash():
    a = deployment().spec.template
    b = apps_pb2.Deployment().spec.template
    b.CopyFrom(a)
    b.metadata.labels[pu.POD_TEMPLATE_HASH_LABEL] = "abc"
    assert pu.equal_ignore_hash(a, b) and pu.POD_TEMPLATE_HASH_LABEL in b.metadata.labels
    b.spec.containers[0].image = "img:2"
    assert not pu.equal_ignore_hash(a, b)


def test_new_replica_set_carries_the_hash():
    d = deployment()
    r = dep.new_replica_set(d, None, 4)
    h = pu.compute_hash(d.spec.template)
    assert r.metadata.name == f"web-{h}"
    assert r.spec.selector.match_labels == {"app": "web", "pod-template-hash": h}
    assert r.spec.template.metadata.labels == {"app": "web", "pod-template-hash": h}
    assert r.metadata.labels == {"app": "web", "pod-template-hash": h}
    assert r.spec.replicas == 4 and pu.controller_ref(r).uid == "uid-web"
    assert pu.equal_ignore_hash(r.spec.template, d.spec.template)
    assert dep.new_replica_set(d, 3, 0).metadata.name != r.metadata.name


# ======================================================================
# expectations
# ======================================================================

def test_expectations():
    now = [0.0]
    e = pu.ControllerExpectations(ttl=300, clock=lambda: now[0])
    assert e.satisfied("ns/a")
    e.expect("ns/a", adds=2)
    assert not e.satisfied("ns/a") and e.pending("ns/a") == (2, 0)
    e.creation_observed("ns/a")
    assert not e.satisfied("ns/a")
    e.creation_observed("ns/a")
    assert e.satisfied("ns/a")
    e.expect("ns/a", delete_uids=["u1", "u2"])
    e.deletion_observed("ns/a", "u1")
    e.deletion_observed("ns/a", "u1")  # the same pod reported twice counts once
    e.deletion_observed("ns/a", "elsewhere")
    assert not e.satisfied("ns/a") and e.pending("ns/a") == (0, 1)
    now[0] = 301.0  # a lost event delays, never stalls
    assert e.satisfied("ns/a")
    e.expect("ns/a", adds=1)
    assert not e.satisfied("ns/a")
    e.delete("ns/a")
    assert e.satisfied("ns/a")
    e.creation_observed("ns/b")  # nothing expected: nothing happens
    assert e.satisfied("ns/b")


# ======================================================================
# ReplicaSet helpers
# ======================================================================

def test_slow_start_batches_and_stops_at_first_failing_batch():
    calls = []
    lock = threading.Lock()

    def ok():
        with lock:
            calls.append(1)
    assert slow_start_batch(10, 1, ok) == (10, None)
    assert len(calls) == 10

    counter = [0]

    def fail_from_4th():
        with lock:
            counter[0] += 1
            n = counter[0]
        if n >= 4:
            raise ApiError("Forbidden", "quota")
    done, err = slow_start_batch(20, 1, fail_from_4th)
    # batches of 1 and 2 succeed; the batch of 4 fails; no batch of 8 is tried
    assert counter[0] == 7 and done == 3 and err.reason == "Forbidden"
    assert slow_start_batch(0, 1, ok) == (0, None)


def test_pod_from_template():
    r = rs("web", 2)
    r.spec.template.metadata.annotations["a"] = "b"
    p = pod_from_template(r)
    assert p.metadata.generate_name == "web-" and not p.metadata.name
    assert p.metadata.labels == {"app": "web"} and p.metadata.annotations == {"a": "b"}
    assert pu.controller_ref(p).uid == "uid-web" and p.spec == r.spec.template.spec


def test_replica_set_status():
    r = rs("web", 3, status_replicas=0)
    r.spec.min_ready_seconds = 10
    r.metadata.generation = 4
    pods = [pod("a", labels={"app": "web"}, ready_at=T0), pod("b", labels={"app": "web"}, ready_at=T0 + 8),
            pod("c", labels={"x": "y"})]
    s = calculate_status(r, pods, None, now=T0 + 12)
    assert (s.replicas, s.fully_labeled_replicas, s.ready_replicas, s.available_replicas,
            s.observed_generation) == (3, 2, 2, 1, 4)
    assert not s.conditions
    r.spec.replicas = 5
    s = calculate_status(r, pods, ApiError("Forbidden", "quota exceeded"), now=T0)
    (cond,) = s.conditions
    assert (cond.type, cond.status, cond.reason, cond.message) == ("ReplicaFailure", "True", "FailedCreate",
                                                                   "quota exceeded")
    r.status.CopyFrom(s)
    assert not calculate_status(r, pods, None, now=T0).conditions


# ======================================================================
# Deployment arithmetic
# ======================================================================

@pytest.mark.parametrize("value,total,up,expected", [
    ("25%", 10, True, 3), ("25%", 10, False, 2), ("3", 10, True, 3), ("100%", 7, False, 7),
    ("0%", 10, True, 0), ("10%", 1, True, 1), ("10%", 1, False, 0), ("50%", 0, True, 0),
])
def test_scaled_value(value, total, up, expected):
    assert dep.scaled_value(value, total, up) == expected


def test_fenceposts():
    assert dep.resolve_fenceposts("25%", "25%", 10) == (3, 2)
    assert dep.resolve_fenceposts("0", "0", 10) == (0, 1)  # never both 0
    assert dep.resolve_fenceposts("0%", "10%", 5) == (0, 1)
    assert dep.max_unavailable(deployment(4, unavailable="10")) == 4  # capped at replicas
    assert dep.max_unavailable(deployment(0)) == 0
    assert dep.max_surge(deployment(10, strategy="Recreate")) == 0
    assert dep.max_unavailable(deployment(10, strategy="Recreate")) == 0


def test_new_rs_new_replicas():
    d = deployment(10, surge="3", unavailable="2")
    old, new = rs("old", 10), rs("new", 0)
    assert dep.new_rs_new_replicas(d, [old, new], new) == 3
    old.spec.replicas = 8
    new.spec.replicas = 3
    assert dep.new_rs_new_replicas(d, [old, new], new) == 5
    # pods of the old set still there count until they are gone
    assert dep.new_rs_new_replicas(d, [old, new], new, {"uid-old": 10}) == 3
    assert dep.new_rs_new_replicas(d, [old, new], new, {"uid-old": 9}) == 4
    new.spec.replicas = 9
    old.spec.replicas = 0
    assert dep.new_rs_new_replicas(d, [old, new], new) == 10  # never past replicas
    fresh = rs("new", 0)
    assert dep.new_rs_new_replicas(d, [fresh], fresh) == 10
    assert dep.new_rs_new_replicas(deployment(10, strategy="Recreate"), [old, fresh], fresh) == 10


def test_old_scale_down_respects_min_available():
    d = deployment(10, surge="3", unavailable="2")
    old, new = rs("old", 10), rs("new", 3, available=0, status_replicas=3)
    assert dep.old_scale_down_plan(d, [old], new) == [(old, 8)]
    # a stale status still counting pods already asked to go does not count twice
    old = rs("old", 8, available=10, status_replicas=10)
    assert dep.old_scale_down_plan(d, [old], new) == []
    new = rs("new", 3, available=1)
    assert [(r.metadata.name, n) for r, n in dep.old_scale_down_plan(d, [old], new)] == [("old", 7)]


def test_old_scale_down_takes_unhealthy_first_oldest_first():
    d = deployment(10, surge="0", unavailable="2")
    older = rs("older", 4, available=2, created=T0)
    newer = rs("newer", 6, available=6, created=T0 + 10)
    new = rs("new", 0)
    plan = {r.metadata.name: n for r, n in dep.old_scale_down_plan(d, [newer, older], new)}
    # budget 10 - 8 - 0 = 2: the 2 unavailable pods of "older" go, available pods stay (8 = minimum)
    assert plan == {"older": 2}
    d = deployment(10, surge="0", unavailable="5")
    plan = {r.metadata.name: n for r, n in dep.old_scale_down_plan(d, [newer, older], new)}
    # budget 5: 2 unhealthy, then 3 available (8 available, minimum 5), oldest first
    assert plan == {"older": 0, "newer": 5}


def test_scale_plan_single_active_and_saturated():
    d = deployment(7)
    only = rs("only", 10)
    assert dep.scale_plan(d, only, [rs("old", 0)]) == ([(only, 7)], False)
    assert dep.scale_plan(d, None, [rs("old", 0, created=T0), rs("old2", 0, created=T0 + 1)])[0][0][0] \
        .metadata.name == "old2"  # none active: the newest
    d = deployment(5)
    new = rs("new", 5)
    dep.set_replicas_annotations(new, 5, 7)
    old = rs("old", 2)
    assert dep.scale_plan(d, new, [old]) == ([(old, 0)], False)


def test_proportional_scaling_during_a_rollout():
    # Kubernetes' example: 10 replicas, maxSurge 3, mid-rollout old 8 + new 5,
    # scaled to 15 (max 18): 5 more, shared 8:5
    d = deployment(15, surge="3", unavailable="2")
    d.status.replicas = 13
    old, new = rs("old", 8, created=T0), rs("new", 5, created=T0 + 10)
    for r in (old, new):
        dep.set_replicas_annotations(r, 10, 13)
    plan, annotations = dep.scale_plan(d, new, [old])
    sizes = {r.metadata.name: n for r, n in plan}
    # the documented outcome: 3 more to the old ReplicaSet, 2 to the new
    assert annotations and sizes == {"old": 11, "new": 7}
    # and down to 0: all go
    d0 = deployment(0)
    plan, _ = dep.scale_plan(d0, new, [old])
    assert {r.metadata.name: n for r, n in plan} == {"old": 0, "new": 0}


def test_revisions_and_rollback_annotations():
    d = deployment()
    d.metadata.annotations["kubernetes.io/change-cause"] = "v2"
    d.metadata.annotations[dep.LAST_APPLIED_ANNOTATION] = "{}"
    fresh = rs("fresh", 0)
    assert dep.set_new_rs_annotations(d, fresh, 3, exists=False)
    ann = fresh.metadata.annotations
    assert ann[dep.REVISION_ANNOTATION] == "3" and ann["kubernetes.io/change-cause"] == "v2"
    assert dep.LAST_APPLIED_ANNOTATION not in ann and ann[dep.DESIRED_REPLICAS_ANNOTATION] == "10"
    assert ann[dep.MAX_REPLICAS_ANNOTATION] == "13"
    # an old ReplicaSet brought back (a rollback) gets the next revision, keeps its history
    back = rs("back", 0, revision=1)
    assert dep.set_new_rs_annotations(d, back, 4, exists=True)
    assert back.metadata.annotations[dep.REVISION_ANNOTATION] == "4"
    assert back.metadata.annotations[dep.REVISION_HISTORY_ANNOTATION] == "1"
    assert not dep.set_new_rs_annotations(d, back, 4, exists=True)
    assert dep.set_new_rs_annotations(d, back, 6, exists=True)
    assert back.metadata.annotations[dep.REVISION_HISTORY_ANNOTATION] == "1,4"
    assert dep.max_revision([rs("a", 0, revision=2), rs("b", 0, revision=7), rs("c", 0)]) == 7


def test_find_new_replica_set_ignores_hash_and_takes_oldest():
    d = deployment(image="img:2")
    a = rs("a", 1, image="img:1")
    b = dep.new_replica_set(d, None, 1)
    b.metadata.creation_timestamp = pu.now_rfc3339(T0 + 5)
    c = dep.new_replica_set(d, 1, 1)
    c.metadata.creation_timestamp = pu.now_rfc3339(T0 + 9)
    assert dep.find_new_replica_set(d, [c, a, b]) is b
    assert dep.find_new_replica_set(deployment(image="img:3"), [a, b, c]) is None


def test_history_pruning():
    d = deployment()
    d.spec.revision_history_limit = 2
    olds = [rs(f"r{i}", 0, revision=i, status_replicas=0) for i in range(1, 6)]
    olds[0].spec.replicas = 1  # still has pods: kept even though oldest
    olds[1].metadata.deletion_timestamp = pu.now_rfc3339(T0)  # already going: not counted
    pruned = [r.metadata.name for r in dep.replica_sets_to_prune(d, olds)]
    assert pruned == ["r3"]  # alive: r1 r3 r4 r5 -> 2 over the limit: r1 (busy), r3
    d.spec.revision_history_limit = 10
    assert dep.replica_sets_to_prune(d, olds) == []


# ======================================================================
# conditions
# ======================================================================

def test_status_and_conditions_through_a_rollout():
    d = deployment(4, surge="1", unavailable="0")
    old, new = rs("old", 4, created=T0), rs("new", 1, available=0, status_replicas=1, created=T0 + 1)
    s = dep.rollout_status([old, new], new, d, now=T0 + 100)
    assert (s.replicas, s.updated_replicas, s.available_replicas, s.unavailable_replicas) == (5, 1, 4, 1)
    assert pu.get_condition(s.conditions, "Available").reason == "MinimumReplicasAvailable"
    prog = pu.get_condition(s.conditions, "Progressing")
    assert (prog.status, prog.reason) == ("True", "ReplicaSetUpdated")  # updated 0 -> 1
    d.status.CopyFrom(s)
    # no progress for longer than the deadline: timed out
    d.spec.progress_deadline_seconds = 30
    stuck = dep.rollout_status([old, new], new, d, now=T0 + 131)
    prog = pu.get_condition(stuck.conditions, "Progressing")
    assert (prog.status, prog.reason) == ("False", "ProgressDeadlineExceeded")
    assert dep.stuck_requeue_after(d, s, T0 + 110) == pytest.approx(20)
    # done: every replica updated and available
    done_new = rs("new", 4, created=T0 + 1)
    done = dep.rollout_status([rs("old", 0, created=T0), done_new], done_new, d, now=T0 + 120)
    prog = pu.get_condition(done.conditions, "Progressing")
    assert (prog.status, prog.reason) == ("True", "NewReplicaSetAvailable")
    assert (done.replicas, done.updated_replicas, done.available_replicas) == (4, 4, 4)
    d.status.CopyFrom(done)
    assert dep.stuck_requeue_after(d, done, T0 + 120) is None
    # too few available
    low = dep.calculate_status([rs("x", 4, available=1)], None, d)
    assert pu.get_condition(low.conditions, "Available").status == "False"


def test_set_condition_keeps_transition_time():
    s = apps_pb2.DeploymentStatus()
    dep.set_condition(s, dep.new_condition("Progressing", "True", "A", "m", now=T0))
    dep.set_condition(s, dep.new_condition("Progressing", "True", "A", "m2", now=T0 + 5))
    assert s.conditions[0].message == "m"  # same status and reason: untouched
    dep.set_condition(s, dep.new_condition("Progressing", "True", "B", "m3", now=T0 + 9))
    c = s.conditions[0]
    assert (c.reason, c.last_transition_time, c.last_update_time) == \
        ("B", pu.now_rfc3339(T0), pu.now_rfc3339(T0 + 9))
    dep.set_condition(s, dep.new_condition("Progressing", "False", "C", "m4", now=T0 + 20))
    assert s.conditions[0].last_transition_time == pu.now_rfc3339(T0 + 20) and len(s.conditions) == 1


# ======================================================================
# a rolling update as a model with lagging statuses
# ======================================================================

class Model:
    """Two ReplicaSets with pods; their statuses refresh only on a "status"
    step (so the controller reads stale ones), ReplicaSet controllers converge
    pods to spec on their own steps (deleting not-ready pods first, counting
    status from the pods before they act), kubelets ready new pods one at a
    time."""

    def __init__(self, replicas, surge, unavailable):
        self.d = deployment(replicas, surge=surge, unavailable=unavailable)
        self.old = rs("old", replicas, created=T0)
        self.new = rs("new", 0, created=T0 + 1, status_replicas=0)
        self.pods = {"old": [True] * replicas, "new": []}

    def sets(self):
        return {"old": self.old, "new": self.new}

    def deploy(self):
        d, old, new = self.d, self.old, self.new
        pods_by_rs = {r.metadata.uid: len(self.pods[r.metadata.name]) for r in (old, new)}
        if new.spec.replicas < d.spec.replicas:
            size = dep.new_rs_new_replicas(d, [old, new], new, pods_by_rs)
            if size != new.spec.replicas:
                new.spec.replicas = size
                return
        for r, size in dep.old_scale_down_plan(d, dep.active([old]), new):
            assert size <= r.spec.replicas
            r.spec.replicas = size

    def rs_controller(self, name):
        r, pods = self.sets()[name], self.pods[name]
        before = list(pods)
        if len(pods) < r.spec.replicas:
            pods.extend([False] * (r.spec.replicas - len(pods)))
        elif len(pods) > r.spec.replicas:
            pods.sort()  # not ready (False) first
            del pods[:len(pods) - r.spec.replicas]
        r.status.replicas = len(before)
        r.status.available_replicas = sum(before)

    def status(self, name):
        r, pods = self.sets()[name], self.pods[name]
        r.status.replicas = len(pods)
        r.status.available_replicas = sum(pods)

    def ready_one(self):
        pods = self.pods["new"]
        if False in pods:
            pods[pods.index(False)] = True

    def step(self, action):
        {"deploy": self.deploy, "rs_old": lambda: self.rs_controller("old"),
         "rs_new": lambda: self.rs_controller("new"), "status_old": lambda: self.status("old"),
         "status_new": lambda: self.status("new"), "ready": self.ready_one}[action]()

    def check(self):
        total = sum(len(p) for p in self.pods.values())
        ready = sum(sum(p) for p in self.pods.values())
        assert total <= self.d.spec.replicas + dep.max_surge(self.d)
        assert ready >= self.d.spec.replicas - dep.max_unavailable(self.d)

    def done(self):
        return self.new.spec.replicas == self.d.spec.replicas and self.old.spec.replicas == 0 and \
            self.pods["new"] == [True] * self.d.spec.replicas and not self.pods["old"]


COUNTS = st.sampled_from(["0", "1", "2", "3", "10%", "25%", "50%", "100%"])
ACTIONS = st.sampled_from(["deploy", "rs_old", "rs_new", "status_old", "status_new", "ready"])


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 12), COUNTS, COUNTS, st.lists(ACTIONS, max_size=120))
def test_rolling_update_model_never_breaks_surge_or_availability(replicas, surge, unavailable, actions):
    if unavailable.endswith("%") and int(unavailable[:-1]) > 100:
        return
    m = Model(replicas, surge, unavailable)
    m.check()
    for action in actions:
        m.step(action)
        m.check()
    # then fair rounds finish the rollout
    for _ in range(10 * replicas + 20):
        for action in ("deploy", "rs_old", "rs_new", "ready", "status_old", "status_new"):
            m.step(action)
            m.check()
        if m.done():
            break
    assert m.done(), (m.old.spec.replicas, m.new.spec.replicas, m.pods)
