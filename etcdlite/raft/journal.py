"""pysyncobj's Raft journal without a copy of every entry in memory, on a
file written with pwrite(2), every record checksummed.

pysyncobj's `FileJournal` keeps its records in a `ResizableFile`: a shared
memory map of the file, grown by doubling, that every append is copied into.
The first write to each new page of such a map is a page fault, which made
appending slower than writing the file with pwrite(2) (measured:
benchmarks/why.md). `JournalFile` has the same interface and replaces the
memory-mapped file for every journal this process opens.

`LeanJournal`, the journal a member opens (`install`), writes its file in
etcdlite's format (a CRC-32 per record, as etcd's WAL; see the format below)
through a `JournalFile` and keeps only the newest entries in memory. At
start it checks every record: a torn tail (what a power loss leaves of
records written after the last sync) is cut with a warning, damage before
the end refuses to start (`JournalCorrupt`), as etcd does. A journal in
pysyncobj's format (an older etcdlite's) is read and written again in the
new one. Trimmed to a snapshot, it is written anew and renamed into place;
at a restart, `trim_to_snapshot` lines it up with the snapshot loaded, if it
was not yet.

Durability: a record is in the OS page cache when `add` returns; `sync`
(fdatasync) makes every record written since the last sync durable at once,
which is when a member may count or acknowledge them (see
`etcdlite.raft.durable`). Reading back what was there at start (the replay)
goes through a read-only map of it, as fast as before.
"""

from __future__ import annotations

import collections
import errno
import logging
import mmap
import os
import zlib
from array import array
from bisect import bisect_left
from time import perf_counter

import pysyncobj.journal
import pysyncobj.syncobj
from pysyncobj.journal import APP_NAME, FileJournal
from pysyncobj.pickle import to_bytes

from . import durable
from .journal_format import (  # noqa: F401 (JournalCorrupt, RECOVER: this module's to its users)
    _HEAD, _HEADER, _V1_HEAD, ENTRY, FIRST_RECORD, FORMAT_VERSION, MAGIC, RECOVER, TRUNCATE,
    JournalCorrupt, JournalReader, encode_record, journal_header)

log = logging.getLogger("etcdlite.raft")

# pysyncobj's own memory-mapped file (tests write journals with it)
MAPPED_FILE = pysyncobj.journal.ResizableFile

# The journal's fdatasyncs by duration, for etcd's etcd_disk_wal_fsync_duration_seconds
# (etcdlite.server.metrics): its buckets' upper bounds (1 ms doubling, 14 of them), the number
# of syncs that fell in each bucket and not a lower one (the last slot: above every bound), and
# their total seconds. Process-wide, as etcd's; written by one sync at a time (a sync in the
# loop waits for one running in a thread first), read by a scrape.
FSYNC_BUCKETS = tuple(0.001 * 2**i for i in range(14))
fsync_counts = [0] * (len(FSYNC_BUCKETS) + 1)
fsync_seconds = [0.0]


def _timed_fdatasync(fd: int) -> None:
    began = perf_counter()
    os.fdatasync(fd)
    took = perf_counter() - began
    fsync_counts[bisect_left(FSYNC_BUCKETS, took)] += 1
    fsync_seconds[0] += took


