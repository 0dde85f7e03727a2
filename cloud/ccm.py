"""`python -m cloud.ccm`: the cloud-controller-manager, as k8s.io/cloud-provider's.

Its own process (with --leader-elect only the holder of kube-system/cloud-controller-manager
works), running over shared informers:

- node: a Node registered with the ``node.cloudprovider.kubernetes.io/uninitialized`` taint (a
  kubelet with --cloud-provider=external) is matched to its instance (by providerID, else by name)
  and given what only the cloud knows: spec.providerID, its addresses, the
  ``topology.kubernetes.io/zone``/``region`` and ``node.kubernetes.io/instance-type`` labels;
  then the taint goes, and the scheduler may use the node.
- node lifecycle: every --node-monitor-period, each Node that is not Ready is looked up in the
  cloud: no instance -> the Node is deleted (its pods are then the pod garbage collector's);
  instance stopped -> the ``node.cloudprovider.kubernetes.io/shutdown`` NoSchedule taint, removed
  once the node is Ready again.
- service: a Service of type LoadBalancer gets the ``service.kubernetes.io/load-balancer-cleanup``
  finalizer, a load balancer in the cloud forwarding its ports to their nodePorts on the ready
  nodes (updated as nodes come and go), and status.loadBalancer.ingress; deleted (or no longer
  of that type) -> the load balancer is deleted, then the status and the finalizer go.
- route: each initialized Node with a podCIDR gets a route in the cloud (podCIDR -> its
  instance) and the NetworkUnavailable=False condition; routes of Nodes gone are deleted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from apiserver.client import Client
from apiserver.errors import ApiError
from cloud.client import CloudApiError, CloudClient
from cloud.provider import instance_id_of
from controllers.component import add_common_flags, run_component, setup_logging
from controllers.events import WARNING, EventRecorder
from controllers.informer import SharedInformerFactory, deep_copy, meta_namespace_key, split_meta_namespace_key
from controllers.podutil import get_condition, now_rfc3339
from controllers.workqueue import RateLimitingQueue, start_workers

log = logging.getLogger("cloud.ccm")

UNINITIALIZED_TAINT = "node.cloudprovider.kubernetes.io/uninitialized"
SHUTDOWN_TAINT = "node.cloudprovider.kubernetes.io/shutdown"
LB_FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
EXCLUDE_LB_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
CONTROLLERS = ("cloud-node", "cloud-node-lifecycle", "service", "route")


def ready_status(node) -> str:
    cond = get_condition(node.status.conditions, "Ready")
    return cond.status if cond is not None else ""


def has_taint(node, key: str) -> bool:
    return any(t.key == key for t in node.spec.taints)


def internal_ip(node) -> str:
    return next((a.address for a in node.status.addresses if a.type == "InternalIP"), "")


def find_instance(instances: list[dict], node) -> dict | None:
    """The node's instance: by providerID when it has one, else by name (the instance's hostname)."""
    wanted = instance_id_of(node.spec.provider_id)
    for inst in instances:
        if (inst["id"] == wanted) if wanted else (inst["name"] == node.metadata.name):
            return inst
    return None


class _Worker:
    """A queue, its workers, and stop()."""

    name = "worker"

    def __init__(self, workers: int = 1) -> None:
        self.queue = RateLimitingQueue(name=self.name)
        self._workers = workers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self):
        self._threads += start_workers(self.queue, self.sync, self._workers, self.name, log)
        return self

    def every(self, period: float, fn) -> None:
        def loop() -> None:
            while not self._stop.wait(period):
                try:
                    fn()
                except Exception:
                    log.exception("%s", self.name)
        t = threading.Thread(target=loop, name=f"{self.name}-loop", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.queue.shut_down()
        for t in self._threads:
            t.join(timeout)

    def sync(self, key) -> None:
        raise NotImplementedError


class CloudNodeController(_Worker):
    name = "cloud-node"

    def __init__(self, client, cloud: CloudClient, informers, recorder) -> None:
        super().__init__()
        self.client, self.cloud, self.recorder = client, cloud, recorder
        self.nodes = informers.informer("nodes")
        self.nodes.add_handler(self._changed, lambda old, new: self._changed(new))

    def _changed(self, node) -> None:
        if has_taint(node, UNINITIALIZED_TAINT):
            self.queue.add(node.metadata.name)

    def sync(self, name: str) -> None:
        node = self.nodes.store.get(name)
        if node is None or not has_taint(node, UNINITIALIZED_TAINT):
            return
        inst = find_instance(self.cloud.instances(), node)
        if inst is None:
            self.recorder.event(node, WARNING, "InstanceNotFound",
                                f"no instance of the cloud is named {name}; the node stays uninitialized")
            raise RuntimeError(f"node {name}: no instance in the cloud (will retry)")
        fresh = self.client.get("nodes", name, "")
        status = deep_copy(fresh)
        del status.status.addresses[:]
        status.status.addresses.add(type="InternalIP", address=inst["internalIP"])
        status.status.addresses.add(type="Hostname", address=inst["name"])
        if list(status.status.addresses) != list(fresh.status.addresses):
            fresh = self.client.update_status(status)
        updated = deep_copy(fresh)
        if not updated.spec.provider_id:
            updated.spec.provider_id = inst["providerID"]
        updated.metadata.labels.update({ZONE_LABEL: inst["zone"], REGION_LABEL: inst["region"],
                                        INSTANCE_TYPE_LABEL: inst["type"]})
        kept = [t for t in updated.spec.taints if t.key != UNINITIALIZED_TAINT]
        del updated.spec.taints[:]
        updated.spec.taints.extend(kept)
        self.client.update(updated)
        log.info("node %s initialized: %s %s %s", name, inst["providerID"], inst["zone"], inst["type"])


class CloudNodeLifecycleController(_Worker):
    name = "cloud-node-lifecycle"

    def __init__(self, client, cloud: CloudClient, informers, recorder, period: float) -> None:
        super().__init__()
        self.client, self.cloud, self.recorder, self.period = client, cloud, recorder, period
        self.nodes = informers.informer("nodes")

    def start(self):
        self.every(self.period, self.monitor)
        return self

    def monitor(self) -> None:
        not_ready, tainted_ready = [], []
        for node in self.nodes.store.list():
            if ready_status(node) == "True":
                if has_taint(node, SHUTDOWN_TAINT):
                    tainted_ready.append(node)
            else:
                not_ready.append(node)
        for node in tainted_ready:
            self._set_shutdown_taint(node.metadata.name, False)
        if not not_ready:
            return
        instances = self.cloud.instances()
        for node in not_ready:
            inst = find_instance(instances, node)
            if inst is None:
                log.info("node %s: its instance is gone; deleting the Node", node.metadata.name)
                self.recorder.event(node, "Normal", "DeletingNode",
                                    f"Deleting node {node.metadata.name} because it does not exist in the cloud provider")
                try:
                    self.client.delete("nodes", node.metadata.name, "", uid=node.metadata.uid)
                except ApiError as e:
                    if e.reason not in ("NotFound", "Conflict"):
                        raise
            elif inst["state"] == "stopped" and not has_taint(node, SHUTDOWN_TAINT):
                self._set_shutdown_taint(node.metadata.name, True)

    def _set_shutdown_taint(self, name: str, on: bool) -> None:
        try:
            node = deep_copy(self.client.get("nodes", name, ""))
        except ApiError as e:
            if e.reason == "NotFound":
                return
            raise
        kept = [t for t in node.spec.taints if t.key != SHUTDOWN_TAINT]
        del node.spec.taints[:]
        node.spec.taints.extend(kept)
        if on:
            node.spec.taints.add(key=SHUTDOWN_TAINT, effect="NoSchedule")
        self.client.update(node)
        log.info("node %s: shutdown taint %s", name, "added" if on else "removed")


def lb_name(svc) -> str:
    """k8s.io/cloud-provider's default name: "a" + the uid without dashes, 32 characters."""
    return ("a" + svc.metadata.uid.replace("-", ""))[:32]


