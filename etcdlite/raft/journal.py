"""pysyncobj's Raft journal without a copy of every entry in memory, on a
file written with pwrite(2).

pysyncobj's `FileJournal` keeps its records in a `ResizableFile`: a shared
memory map of the file, grown by doubling, that every append is copied into.
The first write to each new page of such a map is a page fault, which made
appending slower than writing the file with pwrite(2) (measured:
benchmarks/why.md). `JournalFile` has the
same interface and writes the same format (any pysyncobj reads it back), so
it replaces the memory-mapped file for every journal this process opens.

Durability: a record is in the OS page cache when `add` returns; `sync`
(fdatasync) makes every record written since the last sync durable at once,
which is when a member may count or acknowledge them (see
`etcdlite.raft.durable`). Reading back what was there at start (the replay)
goes through a read-only map of it, as fast as before.

`LeanJournal`, the journal a member opens (`install`), writes that file
through a `JournalFile` and keeps only the newest entries in memory. Trimmed
to a snapshot, it is written anew and renamed into place; at a restart,
`trim_to_snapshot` lines it up with the snapshot loaded, if it was not yet.
"""

from __future__ import annotations

import collections
import errno
import logging
import mmap
import os
import struct
from array import array

import pysyncobj.journal
import pysyncobj.syncobj
from pysyncobj.journal import FIRST_RECORD_OFFSET, LAST_RECORD_OFFSET_OFFSET, FileJournal

from . import durable

log = logging.getLogger("etcdlite.raft")

# pysyncobj's own memory-mapped file (tests write journals with it)
MAPPED_FILE = pysyncobj.journal.ResizableFile


class JournalFile:
    """pysyncobj's `ResizableFile` (what `FileJournal` calls: write, read,
    flush, _destroy) over a file descriptor, and `sync`: whatever was written
    since the last sync made durable with one fdatasync. A new file is
    durable, empty or with its `defaultContent`, once made. The file is
    allocated ahead of what is written (`PREALLOCATE_BYTES`), zeros past the
    records, which pysyncobj's format ignores (the header says where the
    records end)."""

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
                os.fdatasync(self._fd)

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
        self._running = executor.submit(os.fdatasync, self._fd)
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

_RECORD_HEAD = struct.Struct("<IQQ")  # record size, then the entry's index and term
_OFFSET = struct.Struct("<I")


