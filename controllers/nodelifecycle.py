"""The node lifecycle controller: notices nodes whose kubelet went silent,
taints them, and evicts their pods once the pods stop tolerating it.

Health is judged as kube-controller-manager does, by this controller's own
clock and never by comparing the kubelet's timestamps with it: a node is
"probed" whenever its Lease renewTime or its Ready condition's
lastHeartbeatTime changes; when neither changed for
``node_monitor_grace_period`` seconds (counted from when this controller first
saw the node, after a restart), the node's conditions become Unknown with
reason NodeStatusUnknown. Every ``monitor_period`` (and as soon as a node's
grace runs out) each node is reconciled:

- taints follow the Ready condition: Unknown -> node.kubernetes.io/unreachable,
  False -> node.kubernetes.io/not-ready, each with effect NoExecute and
  NoSchedule; True -> neither. The taints this controller does not own stay.
- a node that is not Ready has its pods marked Ready=False.

Eviction (the taint manager): a pod on a node with NoExecute taints is deleted
(an ordinary, graceful delete) when some taint has no matching toleration, or
once the smallest tolerationSeconds of the matching tolerations has passed
since the taint's timeAdded; a toleration without tolerationSeconds tolerates
forever. Evictions are rate-limited by a token bucket (``eviction_qps``,
``eviction_burst``) so a zone going dark does not empty the cluster at once,
and paused while no node at all is Ready (Kubernetes' "full disruption"): then
the fault is more likely the control plane's or the network's than every
node's, and evicting would only move pods nowhere.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from apiserver.errors import ApiError
from controllers.base import Controller
from controllers.events import WARNING
from controllers.informer import NODE_INDEX, deep_copy, meta_namespace_key
from apiserver.resources import NAMESPACE_NODE_LEASE as LEASE_NAMESPACE
from controllers.podutil import get_condition, now_rfc3339, parse_time
from controllers.scheduler.plugins import TAINT_NOT_READY, TAINT_UNREACHABLE, tolerates

log = logging.getLogger("controllers.nodelifecycle")

NODE_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
MANAGED_TAINTS = {(key, effect) for key in (TAINT_NOT_READY, TAINT_UNREACHABLE)
                  for effect in ("NoExecute", "NoSchedule")}
# how much later than its computed moment a node is re-checked (clock granularity)
RECHECK_SLACK = 0.05


def condition(obj, type_: str):
    return get_condition(obj.status.conditions, type_)


def wanted_taint_keys(node) -> set[str]:
    """The keys of the managed taints ``node``'s Ready condition calls for."""
    ready = condition(node, "Ready")
    if ready is None or ready.status == "True":
        return set()
    return {TAINT_UNREACHABLE if ready.status == "Unknown" else TAINT_NOT_READY}


def eviction_time(pod, taints, *, first_seen: float) -> float:
    """When (epoch seconds) ``pod`` must leave a node with these NoExecute
    taints: -inf when one is not tolerated, +inf when all are, forever. A taint
    without timeAdded counts from ``first_seen``."""
    due = math.inf
    for taint in taints:
        matching = [t for t in pod.spec.tolerations if tolerates(t, taint)]
        if not matching:
            return -math.inf
        bounded = [t.toleration_seconds for t in matching if t.HasField("toleration_seconds")]
        if not bounded:
            continue
        added = parse_time(taint.time_added)
        due = min(due, (added if added is not None else first_seen) + max(0, min(bounded)))
    return due


class TokenBucket:
    def __init__(self, qps: float, burst: int) -> None:
        self.qps, self.burst = qps, burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.qps


@dataclass
class _Health:
    probed_at: float  # monotonic time the node last showed a sign of life
    heartbeat: str
    renew_time: str


