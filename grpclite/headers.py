"""Reading request header blocks: HPACK decoding, remembered per table state, and gRPC's request fields.

Decoding HPACK in Python costs more than the rest of a small call, and a peer
repeats the same block (for the same method, or the same status) once its
dynamic table holds the fields: CachedHeaderDecoder decodes such a block once.
"""

from __future__ import annotations

import base64

import hpack
from hpack.table import HeaderTable

_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


class _VersionedTable(HeaderTable):
    """HPACK's dynamic table, counting its changes (for the header cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def add(self, name: bytes, value: bytes):
        self.version += 1
        return super().add(name, value)

    @property
    def maxsize(self) -> int:
        return HeaderTable.maxsize.fget(self)

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.version += 1
        HeaderTable.maxsize.fset(self, newmax)


class CachedHeaderDecoder:
    """HPACK decoding with the result of a header block remembered.

    A block that did not change the dynamic table means the same again as
    long as the table stays as it is, so its parsed form is remembered until
    the table changes. The cache holds at most max_entries blocks of max_bytes
    in all (a client sending large distinct blocks must not make it hold them)."""

    def __init__(self, max_entries: int, max_header_list_size: int | None = None, max_bytes: int = 1 << 20):
        self.decoder = hpack.Decoder()
        if max_header_list_size is not None:
            self.decoder.max_header_list_size = max_header_list_size
        self.table = self.decoder.header_table = _VersionedTable()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.cache: dict[bytes, object] = {}
        self.cached_bytes = 0
        self.version = 0

    def decode(self, block: bytes, parse):
        """parse(list of (name, value) bytes) of the block, from the cache when
        it can be; hpack's errors pass through."""
        if self.table.version != self.version:
            self.cache.clear()
            self.cached_bytes = 0
            self.version = self.table.version
        parsed = self.cache.get(block)
        if parsed is None:
            parsed = parse(self.decoder.decode(block, raw=True))
            if self.table.version == self.version and len(self.cache) < self.max_entries \
                    and self.cached_bytes + len(block) <= self.max_bytes:
                self.cache[block] = parsed
                self.cached_bytes += len(block)
        return parsed


def parse_request_headers(headers) -> tuple:
    """(path, timeout, encoding, metadata, not_grpc) of a request's header fields; not_grpc is None,
    or the content-type when it is not gRPC's (application/grpc, or with +subtype or ;parameters)."""
    path = b""
    content_type = b""
    timeout = None
    encoding = b""
    metadata = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":path":
                path = value
        elif name == b"grpc-timeout":
            try:
                timeout = int(value[:-1]) * _TIMEOUT_UNITS[value[-1:]]
            except (ValueError, KeyError):
                timeout = None
        elif name == b"grpc-encoding":
            encoding = value
        elif name == b"content-type":
            content_type = value
        elif name not in (b"te", b"content-type", b"user-agent", b"grpc-accept-encoding"):
            metadata.append((name.decode("latin-1"), _b64decode(value) if name.endswith(b"-bin")
                             else value.decode("latin-1")))
    not_grpc = None
    if content_type[:16] != b"application/grpc" or content_type[16:17] not in (b"", b"+", b";"):
        not_grpc = content_type
    return path.decode("latin-1"), timeout, encoding, tuple(metadata), not_grpc


def _b64decode(value: bytes) -> bytes:
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return value
