"""The scheduler's filter and score plugins: pure functions over typed messages.

Shaped like kube-scheduler's framework plugins, one job each:

- A filter ``filter_x(pod, info) -> str | None`` answers whether ``pod`` may
  run on the node of ``info``: None when it fits, else the reason in
  Kubernetes' words ("Insufficient cpu", "node(s) were unschedulable", ...).
  ``run_filters`` runs them in order and stops at the first plugin that
  refuses, returning every reason that plugin has (NodeResourcesFit names each
  insufficient resource, as Kubernetes does).
- A score ``score_x(pod, infos) -> list[int]`` rates every feasible node in
  0..100 (higher is better). Plugins whose raw score only means something
  relative to the other nodes (spreading, preferred affinity, taints) normalize
  over ``infos``, as Kubernetes' NormalizeScore does. ``score_nodes`` weighs
  them into one total per node and ``select_host`` picks a best one.

Nothing here does I/O, takes locks or reads a clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from apiserver.quantity import bytes_of, milli_cpu

MAX_NODE_SCORE = 100
# what a container without requests counts as when scoring (not when fitting),
# so that request-less pods still spread: Kubernetes' non-zero defaults
DEFAULT_MILLI_CPU_REQUEST = 100
DEFAULT_MEMORY_REQUEST = 200 * 1024 * 1024

TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"

REASON_UNSCHEDULABLE = "node(s) were unschedulable"
REASON_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_PORTS = "node(s) didn't have free ports for the requested pod ports"
REASON_TOO_MANY_PODS = "Too many pods"


def untolerated_taint_reason(key: str, value: str) -> str:
    return f"node(s) had untolerated taint {{{key}: {value}}}"


# ---- what a pod asks for ----

@dataclass(frozen=True)
class PodRequest:
    """A pod's effective requests: the sum over its containers, raised to the
    largest init container's where that is bigger (init containers run one at
    a time, before the others). ``nonzero_*`` use the scoring defaults for
    containers that request nothing."""
    milli_cpu: int = 0
    memory: int = 0
    nonzero_milli_cpu: int = 0
    nonzero_memory: int = 0


def _container_request(container) -> tuple[int, int, int, int]:
    req = container.resources.requests
    cpu = milli_cpu(req["cpu"]) if "cpu" in req else 0
    mem = bytes_of(req["memory"]) if "memory" in req else 0
    return (cpu, mem, cpu if "cpu" in req else DEFAULT_MILLI_CPU_REQUEST,
            mem if "memory" in req else DEFAULT_MEMORY_REQUEST)


# (uid, resourceVersion) -> PodRequest of pods read from the apiserver: a pod's
# requests are parsed once, not once per scheduling attempt, score and account
_REQUESTS: dict[tuple[str, str], PodRequest] = {}
_REQUESTS_LIMIT = 50_000


def pod_request(pod) -> PodRequest:
    meta = pod.metadata
    key = (meta.uid, meta.resource_version)
    if key[0] and key[1]:
        r = _REQUESTS.get(key)
        if r is None:
            if len(_REQUESTS) >= _REQUESTS_LIMIT:
                _REQUESTS.clear()
            r = _REQUESTS[key] = _parse_pod_request(pod)
        return r
    return _parse_pod_request(pod)


def _parse_pod_request(pod) -> PodRequest:
    total = [0, 0, 0, 0]
    for c in pod.spec.containers:
        for i, v in enumerate(_container_request(c)):
            total[i] += v
    for c in pod.spec.init_containers:
        for i, v in enumerate(_container_request(c)):
            total[i] = max(total[i], v)
    return PodRequest(*total)


def pod_host_ports(pod) -> list[tuple[str, str, int]]:
    """(hostIP, protocol, hostPort) of every container port with a hostPort."""
    return [(p.host_ip or "0.0.0.0", p.protocol or "TCP", p.host_port)
            for c in pod.spec.containers for p in c.ports if p.host_port > 0]


def pod_key(pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


def controller_uid(pod) -> str:
    """The uid of the pod's controlling owner (its ReplicaSet, ...), or ""."""
    for ref in pod.metadata.owner_references:
        if ref.HasField("controller") and ref.controller:
            return ref.uid
    return ""


