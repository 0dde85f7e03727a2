"""The scheduler: gives every pending pod of its scheduler name a node.

One loop, one pod at a time (kube-scheduler's scheduling cycle): pop the next
pod from the ``SchedulingQueue``, run the filter plugins on every node of the
cache, score the nodes that fit, pick the best, *assume* the pod on it in the
cache (so the next pod already sees those resources taken), then bind it by
setting spec.nodeName through the apiserver in a small pool of binder threads
(the binding cycle), so the loop need not wait for the round trip.

- A pod that fits nowhere gets a Warning Event FailedScheduling with
  Kubernetes' message and the condition PodScheduled=False, reason
  Unschedulable; it waits in the queue until the cluster changes.
- A bind that fails is forgotten in the cache; the pod goes to backoff (the
  pod changed, or the apiserver is unavailable) or is dropped (it is gone).
- A successful bind gets a Normal Event Scheduled; the informer's event of
  the bound pod then confirms the assumed one.
- InterPodAffinity and PodTopologySpread (``cycle``) count the pods of every
  node once per cycle, then filter and score each node from those counts; a
  pod they refuse is moved back when another pod is placed or relabelled.
- Pods with PersistentVolumeClaims go through the VolumeBinding plugin
  (``volumebinding``): its PreFilter may refuse the pod outright, its Filter
  runs after the others on each node, and its PreBind (in the binder thread)
  binds or provisions the claims' volumes before the pod gets its node.

Informers on nodes and pods feed the cache (nodes, and the pods bound to
them) and the queue (pending pods whose spec.schedulerName is ours).
"""

from __future__ import annotations

import logging
import random
import threading
from concurrent.futures import ThreadPoolExecutor

from apiserver.errors import ApiError
from controllers.events import EventRecorder
from controllers.informer import SharedInformerFactory, deep_copy
from controllers.podutil import now_rfc3339
from controllers.scheduler import plugins
from controllers.scheduler.cycle import POD_DEPENDENT_REASONS, CycleState
from controllers.scheduler.plugins import NodeInfo, pod_key
from controllers.scheduler.queue import SchedulingQueue
from controllers.scheduler.volumebinding import VolumeBinder

log = logging.getLogger("controllers.scheduler")

DEFAULT_SCHEDULER_NAME = "default-scheduler"


def _priority(pod) -> int:
    return pod.spec.priority if pod.spec.HasField("priority") else 0


def _schedulability(node) -> tuple:
    """What of a node can change whether a pod fits it (not heartbeats)."""
    ready = next((c.status for c in node.status.conditions if c.type == "Ready"), "")
    return (node.spec.SerializeToString(deterministic=True), dict(node.metadata.labels),
            dict(node.status.allocatable), ready)


def _pod_changed(old, new) -> bool:
    """A change of a pending pod that may change where it fits (not status)."""
    return (old.spec != new.spec or old.metadata.labels != new.metadata.labels
            or old.metadata.annotations != new.metadata.annotations)


