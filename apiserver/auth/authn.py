"""Authentication: who a request comes from, as kube-apiserver decides it.

In order: a client certificate that verified against --client-ca-file (CN =
user name, each O = a group); a bearer token from --token-auth-file (CSV:
token,user,uid,"group1,group2"); a ServiceAccount token
(apiserver/auth/tokens.py) whose account still exists with the same uid. As
upstream's union of authenticators, one that fails (a certificate that did not
verify: another CA, expired, no clientAuth usage; a token nobody knows) does
not stop the next: a good token beside a bad certificate authenticates; when
none succeeds and one failed, the request is refused (401) even when anonymous
requests are allowed. With no credentials at all the request is
system:anonymous (group system:unauthenticated) if --anonymous-auth, else 401.
Everyone authenticated is also in system:authenticated.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass

from apiserver import errors
from apiserver.auth import tokens

log = logging.getLogger("apiserver.auth")

AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
MASTERS = "system:masters"
SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    # user.Info's Extra: (key, (values...)) pairs, sorted by key (an impersonated user's
    # Impersonate-Extra-*, a pod-bound ServiceAccount token's pod name and uid)
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def extra_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.extra}

    def info(self) -> dict:
        """authentication.k8s.io/v1 UserInfo (TokenReview, SelfSubjectReview, the audit log)."""
        out: dict = {"username": self.name}
        if self.uid:
            out["uid"] = self.uid
        out["groups"] = list(self.groups)
        if self.extra:
            out["extra"] = self.extra_dict()
        return out


ANONYMOUS = User("system:anonymous", (UNAUTHENTICATED,))
# what the apiserver's own loopback work runs as (bootstrap writes never pass the gate)
APISERVER = User("system:apiserver", (MASTERS, AUTHENTICATED))


def read_token_file(path: str) -> dict[str, User]:
    """kube-apiserver's --token-auth-file: token,user,uid[,"group1,group2"] per line."""
    users: dict[str, User] = {}
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 3:
                raise ValueError(f"{path}:{lineno}: want token,user,uid[,\"group1,group2\"], got {len(row)} fields")
            token, name, uid = (c.strip() for c in row[:3])
            if not token or not name:
                raise ValueError(f"{path}:{lineno}: empty token or user name")
            groups = tuple(g.strip() for g in row[3].split(",") if g.strip()) if len(row) > 3 else ()
            users[token] = User(name, groups, uid)
    return users


def service_account_user(namespace: str, name: str, uid: str = "") -> User:
    return User(f"{SA_PREFIX}{namespace}:{name}",
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}"), uid)


def _with_authenticated(user: User) -> User:
    if AUTHENTICATED in user.groups:
        return user
    return User(user.name, (*user.groups, AUTHENTICATED), user.uid, user.extra)


def user_of_cert(peercert: dict) -> User | None:
    """The user a verified certificate names (ssl's getpeercert() form)."""
    cn, groups = "", []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                groups.append(value)
    return User(cn, tuple(groups)) if cn else None


class Authenticator:
    """``service_accounts``: (namespace, name) -> the ServiceAccount or None
    (the apiserver's watch cache), to refuse tokens of deleted accounts; ``pods``
    the same for pods, to refuse tokens bound to a pod that is gone."""

    def __init__(self, *, token_users: dict[str, User] | None = None, sa_public_keys: list | None = None,
                 issuers: list[str] | None = None, audiences: list[str] | None = None,
                 service_accounts=None, pods=None, anonymous: bool = True, bootstrap=None) -> None:
        self.token_users = token_users or {}
        self.sa_public_keys = sa_public_keys or []
        self.issuers = issuers or []
        self.audiences = audiences or self.issuers
        self.service_accounts = service_accounts
        self.pods = pods  # (namespace, name) -> the Pod or None: a pod-bound token dies with its pod
        self.anonymous = anonymous
        self.bootstrap = bootstrap  # a bootstrap.BootstrapTokens (--enable-bootstrap-token-auth), or None

    def authenticate(self, peercert: dict | None, authorization: str, cert_error: str = "") -> User:
        """The request's user; raises errors.unauthorized(). ``peercert``: a certificate that
        verified; ``cert_error``: why a presented one did not (kube-apiserver's log words)."""
        failures = []
        if peercert:
            user = user_of_cert(peercert)
            if user is not None:
                return _with_authenticated(user)
        elif cert_error:
            failures.append(cert_error)
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise errors.unauthorized()
            user, reason, _ = self._token_user(token, self.audiences)
            if user is not None:
                return _with_authenticated(user)
            failures.append(f"invalid bearer token, {reason}" if reason else "invalid bearer token")
        if failures:
            log.info("Unable to authenticate the request: [%s]", ", ".join(failures))
            raise errors.unauthorized()
        if self.anonymous:
            return ANONYMOUS
        raise errors.unauthorized()

    def review(self, token: str, audiences: list[str] | None = None) -> tuple[User | None, str, list[str]]:
        """TokenReview: (the token's user with system:authenticated, or None; the error
        in kube-apiserver's words, "" when none; the audiences the token was found valid
        for). ``audiences``: the review's spec.audiences, default the apiserver's."""
        wanted = list(audiences or self.audiences)
        user, reason, auds = self._token_user(token, wanted)
        if user is None:
            # as kube-apiserver's bearer-token authenticator: a token no authenticator knows is
            # "invalid bearer token"; one that failed a check says which beside it
            return None, f"[invalid bearer token, {reason}]" if reason else "invalid bearer token", []
        return _with_authenticated(user), "", auds

    def _token_user(self, token: str, audiences: list[str]) -> tuple[User | None, str, list[str]]:
        """(user, why not, audiences): a token-file token is good for any of the
        apiserver's audiences (upstream wraps it audience-agnostic), a ServiceAccount
        token for those it names."""
        user = self.token_users.get(token)
        if user is not None:
            auds = [a for a in audiences if a in self.audiences]
            if not auds:
                return None, "token audiences are not accepted", []
            return user, "", auds
        if self.sa_public_keys and tokens.looks_like_jwt(token):
            try:
                claims = tokens.verify(token, self.sa_public_keys, self.issuers, audiences)
            except tokens.Invalid as e:
                return None, str(e), []
            sa = self.service_accounts(claims.namespace, claims.name) if self.service_accounts else None
            if sa is None or (claims.uid and sa.metadata.uid != claims.uid):
                return None, (f"ServiceAccount {claims.namespace}/{claims.name} (uid {claims.uid}) "
                              f"no longer exists"), []
            extra = ()
            if claims.pod_name:
                if self.pods is not None:
                    pod = self.pods(claims.namespace, claims.pod_name)
                    if pod is None or pod.metadata.uid != claims.pod_uid:
                        return None, (f"pod {claims.namespace}/{claims.pod_name} (uid {claims.pod_uid}) "
                                      f"it was bound to no longer exists"), []
                extra = (("authentication.kubernetes.io/pod-name", (claims.pod_name,)),
                         ("authentication.kubernetes.io/pod-uid", (claims.pod_uid,)))
            sa_user = service_account_user(claims.namespace, claims.name, claims.uid)
            auds = [a for a in claims.audiences if a in audiences]
            return User(sa_user.name, sa_user.groups, sa_user.uid, extra), "", auds
        if self.bootstrap is not None:
            user, reason = self.bootstrap.authenticate(token)
            if user is not None:
                # audience-agnostic, as a token-file token
                return user, "", [a for a in audiences if a in self.audiences]
            if reason:
                return None, reason, []
        return None, "", []
