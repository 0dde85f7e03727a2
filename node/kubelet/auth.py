"""Who may use the kubelet's API, as Kubernetes' kubelet decides with
--client-ca-file, --authentication-token-webhook and --authorization-mode=Webhook:
the kubelet owns no users or roles, it asks the apiserver.

Authentication, in order: a client certificate that verified against
--client-ca-file (CN = user, each O = a group); a bearer token, which the
apiserver judges (a TokenReview); no credentials at all: system:anonymous if
--anonymous-auth, else 401. As upstream, the TLS handshake asks for a
certificate without requiring that it verify (grpclite.tls): one that does not
(another CA, expired) is a failed authentication, a token beside it is still
tried, and when none succeeds the answer is 401, anonymous allowed or not. Everyone authenticated is in
system:authenticated. Authorization: a SubjectAccessReview for the request's
attributes, mapped as the kubelet maps them: resource ``nodes``, name = this
node, subresource by path (/stats stats, /metrics metrics, /logs log, anything
else proxy: exec, attach, portForward, containerLogs, pods, healthz), verb by
HTTP method (GET get, POST create, PUT update, PATCH patch, DELETE delete).
Refusals are the kubelet's plain text: 401 "Unauthorized", 403 "Forbidden
(user=U, verb=V, resource=nodes, subresource=S)".

Answers are cached as the kubelet caches them (tokens 2 min; allowed 5 min,
denied 30 s), so a stream of requests costs the apiserver one review each.
The reviews go to the apiserver's REST API (the same port) with the kubelet's
own credentials (its kubeconfig): the system:node role may create them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field

from apiserver.rest.kubeconfig import ReloadingTLS

log = logging.getLogger("kubelet.auth")

ANONYMOUS = "system:anonymous"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
TOKEN_TTL = 120.0
ALLOWED_TTL = 300.0
DENIED_TTL = 30.0
REVIEW_TIMEOUT = 10.0
_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_SUBRESOURCES = (("/stats", "stats"), ("/metrics", "metrics"), ("/logs", "log"), ("/checkpoint", "checkpoint"))


class Refused(Exception):
    """``code`` 401 or 403 (500 when the apiserver could not be asked), and the kubelet's words."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Caller:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple = field(default=())  # ((key, (values...)), ...)


def caller_of_cert(peercert: dict | None) -> Caller | None:
    cn, groups = "", []
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                groups.append(value)
    return Caller(cn, (*groups, AUTHENTICATED)) if cn else None


def subresource_of(path: str) -> str:
    """The kubelet's GetRequestAttributes: a path under /stats, /metrics, /logs,
    /checkpoint names its own subresource; anything else is proxy."""
    for prefix, sub in _SUBRESOURCES:
        if path == prefix or path.startswith(prefix + "/"):
            return sub
    return "proxy"


def verb_of(method: str) -> str:
    return _VERBS.get(method.upper(), "")


class ApiReviews:
    """TokenReview and SubjectAccessReview at the apiserver's REST API, with the
    kubelet's kubeconfig credentials (apiserver.rest.kubeconfig.Credentials)."""

    def __init__(self, load_creds) -> None:
        """``load_creds()``: the credentials now (read again for each review: a rotated client
        certificate is used from then on)."""
        creds = load_creds()
        if creds is None or not creds.tls:
            raise ValueError("webhook authentication/authorization needs a kubeconfig with https:// and "
                             "credentials (the kubelet's client certificate)")
        host, _, port = creds.address.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.tls = ReloadingTLS(load_creds)

    def post(self, path: str, body: dict) -> dict:
        creds, ctx = self.tls.current()
        conn = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=REVIEW_TIMEOUT)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if creds.token:
            headers["Authorization"] = f"Bearer {creds.token}"
        try:
            conn.request("POST", path, body=json.dumps(body), headers=headers)
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"{}")
        finally:
            conn.close()
        if resp.status != 201:
            raise OSError(f"{path}: {resp.status} {data.get('message', '')}")
        return data.get("status") or {}

    def token_review(self, token: str) -> dict:
        return self.post("/apis/authentication.k8s.io/v1/tokenreviews",
                         {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})

    def access_review(self, caller: Caller, verb: str, node: str, subresource: str) -> dict:
        spec = {"user": caller.name, "groups": list(caller.groups),
                "resourceAttributes": {"verb": verb, "version": "v1", "resource": "nodes",
                                       "subresource": subresource, "name": node}}
        if caller.uid:
            spec["uid"] = caller.uid
        if caller.extra:
            spec["extra"] = {k: list(v) for k, v in caller.extra}
        return self.post("/apis/authorization.k8s.io/v1/subjectaccessreviews",
                         {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec})


