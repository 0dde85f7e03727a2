"""OpenAPI v3 documents generated from our protos: what kubectl 1.32 reads
before ``apply``/``create``/``replace`` (--validate=strict by default) and
for ``kubectl explain``.

kubectl asks ``/openapi/v3`` for the group-versions, then a group-version's
document; finding its kind's PATCH operation with a ``fieldValidation``
query parameter, it leaves validation to the server (sends
fieldValidation=Strict) instead of validating client-side (client-go's
queryParamVerifierV3). Without the documents it stops with "failed to
download openapi". Schemas are named as Kubernetes names them
(io.k8s.api.core.v1.Pod, ...), carry x-kubernetes-group-version-kind on the
kinds served, and the strategic-merge-patch extensions of the lists
patch.py merges by key, which ``kubectl apply`` reads to compute its patches.
/openapi/v2 is not served: kubectl 1.32 needs it only when v3 is missing.

The review kinds (discovery.UNSTORED: TokenReview, SubjectAccessReview, ...) take
only create; their documents list the POST and, as the marker client-go reads for
"the server validates fields" (authapi checks fieldValidation=Strict itself), a
PATCH the server answers 405 to. Without it kubectl 1.32 would fetch /openapi/v2
to validate client-side, and ``kubectl create -f`` of a review would fail.
"""

from __future__ import annotations

import functools
import hashlib
import json

from google.protobuf.descriptor import FieldDescriptor

from apiserver import resources
from apiserver.manifest import _NUMBER_AS_STRING, json_fields
from apiserver.pb import admissionregistration_pb2, apps_pb2, certificates_pb2, coordination_pb2, core_pb2, meta_pb2, storage_pb2
from apiserver.rest import discovery, patch

_PACKAGES = {"core.v1": "io.k8s.api.core.v1", "apps.v1": "io.k8s.api.apps.v1",
             "coordination.v1": "io.k8s.api.coordination.v1", "storage.v1": "io.k8s.api.storage.v1",
             "certificates.v1": "io.k8s.api.certificates.v1",
             "admissionregistration.v1": "io.k8s.api.admissionregistration.v1",
             "meta.v1": "io.k8s.apimachinery.pkg.apis.meta.v1"}
_SCALARS = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "double"},
}
_COMMON_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "pretty")


def schema_name(full_name: str) -> str:
    package, _, name = full_name.rpartition(".")
    return f"{_PACKAGES.get(package, package)}.{name}"


def _ref(full_name: str) -> dict:
    return {"$ref": f"#/components/schemas/{schema_name(full_name)}"}


def _field_schema(field: FieldDescriptor) -> dict:
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        value = field.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _single(value, field.full_name)}
    item = _single(field, field.full_name)
    if field.is_repeated:
        out = {"type": "array", "items": item}
        key = patch.MERGE_KEYS.get(field.json_name)
        if field.json_name == "ports":
            key = "containerPort" if "Container" in field.containing_type.name else "port"
        if field.json_name in patch.MERGED_PRIMITIVE_LISTS:
            out["x-kubernetes-patch-strategy"] = "merge"
        elif key and field.type == FieldDescriptor.TYPE_MESSAGE:
            out["x-kubernetes-patch-merge-key"] = key
            out["x-kubernetes-patch-strategy"] = "merge"
        return out
    return item


def _single(field: FieldDescriptor, full_name: str) -> dict:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return {"allOf": [_ref(field.message_type.full_name)], "default": {}}
    if full_name in _NUMBER_AS_STRING:
        return {"x-kubernetes-int-or-string": True}
    if field.type in _SCALARS:
        return dict(_SCALARS[field.type])
    bits = "int64" if "64" in str(field.type) or field.type in (
        FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64) else "int32"
    return {"type": "integer", "format": bits}


