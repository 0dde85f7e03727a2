"""The EndpointSlice mirroring controller: the Endpoints of a Service without
a selector (written by hand or by another controller) are mirrored into
EndpointSlices, so that readers of slices alone (kube-proxy) see them, as
kube-controller-manager's endpointslicemirroring controller does.

An Endpoints is mirrored when its Service exists, has no selector, and the
Endpoints does not carry ``endpointslice.kubernetes.io/skip-mirror: "true"``
(the apiserver's own ``kubernetes`` Endpoints does: it writes that slice
itself). Each subset's ports make one port set; ``addresses`` become ready
endpoints and ``notReadyAddresses`` not ready ones (only ``ready`` is set,
as upstream), at most 1000 addresses a subset. Slices carry the Endpoints'
labels plus ``kubernetes.io/service-name`` and
``endpointslice.kubernetes.io/managed-by:
endpointslicemirroring-controller.k8s.io``, and are owned by the Endpoints.
"""

from __future__ import annotations

import logging

from apiserver.errors import ApiError
from apiserver.pb import discovery_pb2
from controllers.base import Controller
from controllers.endpointslice import STALE_RETRY_SECONDS, SliceTracker
from controllers.endpointslice_reconciler import (
    MANAGED_BY_LABEL,
    MAX_ENDPOINTS_PER_SLICE,
    SERVICE_NAME_LABEL,
    reconcile,
)
from controllers.informer import NAMESPACE_INDEX, split_meta_namespace_key
from controllers.podutil import new_controller_ref

log = logging.getLogger("controllers.endpointslicemirroring")

MIRRORING_CONTROLLER_NAME = "endpointslicemirroring-controller.k8s.io"
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
MAX_ADDRESSES_PER_SUBSET = 1000


def mirrored(slice_) -> bool:
    return slice_.metadata.labels.get(MANAGED_BY_LABEL) == MIRRORING_CONTROLLER_NAME


def desired_from_endpoints(ep) -> dict[tuple, list]:
    groups: dict[tuple, list] = {}
    for subset in ep.subsets:
        key = tuple(sorted(((p.name, p.port, p.protocol or "TCP", None) for p in subset.ports),
                           key=lambda p: (p[0], p[1], p[2])))
        out = groups.setdefault(key, [])
        taken = 0
        for ready, addresses in ((True, subset.addresses), (False, subset.not_ready_addresses)):
            for addr in addresses:
                if taken >= MAX_ADDRESSES_PER_SUBSET:
                    break
                taken += 1
                e = discovery_pb2.Endpoint(addresses=[addr.ip])
                e.conditions.ready = ready
                if addr.target_ref.ByteSize():
                    e.target_ref.CopyFrom(addr.target_ref)
                if addr.HasField("node_name"):
                    e.node_name = addr.node_name
                if addr.hostname:
                    e.hostname = addr.hostname
                out.append(e)
    return {k: v for k, v in groups.items() if v}


class EndpointSliceMirroringController(Controller):
    name = "endpointslicemirroring"

    def __init__(self, client, informers, *, workers: int = 2,
                 max_endpoints_per_slice: int = MAX_ENDPOINTS_PER_SLICE) -> None:
        """``informers``: a SharedInformerFactory (services, endpoints, endpointslices)."""
        self.client = client
        self.services = informers.informer("services")
        self.endpoints = informers.informer("endpoints")
        self.slices = informers.informer("endpointslices")
        self.max_per_slice = max_endpoints_per_slice
        self.tracker = SliceTracker()
        super().__init__([self.services, self.endpoints, self.slices], workers)
        enqueue = self.enqueue
        for inf in (self.services, self.endpoints):
            inf.add_handler(enqueue, lambda old, new: enqueue(new), enqueue)
        self.slices.add_handler(self._slice_changed, lambda old, new: self._slice_changed(new),
                                self._slice_changed)

    def _slice_changed(self, slice_) -> None:
        name = slice_.metadata.labels.get(SERVICE_NAME_LABEL)
        if name and mirrored(slice_):
            self.queue.add(f"{slice_.metadata.namespace}/{name}")

    def sync(self, key: str) -> None:
        namespace, name = split_meta_namespace_key(key)
        if self.tracker.stale(key, self.slices.store, namespace):
            self.queue.add_after(key, STALE_RETRY_SECONDS)
            return
        svc = self.services.store.get(key)
        ep = self.endpoints.store.get(key)
        owned = [s for s in self.slices.store.by_index(NAMESPACE_INDEX, namespace)
                 if s.metadata.labels.get(SERVICE_NAME_LABEL) == name and mirrored(s)]
        wanted = (svc is not None and not svc.spec.selector and ep is not None
                  and ep.metadata.labels.get(SKIP_MIRROR_LABEL) != "true")
        desired = desired_from_endpoints(ep) if wanted else {}
        labels = {}
        if wanted:
            labels = {k: v for k, v in ep.metadata.labels.items() if k not in (MANAGED_BY_LABEL, SKIP_MIRROR_LABEL)}
            labels[SERVICE_NAME_LABEL] = name
            labels[MANAGED_BY_LABEL] = MIRRORING_CONTROLLER_NAME

        def new_slice():
            s = discovery_pb2.EndpointSlice(address_type="IPv4")
            s.metadata.generate_name = f"{name[:57]}-"
            s.metadata.namespace = namespace
            s.metadata.labels.update(labels)
            s.metadata.owner_references.append(new_controller_ref(ep))
            return s

        changes = reconcile(owned, desired, new_slice, self.max_per_slice, placeholder=False)
        for s in changes.create:
            created = self.client.create(s)
            self.tracker.wrote(key, created.metadata.name, created.metadata.resource_version)
        for s in changes.update:
            s.metadata.labels.clear()
            s.metadata.labels.update(labels)
            updated = self.client.update(s)
            self.tracker.wrote(key, updated.metadata.name, updated.metadata.resource_version)
        for s in changes.delete:
            try:
                self.client.delete("endpointslices", s.metadata.name, namespace, uid=s.metadata.uid)
            except ApiError as e:
                if e.reason != "NotFound":
                    raise
            self.tracker.wrote(key, s.metadata.name, None)
