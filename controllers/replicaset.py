"""The ReplicaSet controller: keeps ``spec.replicas`` pods matching each
ReplicaSet's selector, owned by it, and reports how many there are.

One ``sync(key)`` per ReplicaSet, level-based (running it twice does no
harm): it reads the caches, claims pods (adopts matching orphans, releases
owned pods whose labels no longer match), creates missing pods in slow-start
batches or deletes the surplus in Kubernetes' order, then writes status.
Expectations keep it from acting again on a ReplicaSet before its cache has
seen the pods it created or deleted, so a lagging informer never causes a
double create.

"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from apiserver.errors import ApiError
from apiserver.pb import apps_pb2, core_pb2
from apiserver.selectors import (
    EQUALS,
    IN,
    LabelSelector,
    LabelSelectorError,
    label_selector_from_proto,
)
from controllers.base import Controller
from controllers.events import NORMAL, WARNING, EventRecorder
from controllers.informer import (
    NAMESPACE_INDEX,
    OWNER_INDEX,
    meta_namespace_key,
    split_meta_namespace_key,
)
from controllers.podutil import (
    ControllerExpectations,
    ControllerRefManager,
    controller_ref,
    fresh_owner_check,
    get_condition,
    is_pod_active,
    is_pod_ready,
    new_controller_ref,
    now_rfc3339,
    parse_time,
    pods_to_delete,
)

log = logging.getLogger("controllers.replicaset")

BURST_REPLICAS = 500  # creations or deletions per sync, as Kubernetes
SLOW_START_INITIAL_BATCH = 1
STATUS_UPDATE_RETRIES = 1
API_CALL_THREADS = 16  # concurrent create/delete calls of one controller
# seconds a sync waits for more pod events when they can only change the
# status (a pod's status or binding; creations while more are awaited)
STATUS_SYNC_DELAY = 0.5
ORPHAN_INDEX = "orphan"  # namespace of objects that have no controller


def index_orphans(obj) -> list[str]:
    return [] if controller_ref(obj) is not None else [obj.metadata.namespace]


def slow_start_batch(count: int, initial: int, call: Callable[[], None],
                     pool: ThreadPoolExecutor | None = None) -> tuple[int, Exception | None]:
    """Runs ``call`` ``count`` times in batches of initial, 2*initial, 4*initial,
    ... (a batch's calls concurrently on ``pool``), stopping after the first
    batch with a failure, so a call that fails every time (quota, a bad
    template) fails once or twice rather than ``count`` times. Returns (calls
    that succeeded, the first error or None); calls never started are neither."""
    done = 0
    batch = min(count, initial)
    while batch > 0:
        if pool is None or batch == 1:
            results = [_attempt(call) for _ in range(batch)]
        else:
            results = list(pool.map(lambda _: _attempt(call), range(batch)))
        errors = [e for e in results if e is not None]
        done += batch - len(errors)
        if errors:
            return done, errors[0]
        count -= batch
        batch = min(2 * batch, count)
    return done, None


def _attempt(call: Callable[[], None]) -> Exception | None:
    try:
        call()
        return None
    except Exception as e:  # handed back to the caller, who raises the first
        return e


def selector_matcher(selector: LabelSelector) -> Callable[[object], bool]:
    """``selector.matches``, as a plain comparison of label values when every
    requirement is an exact match (the usual ``matchLabels``)."""
    exact = []
    for r in selector.requirements:
        if r.operator not in (EQUALS, IN) or len(r.values) != 1:
            return selector.matches
        exact.append((r.key, r.values[0]))
    items = tuple(exact)

    def matches(labels) -> bool:
        for k, v in items:
            if labels.get(k) != v:
                return False
        return True
    return matches


def pod_from_template(rs: apps_pb2.ReplicaSet) -> core_pb2.Pod:
    """A new pod of ``rs``: the template's labels, annotations, finalizers and
    spec, a generated name "<rs>-xxxxx" and rs as its controller."""
    template = rs.spec.template
    pod = core_pb2.Pod()
    pod.metadata.namespace = rs.metadata.namespace
    pod.metadata.generate_name = f"{rs.metadata.name}-"
    pod.metadata.labels.update(template.metadata.labels)
    pod.metadata.annotations.update(template.metadata.annotations)
    pod.metadata.finalizers.extend(template.metadata.finalizers)
    pod.metadata.owner_references.append(new_controller_ref(rs))
    pod.spec.CopyFrom(template.spec)
    return pod


def calculate_status(rs: apps_pb2.ReplicaSet, pods: list[core_pb2.Pod],
                     manage_error: Exception | None, now: float | None = None) -> apps_pb2.ReplicaSetStatus:
    """The status ``rs`` should report for the active pods it controls
    (``pods``, as they were before this sync acted); a ReplicaFailure
    condition while creating or deleting fails."""
    now = time.time() if now is None else now
    template_items = tuple(rs.spec.template.metadata.labels.items())
    min_ready = rs.spec.min_ready_seconds
    labeled = ready = available = 0
    # one pass; the first Ready condition decides both ready and available
    for p in pods:
        if template_items:
            labels = p.metadata.labels
            for k, v in template_items:
                if labels.get(k) != v:
                    break
            else:
                labeled += 1
        else:
            labeled += 1
        for c in p.status.conditions:
            if c.type == "Ready":
                if c.status == "True":
                    ready += 1
                    if min_ready <= 0:
                        available += 1
                    else:
                        since = parse_time(c.last_transition_time)
                        if since is not None and since + min_ready <= now:
                            available += 1
                break
    status = apps_pb2.ReplicaSetStatus()
    status.CopyFrom(rs.status)
    status.replicas = len(pods)
    status.fully_labeled_replicas = labeled
    status.ready_replicas = ready
    status.available_replicas = available
    status.observed_generation = rs.metadata.generation
    failure = get_condition(status.conditions, "ReplicaFailure")
    if manage_error is not None and failure is None:
        diff = len(pods) - rs.spec.replicas
        reason = "FailedCreate" if diff < 0 else "FailedDelete" if diff > 0 else ""
        message = getattr(manage_error, "message", None) or str(manage_error)
        status.conditions.add(type="ReplicaFailure", status="True", reason=reason, message=message,
                              last_transition_time=now_rfc3339(now))
    elif manage_error is None and failure is not None:
        kept = [c for c in status.conditions if c.type != "ReplicaFailure"]
        del status.conditions[:]
        status.conditions.extend(kept)
    return status


class ReplicaSetController(Controller):
    name = "replicaset-controller"

    def __init__(self, client, informers, *, workers: int = 2, burst_replicas: int = BURST_REPLICAS,
                 recorder: EventRecorder | None = None,
                 expectations: ControllerExpectations | None = None) -> None:
        """``informers`` is a SharedInformerFactory: the controller takes its
        "replicasets" and "pods" informers and handles their events; start
        the factory and then ``start()`` this."""
        self.client = client
        self.rs_informer = informers.informer("replicasets")
        self.pod_informer = informers.informer("pods")
        super().__init__([self.rs_informer, self.pod_informer], workers)
        self.rs_store = self.rs_informer.store
        self.pod_store = self.pod_informer.store
        self.pod_store.add_indexer(ORPHAN_INDEX, index_orphans)
        self.burst_replicas = burst_replicas
        self.recorder = self._recorder(client, recorder)
        self.expectations = expectations if expectations is not None else ControllerExpectations()
        self._pool = ThreadPoolExecutor(API_CALL_THREADS, thread_name_prefix=f"{self.name}-api")
        self._selectors: dict[str, LabelSelector | None] = {}  # rs uid -> parsed (immutable) selector
        self._matchers: dict[str, Callable[[object], bool]] = {}  # rs uid -> its selector's matches
        self.rs_informer.add_handler(self._add_rs, self._update_rs, self._delete_rs)
        self.pod_informer.add_handler(self._add_pod, self._update_pod, self._delete_pod)

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- event handlers: note expectations, enqueue ReplicaSets ----

    def _add_rs(self, rs) -> None:
        self.enqueue(rs)

    def _update_rs(self, old, cur) -> None:
        if old.metadata.uid != cur.metadata.uid:
            self._delete_rs(old)
        self.enqueue(cur)

    def _delete_rs(self, rs) -> None:
        key = meta_namespace_key(rs)
        self.expectations.delete(key)
        self._selectors.pop(rs.metadata.uid, None)
        self._matchers.pop(rs.metadata.uid, None)
        self.queue.add(key)

    def _add_pod(self, pod) -> None:
        if pod.metadata.deletion_timestamp:
            # seen for the first time already terminating (a relist)
            self._delete_pod(pod)
            return
        ref = controller_ref(pod)
        if ref is not None:
            rs = self._resolve(pod.metadata.namespace, ref)
            if rs is not None:
                key = meta_namespace_key(rs)
                self.expectations.creation_observed(key)
                if self.expectations.satisfied(key):
                    self.queue.add(key)  # may create or delete again
                else:  # only the status can change: one sync for a batch of creations
                    self.queue.add_after(key, STATUS_SYNC_DELAY)
            return
        for rs in self._replica_sets_matching(pod):
            self.enqueue(rs)

    def _update_pod(self, old, cur) -> None:
        if old.metadata.resource_version == cur.metadata.resource_version:
            return  # a resync: the ReplicaSets' own resync covers it
        labels_changed = old.metadata.labels != cur.metadata.labels
        if cur.metadata.deletion_timestamp:
            self._delete_pod(cur)
            if labels_changed:
                self._delete_pod(old)
            return
        old_ref, cur_ref = controller_ref(old), controller_ref(cur)
        ref_changed = old_ref != cur_ref
        if ref_changed and old_ref is not None:
            rs = self._resolve(old.metadata.namespace, old_ref)
            if rs is not None:
                self.enqueue(rs)
        if cur_ref is not None:
            rs = self._resolve(cur.metadata.namespace, cur_ref)
            if rs is not None:
                key = meta_namespace_key(rs)
                if ref_changed or labels_changed:
                    self.queue.add(key)
                else:  # status or binding: one sync for a burst of them
                    self.queue.add_after(key, STATUS_SYNC_DELAY)
                # becoming available is a change no event will announce
                min_ready = rs.spec.min_ready_seconds
                if min_ready > 0 and not is_pod_ready(old) and is_pod_ready(cur):
                    self.queue.add_after(key, min_ready + 1)
            return
        if labels_changed or ref_changed:
            for rs in self._replica_sets_matching(cur):
                self.enqueue(rs)

    def _delete_pod(self, pod) -> None:
        ref = controller_ref(pod)
        if ref is None:
            return
        rs = self._resolve(pod.metadata.namespace, ref)
        if rs is None:
            return
        key = meta_namespace_key(rs)
        self.expectations.deletion_observed(key, pod.metadata.uid)
        self.queue.add(key)

    def _resolve(self, namespace: str, ref):
        if ref.kind != "ReplicaSet":
            return None
        rs = self.rs_store.get_by_name(namespace, ref.name)
        if rs is None or rs.metadata.uid != ref.uid:
            return None
        return rs

    def _selector(self, rs) -> LabelSelector | None:
        uid = rs.metadata.uid
        if uid not in self._selectors:
            try:
                sel = label_selector_from_proto(rs.spec.selector)
            except LabelSelectorError:
                sel = None
            self._selectors[uid] = None if sel is None or sel.empty else sel
        return self._selectors[uid]

    def _matcher(self, rs, selector: LabelSelector) -> Callable[[object], bool]:
        uid = rs.metadata.uid
        m = self._matchers.get(uid)
        if m is None:
            m = self._matchers[uid] = selector_matcher(selector)
        return m

    def _replica_sets_matching(self, pod) -> list:
        found = []
        for rs in self.rs_store.by_index(NAMESPACE_INDEX, pod.metadata.namespace):
            sel = self._selector(rs)
            if sel is not None and sel.matches(pod.metadata.labels):
                found.append(rs)
        return found

    # ---- reconciling ----

    def sync(self, key: str) -> None:
        namespace, _ = split_meta_namespace_key(key)
        rs = self.rs_store.get(key)
        if rs is None:
            self.expectations.delete(key)
            return
        needs_sync = self.expectations.satisfied(key)
        selector = self._selector(rs)
        if selector is None:
            log.warning("%s: %s has an invalid or empty selector; not syncing", self.name, key)
            return
        # the pods it controls and the orphans of its namespace (disjoint sets)
        active = [p for p in (*self.pod_store.by_index(OWNER_INDEX, rs.metadata.uid),
                              *self.pod_store.by_index(ORPHAN_INDEX, namespace))
                  if is_pod_active(p)]
        manager = ControllerRefManager(self.client, "pods", rs, self._matcher(rs, selector),
                                       fresh_owner_check(self.client, "replicasets", rs))
        pods = manager.claim(active)
        manage_error = None
        if needs_sync and not rs.metadata.deletion_timestamp:
            try:
                self._manage_replicas(key, rs, pods)
            except ApiError as e:
                manage_error = e
        status = calculate_status(rs, pods, manage_error)
        updated = self._update_status(rs, status)
        if manage_error is not None:
            raise manage_error
        min_ready = rs.spec.min_ready_seconds
        st = updated.status
        if min_ready > 0 and st.ready_replicas == rs.spec.replicas and \
                st.ready_replicas != st.available_replicas:
            self.queue.add_after(key, min_ready)

    def _manage_replicas(self, key: str, rs, pods: list) -> None:
        diff = len(pods) - rs.spec.replicas
        if diff < 0:
            count = min(-diff, self.burst_replicas)
            self.expectations.expect(key, adds=count)
            created, error = slow_start_batch(count, SLOW_START_INITIAL_BATCH,
                                              lambda: self._create_pod(rs), self._pool)
            if created < count:
                # failed or never tried: no informer event will lower these
                self.expectations.creation_observed(key, count - created)
            if error is not None:
                raise error
        elif diff > 0:
            victims = pods_to_delete(pods, min(diff, self.burst_replicas))
            self.expectations.expect(key, delete_uids=[p.metadata.uid for p in victims])
            errors = [e for e in self._pool.map(lambda p: self._delete_pod_of(key, rs, p), victims)
                      if e is not None]
            if errors:
                raise errors[0]

    def _create_pod(self, rs) -> None:
        try:
            pod = self.client.create(pod_from_template(rs))
        except ApiError as e:
            if e.reason == "Forbidden" and "being terminated" in e.message:
                return  # the namespace is going away; nothing to do
            self.recorder.event(rs, WARNING, "FailedCreate", f"Error creating: {e.message}")
            raise
        self.recorder.event(rs, NORMAL, "SuccessfulCreate", f"Created pod: {pod.metadata.name}")

    def _delete_pod_of(self, key: str, rs, pod) -> ApiError | None:
        meta = pod.metadata
        try:
            self.client.delete("pods", meta.name, meta.namespace, uid=meta.uid)
        except ApiError as e:
            # no deletion event will come for a pod we failed to delete
            self.expectations.deletion_observed(key, meta.uid)
            if e.reason == "NotFound":
                return None
            if e.reason == "Conflict":  # a namesake: ours is gone
                return None
            self.recorder.event(rs, WARNING, "FailedDelete", f"Error deleting: {e.message}")
            return e
        self.recorder.event(rs, NORMAL, "SuccessfulDelete", f"Deleted pod: {meta.name}")
        return None

    def _update_status(self, rs, status: apps_pb2.ReplicaSetStatus):
        """Writes ``status`` unless it is what ``rs`` already reports; on a
        conflict reads the ReplicaSet again and retries once."""
        if rs.status == status:
            return rs
        current = apps_pb2.ReplicaSet()
        current.CopyFrom(rs)
        for attempt in range(STATUS_UPDATE_RETRIES + 1):
            current.status.CopyFrom(status)
            try:
                return self.client.update_status(current)
            except ApiError as e:
                if e.reason != "Conflict" or attempt == STATUS_UPDATE_RETRIES:
                    raise
            current = self.client.get("replicasets", rs.metadata.name, rs.metadata.namespace)
            if current.metadata.uid != rs.metadata.uid:
                raise ApiError("Conflict", f"replicaset {rs.metadata.name} was replaced")
        return rs  # not reached