class SchedulerCache:
    """Nodes and the pods that hold their resources: bound pods as the
    informer reports them, plus pods assumed on a node while their binding is
    in flight. ``lock`` is held by the scheduling cycle from filtering to
    assuming, so no change slips in between."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._infos: dict[str, NodeInfo] = {}
        self._pod_node: dict[str, str] = {}  # key of each counted pod -> its node
        self._with_affinity: set[str] = set()  # nodes holding pods with pod affinity terms
        self._assumed: set[str] = set()

    def set_node(self, node) -> None:
        with self.lock:
            info = self._infos.get(node.metadata.name)
            if info is None:
                self._infos[node.metadata.name] = NodeInfo.build(node)
            else:
                info.set_node(node)

    def remove_node(self, name: str) -> None:
        with self.lock:
            info = self._infos.get(name)
            if info is not None:
                info.set_node(None)
                if not info.pods:
                    del self._infos[name]

    def add_pod(self, pod) -> None:
        """A pod bound to a node, as the apiserver has it (confirms an assumed one)."""
        key = pod_key(pod)
        with self.lock:
            self._assumed.discard(key)
            self._place(key, pod)

    def remove_pod(self, key: str) -> None:
        with self.lock:
            self._assumed.discard(key)
            self._unplace(key)

    def assume(self, pod) -> None:
        """Counts ``pod`` (spec.nodeName set) on its node before the apiserver confirms it."""
        key = pod_key(pod)
        with self.lock:
            self._place(key, pod)
            self._assumed.add(key)

    def forget(self, key: str) -> None:
        """Undoes ``assume`` (the bind failed); a pod already confirmed stays."""
        with self.lock:
            if key in self._assumed:
                self._assumed.discard(key)
                self._unplace(key)

    def is_assumed(self, key: str) -> bool:
        with self.lock:
            return key in self._assumed

    def node_infos(self) -> list[NodeInfo]:
        """The infos of the nodes that exist, by name (live objects: hold ``lock``)."""
        with self.lock:
            return [i for _, i in sorted(self._infos.items()) if i.node is not None]

    def node_infos_with_affinity(self) -> list[NodeInfo]:
        """The infos of the nodes that exist and hold pods with pod affinity terms."""
        with self.lock:
            return [self._infos[n] for n in sorted(self._with_affinity) if self._infos[n].node is not None]

    def node_info(self, name: str) -> NodeInfo | None:
        with self.lock:
            return self._infos.get(name)

    def _place(self, key: str, pod) -> None:
        node = pod.spec.node_name
        if self._pod_node.get(key, node) != node:
            self._unplace(key)
        info = self._infos.get(node)
        if info is None:
            info = self._infos[node] = NodeInfo(None)  # a node not seen (yet)
        info.add_pod(pod)
        self._track_affinity(node, info)
        if key in info.pods:
            self._pod_node[key] = node
        else:  # it has finished: it holds nothing any more
            self._pod_node.pop(key, None)
            self._drop_if_empty(node)

    def _unplace(self, key: str) -> None:
        node = self._pod_node.pop(key, None)
        if node is not None:
            info = self._infos[node]
            info.remove_pod(key)
            self._track_affinity(node, info)
            self._drop_if_empty(node)

    def _track_affinity(self, node: str, info: NodeInfo) -> None:
        if info.pods_with_affinity:
            self._with_affinity.add(node)
        else:
            self._with_affinity.discard(node)

    def _drop_if_empty(self, node: str) -> None:
        info = self._infos.get(node)
        if info is not None and info.node is None and not info.pods:
            del self._infos[node]


class Scheduler:
    def __init__(self, client, *, scheduler_name: str = DEFAULT_SCHEDULER_NAME,
                 informers: SharedInformerFactory | None = None, initial_backoff: float = 1.0,
                 max_backoff: float = 10.0, max_unschedulable_seconds: float = 30.0,
                 bind_workers: int = 8, rng: random.Random | None = None) -> None:
        """``informers``: a factory shared with other controllers of the
        process (started by ``run`` if not yet); by default one of its own."""
        self.client = client
        self.scheduler_name = scheduler_name
        self._own_informers = informers is None
        self.informers = informers or SharedInformerFactory(client)
        self.queue = SchedulingQueue(initial_backoff=initial_backoff, max_backoff=max_backoff,
                                     max_unschedulable_seconds=max_unschedulable_seconds)
        self.cache = SchedulerCache()
        self.events = EventRecorder(client, scheduler_name)
        self._rng = rng or random.Random()
        self._binders = ThreadPoolExecutor(max_workers=bind_workers, thread_name_prefix="scheduler-bind")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handlers_added = False
        self._stats_lock = threading.Lock()
        self.stats = {"attempts": 0, "scheduled": 0, "unschedulable": 0, "bind_errors": 0}
        self._nodes = self.informers.informer("nodes")
        self._pods = self.informers.informer("pods")
        self._namespaces = self.informers.informer("namespaces")  # their labels, for namespaceSelectors
        # pods unschedulable for other pods' sake (affinity, spreading), moved back when a
        # pod is placed or relabelled; _placed counts those events (under _waiting_lock)
        self._waiting_lock = threading.Lock()
        self._waiting_on_pods: set[str] = set()
        self._placed = 0
        self.volume_binder = VolumeBinder(client, self.informers)

    # ---- lifecycle ----

    def run(self) -> None:
        """Schedules until ``stop()``: registers the informer handlers, starts
        and syncs the informers, then loops."""
        if not self._handlers_added:
            self._handlers_added = True
            self._nodes.add_handler(self._node_added, self._node_updated, self._node_deleted)
            self._pods.add_handler(self._pod_added, self._pod_updated, self._pod_deleted)
            # a claim bound, a volume made or freed, a class added: pods waiting on volumes may fit
            requeue = lambda *_: self.queue.move_all_to_active()  # noqa: E731
            for inf in (self.volume_binder.claims, self.volume_binder.volumes, self.volume_binder.classes):
                inf.add_handler(requeue, requeue, requeue)
        self.informers.start()
        while not self._stop.is_set() and not self.informers.wait_for_cache_sync(timeout=0.5):
            pass
        log.info("%s: caches synced; scheduling", self.scheduler_name)
        while not self._stop.is_set():
            try:
                self.schedule_one(timeout=0.5)
            except Exception:
                log.exception("scheduling cycle failed")

    def start(self) -> Scheduler:
        """``run()`` in a daemon thread."""
        self._thread = threading.Thread(target=self.run, daemon=True, name="scheduler")
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stops scheduling; binds in flight finish first."""
        self._stop.set()
        self.queue.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._binders.shutdown(wait=True)
        self.events.stop()
        if self._own_informers:
            self.informers.stop()

    def has_synced(self) -> bool:
        return self._nodes.has_synced() and self._pods.has_synced()

    # ---- informer handlers: quick, no API calls ----

    def _responsible(self, pod) -> bool:
        return (pod.spec.scheduler_name or DEFAULT_SCHEDULER_NAME) == self.scheduler_name

    def _node_added(self, node) -> None:
        self.cache.set_node(node)
        self.queue.move_all_to_active()

    def _node_updated(self, old, new) -> None:
        self.cache.set_node(new)
        if _schedulability(old) != _schedulability(new):
            self.queue.move_all_to_active()

    def _node_deleted(self, node) -> None:
        self.cache.remove_node(node.metadata.name)

    def _namespace_labels(self, name: str):
        ns = self._namespaces.store.get(name)
        return ns.metadata.labels if ns is not None else {}

    def _pod_placed(self) -> None:
        """A pod was placed or relabelled: pods waiting on others' labels may fit now."""
        with self._waiting_lock:
            self._placed += 1
            keys, self._waiting_on_pods = self._waiting_on_pods, set()
        if keys:
            self.queue.move_to_active(keys)

    def _pod_added(self, pod) -> None:
        if pod.spec.node_name:
            self.cache.add_pod(pod)
            self._pod_placed()
        elif self._responsible(pod) and not pod.metadata.deletion_timestamp:
            self.queue.add(pod_key(pod), _priority(pod))

    def _pod_updated(self, old, new) -> None:
        key = pod_key(new)
        if new.spec.node_name:
            if not old.spec.node_name:
                self.queue.delete(key)
            self.cache.add_pod(new)
            if not old.spec.node_name or old.metadata.labels != new.metadata.labels:
                self._pod_placed()
            if plugins.counts_on_node(old) and not plugins.counts_on_node(new):
                self.queue.move_all_to_active()  # it finished: its resources are free
        elif not self._responsible(new) or new.metadata.deletion_timestamp:
            self.queue.delete(key)
        elif ((self.queue.where(key) is None or _pod_changed(old, new))
              and not self.cache.is_assumed(key)):
            self.queue.add(key, _priority(new))

    def _pod_deleted(self, pod) -> None:
        key = pod_key(pod)
        self.queue.delete(key)
        if pod.spec.node_name or self.cache.is_assumed(key):
            self.cache.remove_pod(key)
            self.queue.move_all_to_active()

    # ---- the scheduling cycle ----

    def schedule_one(self, timeout: float | None = None) -> bool:
        """Tries the next pod of the queue (waiting up to ``timeout`` for
        one); False when there was none."""
        item = self.queue.pop(timeout)
        if item is None:
            return False
        key = item.key
        pod = self._pods.store.get(key)
        if (pod is None or pod.spec.node_name or pod.metadata.deletion_timestamp
                or not self._responsible(pod) or self.cache.is_assumed(key)):
            self.queue.done(key)
            return True
        with self._stats_lock:
            self.stats["attempts"] += 1
        with self._waiting_lock:
            placed_before = self._placed
        request = plugins.pod_request(pod)
        volumes = self.volume_binder.prefilter(pod)
        decision = None
        with self.cache.lock:
            infos = self.cache.node_infos()
            feasible, refusals, decisions = [], [], {}
            if isinstance(volumes, str):
                refusals = None  # the PreFilter refused the pod on every node at once
            else:
                cycle = CycleState(pod, infos, self.cache.node_infos_with_affinity(), self._namespace_labels)
                for info in infos:
                    reasons = plugins.run_filters(pod, info, request)
                    if not reasons and not volumes.empty:
                        reason, decisions[info.name] = self.volume_binder.filter(volumes, info.node)
                        reasons = [reason] if reason else []
                    if not reasons:
                        reasons = cycle.filter(info)
                    if reasons:
                        refusals.append(reasons)
                    else:
                        feasible.append(info)
            if feasible:
                totals = [a + b for a, b in zip(plugins.score_nodes(pod, feasible), cycle.score(feasible))]
                chosen = plugins.select_host(feasible, totals, self._rng)
                assumed = deep_copy(pod)
                assumed.spec.node_name = chosen.name
                self.cache.assume(assumed)
                decision = decisions.get(chosen.name)
                if decision is not None:
                    self.volume_binder.assume(decision)
        if not feasible:
            if refusals is None:
                message = f"0/{len(infos)} nodes are available: {volumes}."
            else:
                message = plugins.failed_scheduling_message(len(infos), refusals)
            with self._stats_lock:
                self.stats["unschedulable"] += 1
            log.debug("%s: %s", key, message)
            if refusals and any(r in POD_DEPENDENT_REASONS for reasons in refusals for r in reasons):
                with self._waiting_lock:
                    if self._placed != placed_before:  # a pod was placed meanwhile: try again soon
                        self.queue.add_backoff(key)
                    else:
                        self.queue.add_unschedulable(key)
                        self._waiting_on_pods.add(key)
            else:
                self.queue.add_unschedulable(key)
            self._submit(self._record_unschedulable, pod, message)
            return True
        self._submit(self._bind, assumed, decision)
        return True

    def _submit(self, fn, *args) -> None:
        try:
            self._binders.submit(fn, *args)
        except RuntimeError:  # stopped meanwhile
            pass

    # ---- the binding cycle (binder threads) ----

    def _bind(self, pod, decision=None) -> None:
        key, node = pod_key(pod), pod.spec.node_name
        try:
            if decision is not None:
                self.volume_binder.bind(pod, decision, self._stop)
            self.client.patch("pods", pod.metadata.name, {"spec": {"nodeName": node}},
                              pod.metadata.namespace)
        except ApiError as e:
            self.cache.forget(key)
            with self._stats_lock:
                self.stats["bind_errors"] += 1
            if e.reason == "NotFound":
                self.queue.done(key)
                return
            log.info("binding %s to %s failed: %s: %s", key, node, e.reason, e.message)
            self.queue.add_backoff(key)
            self.events.event(pod, "Warning", "FailedScheduling", f"Binding rejected: {e.message}")
            return
        except TimeoutError as e:
            self.cache.forget(key)
            self.queue.add_backoff(key)
            self.events.event(pod, "Warning", "FailedScheduling", str(e))
            return
        except Exception:
            self.cache.forget(key)
            self.queue.add_backoff(key)
            log.exception("binding %s to %s failed", key, node)
            return
        self.queue.done(key)
        with self._stats_lock:
            self.stats["scheduled"] += 1
        self.events.event(pod, "Normal", "Scheduled", f"Successfully assigned {key} to {node}")

    def _record_unschedulable(self, pod, message: str) -> None:
        self.events.event(pod, "Warning", "FailedScheduling", message)
        self._set_unschedulable_condition(pod, message)

    def _set_unschedulable_condition(self, pod, message: str) -> None:
        for _ in range(3):
            cond = next((c for c in pod.status.conditions if c.type == "PodScheduled"), None)
            if cond is not None and (cond.status, cond.reason, cond.message) == ("False", "Unschedulable", message):
                return
            fresh = deep_copy(pod)
            cond = next((c for c in fresh.status.conditions if c.type == "PodScheduled"), None)
            if cond is None:
                cond = fresh.status.conditions.add(type="PodScheduled")
            if cond.status != "False":
                cond.last_transition_time = now_rfc3339()
            cond.status, cond.reason, cond.message = "False", "Unschedulable", message
            cond.last_probe_time = ""
            try:
                self.client.update_status(fresh)
                return
            except ApiError as e:
                if e.reason != "Conflict":
                    if e.reason != "NotFound":
                        log.warning("condition of %s not updated: %s: %s", pod_key(pod), e.reason, e.message)
                    return
            try:
                pod = self.client.get("pods", pod.metadata.name, pod.metadata.namespace)
            except ApiError:
                return
            if pod.spec.node_name:
                return
