"""The endpoints controller: every Service with a selector has an Endpoints
object of its name listing the pods behind it.

A pod counts when the selector matches its labels, it has a podIP, it is not
being deleted and has not finished (Succeeded/Failed). Ready pods (Ready
condition True) go in ``addresses``, the others in ``notReadyAddresses``, each
with a targetRef to the pod and its nodeName. Each service port becomes an
endpoint port whose number is the pod's targetPort: a number as given, or the
named container port of that pod (same protocol); a pod lacking a named port
is left out of that port. Pods that resolve to the same ports share one subset.

A Service without a selector is not managed here (its Endpoints are written by
hand); the Endpoints of a deleted Service are deleted. The Endpoints are
written only when they differ from what the cache holds.
"""

from __future__ import annotations

import logging

from apiserver.errors import ApiError
from apiserver.pb import core_pb2, meta_pb2
from controllers.base import Controller
from controllers.informer import (
    NAMESPACE_INDEX,
    deep_copy,
    meta_namespace_key,
    split_meta_namespace_key,
)
from controllers.podutil import is_pod_ready

log = logging.getLogger("controllers.endpoints")


def selector_matches(selector, labels) -> bool:
    """A Service's selector (a map) matches ``labels``; an empty one matches nothing."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def resolve_target_port(port: core_pb2.ServicePort, pod) -> int | None:
    """The pod's port number behind a service port, or None when the pod has
    no container port of that name."""
    target = port.target_port or str(port.port)
    if target.isdigit():
        return int(target)
    protocol = port.protocol or "TCP"
    for c in pod.spec.containers:
        for p in c.ports:
            if p.name == target and (p.protocol or "TCP") == protocol:
                return p.container_port
    return None


def serves(pod) -> bool:
    """A pod that may appear in Endpoints at all (ready or not)."""
    return (bool(pod.status.pod_ip) and not pod.metadata.deletion_timestamp
            and pod.status.phase not in ("Succeeded", "Failed"))


def endpoint_address(pod) -> core_pb2.EndpointAddress:
    addr = core_pb2.EndpointAddress(ip=pod.status.pod_ip)
    if pod.spec.node_name:
        addr.node_name = pod.spec.node_name
    addr.target_ref.CopyFrom(meta_pb2.ObjectReference(
        kind="Pod", namespace=pod.metadata.namespace, name=pod.metadata.name, uid=pod.metadata.uid))
    return addr


def endpoint_subsets(service, pods) -> list[core_pb2.EndpointSubset]:
    """The subsets ``service`` should have over ``pods`` (already selected),
    in a canonical order so equal sets compare equal."""
    groups: dict[tuple, tuple[list, list]] = {}
    for pod in pods:
        if not serves(pod):
            continue
        ports = []
        for sp in service.spec.ports:
            number = resolve_target_port(sp, pod)
            if number is not None:
                ports.append((sp.name, number, sp.protocol or "TCP"))
        if service.spec.ports and not ports:
            continue
        addr = endpoint_address(pod)
        if pod.spec.hostname and pod.spec.subdomain == service.metadata.name:
            addr.hostname = pod.spec.hostname
        ready, not_ready = groups.setdefault(tuple(sorted(ports)), ([], []))
        (ready if is_pod_ready(pod) else not_ready).append(addr)
    subsets = []
    for ports in sorted(groups):
        ready, not_ready = groups[ports]
        subset = core_pb2.EndpointSubset()
        subset.addresses.extend(sorted(ready, key=_address_order))
        subset.not_ready_addresses.extend(sorted(not_ready, key=_address_order))
        for name, number, protocol in ports:
            subset.ports.add(name=name, port=number, protocol=protocol)
        subsets.append(subset)
    return subsets


def _address_order(addr) -> tuple:
    return (addr.ip, addr.target_ref.name)


def _pod_view(pod) -> tuple:
    """What of a pod its endpoints depend on."""
    ready = is_pod_ready(pod)
    ports = [(p.name, p.container_port, p.protocol) for c in pod.spec.containers for p in c.ports]
    return (dict(pod.metadata.labels), pod.status.pod_ip, ready, serves(pod), pod.spec.node_name,
            pod.spec.hostname, pod.spec.subdomain, ports)


class EndpointsController(Controller):
    name = "endpoints"

    def __init__(self, client, informers, *, workers: int = 2) -> None:
        """``informers``: a SharedInformerFactory (services, pods, endpoints)."""
        self.client = client
        self.services = informers.informer("services")
        self.pods = informers.informer("pods")
        self.endpoints = informers.informer("endpoints")
        super().__init__([self.services, self.pods, self.endpoints], workers)
        enqueue = self.enqueue
        self.services.add_handler(enqueue, lambda old, new: enqueue(new), enqueue)
        self.pods.add_handler(lambda p: self._pod_changed(None, p), self._pod_changed,
                              lambda p: self._pod_changed(p, None))
        # someone else changed or removed Endpoints we manage: put them back
        self.endpoints.add_handler(None, lambda old, new: self._endpoints_changed(new),
                                   self._endpoints_changed)

    # ---- handlers ----

    def _pod_changed(self, old, new) -> None:
        if old is not None and new is not None and _pod_view(old) == _pod_view(new):
            return
        pod = new if new is not None else old
        for svc in self.services.store.by_index(NAMESPACE_INDEX, pod.metadata.namespace):
            selector = svc.spec.selector
            if any(p is not None and selector_matches(selector, p.metadata.labels) for p in (old, new)):
                self.enqueue(svc)

    def _endpoints_changed(self, ep) -> None:
        svc = self.services.store.get(meta_namespace_key(ep))
        if svc is not None and svc.spec.selector:
            self.enqueue(svc)

    # ---- reconciling ----

    def sync(self, key: str) -> None:
        namespace, name = split_meta_namespace_key(key)
        svc = self.services.store.get(key)
        if svc is None:
            try:
                self.client.delete("endpoints", name, namespace)
            except ApiError as e:
                if e.reason != "NotFound":
                    raise
            return
        if not svc.spec.selector:
            return
        pods = [p for p in self.pods.store.by_index(NAMESPACE_INDEX, namespace)
                if selector_matches(svc.spec.selector, p.metadata.labels)]
        subsets = endpoint_subsets(svc, pods)
        current = self.endpoints.store.get(key)
        if current is None:
            ep = core_pb2.Endpoints()
            ep.metadata.name, ep.metadata.namespace = name, namespace
            ep.metadata.labels.update(svc.metadata.labels)
            ep.subsets.extend(subsets)
            try:
                self.client.create(ep)
                return
            except ApiError as e:
                if e.reason != "AlreadyExists":
                    raise
                current = self.client.get("endpoints", name, namespace)
        if list(current.subsets) == subsets and dict(current.metadata.labels) == dict(svc.metadata.labels):
            return
        updated = deep_copy(current)
        updated.metadata.labels.clear()
        updated.metadata.labels.update(svc.metadata.labels)
        del updated.subsets[:]
        updated.subsets.extend(subsets)
        self.client.update(updated)
