"""`python -m cloud.autoscaler`: node provisioning in the spirit of cluster-autoscaler.

Every --scan-interval it reads its caches of Nodes and Pods and the cloud's node groups, then:

Scale up. Pods the scheduler marked unschedulable (PodScheduled=False, reason Unschedulable) are
first tried, with the scheduler's own filters, on the nodes that exist (the scheduler may simply
not have retried yet) and on the nodes a group is already bringing up (its target size minus its
registered, initialized, Ready nodes, each counted as an empty node of the group's type). What
still fits nowhere is bin-packed (first fit) onto empty template nodes of each group with room;
the group whose new nodes take the most pods (then: fewest nodes) grows by that many, up to its
max. Pods that no group's node could ever take get a NotTriggerScaleUp event and stay pending.

Scale down. A node of an autoscaled group is unneeded while the sum of its pods' requests is
below --scale-down-utilization-threshold of its allocatable cpu and memory, each of its pods is
managed by a controller (else nobody would recreate it) and could be placed, by the same filters,
on the other nodes. Once unneeded for --scale-down-unneeded-time (and no scale-up happened for
--scale-down-delay-after-add, and nothing is pending), the node is drained: tainted
``ToBeDeletedByClusterAutoscaler`` (NoSchedule, so nothing new lands there and load balancers
drop it), its pods deleted with their own grace period, and once they are gone (or after
--max-graceful-termination-sec) its instance is deleted through the group, whose target drops
by one, never below its min; then the Node object is deleted. One node is drained at a time.

An instance of a group whose Node is not registered, initialized and Ready
--max-node-provision-time after its launch is deleted through its group (its target drops, so
the pods it was for count as unhelped again and may bring one in another group).

Not there: expanders other than "most pods", scale-down of many empty nodes at once,
PodDisruptionBudgets, backing off a group whose instances fail to come up, a status ConfigMap.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from cloud.ccm import TO_BE_DELETED_TAINT, UNINITIALIZED_TAINT, has_taint, ready_status
from cloud.client import CloudApiError, CloudClient
from controllers.base import Controller
from controllers.component import add_common_flags, run_component, setup_logging
from controllers.events import WARNING, EventRecorder
from controllers.informer import SharedInformerFactory, deep_copy
from controllers.podutil import get_condition
from controllers.scheduler.plugins import NodeInfo, controller_uid, counts_on_node, run_filters

log = logging.getLogger("cloud.autoscaler")

SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"


def unschedulable(pod) -> bool:
    if pod.spec.node_name or pod.metadata.deletion_timestamp or pod.status.phase in ("Succeeded", "Failed"):
        return False
    cond = get_condition(pod.status.conditions, "PodScheduled")
    return cond is not None and cond.status == "False" and cond.reason == "Unschedulable"


def template_node(group: dict, types: dict) -> core_pb2.Node:
    """An empty, Ready, untainted node of the group's instance type: what a new one will be."""
    n = core_pb2.Node()
    n.metadata.name = f"template-{group['name']}"
    n.metadata.labels.update({"node.kubernetes.io/instance-type": group["type"], "kubernetes.io/os": "linux"})
    n.status.capacity.update(types[group["type"]])
    n.status.allocatable.update(types[group["type"]])
    n.status.conditions.add(type="Ready", status="True")
    return n


def place(pod, infos: list[NodeInfo]) -> NodeInfo | None:
    """The first node the pod fits (and counts it there), or None."""
    for info in infos:
        if not run_filters(pod, info):
            info.add_pod(pod)
            return info
    return None


def utilization(info: NodeInfo) -> float:
    cpu = info.requested.milli_cpu / info.alloc_milli_cpu if info.alloc_milli_cpu else 1.0
    mem = info.requested.memory / info.alloc_memory if info.alloc_memory else 1.0
    return max(cpu, mem)


