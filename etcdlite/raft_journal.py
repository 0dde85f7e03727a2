"""The file under pysyncobj's Raft journal, written with pwrite(2).

pysyncobj's `FileJournal` keeps its records in a `ResizableFile`: a shared
memory map of the file, grown by doubling, that every append is copied into.
The first write to each new page of such a map is a page fault, and on the
machines we measure on (Firecracker VMs, ext4) that costs ~14 µs a page:
appending went at 3.5 µs per KiB, against 0.6 µs per KiB with pwrite(2) (a
batch of a hundred 256-byte puts, ~30 KiB: 60-165 µs against 29-64 µs).
`JournalFile` has the same interface and writes the same format (any
pysyncobj reads it back), so it replaces the memory-mapped file for every
journal this process opens.

Durability is unchanged: either way a record is in the OS page cache, not
synced, when pysyncobj goes on (it survives the process being killed, not the
machine losing power). Reading back what was there at start (the replay)
goes through a read-only map of it, as fast as before.
"""

from __future__ import annotations

import errno
import mmap
import os

import pysyncobj.journal

# pysyncobj's own memory-mapped file (tests write journals with it)
MAPPED_FILE = pysyncobj.journal.ResizableFile


class JournalFile:
    """pysyncobj's `ResizableFile` (what `FileJournal` calls: write, read,
    flush, _destroy) over a file descriptor."""

    def __init__(self, fileName, initialSize=1024, resizeFactor=2.0, defaultContent=None):
        self._fd = os.open(fileName, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(self._fd).st_size == 0 and defaultContent:
                self.write(0, defaultContent)
            self._mapped = os.fstat(self._fd).st_size
            self._map = mmap.mmap(self._fd, self._mapped, access=mmap.ACCESS_READ) if self._mapped else None
        except BaseException:
            os.close(self._fd)
            raise

    def write(self, offset: int, values: bytes) -> None:
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

    def read(self, offset: int, size: int) -> bytes:
        # the map shows later writes too (one page cache), within its length
        if offset + size <= self._mapped:
            return self._map[offset:offset + size]
        return os.pread(self._fd, size, offset)

    def flush(self) -> None:
        os.fsync(self._fd)

    def _destroy(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            self._mapped = 0
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def install() -> None:
    """Make pysyncobj's FileJournal open its file as a JournalFile."""
    pysyncobj.journal.ResizableFile = JournalFile