class KubeletAuth:
    """``reviews``: ApiReviews (None: tokens are refused and everyone
    authenticated is allowed, --authorization-mode=AlwaysAllow);
    ``webhook_authz``: ask the apiserver (--authorization-mode=Webhook)."""

    def __init__(self, node_name: str, reviews: ApiReviews | None, *, token_webhook: bool = True,
                 webhook_authz: bool = True, anonymous: bool = False, clock=time.monotonic) -> None:
        self.node = node_name
        self.reviews = reviews
        self.token_webhook = token_webhook and reviews is not None
        self.webhook_authz = webhook_authz
        if webhook_authz and reviews is None:
            raise ValueError("--authorization-mode=Webhook needs the apiserver's credentials (a kubeconfig)")
        self.anonymous = anonymous
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[float, Caller | None]] = {}
        self._decisions: dict[tuple, tuple[float, bool]] = {}

    # ---- authentication ----

    def authenticate(self, peercert: dict | None, authorization: str, cert_error: str = "") -> Caller:
        """``cert_error``: why a certificate presented did not verify (it then authenticates no one)."""
        caller = caller_of_cert(peercert)
        if caller is not None:
            return caller
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token and self.token_webhook:
            caller = self._token(token)
            if caller is not None:
                return caller
            raise Refused(401, "Unauthorized")
        if cert_error:  # a failed authenticator: not anonymous
            log.info("Unable to authenticate the request: %s", cert_error)
            raise Refused(401, "Unauthorized")
        # as upstream: what no authenticator takes is anonymous, when that is allowed
        if self.anonymous:
            return Caller(ANONYMOUS, (UNAUTHENTICATED,))
        raise Refused(401, "Unauthorized")

    def _token(self, token: str) -> Caller | None:
        now = self.clock()
        with self._lock:
            hit = self._tokens.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            status = self.reviews.token_review(token)
        except (OSError, ValueError, http.client.HTTPException) as e:
            log.warning("TokenReview failed: %s", e)
            raise Refused(401, "Unauthorized") from None
        caller = None
        if status.get("authenticated"):
            user = status.get("user") or {}
            groups = tuple(user.get("groups") or ())
            if AUTHENTICATED not in groups:
                groups = (*groups, AUTHENTICATED)
            caller = Caller(user.get("username", ""), groups, user.get("uid", ""),
                            tuple(sorted((k, tuple(v)) for k, v in (user.get("extra") or {}).items())))
        with self._lock:
            if len(self._tokens) > 4096:
                self._tokens.clear()
            self._tokens[token] = (now + TOKEN_TTL, caller)
        return caller

    # ---- authorization ----

    def authorize(self, caller: Caller, verb: str, subresource: str) -> None:
        if not self.webhook_authz:
            return
        key = (caller, verb, subresource)
        now = self.clock()
        with self._lock:
            hit = self._decisions.get(key)
        if hit is not None and hit[0] > now:
            allowed = hit[1]
        else:
            try:
                allowed = bool(self.reviews.access_review(caller, verb, self.node, subresource).get("allowed"))
            except (OSError, ValueError, http.client.HTTPException) as e:
                log.warning("SubjectAccessReview failed: %s", e)
                raise Refused(500, f"Authorization error (user={caller.name}, verb={verb}, resource=nodes, "
                                   f"subresource={subresource})") from None
            with self._lock:
                if len(self._decisions) > 4096:
                    self._decisions.clear()
                self._decisions[key] = (now + (ALLOWED_TTL if allowed else DENIED_TTL), allowed)
        if not allowed:
            raise Refused(403, f"Forbidden (user={caller.name}, verb={verb}, resource=nodes, "
                               f"subresource={subresource})")

    def check(self, peercert: dict | None, authorization: str, method: str, path: str,
              cert_error: str = "") -> Caller:
        """A request's caller once allowed; Refused otherwise. Blocking (the reviews)."""
        caller = self.authenticate(peercert, authorization, cert_error)
        self.authorize(caller, verb_of(method), subresource_of(path))
        return caller

    async def acheck(self, peercert: dict | None, authorization: str, method: str, path: str,
                     cert_error: str = "") -> Caller:
        return await asyncio.to_thread(self.check, peercert, authorization, method, path, cert_error)


def server_ssl_context(cert_file: str, key_file: str, client_ca_file: str = ""):
    """The kubelet's serving TLS (--tls-cert-file, --tls-private-key-file; a
    grpclite.tls.ServerTLS): gRPC (h2) and the HTTP endpoints (http/1.1) on one port; a
    client certificate asked for, never required, and verified against --client-ca-file
    when given (tokens need none). Raises ValueError for files OpenSSL cannot load."""
    from grpclite.tls import ServerTLS
    # the server's preference decides: curl and Go clients offer both and get HTTP/1.1 (the
    # HTTP endpoints); gRPC clients (the apiserver's logs and exec) offer only h2
    return ServerTLS(cert_file, key_file, client_ca_file, alpn=("http/1.1", "h2"))
