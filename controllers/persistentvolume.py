"""The PersistentVolume controller: binds claims to volumes and reclaims volumes
whose claim is gone, as kube-controller-manager's persistentvolume-binder does.

Claims (one queue) and volumes (another), each synced level-based from the
informers' caches:

- A claim without a class gets the default StorageClass (upstream's retroactive
  default), then looks for a volume by ``pvbinding.find_best_match``. Found: the
  volume's claimRef is set (annotated bound-by-controller), its phase Bound; the
  claim's volumeName and bind-completed annotation are set, its status Bound
  with the volume's capacity and access modes. Not found: the claim stays
  Pending with an event saying why: waiting for its first consumer
  (WaitForFirstConsumer), waiting for the class's provisioner (the claim is
  annotated with it: provisioners act on that), the class missing, or no
  volume and no class. A claim naming a volume (spec.volumeName) binds to that
  one only, when it satisfies the claim.
- A bound claim whose volume vanished, or points elsewhere, is Lost.
- A volume without a claimRef is Available; one whose claim is gone is Released
  and reclaimed by its policy: Retain keeps it (Released: an administrator
  decides); Delete leaves it to the provisioner that made it (annotation
  pv.kubernetes.io/provisioned-by), or fails (no deleter here) for a volume no
  provisioner made; Recycle fails (deprecated upstream, not served).

Writes use the cached resourceVersion: a stale cache gets a Conflict and a
retry, never a double binding.
"""

from __future__ import annotations

import logging

from apiserver.pb import meta_pb2
from controllers import pvbinding as b
from controllers.base import Controller
from controllers.events import NORMAL, WARNING, EventRecorder
from controllers.informer import deep_copy, meta_namespace_key
from controllers.podutil import now_rfc3339

log = logging.getLogger("controllers.persistentvolume")

COMPONENT = "persistentvolume-controller"
RESYNC_PERIOD = 15.0  # upstream's --pvclaimbinder-sync-period
# event reasons (pkg/controller/volume/events)
FAILED_BINDING = "FailedBinding"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
EXTERNAL_PROVISIONING = "ExternalProvisioning"
PROVISIONING_FAILED = "ProvisioningFailed"
CLAIM_LOST = "ClaimLost"
CLAIM_MISBOUND = "ClaimMisbound"
VOLUME_FAILED_DELETE = "VolumeFailedDelete"
VOLUME_FAILED_RECYCLE = "VolumeFailedRecycle"

MSG_NO_CLASS = "no persistent volumes available for this claim and no storage class is set"
MSG_WAIT_CONSUMER = "waiting for first consumer to be created before binding"


def external_provisioning_message(provisioner: str) -> str:
    return (f"Waiting for a volume to be created either by the external provisioner '{provisioner}' "
            "or manually by the system administrator. If volume creation is delayed, please verify "
            "that the provisioner is running and correctly registered.")


def claim_reference(claim) -> meta_pb2.ObjectReference:
    m = claim.metadata
    return meta_pb2.ObjectReference(kind="PersistentVolumeClaim", api_version="v1", namespace=m.namespace,
                                    name=m.name, uid=m.uid, resource_version=m.resource_version)


def unsatisfied_reasons(volume, claim) -> list[str]:
    """Why the volume a claim names cannot serve it (upstream's checkVolumeSatisfyClaim)."""
    reasons = []
    if b.capacity_bytes(volume) < b.requested_bytes(claim):
        reasons.append("requested PV is too small")
    if volume.spec.storage_class_name != b.claim_class(claim):
        reasons.append("storageClassName does not match")
    if (volume.spec.volume_mode or "Filesystem") != (claim.spec.volume_mode or "Filesystem"):
        reasons.append("incompatible volumeMode")
    if not set(claim.spec.access_modes) <= set(volume.spec.access_modes):
        reasons.append("incompatible accessMode")
    return reasons


