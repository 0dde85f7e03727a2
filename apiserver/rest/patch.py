"""The patch types kube-apiserver accepts, over an object's JSON form:
JSON merge patch (RFC 7386, manifest.merge_patch), JSON patch (RFC 6902) and
strategic merge patch (Kubernetes': lists of objects merge by their merge key,
``$patch: replace|delete``, ``$setElementOrder`` and ``$retainKeys``
directives, ``$deleteFromPrimitiveList``). Each takes the current object as a
dict and returns the patched dict; the caller decodes and stores it.
"""

from __future__ import annotations

import copy
import json

from apiserver import errors
from apiserver.limits import MAX_JSON_DEPTH, check_request_size
from apiserver.manifest import merge_patch, nests_deeper_than

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"

# list fields (by JSON name) that strategic merge patch merges by a key, as
# k8s.io/api's patchMergeKey tags say; other lists of objects are replaced
MERGE_KEYS = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name",
    "env": "name", "volumes": "name", "volumeMounts": "mountPath", "volumeDevices": "devicePath",
    "imagePullSecrets": "name", "hostAliases": "ip", "conditions": "type",
    "ownerReferences": "uid", "taints": "key", "addresses": "type", "images": None,
    "ephemeralContainerStatuses": None, "resourceClaims": "name",
    "topologySpreadConstraints": "topologyKey", "webhooks": "name",
}
# port lists: the merge key depends on where they are
PORT_KEYS = {"ports": ("containerPort", "port")}
# primitive lists merged as sets (patchStrategy "merge"); others are replaced
MERGED_PRIMITIVE_LISTS = {"finalizers"}


def parse(body: bytes, what: str):
    check_request_size(len(body))
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.bad_request(f"error decoding patch: {e}") from None
    except RecursionError:
        value = None
    if value is None or nests_deeper_than(value, MAX_JSON_DEPTH):
        raise errors.bad_request(f"error decoding patch: json: exceeded max depth of {MAX_JSON_DEPTH}")
    return value


# ---- JSON patch (RFC 6902) ----

def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _fail(f'invalid JSON pointer "{path}"')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list, token: str, *, adding: bool) -> int:
    if token == "-" and adding:
        return len(container)
    if not token.isdigit():
        raise _fail(f"invalid index {token!r}")
    i = int(token)
    if i > len(container) or (i == len(container) and not adding):
        raise _fail(f"index {i} out of range")
    return i


def _fail(why: str):
    """A patch that does not apply: kube-apiserver's 422 (apimachinery's
    NewGenericServerResponse), the reason in its cause."""
    return errors.ApiError("Invalid", "the server rejected our request due to an error in our request",
                           causes=[("", "UnexpectedServerResponse", why)])


def _parent(doc, tokens: list[str], path: str):
    node = doc
    for t in tokens[:-1]:
        if isinstance(node, dict) and t in node:
            node = node[t]
        elif isinstance(node, list) and t.isdigit() and int(t) < len(node):
            node = node[int(t)]
        else:
            raise _fail(f"doc is missing path: \"{path}\": missing value")
    return node


def _get(doc, path: str):
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _fail(f"doc is missing path: \"{path}\": missing value")


def _remove(doc, path: str):
    tokens = _pointer(path)
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, adding=False))
    raise _fail(f"unable to remove nonexistent key: {last}: missing value")


def _add(doc, path: str, value):
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, adding=True), value)
    else:
        raise _fail(f"doc is missing path: \"{path}\": missing value")
    return doc


def json_patch(doc: dict, ops) -> dict:
    if not isinstance(ops, list):
        raise errors.bad_request("error decoding patch: json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str) or not isinstance(op.get("path", ""), str):
            raise _fail("invalid operation")
        kind, path = op["op"], op.get("path", "")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise _fail(f"missing value for operation {kind}")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            tokens = _pointer(path)
            if not tokens:
                doc = copy.deepcopy(op["value"])
            else:
                parent = _parent(doc, tokens, path)
                if isinstance(parent, list):
                    parent[_index(parent, tokens[-1], adding=False)] = copy.deepcopy(op["value"])
                else:
                    parent[tokens[-1]] = copy.deepcopy(op["value"])
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise _fail(f"missing from for operation {kind}")
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise _fail(f"testing value {path} failed: test failed")
        else:
            raise _fail(f"Unexpected kind: {kind}")
    return doc


# ---- strategic merge patch ----

def _merge_key(field: str, items: list) -> str | None:
    if field in PORT_KEYS:
        for key in PORT_KEYS[field]:
            if any(isinstance(i, dict) and key in i for i in items):
                return key
        return None
    return MERGE_KEYS.get(field)


def strategic_merge(target, patch, field: str = ""):
    """``patch`` applied to ``target`` (neither changed) the way Kubernetes'
    strategicpatch does for the lists it knows (MERGE_KEYS); unknown lists
    are replaced, as a JSON merge patch would."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(result.get(name), list) and isinstance(value, list):
                result[name] = [v for v in result[name] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(result.get(key), value, key)
        else:
            merged = strategic_merge(result.get(key), value, key)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain or k not in (target or {})
                  or k in patch}
    return result


def _merge_list(current, patch: list, field: str):
    current = current if isinstance(current, list) else []
    if field in MERGED_PRIMITIVE_LISTS:
        return current + [v for v in patch if v not in current]
    key = _merge_key(field, patch + current)
    if not key:
        return [strategic_merge(None, v, field) if isinstance(v, dict) else copy.deepcopy(v)
                for v in patch if not (isinstance(v, dict) and v.get("$patch"))]
    if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
        return [{k: copy.deepcopy(x) for k, x in v.items() if k != "$patch"}
                for v in patch if isinstance(v, dict) and v.get("$patch") != "replace"]
    out = list(current)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise errors.bad_request(f"map: {item} does not contain declared merge key: {key}")
        at = next((i for i, c in enumerate(out) if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if at is not None:
                out.pop(at)
        elif at is None:
            out.append(strategic_merge(None, item, field))
        else:
            out[at] = strategic_merge(out[at], item, field)
    return out


def apply(doc: dict, patch_type: str, body: bytes) -> dict:
    """``doc`` with the patch in ``body`` applied; the patch type is the
    request's Content-Type."""
    patch = parse(body, patch_type)
    if patch_type == JSON_PATCH:
        return json_patch(doc, patch)
    if not isinstance(patch, dict):
        raise errors.bad_request("error decoding patch: json: cannot unmarshal array into Go value of type map[string]interface {}")
    if patch_type == MERGE:
        return merge_patch(doc, patch)
    return strategic_merge(doc, patch)
