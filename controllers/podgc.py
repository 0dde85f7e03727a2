"""The pod garbage collector's orphan sweep, as kube-controller-manager's PodGC: a pod bound to
a Node that no longer exists (deleted by the cloud's node lifecycle controller, by a user, by an
autoscaler) has nobody left to stop it or report it, so it is deleted at once (grace 0) and its
controller makes a replacement elsewhere.

Every ``period`` the pods' cache is compared with the nodes' cache; a node missing from the
cache is asked of the apiserver before its pods go, so a lagging cache never costs a pod
(Kubernetes waits a 40 s quarantine for the same reason)."""

from __future__ import annotations

import logging

from apiserver.errors import ApiError
from controllers.base import Controller

log = logging.getLogger("controllers.podgc")


class PodGCController(Controller):
    """No work queue: a sweep every ``period``."""

    name = "podgc"

    def __init__(self, client, informers, *, period: float = 20.0, recorder=None) -> None:
        self.client, self.period, self.recorder = client, period, recorder
        self.pods = informers.informer("pods")
        self.nodes = informers.informer("nodes")
        self.deleted = 0
        super().__init__([self.pods, self.nodes], 1)

    def _start_threads(self) -> None:
        self.every(self.period, self.gc_orphaned)

    def gc_orphaned(self) -> int:
        """Deletes the pods bound to nodes that do not exist; returns how many."""
        known = set(self.nodes.store.keys())
        absent: dict[str, bool] = {}
        count = 0
        for pod in self.pods.store.list():
            node = pod.spec.node_name
            if not node or node in known:
                continue
            if node not in absent:
                try:
                    self.client.get("nodes", node, "")
                    absent[node] = False
                except ApiError as e:
                    absent[node] = e.reason == "NotFound"
            if not absent[node]:
                continue
            try:
                self.client.delete("pods", pod.metadata.name, pod.metadata.namespace,
                                   uid=pod.metadata.uid, grace_period_seconds=0)
                count += 1
                log.info("deleted pod %s/%s: its node %s is gone", pod.metadata.namespace,
                         pod.metadata.name, node)
            except ApiError as e:
                if e.reason not in ("NotFound", "Conflict"):
                    raise
        self.deleted += count
        return count
