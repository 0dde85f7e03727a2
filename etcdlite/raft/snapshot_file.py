"""How pysyncobj's snapshot file is written and read: a plain pickle, not
gzipped, framed with a header and a trailer holding its length and CRC-32.

pysyncobj writes its snapshot (the whole state, pickled) through gzip at level 9,
and reads it back through gzip. A member's state is mostly values clients gave it
and whose compressibility is theirs to choose; at a million keys of 256 random bytes
gzip took most of the time to write a snapshot (level 9: 68 s, level 1: 25 s, the
pickling itself 14 s) and to read one at start-up (gunzip 7.5 s of 20 s), for 12%
less disk (measured: benchmarks/why.md). `install` gives pysyncobj's serializer
module a `gzip` whose files for writing write the pickle between a header and a
trailer (`_ChecksummedWriter`), and whose files for reading are gzip's when the
file starts with gzip's magic bytes (a snapshot written by an etcdlite of before
plain snapshots, or by pysyncobj itself), the pickle after the header when it starts
with `MAGIC`, else the plain file (a plain snapshot of before checksums): all load.

The checksum is checked before a snapshot is loaded (`verify`): at start-up
(`etcdlite.raft.node`), where a damaged snapshot refuses to start, and when one
received from the leader is installed. pysyncobj catches every error of its load
and goes on with the journal alone, which would apply entries after the snapshot
to an empty state.

A member of an older etcdlite cannot read a snapshot written this way (sent to it by
a leader, or left in its data directory): members of one cluster run one version.
"""

from __future__ import annotations

import contextlib
import gzip
import struct
import zlib

import pysyncobj.serializer

GZIP_MAGIC = b"\x1f\x8b"
PICKLE_PROTO = b"\x80"  # a plain pickle's first byte (protocol 2 and later)
MAGIC = b"ETCDLITE SNAPSHOT\0\0\0"  # then the format version (u32)
FORMAT_VERSION = 2
_HEADER = struct.Struct("<20sI")
_TRAILER = struct.Struct("<QI4s")  # the pickle's length, its CRC-32, END_MAGIC
END_MAGIC = b"END."
_CHUNK = 1 << 20


class SnapshotCorrupt(OSError):
    """A snapshot whose bytes are not what was written: loading it would
    give the member a state no other member has."""


class _ChecksummedWriter:
    """The file pickle.dump writes a snapshot to: the header, then every
    write counted into the length and CRC-32 of the trailer written last
    (only if the pickling ended well: a snapshot cut short has none)."""

    def __init__(self, fileobj) -> None:
        self._f = fileobj
        self._crc = 0
        self._length = 0

    def __enter__(self):
        self._f.write(_HEADER.pack(MAGIC, FORMAT_VERSION))
        return self

    def write(self, data) -> int:
        n = self._f.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self._length += memoryview(data).nbytes
        return n

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._f.write(_TRAILER.pack(self._length, self._crc, END_MAGIC))


class _SnapshotGzip:
    """The `gzip` module as pysyncobj's serializer uses it (GzipFile only)."""

    @staticmethod
    def GzipFile(filename=None, mode=None, compresslevel=9, fileobj=None, mtime=None):
        if fileobj is None:
            raise ValueError("etcdlite's snapshot files: pysyncobj passes an open file")
        if mode is not None and ("w" in mode or "a" in mode):
            return _ChecksummedWriter(fileobj)
        at = fileobj.tell()
        head = fileobj.read(_HEADER.size)
        if head[:2] == GZIP_MAGIC:
            fileobj.seek(at)
            return gzip.GzipFile(fileobj=fileobj, mode="rb")
        if head[:len(MAGIC)] == MAGIC:
            return contextlib.nullcontext(fileobj)  # the pickle ends before the trailer
        fileobj.seek(at)
        return contextlib.nullcontext(fileobj)


def verify(path: str) -> bool:
    """Check the snapshot at `path` against its checksum; whether it has one
    (a snapshot of an older etcdlite, gzipped or plain, has none and is not
    checked). Raises SnapshotCorrupt saying what is wrong."""
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
        if head[:2] == GZIP_MAGIC or head[:1] == PICKLE_PROTO:
            return False
        if head[:len(MAGIC)] != MAGIC:
            raise SnapshotCorrupt(f"raft snapshot {path}: not a snapshot (it starts with {head[:8]!r}): damaged")
        version = _HEADER.unpack(head)[1] if len(head) == _HEADER.size else 0
        if version != FORMAT_VERSION:
            raise SnapshotCorrupt(f"raft snapshot {path}: format {version}, not {FORMAT_VERSION}: "
                                  f"written by another etcdlite version, or damaged")
        size = f.seek(0, 2)
        if size < _HEADER.size + _TRAILER.size:
            raise SnapshotCorrupt(f"raft snapshot {path}: {size} bytes, too short to hold a snapshot")
        f.seek(size - _TRAILER.size)
        length, crc, end = _TRAILER.unpack(f.read(_TRAILER.size))
        body = size - _HEADER.size - _TRAILER.size
        if end != END_MAGIC or length != body:
            raise SnapshotCorrupt(f"raft snapshot {path}: its trailer does not match its size ({size} bytes): "
                                  f"cut short or damaged")
        f.seek(_HEADER.size)
        got = 0
        while body:
            chunk = f.read(min(_CHUNK, body))
            if not chunk:
                break
            got = zlib.crc32(chunk, got)
            body -= len(chunk)
        if got != crc:
            raise SnapshotCorrupt(f"raft snapshot {path} fails its checksum (CRC-32 {got:#010x}, written "
                                  f"{crc:#010x}): its bytes changed since it was written")
    return True


def install() -> None:
    pysyncobj.serializer.gzip = _SnapshotGzip
