"""InterPodAffinity: where a pod may go given the pods already placed, as kube-scheduler's
plugin of that name decides.

A term (``AffinityTerm``) selects pods by labels in some namespaces and names a node label,
its topology key: the nodes sharing that label's value form one domain.

- Filter: every required affinity term must find a matching pod in the node's domain (all
  terms matched by the same pod; a pod whose terms match nothing anywhere but itself may
  start the group), no required anti-affinity term of the pod may find one, and no placed
  pod's required anti-affinity term may match the pod within that pod's domain.
- Score: preferred terms of the pod add (affinity) or take (anti-affinity) their weight for
  each matching pod in a domain; placed pods' preferred terms matching the pod do the same,
  and their required affinity terms count 1; normalized to 0..100 between the nodes' least
  and greatest sums.

``InterPodAffinityState.compute`` is upstream's PreFilter: it walks the placed pods once per
scheduling cycle (every pod only when the pod has required terms; else only the pods with
required anti-affinity), so each node's filter is a few dictionary look-ups.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from apiserver.selectors import LabelSelector, LabelSelectorError, label_selector_from_proto
from controllers.scheduler.plugins import MAX_NODE_SCORE, NodeInfo

REASON_AFFINITY_RULES = "node(s) didn't match pod affinity rules"
REASON_ANTI_AFFINITY_RULES = "node(s) didn't match pod anti-affinity rules"
REASON_EXISTING_ANTI_AFFINITY = "node(s) didn't satisfy existing pods anti-affinity rules"
# what a placed pod's required affinity term matching the incoming pod adds to the score
# (upstream's default hardPodAffinityWeight)
HARD_POD_AFFINITY_WEIGHT = 1

NamespaceLabels = Callable[[str], Mapping[str, str]]


def no_namespace_labels(_namespace: str) -> Mapping[str, str]:
    return {}


def _selector(msg, field: str) -> LabelSelector | None:
    """An optional selector: None (unset, or not valid) matches nothing."""
    if not msg.HasField(field):
        return None
    try:
        return label_selector_from_proto(getattr(msg, field))
    except LabelSelectorError:
        return None


@dataclass(frozen=True)
class AffinityTerm:
    selector: LabelSelector | None
    namespaces: frozenset
    namespace_selector: LabelSelector | None
    topology_key: str
    weight: int = 0

    @classmethod
    def of(cls, owner, term, weight: int = 0) -> AffinityTerm:
        """A term of ``owner``'s spec: neither namespaces nor a namespace selector means
        the owner's own namespace."""
        namespaces = frozenset(term.namespaces)
        ns_selector = _selector(term, "namespace_selector")
        if not namespaces and ns_selector is None:
            namespaces = frozenset((owner.metadata.namespace,))
        return cls(_selector(term, "label_selector"), namespaces, ns_selector, term.topology_key, weight)

    def matches(self, pod, namespace_labels: NamespaceLabels) -> bool:
        ns = pod.metadata.namespace
        if ns not in self.namespaces and (self.namespace_selector is None
                                          or not self.namespace_selector.matches(namespace_labels(ns))):
            return False
        return self.selector is not None and self.selector.matches(pod.metadata.labels)


@dataclass(frozen=True)
class PodTerms:
    required_affinity: tuple = ()
    required_anti_affinity: tuple = ()
    preferred_affinity: tuple = ()
    preferred_anti_affinity: tuple = ()

    @property
    def required(self) -> bool:
        return bool(self.required_affinity or self.required_anti_affinity)

    @property
    def preferred(self) -> bool:
        return bool(self.preferred_affinity or self.preferred_anti_affinity)


_NO_TERMS = PodTerms()
# (uid, resourceVersion) -> PodTerms of pods read from the apiserver, parsed once
_TERMS: dict[tuple[str, str], PodTerms] = {}
_TERMS_LIMIT = 50_000


def pod_terms(pod) -> PodTerms:
    affinity = pod.spec.affinity
    if not affinity.HasField("pod_affinity") and not affinity.HasField("pod_anti_affinity"):
        return _NO_TERMS
    key = (pod.metadata.uid, pod.metadata.resource_version)
    if not key[0] or not key[1]:
        return _parse_terms(pod)
    terms = _TERMS.get(key)
    if terms is None:
        if len(_TERMS) >= _TERMS_LIMIT:
            _TERMS.clear()
        terms = _TERMS[key] = _parse_terms(pod)
    return terms


def _parse_terms(pod) -> PodTerms:
    aff, anti = pod.spec.affinity.pod_affinity, pod.spec.affinity.pod_anti_affinity

    def required(group):
        return tuple(AffinityTerm.of(pod, t) for t in group.required_during_scheduling_ignored_during_execution)

    def preferred(group):
        return tuple(AffinityTerm.of(pod, w.pod_affinity_term, w.weight)
                     for w in group.preferred_during_scheduling_ignored_during_execution if w.weight)

    return PodTerms(required(aff), required(anti), preferred(aff), preferred(anti))


def _add(counts: dict, key: str, labels, delta: int) -> None:
    value = labels.get(key)
    if value is not None:
        pair = (key, value)
        counts[pair] = counts.get(pair, 0) + delta


