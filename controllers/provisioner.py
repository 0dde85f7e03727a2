"""The directory provisioner: makes and deletes the volumes of the plane's two
StorageClasses, as an external provisioner (kubernetes-csi/external-provisioner
with a hostpath driver) does, acting on claims the PV controller annotated with
its name.

Volumes are directories in a storage area that belongs to no node: one
directory on this machine (``--storage-dir``) that every node's kubelet can
bind-mount from, the stand-in for networked storage.

- ``standard`` (the default class, WaitForFirstConsumer, Delete): a directory
  ``<storage>/shared/pvc-<claim uid>`` served as a hostPath volume without node
  affinity, so a pod that moves to another node finds its data there.
- ``local`` (WaitForFirstConsumer, Delete): a directory under
  ``<storage>/nodes/<node>/`` for the node the scheduler chose (the claim's
  selected-node annotation), served as a ``local`` volume whose nodeAffinity
  names that node: the scheduler keeps every later pod of the claim there.

A claim is provisioned once its class's binding mode allows (a selected node
for WaitForFirstConsumer): the PersistentVolume ``pvc-<claim uid>`` is created
pre-bound to it (claimRef with uid) and the PV controller completes the
binding. A Released volume of ours with reclaim policy Delete loses its
directory, then its object. The classes are created at start when absent (an
administrator's edits to them are kept).
"""

from __future__ import annotations

import logging
import os
import shutil

from apiserver.errors import ApiError
from apiserver.pb import core_pb2, storage_pb2
from controllers import pvbinding as b
from controllers.base import Controller
from controllers.events import NORMAL, WARNING, EventRecorder
from controllers.informer import meta_namespace_key
from controllers.persistentvolume import claim_reference

log = logging.getLogger("controllers.provisioner")

SHARED_PROVISIONER = "storage.plane.local/shared-dir"
LOCAL_PROVISIONER = "storage.plane.local/node-dir"
PROVISIONERS = (SHARED_PROVISIONER, LOCAL_PROVISIONER)
HOSTNAME_LABEL = "kubernetes.io/hostname"
VOLUME_DIR_MODE = 0o777  # any container user may write, as hostpath provisioners make them


def default_classes() -> list[storage_pb2.StorageClass]:
    standard = storage_pb2.StorageClass(provisioner=SHARED_PROVISIONER, reclaim_policy="Delete",
                                        volume_binding_mode=b.WAIT_FOR_FIRST_CONSUMER)
    standard.metadata.name = "standard"
    standard.metadata.annotations[b.DEFAULT_CLASS_ANNOTATION] = "true"
    local = storage_pb2.StorageClass(provisioner=LOCAL_PROVISIONER, reclaim_policy="Delete",
                                     volume_binding_mode=b.WAIT_FOR_FIRST_CONSUMER)
    local.metadata.name = "local"
    return [standard, local]


def volume_name(claim) -> str:
    return f"pvc-{claim.metadata.uid}"


def volume_for(claim, cls, path: str, node: str) -> core_pb2.PersistentVolume:
    """The PersistentVolume provisioned for ``claim`` at ``path`` (on ``node`` for a local class)."""
    pv = core_pb2.PersistentVolume()
    pv.metadata.name = volume_name(claim)
    pv.metadata.annotations[b.ANN_DYNAMICALLY_PROVISIONED] = cls.provisioner
    spec = pv.spec
    spec.capacity[b.STORAGE] = claim.spec.resources.requests[b.STORAGE]
    spec.access_modes.extend(claim.spec.access_modes)
    spec.claim_ref.CopyFrom(claim_reference(claim))
    spec.persistent_volume_reclaim_policy = cls.reclaim_policy or "Delete"
    spec.storage_class_name = cls.metadata.name
    spec.volume_mode = claim.spec.volume_mode or "Filesystem"
    spec.mount_options.extend(cls.mount_options)
    if cls.provisioner == LOCAL_PROVISIONER:
        spec.local.path = path
        term = spec.node_affinity.required.node_selector_terms.add()
        term.match_expressions.add(key=HOSTNAME_LABEL, operator="In", values=[node])
    else:
        spec.host_path.path = path
        spec.host_path.type = "Directory"
    return pv