class LeanJournal(FileJournal):
    """pysyncobj's FileJournal (the same file, format and meta file; its meta
    methods are inherited) that keeps in memory only where each entry is, its
    index and term, the first entry and the newest `keep` ones. FileJournal
    holds every entry's bytes until a snapshot trims the log, which under load
    is most of a member's memory after its store's, each new page of it a page
    fault (measured: benchmarks/why.md).
    Older entries are read back from the file (the OS page cache) when asked
    for: by a follower catching up, or a restart's replay.

    `sync()` makes the entries added so far durable (`synced_index`: the
    last one it covered); the meta file is stored synced (`SyncedMetaStorer`),
    the commit index in it only after the entries it covers.

    An entry is (command, index, term), as in FileJournal. `entries` is
    pysyncobj's SyncObj.__getEntries for this journal (see `LeanEntries`): it
    reads only the entries it answers with."""

    def __init__(self, path: str, keep: int = 64) -> None:
        self._keep = keep
        self._path = path
        self._file = JournalFile(path, defaultContent=self._FileJournal__getDefaultHeader())
        self._FileJournal__metaStorer = durable.SyncedMetaStorer(path + ".meta")
        self._FileJournal__meta = self._FileJournal__metaStorer.getMeta()
        self._FileJournal__metaSaved = True
        self._scan()

    def _scan(self) -> None:
        """Index the entries `_file` holds, up to the first record that is not
        whole. After a power loss the header may be on disk while records it
        counts are not (the OS wrote them back in another order); those were
        never synced, so never acknowledged by this member: they are dropped
        and the header set back to the last whole record."""
        self._reset()
        end = _OFFSET.unpack(self._file.read(LAST_RECORD_OFFSET_OFFSET, 4))[0]
        limit = min(end, self._file.size())
        offset = FIRST_RECORD_OFFSET
        while offset + _RECORD_HEAD.size <= limit:
            size, idx, term = _RECORD_HEAD.unpack(self._file.read(offset, _RECORD_HEAD.size))
            stop = offset + size + 8
            if size < 16 or stop > limit or _OFFSET.unpack(self._file.read(stop - 4, 4))[0] != size:
                break
            if self._indexes and (idx != self._indexes[-1] + 1 or term < self._terms[-1]):
                break
            self._offsets.append(offset)
            self._indexes.append(idx)
            self._terms.append(term)
            offset = stop
        if offset != end:
            log.warning("raft journal %s: %d bytes after the last whole record (index %s) are not records "
                        "(written but not synced before a crash); dropping them",
                        self._path, end - offset, self._indexes[-1] if self._indexes else None)
            self._file.write(LAST_RECORD_OFFSET_OFFSET, _OFFSET.pack(offset))
            self._file.sync()
        self._end = offset
        if self._offsets:
            self._head = self._read(0)
        self.synced_index = self._indexes[-1] if self._indexes else 0

    def _reset(self) -> None:
        self._offsets = array("Q")  # where entry i's record starts in the file
        self._indexes = array("Q")
        self._terms = array("Q")
        self._end = FIRST_RECORD_OFFSET  # where the next record goes
        self._head = None  # entry 0: pysyncobj reads log[0][1] (the first index) often
        self._tail = collections.deque(maxlen=self._keep)  # the newest entries' commands

    def _read(self, i: int) -> tuple:
        start = self._offsets[i] + _RECORD_HEAD.size
        stop = (self._offsets[i + 1] if i + 1 < len(self._offsets) else self._end) - 4
        return self._file.read(start, stop - start), self._indexes[i], self._terms[i]

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def size_bytes(self) -> int:
        """Bytes of the records it holds (what a restart reads and applies again)."""
        return self._end - FIRST_RECORD_OFFSET

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
        brings their commands to that size, as SyncObj.__getEntries answers."""
        if not self._offsets or from_index is None or from_index < self._indexes[0]:
            return []
        start = from_index - self._indexes[0]
        stop = len(self._offsets) if count is None else min(len(self._offsets), start + count)
        out, size = [], 0
        for i in range(start, stop):
            entry = self[i]
            out.append(entry)
            if max_bytes is not None:
                size += len(entry[0])
                if size >= max_bytes:
                    break
        return out

    def add(self, command, idx, term) -> None:
        record = _RECORD_HEAD.pack(len(command) + 16, idx, term) + command + _OFFSET.pack(len(command) + 16)
        self._file.write(self._end, record)
        self._offsets.append(self._end)
        self._indexes.append(idx)
        self._terms.append(term)
        self._end += len(record)
        self._file.write(LAST_RECORD_OFFSET_OFFSET, _OFFSET.pack(self._end))
        self._tail.append(command)
        if len(self._offsets) == 1:
            self._head = (command, idx, term)

    def clear(self) -> None:
        self._reset()
        self._file.write(LAST_RECORD_OFFSET_OFFSET, _OFFSET.pack(self._end))

    def deleteEntriesFrom(self, entryFrom) -> None:
        n = len(self._offsets)
        if entryFrom >= n:
            return
        entryFrom = max(entryFrom, 0)
        self._end = self._offsets[entryFrom]
        for _ in range(min(n - entryFrom, len(self._tail))):
            self._tail.pop()
        del self._offsets[entryFrom:], self._indexes[entryFrom:], self._terms[entryFrom:]
        if not self._offsets:
            self._head = None
        self._file.write(LAST_RECORD_OFFSET_OFFSET, _OFFSET.pack(self._end))

    def deleteEntriesTo(self, entryTo) -> None:
        """Keep the entries from `entryTo` on, written to a new file renamed
        over the journal: a member killed meanwhile finds the whole journal
        it had (FileJournal rewrites its file in place, and one killed half
        way lost the entries not yet rewritten, committed ones too). The new
        file is synced before the rename, so a power loss finds one of the
        two whole."""
        kept = self[entryTo:]
        old, trimmed = self._file, self._path + ".trim"
        try:
            os.unlink(trimmed)  # left by a member killed while trimming
        except FileNotFoundError:
            pass
        self._file = JournalFile(trimmed, defaultContent=self._FileJournal__getDefaultHeader())
        try:
            self._reset()
            for entry in kept:
                self.add(*entry)
            self._file.sync()
            os.rename(trimmed, self._path)
            durable.fsync_dir(os.path.dirname(os.path.abspath(self._path)))
            self.synced_index = self._indexes[-1] if self._indexes else 0
        except BaseException:
            self._file._destroy()
            self._file = old
            self._scan()
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
    index), which on this journal would read all of it back from the file."""

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
