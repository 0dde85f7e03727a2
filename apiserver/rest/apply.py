"""Server-side apply over REST: ``PATCH`` with ``application/apply-patch+yaml``
(kubectl apply --server-side), and the field manager every write names
(``fieldManager``, else the User-Agent's product, as kube-apiserver).
The semantics are apiserver/fieldmanager.py's, in the registry's read-modify-write.
"""

from __future__ import annotations

from apiserver import errors, fieldmanager
from apiserver.fieldmanager import Manager
from apiserver.rest import routing
from apiserver.rest.http1 import Request

# subresources whose writers own fields of their own (status) or a view of the object's (scale)
SUBRESOURCES = {"status", "scale"}
# the options kind a write's query parameters are validated as
OPTIONS = {"POST": "CreateOptions.meta.k8s.io", "PUT": "UpdateOptions.meta.k8s.io",
           "PATCH": "PatchOptions.meta.k8s.io"}


def manager(req: Request, t: routing.Target, *, apply: bool = False) -> Manager:
    """The request's field manager, checked as apimachinery's ValidateFieldManager."""
    name = req.param("fieldManager")
    fieldmanager.check_manager(name, apply=apply, kind=OPTIONS.get(req.method, "PatchOptions.meta.k8s.io"))
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
    return fieldmanager.parse_config(req.body, t.res, t.namespace, t.name, validation=validation,
                                     warnings=warnings)