class DirectoryProvisioner(Controller):
    name = "provision"

    def __init__(self, client, informers, storage_dir: str, *, recorder: EventRecorder | None = None) -> None:
        self.client = client
        self.storage_dir = os.path.abspath(storage_dir)
        self.claims = informers.informer("persistentvolumeclaims")
        self.volumes = informers.informer("persistentvolumes")
        self.classes = informers.informer("storageclasses")
        super().__init__([self.claims, self.volumes, self.classes], 2, self.provision)
        self._claim_queue = self.queue
        self._volume_queue = self.add_queue("deprovision", self.deprovision)
        self.recorder = self._recorder(client, recorder, "directory-provisioner")
        self.claims.add_handler(self._claim_changed, lambda old, new: self._claim_changed(new), None)
        self.volumes.add_handler(self._volume_changed, lambda old, new: self._volume_changed(new), None)

    def start(self, wait_for_sync: float = 60.0) -> DirectoryProvisioner:
        """Makes the storage area and the default classes, then starts as every controller."""
        os.makedirs(self.storage_dir, exist_ok=True)
        for cls in default_classes():
            try:
                self.client.create(cls)
            except ApiError as e:
                if e.reason != "AlreadyExists":
                    raise
        return super().start(wait_for_sync)

    def _claim_changed(self, claim) -> None:
        if claim.metadata.annotations.get(b.ANN_STORAGE_PROVISIONER) in PROVISIONERS:
            self._claim_queue.add(meta_namespace_key(claim))

    def _volume_changed(self, volume) -> None:
        if volume.metadata.annotations.get(b.ANN_DYNAMICALLY_PROVISIONED) in PROVISIONERS:
            self._volume_queue.add(volume.metadata.name)

    # ---- paths ----

    def path_for(self, claim, cls, node: str) -> str:
        if cls.provisioner == LOCAL_PROVISIONER:
            return os.path.join(self.storage_dir, "nodes", node, volume_name(claim))
        return os.path.join(self.storage_dir, "shared", volume_name(claim))

    def _ours(self, path: str) -> bool:
        real = os.path.realpath(path)
        return real.startswith(self.storage_dir + os.sep) and real != self.storage_dir

    # ---- provisioning ----

    def provision(self, key: str) -> None:
        claim = self.claims.store.get(key)
        if (claim is None or claim.metadata.deletion_timestamp or claim.spec.volume_name
                or claim.status.phase == "Bound"):
            return
        provisioner = claim.metadata.annotations.get(b.ANN_STORAGE_PROVISIONER)
        cls = self.classes.store.get(b.claim_class(claim))
        if provisioner not in PROVISIONERS or cls is None or cls.provisioner != provisioner:
            return
        node = claim.metadata.annotations.get(b.ANN_SELECTED_NODE, "")
        if cls.volume_binding_mode == b.WAIT_FOR_FIRST_CONSUMER and not node:
            return  # the scheduler has not chosen a node yet
        if self.volumes.store.get(volume_name(claim)) is not None:
            return
        if cls.provisioner == LOCAL_PROVISIONER and not node:
            self.recorder.event(claim, WARNING, "ProvisioningFailed",
                                f'storageclass "{cls.metadata.name}" makes node-local volumes: it needs '
                                "volumeBindingMode WaitForFirstConsumer so that a node is chosen first")
            return
        path = self.path_for(claim, cls, node)
        wanted = b.requested_bytes(claim)
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        stats = os.statvfs(parent)
        free = stats.f_bavail * stats.f_frsize
        if wanted > free:
            self.recorder.event(claim, WARNING, "ProvisioningFailed",
                                f"failed to provision volume with StorageClass \"{cls.metadata.name}\": "
                                f"{wanted} bytes requested, {free} free in the storage area")
            raise RuntimeError(f"not enough space for {key}")  # retried with backoff
        self.recorder.event(claim, NORMAL, "Provisioning",
                            f'External provisioner is provisioning volume for claim "{key}"')
        os.makedirs(path, exist_ok=True)
        os.chmod(path, VOLUME_DIR_MODE)
        try:
            self.client.create(volume_for(claim, cls, path, node))
        except ApiError as e:
            if e.reason != "AlreadyExists":
                raise
        self.recorder.event(claim, NORMAL, "ProvisioningSucceeded",
                            f"Successfully provisioned volume {volume_name(claim)}")
        log.info("provisioned %s for claim %s at %s", volume_name(claim), key, path)

    # ---- deleting ----

    def deprovision(self, name: str) -> None:
        volume = self.volumes.store.get(name)
        if volume is None or volume.status.phase != "Released":
            return
        if (volume.spec.persistent_volume_reclaim_policy or "Retain") != "Delete":
            return
        path = volume.spec.host_path.path or volume.spec.local.path
        if path and self._ours(path) and os.path.lexists(path):
            shutil.rmtree(path)
            log.info("deleted the directory of volume %s: %s", name, path)
        elif path and not self._ours(path):
            self.recorder.event(volume, WARNING, "VolumeFailedDelete",
                                f"{path} is not in the storage area {self.storage_dir}; not deleting it")
            return
        if not volume.metadata.deletion_timestamp:
            try:
                self.client.delete("persistentvolumes", name, "")
            except ApiError as e:
                if e.reason != "NotFound":
                    raise
