"""Request bodies in Kubernetes' protobuf encoding (application/vnd.kubernetes.protobuf),
which kubectl's typed clients send (``kubectl create configmap|namespace|deployment``,
``kubectl run``, DeleteOptions from ``drain``): the ``k8s\\x00`` magic, then a
runtime.Unknown {typeMeta {apiVersion, kind}, raw} whose raw bytes are the object as
k8s.io/api's generated.proto encodes it.

Our protos use k8s.io/api's field numbers, so the object is read with our descriptors into
its JSON form, and decoded from there as a JSON body is (manifest.from_dict: the same
validation, the same fieldValidation). Where Kubernetes has a message and we keep text,
the message is read and written as Kubernetes' JSON writes it: Time and MicroTime
({seconds, nanos}) as RFC 3339, IntOrString ({type, intVal, strVal}) as a number or a
string, Quantity ({string}) as its string. Fields we do not have are kept aside as
unknown (reported as a JSON body's would be). Responses are JSON: every client that sends
protobuf also accepts JSON.
"""

from __future__ import annotations

import base64
import json
import struct
from datetime import datetime, timezone

from google.protobuf.descriptor import FieldDescriptor

from apiserver import errors, resources
from apiserver.manifest import _NUMBER_AS_STRING, INLINE
from apiserver.pb import meta_pb2

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# JSON names of fields that are metav1.Time / MicroTime in Kubernetes and text here
_TIME_FIELDS = {"creationTimestamp", "deletionTimestamp", "lastTransitionTime", "lastProbeTime",
                "lastHeartbeatTime", "startedAt", "finishedAt", "startTime", "lastUpdateTime",
                "acquireTime", "renewTime", "eventTime", "firstTimestamp", "lastTimestamp",
                "lastScaleTime", "time"}
# full names of Quantity fields (or maps of Quantity): the rest of _NUMBER_AS_STRING is IntOrString
_QUANTITY = {"core.v1.EmptyDirVolumeSource.size_limit", "core.v1.ResourceRequirements.limits",
             "core.v1.ResourceRequirements.requests", "core.v1.NodeStatus.capacity",
             "core.v1.NodeStatus.allocatable", "core.v1.PersistentVolumeSpec.capacity",
             "core.v1.VolumeResourceRequirements.limits", "core.v1.VolumeResourceRequirements.requests",
             "core.v1.PersistentVolumeClaimStatus.capacity"}
_INT_OR_STRING = _NUMBER_AS_STRING - _QUANTITY

_SIGNED = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self) -> int:
        shift = result = 0
        while True:
            if self.pos >= len(self.data):
                raise _bad("truncated varint")
            b = self.data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise _bad("varint too long")

    def fields(self):
        """(number, wire type, value) of each field; value is an int or bytes."""
        while self.pos < len(self.data):
            key = self.varint()
            number, wire = key >> 3, key & 7
            if wire == 0:
                yield number, wire, self.varint()
            elif wire == 1:
                yield number, wire, self._take(8)
            elif wire == 2:
                yield number, wire, self._take(self.varint())
            elif wire == 5:
                yield number, wire, self._take(4)
            else:
                raise _bad(f"unsupported wire type {wire}")

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _bad("truncated field")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def _bad(why: str):
    return errors.bad_request(f"unable to decode the protobuf body: {why}")


def _signed(value: int, bits: int = 64) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _time(data: bytes) -> str:
    """RFC 3339; "" for the zero Time (an empty message), which Kubernetes writes as null."""
    seconds = 0
    for number, wire, value in _Reader(data).fields():
        if number == 1 and wire == 0:
            seconds = _signed(value)
    if not seconds:
        return ""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_or_string(data: bytes):
    kind, number, text = 0, 0, ""
    for n, wire, value in _Reader(data).fields():
        if n == 1 and wire == 0:
            kind = value
        elif n == 2 and wire == 0:
            number = _signed(value)
        elif n == 3 and wire == 2:
            text = value.decode("utf-8", "replace")
    return text if kind == 1 else number


def _quantity(data: bytes) -> str:
    for n, wire, value in _Reader(data).fields():
        if n == 1 and wire == 2:
            return value.decode("utf-8", "replace")
    return ""


def _scalar(field: FieldDescriptor, wire: int, value, full_name: str):
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        if wire != 2:
            raise _bad(f"field {field.json_name}: wire type {wire} for a string")
        if field.json_name in _TIME_FIELDS:
            return _time(value)
        if full_name in _QUANTITY:
            return _quantity(value)
        if full_name in _INT_OR_STRING:
            return _int_or_string(value)
        return value.decode("utf-8", "replace")
    if t == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    if t == FieldDescriptor.TYPE_BOOL:
        return bool(value)
    if t in (FieldDescriptor.TYPE_DOUBLE,):
        return struct.unpack("<d", value)[0]
    if t in (FieldDescriptor.TYPE_FLOAT,):
        return struct.unpack("<f", value)[0]
    if wire != 0:
        raise _bad(f"field {field.json_name}: wire type {wire} for an integer")
    return _signed(value) if t in _SIGNED else value