def counts_on_node(pod) -> bool:
    """Whether a pod bound to a node holds its resources: until it is gone,
    even while terminating; not once it has Succeeded or Failed."""
    return pod.status.phase not in ("Succeeded", "Failed")


# ---- what a node has ----

def _allocatable(node, name: str, parse: Callable[[str], int]) -> int:
    alloc = node.status.allocatable
    return parse(alloc[name]) if name in alloc else 0


@dataclass
class NodeInfo:
    """A node and the pods that hold its resources, with their sums.

    ``node`` may be None for pods bound to a node the cache has not seen (yet
    or any more); such an info is never offered to the filters."""
    node: object | None
    pods: dict = field(default_factory=dict)  # pod key -> pod
    requested: PodRequest = field(default_factory=PodRequest)
    used_ports: dict = field(default_factory=dict)  # (ip, protocol, port) -> count
    # (namespace, controller uid) -> pods of it here that are not terminating
    owner_counts: dict = field(default_factory=dict)
    # the pods here with pod affinity or anti-affinity terms; those with required
    # anti-affinity terms (upstream's PodsWithAffinity, PodsWithRequiredAntiAffinity):
    # the inter-pod affinity plugin visits these, not every pod, for other pods' terms
    pods_with_affinity: dict = field(default_factory=dict)  # pod key -> pod
    pods_with_required_anti_affinity: dict = field(default_factory=dict)
    alloc_milli_cpu: int = 0
    alloc_memory: int = 0
    alloc_pods: int = 0
    ready: str = ""  # the status of the node's Ready condition ("" when it has none)
    # the node's NoSchedule and NoExecute taints; its PreferNoSchedule taints
    hard_taints: tuple = ()
    soft_taints: tuple = ()

    def __post_init__(self) -> None:
        if self.node is not None:
            self.set_node(self.node)  # the allocatable and readiness derived from it

    @classmethod
    def build(cls, node, pods: Iterable = ()) -> NodeInfo:
        info = cls(None)
        info.set_node(node)
        for pod in pods:
            info.add_pod(pod)
        return info

    @property
    def name(self) -> str:
        return self.node.metadata.name if self.node is not None else ""

    def set_node(self, node) -> None:
        self.node = node
        if node is None:
            self.alloc_milli_cpu = self.alloc_memory = self.alloc_pods = 0
            self.ready = ""
            self.hard_taints = self.soft_taints = ()
            return
        self.ready = _ready_status(node)
        taints = node.spec.taints
        self.hard_taints = tuple(t for t in taints if t.effect in ("NoSchedule", "NoExecute"))
        self.soft_taints = tuple(t for t in taints if t.effect == "PreferNoSchedule")
        self.alloc_milli_cpu = _allocatable(node, "cpu", milli_cpu)
        self.alloc_memory = _allocatable(node, "memory", bytes_of)
        self.alloc_pods = _allocatable(node, "pods", bytes_of)

    def add_pod(self, pod) -> None:
        """Count ``pod`` here (replacing an earlier version of it); a pod that
        no longer holds resources is only removed."""
        key = pod_key(pod)
        self.remove_pod(key)
        if not counts_on_node(pod):
            return
        self.pods[key] = pod
        self._account(pod, +1)
        affinity = pod.spec.affinity
        if affinity.HasField("pod_affinity") or affinity.HasField("pod_anti_affinity"):
            self.pods_with_affinity[key] = pod
            if affinity.pod_anti_affinity.required_during_scheduling_ignored_during_execution:
                self.pods_with_required_anti_affinity[key] = pod

    def remove_pod(self, key: str) -> None:
        pod = self.pods.pop(key, None)
        if pod is not None:
            self._account(pod, -1)
            self.pods_with_affinity.pop(key, None)
            self.pods_with_required_anti_affinity.pop(key, None)

    def _account(self, pod, sign: int) -> None:
        r, s = pod_request(pod), self.requested
        self.requested = PodRequest(s.milli_cpu + sign * r.milli_cpu, s.memory + sign * r.memory,
                                    s.nonzero_milli_cpu + sign * r.nonzero_milli_cpu,
                                    s.nonzero_memory + sign * r.nonzero_memory)
        for port in pod_host_ports(pod):
            _count(self.used_ports, port, sign)
        owner = controller_uid(pod)
        if owner and not pod.metadata.deletion_timestamp:
            _count(self.owner_counts, (pod.metadata.namespace, owner), sign)


