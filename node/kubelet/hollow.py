"""Hollow kubelets: hundreds of simulated nodes in one process, as KWOK does.

``HollowNodes(client, names)`` plays the kubelet of every named node with one
client, ONE pod informer (the pods bound to some node, indexed by node) and one
node informer, and two small pools of workers — never a thread per node:

- Registration: each node is created with its capacity and allocatable, a
  fake InternalIP, a pod CIDR, nodeInfo and a Ready=True condition; a node that
  already exists (a restarted kubelet) gets its status written again.
- Heartbeats, as kubelets with node leases do: the coordination Lease named as
  the node in "kube-node-lease" is renewed every ``heartbeat_interval``; the
  Ready condition's heartbeat is written less often (every
  ``status_report_interval``), and at once when someone else (the node
  lifecycle controller) marked a live node not Ready.
- Pods bound to a live node go from Pending to Running and Ready
  ``ready_delay`` seconds after the kubelet first saw them, with the status the
  real kubelet would write for running containers (node/kubelet/status.py's
  generate_pod_status: conditions, container statuses, QoS class, podIP from the
  node's pod CIDR, hostIP, startTime). A pod with a deletionTimestamp is deleted with
  grace period 0 after a simulated grace: its deletionGracePeriodSeconds,
  capped at ``max_grace``.
- ``stop_node(name)``: the node dies without being deleted: no more lease
  renewals, status or pod work. ``start_node(name)``: its kubelet restarts,
  registers again and catches up with its pods.

Everything is level-based: a worker reads the informer's cache and writes the
difference, so a missed or repeated event does no harm.

Run alone: ``python -m node.kubelet.hollow --server 127.0.0.1:6443 --nodes 5 --prefix node-``.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import logging
import random
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from apiserver.errors import ApiError
from apiserver.pb import coordination_pb2, core_pb2
from controllers.informer import NODE_INDEX, Informer, deep_copy, meta_namespace_key
from controllers.leaderelection import now_micro
from controllers.podutil import now_rfc3339
from controllers.workqueue import RateLimitingQueue, start_workers
from node.kubelet.nodeagent import get_or_create_lease
from node.kubelet.status import all_running_snapshot, generate_pod_status, set_condition

log = logging.getLogger("node.kubelet.hollow")

KUBELET_VERSION = "v1.30.0-hollow"
# node i: InternalIP NODE_IP_BASE + i + 1, pods from the i-th /24 of POD_NETWORK
NODE_IP_BASE = ipaddress.ip_address("172.16.0.0")
POD_NETWORK = ipaddress.ip_network("10.128.0.0/9")
POD_CIDR_PREFIX = 24
NODE_CONDITIONS_FALSE = (("MemoryPressure", "KubeletHasSufficientMemory",
                          "kubelet has sufficient memory available"),
                         ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                         ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"))
HEARTBEAT_WORKERS = 2


def parse_taint(spec) -> core_pb2.Taint:
    """A Taint from a Taint message or kubectl's ``key[=value]:Effect``."""
    if isinstance(spec, core_pb2.Taint):
        return spec
    text, _, effect = spec.rpartition(":")
    key, _, value = text.partition("=")
    if not key or not effect:
        raise ValueError(f"taint {spec!r}: want key[=value]:Effect")
    return core_pb2.Taint(key=key, value=value, effect=effect)


def node_internal_ip(index: int) -> str:
    return str(NODE_IP_BASE + index + 1)


def node_pod_cidr(index: int) -> ipaddress.IPv4Network:
    size = 2 ** (32 - POD_CIDR_PREFIX)
    if (index + 1) * size > POD_NETWORK.num_addresses:
        raise ValueError(f"node index {index} is beyond the pod network {POD_NETWORK}")
    return ipaddress.ip_network((int(POD_NETWORK.network_address) + index * size, POD_CIDR_PREFIX))


def is_running_and_ready(pod) -> bool:
    if pod.status.phase != "Running" or not pod.status.pod_ip:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


@dataclass
class _HollowNode:
    name: str
    index: int
    internal_ip: str
    pod_cidr: ipaddress.IPv4Network
    alive: bool = True
    registered: bool = False
    uid: str = ""
    lease: coordination_pb2.Lease | None = None
    assigned: dict[str, str] = field(default_factory=dict)  # pod uid -> pod IP handed out
    ip_cursor: int = 0


