"""The service controller: a load balancer in the cloud for each Service of type LoadBalancer,
kept pointing at the ready nodes, guarded by a finalizer so that it never outlives its Service.

With ``externalTrafficPolicy: Local`` a node's kube-proxy drops NodePort traffic unless the node
runs a ready endpoint of the Service; a cloud learns which nodes those are from a health-check
port, this controller reads them from the Service's EndpointSlices instead, and sends only there.
See cloud.ccm."""

from __future__ import annotations

from cloud.ccm.common import (EXCLUDE_LB_LABEL, LB_FINALIZER, TO_BE_DELETED_TAINT, UNINITIALIZED_TAINT,
                              has_taint, internal_ip, ready_status)
from cloud.client import CloudApiError, CloudClient
from controllers.base import Controller
from controllers.informer import deep_copy, meta_namespace_key
from controllers.podutil import remove_finalizer

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def lb_name(svc) -> str:
    """k8s.io/cloud-provider's default name: "a" + the uid without dashes, 32 characters."""
    return ("a" + svc.metadata.uid.replace("-", ""))[:32]


def lb_node(node) -> bool:
    """Whether a load balancer sends traffic to this node."""
    return (ready_status(node) == "True" and EXCLUDE_LB_LABEL not in node.metadata.labels
            and not has_taint(node, TO_BE_DELETED_TAINT) and not has_taint(node, UNINITIALIZED_TAINT)
            and bool(internal_ip(node)))


class ServiceController(Controller):
    name = "service"

    def __init__(self, client, cloud: CloudClient, informers, recorder) -> None:
        self.client, self.cloud, self.recorder = client, cloud, recorder
        self.services = informers.informer("services")
        self.nodes = informers.informer("nodes")
        self.slices = informers.informer("endpointslices")
        super().__init__([self.services, self.nodes, self.slices], 2)
        self.slices.add_handler(self._slice, lambda old, new: self._slice(new), self._slice)
        self.services.add_handler(self._svc, lambda old, new: self._svc(new), self._svc)
        self.nodes.add_handler(lambda n: self._nodes_changed(), lambda o, n: self._node_updated(o, n),
                               lambda n: self._nodes_changed())

    def _wants(self, svc) -> bool:
        return svc.spec.type == "LoadBalancer" or LB_FINALIZER in svc.metadata.finalizers

    def _svc(self, svc) -> None:
        if self._wants(svc) or svc.status.load_balancer.ingress:
            self.queue.add(meta_namespace_key(svc))

    def _slice(self, eps) -> None:
        name = eps.metadata.labels.get(SERVICE_NAME_LABEL, "")
        svc = self.services.store.get_by_name(eps.metadata.namespace, name) if name else None
        if svc is not None and svc.spec.type == "LoadBalancer" and svc.spec.external_traffic_policy == "Local":
            self.queue.add(meta_namespace_key(svc))

    def _local_nodes(self, svc) -> set[str]:
        """The nodes running a ready endpoint of the Service."""
        found = set()
        for eps in self.slices.store.list():
            if eps.metadata.namespace == svc.metadata.namespace and \
                    eps.metadata.labels.get(SERVICE_NAME_LABEL) == svc.metadata.name:
                for ep in eps.endpoints:
                    ready = not ep.conditions.HasField("ready") or ep.conditions.ready
                    if ready and ep.node_name:
                        found.add(ep.node_name)
        return found

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
        if svc.spec.type != "LoadBalancer" or svc.metadata.deletion_timestamp:
            self._cleanup(svc)
            return
        if LB_FINALIZER not in svc.metadata.finalizers:
            updated = deep_copy(svc)
            updated.metadata.finalizers.append(LB_FINALIZER)
            svc = self.client.update(updated)
        ports = [{"protocol": p.protocol or "TCP", "port": p.port, "nodePort": p.node_port}
                 for p in svc.spec.ports if p.node_port]
        candidates = [n for n in self.nodes.store.list() if lb_node(n)]
        if svc.spec.external_traffic_policy == "Local":
            local = self._local_nodes(svc)
            candidates = [n for n in candidates if n.metadata.name in local]
        nodes = sorted(internal_ip(n) for n in candidates)
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
            remove_finalizer(self.client, svc, LB_FINALIZER)