class PersistentVolumeController(Controller):
    name = "pv-claims"

    def __init__(self, client, informers, *, resync_period: float = RESYNC_PERIOD,
                 recorder: EventRecorder | None = None) -> None:
        self.client = client
        self.claims = informers.informer("persistentvolumeclaims")
        self.volumes = informers.informer("persistentvolumes")
        self.classes = informers.informer("storageclasses")
        super().__init__([self.claims, self.volumes, self.classes], 1, self.sync_claim)
        self._claim_queue = self.queue
        self._volume_queue = self.add_queue("pv-volumes", self.sync_volume)
        self.recorder = self._recorder(client, recorder, COMPONENT)
        self.resync_period = resync_period
        self.claims.add_handler(self._enqueue_claim, lambda old, new: self._enqueue_claim(new),
                                self._claim_deleted)
        self.volumes.add_handler(self._volume_changed, lambda old, new: self._volume_changed(new),
                                 self._volume_deleted)
        self.classes.add_handler(lambda c: self._enqueue_pending_claims(),
                                 lambda old, new: self._enqueue_pending_claims(), None)

    def _start_threads(self) -> None:
        super()._start_threads()
        self._spawn("pv-resync", self._resync_loop)

    # ---- handlers ----

    def _enqueue_claim(self, claim) -> None:
        self._claim_queue.add(meta_namespace_key(claim))

    def _claim_deleted(self, claim) -> None:
        for volume in self.volumes.store.list():
            if b.is_volume_bound_to_claim(volume, claim):
                self._volume_queue.add(volume.metadata.name)

    def _volume_changed(self, volume) -> None:
        self._volume_queue.add(volume.metadata.name)
        ref = volume.spec.claim_ref
        if ref.name:
            self._claim_queue.add(f"{ref.namespace}/{ref.name}")
        self._enqueue_pending_claims()

    def _volume_deleted(self, volume) -> None:
        ref = volume.spec.claim_ref
        if ref.name:
            self._claim_queue.add(f"{ref.namespace}/{ref.name}")

    def _enqueue_pending_claims(self) -> None:
        for claim in self.claims.store.list():
            if claim.status.phase != "Bound":
                self._enqueue_claim(claim)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync_period):
            for key in self.claims.store.keys():
                self._claim_queue.add(key)
            for key in self.volumes.store.keys():
                self._volume_queue.add(key)

    # ---- claims ----

    def _classes_by_name(self) -> dict:
        return {c.metadata.name: c for c in self.classes.store.list()}

    def sync_claim(self, key: str) -> None:
        claim = self.claims.store.get(key)
        if claim is None:
            return
        if not claim.spec.HasField("storage_class_name"):
            default = b.default_class(self.classes.store.list())
            if default is not None:
                updated = deep_copy(claim)
                updated.spec.storage_class_name = default.metadata.name
                self.client.update(updated)
                return  # its update comes back through the informer
        if claim.metadata.annotations.get(b.ANN_BIND_COMPLETED) != "yes":
            self._sync_unbound_claim(claim)
        else:
            self._sync_bound_claim(claim)

    def _sync_unbound_claim(self, claim) -> None:
        if not claim.spec.volume_name:
            classes = self._classes_by_name()
            delay = b.is_delay_binding_mode(claim, classes)
            volume = b.find_best_match(claim, self.volumes.store.list(), delay_binding=delay)
            if volume is not None:
                self._bind(volume, claim)
                return
            selected = claim.metadata.annotations.get(b.ANN_SELECTED_NODE)
            if delay and not selected:
                self.recorder.event(claim, NORMAL, WAIT_FOR_FIRST_CONSUMER, MSG_WAIT_CONSUMER)
            elif b.claim_class(claim):
                claim = self._provision(claim, classes.get(b.claim_class(claim)))
            else:
                self.recorder.event(claim, NORMAL, FAILED_BINDING, MSG_NO_CLASS)
            self._claim_status(claim, "Pending")
            return
        volume = self.volumes.store.get(claim.spec.volume_name)
        if volume is None:
            self._claim_status(claim, "Pending")
            return
        if not volume.spec.claim_ref.name:
            reasons = unsatisfied_reasons(volume, claim)
            if reasons:
                self.recorder.event(claim, WARNING, FAILED_BINDING,
                                    f'Cannot bind to requested volume "{volume.metadata.name}": {reasons[0]}')
                self._claim_status(claim, "Pending")
                return
            self._bind(volume, claim)
        elif b.is_volume_bound_to_claim(volume, claim):
            self._bind(volume, claim)
        else:
            self.recorder.event(claim, WARNING, FAILED_BINDING,
                                f'volume "{volume.metadata.name}" already bound to a different claim.')
            self._claim_status(claim, "Pending")

    def _sync_bound_claim(self, claim) -> None:
        volume = self.volumes.store.get(claim.spec.volume_name) if claim.spec.volume_name else None
        if volume is None:
            if claim.status.phase != "Lost":
                self.recorder.event(claim, WARNING, CLAIM_LOST,
                                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!")
            self._claim_status(claim, "Lost")
        elif not volume.spec.claim_ref.name or b.is_volume_bound_to_claim(volume, claim):
            self._bind(volume, claim)
        else:
            if claim.status.phase != "Lost":
                self.recorder.event(claim, WARNING, CLAIM_MISBOUND,
                                    "Two claims are bound to the same volume, this one is bound incorrectly")
            self._claim_status(claim, "Lost")

    def _provision(self, claim, cls):
        """Hands the claim to its class's provisioner (by annotation), or says why it cannot."""
        name = b.claim_class(claim)
        if cls is None:
            self.recorder.event(claim, WARNING, PROVISIONING_FAILED,
                                f'storageclass.storage.k8s.io "{name}" not found')
            return claim
        provisioner = cls.provisioner
        if provisioner != b.NO_PROVISIONER and claim.metadata.annotations.get(b.ANN_STORAGE_PROVISIONER) != provisioner:
            updated = deep_copy(claim)
            updated.metadata.annotations[b.ANN_STORAGE_PROVISIONER] = provisioner
            updated.metadata.annotations[b.ANN_BETA_STORAGE_PROVISIONER] = provisioner
            claim = self.client.update(updated)
        self.recorder.event(claim, NORMAL, EXTERNAL_PROVISIONING, external_provisioning_message(provisioner))
        return claim

    def _bind(self, volume, claim) -> None:
        """Both halves of a binding, each written only when not yet so (a retry resumes)."""
        ref = volume.spec.claim_ref
        if not (b.is_volume_bound_to_claim(volume, claim) and ref.uid == claim.metadata.uid):
            updated = deep_copy(volume)
            if not ref.name:
                updated.metadata.annotations[b.ANN_BOUND_BY_CONTROLLER] = "yes"
            updated.spec.claim_ref.CopyFrom(claim_reference(claim))
            volume = self.client.update(updated)
        volume = self._volume_status(volume, "Bound")
        if (claim.spec.volume_name != volume.metadata.name
                or claim.metadata.annotations.get(b.ANN_BIND_COMPLETED) != "yes"):
            updated = deep_copy(claim)
            if not claim.spec.volume_name:
                updated.metadata.annotations[b.ANN_BOUND_BY_CONTROLLER] = "yes"
            updated.spec.volume_name = volume.metadata.name
            updated.metadata.annotations[b.ANN_BIND_COMPLETED] = "yes"
            claim = self.client.update(updated)
        status = claim.status
        if (status.phase != "Bound" or list(status.access_modes) != list(volume.spec.access_modes)
                or dict(status.capacity) != dict(volume.spec.capacity)):
            updated = deep_copy(claim)
            updated.status.phase = "Bound"
            del updated.status.access_modes[:]
            updated.status.access_modes.extend(volume.spec.access_modes)
            updated.status.capacity.clear()
            updated.status.capacity.update(volume.spec.capacity)
            self.client.update_status(updated)
            log.info("claim %s/%s bound to volume %s", claim.metadata.namespace, claim.metadata.name,
                     volume.metadata.name)

    def _claim_status(self, claim, phase: str):
        if claim.status.phase == phase:
            return claim
        updated = deep_copy(claim)
        updated.status.phase = phase
        if phase != "Bound":
            del updated.status.access_modes[:]
            updated.status.capacity.clear()
        return self.client.update_status(updated)

    # ---- volumes ----

    def _volume_status(self, volume, phase: str, message: str = "", reason: str = ""):
        s = volume.status
        if (s.phase, s.message, s.reason) == (phase, message, reason):
            return volume
        updated = deep_copy(volume)
        if s.phase != phase:
            updated.status.last_phase_transition_time = now_rfc3339()
        updated.status.phase, updated.status.message, updated.status.reason = phase, message, reason
        return self.client.update_status(updated)

    def sync_volume(self, name: str) -> None:
        volume = self.volumes.store.get(name)
        if volume is None:
            return
        ref = volume.spec.claim_ref
        if not ref.name or not ref.uid:
            # free, or pre-bound by an administrator to a claim not yet bound
            if volume.status.phase != "Failed" or not ref.name:
                self._volume_status(volume, "Available")
            return
        claim = self.claims.store.get(f"{ref.namespace}/{ref.name}")
        if claim is not None and claim.metadata.uid != ref.uid:
            claim = None  # a new claim of the same name is not this volume's
        if claim is None:
            if volume.status.phase not in ("Released", "Failed"):
                volume = self._volume_status(volume, "Released")
            if volume.status.phase == "Released":
                self._reclaim(volume)
            return
        if not claim.spec.volume_name:
            self._claim_queue.add(meta_namespace_key(claim))  # its sync finishes the binding
            self._volume_status(volume, "Bound")
            return
        if claim.spec.volume_name == volume.metadata.name:
            self._volume_status(volume, "Bound")
            return
        # the claim is bound to another volume: let this one go
        updated = deep_copy(volume)
        if volume.metadata.annotations.get(b.ANN_BOUND_BY_CONTROLLER) == "yes":
            updated.spec.ClearField("claim_ref")
            del updated.metadata.annotations[b.ANN_BOUND_BY_CONTROLLER]
        else:
            updated.spec.claim_ref.uid = ""  # pre-bound by an administrator: stays reserved
        self._volume_status(self.client.update(updated), "Available")

    def _reclaim(self, volume) -> None:
        policy = volume.spec.persistent_volume_reclaim_policy or "Retain"
        if policy == "Retain":
            return
        if policy == "Recycle":
            message = "No recycler plugin found for the volume!"
            self.recorder.event(volume, WARNING, VOLUME_FAILED_RECYCLE, message)
            self._volume_status(volume, "Failed", message)
            return
        if volume.metadata.annotations.get(b.ANN_DYNAMICALLY_PROVISIONED):
            return  # its provisioner deletes it (and the object)
        message = (f'error getting deleter volume plugin for volume "{volume.metadata.name}": '
                   "no deletable volume plugin matched")
        self.recorder.event(volume, WARNING, VOLUME_FAILED_DELETE, message)
        self._volume_status(volume, "Failed", message)

