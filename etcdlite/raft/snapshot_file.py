"""How pysyncobj's snapshot file is written and read: a plain pickle, not gzipped.

pysyncobj writes its snapshot (the whole state, pickled) through gzip at level 9,
and reads it back through gzip. A member's state is mostly values clients gave it
and whose compressibility is theirs to choose; at a million keys of 256 random bytes
gzip took most of the time to write a snapshot (level 9: 68 s, level 1: 25 s, the
pickling itself 14 s) and to read one at start-up (gunzip 7.5 s of 20 s), for 12%
less disk (measured: benchmarks/why.md). `install` gives pysyncobj's serializer
module a `gzip` whose files for writing are the plain file, and whose files for
reading are gzip's when the file starts with gzip's magic bytes (a snapshot written
before this, or by pysyncobj itself), else the plain file: both kinds load.

A member of an older etcdlite cannot read a snapshot written this way (sent to it by
a leader, or left in its data directory): members of one cluster run one version.
"""

from __future__ import annotations

import contextlib
import gzip

import pysyncobj.serializer

GZIP_MAGIC = b"\x1f\x8b"


class _SnapshotGzip:
    """The `gzip` module as pysyncobj's serializer uses it (GzipFile only)."""

    @staticmethod
    def GzipFile(filename=None, mode=None, compresslevel=9, fileobj=None, mtime=None):
        if fileobj is None:
            raise ValueError("etcdlite's snapshot files: pysyncobj passes an open file")
        if mode is not None and ("w" in mode or "a" in mode):
            return contextlib.nullcontext(fileobj)
        at = fileobj.tell()
        head = fileobj.read(2)
        fileobj.seek(at)
        if head == GZIP_MAGIC:
            return gzip.GzipFile(fileobj=fileobj, mode="rb")
        return contextlib.nullcontext(fileobj)


def install() -> None:
    pysyncobj.serializer.gzip = _SnapshotGzip
