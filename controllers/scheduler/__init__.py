"""The scheduler: pods with no node get one (filter, score, bind), shaped like
kube-scheduler's framework. ``plugins`` holds the pure filters and scores,
``queue`` the scheduling queue with backoff, ``scheduler`` the loop."""