class HollowNodes:
    def __init__(self, client, names: Iterable[str], *, cpu: str = "4", memory: str = "8Gi",
                 pods: int = 110, labels: dict[str, str] | None = None, taints=None,
                 ready_delay: float = 0.5, heartbeat_interval: float = 10.0,
                 lease_duration: int = 40, status_report_interval: float | None = None,
                 max_grace: float = 1.0, workers: int = 4, first_index: int = 0) -> None:
        """``names``: the nodes to play; node ``names[i]`` gets the fake
        addresses of index ``first_index + i`` (give separate processes
        disjoint ranges). ``taints``: Taint messages or ``key[=value]:Effect``
        strings. ``status_report_interval`` defaults to 6 heartbeats."""
        self.client = client
        self.cpu, self.memory, self.pods = cpu, memory, pods
        self.labels = dict(labels or {})
        self.taints = [parse_taint(t) for t in (taints or ())]
        self.ready_delay = ready_delay
        self.heartbeat_interval = heartbeat_interval
        self.lease_duration = int(lease_duration)
        self.status_report_interval = (status_report_interval if status_report_interval is not None
                                       else 6 * heartbeat_interval)
        self.max_grace = max_grace
        self._lock = threading.Lock()
        self._nodes: dict[str, _HollowNode] = {}
        for i, name in enumerate(names):
            if name in self._nodes:
                raise ValueError(f"node {name!r} named twice")
            index = first_index + i
            self._nodes[name] = _HollowNode(name, index, node_internal_ip(index), node_pod_cidr(index))
        self._pod_informer = Informer(client, "pods", field_selector="spec.nodeName!=")
        self._node_informer = Informer(client, "nodes")
        self._beats = RateLimitingQueue(name="hollow-heartbeats")
        self._pod_queue = RateLimitingQueue(name="hollow-pods")
        self._n_workers = workers
        self._threads: list[threading.Thread] = []
        # pod uid -> monotonic time first seen bound (Pending) / terminating
        self._seen_at: dict[str, float] = {}
        self._terminating_at: dict[str, float] = {}
        self._pod_informer.add_handler(self._pod_added, self._pod_updated, self._pod_deleted)
        self._node_informer.add_handler(self._node_changed, lambda old, new: self._node_changed(new))

    @property
    def names(self) -> list[str]:
        return list(self._nodes)

    # ---- lifecycle ----

    def start(self) -> HollowNodes:
        self._pod_informer.start()
        self._node_informer.start()
        self._threads += start_workers(self._beats, self._sync_beat, HEARTBEAT_WORKERS, "hollow-heartbeat")
        self._threads += start_workers(self._pod_queue, self._sync_pod, self._n_workers, "hollow-pods")
        for name in self._nodes:
            self._beats.add(("register", name))
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stops every kubelet; the nodes stay registered (and go stale)."""
        self._beats.shut_down()
        self._pod_queue.shut_down()
        self._pod_informer.stop()
        self._node_informer.stop()
        for t in self._threads:
            t.join(timeout)

    def stop_node(self, name: str) -> None:
        """The node dies: no heartbeats, lease renewals or pod work until ``start_node``."""
        self._node(name).alive = False

    def start_node(self, name: str) -> None:
        """The node's kubelet restarts: registers, renews, takes up its pods."""
        node = self._node(name)
        if not node.alive:
            node.alive, node.registered = True, False
            self._beats.add(("register", name))

    def wait_registered(self, timeout: float = 30.0) -> bool:
        """True once every live node was registered (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n.registered for n in self._nodes.values() if n.alive):
                return True
            time.sleep(0.05)
        return False

    def _node(self, name: str) -> _HollowNode:
        try:
            return self._nodes[name]
        except KeyError:
            raise KeyError(f"{name!r} is not one of these hollow nodes") from None

    # ---- node registration and heartbeats ----

    def _sync_beat(self, key: tuple[str, str]) -> None:
        what, name = key
        node = self._nodes[name]
        if not node.alive:
            return  # a dead node's beats stop here; start_node registers again
        if what == "register":
            self._register(node)
        elif what == "lease" and node.registered:
            self._renew_lease(node)
            jitter = random.uniform(0.9, 1.0)
            self._beats.add_after(key, self.heartbeat_interval * jitter)
        elif what == "status" and node.registered:
            self._report_status(node)
            self._beats.add_after(key, self.status_report_interval)

    def _node_object(self, node: _HollowNode) -> core_pb2.Node:
        n = core_pb2.Node()
        n.metadata.name = node.name
        n.metadata.labels.update({"kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux",
                                  "kubernetes.io/arch": "amd64", **self.labels})
        n.spec.pod_cidr = str(node.pod_cidr)
        n.spec.taints.extend(self.taints)
        resources = {"cpu": str(self.cpu), "memory": str(self.memory), "pods": str(self.pods),
                     "ephemeral-storage": "100Gi"}
        n.status.capacity.update(resources)
        n.status.allocatable.update(resources)
        n.status.addresses.add(type="InternalIP", address=node.internal_ip)
        n.status.addresses.add(type="Hostname", address=node.name)
        info = n.status.node_info
        info.machine_id = hashlib.sha256(node.name.encode()).hexdigest()[:32]
        info.kernel_version = "6.1.0-hollow"
        info.os_image = "Hollow Linux"
        info.container_runtime_version = "hollow://1.0"
        info.kubelet_version = KUBELET_VERSION
        info.operating_system = "linux"
        info.architecture = "amd64"
        self._fill_node_conditions(n.status.conditions)
        return n

    @staticmethod
    def _fill_node_conditions(conditions) -> None:
        now = now_rfc3339()
        for type_, reason, message in NODE_CONDITIONS_FALSE:
            set_condition(conditions, type_, "False", now, reason=reason, message=message,
                           heartbeat=True)
        set_condition(conditions, "Ready", "True", now, reason="KubeletReady",
                       message="kubelet is posting ready status", heartbeat=True)

    def _register(self, node: _HollowNode) -> None:
        try:
            created = self.client.create(self._node_object(node))
            node.uid = created.metadata.uid
            log.info("registered node %s", node.name)
        except ApiError as e:
            if e.reason != "AlreadyExists":
                raise
            # a restarted kubelet: the node is there, its status is ours to write
            current = self.client.get("nodes", node.name, "")
            node.uid = current.metadata.uid
            self._write_status(node, current)
        node.lease = None
        self._renew_lease(node)
        node.registered = True  # registered = the Node and its Lease are there
        self._beats.add_after(("lease", node.name), self.heartbeat_interval)
        self._beats.add_after(("status", node.name), self.status_report_interval)
        for pod in self._pod_informer.store.by_index(NODE_INDEX, node.name):
            self._pod_queue.add(meta_namespace_key(pod))

    def _renew_lease(self, node: _HollowNode) -> None:
        lease = node.lease
        try:
            if lease is None:
                lease = get_or_create_lease(self.client, node.name, node.uid, self.lease_duration)
            renewed = deep_copy(lease)
            renewed.spec.renew_time = now_micro()
            renewed.spec.holder_identity = node.name
            renewed.spec.lease_duration_seconds = self.lease_duration
            node.lease = self.client.update(renewed)
        except ApiError:
            node.lease = None  # read it afresh on the retry
            raise

    def _report_status(self, node: _HollowNode) -> None:
        current = self._node_informer.store.get(node.name)
        if current is None:
            try:
                current = self.client.get("nodes", node.name, "")
            except ApiError as e:
                if e.reason != "NotFound":
                    raise
                log.warning("node %s was deleted; its kubelet stops until start_node", node.name)
                node.registered = False
                return
        self._write_status(node, current)

    def _write_status(self, node: _HollowNode, current) -> None:
        updated = deep_copy(current)
        self._fill_node_conditions(updated.status.conditions)
        self.client.update_status(updated)

    def _node_changed(self, obj) -> None:
        node = self._nodes.get(obj.metadata.name)
        if node is None or not node.alive or not node.registered:
            return
        if not any(c.type == "Ready" and c.status == "True" for c in obj.status.conditions):
            # someone (the node lifecycle controller) thinks we are gone: say otherwise now
            self._beats.add(("status", node.name))

    # ---- pods ----

    def _pod_added(self, pod) -> None:
        if pod.spec.node_name in self._nodes:
            self._pod_queue.add(meta_namespace_key(pod))

    def _pod_updated(self, old, new) -> None:
        self._pod_added(new)

    def _pod_deleted(self, pod) -> None:
        uid = pod.metadata.uid
        self._seen_at.pop(uid, None)
        self._terminating_at.pop(uid, None)
        node = self._nodes.get(pod.spec.node_name)
        if node is not None:
            with self._lock:
                node.assigned.pop(uid, None)

    def _sync_pod(self, key: str) -> None:
        pod = self._pod_informer.store.get(key)
        if pod is None:
            return
        node = self._nodes.get(pod.spec.node_name)
        if node is None or not (node.alive and node.registered):
            return
        now = time.monotonic()
        meta = pod.metadata
        if meta.deletion_timestamp:
            since = self._terminating_at.setdefault(meta.uid, now)
            grace = min(float(meta.deletion_grace_period_seconds), self.max_grace)
            if now < since + grace:
                self._pod_queue.add_after(key, since + grace - now)
                return
            try:
                self.client.delete("pods", meta.name, meta.namespace, uid=meta.uid,
                                   grace_period_seconds=0)
            except ApiError as e:
                if e.reason not in ("NotFound", "Conflict"):  # Conflict: another pod by that name
                    raise
            return
        if pod.status.phase in ("Succeeded", "Failed") or is_running_and_ready(pod):
            return
        since = self._seen_at.setdefault(meta.uid, now)
        if now < since + self.ready_delay:
            self._pod_queue.add_after(key, since + self.ready_delay - now)
            return
        self.client.update_status(self._running(pod, node))

    def _running(self, pod, node: _HollowNode):
        """The pod as its kubelet reports it once its containers run."""
        new = deep_copy(pod)
        ip = pod.status.pod_ip or self._allocate_ip(node, pod)
        # what the real kubelet would write once the pod's containers run (node/kubelet/status.py)
        new.status.CopyFrom(generate_pod_status(pod, all_running_snapshot(pod, ip, time.time()),
                                                runtime_name="hollow", host_ip=node.internal_ip))
        return new

    def _allocate_ip(self, node: _HollowNode, pod) -> str:
        """A free address of the node's pod CIDR (pods there already, or handed
        out and not yet seen back, count as used)."""
        hosts = node.pod_cidr.num_addresses - 2
        with self._lock:
            ip = node.assigned.get(pod.metadata.uid)
            if ip:
                return ip
            used = set(node.assigned.values())
            used.update(p.status.pod_ip for p in self._pod_informer.store.by_index(NODE_INDEX, node.name))
            for step in range(hosts):
                candidate = str(node.pod_cidr.network_address + 1 + (node.ip_cursor + step) % hosts)
                if candidate not in used:
                    break
            else:
                log.warning("node %s: pod CIDR %s exhausted; reusing an address", node.name, node.pod_cidr)
            node.ip_cursor = (node.ip_cursor + step + 1) % hosts
            node.assigned[pod.metadata.uid] = candidate
            return candidate


# ---- the command ----

def _labels(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"label {item!r}: want key=value")
        out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m node.kubelet.hollow",
                                description="Simulated (hollow) kubelets for many nodes in one process.")
    p.add_argument("--server", default="127.0.0.1:6443", help="apiserver address")
    p.add_argument("--nodes", type=int, default=3, help="how many nodes")
    p.add_argument("--prefix", default="node-", help="node names are <prefix><index>")
    p.add_argument("--start-index", type=int, default=0,
                   help="index of the first node (also picks its fake addresses)")
    p.add_argument("--cpu", default="4")
    p.add_argument("--memory", default="8Gi")
    p.add_argument("--pods", type=int, default=110, help="pods a node can hold")
    p.add_argument("--labels", type=_labels, default={}, help="k=v,k2=v2 on every node")
    p.add_argument("--taint", action="append", default=[], help="key[=value]:Effect (repeatable)")
    p.add_argument("--ready-delay", type=float, default=0.5, help="seconds from bound to Running")
    p.add_argument("--heartbeat-interval", type=float, default=10.0, help="lease renewal period")
    p.add_argument("--lease-duration", type=int, default=40)
    p.add_argument("--pod-workers", type=int, default=4,
                   help="threads updating and deleting pods (for all the nodes together)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--bootstrap-kubeconfig", default="",
                   help="TLS bootstrap: every node asks with these credentials (a bootstrap token) for a "
                        "client certificate of its own (system:node:<name>), kept under --cert-dir/<name>/, and "
                        "then plays its node with it (one connection per node); default: all nodes share "
                        "$KUBECONFIG's identity")
    p.add_argument("--cert-dir", default="", help="with --bootstrap-kubeconfig: where each node's credentials go")
    p.add_argument("--bootstrap-timeout", type=float, default=300.0,
                   help="seconds to wait for each node's CertificateSigningRequest to be signed")
    p.add_argument("--rotate-certificates", default="true", choices=["true", "false"],
                   help="with --bootstrap-kubeconfig: renew each node's client certificate once 70-90%% "
                        "of its lifetime has passed (node.kubelet.certrotation, one thread for all)")
    return p


def _bootstrapped(args, names: list[str]) -> list[str]:
    """Each node's own kubeconfig (node.kubelet.bootstrap), asked for one node after another."""
    import os

    from node.kubelet.bootstrap import bootstrap

    out = []
    for name in names:
        d = os.path.join(args.cert_dir, name)
        out.append(bootstrap(name, os.path.join(d, "kubelet.conf"), args.bootstrap_kubeconfig, d,
                             timeout=args.bootstrap_timeout))
    return out


