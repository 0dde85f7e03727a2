"""Objects in Kubernetes' JSON form (what a manifest or ``kubectl get -o json``
shows) and JSON merge patches over it.

``to_dict`` writes apiVersion and kind first, then the fields under their JSON
names, leaving out what is unset (proto3 zero values, empty lists and maps) as
Kubernetes' ``omitempty`` does; int64 fields are JSON numbers and bytes are
base64, as Kubernetes prints them. ``from_dict`` is the strict inverse: an
unknown field or a value of the wrong JSON type is a BadRequest naming its
path, never a half-read object. Manifest conveniences Kubernetes accepts are
accepted: numbers for IntOrString and quantity fields (``targetPort: 8080``,
``cpu: 1``) and decimal strings for integer fields.

A patch is client-supplied JSON and everything here recurses over it, so its
size and nesting are bounded before anything walks it (``parse_merge_patch``):
kube-apiserver's answers, RequestEntityTooLarge and a BadRequest "exceeded max
depth", instead of a RecursionError.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from apiserver import errors, resources
from apiserver.limits import MAX_JSON_DEPTH, check_request_size
from apiserver.errors import ApiError

_INT_TYPES = {
    FieldDescriptor.TYPE_INT32: (-2 ** 31, 2 ** 31 - 1, "int32"),
    FieldDescriptor.TYPE_SINT32: (-2 ** 31, 2 ** 31 - 1, "int32"),
    FieldDescriptor.TYPE_SFIXED32: (-2 ** 31, 2 ** 31 - 1, "int32"),
    FieldDescriptor.TYPE_INT64: (-2 ** 63, 2 ** 63 - 1, "int64"),
    FieldDescriptor.TYPE_SINT64: (-2 ** 63, 2 ** 63 - 1, "int64"),
    FieldDescriptor.TYPE_SFIXED64: (-2 ** 63, 2 ** 63 - 1, "int64"),
    FieldDescriptor.TYPE_UINT32: (0, 2 ** 32 - 1, "uint32"),
    FieldDescriptor.TYPE_FIXED32: (0, 2 ** 32 - 1, "uint32"),
    FieldDescriptor.TYPE_UINT64: (0, 2 ** 64 - 1, "uint64"),
    FieldDescriptor.TYPE_FIXED64: (0, 2 ** 64 - 1, "uint64"),
}
_FLOAT_TYPES = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)

# string fields that Kubernetes types as IntOrString or Quantity: a JSON
# number is accepted there and kept as its decimal text
_NUMBER_AS_STRING = frozenset({
    "core.v1.ServicePort.target_port",
    "core.v1.HTTPGetAction.port",
    "core.v1.TCPSocketAction.port",
    "core.v1.EmptyDirVolumeSource.size_limit",
    "core.v1.ResourceRequirements.limits",
    "core.v1.ResourceRequirements.requests",
    "core.v1.NodeStatus.capacity",
    "core.v1.NodeStatus.allocatable",
    "core.v1.PersistentVolumeSpec.capacity",
    "core.v1.VolumeResourceRequirements.limits",
    "core.v1.VolumeResourceRequirements.requests",
    "core.v1.PersistentVolumeClaimStatus.capacity",
    "apps.v1.RollingUpdateDeployment.max_surge",
    "apps.v1.RollingUpdateDeployment.max_unavailable",
})

# message fields whose JSON is written inside their parent's (Go's embedded structs,
# `json:",inline"`), while the wire keeps them as a field of their own
INLINE = frozenset({"admissionregistration.v1.RuleWithOperations.rule"})


@functools.cache
def json_fields(desc) -> dict[str, tuple[FieldDescriptor, FieldDescriptor | None]]:
    """A message's fields by JSON name: (field, the inline field holding it or None)."""
    out = {}
    for f in desc.fields:
        if f.full_name in INLINE:
            out.update({g.json_name: (g, f) for g in f.message_type.fields})
        else:
            out[f.json_name] = (f, None)
    return out


# ---- message -> JSON ----

def to_dict(msg) -> dict[str, Any]:
    """A typed object as Kubernetes JSON: {"apiVersion", "kind", then its fields}."""
    resource = resources.of(msg)
    return {"apiVersion": resource.api_version, "kind": resource.kind, **message_to_json(msg)}


