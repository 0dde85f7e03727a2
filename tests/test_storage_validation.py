"""The storage kinds' defaults and validation: what kube-apiserver fills in
(reclaim policy, volume mode, binding mode, the protection finalizers) and what
it refuses, with Kubernetes' field paths, reasons and texts."""

from __future__ import annotations

from test_apiserver_validation import assert_cause, causes_of, defaulted

from apiserver.pb import core_pb2


def test_defaults_fill_policies_modes_and_protection_finalizers():
    pv = defaulted("persistentvolumes")
    assert pv.spec.persistent_volume_reclaim_policy == "Retain"
    assert pv.spec.volume_mode == "Filesystem"
    assert pv.status.phase == "Pending"
    assert list(pv.metadata.finalizers) == ["kubernetes.io/pv-protection"]
    pvc = defaulted("persistentvolumeclaims")
    assert pvc.spec.volume_mode == "Filesystem" and pvc.status.phase == "Pending"
    assert list(pvc.metadata.finalizers) == ["kubernetes.io/pvc-protection"]
    assert not pvc.spec.HasField("storage_class_name"), "unset: the default class, chosen by the PV controller"
    sc = defaulted("storageclasses")
    assert (sc.reclaim_policy, sc.volume_binding_mode) == ("Delete", "Immediate")


def test_persistent_volume_refusals():
    from test_apiserver_validation import persistent_volume as pv

    m = pv()
    del m.spec.access_modes[:]
    assert_cause("persistentvolumes", m, "spec.accessModes", "FieldValueRequired",
                 "Required value: must specify at least 1 access mode")
    m = pv()
    m.spec.access_modes[:] = ["RWO"]
    assert_cause("persistentvolumes", m, "spec.accessModes", "FieldValueNotSupported",
                 'Unsupported value: "RWO": supported values: "ReadOnlyMany", "ReadWriteMany", '
                 '"ReadWriteOnce", "ReadWriteOncePod"')
    m = pv()
    m.spec.access_modes[:] = ["ReadWriteOncePod", "ReadOnlyMany"]
    assert_cause("persistentvolumes", m, "spec.accessModes", "FieldValueForbidden",
                 "Forbidden: may not use ReadWriteOncePod with other access modes")
    m = pv()
    m.spec.capacity.clear()
    assert_cause("persistentvolumes", m, "spec.capacity", "FieldValueRequired")
    m = pv()
    m.spec.capacity["cpu"] = "1"
    assert_cause("persistentvolumes", m, "spec.capacity", "FieldValueNotSupported")
    m = pv()
    m.spec.capacity["storage"] = "-1Gi"
    assert_cause("persistentvolumes", m, "spec.capacity[storage]", "FieldValueInvalid")
    m = pv()
    m.spec.persistent_volume_reclaim_policy = "Keep"
    assert_cause("persistentvolumes", m, "spec.persistentVolumeReclaimPolicy", "FieldValueNotSupported",
                 'Unsupported value: "Keep": supported values: "Delete", "Recycle", "Retain"')
    m = pv()
    m.spec.volume_mode = "Raw"
    assert_cause("persistentvolumes", m, "spec.volumeMode", "FieldValueNotSupported")
    m = pv()
    m.spec.ClearField("host_path")
    assert_cause("persistentvolumes", m, "spec", "FieldValueRequired", "Required value: must specify a volume type")
    m = pv()
    m.spec.local.path = "/srv/local/x"
    assert_cause("persistentvolumes", m, "spec.local", "FieldValueForbidden",
                 "Forbidden: may not specify more than 1 volume type")
    assert_cause("persistentvolumes", m, "spec.nodeAffinity", "FieldValueRequired",
                 "Required value: Local volume requires node affinity")
    m = pv()
    m.spec.host_path.path = "/srv/../etc"
    assert_cause("persistentvolumes", m, "spec.hostPath.path", "FieldValueInvalid",
                 "Invalid value: \"/srv/../etc\": must not contain '..'")


def test_a_persistent_volumes_source_and_mode_are_immutable():
    old = defaulted("persistentvolumes")
    new = core_pb2.PersistentVolume()
    new.CopyFrom(old)
    new.spec.host_path.path = "/elsewhere"
    assert_cause("persistentvolumes", new, "spec.persistentvolumesource", "FieldValueForbidden", old=old)
    new.CopyFrom(old)
    new.spec.volume_mode = "Block"
    assert_cause("persistentvolumes", new, "spec.volumeMode", "FieldValueInvalid",
                 'Invalid value: "Block": field is immutable', old=old)
    new.CopyFrom(old)
    new.spec.claim_ref.name, new.spec.claim_ref.namespace = "data", "default"
    new.spec.persistent_volume_reclaim_policy = "Delete"
    new.spec.capacity["storage"] = "2Gi"
    assert causes_of_update_ok("persistentvolumes", new, old)