def _count(counts: dict, key, delta: int) -> None:
    n = counts.get(key, 0) + delta
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


# ---- tolerations ----

def tolerates(toleration, taint) -> bool:
    """Kubernetes' Toleration.ToleratesTaint: an empty effect matches every
    effect, an empty key (with Exists) every key."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator == "Exists":
        return True
    return toleration.operator in ("", "Equal") and toleration.value == taint.value


def _tolerated(pod, taint) -> bool:
    return any(tolerates(t, taint) for t in pod.spec.tolerations)


@dataclass(frozen=True)
class _Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


# ---- filters ----

def filter_node_unschedulable(pod, info: NodeInfo) -> str | None:
    """A cordoned node takes only pods tolerating node.kubernetes.io/unschedulable."""
    if info.node.spec.unschedulable and not _tolerated(pod, _Taint(TAINT_UNSCHEDULABLE)):
        return REASON_UNSCHEDULABLE
    return None


def _ready_status(node) -> str:
    for cond in node.status.conditions:
        if cond.type == "Ready":
            return cond.status
    return ""


def filter_node_ready(pod, info: NodeInfo) -> str | None:
    """A node whose Ready condition is not True is refused as the NoSchedule
    taint the node lifecycle would put on it (not-ready when False or absent,
    unreachable when Unknown) refuses it: unless the pod tolerates that taint."""
    status = info.ready
    if status == "True":
        return None
    taint = _Taint(TAINT_UNREACHABLE if status == "Unknown" else TAINT_NOT_READY)
    if _tolerated(pod, taint):
        return None
    return untolerated_taint_reason(taint.key, taint.value)


def insufficient_resources(pod, info: NodeInfo, request: PodRequest | None = None) -> list[str]:
    """Every resource the node lacks for ``pod``, in Kubernetes' order and words."""
    r = request if request is not None else pod_request(pod)
    reasons = []
    if len(info.pods) + 1 > info.alloc_pods:
        reasons.append(REASON_TOO_MANY_PODS)
    if r.milli_cpu and r.milli_cpu > info.alloc_milli_cpu - info.requested.milli_cpu:
        reasons.append("Insufficient cpu")
    if r.memory and r.memory > info.alloc_memory - info.requested.memory:
        reasons.append("Insufficient memory")
    return reasons


def filter_node_resources_fit(pod, info: NodeInfo) -> str | None:
    """The first resource the node lacks (see ``insufficient_resources`` for all)."""
    reasons = insufficient_resources(pod, info)
    return reasons[0] if reasons else None