def message_to_json(msg) -> dict[str, Any]:
    """Any message's set fields under their JSON names (no apiVersion/kind)."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.full_name in INLINE:
            out.update(message_to_json(value))
        elif _is_map(field):
            if value:
                value_field = field.message_type.fields_by_name["value"]
                out[field.json_name] = {k: _scalar_or_message_to_json(value_field, value[k])
                                        for k in sorted(value)}
        elif field.is_repeated:
            if value:
                out[field.json_name] = [_scalar_or_message_to_json(field, v) for v in value]
        elif field.has_presence:
            if msg.HasField(field.name):
                out[field.json_name] = _scalar_or_message_to_json(field, value)
        elif value != field.default_value:
            out[field.json_name] = _scalar_or_message_to_json(field, value)
    return out


def _is_map(field: FieldDescriptor) -> bool:
    return (field.type == FieldDescriptor.TYPE_MESSAGE
            and field.message_type.GetOptions().map_entry)


# metav1.FieldsV1 holds JSON text, written into the object's JSON as that JSON
_FIELDS_V1 = "meta.v1.FieldsV1"


def _scalar_or_message_to_json(field: FieldDescriptor, value):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == _FIELDS_V1:
            return json.loads(value.raw) if value.raw else {}
        return message_to_json(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


# ---- JSON -> message ----

class _Decoder:
    """One from_dict call: collects unknown fields, fails on wrong types."""

    def __init__(self, kind: str, api_version: str) -> None:
        self.kind = kind
        self.api_version = api_version
        self.unknown: list[str] = []

    def error(self, detail: str) -> ApiError:
        return errors.bad_request(f'{self.kind} in version "{self.api_version}" cannot be '
                                  f"handled as a {self.kind}: {detail}")

    def type_error(self, value, path: str, expected: str) -> ApiError:
        return self.error(f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                          f"{path} of type {expected}")

    def message(self, msg, obj, path: str, *, top: bool = False) -> None:
        if not isinstance(obj, dict):
            raise self.type_error(obj, path or self.kind, "object")
        by_json = json_fields(msg.DESCRIPTOR)
        for key, value in obj.items():
            if top and key in ("apiVersion", "kind"):
                continue
            child = f"{path}.{key}" if path else key
            field, inline = by_json.get(key, (None, None))
            if field is None:
                self.unknown.append(child)
                continue
            if value is None:
                continue
            self.field(msg if inline is None else getattr(msg, inline.name), field, value, child)

    def field(self, msg, field: FieldDescriptor, value, path: str) -> None:
        if _is_map(field):
            if not isinstance(value, dict):
                raise self.type_error(value, path, "map")
            target = getattr(msg, field.name)
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if v is None:
                    continue
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    self.message(target[k], v, f"{path}.{k}")
                else:
                    target[k] = self.scalar(value_field, v, f"{path}.{k}",
                                            numbers_as_text=field.full_name in _NUMBER_AS_STRING)
        elif field.is_repeated:
            if not isinstance(value, list):
                raise self.type_error(value, path, "array")
            target = getattr(msg, field.name)
            for i, item in enumerate(value):
                item_path = f"{path}[{i}]"
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    if item is None:
                        raise self.type_error(item, item_path, "object")
                    self.message(target.add(), item, item_path)
                else:
                    target.append(self.scalar(field, item, item_path))
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == _FIELDS_V1:
            if not isinstance(value, dict):
                raise self.type_error(value, path, "object")
            getattr(msg, field.name).raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False) \
                if value else ""
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = getattr(msg, field.name)
            sub.SetInParent()  # "emptyDir": {} is a choice, not nothing
            self.message(sub, value, path)
        else:
            setattr(msg, field.name, self.scalar(
                field, value, path, numbers_as_text=field.full_name in _NUMBER_AS_STRING))

    def scalar(self, field: FieldDescriptor, value, path: str, *, numbers_as_text: bool = False):
        t = field.type
        if t == FieldDescriptor.TYPE_STRING:
            if isinstance(value, str):
                return value
            if numbers_as_text and _is_number(value):
                return _number_text(value)
            raise self.type_error(value, path, "string")
        if t == FieldDescriptor.TYPE_BOOL:
            if isinstance(value, bool):
                return value
            raise self.type_error(value, path, "bool")
        if t in _INT_TYPES:
            low, high, name = _INT_TYPES[t]
            number = _integer(value)
            if number is None:
                raise self.type_error(value, path, name)
            if not low <= number <= high:
                raise self.error(f"json: cannot unmarshal number {number} into Go struct field "
                                 f"{path} of type {name}")
            return number
        if t in _FLOAT_TYPES:
            if _is_number(value):
                return float(value)
            raise self.type_error(value, path, "float64")
        if t == FieldDescriptor.TYPE_BYTES:
            if not isinstance(value, str):
                raise self.type_error(value, path, "[]byte")
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise self.error(f"illegal base64 data in {path}") from None
        raise self.type_error(value, path, str(t))  # enums and groups: none in our protos


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_text(value) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 63:
        return str(int(value))
    return str(value)


def _integer(value) -> int | None:
    """An integer from a JSON number or a decimal string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in "+-" else text
        return int(text) if digits.isdigit() and digits.isascii() else None
    return None


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def from_dict(d: dict, *, unknown_fields: list[str] | None = None) -> Any:
    """The typed message a Kubernetes JSON object describes. ``kind`` picks
    the type; ``apiVersion`` may be left out but must match when given.
    Raises errors.bad_request for an unknown kind, a mismatched apiVersion,
    unknown fields (all of them, with their paths) or values of a wrong type.
    Given a list as ``unknown_fields``, unknown fields are dropped and their
    paths appended to it instead (fieldValidation=Warn or Ignore)."""
    if not isinstance(d, dict):
        raise errors.bad_request(f"Object is not a JSON object: {_json_type(d)}")
    kind = d.get("kind")
    api_version = d.get("apiVersion")
    if not kind:
        raise errors.bad_request("Object 'Kind' is missing in the object")
    resource = resources.BY_KIND.get(kind) if isinstance(kind, str) else None
    if resource is None or (api_version is not None and api_version != resource.api_version):
        version = api_version if api_version is not None else "v1"
        raise errors.bad_request(f'no kind "{kind}" is registered for version "{version}"')
    decoder = _Decoder(resource.kind, resource.api_version)
    msg = resource.new()
    decoder.message(msg, d, "", top=True)
    if decoder.unknown and unknown_fields is not None:
        unknown_fields.extend(decoder.unknown)
    elif decoder.unknown:
        raise decoder.error("strict decoding error: "
                            + ", ".join(f'unknown field "{p}"' for p in decoder.unknown))
    return msg


