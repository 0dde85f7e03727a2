"""The EndpointSlice controller: every Service with a selector gets
discovery.k8s.io/v1 EndpointSlices listing the pods behind it, beside the
Endpoints the endpoints controller writes (kube-controller-manager runs both).

Per pod, one endpoint: its IP, ``conditions`` ready (pod Ready and not
terminating, or always with ``publishNotReadyAddresses``), serving (pod
Ready, even while terminating) and terminating (deletionTimestamp set:
terminating pods stay listed so kube-proxy can drain them), targetRef,
nodeName, the node's zone, hostname for a pod in the Service's subdomain.
Slices carry ``kubernetes.io/service-name`` and
``endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io``
and the Service's labels, are owned by the Service (the garbage collector
removes them with it; this controller also deletes what a deleted Service
left), and hold at most 100 endpoints; what changes in them is decided by
``endpointslice_reconciler``.

Writes are tracked (upstream's endpointSliceTracker): until the informer
has seen this controller's own last writes for a Service, its sync is
postponed, so a cache that lags never makes it create a slice twice.
"""

from __future__ import annotations

import logging
import threading

from apiserver.errors import ApiError
from apiserver.pb import discovery_pb2
from controllers.base import Controller
from controllers.endpoints import selector_matches
from controllers.endpointslice_reconciler import (
    CONTROLLER_NAME,
    HEADLESS_LABEL,
    MANAGED_BY_LABEL,
    MAX_ENDPOINTS_PER_SLICE,
    SERVICE_NAME_LABEL,
    ZONE_LABEL,
    desired_endpoints,
    reconcile,
)
from controllers.informer import NAMESPACE_INDEX, split_meta_namespace_key
from controllers.podutil import is_pod_ready, new_controller_ref

log = logging.getLogger("controllers.endpointslice")

STALE_RETRY_SECONDS = 0.1


def managed_by_us(slice_) -> bool:
    return slice_.metadata.labels.get(MANAGED_BY_LABEL) == CONTROLLER_NAME


def _pod_view(pod) -> tuple:
    """What of a pod its endpoint depends on."""
    ports = [(p.name, p.container_port, p.protocol) for c in pod.spec.containers for p in c.ports]
    return (dict(pod.metadata.labels), pod.status.pod_ip, pod.status.phase, is_pod_ready(pod),
            bool(pod.metadata.deletion_timestamp), pod.spec.node_name, pod.spec.hostname,
            pod.spec.subdomain, ports)


