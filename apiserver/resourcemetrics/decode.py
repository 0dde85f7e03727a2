"""A kubelet's /metrics/resource (Prometheus text) as metrics-server reads it: the node's
cumulative CPU and working set, and each container's with its start time. Samples carry the
time the kubelet read them (milliseconds); one without a time is stamped with the scrape's.

As metrics-server: a node point without CPU or memory (or with either zero) is dropped, and a
pod one of whose containers lacks CPU or memory is dropped whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from promtext.parse import samples

NODE_CPU, NODE_MEMORY = "node_cpu_usage_seconds_total", "node_memory_working_set_bytes"
CONTAINER_CPU, CONTAINER_MEMORY = "container_cpu_usage_seconds_total", "container_memory_working_set_bytes"
CONTAINER_START = "container_start_time_seconds"


@dataclass(frozen=True)
class Point:
    """One reading: ``time_ns`` when it was read, ``start_ns`` when the node or container
    started (its CPU counter's zero; 0: unknown), ``cpu_ns`` the cumulative CPU time
    (nanocore-seconds) and ``memory`` the working set (bytes)."""
    time_ns: int
    cpu_ns: int
    memory: int
    start_ns: int = 0


@dataclass
class Batch:
    """What one scrape round read: node name -> its point; (namespace, pod) -> container -> point."""
    nodes: dict[str, Point] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Point]] = field(default_factory=dict)


def decode(text: str, node_name: str, scrape_time_ns: int) -> Batch:
    """The Batch of one kubelet's answer; ValueError when it is not the text format."""
    node: dict[str, int] = {}
    containers: dict[tuple[str, str, str], dict[str, int]] = {}
    for s in samples(text):
        if s.name not in (NODE_CPU, NODE_MEMORY, CONTAINER_CPU, CONTAINER_MEMORY, CONTAINER_START):
            continue
        stamp = s.timestamp_ms * 1_000_000 if s.timestamp_ms is not None else scrape_time_ns
        if s.value != s.value or s.value < 0 or s.value == float("inf"):
            continue  # NaN or nonsense: no reading
        if s.name.startswith("node_"):
            if s.name == NODE_CPU:
                node["cpu"] = int(s.value * 1e9)
            else:
                node["memory"] = int(s.value)
            node["time"] = stamp
            continue
        key = (s.labels.get("namespace", ""), s.labels.get("pod", ""), s.labels.get("container", ""))
        c = containers.setdefault(key, {})
        if s.name == CONTAINER_START:
            c["start"] = int(s.value * 1e9)
        elif s.name == CONTAINER_CPU:
            c["cpu"], c["time"] = int(s.value * 1e9), stamp
        else:
            c["memory"], c["time"] = int(s.value), stamp
    batch = Batch()
    if node.get("time") and node.get("cpu") and node.get("memory"):
        batch.nodes[node_name] = Point(node["time"], node["cpu"], node["memory"])
    broken: set[tuple[str, str]] = set()
    for (ns, pod, name), c in containers.items():
        if not c.get("cpu") or not c.get("memory"):
            broken.add((ns, pod))  # a container read in part (or only started): the whole pod goes
            continue
        batch.pods.setdefault((ns, pod), {})[name] = Point(c["time"], c["cpu"], c["memory"], c.get("start", 0))
    for key in broken:
        batch.pods.pop(key, None)
    return batch