# ---- JSON merge patch (RFC 7386) ----

def merge_patch(target, patch):
    """``patch`` applied to ``target`` as RFC 7386 says: objects merge key by
    key, null deletes a key, anything else replaces. Neither argument is
    changed; the result may share untouched parts of ``target``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def nests_deeper_than(value, limit: int) -> bool:
    """Whether arrays and objects in ``value`` nest more than ``limit`` levels
    (the top level counts as one). Level by level, without recursion."""
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [child for v in level for child in (v.values() if isinstance(v, dict) else v)
                 if isinstance(child, (dict, list))]
    return False


def parse_merge_patch(patch_json: str | bytes) -> dict:
    """A merge patch's JSON object. Raises errors.too_large beyond
    limits.MAX_REQUEST_BYTES (characters of a str) and errors.bad_request for JSON
    that does not parse, nests deeper than MAX_JSON_DEPTH or is not an object."""
    check_request_size(len(patch_json))
    too_deep = errors.bad_request(f"error decoding patch: json: exceeded max depth of {MAX_JSON_DEPTH}")
    try:
        patch = json.loads(patch_json)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.bad_request(f"error decoding patch: {e}") from None
    except RecursionError:
        raise too_deep from None
    if nests_deeper_than(patch, MAX_JSON_DEPTH):
        raise too_deep
    if not isinstance(patch, dict):
        raise errors.bad_request(f"a merge patch must be a JSON object, not {_json_type(patch)}")
    return patch


def apply_merge_patch(msg, patch_json: str | bytes | dict):
    """A new typed message: ``msg`` with a JSON merge patch applied over its
    Kubernetes JSON form; ``patch_json`` is its text or what parse_merge_patch
    made of it. Raises errors.bad_request for a patch that parse_merge_patch
    refuses, that changes apiVersion or kind, or whose result does not decode
    (see from_dict)."""
    patch = patch_json if isinstance(patch_json, dict) else parse_merge_patch(patch_json)
    current = to_dict(msg)
    for key in ("apiVersion", "kind"):
        if key in patch and patch[key] != current[key]:
            raise errors.bad_request(f"the {'API version' if key == 'apiVersion' else 'kind'} "
                                     f"in the patch ({json.dumps(patch[key])}) does not match the "
                                     f"object's ({current[key]})")
    return from_dict(merge_patch(current, patch))