class SliceTracker:
    """resourceVersions of the slices this controller wrote (None: deleted),
    per Service key, until the informer's cache has caught up with them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written: dict[str, dict[str, int | None]] = {}

    def wrote(self, service_key: str, name: str, resource_version: str | None) -> None:
        with self._lock:
            self._written.setdefault(service_key, {})[name] = (
                int(resource_version) if resource_version else None)

    def stale(self, service_key: str, store, namespace: str) -> bool:
        """True while the cache misses one of our writes; forgets those it has."""
        with self._lock:
            written = self._written.get(service_key, {})
            for name, rv in list(written.items()):
                cached = store.get(f"{namespace}/{name}")
                seen = rv is None and cached is None or (
                    rv is not None and cached is not None and int(cached.metadata.resource_version) >= rv)
                if seen:
                    del written[name]
            if not written:
                self._written.pop(service_key, None)
            return bool(written)


class EndpointSliceController(Controller):
    name = "endpointslice"

    def __init__(self, client, informers, *, workers: int = 2,
                 max_endpoints_per_slice: int = MAX_ENDPOINTS_PER_SLICE) -> None:
        """``informers``: a SharedInformerFactory (services, pods, endpointslices, nodes)."""
        self.client = client
        self.services = informers.informer("services")
        self.pods = informers.informer("pods")
        self.slices = informers.informer("endpointslices")
        self.nodes = informers.informer("nodes")
        self.max_per_slice = max_endpoints_per_slice
        self.tracker = SliceTracker()
        super().__init__([self.services, self.pods, self.slices, self.nodes], workers)
        enqueue = self.enqueue
        self.services.add_handler(enqueue, lambda old, new: enqueue(new), enqueue)
        self.pods.add_handler(lambda p: self._pod_changed(None, p), self._pod_changed,
                              lambda p: self._pod_changed(p, None))
        self.slices.add_handler(self._slice_changed, lambda old, new: self._slice_changed(new),
                                self._slice_changed)
        self.nodes.add_handler(None, self._node_changed, None)

    # ---- handlers ----

    def _pod_changed(self, old, new) -> None:
        if old is not None and new is not None and _pod_view(old) == _pod_view(new):
            return
        pod = new if new is not None else old
        for svc in self.services.store.by_index(NAMESPACE_INDEX, pod.metadata.namespace):
            if any(p is not None and selector_matches(svc.spec.selector, p.metadata.labels) for p in (old, new)):
                self.enqueue(svc)

    def _slice_changed(self, slice_) -> None:
        name = slice_.metadata.labels.get(SERVICE_NAME_LABEL)
        if name and managed_by_us(slice_):
            self.queue.add(f"{slice_.metadata.namespace}/{name}")

    def _node_changed(self, old, new) -> None:
        if old.metadata.labels.get(ZONE_LABEL) == new.metadata.labels.get(ZONE_LABEL):
            return
        for svc in self.services.store.list():
            self.enqueue(svc)

    # ---- reconciling ----

    def _owned_slices(self, namespace: str, name: str) -> list:
        return [s for s in self.slices.store.by_index(NAMESPACE_INDEX, namespace)
                if s.metadata.labels.get(SERVICE_NAME_LABEL) == name and managed_by_us(s)]

    def _new_slice(self, svc):
        def make():
            s = discovery_pb2.EndpointSlice(address_type="IPv4")
            meta = s.metadata
            meta.generate_name = f"{svc.metadata.name[:57]}-"
            meta.namespace = svc.metadata.namespace
            meta.labels.update(self._labels(svc))
            meta.owner_references.append(new_controller_ref(svc))
            return s
        return make

    @staticmethod
    def _labels(svc) -> dict:
        labels = {k: v for k, v in svc.metadata.labels.items()
                  if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL)}
        labels[SERVICE_NAME_LABEL] = svc.metadata.name
        labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
        if svc.spec.cluster_ip == "None":
            labels[HEADLESS_LABEL] = ""
        return labels

    def sync(self, key: str) -> None:
        namespace, name = split_meta_namespace_key(key)
        if self.tracker.stale(key, self.slices.store, namespace):
            self.queue.add_after(key, STALE_RETRY_SECONDS)
            return
        svc = self.services.store.get(key)
        owned = self._owned_slices(namespace, name)
        if svc is None or not svc.spec.selector or svc.spec.type == "ExternalName":
            for s in owned:
                self._delete(key, s)
            return
        pods = [p for p in self.pods.store.by_index(NAMESPACE_INDEX, namespace)
                if selector_matches(svc.spec.selector, p.metadata.labels)]
        zones = {n.metadata.name: n.metadata.labels[ZONE_LABEL] for n in self.nodes.store.list()
                 if n.metadata.labels.get(ZONE_LABEL)}
        desired = desired_endpoints(svc, pods, zones)
        changes = reconcile(owned, desired, self._new_slice(svc), self.max_per_slice)
        labels = self._labels(svc)
        for s in owned:
            # the Service's labels follow onto slices whose endpoints did not change
            if dict(s.metadata.labels) != labels and all(s.metadata.name != u.metadata.name for u in changes.update) \
                    and s not in changes.delete:
                copy = type(s)()
                copy.CopyFrom(s)
                changes.update.append(copy)
        for s in changes.create:
            created = self.client.create(s)
            self.tracker.wrote(key, created.metadata.name, created.metadata.resource_version)
        for s in changes.update:
            s.metadata.labels.clear()
            s.metadata.labels.update(labels)
            updated = self.client.update(s)
            self.tracker.wrote(key, updated.metadata.name, updated.metadata.resource_version)
        for s in changes.delete:
            self._delete(key, s)

    def _delete(self, key: str, slice_) -> None:
        try:
            self.client.delete("endpointslices", slice_.metadata.name, slice_.metadata.namespace,
                               uid=slice_.metadata.uid)
        except ApiError as e:
            if e.reason != "NotFound":
                raise
        self.tracker.wrote(key, slice_.metadata.name, None)