def causes_of_update_ok(name, new, old) -> bool:
    from apiserver import resources
    from apiserver.validation import validate_update
    validate_update(resources.lookup(name), new, old)
    return True


def test_claim_refusals():
    from test_apiserver_validation import persistent_volume_claim as pvc

    m = pvc()
    del m.spec.access_modes[:]
    assert_cause("persistentvolumeclaims", m, "spec.accessModes", "FieldValueRequired",
                 "Required value: at least 1 access mode is required")
    m = pvc()
    m.spec.resources.requests.clear()
    assert_cause("persistentvolumeclaims", m, "spec.resources[storage]", "FieldValueRequired")
    m = pvc()
    m.spec.resources.requests["storage"] = "0"
    assert_cause("persistentvolumeclaims", m, "spec.resources[storage]", "FieldValueInvalid",
                 'Invalid value: "0": must be greater than zero')
    m = pvc()
    m.spec.storage_class_name = "Not_A_Name"
    assert_cause("persistentvolumeclaims", m, "spec.storageClassName", "FieldValueInvalid")
    m = pvc()
    m.spec.selector.match_expressions.add(key="tier", operator="Near", values=["a"])
    causes = causes_of("persistentvolumeclaims", m)
    assert any(f.startswith("spec.selector.matchExpressions[0]") for f, _, _ in causes), causes


def test_a_claims_spec_is_immutable_but_binding_fills_volume_name_and_class_once():
    old = defaulted("persistentvolumeclaims")
    new = core_pb2.PersistentVolumeClaim()
    new.CopyFrom(old)
    new.spec.volume_name = "pv-1"
    new.spec.storage_class_name = "standard"
    assert causes_of_update_ok("persistentvolumeclaims", new, old)
    bound = core_pb2.PersistentVolumeClaim()
    bound.CopyFrom(new)
    bound.status.phase = "Bound"
    changed = core_pb2.PersistentVolumeClaim()
    changed.CopyFrom(bound)
    changed.spec.volume_name = "pv-2"
    causes = causes_of("persistentvolumeclaims", changed, bound)
    [(field, reason, detail)] = causes
    assert (field, reason) == ("spec", "FieldValueForbidden")
    assert detail.startswith("Forbidden: spec is immutable after creation except resources.requests and "
                             "volumeAttributesClassName for bound claims")
    changed.CopyFrom(bound)
    changed.spec.access_modes[:] = ["ReadWriteMany"]
    assert_cause("persistentvolumeclaims", changed, "spec", "FieldValueForbidden", old=bound)
    changed.CopyFrom(bound)
    changed.spec.resources.requests["storage"] = "2Gi"  # expansion of a bound claim
    assert causes_of_update_ok("persistentvolumeclaims", changed, bound)
    changed.spec.resources.requests["storage"] = "1Mi"
    assert_cause("persistentvolumeclaims", changed, "spec.resources.requests.storage", "FieldValueForbidden",
                 "Forbidden: field can not be less than previous value", old=bound)


def test_storage_class_refusals_and_immutable_fields():
    from test_apiserver_validation import storage_class as sc

    m = sc()
    m.provisioner = ""
    assert_cause("storageclasses", m, "provisioner", "FieldValueRequired")
    m = sc()
    m.reclaim_policy = "Recycle"
    assert_cause("storageclasses", m, "reclaimPolicy", "FieldValueNotSupported",
                 'Unsupported value: "Recycle": supported values: "Delete", "Retain"')
    m = sc()
    m.volume_binding_mode = "Later"
    assert_cause("storageclasses", m, "volumeBindingMode", "FieldValueNotSupported")
    old = defaulted("storageclasses")
    for field, value, path, reason in (("provisioner", "other.io/x", "provisioner", "FieldValueForbidden"),
                                       ("reclaim_policy", "Retain", "reclaimPolicy", "FieldValueForbidden"),
                                       ("volume_binding_mode", "WaitForFirstConsumer", "volumeBindingMode",
                                        "FieldValueInvalid")):
        new = sc()
        new.CopyFrom(old)
        setattr(new, field, value)
        assert_cause("storageclasses", new, path, reason, old=old)
    new = sc()
    new.CopyFrom(old)
    new.parameters["tier"] = "fast"
    assert_cause("storageclasses", new, "parameters", "FieldValueForbidden",
                 "Forbidden: updates to parameters are forbidden.", old=old)


def test_quantities_may_be_json_numbers_as_in_kubernetes():
    from apiserver.manifest import from_dict

    pvc = from_dict({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "x"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": 1048576}}}})
    assert pvc.spec.resources.requests["storage"] == "1048576"
    pv = from_dict({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "x"},
                    "spec": {"capacity": {"storage": 5}, "accessModes": ["ReadWriteOnce"],
                             "hostPath": {"path": "/srv/x"}}})
    assert pv.spec.capacity["storage"] == "5"
