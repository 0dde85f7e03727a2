"""The kubelet's Prometheus metrics: its own (/metrics, upstream's pkg/kubelet/metrics: a few
of its families) and the resource metrics (/metrics/resource, upstream's resource metrics
collector: CPU and memory of the node, pods and containers from the housekeeping's Snapshot,
each sample stamped with the time it was read).

Names, types, help texts (with component-base's stability prefix) and buckets are upstream's,
so dashboards and the metrics-server read them unchanged. Families come in name order, as
client_golang's registry gathers them. ``scrape_error`` (deprecated in 1.29, hidden since)
is not served; ``resource_scrape_error`` is.
"""

from __future__ import annotations

import threading
import time

import promtext
from promtext import COUNTER, GAUGE, HISTOGRAM, Histogram

# pkg/kubelet/metrics: podStartupDurationBuckets, and client_golang's DefBuckets
POD_START_BUCKETS = (0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900,
                     1200, 1800, 2700, 3600)
DEF_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

STABLE, ALPHA = "[STABLE] ", "[ALPHA] "

FAMILIES: dict[str, tuple[str, str]] = {
    # the resource metrics
    "container_cpu_usage_seconds_total": (
        COUNTER, STABLE + "Cumulative cpu time consumed by the container in core-seconds"),
    "container_memory_working_set_bytes": (GAUGE, STABLE + "Current working set of the container in bytes"),
    "container_start_time_seconds": (GAUGE, STABLE + "Start time of the container since unix epoch in seconds"),
    "node_cpu_usage_seconds_total": (COUNTER, STABLE + "Cumulative cpu time consumed by the node in core-seconds"),
    "node_memory_working_set_bytes": (GAUGE, STABLE + "Current working set of the node in bytes"),
    "pod_cpu_usage_seconds_total": (COUNTER, STABLE + "Cumulative cpu time consumed by the pod in core-seconds"),
    "pod_memory_working_set_bytes": (GAUGE, STABLE + "Current working set of the pod in bytes"),
    "resource_scrape_error": (
        GAUGE, STABLE + "1 if there was an error while getting container metrics, 0 otherwise"),
    # the kubelet's own
    "kubelet_node_name": (GAUGE, ALPHA + "The node's name. The count is always 1."),
    "kubelet_pleg_relist_duration_seconds": (HISTOGRAM, ALPHA + "Duration in seconds for relisting pods in PLEG."),
    "kubelet_pod_start_duration_seconds": (
        HISTOGRAM, ALPHA + "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run"),
    "kubelet_running_containers": (GAUGE, ALPHA + "Number of containers currently running"),
    "kubelet_running_pods": (GAUGE, ALPHA + "Number of pods that have a running pod sandbox"),
}


def _text(families: list[tuple[str, list]]) -> str:
    return "".join(promtext.family_text(name, *FAMILIES[name], samples) for name, samples in sorted(families))


def resource_metrics(snapshot) -> str:
    """/metrics/resource of a collector.Snapshot."""
    def ms(ns: int) -> int:
        return ns // 1_000_000

    fams: dict[str, list] = {name: [] for name in (
        "container_cpu_usage_seconds_total", "container_memory_working_set_bytes", "container_start_time_seconds",
        "node_cpu_usage_seconds_total", "node_memory_working_set_bytes", "pod_cpu_usage_seconds_total",
        "pod_memory_working_set_bytes")}
    node = snapshot.node.cpu_memory
    if node is not None and node.usage.cpu_ns is not None:
        fams["node_cpu_usage_seconds_total"].append(("", (), node.usage.cpu_ns / 1e9, ms(node.usage.time_ns)))
    if node is not None and node.usage.working_set_bytes is not None:
        fams["node_memory_working_set_bytes"].append(("", (), node.usage.working_set_bytes, ms(node.usage.time_ns)))
    for pod in sorted(snapshot.pods, key=lambda p: (p.namespace, p.name)):
        for c in pod.containers:
            labels = (("container", c.name), ("namespace", pod.namespace), ("pod", pod.name))
            if c.start_ns > 0:
                fams["container_start_time_seconds"].append(("", labels, c.start_ns / 1e9))
            u = c.cpu_memory.usage if c.cpu_memory is not None else None
            if u is not None and u.cpu_ns is not None:
                fams["container_cpu_usage_seconds_total"].append(("", labels, u.cpu_ns / 1e9, ms(u.time_ns)))
            if u is not None and u.working_set_bytes is not None:
                fams["container_memory_working_set_bytes"].append(("", labels, u.working_set_bytes, ms(u.time_ns)))
        labels = (("namespace", pod.namespace), ("pod", pod.name))
        u = pod.cpu_memory.usage if pod.cpu_memory is not None else None
        if u is not None and u.cpu_ns is not None:
            fams["pod_cpu_usage_seconds_total"].append(("", labels, u.cpu_ns / 1e9, ms(u.time_ns)))
        if u is not None and u.working_set_bytes is not None:
            fams["pod_memory_working_set_bytes"].append(("", labels, u.working_set_bytes, ms(u.time_ns)))
    # an empty family is not written (client_golang gathers none)
    out = [(name, samples) for name, samples in fams.items() if samples]
    out.append(("resource_scrape_error", [("", (), 1 if snapshot.error else 0)]))
    return _text(out)


# container_state label values (kubecontainer.State)
_STATES = {0: "created", 1: "running", 2: "exited", 3: "unknown"}


class KubeletMetrics:
    """What the kubelet counts as it works (pod starts, relists), and the /metrics text with
    what the runtime says now (running pods and containers)."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self.pod_start = Histogram(POD_START_BUCKETS)
        self.pleg_relist = Histogram(DEF_BUCKETS)
        self._first_seen: dict[str, float] = {}   # uid -> monotonic time the kubelet first saw it
        self._started: set[str] = set()
        self._lock = threading.Lock()

    def pod_seen(self, uid: str) -> None:
        with self._lock:
            self._first_seen.setdefault(uid, time.monotonic())

    def pod_running(self, uid: str) -> None:
        """The pod's status says Running: its first time counts (upstream's SyncPod)."""
        with self._lock:
            if uid in self._started or uid not in self._first_seen:
                return
            self._started.add(uid)
            seen = self._first_seen[uid]
        self.pod_start.observe(time.monotonic() - seen)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._first_seen.pop(uid, None)
            self._started.discard(uid)

    def render(self, runtime) -> str:
        """``runtime``: the CRI RuntimeService (ListPodSandbox, ListContainers) or None."""
        from node.cri.client import CriError
        from node.pb import cri_pb2

        fams = [("kubelet_node_name", [("", (("node", self.node_name),), 1)]),
                ("kubelet_pleg_relist_duration_seconds", self.pleg_relist.samples()),
                ("kubelet_pod_start_duration_seconds", self.pod_start.samples())]
        if runtime is not None:
            try:
                sandboxes = runtime.list_pod_sandbox()
                containers = runtime.list_containers()
            except CriError:
                sandboxes = containers = None
            if sandboxes is not None:
                fams.append(("kubelet_running_pods",
                             [("", (), sum(1 for s in sandboxes if s.state == cri_pb2.SANDBOX_READY))]))
                counts: dict[str, int] = {}
                for c in containers:
                    state = _STATES.get(c.state, "unknown")
                    counts[state] = counts.get(state, 0) + 1
                fams.append(("kubelet_running_containers",
                             [("", (("container_state", s),), n) for s, n in sorted(counts.items())]))
        return _text(fams) + promtext.process_text()
