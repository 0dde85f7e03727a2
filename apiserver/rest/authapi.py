"""The REST calls of issue 23 that store nothing: SelfSubjectAccessReview
(``kubectl auth can-i``: may I?), TokenRequest (``kubectl create token``:
a ServiceAccount token, signed now), and what a delegating server (a kubelet)
asks the apiserver: TokenReview (who is this token?), SubjectAccessReview and
LocalSubjectAccessReview (may this user do that?), SelfSubjectReview (``kubectl
auth whoami``). Who may create the reviews is RBAC's to say (system:auth-delegator)."""

from __future__ import annotations

import datetime
import json

from apiserver import errors, resources
from apiserver.auth.authn import User
from apiserver.auth.gate import REQUESTER
from apiserver.auth.rbac import Attributes, decide
from apiserver.auth.tokens import DEFAULT_EXPIRATION, MIN_EXPIRATION
from apiserver.rest import protobuf
from apiserver.rest.http1 import Request, Response, json_response

SSAR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
SSRR_PATH = "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"
SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
LSAR_PREFIX = "/apis/authorization.k8s.io/v1/namespaces/"
LSAR_SUFFIX = "/localsubjectaccessreviews"
TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SSR_PATH = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
REVIEW_PREFIXES = ("/apis/authorization.k8s.io/", "/apis/authentication.k8s.io/")
SERVICE_ACCOUNTS = resources.BY_NAME["serviceaccounts"]
PODS = resources.BY_NAME["pods"]


# the protobuf messages kubectl's typed clients send here (k8s.io/api authorization/v1 and
# authentication/v1 generated.proto): field number -> (JSON name, string | strings | int | message)
_RESOURCE_ATTRIBUTES = {1: ("namespace", "string"), 2: ("verb", "string"), 3: ("group", "string"),
                        4: ("version", "string"), 5: ("resource", "string"), 6: ("subresource", "string"),
                        7: ("name", "string")}
_NON_RESOURCE_ATTRIBUTES = {1: ("path", "string"), 2: ("verb", "string")}
_SSAR_SPEC = {1: ("resourceAttributes", _RESOURCE_ATTRIBUTES), 2: ("nonResourceAttributes", _NON_RESOURCE_ATTRIBUTES)}
_SAR_SPEC = {**_SSAR_SPEC, 3: ("user", "string"), 4: ("groups", "strings"), 6: ("uid", "string")}
_TOKEN_SPEC = {1: ("audiences", "strings"), 4: ("expirationSeconds", "int")}
_META = {1: ("name", "string"), 3: ("namespace", "string")}
_TOP = {"SelfSubjectAccessReview": {2: ("spec", _SSAR_SPEC)}, "TokenRequest": {2: ("spec", _TOKEN_SPEC)},
        "SelfSubjectRulesReview": {2: ("spec", {1: ("namespace", "string")})},
        "SubjectAccessReview": {2: ("spec", _SAR_SPEC)},
        "LocalSubjectAccessReview": {1: ("metadata", _META), 2: ("spec", _SAR_SPEC)},
        "TokenReview": {2: ("spec", {1: ("token", "string"), 2: ("audiences", "strings")})},
        "SelfSubjectReview": {}}


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


# the fields each review kind has (k8s.io/api authentication/v1, authorization/v1), for
# fieldValidation=Strict: path -> allowed keys
_RA_KEYS = {"namespace", "verb", "group", "version", "resource", "subresource", "name", "fieldSelector",
            "labelSelector"}
_SAR_SPEC_KEYS = {"resourceAttributes", "nonResourceAttributes", "user", "groups", "extra", "uid"}
_KNOWN = {"spec.resourceAttributes": _RA_KEYS, "spec.nonResourceAttributes": {"path", "verb"}}
_SPEC_KEYS = {"SubjectAccessReview": _SAR_SPEC_KEYS, "LocalSubjectAccessReview": _SAR_SPEC_KEYS,
              "SelfSubjectAccessReview": {"resourceAttributes", "nonResourceAttributes"},
              "SelfSubjectRulesReview": {"namespace"}, "TokenReview": {"token", "audiences"},
              "SelfSubjectReview": set(), "TokenRequest": {"audiences", "expirationSeconds", "boundObjectRef"}}