def _message_schema(desc) -> dict:
    props = {name: _field_schema(f) for name, (f, _) in json_fields(desc).items()}
    out = {"type": "object", "properties": props}
    res = resources.BY_KIND.get(desc.name)
    if res is not None and res.message.DESCRIPTOR is desc:
        group, _, version = res.api_version.rpartition("/")
        out["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, **props}
        out["x-kubernetes-group-version-kind"] = [{"group": group, "version": version, "kind": res.kind}]
    return out


@functools.cache
def schemas() -> dict:
    out = {}
    for module in (meta_pb2, core_pb2, apps_pb2, coordination_pb2, storage_pb2, certificates_pb2,
                   admissionregistration_pb2):
        todo = list(module.DESCRIPTOR.message_types_by_name.values())
        while todo:
            desc = todo.pop()
            todo.extend(d for d in desc.nested_types if not d.GetOptions().map_entry)
            if not desc.GetOptions().map_entry:
                out[schema_name(desc.full_name)] = _message_schema(desc)
    return out


def _param(name: str, where: str = "query", kind: str = "string") -> dict:
    return {"name": name, "in": where, "schema": {"type": kind, "uniqueItems": True}}


def _op(res, verb: str, extra: tuple = ()) -> dict:
    group, _, version = res.api_version.rpartition("/")
    params = [_param(p) for p in extra]
    return {"operationId": f"{verb}{res.kind}", "parameters": params,
            "responses": {"200": {"description": "OK", "content": {"application/json": {
                "schema": _ref(res.message.DESCRIPTOR.full_name)}}}},
            "x-kubernetes-action": verb, "x-kubernetes-group-version-kind":
                {"group": group, "version": version, "kind": res.kind}}


def _paths(api_version: str) -> dict:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    out = {}
    for res in discovery.group_versions().get(api_version, []):
        ns = "/namespaces/{namespace}" if res.namespaced else ""
        path_params = ([_param("namespace", "path")] if res.namespaced else []) + [_param("name", "path")]
        out[f"{base}{ns}/{res.name}"] = {
            "get": _op(res, "list", ("labelSelector", "fieldSelector", "limit", "continue",
                                     "resourceVersion", "watch")),
            "post": _op(res, "post", _COMMON_PARAMS),
            "parameters": path_params[:-1]}
        item = {"get": _op(res, "get"), "put": _op(res, "put", _COMMON_PARAMS),
                "patch": _op(res, "patch", (*_COMMON_PARAMS, "force")),
                "delete": _op(res, "delete", ("dryRun", "gracePeriodSeconds", "propagationPolicy")),
                "parameters": path_params}
        out[f"{base}{ns}/{res.name}/{{name}}"] = item
    return out


def _review_paths(api_version: str) -> dict:
    group, _, version = api_version.rpartition("/")
    out = {}
    for name, kind, namespaced, verbs in discovery.UNSTORED.get(api_version, []):
        if "create" not in verbs:  # the resource metrics (read only): no paths described
            continue
        gvk = {"group": group, "version": version, "kind": kind}
        ns = "/namespaces/{namespace}" if namespaced else ""
        params = [_param(p) for p in _COMMON_PARAMS]
        ok = {"201": {"description": "Created", "content": {"application/json": {"schema": {"type": "object"}}}}}
        out[f"/apis/{api_version}{ns}/{name}"] = {
            "post": {"operationId": f"create{kind}", "parameters": params, "responses": ok,
                     "x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk},
            "patch": {"operationId": f"patch{kind}", "parameters": params,
                      "responses": {"405": {"description": "create only"}},
                      "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk},
            "parameters": [_param("namespace", "path")] if namespaced else []}
    return out


def _api_versions() -> list[str]:
    return [*discovery.group_versions(), *(gv for gv in discovery.UNSTORED if gv not in discovery.group_versions())]


@functools.cache
def _document(api_version: str) -> bytes | None:
    if api_version not in _api_versions():
        return None
    doc = {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
           "paths": {**_paths(api_version), **_review_paths(api_version)}, "components": {"schemas": schemas()}}
    return json.dumps(doc, separators=(",", ":")).encode()


def _key(api_version: str) -> str:
    return "api/v1" if api_version == "v1" else f"apis/{api_version}"


@functools.cache
def root() -> dict:
    paths = {}
    for gv in _api_versions():
        digest = hashlib.sha512(_document(gv)).hexdigest()[:128].upper()
        paths[_key(gv)] = {"serverRelativeURL": f"/openapi/v3/{_key(gv)}?hash={digest}"}
    return {"paths": paths}


def document(path: str) -> bytes | dict | None:
    """The document at ``path`` (/openapi/v3 or /openapi/v3/<gv key>), None if none."""
    if path == "/openapi/v3":
        return root()
    prefix = "/openapi/v3/"
    if not path.startswith(prefix):
        return None
    key = path[len(prefix):]
    for gv in _api_versions():
        if _key(gv) == key:
            return _document(gv)
    return None