class InterPodAffinityState:
    """What one scheduling cycle of ``pod`` needs to filter and score nodes."""

    def __init__(self, pod, terms: PodTerms, namespace_labels: NamespaceLabels) -> None:
        self.pod = pod
        self.terms = terms
        self.namespace_labels = namespace_labels
        self.own_namespace_labels = namespace_labels(pod.metadata.namespace)
        # (topology key, value) -> placed pods matching all the pod's required affinity
        # terms / any of its anti-affinity terms / placed pods whose required anti-affinity
        # terms match the pod
        self.affinity_counts: dict = {}
        self.anti_affinity_counts: dict = {}
        self.existing_anti_affinity_counts: dict = {}
        self.infos: Sequence[NodeInfo] = ()
        self.with_affinity: Sequence[NodeInfo] = ()

    @property
    def filters(self) -> bool:
        """Whether the filter can refuse any node."""
        return bool(self.terms.required or self.existing_anti_affinity_counts)

    @classmethod
    def compute(cls, pod, infos: Sequence[NodeInfo], with_affinity: Sequence[NodeInfo] | None = None,
                namespace_labels: NamespaceLabels = no_namespace_labels) -> InterPodAffinityState:
        """Upstream's PreFilter over ``infos`` (every node of the cache); ``with_affinity``
        are those of them holding pods with affinity terms (found in ``infos`` if None)."""
        if with_affinity is None:
            with_affinity = [i for i in infos if i.pods_with_affinity]
        memo: dict[str, Mapping[str, str]] = {}

        def ns_labels(ns: str) -> Mapping[str, str]:
            labels = memo.get(ns)
            if labels is None:
                labels = memo[ns] = namespace_labels(ns)
            return labels

        state = cls(pod, pod_terms(pod), ns_labels)
        state.infos, state.with_affinity = infos, with_affinity
        terms = state.terms
        own = lambda _ns: state.own_namespace_labels  # noqa: E731
        for info in with_affinity:
            labels = info.node.metadata.labels
            for other in info.pods_with_required_anti_affinity.values():
                for t in pod_terms(other).required_anti_affinity:
                    if t.matches(pod, own):
                        _add(state.existing_anti_affinity_counts, t.topology_key, labels, 1)
        if not terms.required:
            return state
        for info in infos:
            labels = info.node.metadata.labels
            for other in info.pods.values():
                if terms.required_affinity and all(t.matches(other, ns_labels) for t in terms.required_affinity):
                    for t in terms.required_affinity:
                        _add(state.affinity_counts, t.topology_key, labels, 1)
                for t in terms.required_anti_affinity:
                    if t.matches(other, ns_labels):
                        _add(state.anti_affinity_counts, t.topology_key, labels, 1)
        return state

    # ---- Filter ----

    def filter(self, info: NodeInfo) -> str | None:
        labels = info.node.metadata.labels
        if self.terms.required_affinity and not self._satisfies_affinity(labels):
            return REASON_AFFINITY_RULES
        if self.anti_affinity_counts:
            for t in self.terms.required_anti_affinity:
                value = labels.get(t.topology_key)
                if value is not None and self.anti_affinity_counts.get((t.topology_key, value), 0) > 0:
                    return REASON_ANTI_AFFINITY_RULES
        if self.existing_anti_affinity_counts:
            for pair in labels.items():
                if self.existing_anti_affinity_counts.get(pair, 0) > 0:
                    return REASON_EXISTING_ANTI_AFFINITY
        return None

    def _satisfies_affinity(self, labels) -> bool:
        pods_exist = True
        for t in self.terms.required_affinity:
            value = labels.get(t.topology_key)
            if value is None:
                return False  # every term's topology label must be on the node
            if self.affinity_counts.get((t.topology_key, value), 0) <= 0:
                pods_exist = False
        if pods_exist:
            return True
        # the first pod of a group with affinity to itself: nothing matches anywhere yet,
        # and the pod matches its own terms
        own = lambda _ns: self.own_namespace_labels  # noqa: E731
        return not self.affinity_counts and all(t.matches(self.pod, own) for t in self.terms.required_affinity)

    # ---- Score ----

    def score(self, feasible: Sequence[NodeInfo]) -> list[int]:
        """0..100 per node of ``feasible``."""
        pod, terms = self.pod, self.terms
        own = lambda _ns: self.own_namespace_labels  # noqa: E731
        topology: dict[str, dict[str, int]] = {}

        def credit(term: AffinityTerm, weight: int, labels) -> None:
            value = labels.get(term.topology_key)
            if value is not None:
                values = topology.setdefault(term.topology_key, {})
                values[value] = values.get(value, 0) + weight

        # without preferred terms of its own, only other pods' terms can count
        every_pod = terms.preferred
        for info in self.infos if every_pod else self.with_affinity:
            labels = info.node.metadata.labels
            if not labels:
                continue
            others = info.pods if every_pod else info.pods_with_affinity
            for other in others.values():
                for t in terms.preferred_affinity:
                    if t.matches(other, self.namespace_labels):
                        credit(t, t.weight, labels)
                for t in terms.preferred_anti_affinity:
                    if t.matches(other, self.namespace_labels):
                        credit(t, -t.weight, labels)
                theirs = pod_terms(other)
                if theirs is _NO_TERMS:
                    continue
                for t in theirs.required_affinity:
                    if t.matches(pod, own):
                        credit(t, HARD_POD_AFFINITY_WEIGHT, labels)
                for t in theirs.preferred_affinity:
                    if t.matches(pod, own):
                        credit(t, t.weight, labels)
                for t in theirs.preferred_anti_affinity:
                    if t.matches(pod, own):
                        credit(t, -t.weight, labels)
        if not topology:
            return [0 for _ in feasible]
        raw = []
        for info in feasible:
            labels = info.node.metadata.labels
            raw.append(sum(values.get(labels[key], 0) for key, values in topology.items() if key in labels))
        low, high = min(raw), max(raw)
        if high == low:
            return [0 for _ in raw]
        return [int(MAX_NODE_SCORE * (r - low) / (high - low)) for r in raw]