class NodeLifecycleController(Controller):
    """Workers of ``queue`` run ``sync_node`` (node names); one more worker runs
    ``sync_pod`` over the eviction queue, and a monitor re-checks every node each period."""

    name = "nodelifecycle"

    def __init__(self, client, informers, *, node_monitor_grace_period: float = 40.0,
                 monitor_period: float = 5.0, pod_eviction: bool = True, eviction_qps: float = 10.0,
                 eviction_burst: int = 20, recorder=None) -> None:
        """``informers``: a SharedInformerFactory (nodes, pods, and leases in
        kube-node-lease are taken from it). ``recorder``: an optional
        EventRecorder for NodeNotReady and TaintManagerEviction events."""
        self.client = client
        self.grace = node_monitor_grace_period
        self.monitor_period = monitor_period
        self.pod_eviction = pod_eviction
        self.recorder = recorder
        self.nodes = informers.informer("nodes")
        self.pods = informers.informer("pods")
        self.leases = informers.informer("leases", LEASE_NAMESPACE)
        self._bucket = TokenBucket(eviction_qps, eviction_burst)
        super().__init__([self.nodes, self.pods, self.leases], 1, self.sync_node)
        self._pod_queue = self.add_queue("nodelifecycle-evictions", self.sync_pod)
        self._lock = threading.Lock()
        self._health: dict[str, _Health] = {}
        self._first_seen: dict[str, float] = {}  # "node/key/effect" -> epoch, taints without timeAdded
        self.evictions = 0
        self.nodes.add_handler(lambda n: self.queue.add(n.metadata.name),
                               self._node_updated,
                               lambda n: self._forget_node(n.metadata.name))
        self.leases.add_handler(lambda lease: self.queue.add(lease.metadata.name),
                                lambda old, new: self.queue.add(new.metadata.name))
        self.pods.add_handler(self._pod_changed, lambda old, new: self._pod_changed(new))

    # ---- lifecycle ----

    def _start_threads(self) -> None:
        self._spawn("nodelifecycle-monitor", self._monitor)
        super()._start_threads()

    def _monitor(self) -> None:
        while not self._stop.wait(self.monitor_period):
            for name in self.nodes.store.keys():
                self.queue.add(name)

    # ---- handlers ----

    def _node_updated(self, old, new) -> None:
        self.queue.add(new.metadata.name)
        if list(old.spec.taints) != list(new.spec.taints):
            for pod in self.pods.store.by_index(NODE_INDEX, new.metadata.name):
                self._pod_queue.add(meta_namespace_key(pod))

    def _forget_node(self, name: str) -> None:
        with self._lock:
            self._health.pop(name, None)

    def _pod_changed(self, pod) -> None:
        if not self.pod_eviction or not pod.spec.node_name or pod.metadata.deletion_timestamp:
            return
        node = self.nodes.store.get(pod.spec.node_name)
        if node is not None and any(t.effect == "NoExecute" for t in node.spec.taints):
            self._pod_queue.add(meta_namespace_key(pod))

    # ---- node health ----

    def _observe(self, node) -> _Health:
        """The node's health record, its probe time moved on if it showed a sign of life."""
        name = node.metadata.name
        ready = condition(node, "Ready")
        heartbeat = ready.last_heartbeat_time if ready is not None else ""
        lease = self.leases.store.get_by_name(LEASE_NAMESPACE, name)
        renew = lease.spec.renew_time if lease is not None else ""
        now = time.monotonic()
        with self._lock:
            health = self._health.get(name)
            if health is None:
                health = self._health[name] = _Health(now, heartbeat, renew)
            elif (heartbeat, renew) != (health.heartbeat, health.renew_time):
                health.probed_at, health.heartbeat, health.renew_time = now, heartbeat, renew
            return _Health(health.probed_at, health.heartbeat, health.renew_time)

    def sync_node(self, name: str) -> None:
        node = self.nodes.store.get(name)
        if node is None:
            return
        health = self._observe(node)
        silent_for = time.monotonic() - health.probed_at
        ready = condition(node, "Ready")
        if silent_for >= self.grace:
            if ready is None or ready.status != "Unknown":
                node = self._mark_unknown(node, never=ready is None)
        else:
            self.queue.add_after(name, self.grace - silent_for + RECHECK_SLACK)
        node = self._reconcile_taints(node)
        ready = condition(node, "Ready")
        if ready is not None and ready.status != "True":
            self._mark_pods_not_ready(node)

    def _mark_unknown(self, node, *, never: bool):
        updated = deep_copy(node)
        now = now_rfc3339()
        reason = "NodeStatusNeverUpdated" if never else "NodeStatusUnknown"
        message = "Kubelet never posted node status." if never else "Kubelet stopped posting node status."
        for type_ in NODE_CONDITIONS:
            c = condition(updated, type_)
            if c is None:
                c = updated.status.conditions.add(type=type_)
            if c.status != "Unknown":
                c.last_transition_time = now
            c.status, c.reason, c.message = "Unknown", reason, message
        written = self.client.update_status(updated)
        log.info("node %s: %s", node.metadata.name, message)
        if self.recorder is not None:
            self.recorder.event(written, WARNING, "NodeNotReady", f"Node {node.metadata.name} status is now: {reason}")
        return written

    def _reconcile_taints(self, node):
        wanted = wanted_taint_keys(node)
        kept, have = [], set()
        for t in node.spec.taints:
            if (t.key, t.effect) in MANAGED_TAINTS:
                if t.key not in wanted:
                    continue
                have.add((t.key, t.effect))
            kept.append(t)
        missing = [(key, effect) for key in sorted(wanted) for effect in ("NoSchedule", "NoExecute")
                   if (key, effect) not in have]
        if not missing and len(kept) == len(node.spec.taints):
            return node
        updated = deep_copy(node)
        del updated.spec.taints[:]
        updated.spec.taints.extend(kept)
        now = now_rfc3339()
        for key, effect in missing:
            updated.spec.taints.add(key=key, effect=effect, time_added=now)
        written = self.client.update(updated)
        log.info("node %s: taints now %s", node.metadata.name,
                 [f"{t.key}:{t.effect}" for t in written.spec.taints])
        return written

    def _mark_pods_not_ready(self, node) -> None:
        for pod in self.pods.store.by_index(NODE_INDEX, node.metadata.name):
            ready = condition(pod, "Ready")
            if ready is None or ready.status != "True" or pod.metadata.deletion_timestamp:
                continue
            updated = deep_copy(pod)
            c = condition(updated, "Ready")
            c.status, c.reason, c.last_transition_time = "False", "NodeNotReady", now_rfc3339()
            try:
                self.client.update_status(updated)
            except ApiError as e:
                # the next pass over the node tries again
                if e.reason not in ("NotFound", "Conflict"):
                    raise

    # ---- eviction ----

    def sync_pod(self, key: str) -> None:
        if not self.pod_eviction:
            return
        pod = self.pods.store.get(key)
        if pod is None or pod.metadata.deletion_timestamp or not pod.spec.node_name:
            return
        node = self.nodes.store.get(pod.spec.node_name)
        if node is None:
            return
        taints = [t for t in node.spec.taints if t.effect == "NoExecute"]
        if not taints:
            return
        due = eviction_time(pod, taints, first_seen=self._taint_first_seen(node, taints))
        if due == math.inf:
            return
        wait = due - time.time()
        if wait > 0:
            self._pod_queue.add_after(key, wait + RECHECK_SLACK)
            return
        if self._fully_disrupted():
            self._pod_queue.add_after(key, self.monitor_period)
            return
        wait = self._bucket.take()
        if wait > 0:
            self._pod_queue.add_after(key, wait)
            return
        meta = pod.metadata
        try:
            self.client.delete("pods", meta.name, meta.namespace, uid=meta.uid)
        except ApiError as e:
            if e.reason not in ("NotFound", "Conflict"):  # gone, or another pod by that name
                raise
            return
        self.evictions += 1
        log.info("evicted pod %s from node %s (NoExecute taints %s)", key, node.metadata.name,
                 [t.key for t in taints])
        if self.recorder is not None:
            self.recorder.event(pod, "Normal", "TaintManagerEviction", f"Marking for deletion Pod {key}")

    def _fully_disrupted(self) -> bool:
        nodes = self.nodes.store.list()
        return bool(nodes) and not any(
            (ready := condition(n, "Ready")) is not None and ready.status == "True" for n in nodes)

    def _taint_first_seen(self, node, taints) -> float:
        """When this controller first saw the earliest taint lacking a timeAdded."""
        now = time.time()
        first = now
        with self._lock:
            for t in taints:
                if not t.time_added:
                    k = f"{node.metadata.name}/{t.key}/{t.effect}"
                    first = min(first, self._first_seen.setdefault(k, now))
        return first
