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

What to do given the cached objects is decided by the pure functions of
``deploymentutil``; this class does the I/O.
"""

from __future__ import annotations

import logging
import time

from apiserver.errors import ApiError
from apiserver.pb import apps_pb2
from apiserver.selectors import (
    LabelSelector,
    LabelSelectorError,
    label_selector_from_proto,
)
from controllers.deploymentutil import (
    FAILED_RS_CREATE,
    FOUND_NEW_RS,
    NEW_RS_CREATED,
    PAUSED,
    PROGRESSING,
    RESUMED,
    REVISION_ANNOTATION,
    TIMED_OUT,
    active,
    calculate_status,
    deployment_complete,
    desired_replicas_annotation,
    find_new_replica_set,
    has_progress_deadline,
    is_rolling,
    max_revision,
    max_surge,
    new_condition,
    new_replica_set,
    new_rs_new_replicas,
    old_scale_down_plan,
    replica_sets_to_prune,
    replicas_annotations_need_update,
    rollout_status,
    scale_plan,
    set_condition,
    set_new_rs_annotations,
    set_replicas_annotations,
    status_replicas,
    stuck_requeue_after,
)
from controllers.events import NORMAL, WARNING, EventRecorder
from controllers.informer import (
    NAMESPACE_INDEX,
    OWNER_INDEX,
    deep_copy,
    meta_namespace_key,
)
from controllers.podutil import (
    ControllerRefManager,
    controller_ref,
    equal_ignore_hash,
    fresh_owner_check,
    get_condition,
    is_pod_active,
)
from controllers.base import Controller
from controllers.replicaset import ORPHAN_INDEX, index_orphans

log = logging.getLogger("controllers.deployment")


# ======================================================================
# The controller
# ======================================================================

class DeploymentController(Controller):
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
