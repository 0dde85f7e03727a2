"""The resource metrics behind metrics.k8s.io (apiserver/rest/metricsapi.py), gathered as
metrics-server gathers them: each real node's kubelet scraped at /metrics/resource, the last
two points of every node and container kept, CPU the rate between them.

- ``decode``: a kubelet's /metrics/resource text to one Batch of points
- ``store``: the last two points per node and container, and the usage between them
- ``scraper``: every kubelet scraped at once, on demand, at most once per resolution
"""
