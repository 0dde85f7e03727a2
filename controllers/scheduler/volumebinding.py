"""The scheduler's VolumeBinding plugin: a pod goes only where its claims'
volumes can be reached, and a claim of a WaitForFirstConsumer class is bound
(or provisioned) for the node the pod gets, as kube-scheduler's volumebinding
plugin does.

- PreFilter (``pod_volumes``): every claim the pod names must exist and not be
  being deleted; a claim not yet bound whose class binds Immediately leaves the
  pod unschedulable ("pod has unbound immediate PersistentVolumeClaims") until
  the PV controller binds it. Bound claims and delayed unbound ones go on.
- Filter (``filter_volume_binding``), per node: each bound claim's volume must
  exist and its nodeAffinity admit the node ("node(s) had volume node affinity
  conflict"); each delayed claim needs a free matching volume reachable from
  the node, or a class that can provision there (a provisioner other than
  kubernetes.io/no-provisioner, allowedTopologies matching the node), else
  "node(s) didn't find available persistent volumes to bind". A claim already
  annotated with a selected node fits that node only.
- Reserve/PreBind (``VolumeBinder.assume`` / ``bind``): the chosen static
  volumes are pre-bound (their claimRef set, as the PV controller would) and
  claims to provision are annotated ``volume.kubernetes.io/selected-node``;
  the pod is bound to its node only once every claim is Bound (the PV
  controller and the provisioner finish the work), or the attempt fails after
  ``bind_timeout`` and the pod is retried.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from apiserver.errors import ApiError
from controllers import pvbinding as b
from controllers.informer import deep_copy
from controllers.persistentvolume import claim_reference

REASON_BIND_CONFLICT = "node(s) didn't find available persistent volumes to bind"
REASON_NODE_CONFLICT = "node(s) had volume node affinity conflict"
REASON_PV_NOT_EXIST = "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)"
MSG_UNBOUND_IMMEDIATE = "pod has unbound immediate PersistentVolumeClaims"


def claim_not_found(name: str) -> str:
    return f'persistentvolumeclaim "{name}" not found'


def claim_being_deleted(name: str) -> str:
    return f'persistentvolumeclaim "{name}" is being deleted'


@dataclass
class PodVolumes:
    """A pod's claims as the PreFilter sorted them."""
    bound: list = field(default_factory=list)     # (claim, volume name)
    delayed: list = field(default_factory=list)   # unbound claims of WaitForFirstConsumer classes

    @property
    def empty(self) -> bool:
        return not self.bound and not self.delayed


@dataclass
class Decision:
    """What binding a pod to a node takes: volumes to pre-bind, claims to provision there."""
    node: str
    static: list = field(default_factory=list)     # (claim, volume)
    provision: list = field(default_factory=list)  # claims


def is_fully_bound(claim) -> bool:
    return bool(claim.spec.volume_name) and claim.metadata.annotations.get(b.ANN_BIND_COMPLETED) == "yes"


def pod_volumes(pod, claims_get, classes_by_name) -> PodVolumes | str:
    """The PreFilter: the pod's claims sorted, or the message that makes it unschedulable."""
    result = PodVolumes()
    immediate = False
    for name in b.pod_claim_names(pod):
        claim = claims_get(f"{pod.metadata.namespace}/{name}")
        if claim is None:
            return claim_not_found(name)
        if claim.metadata.deletion_timestamp:
            return claim_being_deleted(name)
        if is_fully_bound(claim):
            result.bound.append((claim, claim.spec.volume_name))
        elif b.is_delay_binding_mode(claim, classes_by_name):
            result.delayed.append(claim)
        else:
            immediate = True
    return MSG_UNBOUND_IMMEDIATE if immediate else result


def _can_provision(claim, node, classes_by_name) -> bool:
    cls = classes_by_name.get(b.claim_class(claim))
    if cls is None or cls.provisioner == b.NO_PROVISIONER:
        return False
    if not cls.allowed_topologies:
        return True
    labels = node.metadata.labels
    return any(all(labels.get(req.key) in req.values for req in term.match_label_expressions)
               for term in cls.allowed_topologies)


def decide(volumes: PodVolumes, node, volumes_get, all_volumes, classes_by_name,
           taken=frozenset()) -> tuple[str | None, Decision]:
    """The Filter for one node: (None, what binding there takes) when the pod's volumes fit,
    else (the reason, partial decision). ``taken``: volumes assumed for other claims."""
    decision = Decision(node.metadata.name)
    for _, volume_name in volumes.bound:
        volume = volumes_get(volume_name)
        if volume is None:
            return REASON_PV_NOT_EXIST, decision
        if not b.volume_node_affinity_matches(volume, node):
            return REASON_NODE_CONFLICT, decision
    chosen = set(taken)
    for claim in volumes.delayed:
        selected = claim.metadata.annotations.get(b.ANN_SELECTED_NODE)
        if selected:
            if selected != node.metadata.name:
                return REASON_BIND_CONFLICT, decision
            decision.provision.append(claim)
            continue
        candidates = [v for v in all_volumes if v.metadata.name not in chosen]
        volume = b.find_best_match(claim, candidates, node=node, delay_binding=True)
        if volume is not None:
            chosen.add(volume.metadata.name)
            decision.static.append((claim, volume))
        elif _can_provision(claim, node, classes_by_name):
            decision.provision.append(claim)
        else:
            return REASON_BIND_CONFLICT, decision
    return None, decision


