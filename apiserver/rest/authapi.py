"""The REST calls of issue 23 that store nothing: SelfSubjectAccessReview
(``kubectl auth can-i``: may I?) and TokenRequest (``kubectl create token``:
a ServiceAccount token, signed now)."""

from __future__ import annotations

import datetime
import json

from apiserver import errors, resources
from apiserver.auth.rbac import Attributes
from apiserver.auth.tokens import DEFAULT_EXPIRATION, MIN_EXPIRATION
from apiserver.rest import protobuf
from apiserver.rest.http1 import Request, Response, json_response

SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
SSRR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"
SERVICE_ACCOUNTS = resources.BY_NAME["serviceaccounts"]
PODS = resources.BY_NAME["pods"]


# the protobuf messages kubectl's typed clients send here (k8s.io/api authorization/v1 and
# authentication/v1 generated.proto): field number -> (JSON name, string | strings | int | message)
_RESOURCE_ATTRIBUTES = {1: ("namespace", "string"), 2: ("verb", "string"), 3: ("group", "string"),
                        4: ("version", "string"), 5: ("resource", "string"), 6: ("subresource", "string"),
                        7: ("name", "string")}
_NON_RESOURCE_ATTRIBUTES = {1: ("path", "string"), 2: ("verb", "string")}
_SSAR_SPEC = {1: ("resourceAttributes", _RESOURCE_ATTRIBUTES), 2: ("nonResourceAttributes", _NON_RESOURCE_ATTRIBUTES)}
_TOKEN_SPEC = {1: ("audiences", "strings"), 4: ("expirationSeconds", "int")}
_TOP = {"SelfSubjectAccessReview": {2: ("spec", _SSAR_SPEC)}, "TokenRequest": {2: ("spec", _TOKEN_SPEC)},
        "SelfSubjectRulesReview": {2: ("spec", {1: ("namespace", "string")})}}


def _fields(raw: bytes, schema: dict) -> dict:
    out: dict = {}
    for number, wire, value in protobuf._Reader(raw).fields():
        name, kind = schema.get(number, ("", None))
        if isinstance(kind, dict) and wire == 2:
            out[name] = _fields(value, kind)
        elif kind == "string" and wire == 2:
            out[name] = value.decode("utf-8", "replace")
        elif kind == "strings" and wire == 2:
            out.setdefault(name, []).append(value.decode("utf-8", "replace"))
        elif kind == "int" and wire == 0:
            out[name] = value
    return out