def _requirement_matches(req, value: str | None) -> bool:
    op = req.operator
    if op == "In":
        return value is not None and value in req.values
    if op == "NotIn":
        return value is None or value not in req.values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt"):
        if value is None or len(req.values) != 1:
            return False
        try:
            have, bound = int(value), int(req.values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def node_selector_term_matches(term, node) -> bool:
    """Every expression over labels and every field (only metadata.name, as
    in Kubernetes) matches; a term with neither matches nothing."""
    if not term.match_expressions and not term.match_fields:
        return False
    labels = node.metadata.labels
    for req in term.match_expressions:
        if not _requirement_matches(req, labels.get(req.key)):
            return False
    for req in term.match_fields:
        if req.key != "metadata.name" or req.operator not in ("In", "NotIn"):
            return False
        if not _requirement_matches(req, node.metadata.name):
            return False
    return True


def filter_node_affinity(pod, info: NodeInfo) -> str | None:
    """spec.nodeSelector (every label equal) and the required node affinity
    (any of its terms) must both match."""
    spec = pod.spec
    if not spec.node_selector and not spec.HasField("affinity"):
        return None
    node = info.node
    labels = node.metadata.labels
    for key, value in spec.node_selector.items():
        if labels.get(key) != value:
            return REASON_AFFINITY
    affinity = pod.spec.affinity.node_affinity
    if affinity.HasField("required_during_scheduling_ignored_during_execution"):
        terms = affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
        if not any(node_selector_term_matches(t, node) for t in terms):
            return REASON_AFFINITY
    return None


def filter_taint_toleration(pod, info: NodeInfo) -> str | None:
    """Every NoSchedule and NoExecute taint must be tolerated; the first that is
    not is named."""
    for taint in info.hard_taints:
        if not _tolerated(pod, taint):
            return untolerated_taint_reason(taint.key, taint.value)
    return None


def _ports_conflict(a: tuple[str, str, int], b: tuple[str, str, int]) -> bool:
    (ip_a, proto_a, port_a), (ip_b, proto_b, port_b) = a, b
    if port_a != port_b or proto_a != proto_b:
        return False
    return ip_a == ip_b or "0.0.0.0" in (ip_a, ip_b)


def filter_node_ports(pod, info: NodeInfo) -> str | None:
    """No requested hostPort may be taken on the node for the same protocol
    and an overlapping address (0.0.0.0 overlaps every address)."""
    if not info.used_ports:
        return None
    for want in pod_host_ports(pod):
        if any(_ports_conflict(want, used) for used in info.used_ports):
            return REASON_PORTS
    return None


def _single(reason_of: Callable) -> Callable:
    def reasons(pod, info, request):
        reason = reason_of(pod, info)
        return [reason] if reason else []
    return reasons


# (name, reasons(pod, info, request) -> list[str]) in the order they run; the
# cheap and most often decisive ones first, as in Kubernetes' default profile
FILTERS: tuple[tuple[str, Callable], ...] = (
    ("NodeUnschedulable", _single(filter_node_unschedulable)),
    ("NodeReady", _single(filter_node_ready)),
    ("NodeAffinity", _single(filter_node_affinity)),
    ("NodePorts", _single(filter_node_ports)),
    ("NodeResourcesFit", insufficient_resources),
    ("TaintToleration", _single(filter_taint_toleration)),
)


def run_filters(pod, info: NodeInfo, request: PodRequest | None = None) -> list[str]:
    """[] when ``pod`` fits the node, else the reasons of the first plugin that refuses it."""
    request = request if request is not None else pod_request(pod)
    for _, reasons_of in FILTERS:
        reasons = reasons_of(pod, info, request)
        if reasons:
            return reasons
    return []


def failed_scheduling_message(num_nodes: int, reasons_per_node: Iterable[Sequence[str]]) -> str:
    """Kubernetes' FitError text: "0/5 nodes are available: 3 Insufficient
    cpu, 2 node(s) were unschedulable." (reasons counted over nodes, sorted)."""
    histogram: dict[str, int] = {}
    for reasons in reasons_per_node:
        for reason in reasons:
            histogram[reason] = histogram.get(reason, 0) + 1
    text = f"0/{num_nodes} nodes are available"
    if not histogram:
        return text + "."
    return text + ": " + ", ".join(f"{n} {r}" for r, n in sorted(histogram.items())) + "."


# ---- scores ----

def _with_pod(info: NodeInfo, request: PodRequest) -> tuple[int, int]:
    return (info.requested.nonzero_milli_cpu + request.nonzero_milli_cpu,
            info.requested.nonzero_memory + request.nonzero_memory)


def _least(requested: int, allocatable: int) -> float:
    if allocatable <= 0 or requested > allocatable:
        return 0.0
    return (allocatable - requested) * MAX_NODE_SCORE / allocatable


def score_least_allocated(pod, infos: Sequence[NodeInfo]) -> list[int]:
    """More room left for cpu and memory (equally weighted), once the pod is there, is better."""
    request = pod_request(pod)
    scores = []
    for info in infos:
        cpu, mem = _with_pod(info, request)
        scores.append(int((_least(cpu, info.alloc_milli_cpu) + _least(mem, info.alloc_memory)) / 2))
    return scores


def _fraction(requested: int, allocatable: int) -> float:
    return min(requested / allocatable, 1.0) if allocatable > 0 else 1.0


def score_balanced_allocation(pod, infos: Sequence[NodeInfo]) -> list[int]:
    """cpu and memory used in equal shares is better: 100 * (1 - their standard deviation)."""
    request = pod_request(pod)
    scores = []
    for info in infos:
        cpu, mem = _with_pod(info, request)
        std = abs(_fraction(cpu, info.alloc_milli_cpu) - _fraction(mem, info.alloc_memory)) / 2
        scores.append(int((1 - std) * MAX_NODE_SCORE))
    return scores


def _normalize(raw: Sequence[int], *, reverse: bool) -> list[int]:
    """Kubernetes' DefaultNormalizeScore: scale to 0..100 by the largest raw
    score; ``reverse`` makes the smallest raw score best."""
    top = max(raw, default=0)
    if top == 0:
        return [MAX_NODE_SCORE if reverse else 0 for _ in raw]
    scaled = [r * MAX_NODE_SCORE // top for r in raw]
    return [MAX_NODE_SCORE - s for s in scaled] if reverse else scaled


def score_selector_spread(pod, infos: Sequence[NodeInfo]) -> list[int]:
    """Fewer pods of the pod's controller (same namespace, same controlling
    owner, not terminating) on a node is better. A pod without a controller
    gets 0 everywhere."""
    owner = controller_uid(pod)
    if not owner:
        return [0 for _ in infos]
    key = (pod.metadata.namespace, owner)
    counts = [info.owner_counts.get(key, 0) for info in infos]
    return _normalize(counts, reverse=True)


def score_node_affinity_preferred(pod, infos: Sequence[NodeInfo]) -> list[int]:
    """The summed weights of the preferred node affinity terms a node matches,
    scaled so the best node scores 100."""
    terms = pod.spec.affinity.node_affinity.preferred_during_scheduling_ignored_during_execution
    if not terms:
        return [0 for _ in infos]
    raw = [sum(t.weight for t in terms if t.weight and node_selector_term_matches(t.preference, info.node))
           for info in infos]
    return _normalize(raw, reverse=False)


def score_taint_toleration(pod, infos: Sequence[NodeInfo]) -> list[int]:
    """Fewer PreferNoSchedule taints the pod does not tolerate is better."""
    raw = [sum(1 for taint in info.soft_taints if not _tolerated(pod, taint)) if info.soft_taints else 0
           for info in infos]
    return _normalize(raw, reverse=True)


# (name, score(pod, infos) -> list[int], weight): Kubernetes' default weights
SCORES: tuple[tuple[str, Callable, int], ...] = (
    ("NodeResourcesLeastAllocated", score_least_allocated, 1),
    ("NodeResourcesBalancedAllocation", score_balanced_allocation, 1),
    ("SelectorSpread", score_selector_spread, 2),
    ("NodeAffinity", score_node_affinity_preferred, 2),
    ("TaintToleration", score_taint_toleration, 3),
)


def score_nodes(pod, infos: Sequence[NodeInfo], scores=SCORES) -> list[int]:
    """The weighted sum of every score plugin, per node of ``infos``."""
    totals = [0] * len(infos)
    for _, score, weight in scores:
        for i, s in enumerate(score(pod, infos)):
            totals[i] += weight * s
    return totals


def select_host(infos: Sequence[NodeInfo], totals: Sequence[int], rng: random.Random | None = None) -> NodeInfo:
    """A node with the highest total, uniformly at random among ties (as
    Kubernetes' selectHost does, by reservoir sampling)."""
    if not infos:
        raise ValueError("no feasible node to select")
    rng = rng or random
    best, best_score, ties = None, None, 0
    for info, total in zip(infos, totals):
        if best_score is None or total > best_score:
            best, best_score, ties = info, total, 1
        elif total == best_score:
            ties += 1
            if rng.randrange(ties) == 0:
                best = info
    return best
