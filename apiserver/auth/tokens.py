"""ServiceAccount tokens: JWTs signed RS256 with --service-account-signing-key-file,
verified with the public keys of --service-account-key-file, claims as
Kubernetes' bound tokens (iss, sub system:serviceaccount:NS:NAME, aud, exp,
iat, nbf, and kubernetes.io.{namespace, serviceaccount.{name, uid}}).

A token proves who signed it and when it ends; whether its account still
exists (same uid) the authenticator asks the apiserver's cache, so deleting
the ServiceAccount ends every token it had.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

import jws

DEFAULT_EXPIRATION = 3600
# TokenRequest's floor (upstream: 10 minutes)
MIN_EXPIRATION = 600
# clocks of the issuer and of the checker may differ this much (upstream: 60 s)
LEEWAY = 60


def key_id(public_key) -> str:
    """As Kubernetes: the SHA-256 of the DER public key, base64url."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return jws.b64(hashlib.sha256(der).digest())


def load_private_key(path: str):
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA private key (ServiceAccount tokens are RS256)")
    return key


def load_public_keys(path: str) -> list:
    """Every RSA public key in the PEM file (public keys, or private keys whose public half is taken)."""
    with open(path, "rb") as f:
        data = f.read()
    keys = []
    for block in data.split(b"-----END ")[:-1]:
        start = block.rfind(b"-----BEGIN ")
        if start < 0:
            continue
        kind = block[start + 11:block.index(b"-----", start + 11)]
        pem = block[start:] + b"-----END " + kind + b"-----\n"
        if b"PRIVATE KEY" in kind:
            keys.append(serialization.load_pem_private_key(pem, None).public_key())
        elif b"PUBLIC KEY" in kind:
            keys.append(serialization.load_pem_public_key(pem))
    keys = [k for k in keys if isinstance(k, rsa.RSAPublicKey)]
    if not keys:
        raise ValueError(f"{path}: no RSA key found")
    return keys


class Signer:
    def __init__(self, private_key, issuer: str) -> None:
        self.key = private_key
        self.issuer = issuer
        self.kid = key_id(private_key.public_key())

    def sign(self, claims: dict) -> str:
        return jws.encode({"alg": "RS256", "kid": self.kid}, claims, self.key)

    def service_account_token(self, namespace: str, name: str, uid: str, *, audiences: list[str],
                              expiration_seconds: int = DEFAULT_EXPIRATION, now: float | None = None,
                              bound: dict | None = None) -> tuple[str, int]:
        """(token, expiry as a Unix time)."""
        now = int(time.time() if now is None else now)
        exp = now + expiration_seconds
        k8s = {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}}
        if bound:
            k8s.update(bound)
        claims = {"aud": audiences, "exp": exp, "iat": now, "iss": self.issuer, "jti": str(uuid.uuid4()),
                  "kubernetes.io": k8s, "nbf": now, "sub": f"system:serviceaccount:{namespace}:{name}"}
        return self.sign(claims), exp


class Invalid(Exception):
    """The token is not one of ours or no longer valid (why: for the log, never the client)."""


@dataclass
class Claims:
    namespace: str
    name: str
    uid: str
    audiences: list[str]
    expiry: int
    # a token the kubelet asked for a pod (TokenRequest's boundObjectRef): that pod's name and uid
    pod_name: str = ""
    pod_uid: str = ""


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def verify(token: str, public_keys: list, issuers: list[str], audiences: list[str],
           now: float | None = None) -> Claims:
    """The token's ServiceAccount claims once signature, issuer, audience and
    times check out; Invalid otherwise."""
    try:
        header, claims, signing_input, sig = jws.decode(token)
    except ValueError as e:
        raise Invalid(f"malformed token: {e}") from None
    if header.get("alg") != "RS256":
        raise Invalid(f"unsupported alg {header.get('alg')!r}")
    if claims.get("iss") not in issuers:
        raise Invalid("issuer not accepted")  # perhaps another authenticator's
    if not any(jws.verify("RS256", key, signing_input, sig) for key in public_keys):
        raise Invalid("signature does not verify with any --service-account-key-file key")
    now = time.time() if now is None else now
    exp, nbf = claims.get("exp"), claims.get("nbf", 0)
    if not isinstance(exp, (int, float)) or now > exp + LEEWAY:
        raise Invalid("token has expired")
    if isinstance(nbf, (int, float)) and now + LEEWAY < nbf:
        raise Invalid("token is not valid yet")
    aud = claims.get("aud")
    aud = [aud] if isinstance(aud, str) else list(aud or [])
    if not set(aud) & set(audiences):
        raise Invalid("token audiences are not accepted")
    k8s = claims.get("kubernetes.io") or {}
    sa = k8s.get("serviceaccount") or {}
    sub = claims.get("sub", "")
    ns, name = k8s.get("namespace", ""), sa.get("name", "")
    if not ns or not name or sub != f"system:serviceaccount:{ns}:{name}":
        raise Invalid("not a ServiceAccount token")
    pod = k8s.get("pod") if isinstance(k8s.get("pod"), dict) else {}
    return Claims(ns, name, sa.get("uid", ""), aud, int(exp), pod.get("name", ""), pod.get("uid", ""))
