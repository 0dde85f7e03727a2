"""Password hashes for etcd's users: made by the member that proposes a
UserAdd or UserChangePassword (so the plaintext never enters the Raft log,
and every member stores the same hash), checked by the member that serves
an Authenticate.

etcd hashes with bcrypt at cost 10; the standard library has no bcrypt, so
etcdlite uses scrypt (hashlib), which is memory-hard where PBKDF2 is not (a
GPU or ASIC guessing passwords pays for 16 MiB per guess), with its cost set
to take about what bcrypt cost 10 takes: tens of milliseconds a hash
(measured: benchmarks/why.md). That is the point, and it bounds
Authenticate's throughput the same way as etcd's: the hashing runs in a
worker thread (hashlib releases the GIL), so it slows only the calls that
hash.

The stored form names its parameters, so a later cost can read older hashes:
``scrypt$<log2 N>$<r>$<p>$<salt, base64>$<key, base64>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

# N = 2**14, r = 8: 16 MiB a hash, and about bcrypt cost 10's time
DEFAULT_LOG2_N = 14
_R, _P = 8, 1
_SALT_BYTES = 16
_KEY_BYTES = 32
_PREFIX = "scrypt"


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p,
                          maxmem=2 * 128 * r * n + (1 << 20), dklen=_KEY_BYTES)


def hash_password(password: str, log2_n: int = DEFAULT_LOG2_N) -> str:
    """A new salted hash of `password` (slow by design: call it off the loop)."""
    salt = os.urandom(_SALT_BYTES)
    key = _scrypt(password, salt, log2_n, _R, _P)
    b64 = base64.b64encode
    return f"{_PREFIX}${log2_n}${_R}${_P}${b64(salt).decode()}${b64(key).decode()}"


def check_password(password: str, stored: bytes | str) -> bool:
    """Whether `password` is the one `stored` was made from; False for a
    hash in any other form (slow by design: call it off the loop)."""
    if isinstance(stored, bytes):
        stored = stored.decode("ascii", "replace")
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _PREFIX:
        return False
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = base64.b64decode(parts[4]), base64.b64decode(parts[5])
        if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p), key)
    except ValueError:
        return False