def lb_node(node) -> bool:
    """Whether a load balancer sends traffic to this node."""
    return (ready_status(node) == "True" and EXCLUDE_LB_LABEL not in node.metadata.labels
            and not has_taint(node, TO_BE_DELETED_TAINT) and not has_taint(node, UNINITIALIZED_TAINT)
            and bool(internal_ip(node)))


class ServiceController(_Worker):
    name = "service"

    def __init__(self, client, cloud: CloudClient, informers, recorder) -> None:
        super().__init__(workers=2)
        self.client, self.cloud, self.recorder = client, cloud, recorder
        self.services = informers.informer("services")
        self.nodes = informers.informer("nodes")
        self.services.add_handler(self._svc, lambda old, new: self._svc(new), self._svc)
        self.nodes.add_handler(lambda n: self._nodes_changed(), lambda o, n: self._node_updated(o, n),
                               lambda n: self._nodes_changed())

    def _wants(self, svc) -> bool:
        return svc.spec.type == "LoadBalancer" or LB_FINALIZER in svc.metadata.finalizers

    def _svc(self, svc) -> None:
        if self._wants(svc) or svc.status.load_balancer.ingress:
            self.queue.add(meta_namespace_key(svc))

    def _node_updated(self, old, new) -> None:
        if lb_node(old) != lb_node(new) or internal_ip(old) != internal_ip(new):
            self._nodes_changed()

    def _nodes_changed(self) -> None:
        for svc in self.services.store.list():
            if svc.spec.type == "LoadBalancer":
                self.queue.add(meta_namespace_key(svc))

    def sync(self, key: str) -> None:
        svc = self.services.store.get(key)
        if svc is None:
            return
        ns, name = split_meta_namespace_key(key)
        if svc.spec.type != "LoadBalancer" or svc.metadata.deletion_timestamp:
            self._cleanup(svc)
            return
        if LB_FINALIZER not in svc.metadata.finalizers:
            updated = deep_copy(svc)
            updated.metadata.finalizers.append(LB_FINALIZER)
            svc = self.client.update(updated)
        ports = [{"protocol": p.protocol or "TCP", "port": p.port, "nodePort": p.node_port}
                 for p in svc.spec.ports if p.node_port]
        nodes = sorted(internal_ip(n) for n in self.nodes.store.list() if lb_node(n))
        try:
            current = self.cloud.load_balancer(lb_name(svc))
        except CloudApiError as e:
            if not e.not_found:
                raise
            current = None
        if current is None or current["ports"] != ports or current["nodes"] != nodes:
            self.recorder.event(svc, "Normal", "EnsuringLoadBalancer", "Ensuring load balancer")
            lb = self.cloud.ensure_load_balancer(lb_name(svc), ports, nodes)
            self.recorder.event(svc, "Normal", "EnsuredLoadBalancer",
                                f"Ensured load balancer {lb['ip']} -> {len(nodes)} node(s)")
        else:
            lb = current
        ingress = [i.ip for i in svc.status.load_balancer.ingress]
        if ingress != [lb["ip"]]:
            updated = deep_copy(svc)
            del updated.status.load_balancer.ingress[:]
            updated.status.load_balancer.ingress.add(ip=lb["ip"])
            self.client.update_status(updated)

    def _cleanup(self, svc) -> None:
        try:
            self.cloud.delete_load_balancer(lb_name(svc))
            self.recorder.event(svc, "Normal", "DeletedLoadBalancer", "Deleted load balancer")
        except CloudApiError as e:
            if not e.not_found:
                raise
        if svc.status.load_balancer.ingress:
            updated = deep_copy(svc)
            del updated.status.load_balancer.ingress[:]
            svc = self.client.update_status(updated)
        if LB_FINALIZER in svc.metadata.finalizers:
            updated = deep_copy(svc)
            kept = [f for f in updated.metadata.finalizers if f != LB_FINALIZER]
            del updated.metadata.finalizers[:]
            updated.metadata.finalizers.extend(kept)
            try:
                self.client.update(updated)
            except ApiError as e:
                if e.reason != "NotFound":
                    raise


