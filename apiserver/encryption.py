"""Encryption at rest for the values of sensitive resources (Secrets).

Shaped like kube-apiserver's EncryptionConfiguration providers: a stored value
names its provider in a plain-text prefix, ``k8s:enc:aesgcm:v1:<key name>:``,
then the AES-GCM nonce and ciphertext. The etcd key is the authenticated
context, so a value copied under another key does not decrypt.

Key file (``--encryption-key-file``): one key a line, ``name:base64-key``
(16, 24 or 32 bytes: AES-128/192/256); blank lines and ``#`` comments are
skipped. The first key encrypts new writes; every key decrypts, so a key is
rotated by putting a new one first, rewriting the Secrets, then dropping the
old line.

A value without the ``k8s:enc:`` prefix was written before encryption was
turned on; every transformer reads it as is (kube's ``identity`` provider
listed after ``aesgcm``), and the next write stores it encrypted.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENCRYPTED_PREFIX = b"k8s:enc:"
AESGCM_PREFIX = b"k8s:enc:aesgcm:v1:"
NONCE_SIZE = 12
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TransformError(Exception):
    """A stored value cannot be decrypted (unknown key, tampered data, wrong
    context), or a key file is unusable. The message says which."""


class Transformer(Protocol):
    """Turns an object's encoded bytes into what is stored in etcd and back.
    ``context`` is the etcd key: authenticated, never stored."""

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes: ...

    def decrypt(self, stored: bytes, context: bytes) -> bytes: ...


class IdentityTransformer:
    """No encryption configured: values are stored as they are. An encrypted
    value cannot be read without its key."""

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes:
        return plaintext

    def decrypt(self, stored: bytes, context: bytes) -> bytes:
        if stored.startswith(ENCRYPTED_PREFIX):
            raise TransformError(
                f"the value is encrypted ({_provider_of(stored)}) but no encryption key is configured")
        return stored


class AESGCMTransformer:
    """AES-GCM with named keys: the first encrypts, all decrypt."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise TransformError("no encryption keys given")
        self._keys: dict[str, AESGCM] = {}
        for name, secret in keys:
            if not _KEY_NAME.match(name):
                raise TransformError(f"bad encryption key name {name!r} (want letters, digits, '_', '.', '-')")
            if name in self._keys:
                raise TransformError(f"encryption key {name!r} is given twice")
            if len(secret) not in (16, 24, 32):
                raise TransformError(f"encryption key {name!r} is {len(secret)} bytes; AES-GCM wants 16, 24 or 32")
            self._keys[name] = AESGCM(secret)
        self.write_key = keys[0][0]

    @classmethod
    def from_key_file(cls, path: str | os.PathLike) -> "AESGCMTransformer":
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise TransformError(f"cannot read encryption key file {path}: {e.strerror or e}") from None
        keys = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, encoded = line.partition(":")
            if not sep:
                raise TransformError(f"{path}:{number}: want 'name:base64-key'")
            try:
                secret = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise TransformError(f"{path}:{number}: key {name.strip()!r} is not valid base64") from None
            keys.append((name.strip(), secret))
        if not keys:
            raise TransformError(f"encryption key file {path} holds no key")
        return cls(keys)

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        sealed = self._keys[self.write_key].encrypt(nonce, plaintext, context)
        return AESGCM_PREFIX + self.write_key.encode() + b":" + nonce + sealed

    def decrypt(self, stored: bytes, context: bytes) -> bytes:
        if not stored.startswith(ENCRYPTED_PREFIX):
            return stored  # written before encryption was configured
        if not stored.startswith(AESGCM_PREFIX):
            raise TransformError(f"the value is encrypted by an unknown provider ({_provider_of(stored)})")
        name, sep, body = stored[len(AESGCM_PREFIX):].partition(b":")
        key = self._keys.get(name.decode("utf-8", "replace")) if sep else None
        if key is None:
            raise TransformError(
                f"the value is encrypted with key {name.decode('utf-8', 'replace')!r}, which is not configured")
        if len(body) < NONCE_SIZE + 16:
            raise TransformError("the encrypted value is truncated")
        try:
            return key.decrypt(body[:NONCE_SIZE], body[NONCE_SIZE:], context)
        except InvalidTag:
            raise TransformError(
                "the encrypted value does not authenticate: wrong key, tampered data, "
                "or a value copied from another key") from None


def _provider_of(stored: bytes) -> str:
    # "k8s:enc:aesgcm:v1:name:" -> "aesgcm:v1:name", never the ciphertext
    parts = stored[len(ENCRYPTED_PREFIX):].split(b":", 3)
    return ":".join(p.decode("utf-8", "replace") for p in parts[:3])


def generate_key_file(path: str | os.PathLike, name: str = "key1") -> Path:
    """Writes a new key file with one random 32-byte key (mode 0600); returns its path."""
    if not _KEY_NAME.match(name):
        raise TransformError(f"bad encryption key name {name!r}")
    path = Path(path)
    line = f"{name}:{base64.b64encode(os.urandom(32)).decode()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(line)
    return path


def load_transformer(key_file: str | os.PathLike | None) -> Transformer:
    """The transformer for ``--encryption-key-file``: AES-GCM when a file is
    given, identity (Secrets stored plain, as Kubernetes without an
    EncryptionConfiguration) when not."""
    if not key_file:
        return IdentityTransformer()
    return AESGCMTransformer.from_key_file(key_file)
