"""What the Deployment controller decides, as pure functions of the cached
objects: surge and unavailability arithmetic, which ReplicaSet is new, how
far to scale each one, revisions and their annotations, status and the
Progressing / Available conditions. The controller (``deployment``) does the
I/O; tests drive these directly."""

from __future__ import annotations

import math
import time

from apiserver.pb import apps_pb2
from controllers.informer import (
    deep_copy,
)
from controllers.podutil import (
    POD_TEMPLATE_HASH_LABEL,
    compute_hash,
    equal_ignore_hash,
    get_condition,
    new_controller_ref,
    now_rfc3339,
    parse_time,
)

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

def new_condition(type_: str, status: str, reason: str, message: str,
                  now: float | None = None) -> apps_pb2.DeploymentCondition:
    t = now_rfc3339(now)
    return apps_pb2.DeploymentCondition(type=type_, status=status, reason=reason, message=message,
                                        last_update_time=t, last_transition_time=t)


def set_condition(status, cond: apps_pb2.DeploymentCondition) -> None:
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