class JournalFile:
    """pysyncobj's `ResizableFile` (what `FileJournal` calls: write, read,
    flush, _destroy) over a file descriptor, and `sync`: whatever was written
    since the last sync made durable with one fdatasync. A new file is
    durable, empty or with its `defaultContent`, once made. The file is
    allocated ahead of what is written (`PREALLOCATE_BYTES`), zeros past the
    records (where a reader of the journal finds its end)."""

    def __init__(self, fileName, initialSize=1024, resizeFactor=2.0, defaultContent=None):
        created = not os.path.exists(fileName)
        self._fd = os.open(fileName, os.O_RDWR | os.O_CREAT, 0o600)
        self.dirty = False  # written since the last sync
        self._running = None  # the Future of a sync running in a thread (sync_in)
        self._allocated = os.fstat(self._fd).st_size
        try:
            if os.fstat(self._fd).st_size == 0 and defaultContent:
                self.write(0, defaultContent)
            if created:
                self.sync()
                durable.fsync_dir(os.path.dirname(os.path.abspath(fileName)))
            self._mapped = os.fstat(self._fd).st_size
            self._map = mmap.mmap(self._fd, self._mapped, access=mmap.ACCESS_READ) if self._mapped else None
        except BaseException:
            os.close(self._fd)
            raise

    def write(self, offset: int, values: bytes) -> None:
        self.dirty = True
        if offset + len(values) > self._allocated:
            self._allocate(offset + len(values))
        n = os.pwrite(self._fd, values, offset)
        if n == len(values):
            return
        view = memoryview(values)[n:]  # a short write: go on from there
        while view:
            offset += n
            n = os.pwrite(self._fd, view, offset)
            if n <= 0:
                raise OSError(errno.ENOSPC, "cannot append to the raft journal: is the disk full?")
            view = view[n:]

    def _allocate(self, end: int) -> None:
        size = -(-end // PREALLOCATE_BYTES) * PREALLOCATE_BYTES
        try:
            os.posix_fallocate(self._fd, self._allocated, size - self._allocated)
        except OSError:
            return  # no room to allocate ahead (the write itself may still fit): grow as written
        self._allocated = size

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read(self, offset: int, size: int) -> bytes:
        # the map shows later writes too (one page cache), within its length
        if offset + size <= self._mapped:
            return self._map[offset:offset + size]
        return os.pread(self._fd, size, offset)

    def flush(self) -> None:
        os.fsync(self._fd)
        self.dirty = False

    def sync(self) -> None:
        """fdatasync if anything was written since the last sync (and syncs
        are on: durable.SYNC); first waits for a sync running in a thread
        (`sync_in`), which may not cover what it was started for yet."""
        self.wait_synced()
        if self.dirty:
            self.dirty = False
            if durable.SYNC:
                _timed_fdatasync(self._fd)

    def sync_in(self, executor):
        """`sync` in `executor`'s thread: the Future of its fdatasync, or
        None if there is nothing to sync (or syncs are off). It covers what
        was written before this call; writes after it make the file dirty
        again. One at a time: the caller waits for the last one first."""
        if not self.dirty:
            return None
        self.dirty = False
        if not durable.SYNC:
            return None
        self._running = executor.submit(_timed_fdatasync, self._fd)
        return self._running

    def wait_synced(self) -> None:
        """Until a sync running in a thread is done (its error raised here)."""
        running, self._running = self._running, None
        if running is not None:
            running.result()

    def _destroy(self) -> None:
        try:
            self.wait_synced()  # the descriptor must outlive the sync using it
        except OSError:
            pass
        if self._map is not None:
            self._map.close()
            self._map = None
            self._mapped = 0
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# the journal file grows by this much at a time, allocated ahead of the
# records (as etcd preallocates its WAL): an fdatasync after an append that
# grows the file also commits its new size and blocks, and took longer here
# than one after an append into allocated space (benchmarks/why.md)
PREALLOCATE_BYTES = 4 * 1024 * 1024

class LeanJournal(JournalReader, FileJournal):
    """pysyncobj's FileJournal (the same meta file; its meta methods are
    inherited) on etcdlite's file format, keeping in memory only where each
    entry is, its index and term, the first entry and the newest `keep` ones.
    FileJournal holds every entry's bytes until a snapshot trims the log,
    which under load is most of a member's memory after its store's, each new
    page of it a page fault (measured: benchmarks/why.md).
    Older entries are read back from the file (the OS page cache) when asked
    for: by a follower catching up, or a restart's replay.

    Every record carries its own CRC-32, as etcd's WAL records do, so that a
    restart tells what a power loss can leave (a torn tail: records written
    after the last sync, some of their sectors missing) from damage to what
    was synced; see `_scan` (in etcdlite.raft.journal_format, with the
    format). The checksum is per record, not chained from the previous
    record's as etcd's: records carry their Raft index, so a missing
    or stale record shows as a break in the sequence of indexes (which etcd's
    chain catches for records without one), and a record checked by itself
    lets the reader look past a bad record for good ones, to tell a torn
    tail (cut) from damage with synced records after it (refused).

    Records are only ever appended: removing entries (a follower's
    conflicting tail, `clear`) appends a TRUNCATE record, and the file is
    written anew only when entries are cut from its start (`deleteEntriesTo`,
    after a snapshot), so no record is ever written over another.

    `sync()` makes the entries added so far durable (`synced_index`: the
    last one it covered); the meta file is stored synced (`SyncedMetaStorer`),
    the commit index in it only after the entries it covers.

    An entry is (command, index, term), as in FileJournal. `entries` is
    pysyncobj's SyncObj.__getEntries for this journal (see `LeanEntries`): it
    reads only the entries it answers with."""

    def __init__(self, path: str, keep: int = 64) -> None:
        self._keep = keep
        self._path = path
        self._file = JournalFile(path, defaultContent=journal_header())
        self._FileJournal__metaStorer = durable.SyncedMetaStorer(path + ".meta")
        self._FileJournal__meta = self._FileJournal__metaStorer.getMeta()
        self._FileJournal__metaSaved = True
        try:
            self._load()
        except BaseException:
            self._file._destroy()
            raise

    def _load(self) -> None:
        head = self._file.read(0, _HEADER.size)
        if head.startswith(APP_NAME):
            self._upgrade()
            return
        magic, version, crc = _HEADER.unpack(head) if len(head) == _HEADER.size else (b"", 0, 0)
        if magic == MAGIC and version == FORMAT_VERSION and crc == zlib.crc32(head[:-4]):
            self._scan()
            return
        if magic == MAGIC and version > FORMAT_VERSION and crc == zlib.crc32(head[:-4]):
            raise JournalCorrupt(f"raft journal {self._path} is in format {version}, written by a newer etcdlite "
                                 f"(this one reads {FORMAT_VERSION}): run that version")
        if not any(head) and self._data_end(0) == 0:
            # the header is synced when the file is made, before any record: only
            # a journal never synced (--unsafe-no-fsync) comes back without one
            log.warning("raft journal %s: no header and no records (never synced before a power loss?); "
                        "starting it empty", self._path)
            self._file.write(0, journal_header())
            self._file.sync()
            self._scan()
            return
        raise JournalCorrupt(
            f"raft journal {self._path}: its header is not an etcdlite raft journal's (damaged, or not a "
            f"journal): {head[:32]!r}. {RECOVER}")

    def _reset(self) -> None:
        self._offsets = array("Q")  # where entry i's record starts in the file
        self._lengths = array("I")  # its command's length
        self._indexes = array("Q")
        self._terms = array("Q")
        self._end = FIRST_RECORD  # where the next record goes
        self._head = None  # entry 0: pysyncobj reads log[0][1] (the first index) often
        self._tail = collections.deque(maxlen=self._keep)  # the newest entries' commands

    def _upgrade(self) -> None:
        """A journal in pysyncobj's format (no checksums): its whole records
        (`_scan_v1`) written again in etcdlite's, renamed over it."""
        old = self._file
        records = self._scan_v1(old)
        log.info("raft journal %s: in pysyncobj's format (no checksums): writing its %d entries again "
                 "with checksums", self._path, len(records))
        self._rewrite((old.read(offset + _V1_HEAD.size, size - 16), idx, term)
                      for offset, size, idx, term in records)

    def _read(self, i: int) -> tuple:
        return self._file.read(self._offsets[i] + _HEAD.size, self._lengths[i]), self._indexes[i], self._terms[i]

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def size_bytes(self) -> int:
        """Bytes of the records it holds (what a restart reads again)."""
        return self._end - FIRST_RECORD

    def __getitem__(self, item):
        n = len(self._offsets)
        if isinstance(item, slice):
            return [self[i] for i in range(*item.indices(n))]
        i = item + n if item < 0 else item
        if not 0 <= i < n:
            raise IndexError("journal index out of range")
        cached = i - (n - len(self._tail))
        if cached >= 0:
            return self._tail[cached], self._indexes[i], self._terms[i]
        if i == 0:
            return self._head
        return self._read(i)

    def entries(self, from_index, count=None, max_bytes=None) -> list:
        """The entries from index `from_index` on (none if it is before the
        first): at most `count`, and with `max_bytes` up to the first that
        brings their commands to that size, as SyncObj.__getEntries answers.
        Called many times a replicated write, nearly all for the
        newest entry or the one after it (commit, apply, AppendEntries on
        both sides): those two are answered first; the entries kept in
        memory are made here, without a __getitem__ call each."""
        indexes = self._indexes
        if not indexes or from_index is None:
            return []
        last = indexes[-1]
        if from_index > last:
            return []
        if from_index == last and self._tail and (count is None or count > 0):
            return [(self._tail[-1], last, self._terms[-1])]  # one entry, whatever max_bytes says
        if from_index < indexes[0]:
            return []
        n = len(indexes)
        start = from_index - indexes[0]
        stop = n if count is None else min(n, start + count)
        tail, terms = self._tail, self._terms
        in_tail = n - len(tail)  # the first entry whose command is in `tail`
        if max_bytes is None and start >= in_tail:
            return [(tail[i - in_tail], indexes[i], terms[i]) for i in range(start, stop)]
        out, size = [], 0
        for i in range(start, stop):
            entry = (tail[i - in_tail], indexes[i], terms[i]) if i >= in_tail else self[i]
            out.append(entry)
            if max_bytes is not None:
                size += len(entry[0])
                if size >= max_bytes:
                    break
        return out

    # -- writing ---------------------------------------------------------------

    def _append(self, kind: int, idx: int, term: int, command: bytes) -> int:
        record = encode_record(kind, idx, term, command)
        at = self._end
        self._file.write(at, record)
        self._end += len(record)
        return at

    def add(self, command, idx, term) -> None:
        if not isinstance(command, bytes):
            command = to_bytes(command)
        self._offsets.append(self._append(ENTRY, idx, term, command))
        self._lengths.append(len(command))
        self._indexes.append(idx)
        self._terms.append(term)
        self._tail.append(command)
        if len(self._offsets) == 1:
            self._head = (command, idx, term)

    def clear(self) -> None:
        if self._offsets:
            self._append(TRUNCATE, self._indexes[0], 0, b"")
        end = self._end
        self._reset()
        self._end = end

    def deleteEntriesFrom(self, entryFrom) -> None:
        n = len(self._offsets)
        if entryFrom >= n:
            return
        entryFrom = max(entryFrom, 0)
        self._append(TRUNCATE, self._indexes[entryFrom], 0, b"")
        for _ in range(min(n - entryFrom, len(self._tail))):
            self._tail.pop()
        del self._offsets[entryFrom:], self._lengths[entryFrom:], self._indexes[entryFrom:], self._terms[entryFrom:]
        if not self._offsets:
            self._head = None

    def deleteEntriesTo(self, entryTo) -> None:
        """Keep the entries from `entryTo` on, written to a new file renamed
        over the journal: a member killed meanwhile finds the whole journal
        it had (FileJournal rewrites its file in place, and one killed half
        way lost the entries not yet rewritten, committed ones too). The new
        file is synced before the rename, so a power loss finds one of the
        two whole."""
        kept = self[entryTo:]
        try:
            self._rewrite(kept)
        except BaseException:
            self._load()
            raise

    def _rewrite(self, entries) -> None:
        """Write `entries` to a new file and rename it over the journal."""
        old, trimmed = self._file, self._path + ".trim"
        try:
            os.unlink(trimmed)  # left by a member killed while trimming
        except FileNotFoundError:
            pass
        self._file = JournalFile(trimmed, defaultContent=journal_header())
        try:
            self._reset()
            for entry in entries:
                self.add(*entry)
            self._file.sync()
            os.rename(trimmed, self._path)
            durable.fsync_dir(os.path.dirname(os.path.abspath(self._path)))
            self.synced_index = self._indexes[-1] if self._indexes else 0
        except BaseException:
            self._file._destroy()
            self._file = old
            raise
        old._destroy()

    def _destroy(self) -> None:
        self._file._destroy()

    def flush(self) -> None:
        self._file.flush()

    def sync(self) -> None:
        """Make every entry added (or removed) so far durable: one fdatasync
        for all of them, none if nothing changed since the last (once a
        sync running in a thread, `sync_in`, is done)."""
        self._file.wait_synced()
        if self._file.dirty:
            self._file.sync()
            self.synced_index = self._indexes[-1] if self._indexes else 0

    @property
    def dirty(self) -> bool:
        """Whether entries were added (or removed) since the last sync began."""
        return self._file.dirty

    def sync_in(self, executor):
        """`sync` in `executor`'s thread, for a caller that goes on meanwhile:
        None if everything is durable already, else the Future of the
        fdatasync; once it is done, `synced(index)` with the index it
        returned records it. (index, future)."""
        index = self._indexes[-1] if self._indexes else 0
        running = self._file.sync_in(executor)
        if running is None:
            self.synced_index = index
        return index, running

    def synced(self, index: int) -> None:
        """A sync begun by `sync_in` at `index` is done."""
        self._file.wait_synced()
        self.synced_index = max(self.synced_index, index)

    def onOneSecondTimer(self) -> None:
        # the commit index stored must not run ahead of the entries on disk
        if not self._FileJournal__metaSaved:
            self.sync()
        super().onOneSecondTimer()




class LeanEntries:
    """A SyncObj mixin: its __getEntries on a `LeanJournal` reads only the
    entries it answers with. pysyncobj's slices the log from an index to its
    end before cutting it to size (for a follower catching up: from its next
    index), which on this journal would read all of it back from the file.
    The last entry's index and term (asked for about six times a put at 1
    client: by pysyncobj's tick and by RaftNode._tick) are read from the
    journal's arrays, not through an entry made for each question
    (measured: benchmarks/why.md)."""

    def _SyncObj__getCurrentLogIndex(self):
        journal = self._SyncObj__raftLog
        if type(journal) is LeanJournal:
            return journal._indexes[-1]
        return journal[-1][1]

    def _SyncObj__getCurrentLogTerm(self):
        journal = self._SyncObj__raftLog
        if type(journal) is LeanJournal:
            return journal._terms[-1]
        return journal[-1][2]

    def _SyncObj__getEntries(self, fromIDx, count=None, maxSizeBytes=None):
        journal = self._SyncObj__raftLog
        if isinstance(journal, LeanJournal):
            return journal.entries(fromIDx, count, maxSizeBytes)
        return super()._SyncObj__getEntries(fromIDx, count, maxSizeBytes)


def trim_to_snapshot(journal, before: tuple, last: tuple) -> bool:
    """Make `journal` start at a snapshot's last two entries (`before`, then
    `last`, each (command, index, term)) when it holds them further on,
    keeping the entries after them; whether it did. pysyncobj's start-up
    load keeps a journal only if it starts with those two, and otherwise
    clears it: one that still starts before them (the member was killed
    after the snapshot was renamed into place, before the journal was
    trimmed to it) lost every entry after the snapshot, committed ones too.
    A journal that differs at those entries is left to pysyncobj."""
    if len(journal) < 2:
        return False
    at = before[1] - journal[0][1]
    if at <= 0 or at + 1 >= len(journal):
        return False
    if tuple(journal[at]) != tuple(before) or tuple(journal[at + 1]) != tuple(last):
        return False
    journal.deleteEntriesTo(at)
    return True


def _create_journal(journalFile=None):
    return LeanJournal(journalFile) if journalFile else pysyncobj.journal.MemoryJournal()


def install() -> None:
    """Make pysyncobj open its journal as a LeanJournal (and, if anything
    opens a FileJournal still, its file as a JournalFile)."""
    pysyncobj.journal.ResizableFile = JournalFile
    pysyncobj.syncobj.createJournal = _create_journal
