"""Server-side apply over REST: ``PATCH`` with ``application/apply-patch+yaml``
(kubectl apply --server-side), and the field manager every write names
(``fieldManager``, else the User-Agent's product, as kube-apiserver).
The semantics are apiserver/fieldmanager.py's, in the registry's read-modify-write.
"""

from __future__ import annotations

import yaml

from apiserver import errors, fieldmanager, manifest
from apiserver.fieldmanager import Manager
from apiserver.limits import check_request_size
from apiserver.rest import convert, routing
from apiserver.rest.http1 import Request

# subresources whose writers own fields of their own (status) or a view of the object's (scale)
SUBRESOURCES = {"status", "scale"}


def manager(req: Request, t: routing.Target, *, apply: bool = False) -> Manager:
    """The request's field manager, checked as apimachinery's ValidateFieldManager."""
    name = req.param("fieldManager")
    fieldmanager.check_manager(name, apply=apply,
                               kind="PatchOptions.meta.k8s.io" if apply else "UpdateOptions.meta.k8s.io")
    if not name:
        name = fieldmanager.manager_from_user_agent(req.headers.get("user-agent", ""))
    return Manager(name, t.subresource if t.subresource in SUBRESOURCES else "")


def check_force(req: Request, *, apply: bool) -> bool:
    value = req.param("force")
    if value and not apply:
        raise errors.invalid("PatchOptions.meta.k8s.io", "", [(
            "force", "FieldValueForbidden", "Forbidden: may not be specified for non-apply patch")])
    return value in ("1", "t", "T", "TRUE", "true", "True")


def parse_config(req: Request, t: routing.Target, validation: str, warnings: list[str]) -> dict:
    """The applied configuration: a YAML (or JSON) object of the path's kind,
    its fields checked as a create's are (types; unknown fields by fieldValidation)."""
    check_request_size(len(req.body))
    try:
        config = yaml.safe_load(req.body)
    except yaml.YAMLError as e:
        raise errors.bad_request(f"error decoding YAML: {e}") from None
    except RecursionError:
        raise errors.bad_request("error decoding YAML: exceeded max depth") from None
    if not isinstance(config, dict):
        raise errors.bad_request("error decoding YAML: the applied configuration must be an object")
    api_version, kind = config.get("apiVersion"), config.get("kind")
    if not api_version or not kind:
        raise errors.bad_request("invalid object type: the applied configuration needs apiVersion and kind")
    if api_version != t.res.api_version or kind != t.res.kind:
        raise errors.bad_request(f"the kind of the applied configuration ({api_version}, Kind={kind}) "
                                 f"does not match the request's ({t.res.api_version}, Kind={t.res.kind})")
    meta = config.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise errors.bad_request("metadata.name is required in an applied configuration")
    if meta["name"] != t.name:
        raise errors.bad_request(f"the name of the object ({meta['name']}) does not match the name "
                                 f"on the URL ({t.name})")
    if t.res.namespaced and meta.get("namespace") and meta["namespace"] != t.namespace:
        raise errors.bad_request("the namespace of the provided object does not match the namespace "
                                 "sent on the request")
    convert.normalize_times(config)
    unknown: list[str] | None = None if validation == "Strict" else []
    manifest.from_dict(config, unknown_fields=unknown)  # types and unknown fields, as a create
    if unknown and validation in ("", "Warn"):
        warnings.extend(f'unknown field "{p}"' for p in unknown)
    return config
