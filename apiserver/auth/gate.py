"""The gate every request passes before it reaches the registry: who is it
(``Authenticator``), what does it ask (``Attributes``, from a REST path and
method or a gRPC method and request, as kube-apiserver's RequestInfo reads
them), may it (the authorizer). Refusals are ApiErrors: Unauthorized (401,
gRPC UNAUTHENTICATED) and Forbidden (403, PERMISSION_DENIED) with
kube-apiserver's messages.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass

from apiserver import errors, resources
from apiserver.auth import impersonation
from apiserver.auth.authn import Authenticator, User
from apiserver.auth.rbac import AlwaysAllow, Attributes, forbidden, forbidden_message
from apiserver.auth.tokens import Signer

log = logging.getLogger("apiserver.auth")

_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
# the user the request being served acts as, once the gate let it through (None: no gate):
# what a CertificateSigningRequest's spec.username records
REQUESTER: contextvars.ContextVar[User | None] = contextvars.ContextVar("requester", default=None)
# the gate that let it through (the CertificateSigningRequest signer checks ask its authorizer)
GATE: contextvars.ContextVar["Gate | None"] = contextvars.ContextVar("gate", default=None)


def rest_attributes(user: User, method: str, path: str, query: dict[str, list[str]]) -> Attributes:
    """Attributes of a REST request (apiserver/pkg/endpoints/request.RequestInfoFactory)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        rest = None
    if not rest:
        verb = "get" if method in ("GET", "HEAD") else method.lower()
        return Attributes(user, verb, path=path or "/", resource_request=False)
    namespace = ""
    # /namespaces/NS/RESOURCE..., except a namespace's own subresources (/namespaces/NS/status)
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    if resource == "namespaces" and not namespace and name:
        namespace = name  # a namespace's own requests are in it
    if method in ("GET", "HEAD"):
        # a named GET stays a get whatever its query says (a pods/NAME/proxy/...?watch=true is the pod's)
        if name:
            verb = "get"
        else:
            verb = "watch" if (query.get("watch") or [""])[0] in _TRUE else "list"
    elif method == "DELETE" and not name:
        verb = "deletecollection"
    else:
        verb = _METHOD_VERBS.get(method, method.lower())
    return Attributes(user, verb, namespace, group, resource, sub, name, path)


def _res(name: str):
    return resources.lookup(name) if name else None


def _ns(res, namespace: str) -> str:
    if res is None or not res.namespaced:
        return ""
    return namespace or "default"


def grpc_attributes(user: User, method: str, request) -> Attributes | None:
    """Attributes of an ApiServer gRPC call; None when the request names no
    resource served (the handler then answers NotFound/BadRequest)."""
    if method in ("Create", "Update", "UpdateStatus", "UpdateApproval"):
        res, msg = resources.unwrap(request.object)
        if res is None:
            return None
        ns = _ns(res, msg.metadata.namespace)
        if method == "Create":
            return Attributes(user, "create", ns, res.group, res.name, "", "")
        sub = {"UpdateStatus": "status", "UpdateApproval": "approval"}.get(method, "")
        return Attributes(user, "update", ns, res.group, res.name, sub, msg.metadata.name)
    if method == "Logs":
        return Attributes(user, "get", _ns(resources.BY_NAME["pods"], request.namespace), "", "pods", "log",
                          request.name)
    if method == "Exec":
        return Attributes(user, "create", _ns(resources.BY_NAME["pods"], request.namespace), "", "pods", "exec",
                          request.name)
    res = _res(request.resource)
    if res is None:
        return None
    if method in ("List", "Watch"):
        ns = request.namespace if res.namespaced else ""
        return Attributes(user, method.lower(), ns, res.group, res.name)
    ns = _ns(res, request.namespace)
    if res.name == "namespaces":
        ns = request.name
    verb = {"Get": "get", "Patch": "patch", "Delete": "delete"}.get(method)
    if verb is None:
        return None
    sub = "status" if method == "Patch" and request.status else ""
    return Attributes(user, verb, ns, res.group, res.name, sub, request.name)


def attempted(certificate, authorization: str) -> str:
    """What a refused request tried, in kube-apiserver's audit words."""
    methods = []
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "basic":
        methods.append("basic")
    elif scheme.lower() == "bearer" and token.strip():
        methods.append("bearer")
    if certificate:
        methods.append("x509")
    return f"Authentication failed, attempted: {', '.join(methods)}" if methods else \
        "Authentication failed, no credentials provided"