class RouteController(_Worker):
    name = "route"

    def __init__(self, client, cloud: CloudClient, informers, period: float) -> None:
        super().__init__()
        self.client, self.cloud, self.period = client, cloud, period
        self.nodes = informers.informer("nodes")
        self.nodes.add_handler(lambda n: self.queue.add("routes"), lambda o, n: self._updated(o, n),
                               lambda n: self.queue.add("routes"))

    def _updated(self, old, new) -> None:
        if (old.spec.pod_cidr, old.spec.provider_id) != (new.spec.pod_cidr, new.spec.provider_id):
            self.queue.add("routes")

    def start(self):
        super().start()
        self.every(self.period, lambda: self.queue.add("routes"))
        self.queue.add("routes")
        return self

    def sync(self, _key) -> None:
        routes = {r["name"]: r for r in self.cloud.routes()}
        wanted = {}
        for node in self.nodes.store.list():
            inst = instance_id_of(node.spec.provider_id)
            if node.spec.pod_cidr and inst:
                wanted[node.metadata.name] = (node.spec.pod_cidr, inst)
        for name, route in list(routes.items()):
            if name not in wanted or (route["cidr"], route["instance"]) != wanted[name]:
                self.cloud.delete_route(name)
                del routes[name]
        current = {n: (r["cidr"], r["instance"]) for n, r in routes.items()}
        for name, (cidr, inst) in wanted.items():
            if current.get(name) != (cidr, inst):
                try:
                    self.cloud.create_route(name, cidr, inst)
                except CloudApiError as e:
                    if e.not_found:
                        continue  # the instance is gone; the lifecycle controller deletes the node
                    raise
                log.info("route %s: %s -> %s", name, cidr, inst)
            self._network_available(name)

    def _network_available(self, name: str) -> None:
        node = self.nodes.store.get(name)
        cond = get_condition(node.status.conditions, "NetworkUnavailable") if node is not None else None
        if node is None or (cond is not None and cond.status == "False"):
            return
        from node.kubelet.status import set_condition

        try:
            fresh = deep_copy(self.client.get("nodes", name, ""))
            set_condition(fresh.status.conditions, "NetworkUnavailable", "False", now_rfc3339(),
                          reason="RouteCreated", message="RouteController created a route")
            self.client.update_status(fresh)
        except ApiError as e:
            if e.reason not in ("NotFound", "Conflict"):
                raise


