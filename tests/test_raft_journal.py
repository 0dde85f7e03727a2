"""pysyncobj's Raft journal as a member keeps it (etcdlite.raft.journal): the
pwrite-based file (journals of pysyncobj's format written through either file
class read back), and LeanJournal, which keeps few entries in memory and
answers as the list of all of them, on its checksummed format (damage and
tears: test_journal_checksums.py)."""

from __future__ import annotations

import pysyncobj.journal
import pysyncobj.syncobj
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import etcdlite.raft  # noqa: F401  (installs JournalFile and LeanJournal, as a member does)
from etcdlite.raft.journal import MAPPED_FILE, JournalFile, LeanJournal


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


@pytest.mark.parametrize("writer", [MAPPED_FILE, JournalFile])
def test_a_journal_of_pysyncobjs_format_reads_back(tmp_path, monkeypatch, writer):
    """pysyncobj's FileJournal format (an older etcdlite's journal), on either
    file class, loads (and is written again with checksums: test_journal_checksums)."""
    path = str(tmp_path / "raft.journal")
    monkeypatch.setattr(pysyncobj.journal, "ResizableFile", writer)
    journal = pysyncobj.journal.FileJournal(path)
    expected = fill(journal, 1, 120)
    journal._destroy()
    monkeypatch.undo()
    reopened = LeanJournal(path)
    assert entries(reopened) == expected
    expected += fill(reopened, 121, 5, term=4)
    reopened._destroy()
    assert entries(LeanJournal(path)) == expected


def test_file_holds_what_was_written_then_zeros_allocated_ahead(tmp_path):
    # pysyncobj's map grows the file by doubling; JournalFile allocates it ahead
    # in PREALLOCATE_BYTES steps (so that a sync after an append need not grow it)
    from etcdlite.raft.journal import PREALLOCATE_BYTES

    path = tmp_path / "raft.journal"
    journal = LeanJournal(str(path))
    expected = fill(journal, 1, 50)
    end = journal._end
    journal._destroy()
    assert path.stat().st_size == PREALLOCATE_BYTES
    assert path.read_bytes()[end:] == bytes(PREALLOCATE_BYTES - end)
    assert entries(LeanJournal(str(path))) == expected


# --- LeanJournal: the entries on file, a few in memory ------------------------

def reference_entries(log: list, from_index, count=None, max_bytes=None) -> list:
    """pysyncobj's SyncObj.__getEntries over a list log, for comparison."""
    if not log or from_index is None or from_index < log[0][1]:
        return []
    diff = from_index - log[0][1]
    result = log[diff:] if count is None else log[diff:diff + count]
    if max_bytes is None:
        return result
    total = i = 0
    for i, entry in enumerate(result):
        total += len(entry[0])
        if total >= max_bytes:
            break
    return result[:i + 1]


def check_same(journal, model: list) -> None:
    assert len(journal) == len(model)
    assert [journal[i] for i in range(len(model))] == model
    assert journal[:] == model and journal[2:5] == model[2:5]
    if model:
        assert journal[-1] == model[-1] and journal[0] == model[0]
        assert last_index_term(journal) == model[-1][1:]
        first, last = model[0][1], model[-1][1]
        for start in (first - 1, first, first + 1, (first + last) // 2, last, last + 1):
            for count, size in ((None, None), (2, None), (None, 1), (None, 900), (3, 2000),
                                (1, None), (1, 1), (0, None), (0, 5)):
                assert journal.entries(start, count, size) == reference_entries(model, start, count, size)


def last_index_term(journal) -> tuple:
    """The last entry's index and term as pysyncobj asks a member's SyncObj for them
    (LeanEntries reads them from the journal's arrays)."""
    from etcdlite.raft.loop import LoopSyncObj
    obj = LoopSyncObj.__new__(LoopSyncObj)
    obj.__dict__["_SyncObj__raftLog"] = journal
    return obj._SyncObj__getCurrentLogIndex(), obj._SyncObj__getCurrentLogTerm()


def command(idx: int) -> bytes:
    return b"c%d:" % idx + bytes(idx % 251 for _ in range(idx * 37 % 600))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 12)),
    st.tuples(st.just("delete_from"), st.integers(0, 40)),
    st.tuples(st.just("delete_to"), st.integers(0, 40)),
    st.tuples(st.just("clear"), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0)),
), max_size=25))
def test_lean_journal_answers_as_a_list_of_its_entries(tmp_path_factory, ops):
    path = str(tmp_path_factory.mktemp("lean") / "raft.journal")
    journal = LeanJournal(path, keep=3)  # most entries come from the file
    model: list = []
    next_idx, term = 1, 1
    for op, n in ops:
        if op == "add":
            for _ in range(n):
                journal.add(command(next_idx), next_idx, term)
                model.append((command(next_idx), next_idx, term))
                next_idx += 1
            term += 1
        elif op == "delete_from" and n <= len(model):
            journal.deleteEntriesFrom(n)
            del model[n:]
            next_idx = model[-1][1] + 1 if model else next_idx
        elif op == "delete_to":
            journal.deleteEntriesTo(n)
            del model[:n]
        elif op == "clear":
            journal.clear()
            model.clear()
        elif op == "reopen":
            journal._destroy()
            journal = LeanJournal(path, keep=3)
        check_same(journal, model)
    journal._destroy()
    again = LeanJournal(path)
    assert entries(again) == model
    again.add(b"last", next_idx, term)
    again._destroy()
    assert entries(LeanJournal(path)) == model + [(b"last", next_idx, term)]


def test_lean_journal_keeps_its_meta_as_file_journal(tmp_path):
    path = str(tmp_path / "raft.journal")
    journal = LeanJournal(path)
    journal.setCurrentTerm(7, "peer:1")
    journal.setRaftCommitIndex(42)
    journal.onOneSecondTimer()
    journal._destroy()
    meta = pysyncobj.journal.MetaStorer(path + ".meta").getMeta()  # FileJournal's meta file, as it reads it
    assert (meta["currentTerm"], meta["votedForNodeId"], meta["raftCommitIndex"]) == (7, "peer:1", 42)
    again = LeanJournal(path)
    assert (again.getCurrentTerm(), again.getVotedForNodeId(), again.getRaftCommitIndex()) == (7, "peer:1", 42)


def test_a_member_opens_a_lean_journal_and_reads_it_sized(tmp_path):
    from etcdlite.raft.loop import LoopSyncObj
    assert type(pysyncobj.syncobj.createJournal("")) is pysyncobj.journal.MemoryJournal
    journal = pysyncobj.syncobj.createJournal(str(tmp_path / "raft.journal"))
    assert isinstance(journal, LeanJournal)
    fill(journal, 1, 40)
    # what SyncObj.__getEntries answers on it: LeanEntries, read to size
    obj = LoopSyncObj.__new__(LoopSyncObj)
    obj.__dict__["_SyncObj__raftLog"] = journal
    got = obj._SyncObj__getEntries(10, None, 300)
    assert got == reference_entries(entries(journal), 10, None, 300) and 1 < len(got) < 31
    memory = pysyncobj.journal.MemoryJournal()  # any other journal: read through its entries
    fill(memory, 1, 5)
    assert last_index_term(memory) == (5, 1)
