"""The kubelet's resource statistics, by idea: ``cgroupfs`` (a cgroup's CPU and memory, v1 or
v2), ``netdev`` (a network namespace's interfaces), ``fsusage`` (filesystems, du),
``collector`` (the periodic housekeeping that gathers them into a Snapshot), ``summary``
(the Snapshot as /stats/summary's JSON). ``StatsEndpoints`` is what the kubelet's HTTP side
serves: /stats/summary, /metrics, /metrics/resource, /metrics/cadvisor."""

from __future__ import annotations

import json


class StatsEndpoints:
    """``collector``: a StatsCollector; ``metrics``: node.kubelet.metrics.KubeletMetrics;
    ``runtime``: the CRI runtime (/metrics' running counts); ``memory_capacity``: the node's
    memory in bytes (the node's availableBytes)."""

    def __init__(self, collector, node_name: str, metrics, runtime=None, memory_capacity: int | None = None):
        self.collector, self.node_name = collector, node_name
        self.kubelet_metrics, self.runtime = metrics, runtime
        self.memory_capacity = memory_capacity

    def summary(self, only_cpu_and_memory: bool = False) -> bytes:
        from node.kubelet.stats.summary import summary

        return json.dumps(summary(self.collector.snapshot, self.node_name, memory_capacity=self.memory_capacity,
                                  only_cpu_and_memory=only_cpu_and_memory), indent=2).encode()

    def resource_metrics(self) -> bytes:
        from node.kubelet.metrics import resource_metrics

        return resource_metrics(self.collector.snapshot).encode()

    def cadvisor_metrics(self) -> bytes:
        from node.kubelet.metrics import cadvisor_metrics

        return cadvisor_metrics(self.collector.snapshot).encode()

    def metrics(self) -> bytes:
        return self.kubelet_metrics.render(self.runtime).encode()