def _strict(req: Request, body: dict) -> None:
    """fieldValidation=Strict (kubectl's default, the openapi document says these kinds
    take it): unknown fields are BadRequest in upstream's words."""
    if req.param("fieldValidation") != "Strict":
        return
    unknown = [k for k in body if k not in ("apiVersion", "kind", "metadata", "spec", "status")]
    spec = body.get("spec")
    if isinstance(spec, dict):
        unknown += [f"spec.{k}" for k in spec if k not in _SPEC_KEYS.get(body.get("kind", ""), spec.keys())]
        for path, keys in _KNOWN.items():
            part = spec.get(path.split(".")[1])
            if isinstance(part, dict):
                unknown += [f"{path}.{k}" for k in part if k not in keys]
    if unknown:
        raise errors.bad_request("strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown))


def _body(req: Request) -> dict:
    body = _decode(req)
    _strict(req, body)
    return body


def _decode(req: Request) -> dict:
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


def _invalid(kind: str, causes) -> errors.ApiError:
    """Invalid as upstream words it for these kinds: the kind qualified by its group, no name."""
    text = ", ".join(f"{field}: {detail}" for field, _, detail in causes)
    return errors.ApiError("Invalid", f'{kind}.authorization.k8s.io "" is invalid: {text}', kind=kind,
                           causes=causes)


def _post(req: Request) -> None:
    if req.method != "POST":
        raise errors.method_not_allowed("the server does not allow this method on the requested resource")


def _access_attributes(kind: str, user, spec: dict) -> Attributes:
    """The request a (Self|Local)SubjectAccessReview's spec describes, for ``user``;
    Invalid in upstream's words unless exactly one of resourceAttributes and
    nonResourceAttributes is given."""
    ra, nra = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if ra and nra:
        raise _invalid(kind, [("spec.nonResourceAttributes", "FieldValueInvalid",
                               "Invalid value: cannot be specified in combination with resourceAttributes")])
    if not ra and not nra:
        raise _invalid(kind, [(
            "spec.resourceAttributes", "FieldValueRequired",
            "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified")])
    if not isinstance(ra or nra, dict):
        raise errors.bad_request(f"{kind}: spec's attributes must be an object")
    if ra:
        return Attributes(user, ra.get("verb", ""), ra.get("namespace", ""), ra.get("group", ""),
                          ra.get("resource", ""), ra.get("subresource", ""), ra.get("name", ""))
    return Attributes(user, nra.get("verb", ""), path=nra.get("path", ""), resource_request=False)


def _review(kind: str, api_version: str, body: dict, status: dict, namespace: str = "") -> Response:
    meta = dict(body.get("metadata") or {})
    meta["creationTimestamp"] = None
    if namespace:
        meta["namespace"] = namespace
    return json_response({"kind": kind, "apiVersion": api_version, "metadata": meta,
                          "spec": body.get("spec") or {}, "status": status}, 201)


def _status(allowed: bool, reason: str) -> dict:
    status: dict = {"allowed": allowed}
    if reason:
        status["reason"] = reason
    return status


def self_subject_access_review(gate, req: Request) -> Response:
    _post(req)
    body = _body(req)
    a = _access_attributes("SelfSubjectAccessReview", req.user, body.get("spec") or {})
    return _review("SelfSubjectAccessReview", "authorization.k8s.io/v1", body, _status(*decide(gate.authorizer, a)))


def _subject(kind: str, spec: dict) -> User:
    user, groups = spec.get("user") or "", spec.get("groups") or []
    if not user and not groups:
        raise _invalid(kind, [("spec.user", "FieldValueInvalid",
                               'Invalid value: "": at least one of user or group must be specified')])
    extra = spec.get("extra") or {}
    if not isinstance(groups, list) or not isinstance(extra, dict):
        raise errors.bad_request(f"{kind}: spec.groups must be a list and spec.extra an object")
    # as upstream: the groups are taken as given (system:authenticated is not added)
    return User(user, tuple(str(g) for g in groups), spec.get("uid") or "",
                tuple((k, tuple(v if isinstance(v, list) else [v])) for k, v in sorted(extra.items())))


def subject_access_review(gate, req: Request) -> Response:
    """May spec.user (with spec.groups) do what spec says? The answer of the
    apiserver's own authorizers, with RBAC's reason when allowed."""
    _post(req)
    body = _body(req)
    spec = body.get("spec") or {}
    a = _access_attributes("SubjectAccessReview", _subject("SubjectAccessReview", spec), spec)
    return _review("SubjectAccessReview", "authorization.k8s.io/v1", body, _status(*decide(gate.authorizer, a)))


def local_subject_access_review(gate, req: Request, namespace: str) -> Response:
    """SubjectAccessReview in one namespace (the path's): resource attributes only,
    in that namespace (the admin and edit roles may create these in theirs)."""
    _post(req)
    body = _body(req)
    spec = body.get("spec") or {}
    meta_ns = (body.get("metadata") or {}).get("namespace") or namespace
    if meta_ns != namespace:
        raise errors.bad_request(f"the namespace of the provided object does not match the namespace sent on "
                                 f"the request")
    if spec.get("nonResourceAttributes"):
        raise _invalid("LocalSubjectAccessReview", [(
            "spec.nonResourceAttributes", "FieldValueInvalid", "Invalid value: disallowed on this kind of request")])
    a = _access_attributes("LocalSubjectAccessReview", _subject("LocalSubjectAccessReview", spec), spec)
    if a.namespace != namespace:
        raise errors.bad_request(f"spec.resourceAttributes.namespace must match namespace: {namespace}")
    return _review("LocalSubjectAccessReview", "authorization.k8s.io/v1", body,
                   _status(*decide(gate.authorizer, a)), namespace)


def token_review(gate, req: Request) -> Response:
    """Who is spec.token? The apiserver's token authenticators (token file,
    ServiceAccount tokens) answer, for spec.audiences (default: the apiserver's);
    a token that fails is authenticated: false with the error, never an error
    response. Client certificates play no part (a token is all there is)."""
    _post(req)
    body = _body(req)
    spec = body.get("spec") or {}
    token = spec.get("token") or ""
    if not token:
        raise errors.bad_request("token is required for TokenReview in authentication")
    audiences = spec.get("audiences") or []
    user, error, auds = gate.authenticator.review(token, list(audiences))
    # as upstream's JSON: authenticated and audiences only when set, user always
    status: dict = {"user": {}}
    if user is not None:
        status = {"authenticated": True, "user": user.info(), "audiences": auds}
    if error:
        status["error"] = error
    return _review("TokenReview", "authentication.k8s.io/v1", body, status)


def self_subject_review(req: Request) -> Response:
    """``kubectl auth whoami``: the user the request ran as (impersonation applied)."""
    _post(req)
    body = _body(req)
    return json_response({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                          "metadata": {"creationTimestamp": None},
                          "status": {"userInfo": req.user.info()}}, 201)


def route(gate, req: Request, path: str) -> Response | None:
    """The answer when ``path`` names one of the reviews above; None otherwise."""
    if path == SSAR_PATH:
        return self_subject_access_review(gate, req)
    if path == SSRR_PATH:
        return self_subject_rules_review(gate, req)
    if path == SAR_PATH:
        return subject_access_review(gate, req)
    if path == TOKEN_REVIEW_PATH:
        return token_review(gate, req)
    if path == SSR_PATH:
        return self_subject_review(req)
    if path.startswith(LSAR_PREFIX) and path.endswith(LSAR_SUFFIX):
        namespace = path[len(LSAR_PREFIX):-len(LSAR_SUFFIX)]
        if namespace and "/" not in namespace:
            return local_subject_access_review(gate, req, namespace)
    return None


def self_subject_rules_review(gate, req: Request) -> Response:
    """``kubectl auth can-i --list``: every rule that applies to the caller in
    spec.namespace, RBAC's (and AlwaysAllow's everything); a kubelet's list is
    incomplete, its Node authorizer rules being per object."""
    _post(req)
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
    if gate.restriction is not None:
        gate.restriction.admit_token_request(REQUESTER.get(), namespace, name, ref)
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