@dataclass
class Seen:
    """What the gate learnt of a request before it let it through or refused it (for the audit log)."""
    user: User | None = None  # who authenticated
    attrs: Attributes | None = None
    impersonated: User | None = None  # whom it acts as (Impersonate-* headers), if anyone
    failure: str = ""  # a refused authentication: what was attempted (the Event's responseStatus.message)


@dataclass
class Gate:
    authenticator: Authenticator
    authorizer: object = AlwaysAllow()
    signer: Signer | None = None  # TokenRequest (None: no --service-account-signing-key-file)
    audiences: tuple[str, ...] = ()
    audit: object = None  # an AuditLog (--audit-log-path), or None
    restriction: object = None  # NodeRestriction (with the Node authorizer), or None

    def authenticate(self, peercert: dict | None, authorization: str, cert_error: str = "",
                     seen: Seen | None = None) -> User:
        try:
            return self.authenticator.authenticate(peercert, authorization, cert_error)
        except errors.ApiError:
            if seen is not None:
                seen.failure = attempted(peercert or cert_error, authorization)
            raise

    def authorize(self, a: Attributes) -> None:
        if not self.authorizer.allowed(a):
            log.info("forbidden: %s", forbidden_message(a))
            raise forbidden(a)
        if self.restriction is not None:
            self.restriction.check(a)

    def impersonate(self, user: User, pairs, seen: Seen) -> User:
        """The user the request acts as: ``user``, or whom its Impersonate-* headers
        (``pairs``) name once each is allowed (else ApiError Forbidden)."""
        acting = impersonation.impersonate(self.authorizer, user, pairs)
        if acting is None:
            return user
        log.debug("%s acts as %s", user.name, acting.name)
        seen.impersonated = acting
        return acting

    def rest(self, peercert: dict | None, method: str, path: str, headers: dict, query: dict,
             seen: Seen | None = None, header_lines=(), cert_error: str = "") -> User:
        """``header_lines``: every (name, value) as sent, for the Impersonate-* headers;
        ``cert_error``: why the client's certificate did not verify (grpclite.tls)."""
        seen = seen or Seen()
        try:
            seen.user = user = self.authenticate(peercert, headers.get("authorization", ""), cert_error, seen)
        except errors.ApiError:
            seen.attrs = rest_attributes(None, method, path, query)  # what it asked (the audit log's verb)
            raise
        user = self.impersonate(user, header_lines, seen)
        seen.attrs = rest_attributes(user, method, path, query)
        self.authorize(seen.attrs)
        REQUESTER.set(user)
        GATE.set(self)
        return user

    def grpc(self, method: str, request, context, seen: Seen | None = None) -> User:
        authorization = ""
        metadata = list(context.invocation_metadata() or ())
        for key, value in metadata:
            if key == "authorization":
                authorization = value
                break
        peercert = context.peer_certificate() if hasattr(context, "peer_certificate") else None
        cert_error = context.peer_certificate_error() if hasattr(context, "peer_certificate_error") else ""
        seen = seen or Seen()
        try:
            seen.user = user = self.authenticate(peercert, authorization, cert_error, seen)
        except errors.ApiError:
            seen.attrs = grpc_attributes(None, method, request)
            raise
        # the same Impersonate-* names as gRPC metadata keys (lower-case, as HTTP/2 sends them)
        user = self.impersonate(user, [(k, v) for k, v in metadata if isinstance(v, str)
                                       and impersonation.is_impersonation_header(k)], seen)
        seen.attrs = a = grpc_attributes(user, method, request)
        if a is not None:
            self.authorize(a)
        REQUESTER.set(user)
        GATE.set(self)
        return user

    def check_signer(self, user: User, verb: str, csr_name: str, signer_name: str) -> None:
        """kube-apiserver's CertificateApproval/CertificateSigning admission: approving
        (``verb`` "approve") or signing ("sign") a CertificateSigningRequest also needs that
        verb on certificates.k8s.io signers, named by the signer or by its "<domain>/*"."""
        domain = signer_name.partition("/")[0]
        for name in (signer_name, f"{domain}/*"):
            if self.authorizer.allowed(Attributes(user, verb, "", "certificates.k8s.io", "signers", "", name)):
                return
        raise errors.forbidden("certificatesigningrequests.certificates.k8s.io", csr_name,
                               f'user not permitted to {verb} requests with signerName "{signer_name}"')


def open_gate() -> Gate:
    """Everyone anonymous and allowed: the apiserver before issue 23, what the flags default to."""
    return Gate(Authenticator(anonymous=True))
