"""Errors as Kubernetes ``Status`` objects (meta/v1), the body of every
failed REST call and of a watch's ERROR event.

The reasons, HTTP codes and messages are the ones apiserver/errors.py gives
the gRPC API, so both APIs fail alike. As kube-apiserver, ``details.kind`` is
the resource ("pods") and ``details.group`` its API group.
"""

from __future__ import annotations

from apiserver import resources
from apiserver.errors import ApiError
from apiserver.rest.http1 import Response, json_response

_REASON_OF_HTTP = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
                   406: "NotAcceptable", 409: "Conflict", 410: "Expired", 413: "RequestEntityTooLarge",
                   415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
                   431: "BadRequest", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}


def status_dict(err: ApiError) -> dict:
    """The Status object for ``err``."""
    out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": err.message, "reason": err.reason, "code": err.http_code}
    if not err.reason:  # an admission webhook's refusal may give none (omitempty)
        del out["reason"]
    details = {}
    if err.name:
        details["name"] = err.name
    if err.kind:
        kind, _, group = err.kind.partition(".")
        res = resources.lookup(kind)
        if res is not None and not group:
            group = res.group
        if group:
            details["group"] = group
        details["kind"] = kind
    if err.causes:
        details["causes"] = [{k: v for k, v in (("reason", reason), ("message", message),
                                                 ("field", field)) if v}
                             for field, reason, message in err.causes]
    if details:
        out["details"] = details
    return out


def error_response(err: ApiError) -> Response:
    return json_response(status_dict(err), err.http_code)


def http_error(code: int, message: str) -> Response:
    """A Status for an error found before any resource was involved (bad
    HTTP, an unknown path): ``code`` is the HTTP status."""
    reason = _REASON_OF_HTTP.get(code, "InternalError")
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    return json_response(body, code)


def success(name: str, res: resources.Resource, uid: str) -> dict:
    """What kube-apiserver answers a DELETE that removed the object at once."""
    details = {"name": name, "kind": res.name, "uid": uid}
    if res.group:
        details["group"] = res.group
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": details}