def _fields_v1(data: bytes) -> dict:
    """metav1.FieldsV1 {raw = 1}: its raw bytes are the set's JSON, shown as that JSON."""
    for n, wire, value in _Reader(data).fields():
        if n == 1 and wire == 2:
            try:
                fields = json.loads(value)
            except (ValueError, UnicodeDecodeError):
                raise _bad("fieldsV1 is not JSON") from None
            if not isinstance(fields, dict):
                raise _bad("fieldsV1 is not a JSON object")
            return fields
    return {}


def _packed(field: FieldDescriptor, data: bytes) -> list:
    reader = _Reader(data)
    out = []
    while reader.pos < len(data):
        out.append(_scalar(field, 0, reader.varint(), field.full_name))
    return out


def message_to_dict(desc, data: bytes) -> dict:
    """The JSON form of ``data``, encoded as Kubernetes encodes the message
    ``desc`` describes."""
    by_number = {f.number: f for f in desc.fields}
    out: dict = {}
    for number, wire, value in _Reader(data).fields():
        field = by_number.get(number)
        if field is None:
            continue  # a field Kubernetes has and we do not: nothing to keep it in
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            key, item = "", None
            for n, w, v in _Reader(value).fields():
                if n == 1:
                    key = _scalar(key_field, w, v, key_field.full_name)
                elif n == 2:
                    item = (message_to_dict(value_field.message_type, v)
                            if value_field.type == FieldDescriptor.TYPE_MESSAGE
                            else _scalar(value_field, w, v, field.full_name))
            out.setdefault(field.json_name, {})[key] = item if item is not None else ""
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if wire != 2:
                raise _bad(f"field {field.json_name}: wire type {wire} for a message")
            if field.message_type.full_name == "meta.v1.FieldsV1":
                out[field.json_name] = _fields_v1(value)
                continue
            item = message_to_dict(field.message_type, value)
            if field.full_name in INLINE:  # Go's embedded struct: its fields are the parent's in JSON
                out.update(item)
            elif field.is_repeated:
                out.setdefault(field.json_name, []).append(item)
            else:
                out[field.json_name] = item
        elif field.is_repeated:
            items = out.setdefault(field.json_name, [])
            if wire == 2 and field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                items.extend(_packed(field, value))
            else:
                items.append(_scalar(field, wire, value, field.full_name))
        else:
            out[field.json_name] = _scalar(field, wire, value, field.full_name)
    return out


def _unknown(body: bytes) -> tuple[str, str, bytes]:
    if not body.startswith(MAGIC):
        raise _bad("the body does not start with Kubernetes' protobuf magic number")
    api_version = kind = ""
    raw = b""
    for number, wire, value in _Reader(body[len(MAGIC):]).fields():
        if number == 1 and wire == 2:
            for n, w, v in _Reader(value).fields():
                if n == 1 and w == 2:
                    api_version = v.decode("utf-8", "replace")
                elif n == 2 and w == 2:
                    kind = v.decode("utf-8", "replace")
        elif number == 2 and wire == 2:
            raw = value
    return api_version, kind, raw


# meta/v1 DeleteOptions, which we keep no proto of: field number -> (JSON name, kind)
_DELETE_OPTIONS = {1: ("gracePeriodSeconds", "int"), 2: ("preconditions", "preconditions"),
                   3: ("orphanDependents", "bool"), 4: ("propagationPolicy", "string"),
                   5: ("dryRun", "strings")}


def _delete_options(raw: bytes) -> dict:
    out: dict = {}
    for number, wire, value in _Reader(raw).fields():
        name, kind = _DELETE_OPTIONS.get(number, ("", ""))
        if kind == "int" and wire == 0:
            out[name] = _signed(value)
        elif kind == "bool" and wire == 0:
            out[name] = bool(value)
        elif kind == "string" and wire == 2:
            out[name] = value.decode("utf-8", "replace")
        elif kind == "strings" and wire == 2:
            out.setdefault(name, []).append(value.decode("utf-8", "replace"))
        elif kind == "preconditions" and wire == 2:
            pre = {}
            for n, w, v in _Reader(value).fields():
                if n in (1, 2) and w == 2:
                    pre["uid" if n == 1 else "resourceVersion"] = v.decode("utf-8", "replace")
            out[name] = pre
    return out


def decode(body: bytes) -> dict:
    """The JSON form of a protobuf request body (an object of a kind served,
    DeleteOptions or an Eviction); BadRequest for anything else."""
    api_version, kind, raw = _unknown(body)
    if kind == "DeleteOptions":
        return {"kind": kind, "apiVersion": api_version, **_delete_options(raw)}
    if kind == "Eviction":  # policy/v1 Eviction {metadata = 1, deleteOptions = 2}
        out = {"kind": kind, "apiVersion": api_version}
        for number, wire, value in _Reader(raw).fields():
            if number == 1 and wire == 2:
                out["metadata"] = message_to_dict(meta_pb2.ObjectMeta.DESCRIPTOR, value)
            elif number == 2 and wire == 2:
                out["deleteOptions"] = _delete_options(value)
        return out
    res = resources.BY_KIND.get(kind)
    if res is None or res.api_version != api_version:
        raise errors.bad_request(f'no kind "{kind}" is registered for version "{api_version}"')
    return {"apiVersion": api_version, "kind": kind,
            **message_to_dict(res.message.DESCRIPTOR, raw)}
