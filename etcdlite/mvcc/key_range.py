"""etcd's conventions for a (key, range_end) pair, resolved once into plain bounds.

- ``range_end == b""``: the single key ``key``.
- ``range_end == b"\\x00"``: every key >= ``key``; with ``key == b"\\x00"`` too, every key.
- otherwise the half-open interval ``[key, range_end)``, empty when ``range_end <= key``.
"""

from __future__ import annotations

ALL_FROM = b"\x00"


class KeySpan:
    """Kinds a (key, range_end) pair resolves to; see ``resolve``."""

    SINGLE = 0
    INTERVAL = 1
    EMPTY = 2


def resolve(key: bytes, range_end: bytes) -> tuple[int, bytes, bytes | None]:
    """Return ``(kind, start, end)``; for INTERVAL, ``end`` None means unbounded above."""
    if not range_end:
        return KeySpan.SINGLE, key, None
    if range_end == ALL_FROM:
        return KeySpan.INTERVAL, (b"" if key == ALL_FROM else key), None
    if range_end <= key:
        return KeySpan.EMPTY, key, range_end
    return KeySpan.INTERVAL, key, range_end


def contains(key: bytes, range_end: bytes, candidate: bytes) -> bool:
    """Whether ``candidate`` falls in the range named by (key, range_end)."""
    kind, start, end = resolve(key, range_end)
    if kind == KeySpan.SINGLE:
        return candidate == start
    if kind == KeySpan.EMPTY:
        return False
    return candidate >= start and (end is None or candidate < end)
