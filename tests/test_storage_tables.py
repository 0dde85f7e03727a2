"""What `kctl get` and the REST Tables (`kubectl get`) print for the storage kinds:
kubectl's columns, access modes abbreviated, the default class marked."""

from __future__ import annotations

from apiserver.manifest import to_dict
from apiserver.pb import core_pb2, storage_pb2
from apiserver.rest import tables
from controllers.kctl import printers


def _bound_pair():
    pv = core_pb2.PersistentVolume()
    pv.metadata.name = "pv-1"
    pv.spec.capacity["storage"] = "5Gi"
    pv.spec.access_modes.extend(["ReadWriteMany", "ReadWriteOnce"])
    pv.spec.persistent_volume_reclaim_policy, pv.spec.storage_class_name = "Delete", "standard"
    pv.spec.volume_mode = "Filesystem"
    pv.spec.claim_ref.namespace, pv.spec.claim_ref.name = "default", "data"
    pv.status.phase = "Bound"
    pvc = core_pb2.PersistentVolumeClaim()
    pvc.metadata.name, pvc.metadata.namespace = "data", "default"
    pvc.spec.storage_class_name, pvc.spec.volume_name = "standard", "pv-1"
    pvc.status.phase = "Bound"
    pvc.status.capacity["storage"] = "5Gi"
    pvc.status.access_modes.extend(pv.spec.access_modes)
    return pv, pvc


def test_kctl_columns():
    pv, pvc = _bound_pair()
    assert printers.COLUMNS["persistentvolumes"].cells(pv, None)[:9] == [
        "pv-1", "5Gi", "RWO,RWX", "Delete", "Bound", "default/data", "standard", "<unset>", ""]
    assert printers.COLUMNS["persistentvolumeclaims"].cells(pvc, None)[:7] == [
        "data", "Bound", "pv-1", "5Gi", "RWO,RWX", "standard", "<unset>"]
    pvc.status.phase = "Pending"
    assert printers.COLUMNS["persistentvolumeclaims"].cells(pvc, None)[3:5] == ["", ""], \
        "kubectl shows capacity and modes of bound claims only"
    sc = storage_pb2.StorageClass(provisioner="example.com/dirs", reclaim_policy="Delete",
                                  volume_binding_mode="WaitForFirstConsumer")
    sc.metadata.name = "standard"
    sc.metadata.annotations["storageclass.kubernetes.io/is-default-class"] = "true"
    assert printers.COLUMNS["storageclasses"].cells(sc, None)[:5] == [
        "standard (default)", "example.com/dirs", "Delete", "WaitForFirstConsumer", "false"]


def test_rest_table_rows():
    pv, pvc = _bound_pair()
    assert tables.row("persistentvolumes", to_dict(pv), "None")["cells"][:9] == [
        "pv-1", "5Gi", "RWO,RWX", "Delete", "Bound", "default/data", "standard", "<unset>", ""]
    assert tables.row("persistentvolumeclaims", to_dict(pvc), "None")["cells"][:7] == [
        "data", "Bound", "pv-1", "5Gi", "RWO,RWX", "standard", "<unset>"]
    assert [c["name"] for c in tables.columns("storageclasses")] == [
        "Name", "Provisioner", "ReclaimPolicy", "VolumeBindingMode", "AllowVolumeExpansion", "Age"]
