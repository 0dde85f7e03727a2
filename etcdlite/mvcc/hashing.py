"""Checksums of a store's history, identical on every member that applied the same calls."""

from __future__ import annotations

import struct
import zlib
from typing import Iterable

from .key_history import Record

# Per record: main, sub, create_revision, version, lease, key length, value length; then the
# key bytes and the value bytes. Lengths make the encoding unambiguous.
_RECORD = struct.Struct(">qqqqqII")
_HEADER = struct.Struct(">qq")


def hash_history(history: dict[bytes, list[Record]], keys: Iterable[bytes], upto: int,
                 header: tuple[int, int] | None = None, crc: int = 0) -> int:
    """crc32 over every record with main revision <= ``upto``, keys in ``keys`` order, going
    on from ``crc`` (the crc of the keys before them).

    ``header`` (two ints), when given, is hashed first.
    """
    if header is not None:
        crc = zlib.crc32(_HEADER.pack(*header), crc)
    pack = _RECORD.pack
    for key in keys:
        chunk = bytearray()
        for main, sub, create, version, value, lease in history[key]:
            if main > upto:
                break
            chunk += pack(main, sub, create, version, lease, len(key), len(value))
            chunk += key
            chunk += value
        if chunk:
            crc = zlib.crc32(chunk, crc)
    return crc
