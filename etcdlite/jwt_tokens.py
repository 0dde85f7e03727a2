"""etcd's JWT auth tokens (`--auth-token jwt,priv-key=...,sign-method=...`).

A JWT names its user and the auth revision it was given at, signed by the
member that answered Authenticate; any member holding the key (or only the
public key: a verify-only member) accepts it without having seen it, and it
survives restarts. So unlike simple tokens nothing is kept per token: a token
is alive until its `exp` (`ttl` after it was signed, not after its last use),
and refused as "revision of auth store is old" once users or roles change, at
which etcd's clients authenticate again.

As etcd 3.4 (checked against its binary): the header is `{"alg":..,"typ":"JWT"}`,
the claims `{"exp":..,"revision":..,"username":..}` in that order; methods
HS256/384/512 (the priv-key file's bytes are the secret), RS256/384/512,
PS256/384/512, ES256/384/512; options `sign-method` (required), `priv-key`,
`pub-key`, `ttl` (a Go duration, 5m by default), unknown options ignored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import jws
from etcdlite import errors
from etcdlite.config import ConfigError, parse_duration

# etcd's texts for a bad --auth-token (it exits with them)
INVALID_OPTS = "auth: invalid auth options"
MISSING_KEY = "auth: missing key data"
VERIFY_ONLY = errors.EtcdError(grpc.StatusCode.UNKNOWN, "auth: token signing attempted with verify-only key")

DEFAULT_TTL = 300.0
# verified tokens remembered (a signature check costs tens of µs; a hit, a dict lookup)
CACHE_ENTRIES = 4096
# a token longer than this is not parsed (the longest etcd signs: RS512 with a 8192-bit key, ~1.5 KB)
MAX_TOKEN_BYTES = 8192


@dataclass(frozen=True)
class Claims:
    username: str
    revision: int
    exp: float | None


class JWTTokens:
    """Signs and checks one member's tokens."""

    def __init__(self, method: str, private, public, ttl: float):
        self.method = method
        self.ttl = ttl
        self._private = private  # bytes (HMAC secret), RSA or EC private key, or None: verify-only
        self._public = public  # bytes, RSA or EC public key
        self._cache: dict[str, Claims] = {}

    @property
    def verify_only(self) -> bool:
        return self._private is None

    def assign(self, username: str, revision: int, now: float | None = None) -> str:
        if self._private is None:
            raise VERIFY_ONLY
        now = time.time() if now is None else now
        claims = {"exp": int(now + self.ttl), "revision": revision, "username": username}
        return jws.encode({"alg": self.method, "typ": "JWT"}, claims, self._private, sort_keys=True)

    def info(self, token: str, now: float | None = None) -> Claims | None:
        """The token's claims if it is ours, well-formed and not expired."""
        now = time.time() if now is None else now
        claims = self._cache.get(token)
        if claims is None:
            claims = self._parse(token)
            if claims is None:
                return None
            if len(self._cache) >= CACHE_ENTRIES:
                del self._cache[next(iter(self._cache))]
            self._cache[token] = claims
        if claims.exp is not None and int(now) > claims.exp:  # whole seconds, as jwt-go
            self._cache.pop(token, None)
            return None
        return claims

    def _parse(self, token: str) -> Claims | None:
        if len(token) > MAX_TOKEN_BYTES:
            return None
        try:
            header, claims, signed, signature = jws.decode(token)
        except ValueError:
            return None
        if header.get("alg") != self.method or not jws.verify(self.method, self._public, signed, signature):
            return None
        username, revision, exp = claims.get("username"), claims.get("revision"), claims.get("exp")
        if not isinstance(username, str) or isinstance(revision, bool) or not isinstance(revision, (int, float)):
            return None
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, (int, float))):
            return None
        return Claims(username, int(revision), exp)


# --- --auth-token ------------------------------------------------------------

def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise ConfigError(f"--auth-token: cannot read {path}: {err.strerror}") from None


def _private_key(data: bytes, kind, what: str):
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, kind):
        raise ConfigError(f"--auth-token: priv-key is not a valid {what} private key (PEM, unencrypted)")
    return key


def _public_key(data: bytes, kind, what: str):
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = x509.load_pem_x509_certificate(data).public_key()
        except ValueError:
            key = None
    if not isinstance(key, kind):
        raise ConfigError(f"--auth-token: pub-key is not a valid {what} public key (PEM)")
    return key


def tokens_from_spec(spec: str) -> JWTTokens | None:
    """None for etcd's `simple` tokens; the JWT signer/checker for `jwt,...`;
    ConfigError (etcd's text and what to do) for anything else."""
    kind, _, rest = spec.partition(",")
    if kind == "simple":
        return None
    if kind != "jwt":
        raise ConfigError(f"--auth-token {spec!r}: unknown token type {kind!r} (simple or jwt,...)")
    opts = dict(o.partition("=")[::2] for o in rest.split(",") if o)
    try:
        ttl = parse_duration(opts["ttl"]) if opts.get("ttl") else DEFAULT_TTL
    except ConfigError:
        ttl = 0.0
    if ttl <= 0:
        raise ConfigError(f"{INVALID_OPTS}: ttl {opts['ttl']!r} is not a positive duration such as 5m or 30s")
    method = opts.get("sign-method", "")
    m = jws.ALGORITHM.fullmatch(method)
    if not m:
        raise ConfigError(f"{INVALID_OPTS}: sign-method {method!r} is not one of "
                          "HS256/384/512, RS256/384/512, PS256/384/512, ES256/384/512")
    family, bits = m.groups()
    priv = _read(opts["priv-key"]) if opts.get("priv-key") else b""
    pub = _read(opts["pub-key"]) if opts.get("pub-key") else b""
    if family == "HS":
        if not priv:
            raise ConfigError(f"{MISSING_KEY}: HMAC methods take the secret from priv-key=FILE")
        return JWTTokens(method, priv, priv, ttl)
    if family in ("RS", "PS"):
        kinds, what = (rsa.RSAPrivateKey, rsa.RSAPublicKey), "RSA"
    else:
        kinds, what = (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "ECDSA"
    private = _private_key(priv, kinds[0], what) if priv else None
    public = _public_key(pub, kinds[1], what) if pub else None
    if private is None and public is None:
        raise ConfigError(f"{MISSING_KEY}: give priv-key=FILE (or pub-key=FILE for a verify-only member)")
    if private is not None:
        mine = private.public_key()
        if public is not None and mine.public_numbers() != public.public_numbers():
            raise ConfigError("--auth-token: public and private keys don't match")
        public = mine
    if family == "ES" and not isinstance(public.curve, jws.CURVES[bits][0]):
        raise ConfigError(f"--auth-token: {method} needs a key on curve {jws.CURVES[bits][0].name}, "
                          f"not {public.curve.name}")
    return JWTTokens(method, private, public, ttl)
