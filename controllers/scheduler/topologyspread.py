"""PodTopologySpread: a pod's topologySpreadConstraints, as kube-scheduler's plugin of that
name applies them.

A constraint counts the pods of the pod's namespace that its selector matches (terminating
ones left out) per domain: the nodes sharing a value of the label ``topologyKey``. Only
eligible nodes count: those with every constraint's topology label and, by the constraint's
node inclusion policies, matching the pod's node selector and required node affinity
(nodeAffinityPolicy Honor, the default) and with every NoSchedule/NoExecute taint tolerated
(nodeTaintsPolicy Honor; Ignore by default).

- Filter (DoNotSchedule): a node without the topology label is refused; else the domain's
  count, plus one when the pod matches the selector itself, minus the smallest count over
  the domains (0 when fewer domains than minDomains exist) must not exceed maxSkew.
- Score (ScheduleAnyway): fewer matching pods in the node's domains is better, each
  constraint weighed by the log of its number of domains; normalized so the emptiest node
  scores 100.

``TopologySpreadState.compute`` is upstream's PreFilter: one pass over the nodes per
scheduling cycle, counting only when the pod has constraints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from apiserver.selectors import LabelSelector, LabelSelectorError, label_selector_from_proto
from controllers.scheduler.plugins import MAX_NODE_SCORE, NodeInfo, filter_node_affinity, filter_taint_toleration

REASON_CONSTRAINTS_NOT_MATCH = "node(s) didn't match pod topology spread constraints"
REASON_NODE_LABEL_NOT_MATCH = REASON_CONSTRAINTS_NOT_MATCH + " (missing required label)"
LABEL_HOSTNAME = "kubernetes.io/hostname"
_NO_DOMAIN_MIN = 2 ** 31 - 1  # upstream's critical path before any domain is seen


@dataclass(frozen=True)
class SpreadConstraint:
    max_skew: int
    topology_key: str
    selector: LabelSelector | None  # None matches nothing
    min_domains: int = 1
    honor_node_affinity: bool = True
    honor_node_taints: bool = False

    @classmethod
    def of(cls, pod, c) -> SpreadConstraint:
        """The constraint with the pod's values of its matchLabelKeys added to the selector."""
        selector = None
        if c.HasField("label_selector"):
            try:
                selector = label_selector_from_proto(c.label_selector)
            except LabelSelectorError:
                selector = None
        labels = pod.metadata.labels
        own = {k: labels[k] for k in c.match_label_keys if k in labels}
        if own:
            try:
                merged = LabelSelector.from_labels(own).requirements
            except LabelSelectorError:
                merged = ()
            selector = LabelSelector.of((*merged, *(selector.requirements if selector else ())))
        return cls(c.max_skew, c.topology_key, selector,
                   c.min_domains if c.HasField("min_domains") else 1,
                   not c.HasField("node_affinity_policy") or c.node_affinity_policy == "Honor",
                   c.HasField("node_taints_policy") and c.node_taints_policy == "Honor")

    def matches(self, labels) -> bool:
        return self.selector is not None and self.selector.matches(labels)


def _count_matching(info: NodeInfo, c: SpreadConstraint, namespace: str) -> int:
    if c.selector is None:
        return 0
    n = 0
    for p in info.pods.values():
        meta = p.metadata
        if meta.namespace == namespace and not meta.deletion_timestamp and c.selector.matches(meta.labels):
            n += 1
    return n


class _Eligibility:
    """Whether a node passes the pod's node affinity and taints, each asked at most once."""

    def __init__(self, pod, info: NodeInfo) -> None:
        self.pod, self.info = pod, info
        self._affinity = self._taints = None

    def includes(self, c: SpreadConstraint) -> bool:
        if c.honor_node_affinity:
            if self._affinity is None:
                self._affinity = filter_node_affinity(self.pod, self.info) is None
            if not self._affinity:
                return False
        if c.honor_node_taints:
            if self._taints is None:
                self._taints = filter_taint_toleration(self.pod, self.info) is None
            if not self._taints:
                return False
        return True


def _has_keys(labels, constraints: Sequence[SpreadConstraint]) -> bool:
    return all(c.topology_key in labels for c in constraints)


