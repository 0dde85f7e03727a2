"""The pwrite-based file under pysyncobj's Raft journal (etcdlite.raft_journal):
what it writes reads back, after a restart, through pysyncobj's own FileJournal,
and journals written by either file class read back with the other."""

from __future__ import annotations

import pysyncobj.journal
import pytest

import etcdlite.raft  # noqa: F401  (installs JournalFile, as a member does)
from etcdlite.raft_journal import MAPPED_FILE, JournalFile


def entries(journal) -> list:
    return [journal[i] for i in range(len(journal))]


def fill(journal, first: int, n: int, term: int = 1) -> list:
    added = []
    for idx in range(first, first + n):
        command = b"cmd-%d-" % idx + bytes(idx % 251 for _ in range(idx % 700))
        journal.add(command, idx, term)
        added.append((command, idx, term))
    return added


def test_a_member_journals_through_journal_file():
    assert pysyncobj.journal.ResizableFile is JournalFile


def test_records_survive_reopening(tmp_path):
    path = str(tmp_path / "raft.journal")
    journal = pysyncobj.journal.createJournal(path)
    expected = fill(journal, 1, 300)
    journal._destroy()

    reopened = pysyncobj.journal.createJournal(path)
    assert entries(reopened) == expected
    # appended after reopening: past the start-up map's end, read with pread
    expected += fill(reopened, 301, 200, term=2)
    reopened.deleteEntriesFrom(450)  # walks back through the new records
    del expected[450:]
    assert entries(reopened) == expected
    expected += fill(reopened, 451, 3, term=3)
    reopened._destroy()

    again = pysyncobj.journal.createJournal(path)
    assert entries(again) == expected
    again.deleteEntriesTo(100)  # what log compaction does
    again._destroy()
    assert entries(pysyncobj.journal.createJournal(path)) == expected[100:]


@pytest.mark.parametrize("writer, reader", [(MAPPED_FILE, JournalFile), (JournalFile, MAPPED_FILE)])
def test_same_format_as_pysyncobjs_file(tmp_path, monkeypatch, writer, reader):
    path = str(tmp_path / "raft.journal")
    monkeypatch.setattr(pysyncobj.journal, "ResizableFile", writer)
    journal = pysyncobj.journal.createJournal(path)
    expected = fill(journal, 1, 120)
    journal._destroy()

    monkeypatch.setattr(pysyncobj.journal, "ResizableFile", reader)
    reopened = pysyncobj.journal.createJournal(path)
    assert entries(reopened) == expected
    expected += fill(reopened, 121, 5, term=4)
    reopened._destroy()
    monkeypatch.setattr(pysyncobj.journal, "ResizableFile", writer)
    assert entries(pysyncobj.journal.createJournal(path)) == expected


def test_file_holds_only_what_was_written(tmp_path):
    # pysyncobj's map grows the file by doubling; pwrite leaves it at its end
    path = tmp_path / "raft.journal"
    journal = pysyncobj.journal.createJournal(str(path))
    fill(journal, 1, 50)
    end = journal._FileJournal__currentOffset
    journal._destroy()
    assert path.stat().st_size == end
