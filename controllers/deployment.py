"""The Deployment controller: rolls a Deployment's pod template out through
ReplicaSets it owns, one per template ("<deployment>-<pod-template-hash>").

One ``sync(key)`` per Deployment, level-based. It claims ReplicaSets by
selector (adopting orphans, releasing those that no longer match), then:

- paused, or only ``spec.replicas`` changed: scale the ReplicaSets
  (proportionally across old and new during a rolling update) and no more;
- RollingUpdate: scale the new ReplicaSet up by what maxSurge allows, scale
  old ones down by what maxUnavailable allows (unhealthy pods first);
- Recreate: scale old ReplicaSets to 0, wait until their pods are gone, then
  scale the new one up;

and writes status: counts from the ReplicaSets' status, the Available and
Progressing conditions (with progressDeadlineSeconds). Revisions live in the
deployment.kubernetes.io/revision annotation; a rollback is a template that
an older ReplicaSet already has: that ReplicaSet becomes the new one again and
gets the next revision. Old ReplicaSets at 0 beyond revisionHistoryLimit are
deleted.

The module's top half is pure (what to do given the cached objects); the
controller class does the I/O.
"""

from __future__ import annotations

import logging
import math
import time

from apiserver.errors import ApiError
from apiserver.pb import apps_pb2, meta_pb2
from apiserver.selectors import (
    LabelSelector,
    LabelSelectorError,
    label_selector_from_proto,
)
from controllers.events import NORMAL, WARNING, EventRecorder
from controllers.informer import (
    NAMESPACE_INDEX,
    OWNER_INDEX,
    deep_copy,
    meta_namespace_key,
)
from controllers.podutil import (
    POD_TEMPLATE_HASH_LABEL,
    ControllerRefManager,
    compute_hash,
    controller_ref,
    equal_ignore_hash,
    fresh_owner_check,
    get_condition,
    is_pod_active,
    new_controller_ref,
    now_rfc3339,
    parse_time,
)
from controllers.replicaset import ORPHAN_INDEX, WorkloadController, index_orphans

log = logging.getLogger("controllers.deployment")

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
REVISION_HISTORY_ANNOTATION = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS_ANNOTATION = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS_ANNOTATION = "deployment.kubernetes.io/max-replicas"
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
_NOT_COPIED = {REVISION_ANNOTATION, REVISION_HISTORY_ANNOTATION, DESIRED_REPLICAS_ANNOTATION,
               MAX_REPLICAS_ANNOTATION, LAST_APPLIED_ANNOTATION}
MAX_REVISION_HISTORY_CHARS = 2000
NO_DEADLINE = 2 ** 31 - 1

# condition types and reasons, as Kubernetes names them
AVAILABLE, PROGRESSING, REPLICA_FAILURE = "Available", "Progressing", "ReplicaFailure"
MIN_AVAILABLE, MIN_UNAVAILABLE = "MinimumReplicasAvailable", "MinimumReplicasUnavailable"
NEW_RS_CREATED, FOUND_NEW_RS = "NewReplicaSetCreated", "FoundNewReplicaSet"
RS_UPDATED, NEW_RS_AVAILABLE = "ReplicaSetUpdated", "NewReplicaSetAvailable"
TIMED_OUT, FAILED_RS_CREATE = "ProgressDeadlineExceeded", "ReplicaSetCreateError"
PAUSED, RESUMED = "DeploymentPaused", "DeploymentResumed"


# ======================================================================
# Pure: numbers
# ======================================================================

