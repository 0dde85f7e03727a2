"""Storage object in-use protection: the controllers that remove the
``kubernetes.io/pvc-protection`` and ``kubernetes.io/pv-protection`` finalizers
(added at creation by the apiserver) once removal is safe, as
kube-controller-manager's pvc-protection and pv-protection controllers do.

- A claim being deleted keeps its finalizer while a pod scheduled to a node
  names it in a volume (whatever the pod's phase: the kubelet may still have it
  mounted); the pod's deletion lets the claim go. The cache is confirmed by a
  live list of the namespace's pods before the finalizer goes, so a pod the
  cache has not seen yet still counts.
- A volume being deleted keeps its finalizer while it is Bound.
"""

from __future__ import annotations

import logging

from apiserver.defaults import PV_PROTECTION_FINALIZER, PVC_PROTECTION_FINALIZER
from apiserver.errors import ApiError
from controllers.base import Controller
from controllers.informer import NAMESPACE_INDEX, meta_namespace_key, split_meta_namespace_key
from controllers.podutil import without_finalizer
from controllers.pvbinding import pod_claim_names

log = logging.getLogger("controllers.pvprotection")


def pod_uses_claim(pod, claim_name: str) -> bool:
    """A scheduled pod whose volumes name the claim (unscheduled ones never reach a kubelet)."""
    return bool(pod.spec.node_name) and claim_name in pod_claim_names(pod)


class PVCProtectionController(Controller):
    name = "pvc-protection"

    def __init__(self, client, informers) -> None:
        self.client = client
        self.claims = informers.informer("persistentvolumeclaims")
        self.pods = informers.informer("pods")
        super().__init__([self.claims, self.pods], 1)
        self.claims.add_handler(self._claim_changed, lambda old, new: self._claim_changed(new), None)
        self.pods.add_handler(None, lambda old, new: self._pod_changed(new), self._pod_changed)

    def _claim_changed(self, claim) -> None:
        if claim.metadata.deletion_timestamp and PVC_PROTECTION_FINALIZER in claim.metadata.finalizers:
            self.queue.add(meta_namespace_key(claim))

    def _pod_changed(self, pod) -> None:
        # a pod that ends, leaves or is deleted may free the claims it named
        for name in pod_claim_names(pod):
            self.queue.add(f"{pod.metadata.namespace}/{name}")

    def sync(self, key: str) -> None:
        claim = self.claims.store.get(key)
        if claim is None or not claim.metadata.deletion_timestamp:
            return
        if PVC_PROTECTION_FINALIZER not in claim.metadata.finalizers:
            return
        namespace, name = split_meta_namespace_key(key)
        if any(pod_uses_claim(p, name) for p in self.pods.store.by_index(NAMESPACE_INDEX, namespace)):
            return
        live = self.client.list("pods", namespace).items
        if any(pod_uses_claim(p, name) for p in live):
            return
        try:
            self.client.update(without_finalizer(claim, PVC_PROTECTION_FINALIZER))
        except ApiError as e:
            if e.reason != "NotFound":
                raise
        log.info("claim %s is no longer used by any pod: removed %s", key, PVC_PROTECTION_FINALIZER)


class PVProtectionController(Controller):
    name = "pv-protection"

    def __init__(self, client, informers) -> None:
        self.client = client
        self.volumes = informers.informer("persistentvolumes")
        super().__init__([self.volumes], 1)
        self.volumes.add_handler(self._volume_changed, lambda old, new: self._volume_changed(new), None)

    def _volume_changed(self, volume) -> None:
        if volume.metadata.deletion_timestamp and PV_PROTECTION_FINALIZER in volume.metadata.finalizers:
            self.queue.add(volume.metadata.name)

    def sync(self, name: str) -> None:
        volume = self.volumes.store.get(name)
        if volume is None or not volume.metadata.deletion_timestamp:
            return
        if PV_PROTECTION_FINALIZER not in volume.metadata.finalizers or volume.status.phase == "Bound":
            return
        try:
            self.client.update(without_finalizer(volume, PV_PROTECTION_FINALIZER))
        except ApiError as e:
            if e.reason != "NotFound":
                raise
