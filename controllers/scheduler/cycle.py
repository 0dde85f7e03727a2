"""The plugins whose answer for one node depends on the pods of other nodes: PodTopologySpread
and InterPodAffinity. Their PreFilter runs once per scheduling cycle over every node
(``CycleState``); then each node's filter and score read what it counted.

They run after the per-node filters of ``plugins`` (as in kube-scheduler's default profile,
where they come last), so their reasons name a node only when nothing cheaper refused it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from controllers.scheduler import interpodaffinity, topologyspread
from controllers.scheduler.interpodaffinity import InterPodAffinityState, no_namespace_labels
from controllers.scheduler.plugins import NodeInfo
from controllers.scheduler.topologyspread import TopologySpreadState

# kube-scheduler's default weights
POD_TOPOLOGY_SPREAD_WEIGHT = 2
INTER_POD_AFFINITY_WEIGHT = 2
# refusals that placing or relabelling another pod can lift
POD_DEPENDENT_REASONS = frozenset({
    interpodaffinity.REASON_AFFINITY_RULES, interpodaffinity.REASON_ANTI_AFFINITY_RULES,
    interpodaffinity.REASON_EXISTING_ANTI_AFFINITY, topologyspread.REASON_CONSTRAINTS_NOT_MATCH,
})


class CycleState:
    """One pod's scheduling cycle over ``infos`` (every node of the cache, which must not
    change meanwhile); ``namespace_labels`` answers a namespace's labels, for affinity
    terms with a namespaceSelector."""

    def __init__(self, pod, infos: Sequence[NodeInfo], with_affinity: Sequence[NodeInfo] | None = None,
                 namespace_labels: Callable[[str], Mapping[str, str]] = no_namespace_labels) -> None:
        """``with_affinity``: the infos holding pods with affinity terms (upstream's
        HavePodsWithAffinityList), if the caller keeps them apart; else found in ``infos``."""
        self.infos = infos
        self.spread = TopologySpreadState.compute(pod, infos)
        self.affinity = InterPodAffinityState.compute(pod, infos, with_affinity, namespace_labels)
        self.filters = bool(self.spread.hard) or self.affinity.filters

    def filter(self, info: NodeInfo) -> list[str]:
        """[] when the node passes both plugins, else the first refusal's reason."""
        if not self.filters:
            return []
        reason = self.spread.filter(info) or self.affinity.filter(info)
        return [reason] if reason else []

    def score(self, feasible: Sequence[NodeInfo]) -> list[int]:
        """Both plugins' weighted scores per node of ``feasible``."""
        totals = [0] * len(feasible)
        for weight, scores in ((POD_TOPOLOGY_SPREAD_WEIGHT, self.spread.score(feasible, self.infos)),
                               (INTER_POD_AFFINITY_WEIGHT, self.affinity.score(feasible))):
            for i, s in enumerate(scores):
                totals[i] += weight * s
        return totals