class Autoscaler(Controller):
    """No work queue: a scan every ``scan_interval``."""

    name = "autoscaler"

    def __init__(self, client, cloud: CloudClient, informers, recorder, *, scan_interval: float = 10.0,
                 unneeded_time: float = 600.0, delay_after_add: float = 600.0, threshold: float = 0.5,
                 max_grace: float = 600.0, scale_down: bool = True, groups: tuple[str, ...] = (),
                 max_provision_time: float = 900.0) -> None:
        self.client, self.cloud, self.recorder = client, cloud, recorder
        self.scan_interval, self.unneeded_time, self.delay_after_add = scan_interval, unneeded_time, delay_after_add
        self.threshold, self.max_grace, self.scale_down_enabled = threshold, max_grace, scale_down
        self.only_groups = set(groups)
        self.max_provision_time = max_provision_time
        self.nodes = informers.informer("nodes")
        self.pods = informers.informer("pods")
        self.types = cloud.metadata()["instanceTypes"]
        self.unneeded_since: dict[str, float] = {}
        self.last_scale_up = -1e9
        self._draining: threading.Thread | None = None
        self._noticed: dict[str, float] = {}  # pod uid -> when it last got a NotTriggerScaleUp event
        super().__init__([self.nodes, self.pods], 1)

    def _start_threads(self) -> None:
        self.every(self.scan_interval, self._scan)

    def _scan(self) -> None:
        try:
            self.run_once()
        except CloudApiError as e:  # the cloud is down or refused: say so, try at the next scan
            log.warning("%s", e)

    # ---- one scan ----

    def run_once(self) -> None:
        now = time.monotonic()
        groups = {g["name"]: g for g in self.cloud.node_groups()
                  if not self.only_groups or g["name"] in self.only_groups}
        instances = {i["name"]: i for i in self.cloud.instances()}
        nodes = self.nodes.store.list()
        pods = self.pods.store.list()
        by_node: dict[str, list] = {}
        for pod in pods:
            if pod.spec.node_name and counts_on_node(pod):
                by_node.setdefault(pod.spec.node_name, []).append(pod)
        self.remove_unregistered(nodes, groups, instances)
        pending = [p for p in pods if unschedulable(p)]
        if pending and self.scale_up(pending, nodes, by_node, groups, instances):
            self.last_scale_up = now
        if pending or not self.scale_down_enabled:
            self.unneeded_since.clear()
            return
        self.scale_down(now, nodes, by_node, groups, instances)

    def _usable(self, node) -> bool:
        return (ready_status(node) == "True" and not node.spec.unschedulable
                and not has_taint(node, UNINITIALIZED_TAINT) and not has_taint(node, TO_BE_DELETED_TAINT))

    def remove_unregistered(self, nodes, groups, instances) -> None:
        """Instances still without a usable Node after max_provision_time are given up."""
        usable = {n.metadata.name for n in nodes if self._usable(n)}
        now = time.time()
        for name, inst in instances.items():
            if inst["group"] in groups and name not in usable and inst["state"] == "running" \
                    and now - inst["launchTime"] > self.max_provision_time:
                g = groups[inst["group"]]
                log.warning("instance %s (%s) has no Ready node %.0f s after its launch; deleting it",
                            inst["id"], name, now - inst["launchTime"])
                try:
                    self.cloud.delete_group_instances(g["name"], [inst["id"]])
                    g["targetSize"] -= 1
                except CloudApiError as e:
                    if e.status != 409:  # 409: at the group's min, the group keeps it
                        raise
                    log.warning("%s", e)

    def scale_up(self, pending, nodes, by_node, groups, instances) -> bool:
        existing = [NodeInfo.build(n, by_node.get(n.metadata.name, [])) for n in nodes if self._usable(n)]
        upcoming: list[NodeInfo] = []
        registered = {}
        for n in nodes:
            inst = instances.get(n.metadata.name)
            if inst and self._usable(n):
                registered[inst["group"]] = registered.get(inst["group"], 0) + 1
        for g in groups.values():
            for _ in range(max(0, g["targetSize"] - registered.get(g["name"], 0))):
                upcoming.append(NodeInfo.build(template_node(g, self.types)))
        left = [p for p in sorted(pending, key=lambda p: p.metadata.creation_timestamp)
                if place(p, existing) is None and place(p, upcoming) is None]
        if not left:
            return False
        best = None  # (pods helped, -nodes, name), nodes, helped
        for g in sorted(groups.values(), key=lambda g: g["name"]):
            room = g["max"] - g["targetSize"]
            if room <= 0:
                continue
            template = template_node(g, self.types)
            new: list[NodeInfo] = []
            helped = []
            for pod in left:
                if place(pod, new) is not None:
                    helped.append(pod)
                elif len(new) < room:
                    info = NodeInfo.build(template)
                    if not run_filters(pod, info):
                        info.add_pod(pod)
                        new.append(info)
                        helped.append(pod)
            if helped:
                score = (len(helped), -len(new), g["name"])
                if best is None or score > best[0]:
                    best = (score, g, len(new), helped)
        if best is None:
            self._not_triggered(left, groups)
            return False
        _, g, count, helped = best
        log.info("scale-up: node group %s %d -> %d for %d pod(s)", g["name"], g["targetSize"],
                 g["targetSize"] + count, len(helped))
        self.cloud.increase_size(g["name"], count)
        for pod in helped:
            self.recorder.event(pod, "Normal", "TriggeredScaleUp",
                                f"pod triggered scale-up: [{{{g['name']} {g['targetSize']}->{g['targetSize'] + count} (max: {g['max']})}}]")
        self._not_triggered([p for p in left if p not in helped], groups)
        return True

    def _not_triggered(self, pods, groups) -> None:
        now = time.monotonic()
        for pod in pods:
            if now - self._noticed.get(pod.metadata.uid, -1e9) < 30:
                continue
            self._noticed[pod.metadata.uid] = now
            full = [g["name"] for g in groups.values() if g["targetSize"] >= g["max"]]
            why = f"{len(full)} max node group size reached" if full else \
                f"{len(groups)} node(s) of the groups' types would not fit it"
            self.recorder.event(pod, "Normal", "NotTriggerScaleUp", f"pod didn't trigger scale-up: {why}")

    def scale_down(self, now, nodes, by_node, groups, instances) -> None:
        if self._draining is not None and self._draining.is_alive():
            return
        if now - self.last_scale_up < self.delay_after_add:
            self.unneeded_since.clear()
            return
        usable = [n for n in nodes if self._usable(n)]
        unneeded = []
        sizes = {name: g["targetSize"] for name, g in groups.items()}
        for node in usable:
            name = node.metadata.name
            inst = instances.get(name)
            if inst is None or inst["group"] not in groups:
                continue
            if sizes[inst["group"]] <= groups[inst["group"]]["min"]:
                continue
            info = NodeInfo.build(node, by_node.get(name, []))
            if utilization(info) >= self.threshold:
                continue
            pods = by_node.get(name, [])
            if any(not controller_uid(p) or p.metadata.annotations.get(SAFE_TO_EVICT) == "false" for p in pods):
                continue
            others = [NodeInfo.build(n, by_node.get(n.metadata.name, [])) for n in usable
                      if n.metadata.name != name and n.metadata.name not in unneeded]
            if all(place(p, others) is not None for p in pods if not p.metadata.deletion_timestamp):
                unneeded.append(name)
                sizes[inst["group"]] -= 1
        for name in list(self.unneeded_since):
            if name not in unneeded:
                del self.unneeded_since[name]
        for name in unneeded:
            self.unneeded_since.setdefault(name, now)
        due = [n for n in unneeded if now - self.unneeded_since[n] >= self.unneeded_time]
        if due:
            node = self.nodes.store.get(due[0])
            inst = instances[due[0]]
            del self.unneeded_since[due[0]]
            self._draining = threading.Thread(target=self._drain_and_delete, args=(node, inst),
                                              name=f"drain-{due[0]}", daemon=True)
            self._draining.start()

    # ---- drain ----

    def _set_taint(self, name: str, on: bool) -> None:
        for _ in range(5):
            try:
                node = deep_copy(self.client.get("nodes", name, ""))
                kept = [t for t in node.spec.taints if t.key != TO_BE_DELETED_TAINT]
                del node.spec.taints[:]
                node.spec.taints.extend(kept)
                if on:
                    node.spec.taints.add(key=TO_BE_DELETED_TAINT, value=str(int(time.time())), effect="NoSchedule")
                self.client.update(node)
                return
            except ApiError as e:
                if e.reason == "NotFound":
                    return
                if e.reason != "Conflict":
                    raise

    def _drain_and_delete(self, node, inst: dict) -> None:
        name = node.metadata.name
        log.info("scale-down: node %s (%s, group %s) unneeded; draining", name, inst["id"], inst["group"])
        self.recorder.event(node, "Normal", "ScaleDown", "marked the node as toBeDeleted/unschedulable")
        try:
            self._set_taint(name, True)
            pods = [p for p in self.pods.store.list() if p.spec.node_name == name and counts_on_node(p)]
            grace = max([p.spec.termination_grace_period_seconds if p.spec.HasField("termination_grace_period_seconds")
                         else 30 for p in pods] + [0])
            for pod in pods:
                try:
                    self.client.delete("pods", pod.metadata.name, pod.metadata.namespace, uid=pod.metadata.uid)
                    self.recorder.event(pod, "Normal", "ScaleDown", "deleting pod for node scale down")
                except ApiError as e:
                    if e.reason not in ("NotFound", "Conflict"):
                        raise
            deadline = time.monotonic() + min(self.max_grace, grace) + 5
            while time.monotonic() < deadline and not self._stop.is_set():
                if not any(p.spec.node_name == name for p in self.pods.store.list()):
                    break
                time.sleep(0.2)
            else:
                log.warning("scale-down: pods of %s still there after their grace; deleting the node anyway", name)
            self.cloud.delete_group_instances(inst["group"], [inst["id"]])
            gone = time.monotonic() + 60  # its kubelet stopped: it cannot register the Node again
            while any(i["id"] == inst["id"] for i in self.cloud.instances()) and time.monotonic() < gone:
                time.sleep(0.2)
            try:
                self.client.delete("nodes", name, "", uid=node.metadata.uid)
            except ApiError as e:
                if e.reason != "NotFound":
                    raise
            log.info("scale-down: node %s removed", name)
        except Exception as e:
            log.exception("scale-down of %s failed; untainting it", name)
            self.recorder.event(node, WARNING, "ScaleDownFailed", f"failed to drain or delete the node: {e}")
            try:
                self._set_taint(name, False)
            except Exception:
                log.exception("untainting %s", name)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cloud.autoscaler", description=__doc__.split("\n\n")[0])
    p.add_argument("--cloud-url", required=True, help="the cloud's API, e.g. http://127.0.0.1:7070")
    p.add_argument("--nodes", action="append", default=[], metavar="GROUP",
                   help="a node group to autoscale (repeatable; default: every group of the cloud)")
    p.add_argument("--scan-interval", type=float, default=10.0)
    p.add_argument("--scale-down-enabled", default="true", choices=["true", "false"])
    p.add_argument("--scale-down-unneeded-time", type=float, default=600.0,
                   help="seconds a node must be unneeded before it is removed")
    p.add_argument("--scale-down-delay-after-add", type=float, default=600.0,
                   help="seconds after a scale-up before scale-down is considered again")
    p.add_argument("--scale-down-utilization-threshold", type=float, default=0.5)
    p.add_argument("--max-graceful-termination-sec", type=float, default=600.0)
    p.add_argument("--max-node-provision-time", type=float, default=900.0,
                   help="seconds an instance may take to become a Ready node before it is deleted")
    add_common_flags(p, lease_name="cluster-autoscaler")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args)
    client = Client(args.server)
    cloud = CloudClient(args.cloud_url)
    informers = SharedInformerFactory(client)
    recorder = EventRecorder(client, "cluster-autoscaler")
    state: dict = {}
    informers.informer("nodes"), informers.informer("pods")  # made before the factory starts them

    def start() -> None:
        informers.start()
        informers.wait_for_cache_sync(60)
        state["a"] = Autoscaler(
            client, cloud, informers, recorder, scan_interval=args.scan_interval,
            unneeded_time=args.scale_down_unneeded_time, delay_after_add=args.scale_down_delay_after_add,
            threshold=args.scale_down_utilization_threshold, max_grace=args.max_graceful_termination_sec,
            scale_down=args.scale_down_enabled == "true", groups=tuple(args.nodes),
            max_provision_time=args.max_node_provision_time).start()

    def stop() -> None:
        if "a" in state:
            state.pop("a").stop()
        informers.stop()
        recorder.stop()

    return run_component("cloud.autoscaler", client, args, start, stop)


if __name__ == "__main__":
    sys.exit(main())
