"""The last two points of every node and container, as metrics-server's storage keeps them, and
the usage between them: CPU is a rate, so a node or pod has metrics only once it was read twice
(its counter moved forward, its start unchanged); memory is the last working set.

Each scrape round's Batch replaces what is kept: a node or pod the round did not read has no
metrics until it is read twice again. A point no newer than the one kept moves nothing. A
container that started less than a resolution but at least FRESH_CONTAINER_NS ago, read once,
is measured from its start (CPU zero then), as metrics-server does for new containers.
"""

from __future__ import annotations

from dataclasses import dataclass

from apiserver.resourcemetrics.decode import Batch, Point

# metrics-server's freshContainerMinMetricsResolution: a shorter life gives too noisy a rate
FRESH_CONTAINER_NS = 10_000_000_000


@dataclass(frozen=True)
class Usage:
    """CPU in nanocores, memory in bytes, read at ``time_ns`` over the ``window_ns`` before it."""
    cpu_nanocores: int
    memory: int
    time_ns: int
    window_ns: int


def usage(last: Point, prev: Point) -> Usage | None:
    """The usage between two points of one node or container; None when they are not two
    readings of one run (its start went back, its counter went down) or not apart in time."""
    if last.start_ns < prev.start_ns or last.cpu_ns < prev.cpu_ns or last.time_ns <= prev.time_ns:
        return None
    window = last.time_ns - prev.time_ns
    return Usage(int((last.cpu_ns - prev.cpu_ns) * 1e9 / window), last.memory, last.time_ns, window)


def _kept_prev(new: Point, last: Point | None, prev: Point | None) -> Point | None:
    """The point kept before ``new``: the last one if ``new`` is newer, else the one before."""
    if last is not None and new.time_ns > last.time_ns:
        return last
    if prev is not None and prev.time_ns < new.time_ns:
        return prev
    return None


class Store:
    """``resolution_ns``: how often a round is scraped (the fresh-container rule's bound)."""

    def __init__(self, resolution_ns: int) -> None:
        self.resolution_ns = resolution_ns
        self.last_nodes: dict[str, Point] = {}
        self.prev_nodes: dict[str, Point] = {}
        self.last_pods: dict[tuple[str, str], dict[str, Point]] = {}
        self.prev_pods: dict[tuple[str, str], dict[str, Point]] = {}

    def store(self, batch: Batch) -> None:
        prev_nodes = {}
        for name, point in batch.nodes.items():
            kept = _kept_prev(point, self.last_nodes.get(name), self.prev_nodes.get(name))
            if kept is not None:
                prev_nodes[name] = kept
        prev_pods: dict[tuple[str, str], dict[str, Point]] = {}
        for key, containers in batch.pods.items():
            last, prev = self.last_pods.get(key, {}), self.prev_pods.get(key, {})
            kept_containers = {}
            for name, point in containers.items():
                age = point.time_ns - point.start_ns
                if point.start_ns and FRESH_CONTAINER_NS <= age < self.resolution_ns:
                    kept = Point(point.start_ns, 0, 0, point.start_ns)
                elif name in last and point.start_ns < last[name].time_ns:  # the same run (not restarted)
                    kept = _kept_prev(point, last[name], prev.get(name))
                else:
                    kept = None
                if kept is not None:
                    kept_containers[name] = kept
            if kept_containers:
                prev_pods[key] = kept_containers
        self.last_nodes, self.prev_nodes = dict(batch.nodes), prev_nodes
        self.last_pods, self.prev_pods = dict(batch.pods), prev_pods

    def node(self, name: str) -> Usage | None:
        last, prev = self.last_nodes.get(name), self.prev_nodes.get(name)
        return usage(last, prev) if last is not None and prev is not None else None

    def pod(self, namespace: str, name: str) -> list[tuple[str, Usage]] | None:
        """(container, usage) of every container of the pod, by name; None unless every container
        read has two points (metrics-server answers nothing for a pod in part)."""
        last, prev = self.last_pods.get((namespace, name)), self.prev_pods.get((namespace, name))
        if not last or prev is None or set(last) - set(prev):
            return None
        out = []
        for container in sorted(last):
            u = usage(last[container], prev[container])
            if u is not None:
                out.append((container, u))
        return out

    def incomplete(self) -> bool:
        """Whether something read has only one point (its metrics wait for another round)."""
        return set(self.last_nodes) != set(self.prev_nodes) or any(
            set(c) - set(self.prev_pods.get(key, {})) for key, c in self.last_pods.items())