def _body(req: Request) -> dict:
    if req.headers.get("content-type", "").split(";")[0].strip() == protobuf.CONTENT_TYPE:
        api_version, kind, raw = protobuf._unknown(req.body)
        if kind not in _TOP:
            raise errors.bad_request(f'no kind "{kind}" is registered for version "{api_version}"')
        return {"apiVersion": api_version, "kind": kind, **_fields(raw, _TOP[kind])}
    try:
        body = json.loads(req.body or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.bad_request(f"couldn't get version/kind; json parse error: {e}") from None
    if not isinstance(body, dict):
        raise errors.bad_request("the request body must be a JSON object")
    return body


def self_subject_access_review(gate, req: Request) -> Response:
    if req.method != "POST":
        raise errors.method_not_allowed("the server does not allow this method on the requested resource")
    body = _body(req)
    spec = body.get("spec") or {}
    ra, nra = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if bool(ra) == bool(nra):
        raise errors.invalid("SelfSubjectAccessReview", "", [(
            "spec.resourceAttributes", "FieldValueRequired",
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified")])
    user = req.user
    if ra:
        a = Attributes(user, ra.get("verb", ""), ra.get("namespace", ""), ra.get("group", ""),
                       ra.get("resource", ""), ra.get("subresource", ""), ra.get("name", ""))
    else:
        a = Attributes(user, nra.get("verb", ""), path=nra.get("path", ""), resource_request=False)
    allowed = gate.authorizer.allowed(a)
    out = {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
           "metadata": {"creationTimestamp": None}, "spec": spec,
           "status": {"allowed": allowed}}
    return json_response(out, 201)


def self_subject_rules_review(gate, req: Request) -> Response:
    """``kubectl auth can-i --list``: every rule that applies to the caller in
    spec.namespace, RBAC's (and AlwaysAllow's everything); a kubelet's list is
    incomplete, its Node authorizer rules being per object."""
    if req.method != "POST":
        raise errors.method_not_allowed("the server does not allow this method on the requested resource")
    body = _body(req)
    spec = body.get("spec") or {}
    namespace = spec.get("namespace", "")
    rbac = _rbac_of(gate.authorizer)
    rules = rbac.rules_for(req.user, namespace) if rbac is not None else []
    resource_rules, url_rules = [], []
    for r in rules:
        if r.non_resource_urls:
            url_rules.append({"verbs": list(r.verbs), "nonResourceURLs": list(r.non_resource_urls)})
        else:
            entry = {"verbs": list(r.verbs), "apiGroups": list(r.api_groups), "resources": list(r.resources)}
            if r.resource_names:
                entry["resourceNames"] = list(r.resource_names)
            resource_rules.append(entry)
    from apiserver.auth.node import NodeAuthorizer, node_of
    from apiserver.auth.rbac import AlwaysAllow

    chain = getattr(gate.authorizer, "authorizers", [gate.authorizer])
    if any(isinstance(z, AlwaysAllow) for z in chain):
        resource_rules.insert(0, {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})
        url_rules.insert(0, {"verbs": ["*"], "nonResourceURLs": ["*"]})
    status = {"resourceRules": resource_rules, "nonResourceRules": url_rules, "incomplete": False}
    if node_of(req.user) and any(isinstance(z, NodeAuthorizer) for z in chain):
        # as upstream: a node's permissions depend on its pods, they are not enumerated
        status["incomplete"] = True
        status["evaluationError"] = "node authorizer does not support user rule resolution"
    return json_response({"kind": "SelfSubjectRulesReview", "apiVersion": "authorization.k8s.io/v1",
                          "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}, 201)


def _rbac_of(authorizer):
    from apiserver.auth.rbac import RBACAuthorizer
    for z in getattr(authorizer, "authorizers", [authorizer]):
        if isinstance(z, RBACAuthorizer):
            return z
    return None


async def token_request(gate, registry, req: Request, namespace: str, name: str) -> Response:
    if req.method != "POST":
        raise errors.method_not_allowed("the server does not allow this method on the requested resource")
    if gate is None or gate.signer is None:
        raise errors.ApiError("NotFound", "the server could not find the requested resource "
                              "(the apiserver has no --service-account-signing-key-file)")
    sa = await registry.get(SERVICE_ACCOUNTS, namespace, name)
    body = _body(req)
    spec = body.get("spec") or {}
    audiences = list(spec.get("audiences") or gate.audiences or [gate.signer.issuer])
    expiration = spec.get("expirationSeconds") or DEFAULT_EXPIRATION
    if not isinstance(expiration, int) or expiration < MIN_EXPIRATION:
        raise errors.invalid("TokenRequest", name, [(
            "spec.expirationSeconds", "FieldValueInvalid",
            f"Invalid value: {expiration}: may not specify a duration less than 10 minutes")])
    expiration = min(expiration, 48 * 3600)
    bound = None
    ref = spec.get("boundObjectRef") or {}
    if ref.get("kind") == "Pod":  # the kubelet's: the token names the pod it was made for
        pod = await registry.get(PODS, namespace, ref.get("name", ""))
        if ref.get("uid") and ref["uid"] != pod.metadata.uid:
            raise errors.ApiError("Conflict", f'the UID in the bound object reference ({ref["uid"]}) does not '
                                  f'match the UID in record. The object might have been deleted and then '
                                  f'recreated')
        bound = {"pod": {"name": pod.metadata.name, "uid": pod.metadata.uid}}
    token, exp = gate.signer.service_account_token(namespace, name, sa.metadata.uid, audiences=audiences,
                                                   expiration_seconds=expiration, bound=bound)
    stamp = datetime.datetime.fromtimestamp(exp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json_response({
        "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
        "spec": {"audiences": audiences, "expirationSeconds": expiration,
                 "boundObjectRef": spec.get("boundObjectRef")},
        "status": {"token": token, "expirationTimestamp": stamp}}, 201)
