"""JSON Web Signatures in compact form (RFC 7515: three base64url parts,
`header.payload.signature`) with the algorithms of RFC 7518 that etcd's and
Kubernetes' tokens use: HS, RS, PS and ES with SHA-256/384/512.

Shared by etcdlite's auth tokens (etcdlite.jwt_tokens) and the apiserver's
ServiceAccount tokens (apiserver.auth.tokens): each layer owns its claims and
rules, this only encodes, signs and checks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

ALGORITHM = re.compile(r"(HS|RS|PS|ES)(256|384|512)")
_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_HASHLIB = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
# ES: the curve each size names, and the bytes of each of r and s in the signature
CURVES = {"256": (ec.SECP256R1, 32), "384": (ec.SECP384R1, 48), "512": (ec.SECP521R1, 66)}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(obj: dict, sort_keys: bool) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=sort_keys).encode()


def sign(alg: str, key, data: bytes) -> bytes:
    """`key`: the HMAC secret (bytes), or an RSA / EC private key."""
    family, bits = ALGORITHM.fullmatch(alg).groups()
    if family == "HS":
        return hmac.new(key, data, _HASHLIB[bits]).digest()
    digest = _HASHES[bits]
    if family == "RS":
        return key.sign(data, padding.PKCS1v15(), digest())
    if family == "PS":
        return key.sign(data, padding.PSS(padding.MGF1(digest()), digest.digest_size), digest())
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest())))
    n = CURVES[bits][1]
    return r.to_bytes(n, "big") + s.to_bytes(n, "big")


def verify(alg: str, key, data: bytes, signature: bytes) -> bool:
    """`key`: the HMAC secret (bytes), or an RSA / EC public key."""
    m = ALGORITHM.fullmatch(alg)
    if not m:
        return False
    family, bits = m.groups()
    if family == "HS":
        return hmac.compare_digest(hmac.new(key, data, _HASHLIB[bits]).digest(), signature)
    digest = _HASHES[bits]
    try:
        if family == "RS":
            key.verify(signature, data, padding.PKCS1v15(), digest())
        elif family == "PS":
            key.verify(signature, data, padding.PSS(padding.MGF1(digest()), padding.PSS.AUTO), digest())
        else:
            n = CURVES[bits][1]
            if len(signature) != 2 * n:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big"))
            key.verify(der, data, ec.ECDSA(digest()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def encode(header: dict, claims: dict, key, *, sort_keys: bool = False) -> str:
    """The signed token; `header["alg"]` names the algorithm. `sort_keys`:
    the JSON objects' keys in order, as Go's encoding/json writes a map."""
    signing_input = f"{b64(_json(header, sort_keys))}.{b64(_json(claims, sort_keys))}"
    return f"{signing_input}.{b64(sign(header['alg'], key, signing_input.encode()))}"


def decode(token: str) -> tuple[dict, dict, bytes, bytes]:
    """(header, claims, signing input, signature), unchecked; ValueError
    when the token is not three parts of base64url JSON objects."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not three dot-separated parts")
    try:
        header, claims = json.loads(unb64(parts[0])), json.loads(unb64(parts[1]))
        signature = unb64(parts[2])
    except (binascii.Error, UnicodeDecodeError) as e:
        raise ValueError(str(e)) from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("header or claims not a JSON object")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), signature
