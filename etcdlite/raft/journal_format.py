"""etcdlite's Raft journal format, and reading a journal at start.

The format (version 2) and the records' checksums are what let a restart tell
what a power loss can leave (a torn tail: records written after the last sync,
some of their sectors missing), which is cut as etcd's WAL repair cuts it,
from damage to what was synced, which refuses to start (`JournalCorrupt`).
`JournalReader` is that reading: a mixin of `etcdlite.raft.journal.LeanJournal`,
whose file (`_file`, a `JournalFile`), path and entry index (`_reset`,
`_offsets`...) it fills; writing stays there.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib

from pysyncobj.journal import FIRST_RECORD_OFFSET, LAST_RECORD_OFFSET_OFFSET

from . import durable

log = logging.getLogger("etcdlite.raft")

# --- the file ----------------------------------------------------------------
#
# etcdlite's format (version 2), what every journal is written in:
#   header, 32 bytes: MAGIC (24 bytes), the format version (u32), CRC-32 of
#   those 28 bytes (u32); then records, each at a multiple of 8 bytes:
#   CRC-32 (u32) of the rest of the record (head and command), the record's
#   length (u32, head and command, not the padding), index (u64), term (u64),
#   kind (u32: ENTRY, or TRUNCATE: the entries from `index` on are gone),
#   zero (u32), the command, zeros to the next multiple of 8; then zeros
#   (allocated ahead) to the end of the file.
# pysyncobj's FileJournal format (version 1: its header says PYSYNCOBJ),
# without checksums, is read once and written again in this one (`_upgrade`).

MAGIC = b"ETCDLITE RAFT JOURNAL".ljust(24, b"\0")
FORMAT_VERSION = 2
_HEADER = struct.Struct("<24sII")  # MAGIC, version, CRC-32 of the two
_HEAD = struct.Struct("<IIQQII")  # crc, length, index, term, kind, zero
_CRC = struct.Struct("<I")
_REST = struct.Struct("<IQQII")  # the head after its crc: what the crc covers, with the command
ENTRY, TRUNCATE = 1, 2
FIRST_RECORD = _HEADER.size
# a disk writes a sector whole or not at all (at a power loss, what was not
# synced may be missing sector by sector): how a torn record is told apart
SECTOR = 512
_ZERO_HEAD = bytes(_HEAD.size)
# a bad last record whose head's length points past its data is tried with the
# lengths that end it where its data ends, and up to this many bytes later (a
# command ending in zero bytes): one that makes its checksum right shows the
# record whole, its length damaged (a torn record's checksum stays wrong)
LENGTH_SLACK = 64
_NONZERO = re.compile(rb"[^\x00]")

# pysyncobj's format
_V1_HEAD = struct.Struct("<IQQ")  # record size, then the entry's index and term
_OFFSET = struct.Struct("<I")


def journal_header() -> bytes:
    head = MAGIC + struct.pack("<I", FORMAT_VERSION)
    return head + _CRC.pack(zlib.crc32(head))


def encode_record(kind: int, idx: int, term: int, command: bytes) -> bytes:
    length = _HEAD.size + len(command)
    rest = _REST.pack(length, idx, term, kind, 0)
    return b"".join((_CRC.pack(zlib.crc32(command, zlib.crc32(rest))), rest, command, bytes(-length % 8)))


class JournalCorrupt(OSError):
    """The journal holds damage that a power loss does not explain (records
    that were synced, or a header that is not a journal's): the member must
    not start from it, since it would forget or invent committed entries."""


def _is_head(head: bytes) -> bool:
    """Whether `head` can be a record's head (its checksum aside)."""
    _, length, _, _, kind, zero = _HEAD.unpack(head)
    return length >= _HEAD.size and kind in (ENTRY, TRUNCATE) and not zero


def _padded(length: int) -> int:
    return length + (-length % 8)


RECOVER = ("To recover, as etcd advises for a damaged member: remove this member from the cluster "
            "(etcdctl member remove <id>), move its data directory away, add it back (etcdctl member add, then "
            "start it with --initial-cluster-state=existing) and it copies everything from the others; a "
            "cluster of one member is restored from a backup (etcdctl snapshot restore) instead.")


class JournalReader:
    """Reading a journal's records at start and judging a bad one (see the
    module's docstring)."""


    def _scan(self) -> None:
        """Index the entries the file holds, checking every record.

        Reading stops at the first record that is not whole and right: its
        head is zeros (the end, or a sector lost), it runs past the file's
        end, its checksum does not match, or its index does not follow. If
        nothing but zeros follows it, it is the end; else it is judged by
        `_bad_record`, as etcd's WAL repair: a torn tail (written after the
        last sync: never acknowledged by this member; it lacks a sector, or
        the file ends inside it) is cut with a warning; any other damage,
        in the last record too, may be to data that was synced, and the
        journal is refused (`JournalCorrupt`)."""
        self._reset()
        size = self._file.size()
        offset = FIRST_RECORD
        problem = None
        whole = False  # the bad record is whole, its checksum right (out of sequence)
        while True:
            if offset + _HEAD.size > size:
                problem = "runs past the end of the file" if self._data_end(offset) > offset else None
                break
            head = self._file.read(offset, _HEAD.size)
            if head == _ZERO_HEAD:
                problem = "is zeros (a sector never written)" if self._data_end(offset) > offset else None
                break
            record, problem = self._record_at(offset, size, head)
            if record is None:
                break
            length, idx, term, kind = record
            problem = self._take(offset, length, idx, term, kind)
            if problem:
                whole = True
                break
            offset += _padded(length)
        self._end = offset
        if problem:
            self._bad_record(offset, problem, size, whole)
        if self._offsets:
            self._head = self._read(0)
        self.synced_index = self._indexes[-1] if self._indexes else 0

    def _record_at(self, offset: int, size: int, head: bytes | None = None):
        """(length, index, term, kind) of a whole record with its checksum
        right at `offset`, and None; or None and what is wrong there."""
        if head is None:
            head = self._file.read(offset, _HEAD.size)
        if not _is_head(head):
            return None, "has no record's head"
        crc, length, idx, term, kind, zero = _HEAD.unpack(head)
        if offset + length > size:
            return None, "runs past the end of the file"
        command = self._file.read(offset + _HEAD.size, length - _HEAD.size)
        if zlib.crc32(command, zlib.crc32(head[4:])) != crc:
            return None, "fails its checksum"
        return (length, idx, term, kind), None

    def _take(self, offset: int, length: int, idx: int, term: int, kind: int) -> str | None:
        """Apply a good record to the index of entries; what is wrong with
        its place in the sequence, if anything."""
        if kind == TRUNCATE:
            if not self._indexes:
                return None
            at = idx - self._indexes[0]
            if not 0 <= at <= len(self._indexes):
                return f"removes entries from index {idx}, which the journal does not hold"
            del self._offsets[at:], self._lengths[at:], self._indexes[at:], self._terms[at:]
            return None
        if self._indexes and (idx != self._indexes[-1] + 1 or term < self._terms[-1]):
            return (f"holds index {idx} term {term} after index {self._indexes[-1]} "
                    f"term {self._terms[-1]}")
        self._offsets.append(offset)
        self._lengths.append(length - _HEAD.size)
        self._indexes.append(idx)
        self._terms.append(term)
        return None

    def _data_end(self, start: int) -> int:
        """Where the file's last non-zero byte after `start` ends (`start` if none)."""
        size = self._file.size()
        if size <= start:
            return start
        data = self._file.read(start, size - start)
        return start + len(data.rstrip(b"\0"))

    def _next_good(self, start: int, stop: int, size: int) -> int | None:
        """The offset of the first good record (whole, its checksum right)
        between `start` and `stop`, looked for at every multiple of 8."""
        base = start + (-start % 8)
        data = self._file.read(base, stop - base) if stop > base else b""
        pos = 0  # in data
        while pos + _HEAD.size <= len(data):
            if not any(data[pos:pos + 8]):
                found = _NONZERO.search(data, pos)
                if found is None:
                    return None
                pos = found.start() - found.start() % 8
                continue
            length = _OFFSET.unpack_from(data, pos + 4)[0]
            if _HEAD.size <= length and base + pos + length <= size:
                record, _ = self._record_at(base + pos, size)
                if record is not None:
                    return base + pos
            pos += 8
        return None

    def _looks_torn(self, start: int, stop: int) -> bool:
        """Whether a sector's part of the bytes from `start` (a bad record)
        to `stop` (the next good record) is all zeros: a sector there never
        reached the disk (etcd's WAL reads a bad record the same way), which
        only a write not yet synced can suffer. The padding before `stop` is
        zeros anyway and is not looked at."""
        data = self._file.read(start, stop - start)
        end = len(data) - 7  # a sector's part inside the padding says nothing
        pos = 0
        while pos < end:
            step = SECTOR - (start + pos) % SECTOR
            if not any(data[pos:pos + step]):
                return True
            pos += step
        return False

    def _bad_record(self, offset: int, problem: str, size: int, whole: bool = False) -> None:
        """The record at `offset` is not whole and right (`problem`; `whole`:
        it is whole, its checksum right, but out of sequence). Cut the journal
        there if that is what a power loss leaves, else refuse to start.

        With good records after it, those were synced, and so was it, unless
        it lost a sector (then it was never synced, and neither was anything
        written after it): refused, or cut. With none after it, it is the last
        record written, cut only if it is torn (`_torn`), as etcd's WAL
        decoder cuts a record whose checksum fails only if it is a torn entry
        or the file ends inside it: a last record with every sector present
        that fails its checksum was damaged after it was written (bit rot, a
        bad disk), maybe after it was synced and acknowledged by this member,
        and cutting it would forget an entry the cluster counted as stored
        here (what syncing before acknowledging exists to prevent)."""
        data_end = self._data_end(offset)
        after = self._next_good(offset + 8, data_end, size)
        where = (f"the record at byte {offset} (after index {self._indexes[-1]})"
                 if self._indexes else f"the record at byte {offset} (the first)")
        if after is not None and not self._looks_torn(offset, after):
            raise JournalCorrupt(
                f"raft journal {self._path} is damaged before its end: {where} {problem}, and good records "
                f"follow it from byte {after}. Those were synced, so this journal has lost entries this "
                f"member may have acknowledged; it must not start from it. {RECOVER}")
        if after is not None:
            torn = "it lost whole sectors"
        else:
            torn, why_not = (None, "it is whole, its checksum right") if whole else self._torn(offset, size, data_end)
            if torn is None:
                raise JournalCorrupt(
                    f"raft journal {self._path} is damaged at its end: {where} {problem}, and {why_not}: "
                    f"not what a power loss leaves (a torn write lacks whole sectors, or the file ends inside "
                    f"it), so it was damaged after it was written, maybe after this member synced and "
                    f"acknowledged it; it must not start from it (etcd's WAL refuses such a record too). "
                    f"{RECOVER}")
        log.warning("raft journal %s: %s %s, and %s; it was written after the last sync (a power loss or "
                    "crash tore it): cutting the journal there (%d bytes kept in %s.broken), as etcd repairs "
                    "its WAL", self._path, where, problem, torn, data_end - offset, self._path)
        self._cut(offset, data_end)

    def _torn(self, offset: int, size: int, data_end: int) -> tuple:
        """Whether the last record, at `offset`, bad, is what a power loss
        leaves of a write not synced: (how it is torn, None), or (None, why
        it is not). Torn: the file ends inside it, its head is zeros, or a
        sector's part of it is all zeros (`_lost_sector`; this journal only
        writes into zeros, and a disk writes a sector whole or not at all).
        The sectors looked at are those its head claims, when the head is
        one (a torn record's lost sectors lie after its last non-zero byte),
        else those up to the last non-zero byte (and the whole head: one that
        straddles a sector boundary may have lost its second part). A head
        whose length alone is wrong (the record, with another length ending
        where its data does, has its checksum right) is damage, not a tear."""
        if offset + _HEAD.size > size:
            return "the file ends inside its head", None
        head = self._file.read(offset, _HEAD.size)
        if not any(head):
            return "its head is zeros (a sector never written)", None
        if not _is_head(head):
            if self._lost_sector(offset, max(data_end, offset + _HEAD.size)):
                return "a sector of it is zeros (never written)", None
            return None, "its head is not a record's, in sectors that were written"
        stop = offset + _HEAD.unpack(head)[1]
        if stop > size:
            torn = "the file ends inside it"
        elif self._lost_sector(offset, stop):
            torn = "a sector of it is zeros (never written)"
        else:
            return None, "every sector of it is there"
        length = self._length_that_fits(offset, head, data_end, size)
        if length is not None:
            return None, (f"its length field says {stop - offset} bytes, but with {length} its checksum is "
                          f"right (the record is whole, its length damaged)")
        return torn, None

    def _lost_sector(self, start: int, stop: int) -> bool:
        """Whether a sector's part of the bytes from `start` to `stop` (within
        the file) is all zeros."""
        data = self._file.read(start, stop - start)
        pos = 0
        while pos < len(data):
            step = SECTOR - (start + pos) % SECTOR
            if not any(data[pos:pos + step]):
                return True
            pos += step
        return False

    def _length_that_fits(self, offset: int, head: bytes, data_end: int, size: int) -> int | None:
        """A length, other than its head's, with which the record at `offset`
        ends where its data does (up to `LENGTH_SLACK` zero bytes later) and
        has its checksum right, if there is one."""
        crc, claimed = _HEAD.unpack_from(head)[:2]
        low = max(_HEAD.size, data_end - offset)
        high = min(low + LENGTH_SLACK, size - offset)
        if high < low:
            return None
        data = self._file.read(offset + _HEAD.size, high - _HEAD.size)
        for length in range(low, high + 1):
            if length != claimed and zlib.crc32(data[:length - _HEAD.size],
                                                zlib.crc32(_OFFSET.pack(length) + head[8:])) == crc:
                return length
        return None

    def _cut(self, offset: int, data_end: int) -> None:
        """Truncate the file at `offset` (synced), keeping what was cut in
        `<journal>.broken` to look at; the file is opened again."""
        with open(self._path + ".broken", "wb") as f:
            f.write(self._file.read(offset, data_end - offset))
        self._file._destroy()
        fd = os.open(self._path, os.O_RDWR)
        try:
            os.ftruncate(fd, offset)
            if durable.SYNC:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._file = type(self._file)(self._path)

    def _scan_v1(self, f) -> list:
        """(offset, size, index, term) of each record of a journal in
        pysyncobj's format, up to the first that is not whole. After a power
        loss the header may be on disk while records it counts are not (the
        OS wrote them back in another order); those were never synced, so
        never acknowledged by this member: they are dropped. (A record that
        lost a sector in its middle reads as whole: this format cannot tell.)"""
        end = _OFFSET.unpack(f.read(LAST_RECORD_OFFSET_OFFSET, 4))[0]
        limit = min(end, f.size())
        offset = FIRST_RECORD_OFFSET
        records: list = []
        while offset + _V1_HEAD.size <= limit:
            size, idx, term = _V1_HEAD.unpack(f.read(offset, _V1_HEAD.size))
            stop = offset + size + 8
            if size < 16 or stop > limit or _OFFSET.unpack(f.read(stop - 4, 4))[0] != size:
                break
            if records and (idx != records[-1][2] + 1 or term < records[-1][3]):
                break
            records.append((offset, size, idx, term))
            offset = stop
        if offset != end:
            log.warning("raft journal %s: %d bytes after the last whole record (index %s) are not records "
                        "(written but not synced before a crash); dropping them",
                        self._path, end - offset, records[-1][2] if records else None)
        return records