def main(argv: list[str] | None = None) -> int:
    from apiserver.client import Client

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [f"{args.prefix}{i}" for i in range(args.start_index, args.start_index + args.nodes)]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.bootstrap_kubeconfig:
        from node.kubelet.bootstrap import BootstrapError
        if not args.cert_dir:
            log.error("--bootstrap-kubeconfig needs --cert-dir (where each node's certificate goes)")
            return 2
        try:
            kubeconfigs = _bootstrapped(args, names)
        except BootstrapError as e:
            log.error("TLS bootstrap: %s", e)
            return 1
        return _play_each(args, names, kubeconfigs, stop)
    with Client(args.server) as client:
        nodes = HollowNodes(client, names, cpu=args.cpu, memory=args.memory, pods=args.pods,
                            labels=args.labels, taints=args.taint, ready_delay=args.ready_delay,
                            heartbeat_interval=args.heartbeat_interval,
                            lease_duration=args.lease_duration, workers=args.pod_workers,
                            first_index=args.start_index)
        nodes.start()
        log.info("playing %d hollow nodes (%s..%s) against %s", len(names), names[0] if names else "-",
                 names[-1] if names else "-", args.server)
        stop.wait()
        nodes.stop()
    return 0


def _play_each(args, names: list[str], kubeconfigs: list[str], stop) -> int:
    """One HollowNodes per node, each with its node's own credentials: the apiserver's Node
    authorizer and NodeRestriction see system:node:<name> for each."""
    import os

    from apiserver.client import Client

    clients, played = [], []
    try:
        for i, (name, path) in enumerate(zip(names, kubeconfigs)):
            client = Client(args.server, kubeconfig=path)
            clients.append(client)
            nodes = HollowNodes(client, [name], cpu=args.cpu, memory=args.memory, pods=args.pods,
                                labels=args.labels, taints=args.taint, ready_delay=args.ready_delay,
                                heartbeat_interval=args.heartbeat_interval, lease_duration=args.lease_duration,
                                workers=max(1, args.pod_workers // len(names)),
                                first_index=args.start_index + i)
            nodes.start()
            played.append(nodes)
        if args.rotate_certificates == "true":
            from node.kubelet import certrotation

            certrotation.start([certrotation.ClientCertificateRotation(
                name, path, os.path.dirname(path), on_rotated=[client.reload_credentials],
                timeout=args.bootstrap_timeout, bootstrap_kubeconfig=args.bootstrap_kubeconfig)
                for name, path, client in zip(names, kubeconfigs, clients)], stop)
        log.info("playing %d hollow nodes, each with its own certificate, against %s", len(names), args.server)
        stop.wait()
    finally:
        for nodes in played:
            nodes.stop()
        for client in clients:
            client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
