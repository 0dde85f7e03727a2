"""The scheduler: pods with no node get one (filter, score, bind), shaped like
kube-scheduler's framework. ``plugins`` holds the pure filters and scores,
``cycle`` those counting other nodes' pods once per scheduling cycle
(``interpodaffinity``, ``topologyspread``), ``volumebinding`` the claims' plugin,
``queue`` the scheduling queue with backoff, ``scheduler`` the loop and its
cache; ``python -m controllers.scheduler`` runs it."""

from controllers.scheduler.scheduler import DEFAULT_SCHEDULER_NAME, Scheduler

__all__ = ["DEFAULT_SCHEDULER_NAME", "Scheduler"]