def scaled_value(value: str, total: int, round_up: bool) -> int:
    """An IntOrString count ("3" or "25%") against ``total``."""
    value = value.strip()
    if value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def resolve_fenceposts(max_surge: str, max_unavailable: str, desired: int) -> tuple[int, int]:
    """(surge, unavailable) in pods: surge rounds up, unavailable down; both 0
    would deadlock a rollout, so unavailable becomes 1."""
    surge = scaled_value(max_surge or "0", desired, True)
    unavailable = scaled_value(max_unavailable or "0", desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def is_rolling(d) -> bool:
    return d.spec.strategy.type != "Recreate"


def max_surge(d) -> int:
    if not is_rolling(d):
        return 0
    ru = d.spec.strategy.rolling_update
    return resolve_fenceposts(ru.max_surge or "25%", ru.max_unavailable or "25%", d.spec.replicas)[0]


def max_unavailable(d) -> int:
    if not is_rolling(d) or d.spec.replicas == 0:
        return 0
    ru = d.spec.strategy.rolling_update
    unavailable = resolve_fenceposts(ru.max_surge or "25%", ru.max_unavailable or "25%", d.spec.replicas)[1]
    return min(unavailable, d.spec.replicas)


def spec_replicas(rss) -> int:
    return sum(rs.spec.replicas for rs in rss if rs is not None)


def status_replicas(rss) -> int:
    return sum(rs.status.replicas for rs in rss if rs is not None)


def available_replicas(rss) -> int:
    return sum(rs.status.available_replicas for rs in rss if rs is not None)


def ready_replicas(rss) -> int:
    return sum(rs.status.ready_replicas for rs in rss if rs is not None)


def active(rss) -> list:
    """ReplicaSets that want pods."""
    return [rs for rs in rss if rs is not None and rs.spec.replicas > 0]


def _created(rs) -> tuple:
    return (parse_time(rs.metadata.creation_timestamp) or 0.0, rs.metadata.name)


def by_creation(rss, newest_first: bool = False) -> list:
    return sorted(rss, key=_created, reverse=newest_first)


# ======================================================================
# Pure: revisions and the new ReplicaSet
# ======================================================================

def revision(obj) -> int:
    try:
        return int(obj.metadata.annotations.get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


def max_revision(rss) -> int:
    return max((revision(rs) for rs in rss), default=0)


def find_new_replica_set(d, rss):
    """The oldest ReplicaSet whose template is the Deployment's (ignoring the
    hash label); None when there is none."""
    for rs in by_creation(rss):
        if equal_ignore_hash(rs.spec.template, d.spec.template):
            return rs
    return None


def set_new_rs_annotations(d, rs, new_revision: int, exists: bool) -> bool:
    """Copies the Deployment's annotations onto ``rs`` and raises its revision
    to ``new_revision`` (remembering the one it had in revision-history: a
    rollback); a ReplicaSet about to be created also gets the replicas
    annotations. True when something changed."""
    ann = rs.metadata.annotations
    changed = False
    for k, v in d.metadata.annotations.items():
        if k not in _NOT_COPIED and ann.get(k) != v:
            ann[k] = v
            changed = True
    old_text = ann.get(REVISION_ANNOTATION, "")
    try:
        old = int(old_text) if old_text else 0
    except ValueError:
        return changed
    if old < new_revision:
        ann[REVISION_ANNOTATION] = str(new_revision)
        changed = True
        if old_text:
            history = [r for r in ann.get(REVISION_HISTORY_ANNOTATION, "").split(",") if r]
            history.append(old_text)
            while len(",".join(history)) > MAX_REVISION_HISTORY_CHARS and len(history) > 1:
                history.pop(0)
            ann[REVISION_HISTORY_ANNOTATION] = ",".join(history)
    if not exists and set_replicas_annotations(rs, d.spec.replicas, d.spec.replicas + max_surge(d)):
        changed = True
    return changed


def replicas_annotations_need_update(rs, desired: int, max_replicas: int) -> bool:
    ann = rs.metadata.annotations
    return (ann.get(DESIRED_REPLICAS_ANNOTATION) != str(desired)
            or ann.get(MAX_REPLICAS_ANNOTATION) != str(max_replicas))


def set_replicas_annotations(rs, desired: int, max_replicas: int) -> bool:
    """Records the Deployment size (and its maximum with surge) the
    ReplicaSet was last scaled for: the base of proportional scaling."""
    changed = replicas_annotations_need_update(rs, desired, max_replicas)
    rs.metadata.annotations[DESIRED_REPLICAS_ANNOTATION] = str(desired)
    rs.metadata.annotations[MAX_REPLICAS_ANNOTATION] = str(max_replicas)
    return changed


def desired_replicas_annotation(rs) -> int | None:
    return _int_annotation(rs, DESIRED_REPLICAS_ANNOTATION)


def _int_annotation(rs, key: str) -> int | None:
    try:
        return int(rs.metadata.annotations[key])
    except (KeyError, ValueError):
        return None


def new_replica_set(d, collision_count: int | None, replicas: int) -> apps_pb2.ReplicaSet:
    """The ReplicaSet "<deployment>-<hash>" for the Deployment's template:
    the hash label on its selector, its labels and its pods' labels."""
    template = deep_copy(d.spec.template)
    pod_hash = compute_hash(template, collision_count)
    template.metadata.labels[POD_TEMPLATE_HASH_LABEL] = pod_hash
    rs = apps_pb2.ReplicaSet()
    rs.metadata.name = f"{d.metadata.name}-{pod_hash}"
    rs.metadata.namespace = d.metadata.namespace
    rs.metadata.labels.update(template.metadata.labels)
    rs.metadata.owner_references.append(new_controller_ref(d))
    rs.spec.replicas = replicas
    rs.spec.min_ready_seconds = d.spec.min_ready_seconds
    rs.spec.selector.CopyFrom(d.spec.selector)
    rs.spec.selector.match_labels[POD_TEMPLATE_HASH_LABEL] = pod_hash
    rs.spec.template.CopyFrom(template)
    return rs


# ======================================================================
# Pure: how many replicas where
# ======================================================================

def new_rs_new_replicas(d, all_rss, new_rs, pods_by_rs: dict[str, int] | None = None) -> int:
    """The size the new ReplicaSet may grow to now. RollingUpdate: never past
    replicas + maxSurge pods in all, counting for each ReplicaSet the larger of
    its spec and the active pods it still has (pods of a ReplicaSet being
    scaled down count until they are gone); Recreate: the full count."""
    if not is_rolling(d):
        return d.spec.replicas
    pods_by_rs = pods_by_rs or {}
    current = sum(max(rs.spec.replicas, pods_by_rs.get(rs.metadata.uid, 0))
                  for rs in all_rss if rs is not None)
    allowed = d.spec.replicas + max_surge(d)
    if current >= allowed:
        return new_rs.spec.replicas
    up = min(allowed - current, d.spec.replicas - new_rs.spec.replicas)
    return new_rs.spec.replicas + max(up, 0)


def _effective_available(rs) -> int:
    """Available pods that will survive a scale-down already asked for: the
    ReplicaSet's status may predate it (the controller counts pods before it
    deletes), and it deletes unavailable pods first."""
    return max(0, min(rs.status.available_replicas, rs.spec.replicas))


def old_scale_down_plan(d, old_rss, new_rs) -> list[tuple]:
    """(ReplicaSet, new size) for the old ReplicaSets of a rolling update, so
    that at least replicas - maxUnavailable pods stay available: first the
    unavailable pods of old ReplicaSets (oldest first), then available ones
    down to the minimum. Sizes only go down."""
    old_rss = [rs for rs in old_rss if rs is not None]
    if spec_replicas(old_rss) == 0:
        return []
    min_available = d.spec.replicas - max_unavailable(d)
    new_unavailable = max(0, new_rs.spec.replicas - new_rs.status.available_replicas) if new_rs else 0
    max_scaled_down = spec_replicas([*old_rss, new_rs]) - min_available - new_unavailable
    if max_scaled_down <= 0:
        return []
    sizes = {rs.metadata.uid: rs.spec.replicas for rs in old_rss}
    # 1: pods that are not available anyway
    budget = max_scaled_down
    for rs in by_creation(old_rss):
        if budget <= 0:
            break
        unhealthy = sizes[rs.metadata.uid] - _effective_available(rs)
        if unhealthy <= 0:
            continue
        cut = min(budget, unhealthy)
        sizes[rs.metadata.uid] -= cut
        budget -= cut
    # 2: available pods beyond the minimum
    available = sum(min(_effective_available(rs), sizes[rs.metadata.uid]) for rs in old_rss)
    if new_rs is not None:
        available += _effective_available(new_rs)
    surplus = available - min_available
    for rs in by_creation(old_rss):
        if surplus <= 0:
            break
        size = sizes[rs.metadata.uid]
        if size == 0:
            continue
        cut = min(size, surplus)
        sizes[rs.metadata.uid] = size - cut
        surplus -= cut
    return [(rs, sizes[rs.metadata.uid]) for rs in old_rss if sizes[rs.metadata.uid] != rs.spec.replicas]


def is_saturated(d, rs) -> bool:
    return (rs is not None and rs.spec.replicas == d.spec.replicas
            and desired_replicas_annotation(rs) == d.spec.replicas
            and rs.status.available_replicas == d.spec.replicas)


def find_active_or_latest(new_rs, old_rss):
    """The one ReplicaSet with replicas (the newest if none has any); None when
    several have replicas."""
    if new_rs is None and not old_rss:
        return None
    olds = by_creation(old_rss, newest_first=True)
    live = active([*olds, new_rs])
    if not live:
        return new_rs if new_rs is not None else olds[0]
    return live[0] if len(live) == 1 else None


def _fraction(rs, d, surge: int) -> int:
    """How many replicas ``rs`` gains (or loses) when the Deployment's size
    changes, in proportion to the size it had at the last one."""
    if d.spec.replicas == 0:
        return -rs.spec.replicas
    target = d.spec.replicas + surge
    annotated = _int_annotation(rs, MAX_REPLICAS_ANNOTATION)
    if not annotated:
        annotated = d.status.replicas or 1
    exact = rs.spec.replicas * target / annotated
    return math.floor(exact + 0.5) - rs.spec.replicas


def scale_plan(d, new_rs, old_rss) -> tuple[list[tuple], bool]:
    """(ReplicaSet, size) pairs for a change of ``spec.replicas`` (or a paused
    Deployment), and whether the replicas annotations are to be refreshed too.
    One active ReplicaSet takes the whole count; a saturated new ReplicaSet
    zeroes the old ones; during a rolling update the difference is shared out
    in proportion to each ReplicaSet's size, the leftover to the largest."""
    target = find_active_or_latest(new_rs, old_rss)
    if target is not None:
        return ([(target, d.spec.replicas)] if target.spec.replicas != d.spec.replicas else []), False
    if is_saturated(d, new_rs):
        return [(rs, 0) for rs in active(old_rss)], False
    if not is_rolling(d):
        return [], False
    live = active([*old_rss, new_rs])
    surge = max_surge(d)
    allowed = d.spec.replicas + surge if d.spec.replicas > 0 else 0
    to_add = allowed - spec_replicas(live)
    # larger first; on a tie newer first when growing, older first when shrinking
    newer_first = -1 if to_add > 0 else 1
    live.sort(key=lambda rs: (-rs.spec.replicas, newer_first * _created(rs)[0], rs.metadata.name))
    sizes = []
    added = 0
    for rs in live:
        size = rs.spec.replicas
        if to_add != 0 and size > 0 and added != to_add:
            share = _fraction(rs, d, surge)
            allowed_left = to_add - added
            share = min(share, allowed_left) if to_add > 0 else max(share, allowed_left)
            size += share
            added += share
        sizes.append(size)
    if live and to_add != 0:
        sizes[0] = max(0, sizes[0] + to_add - added)
    return list(zip(live, sizes)), True


def replica_sets_to_prune(d, old_rss) -> list:
    """Old ReplicaSets beyond revisionHistoryLimit, oldest revision first,
    that have scaled to nothing and are not already going."""
    if not d.spec.HasField("revision_history_limit"):
        return []
    alive = [rs for rs in old_rss if not rs.metadata.deletion_timestamp]
    excess = len(alive) - d.spec.revision_history_limit
    if excess <= 0:
        return []
    alive.sort(key=lambda rs: (revision(rs), _created(rs)))
    return [rs for rs in alive[:excess]
            if rs.status.replicas == 0 and rs.spec.replicas == 0
            and rs.metadata.generation <= rs.status.observed_generation]


# ======================================================================
# Pure: status and conditions
# ======================================================================

def new_condition(type_: str, status: str, reason: str, message: str, now: float | None = None) -> meta_pb2.Condition:
    t = now_rfc3339(now)
    return meta_pb2.Condition(type=type_, status=status, reason=reason, message=message,
                              last_update_time=t, last_transition_time=t)


def set_condition(status, cond: meta_pb2.Condition) -> None:
    """Kubernetes' SetDeploymentCondition: nothing happens when status and
    reason are unchanged; the transition time survives a reason change."""
    current = get_condition(status.conditions, cond.type)
    if current is not None and current.status == cond.status and current.reason == cond.reason:
        return
    if current is not None and current.status == cond.status:
        cond.last_transition_time = current.last_transition_time
    remove_condition(status, cond.type)
    status.conditions.append(cond)


def remove_condition(status, type_: str) -> None:
    kept = [c for c in status.conditions if c.type != type_]
    if len(kept) != len(status.conditions):
        del status.conditions[:]
        status.conditions.extend(kept)


def has_progress_deadline(d) -> bool:
    return d.spec.HasField("progress_deadline_seconds") and d.spec.progress_deadline_seconds != NO_DEADLINE


def calculate_status(all_rss, new_rs, d, now: float | None = None) -> apps_pb2.DeploymentStatus:
    """Counts from the ReplicaSets and the Available condition; other
    conditions carried over."""
    status = apps_pb2.DeploymentStatus()
    status.CopyFrom(d.status)
    available = available_replicas(all_rss)
    status.observed_generation = d.metadata.generation
    status.replicas = status_replicas(all_rss)
    status.updated_replicas = new_rs.status.replicas if new_rs is not None else 0
    status.ready_replicas = ready_replicas(all_rss)
    status.available_replicas = available
    status.unavailable_replicas = max(0, spec_replicas(all_rss) - available)
    if available >= d.spec.replicas - max_unavailable(d):
        set_condition(status, new_condition(AVAILABLE, "True", MIN_AVAILABLE,
                                            "Deployment has minimum availability.", now))
    else:
        set_condition(status, new_condition(AVAILABLE, "False", MIN_UNAVAILABLE,
                                            "Deployment does not have minimum availability.", now))
    return status


def deployment_complete(d, status) -> bool:
    n = d.spec.replicas
    return (status.updated_replicas == n and status.replicas == n and status.available_replicas == n
            and status.observed_generation >= d.metadata.generation)


def deployment_progressing(d, status) -> bool:
    old = d.status
    return (status.updated_replicas > old.updated_replicas
            or status.replicas - status.updated_replicas < old.replicas - old.updated_replicas
            or status.ready_replicas > old.ready_replicas
            or status.available_replicas > old.available_replicas)


def deployment_timed_out(d, status, now: float) -> bool:
    if not has_progress_deadline(d):
        return False
    cond = get_condition(status.conditions, PROGRESSING)
    if cond is None or cond.reason == NEW_RS_AVAILABLE:
        return False
    if cond.reason == TIMED_OUT:
        return True
    since = parse_time(cond.last_update_time)
    return since is not None and since + d.spec.progress_deadline_seconds < now


def rollout_status(all_rss, new_rs, d, now: float | None = None) -> apps_pb2.DeploymentStatus:
    """calculate_status plus the Progressing condition of a rollout: complete
    (NewReplicaSetAvailable), progressing (ReplicaSetUpdated, its update time
    refreshed at each step), or stuck past the deadline
    (ProgressDeadlineExceeded); and a ReplicaSet's ReplicaFailure copied up."""
    now = time.time() if now is None else now
    status = calculate_status(all_rss, new_rs, d, now)
    if not has_progress_deadline(d):
        remove_condition(status, PROGRESSING)
    current = get_condition(d.status.conditions, PROGRESSING)
    finished = (status.replicas == status.updated_replicas and current is not None
                and current.reason == NEW_RS_AVAILABLE)
    what = f'ReplicaSet "{new_rs.metadata.name}"' if new_rs is not None else f'Deployment "{d.metadata.name}"'
    if has_progress_deadline(d) and not finished:
        if deployment_complete(d, status):
            set_condition(status, new_condition(PROGRESSING, "True", NEW_RS_AVAILABLE,
                                                f"{what} has successfully progressed.", now))
        elif deployment_progressing(d, status):
            cond = new_condition(PROGRESSING, "True", RS_UPDATED, f"{what} is progressing.", now)
            if current is not None and current.status == "True":
                cond.last_transition_time = current.last_transition_time
            remove_condition(status, PROGRESSING)
            status.conditions.append(cond)
        elif deployment_timed_out(d, status, now):
            set_condition(status, new_condition(PROGRESSING, "False", TIMED_OUT,
                                                f"{what} has timed out progressing.", now))
    failure = None
    for rs in [r for r in all_rss if r is not None]:
        failure = get_condition(rs.status.conditions, REPLICA_FAILURE)
        if failure is not None and failure.status == "True":
            break
        failure = None
    if failure is not None:
        set_condition(status, new_condition(REPLICA_FAILURE, failure.status, failure.reason,
                                            failure.message, now))
    else:
        remove_condition(status, REPLICA_FAILURE)
    return status


def stuck_requeue_after(d, status, now: float) -> float | None:
    """Seconds until a rollout that has not progressed would pass its
    deadline (when to look again); None when there is nothing to wait for."""
    current = get_condition(d.status.conditions, PROGRESSING)
    if not has_progress_deadline(d) or current is None:
        return None
    if deployment_complete(d, status) or current.reason == TIMED_OUT:
        return None
    since = parse_time(current.last_update_time)
    if since is None:
        return None
    return max(0.0, since + d.spec.progress_deadline_seconds - now)


# ======================================================================
# The controller
# ======================================================================

class DeploymentController(WorkloadController):
    name = "deployment-controller"

    def __init__(self, client, informers, *, workers: int = 2,
                 recorder: EventRecorder | None = None) -> None:
        """``informers`` is a SharedInformerFactory: the controller takes its
        "deployments", "replicasets" and "pods" informers; start the factory
        and then ``start()`` this."""
        self.client = client
        self.d_informer = informers.informer("deployments")
        self.rs_informer = informers.informer("replicasets")
        self.pod_informer = informers.informer("pods")
        super().__init__([self.d_informer, self.rs_informer, self.pod_informer], workers)
        self.d_store, self.rs_store, self.pod_store = (
            self.d_informer.store, self.rs_informer.store, self.pod_informer.store)
        self.rs_store.add_indexer(ORPHAN_INDEX, index_orphans)
        self.recorder = self._recorder(client, recorder)
        self.d_informer.add_handler(self.enqueue, lambda old, cur: self.enqueue(cur), self.enqueue)
        self.rs_informer.add_handler(self._add_rs, self._update_rs, self._enqueue_owner)
        self.pod_informer.add_handler(on_delete=self._delete_pod)

    # ---- event handlers ----

    def _add_rs(self, rs) -> None:
        if rs.metadata.deletion_timestamp:
            self._enqueue_owner(rs)
            return
        ref = controller_ref(rs)
        if ref is not None:
            d = self._resolve(rs.metadata.namespace, ref)
            if d is not None:
                self.enqueue(d)
            return
        for d in self._deployments_matching(rs):
            self.enqueue(d)

    def _update_rs(self, old, cur) -> None:
        if old.metadata.resource_version == cur.metadata.resource_version:
            return
        old_ref, cur_ref = controller_ref(old), controller_ref(cur)
        ref_changed = old_ref != cur_ref
        if ref_changed and old_ref is not None:
            d = self._resolve(old.metadata.namespace, old_ref)
            if d is not None:
                self.enqueue(d)
        if cur_ref is not None:
            d = self._resolve(cur.metadata.namespace, cur_ref)
            if d is not None:
                self.enqueue(d)
            return
        if ref_changed or old.metadata.labels != cur.metadata.labels:
            for d in self._deployments_matching(cur):
                self.enqueue(d)

    def _enqueue_owner(self, rs) -> None:
        ref = controller_ref(rs)
        if ref is not None:
            d = self._resolve(rs.metadata.namespace, ref)
            if d is not None:
                self.enqueue(d)

    def _delete_pod(self, pod) -> None:
        """A pod gone can unblock a rollout: Recreate waits for old pods to go,
        and a rolling update counts old pods until they are gone."""
        ref = controller_ref(pod)
        if ref is None or ref.kind != "ReplicaSet":
            return
        rs = self.rs_store.get_by_name(pod.metadata.namespace, ref.name)
        if rs is None or rs.metadata.uid != ref.uid:
            return
        self._enqueue_owner(rs)

    def _resolve(self, namespace: str, ref):
        if ref.kind != "Deployment":
            return None
        d = self.d_store.get_by_name(namespace, ref.name)
        if d is None or d.metadata.uid != ref.uid:
            return None
        return d

    def _deployments_matching(self, rs) -> list:
        found = []
        for d in self.d_store.by_index(NAMESPACE_INDEX, rs.metadata.namespace):
            sel = _selector(d)
            if sel is not None and sel.matches(rs.metadata.labels):
                found.append(d)
        return found

    # ---- sync ----

    def sync(self, key: str) -> None:
        cached = self.d_store.get(key)
        if cached is None:
            return
        d = deep_copy(cached)
        selector = _selector(d)
        if selector is None:
            self.recorder.event(d, WARNING, "SelectingAll",
                                "This deployment is selecting all pods. A non-empty selector is required.")
            if d.status.observed_generation < d.metadata.generation:
                d.status.observed_generation = d.metadata.generation
                self.client.update_status(d)
            return
        rss = self._claim_replica_sets(d, selector)
        if d.metadata.deletion_timestamp:
            new_rs, olds, d = self._new_and_old(d, rss, create=False)
            self._write_status(d, calculate_status([*olds, new_rs], new_rs, d))
            return
        d = self._check_paused_conditions(d)
        if d.spec.paused or self._is_scaling_event(d, rss):
            self._sync_scale(d, rss)
        elif is_rolling(d):
            self._rollout_rolling(d, rss)
        else:
            self._rollout_recreate(d, rss)

    def _claim_replica_sets(self, d, selector: LabelSelector) -> list:
        candidates = {rs.metadata.uid: rs for rs in
                      (*self.rs_store.by_index(OWNER_INDEX, d.metadata.uid),
                       *self.rs_store.by_index(ORPHAN_INDEX, d.metadata.namespace))}
        manager = ControllerRefManager(self.client, "replicasets", d, selector.matches,
                                       fresh_owner_check(self.client, "deployments", d))
        return manager.claim(candidates.values())

    def _is_scaling_event(self, d, rss) -> bool:
        new_rs = find_new_replica_set(d, rss)
        olds = [rs for rs in rss if rs is not new_rs]
        for rs in active([*olds, new_rs]):
            desired = desired_replicas_annotation(rs)
            if desired is not None and desired != d.spec.replicas:
                return True
        return False

    def _check_paused_conditions(self, d):
        if not has_progress_deadline(d):
            return d
        cond = get_condition(d.status.conditions, PROGRESSING)
        if cond is not None and cond.reason == TIMED_OUT:
            return d
        paused_noted = cond is not None and cond.reason == PAUSED
        if d.spec.paused and not paused_noted:
            set_condition(d.status, new_condition(PROGRESSING, "Unknown", PAUSED, "Deployment is paused"))
        elif not d.spec.paused and paused_noted:
            set_condition(d.status, new_condition(PROGRESSING, "Unknown", RESUMED, "Deployment is resumed"))
        else:
            return d
        return self.client.update_status(d)

    # ---- the new ReplicaSet and revisions ----

    def _new_and_old(self, d, rss, *, create: bool):
        """(new ReplicaSet or None, old ReplicaSets, the Deployment as now
        stored), creating the new one when ``create``; revisions synced."""
        new_rs = find_new_replica_set(d, rss)
        olds = [rs for rs in rss if rs is not new_rs]
        new_revision = max_revision(olds) + 1
        if new_rs is not None:
            new_rs, d = self._sync_existing_new_rs(d, new_rs, new_revision)
        elif create:
            new_rs, d = self._create_new_rs(d, olds, new_revision)
        return new_rs, olds, d

    def _sync_existing_new_rs(self, d, new_rs, new_revision: int):
        rs = deep_copy(new_rs)
        changed = set_new_rs_annotations(d, rs, new_revision, exists=True)
        if rs.spec.min_ready_seconds != d.spec.min_ready_seconds:
            rs.spec.min_ready_seconds = d.spec.min_ready_seconds
            changed = True
        if changed:
            rs = self.client.update(rs)
        d = self._set_deployment_revision(d, rs.metadata.annotations.get(REVISION_ANNOTATION, ""))
        if has_progress_deadline(d) and get_condition(d.status.conditions, PROGRESSING) is None:
            set_condition(d.status, new_condition(PROGRESSING, "True", FOUND_NEW_RS,
                                                  f'Found new replica set "{rs.metadata.name}"'))
            d = self.client.update_status(d)
        return rs, d

    def _create_new_rs(self, d, olds, new_revision: int):
        collision = d.status.collision_count if d.status.HasField("collision_count") else None
        rs = new_replica_set(d, collision, 0)
        rs.spec.replicas = new_rs_new_replicas(d, [*olds, rs], rs, self._active_pods_by_rs(olds))
        set_new_rs_annotations(d, rs, new_revision, exists=False)
        try:
            created = self.client.create(rs)
        except ApiError as e:
            if e.reason == "AlreadyExists":
                existing = self.client.get("replicasets", rs.metadata.name, rs.metadata.namespace)
                ref = controller_ref(existing)
                if ref is not None and ref.uid == d.metadata.uid and \
                        equal_ignore_hash(existing.spec.template, d.spec.template):
                    return existing, d  # ours, not yet in the cache
                # a hash collision: the next attempt hashes with a new count
                d.status.collision_count = (collision or 0) + 1
                self.client.update_status(d)
                raise ApiError("Conflict", f'replica set "{rs.metadata.name}" exists with another '
                               f"template; collisionCount is now {d.status.collision_count}") from None
            if e.reason == "Forbidden" and "being terminated" in e.message:
                raise
            if has_progress_deadline(d):
                set_condition(d.status, new_condition(PROGRESSING, "False", FAILED_RS_CREATE,
                                                      f"Failed to create new replica set "
                                                      f'"{rs.metadata.name}": {e.message}'))
                self.client.update_status(d)
            raise
        if created.spec.replicas > 0:
            self.recorder.event(d, NORMAL, "ScalingReplicaSet",
                                f"Scaled up replica set {created.metadata.name} to {created.spec.replicas}")
        d = self._set_deployment_revision(d, str(new_revision))
        if has_progress_deadline(d):
            set_condition(d.status, new_condition(PROGRESSING, "True", NEW_RS_CREATED,
                                                  f'Created new replica set "{created.metadata.name}"'))
            d = self.client.update_status(d)
        return created, d

    def _set_deployment_revision(self, d, rev: str):
        if not rev or d.metadata.annotations.get(REVISION_ANNOTATION) == rev:
            return d
        status = apps_pb2.DeploymentStatus()
        status.CopyFrom(d.status)  # local condition changes not yet written
        d = self.client.patch("deployments", d.metadata.name,
                              {"metadata": {"resourceVersion": d.metadata.resource_version,
                                            "annotations": {REVISION_ANNOTATION: rev}}},
                              d.metadata.namespace)
        d.status.CopyFrom(status)
        return d

    # ---- scaling ----

    def _active_pods_by_rs(self, rss) -> dict[str, int]:
        return {rs.metadata.uid: sum(is_pod_active(p) for p in
                                     self.pod_store.by_index(OWNER_INDEX, rs.metadata.uid))
                for rs in rss if rs is not None}

    def _scale(self, rs, size: int, d, *, annotations: bool = True):
        """Sets ``rs``'s replicas (and its replicas annotations); returns the
        stored ReplicaSet and whether its size changed."""
        surge = max_surge(d)
        size_changed = rs.spec.replicas != size
        if not size_changed and not (annotations and replicas_annotations_need_update(
                rs, d.spec.replicas, d.spec.replicas + surge)):
            return rs, False
        new = deep_copy(rs)
        new.spec.replicas = size
        set_replicas_annotations(new, d.spec.replicas, d.spec.replicas + surge)
        try:
            new = self.client.update(new)
        except ApiError as e:
            if e.reason != "Conflict":
                raise
            # usually the ReplicaSet controller wrote status meanwhile; the
            # decision stands if the spec it was made on has not changed
            fresh = self.client.get("replicasets", rs.metadata.name, rs.metadata.namespace)
            if fresh.metadata.uid != rs.metadata.uid or fresh.spec != rs.spec:
                raise
            fresh.spec.replicas = size
            set_replicas_annotations(fresh, d.spec.replicas, d.spec.replicas + surge)
            new = self.client.update(fresh)
        if size_changed:
            direction = "up" if size > rs.spec.replicas else "down"
            self.recorder.event(d, NORMAL, "ScalingReplicaSet",
                                f"Scaled {direction} replica set {rs.metadata.name} to {size} "
                                f"from {rs.spec.replicas}")
        return new, size_changed

    def _sync_scale(self, d, rss) -> None:
        """Paused, or only the size changed: scale, no rollout."""
        new_rs, olds, d = self._new_and_old(d, rss, create=False)
        plan, annotations = scale_plan(d, new_rs, olds)
        scaled = {}
        for rs, size in plan:
            scaled[rs.metadata.uid], _ = self._scale(rs, size, d, annotations=annotations)
        new_rs = scaled.get(new_rs.metadata.uid, new_rs) if new_rs is not None else None
        olds = [scaled.get(rs.metadata.uid, rs) for rs in olds]
        if d.spec.paused:
            self._cleanup(d, olds)
        self._write_status(d, calculate_status([*olds, new_rs], new_rs, d))

    # ---- strategies ----

    def _rollout_rolling(self, d, rss) -> None:
        new_rs, olds, d = self._new_and_old(d, rss, create=True)
        all_rss = [*olds, new_rs]
        if new_rs is not None and new_rs.spec.replicas != d.spec.replicas:
            if new_rs.spec.replicas > d.spec.replicas:
                size = d.spec.replicas
            else:
                size = new_rs_new_replicas(d, all_rss, new_rs, self._active_pods_by_rs(all_rss))
            _, scaled = self._scale(new_rs, size, d)
            if scaled:
                self._sync_rollout_status(all_rss, new_rs, d)
                return
        scaled_down = False
        for rs, size in old_scale_down_plan(d, active(olds), new_rs):
            _, changed = self._scale(rs, size, d)
            scaled_down = scaled_down or changed
        if not scaled_down and deployment_complete(d, d.status):
            self._cleanup(d, olds)
        self._sync_rollout_status(all_rss, new_rs, d)

    def _rollout_recreate(self, d, rss) -> None:
        new_rs, olds, d = self._new_and_old(d, rss, create=False)
        scaled_down = False
        for rs in active(olds):
            _, changed = self._scale(rs, 0, d)
            scaled_down = scaled_down or changed
        if scaled_down or self._old_pods_running(new_rs, olds):
            self._sync_rollout_status([*olds, new_rs], new_rs, d)
            return
        if new_rs is None:
            new_rs, olds, d = self._new_and_old(d, rss, create=True)
        if new_rs is not None and new_rs.spec.replicas != d.spec.replicas:
            self._scale(new_rs, d.spec.replicas, d)
        if deployment_complete(d, d.status):
            self._cleanup(d, olds)
        self._sync_rollout_status([*olds, new_rs], new_rs, d)

    def _old_pods_running(self, new_rs, olds) -> bool:
        """Any pod of an old ReplicaSet still there (terminating ones too), or
        one its status still counts."""
        if status_replicas(olds) > 0:
            return True
        for rs in olds:
            for pod in self.pod_store.by_index(OWNER_INDEX, rs.metadata.uid):
                if pod.status.phase not in ("Succeeded", "Failed"):
                    return True
        return False

    def _cleanup(self, d, olds) -> None:
        for rs in replica_sets_to_prune(d, olds):
            try:
                self.client.delete("replicasets", rs.metadata.name, rs.metadata.namespace,
                                   uid=rs.metadata.uid)
            except ApiError as e:
                if e.reason not in ("NotFound", "Conflict"):
                    raise

    # ---- status ----

    def _sync_rollout_status(self, all_rss, new_rs, d) -> None:
        now = time.time()
        status = rollout_status(all_rss, new_rs, d, now)
        if status == d.status:
            after = stuck_requeue_after(d, status, now)
            if after is not None:
                self.queue.add_after(meta_namespace_key(d), after + 1.0)
            return
        self._write_status(d, status)

    def _write_status(self, d, status) -> None:
        if status == d.status:
            return
        d = deep_copy(d)
        d.status.CopyFrom(status)
        self.client.update_status(d)


def _selector(d) -> LabelSelector | None:
    try:
        sel = label_selector_from_proto(d.spec.selector)
    except LabelSelectorError:
        return None
    return None if sel.empty else sel