class TopologySpreadState:
    """What one scheduling cycle of ``pod`` needs to filter and score nodes."""

    def __init__(self, pod) -> None:
        self.pod = pod
        self.hard: tuple[SpreadConstraint, ...] = ()
        self.soft: tuple[SpreadConstraint, ...] = ()
        self.domain_counts: list[dict[str, int]] = []  # per hard constraint: value -> count
        self.min_counts: list[int] = []

    @classmethod
    def compute(cls, pod, infos: Sequence[NodeInfo]) -> TopologySpreadState:
        """Upstream's PreFilter over ``infos`` (every node of the cache)."""
        state = cls(pod)
        spec_constraints = pod.spec.topology_spread_constraints
        if not spec_constraints:
            return state
        state.hard = tuple(SpreadConstraint.of(pod, c) for c in spec_constraints
                           if c.when_unsatisfiable == "DoNotSchedule")
        state.soft = tuple(SpreadConstraint.of(pod, c) for c in spec_constraints
                           if c.when_unsatisfiable == "ScheduleAnyway")
        hard, ns = state.hard, pod.metadata.namespace
        state.domain_counts = [{} for _ in hard]
        if hard:
            for info in infos:
                labels = info.node.metadata.labels
                if not _has_keys(labels, hard):
                    continue
                eligible = _Eligibility(pod, info)
                for i, c in enumerate(hard):
                    if eligible.includes(c):
                        value, counts = labels[c.topology_key], state.domain_counts[i]
                        counts[value] = counts.get(value, 0) + _count_matching(info, c, ns)
        state.min_counts = [min(counts.values(), default=_NO_DOMAIN_MIN) for counts in state.domain_counts]
        return state

    # ---- Filter ----

    def filter(self, info: NodeInfo) -> str | None:
        if not self.hard:
            return None
        labels = info.node.metadata.labels
        own = self.pod.metadata.labels
        for i, c in enumerate(self.hard):
            value = labels.get(c.topology_key)
            if value is None:
                return REASON_NODE_LABEL_NOT_MATCH
            counts = self.domain_counts[i]
            global_min = 0 if len(counts) < c.min_domains else self.min_counts[i]
            skew = counts.get(value, 0) + (1 if c.matches(own) else 0) - global_min
            if skew > c.max_skew:
                return REASON_CONSTRAINTS_NOT_MATCH
        return None

    # ---- Score ----

    def score(self, feasible: Sequence[NodeInfo], infos: Sequence[NodeInfo]) -> list[int]:
        """0..100 per node of ``feasible``; ``infos`` are every node of the cache."""
        soft, pod = self.soft, self.pod
        if not soft or not feasible:
            return [0 for _ in feasible]
        ns = pod.metadata.namespace
        ignored: set[str] = set()
        pair_counts: dict[tuple[str, str], int] = {}
        sizes = [0] * len(soft)
        for info in feasible:
            labels = info.node.metadata.labels
            if not _has_keys(labels, soft):
                ignored.add(info.name)
                continue
            for i, c in enumerate(soft):
                if c.topology_key == LABEL_HOSTNAME:
                    continue  # counted per node below
                pair = (c.topology_key, labels[c.topology_key])
                if pair not in pair_counts:
                    pair_counts[pair] = 0
                    sizes[i] += 1
        weights = [math.log((len(feasible) - len(ignored) if c.topology_key == LABEL_HOSTNAME else sizes[i]) + 2)
                   for i, c in enumerate(soft)]
        if pair_counts:
            for info in infos:
                labels = info.node.metadata.labels
                if not _has_keys(labels, soft):
                    continue
                eligible = _Eligibility(pod, info)
                for c in soft:
                    pair = (c.topology_key, labels[c.topology_key])
                    if pair in pair_counts and eligible.includes(c):
                        pair_counts[pair] += _count_matching(info, c, ns)
        raw: list[int | None] = []
        for info in feasible:
            if info.name in ignored:
                raw.append(None)
                continue
            labels = info.node.metadata.labels
            total = 0.0
            for i, c in enumerate(soft):
                value = labels[c.topology_key]
                if c.topology_key == LABEL_HOSTNAME:
                    count = _count_matching(info, c, ns)
                else:
                    count = pair_counts[(c.topology_key, value)]
                total += count * weights[i] + (c.max_skew - 1)
            raw.append(math.floor(total + 0.5))
        valid = [r for r in raw if r is not None]
        low, high = min(valid, default=0), max(valid, default=0)
        out = []
        for r in raw:
            if r is None:
                out.append(0)
            elif high == 0:
                out.append(MAX_NODE_SCORE)
            else:
                out.append(MAX_NODE_SCORE * (high + low - r) // high)
        return out
