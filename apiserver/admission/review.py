"""admission.k8s.io/v1 AdmissionReview: the request the apiserver sends a
webhook, and what it accepts back (k8s.io/apiserver's request.CreateAdmissionObjects
and VerifyAdmissionResponse, with their messages)."""

from __future__ import annotations

import base64
import binascii
import json
import uuid

from apiserver.admission.matching import CREATE, DELETE, Request
from apiserver.rest.convert import to_json

API_VERSION = "admission.k8s.io/v1"
# what kube-apiserver keeps of a webhook's warnings (k8s.io/apiserver's warning limits)
MAX_WARNINGS = 32
MAX_WARNING_LENGTH = 4096
_OPTIONS_KIND = {CREATE: "CreateOptions", DELETE: "DeleteOptions"}


class InvalidResponse(Exception):
    """The answer is not an AdmissionReview this apiserver can use."""


# who writes when no request's user is known: on an apiserver that authenticates, the
# apiserver itself (its bootstrap and repair loops: kube-apiserver's loopback identity);
# on an open one (no gate), anyone, as kube-apiserver answers anonymous requests
APISERVER_USER = {"username": "system:apiserver", "groups": ["system:masters", "system:authenticated"]}
ANONYMOUS_USER = {"username": "system:anonymous", "groups": ["system:unauthenticated"]}


def _user_info(user, secured: bool) -> dict:
    if user is None:
        return dict(APISERVER_USER if secured else ANONYMOUS_USER)
    out: dict = {"username": user.name}
    if user.uid:
        out["uid"] = user.uid
    if user.groups:
        out["groups"] = list(user.groups)
    if user.extra:
        out["extra"] = user.extra_dict()
    return out


def build(req: Request, user, *, secured: bool = False) -> dict:
    """The AdmissionReview sent for ``req`` (a fresh request uid each time); ``user``: the
    requester (None: see APISERVER_USER), ``secured``: the apiserver authenticates."""
    group, version = req.res.group, req.version
    kind = {"group": group, "version": version, "kind": req.res.kind}
    resource = {"group": group, "version": version, "resource": req.res.name}
    options = {"kind": _OPTIONS_KIND.get(req.operation, "UpdateOptions"), "apiVersion": "meta.k8s.io/v1",
               **req.options}
    if req.dry_run:
        options["dryRun"] = ["All"]
    body: dict = {"uid": str(uuid.uuid4()), "kind": kind, "resource": resource}
    if req.subresource:
        body["subResource"] = req.subresource
    body["requestKind"] = kind
    body["requestResource"] = resource
    if req.subresource:
        body["requestSubResource"] = req.subresource
    if req.name:
        body["name"] = req.name
    if req.namespace:
        body["namespace"] = req.namespace
    body["operation"] = req.operation
    body["userInfo"] = _user_info(user, secured)
    body["object"] = to_json(req.obj) if req.obj is not None else None
    body["oldObject"] = to_json(req.old) if req.old is not None else None
    body["dryRun"] = req.dry_run
    body["options"] = options
    return {"kind": "AdmissionReview", "apiVersion": API_VERSION, "request": body}


def parse(data: bytes, request_uid: str, *, mutating: bool) -> dict:
    """The ``response`` of a webhook's answer, checked as kube-apiserver checks it; a
    JSONPatch comes back decoded (a list of operations) under "patch". Raises
    InvalidResponse."""
    try:
        review = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidResponse(f"couldn't get version/kind; json parse error: {e}") from None
    if not isinstance(review, dict):
        raise InvalidResponse("couldn't get version/kind; json parse error: not a JSON object")
    got = (review.get("apiVersion"), review.get("kind"))
    if got != (API_VERSION, "AdmissionReview"):
        raise InvalidResponse(f"expected webhook response of {API_VERSION}, Kind=AdmissionReview, "
                              f"got {got[0] or ''}, Kind={got[1] or ''}")
    response = review.get("response")
    if not isinstance(response, dict):
        raise InvalidResponse("webhook response was absent")
    if response.get("uid") != request_uid:
        raise InvalidResponse(f"expected response.uid={json.dumps(request_uid)}, "
                              f"got {json.dumps(response.get('uid') or '')}")
    if not isinstance(response.get("allowed", False), bool):
        raise InvalidResponse("response.allowed must be a boolean")
    patch, patch_type = response.get("patch"), response.get("patchType")
    out = {"allowed": response.get("allowed", False), "status": response.get("status") or {},
           "warnings": _warnings(response.get("warnings"))}
    if not isinstance(out["status"], dict):
        raise InvalidResponse("response.status must be a Status object")
    if patch or patch_type:
        if not mutating:
            raise InvalidResponse("validating webhooks may not return patches")
        if patch_type is None:
            raise InvalidResponse("webhook returned response.patch but not response.patchType")
        if patch_type != "JSONPatch":
            raise InvalidResponse(f"webhook returned invalid response.patchType of {json.dumps(patch_type)}")
        if patch:
            try:
                ops = json.loads(base64.b64decode(patch, validate=True))
            except (binascii.Error, ValueError, TypeError) as e:
                raise InvalidResponse(f"webhook returned an undecodable response.patch: {e}") from None
            if not isinstance(ops, list):
                raise InvalidResponse("webhook returned a response.patch that is not a JSON patch")
            out["patch"] = ops
    return out


def _warnings(value) -> list[str]:
    if not isinstance(value, list):
        return []
    out = []
    for w in value[:MAX_WARNINGS]:
        if isinstance(w, str) and w.strip():
            text = "".join(c if c.isprintable() else " " for c in w)
            out.append(text[:MAX_WARNING_LENGTH])
    return out
