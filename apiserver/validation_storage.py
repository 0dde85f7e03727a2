"""Validation of the storage kinds (PersistentVolume, PersistentVolumeClaim,
StorageClass), as pkg/apis/core/validation and pkg/apis/storage/validation
check them, with their texts. ``validation`` registers these."""

from __future__ import annotations

from google.protobuf import text_format

from apiserver.quantity import parse_quantity
from apiserver.selectors import LabelSelectorError, label_selector_from_proto
from apiserver.syntax import dns1123_subdomain_errors, qualified_name_errors
from apiserver.validation_common import FieldErrors, _enum, _Raw
from apiserver.validation_pod import _quantity, _validate_node_selector_term

ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")
VOLUME_MODES = ("Block", "Filesystem")
PV_RECLAIM_POLICIES = ("Delete", "Recycle", "Retain")
CLASS_RECLAIM_POLICIES = ("Delete", "Retain")
BINDING_MODES = ("Immediate", "WaitForFirstConsumer")
HOST_PATH_TYPES = ("", "BlockDevice", "CharDevice", "Directory", "DirectoryOrCreate", "File",
                   "FileOrCreate", "Socket")
STORAGE = "storage"
# the PersistentVolumeSource fields we carry, with their JSON names
PV_SOURCES = (("host_path", "hostPath"), ("local", "local"))
MAX_PROVISIONER_LENGTH = 63
MAX_PARAMETERS_SIZE = 256 * 1024


def pv_sources(spec) -> list[str]:
    """The JSON names of the sources a PersistentVolumeSpec sets (exactly one when valid)."""
    return [json_name for field, json_name in PV_SOURCES if spec.HasField(field)]


def _access_modes(errs: FieldErrors, path: str, modes, required_detail: str) -> None:
    if not modes:
        errs.required(path, required_detail)
    for mode in modes:
        if mode not in ACCESS_MODES:
            errs.not_supported(path, mode, ACCESS_MODES)
    if "ReadWriteOncePod" in modes and len(modes) > 1:
        errs.forbidden(path, "may not use ReadWriteOncePod with other access modes")


def _class_name(errs: FieldErrors, path: str, name: str) -> None:
    if name:
        errs.each(path, name, dns1123_subdomain_errors(name))


def _no_backsteps(errs: FieldErrors, path: str, target: str) -> None:
    if ".." in target.split("/"):
        errs.invalid(path, target, "must not contain '..'")


# ---- PersistentVolume ----

def validate_persistent_volume(errs: FieldErrors, pv) -> None:
    spec = pv.spec
    _access_modes(errs, "spec.accessModes", spec.access_modes, "must specify at least 1 access mode")
    if not spec.capacity:
        errs.required("spec.capacity")
    elif STORAGE not in spec.capacity or len(spec.capacity) > 1:
        errs.not_supported("spec.capacity", _Raw(_go_keys(spec.capacity)), [STORAGE])
    if STORAGE in spec.capacity:
        _quantity(errs, "spec.capacity[storage]", spec.capacity[STORAGE])
    _enum(errs, "spec.persistentVolumeReclaimPolicy", spec.persistent_volume_reclaim_policy,
          PV_RECLAIM_POLICIES, required=False)
    _class_name(errs, "spec.storageClassName", spec.storage_class_name)
    _enum(errs, "spec.volumeMode", spec.volume_mode, VOLUME_MODES, required=False)
    sources = pv_sources(spec)
    if not sources:
        errs.required("spec", "must specify a volume type")
    elif len(sources) > 1:
        errs.forbidden(f"spec.{sources[1]}", "may not specify more than 1 volume type")
    if spec.HasField("host_path"):
        if not spec.host_path.path:
            errs.required("spec.hostPath.path")
        _no_backsteps(errs, "spec.hostPath.path", spec.host_path.path)
        _enum(errs, "spec.hostPath.type", spec.host_path.type, HOST_PATH_TYPES, required=False)
    if spec.HasField("local"):
        path = spec.local.path
        if not path:
            errs.required("spec.local.path")
        elif not path.startswith("/"):
            errs.invalid("spec.local.path", path, "must be an absolute path")
        _no_backsteps(errs, "spec.local.path", path)
        if not spec.HasField("node_affinity"):
            errs.required("spec.nodeAffinity", "Local volume requires node affinity")
    if spec.HasField("node_affinity"):
        if not spec.node_affinity.HasField("required"):
            errs.required("spec.nodeAffinity.required", "must specify required node constraints")
        else:
            terms = spec.node_affinity.required.node_selector_terms
            if not terms:
                errs.required("spec.nodeAffinity.required.nodeSelectorTerms",
                              "must have at least one node selector term")
            for i, term in enumerate(terms):
                _validate_node_selector_term(errs, f"spec.nodeAffinity.required.nodeSelectorTerms[{i}]", term)


def _go_keys(m) -> str:
    """A map's keys as Go prints a []ResourceName: [a b]."""
    return "[" + " ".join(sorted(m)) + "]"


def validate_persistent_volume_update(errs: FieldErrors, new, old) -> None:
    """The source and the volume mode are fixed at creation; nodeAffinity may be set once."""
    for field, _ in PV_SOURCES:
        if getattr(new.spec, field) != getattr(old.spec, field) or (
                new.spec.HasField(field) != old.spec.HasField(field)):
            errs.forbidden("spec.persistentvolumesource",
                           "spec.persistentvolumesource is immutable after creation")
            break
    if new.spec.volume_mode != old.spec.volume_mode:
        errs.invalid("spec.volumeMode", new.spec.volume_mode, "field is immutable")
    if old.spec.HasField("node_affinity") and new.spec.node_affinity != old.spec.node_affinity:
        errs.invalid("spec.nodeAffinity", _Raw("{...}"), "field is immutable")


