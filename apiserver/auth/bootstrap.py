"""Bootstrap tokens (kube-apiserver's --enable-bootstrap-token-auth), the
credential a new node joins with before it has a certificate of its own.

A token ``<id>.<secret>`` (6 and 16 characters of [a-z0-9]) is good while
Secret ``bootstrap-token-<id>`` in kube-system, of type
bootstrap.kubernetes.io/token, holds the same token-id and token-secret, says
usage-bootstrap-authentication "true", is not being deleted and its
expiration (RFC 3339), if any, is in the future. It authenticates as
system:bootstrap:<id> in group system:bootstrappers plus the
system:bootstrappers:* groups its auth-extra-groups lists (kubeadm's
system:bootstrappers:kubeadm:default-node-token). What it may do is RBAC's
(policy.py binds the node bootstrapper roles to system:bootstrappers).
"""

from __future__ import annotations

import datetime
import hmac
import re
import secrets as _secrets

from apiserver.auth.authn import User
from apiserver.pb import core_pb2

NAMESPACE = "kube-system"
SECRET_TYPE = "bootstrap.kubernetes.io/token"
SECRET_PREFIX = "bootstrap-token-"
USER_PREFIX = "system:bootstrap:"
GROUP = "system:bootstrappers"
KUBEADM_GROUP = "system:bootstrappers:kubeadm:default-node-token"
TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def _value(secret, key: str) -> str:
    if key in secret.data:
        return secret.data[key].decode("utf-8", "replace")
    return secret.string_data.get(key, "")


def _expired(text: str, now: datetime.datetime) -> bool:
    if not text:
        return False
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return True  # as upstream: an expiration it cannot read ends the token
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when <= now


class BootstrapTokens:
    """``secrets``: (namespace, name) -> the Secret or None (the apiserver's watch cache)."""

    def __init__(self, secrets) -> None:
        self.secrets = secrets

    def authenticate(self, token: str) -> tuple[User | None, str]:
        """(the token's user, or None; why not, "" when it is no bootstrap token at all)."""
        m = TOKEN.match(token)
        if m is None:
            return None, ""
        token_id, token_secret = m.groups()
        secret = self.secrets(NAMESPACE, SECRET_PREFIX + token_id)
        if secret is None:
            return None, f"no bootstrap token secret {NAMESPACE}/{SECRET_PREFIX}{token_id}"
        if secret.metadata.deletion_timestamp:
            return None, f"bootstrap token secret {secret.metadata.name} is being deleted"
        if secret.type != SECRET_TYPE:
            return None, f"secret {secret.metadata.name} has type {secret.type!r}, not {SECRET_TYPE!r}"
        stored = _value(secret, "token-secret")
        if _value(secret, "token-id") != token_id or not hmac.compare_digest(stored.encode(), token_secret.encode()):
            return None, "bootstrap token does not match its secret"
        if _expired(_value(secret, "expiration"), datetime.datetime.now(datetime.timezone.utc)):
            return None, f"bootstrap token {token_id} has expired"
        if _value(secret, "usage-bootstrap-authentication") != "true":
            return None, f"bootstrap token {token_id} is not for authentication"
        groups = [GROUP]
        for g in (x.strip() for x in _value(secret, "auth-extra-groups").split(",")):
            if not g:
                continue
            if not g.startswith(GROUP + ":"):
                return None, f"bootstrap token {token_id}: extra group {g!r} is not system:bootstrappers:*"
            if g not in groups:
                groups.append(g)
        return User(USER_PREFIX + token_id, tuple(groups)), ""


def new_token() -> str:
    """A fresh random ``<id>.<secret>`` (as `kubeadm token generate`)."""
    pick = lambda n: "".join(_secrets.choice(_ALPHABET) for _ in range(n))  # noqa: E731
    return f"{pick(6)}.{pick(16)}"


def token_secret(token: str, *, ttl_seconds: float = 24 * 3600, extra_groups: tuple[str, ...] = (KUBEADM_GROUP,),
                 description: str = "") -> core_pb2.Secret:
    """The kube-system Secret that makes ``token`` good for ``ttl_seconds`` (0: forever), as
    `kubeadm token create` writes it (authentication and signing usages)."""
    m = TOKEN.match(token)
    if m is None:
        raise ValueError(f"a bootstrap token is <6 of [a-z0-9]>.<16 of [a-z0-9]>, not {token!r}")
    secret = core_pb2.Secret(type=SECRET_TYPE)
    secret.metadata.name, secret.metadata.namespace = SECRET_PREFIX + m.group(1), NAMESPACE
    data = {"token-id": m.group(1), "token-secret": m.group(2), "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true"}
    if extra_groups:
        data["auth-extra-groups"] = ",".join(extra_groups)
    if description:
        data["description"] = description
    if ttl_seconds:
        when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=ttl_seconds)
        data["expiration"] = when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    for k, v in data.items():
        secret.data[k] = v.encode()
    return secret