class CloudControllerManager:
    def __init__(self, client: Client, args: argparse.Namespace) -> None:
        self.client, self.args = client, args
        self.cloud = CloudClient(args.cloud_url)
        self.informers = SharedInformerFactory(client)
        self.recorder = EventRecorder(client, "cloud-controller-manager")
        self.controllers: list = []

    def start(self) -> None:
        a, c, f, r = self.args, self.client, self.informers, self.recorder
        make = {
            "cloud-node": lambda: CloudNodeController(c, self.cloud, f, r),
            "cloud-node-lifecycle": lambda: CloudNodeLifecycleController(c, self.cloud, f, r, a.node_monitor_period),
            "service": lambda: ServiceController(c, self.cloud, f, r),
            "route": lambda: RouteController(c, self.cloud, f, a.route_reconciliation_period),
        }
        self.controllers = [make[n]() for n in a.enabled]
        self.informers.start()
        self.informers.wait_for_cache_sync(60)
        for ctl in self.controllers:
            ctl.start()

    def stop(self) -> None:
        for ctl in reversed(self.controllers):
            ctl.stop()
        self.controllers = []
        self.informers.stop()
        self.recorder.stop()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cloud.ccm", description=__doc__.split("\n\n")[0])
    p.add_argument("--cloud-url", required=True, help="the cloud's API, e.g. http://127.0.0.1:7070")
    p.add_argument("--controllers", default="*", help=f"comma-separated or '*': {','.join(CONTROLLERS)}")
    p.add_argument("--node-monitor-period", type=float, default=5.0,
                   help="seconds between looks at not-Ready nodes' instances")
    p.add_argument("--route-reconciliation-period", type=float, default=10.0)
    add_common_flags(p, lease_name="cloud-controller-manager")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.controllers.split(",") if n.strip()]
    unknown = [n for n in names if n != "*" and n not in CONTROLLERS]
    if unknown:
        p.error(f"unknown controllers {unknown}; known: {', '.join(CONTROLLERS)}")
    args.enabled = list(CONTROLLERS) if "*" in names else [n for n in CONTROLLERS if n in names]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args)
    client = Client(args.server)
    ccm = CloudControllerManager(client, args)
    return run_component("cloud.ccm", client, args, ccm.start, ccm.stop)


if __name__ == "__main__":
    sys.exit(main())