# ---- PersistentVolumeClaim ----

def validate_persistent_volume_claim(errs: FieldErrors, pvc) -> None:
    spec = pvc.spec
    _access_modes(errs, "spec.accessModes", spec.access_modes, "at least 1 access mode is required")
    if spec.HasField("selector"):
        try:
            label_selector_from_proto(spec.selector)
        except LabelSelectorError as e:
            for field, reason, detail in e.causes:
                errs.add(f"spec.selector.{field}", reason, detail)
    if spec.HasField("storage_class_name"):
        _class_name(errs, "spec.storageClassName", spec.storage_class_name)
    requests = spec.resources.requests
    if STORAGE not in requests:
        errs.required("spec.resources[storage]")
    else:
        value = _quantity(errs, "spec.resources[storage]", requests[STORAGE])
        if value is not None and value <= 0:
            errs.invalid("spec.resources[storage]", requests[STORAGE], "must be greater than zero")
    for name in sorted(requests):
        if name != STORAGE:
            _quantity(errs, f"spec.resources.requests[{name}]", requests[name])
    _enum(errs, "spec.volumeMode", spec.volume_mode, VOLUME_MODES, required=False)


def _spec_diff(old, new) -> str:
    """What changed, field by field (upstream prints a cmp.Diff of the two specs)."""
    lines = []
    for field in type(old).DESCRIPTOR.fields:
        a, b = _plain(getattr(old, field.name)), _plain(getattr(new, field.name))
        if a != b:
            lines.append(f"-  {field.json_name}: {a}\n+  {field.json_name}: {b}")
    return "\n".join(lines)


def _plain(value):
    if isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "ListFields"):
        return text_format.MessageToString(value, as_one_line=True)
    if hasattr(value, "items"):
        return dict(value)
    return list(value)


def validate_persistent_volume_claim_update(errs: FieldErrors, new, old) -> None:
    """A claim's spec is fixed at creation, but for what binding fills in once (volumeName, a
    default storageClassName) and, on a bound claim, a larger storage request (expansion)."""
    was = type(old.spec)()
    was.CopyFrom(old.spec)
    now = type(new.spec)()
    now.CopyFrom(new.spec)
    if not was.volume_name:
        was.volume_name = now.volume_name
    if not was.HasField("storage_class_name") and now.HasField("storage_class_name"):
        was.storage_class_name = now.storage_class_name
    if old.status.phase == "Bound" and STORAGE in now.resources.requests and STORAGE in was.resources.requests:
        try:
            grows = parse_quantity(now.resources.requests[STORAGE]) >= parse_quantity(was.resources.requests[STORAGE])
        except ValueError:
            grows = False
        if grows:
            was.resources.requests[STORAGE] = now.resources.requests[STORAGE]
        else:
            errs.forbidden("spec.resources.requests.storage", "field can not be less than previous value")
            was.resources.requests[STORAGE] = now.resources.requests[STORAGE]
    if was != now:
        errs.forbidden("spec", "spec is immutable after creation except resources.requests and "
                       "volumeAttributesClassName for bound claims\n" + _spec_diff(was, now))


# ---- StorageClass ----

def validate_storage_class(errs: FieldErrors, sc) -> None:
    if not sc.provisioner:
        errs.required("provisioner")
    else:
        errs.each("provisioner", sc.provisioner, qualified_name_errors(sc.provisioner.lower()))
        if len(sc.provisioner) > MAX_PROVISIONER_LENGTH:
            errs.too_long("provisioner", MAX_PROVISIONER_LENGTH)
    size = 0
    for key in sorted(sc.parameters):
        if not key:
            errs.invalid("parameters", _Raw("map[]"), "keys can't be empty")
        size += len(key) + len(sc.parameters[key])
    if size > MAX_PARAMETERS_SIZE:
        errs.too_long("parameters", MAX_PARAMETERS_SIZE)
    _enum(errs, "reclaimPolicy", sc.reclaim_policy, CLASS_RECLAIM_POLICIES, required=False)
    _enum(errs, "volumeBindingMode", sc.volume_binding_mode, BINDING_MODES)
    for i, term in enumerate(sc.allowed_topologies):
        p = f"allowedTopologies[{i}]"
        if not term.match_label_expressions:
            errs.required(f"{p}.matchLabelExpressions", "must have at least one label requirement")
        for j, req in enumerate(term.match_label_expressions):
            errs.each(f"{p}.matchLabelExpressions[{j}].key", req.key, qualified_name_errors(req.key))
            if not req.values:
                errs.required(f"{p}.matchLabelExpressions[{j}].values",
                              "must specify as least one value")


def validate_storage_class_update(errs: FieldErrors, new, old) -> None:
    if dict(new.parameters) != dict(old.parameters):
        errs.forbidden("parameters", "updates to parameters are forbidden.")
    if new.provisioner != old.provisioner:
        errs.forbidden("provisioner", "updates to provisioner are forbidden.")
    if new.reclaim_policy != old.reclaim_policy:
        errs.forbidden("reclaimPolicy", "updates to reclaimPolicy are forbidden.")
    if new.volume_binding_mode != old.volume_binding_mode:
        errs.invalid("volumeBindingMode", new.volume_binding_mode, "field is immutable")