def _prebind(volume, claim):
    """The volume reserved for the claim, or None when it already is; ApiError Conflict when
    another claim took it meanwhile."""
    if b.is_volume_bound_to_claim(volume, claim):
        return None
    if volume.spec.claim_ref.name:
        raise ApiError("Conflict", f'volume "{volume.metadata.name}" was bound to another claim meanwhile',
                       kind="persistentvolumes", name=volume.metadata.name)
    updated = deep_copy(volume)
    updated.metadata.annotations[b.ANN_BOUND_BY_CONTROLLER] = "yes"
    updated.spec.claim_ref.CopyFrom(claim_reference(claim))
    return updated


def _select_node(claim, node: str):
    if claim.metadata.annotations.get(b.ANN_SELECTED_NODE) == node:
        return None
    updated = deep_copy(claim)
    updated.metadata.annotations[b.ANN_SELECTED_NODE] = node
    return updated


class VolumeBinder:
    """The plugin's state over the scheduler's informers: volumes assumed for claims between
    the scheduling cycle and the PV controller's binding, so two pods never get one volume."""

    def __init__(self, client, informers, *, bind_timeout: float = 60.0) -> None:
        self.client = client
        self.claims = informers.informer("persistentvolumeclaims")
        self.volumes = informers.informer("persistentvolumes")
        self.classes = informers.informer("storageclasses")
        self.bind_timeout = bind_timeout
        self._lock = threading.Lock()
        self._assumed: dict[str, str] = {}  # volume name -> claim key

    def classes_by_name(self) -> dict:
        return {c.metadata.name: c for c in self.classes.store.list()}

    def prefilter(self, pod) -> PodVolumes | str:
        return pod_volumes(pod, self.claims.store.get, self.classes_by_name())

    def filter(self, volumes: PodVolumes, node) -> tuple[str | None, Decision]:
        if volumes.empty:
            return None, Decision(node.metadata.name)
        with self._lock:
            taken = frozenset(self._assumed)
        return decide(volumes, node, self.volumes.store.get, self.volumes.store.list(),
                      self.classes_by_name(), taken)

    def assume(self, decision: Decision) -> None:
        with self._lock:
            for claim, volume in decision.static:
                self._assumed[volume.metadata.name] = f"{claim.metadata.namespace}/{claim.metadata.name}"

    def forget(self, decision: Decision) -> None:
        with self._lock:
            for _, volume in decision.static:
                self._assumed.pop(volume.metadata.name, None)

    def _write_fresh(self, kind: str, obj, change, attempts: int = 5) -> None:
        """``change(obj)`` written; on a Conflict (the PV controller wrote the object since the
        cache saw it) the object is read again and the change made anew."""
        for attempt in range(attempts):
            updated = change(obj)
            if updated is None:
                return
            try:
                self.client.update(updated)
                return
            except ApiError as e:
                if e.reason != "Conflict" or attempt == attempts - 1:
                    raise
            obj = self.client.get(kind, obj.metadata.name, obj.metadata.namespace)

    def bind(self, pod, decision: Decision, stop: threading.Event | None = None) -> None:
        """PreBind: the API writes of ``decision``, then waits until every claim of the pod is
        Bound. Raises ApiError or TimeoutError (the caller forgets and retries the pod)."""
        try:
            for claim, volume in decision.static:
                self._write_fresh("persistentvolumes", volume, lambda v, c=claim: _prebind(v, c))
            for claim in decision.provision:
                self._write_fresh("persistentvolumeclaims", claim,
                                  lambda c, node=decision.node: _select_node(c, node))
            names = b.pod_claim_names(pod)
            deadline = time.monotonic() + self.bind_timeout
            while True:
                claims = [self.claims.store.get(f"{pod.metadata.namespace}/{n}") for n in names]
                if all(c is not None and is_fully_bound(c) for c in claims):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"binding volumes: timed out waiting for the claims of "
                                       f"{pod.metadata.namespace}/{pod.metadata.name} to be bound")
                if stop is not None and stop.wait(0.05):
                    raise TimeoutError("the scheduler is stopping")
                if stop is None:
                    time.sleep(0.05)
        finally:
            self.forget(decision)

