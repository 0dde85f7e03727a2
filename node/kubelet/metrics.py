"""The kubelet's Prometheus metrics: its own (/metrics, upstream's pkg/kubelet/metrics: a few
of its families) and the resource metrics (/metrics/resource, upstream's resource metrics
collector: CPU and memory of the node, pods and containers from the housekeeping's Snapshot,
each sample stamped with the time it was read), and a part of cAdvisor's (/metrics/cadvisor,
from the same Snapshot).

Names, types, help texts (with component-base's stability prefix) and buckets are upstream's,
so dashboards and the metrics-server read them unchanged. Families come in name order, as
client_golang's registry gathers them. ``scrape_error`` (deprecated in 1.29, hidden since)
is not served; ``resource_scrape_error`` is.
"""

from __future__ import annotations

import os
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


# cAdvisor's families (/metrics/cadvisor): no stability prefix, they are not component-base's
CADVISOR_FAMILIES: dict[str, tuple[str, str]] = {
    "container_cpu_usage_seconds_total": (COUNTER, "Cumulative cpu time consumed in seconds."),
    "container_last_seen": (GAUGE, "Last time a container was seen by the exporter"),
    "container_memory_rss": (GAUGE, "Size of RSS in bytes."),
    "container_memory_usage_bytes": (
        GAUGE, "Current memory usage in bytes, including all memory regardless of when it was accessed"),
    "container_memory_working_set_bytes": (GAUGE, "Current working set in bytes."),
    "container_network_receive_bytes_total": (COUNTER, "Cumulative count of bytes received"),
    "container_network_receive_errors_total": (COUNTER, "Cumulative count of errors encountered while receiving"),
    "container_network_transmit_bytes_total": (COUNTER, "Cumulative count of bytes transmitted"),
    "container_network_transmit_errors_total": (
        COUNTER, "Cumulative count of errors encountered while transmitting"),
    "container_scrape_error": (GAUGE, "1 if there was an error while getting container metrics, 0 otherwise"),
    "container_start_time_seconds": (GAUGE, "Start time of the container since unix epoch in seconds."),
    "machine_cpu_cores": (GAUGE, "Number of logical CPU cores."),
    "machine_memory_bytes": (GAUGE, "Amount of memory installed on the machine."),
}


def _machine_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def cadvisor_metrics(snapshot) -> str:
    """/metrics/cadvisor of a collector.Snapshot: the machine's root cgroup, each pod's and each
    container's, labelled as the kubelet labels cAdvisor's (container, id = the cgroup path,
    image, name, namespace, pod); the pod's entry carries its network. The families cAdvisor
    has beyond these (per-CPU, filesystems' I/O, tasks, limits) are not served."""
    fams: dict[str, list] = {name: [] for name in CADVISOR_FAMILIES}
    now_s = int(time.time())

    def entry(labels: dict, cm, start_ns: int, network) -> None:
        base = tuple(sorted(labels.items()))
        fams["container_last_seen"].append(("", base, now_s))
        if start_ns > 0:
            fams["container_start_time_seconds"].append(("", base, start_ns // 1_000_000_000))
        u = cm.usage if cm is not None else None
        if u is not None:
            ms = u.time_ns // 1_000_000
            if u.cpu_ns is not None:
                fams["container_cpu_usage_seconds_total"].append(
                    ("", tuple(sorted({**labels, "cpu": "total"}.items())), u.cpu_ns / 1e9, ms))
            for name, value in (("container_memory_usage_bytes", u.memory_bytes),
                                ("container_memory_working_set_bytes", u.working_set_bytes),
                                ("container_memory_rss", u.rss_bytes)):
                if value is not None:
                    fams[name].append(("", base, value, ms))
        if network is not None:
            ms = network.time_ns // 1_000_000
            for i in network.interfaces:
                with_if = tuple(sorted({**labels, "interface": i.name}.items()))
                for name, value in (("container_network_receive_bytes_total", i.rx_bytes),
                                    ("container_network_receive_errors_total", i.rx_errors),
                                    ("container_network_transmit_bytes_total", i.tx_bytes),
                                    ("container_network_transmit_errors_total", i.tx_errors)):
                    fams[name].append(("", with_if, value, ms))

    empty = {"container": "", "id": "/", "image": "", "name": "", "namespace": "", "pod": ""}
    entry(empty, snapshot.node.cpu_memory, snapshot.node.start_ns, None)
    for pod in snapshot.pods:
        if pod.cgroup:
            entry({**empty, "id": pod.cgroup, "namespace": pod.namespace, "pod": pod.name}, pod.cpu_memory,
                  pod.start_ns, pod.network)
        for c in pod.containers:
            if c.cgroup:
                entry({"container": c.name, "id": c.cgroup, "image": c.image, "name": c.id,
                       "namespace": pod.namespace, "pod": pod.name}, c.cpu_memory, c.start_ns, None)
    fams["container_scrape_error"].append(("", (), 1 if snapshot.error else 0))
    fams["machine_cpu_cores"].append(("", (), os.cpu_count() or 0))
    memory = _machine_memory()
    if memory is not None:
        fams["machine_memory_bytes"].append(("", (), memory))
    return "".join(promtext.family_text(name, *CADVISOR_FAMILIES[name], sorted(samples))
                   for name, samples in sorted(fams.items()) if samples)


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
