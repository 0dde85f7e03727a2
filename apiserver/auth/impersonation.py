"""Impersonation: a request acting as another user (kubectl --as, --as-group,
--as-uid), as kube-apiserver's impersonation filter decides it.

The headers (REST) or gRPC metadata keys, case-insensitive: Impersonate-User,
Impersonate-Group (repeatable), Impersonate-Uid and Impersonate-Extra-<key>
(repeatable; the key percent-decoded, lower-cased). Each thing asked for is
authorized on its own for the requesting user with the verb ``impersonate``:
users, groups (core group), a ServiceAccount's user name
(system:serviceaccount:NS:NAME) as ``serviceaccounts`` NAME in NS, uids and
userextras/<key> (authentication.k8s.io). The first refusal ends the request
with 403 and Kubernetes' message for that check; nothing further runs.

The user acted as: the name asked for; the groups asked for, or with none, a
ServiceAccount's two groups; then system:authenticated added unless
system:authenticated or system:unauthenticated is there (system:unauthenticated
for system:anonymous), as upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from apiserver import errors
from apiserver.auth.authn import AUTHENTICATED, SA_PREFIX, UNAUTHENTICATED, User, service_account_user
from apiserver.auth.rbac import Attributes, forbidden

USER = "impersonate-user"
GROUP = "impersonate-group"
UID = "impersonate-uid"
EXTRA = "impersonate-extra-"
ANONYMOUS = "system:anonymous"
AUTHN_GROUP = "authentication.k8s.io"


@dataclass(frozen=True)
class Wanted:
    """One thing asked for (upstream: an ObjectReference of kind User, ServiceAccount,
    Group, UID or UserExtra)."""
    kind: str
    name: str
    namespace: str = ""
    key: str = ""  # UserExtra's key

    def __str__(self) -> str:
        if self.kind == "ServiceAccount":
            return f"ServiceAccount {self.namespace}/{self.name}"
        if self.kind == "UserExtra":
            return f"UserExtra {self.key}={self.name}"
        return f"{self.kind} {self.name}"

    def attributes(self, requestor: User) -> Attributes:
        if self.kind == "ServiceAccount":
            return Attributes(requestor, "impersonate", self.namespace, "", "serviceaccounts", "", self.name)
        if self.kind == "User":
            return Attributes(requestor, "impersonate", "", "", "users", "", self.name)
        if self.kind == "Group":
            return Attributes(requestor, "impersonate", "", "", "groups", "", self.name)
        if self.kind == "UID":
            return Attributes(requestor, "impersonate", "", AUTHN_GROUP, "uids", "", self.name)
        return Attributes(requestor, "impersonate", "", AUTHN_GROUP, "userextras", self.key, self.name)


def split_service_account(name: str) -> tuple[str, str] | None:
    if not name.startswith(SA_PREFIX):
        return None
    ns, sep, sa = name[len(SA_PREFIX):].partition(":")
    if not sep or not ns or not sa or ":" in sa:
        return None
    return ns, sa


def wanted(pairs) -> list[Wanted]:
    """What ``pairs`` (header name, one value; every occurrence of a repeated header
    separately) ask to impersonate, in upstream's order: user, groups, extras, uid.
    Raises ApiError (InternalError, as upstream) for groups, extras or a uid without a user."""
    user, uid = "", ""
    groups: list[str] = []
    extras: list[tuple[str, str]] = []
    for name, value in pairs:
        name = name.lower()
        if name == USER:
            user = user or value
        elif name == GROUP:
            groups.append(value)
        elif name == UID:
            uid = uid or value
        elif name.startswith(EXTRA) and len(name) > len(EXTRA):
            extras.append((unquote(name[len(EXTRA):]).lower(), value))
    out: list[Wanted] = []
    if user:
        sa = split_service_account(user)
        out.append(Wanted("ServiceAccount", sa[1], sa[0]) if sa else Wanted("User", user))
    out += [Wanted("Group", g) for g in groups]
    out += [Wanted("UserExtra", v, key=k) for k, v in extras]
    if uid:
        out.append(Wanted("UID", uid))
    if (groups or extras or uid) and not user:
        raise errors.internal(f"requested [{', '.join(map(str, out))}] without impersonating a user")
    return out


def impersonate(authorizer, requestor: User, pairs) -> User | None:
    """The user ``requestor`` acts as, or None when ``pairs`` ask for no impersonation.
    Raises ApiError Forbidden for the first thing ``authorizer`` does not allow."""
    asked = wanted(pairs)
    if not asked:
        return None
    groups_given = any(w.kind == "Group" for w in asked)
    name, uid = "", ""
    groups: list[str] = []
    extra: dict[str, list[str]] = {}
    for w in asked:
        a = w.attributes(requestor)
        if not authorizer.allowed(a):
            raise forbidden(a)
        if w.kind == "ServiceAccount":
            sa = service_account_user(w.namespace, w.name)
            name = sa.name
            if not groups_given:
                groups = list(sa.groups)
        elif w.kind == "User":
            name = w.name
        elif w.kind == "Group":
            groups.append(w.name)
        elif w.kind == "UID":
            uid = w.name
        else:
            extra.setdefault(w.key, []).append(w.name)
    if name != ANONYMOUS:
        if AUTHENTICATED not in groups and UNAUTHENTICATED not in groups:
            groups.append(AUTHENTICATED)
    elif UNAUTHENTICATED not in groups:
        groups.append(UNAUTHENTICATED)
    return User(name, tuple(groups), uid, tuple((k, tuple(v)) for k, v in sorted(extra.items())))


def is_impersonation_header(name: str) -> bool:
    name = name.lower()
    return name in (USER, GROUP, UID) or name.startswith(EXTRA)
