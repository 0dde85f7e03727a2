"""A member restarting from a snapshot keeps the log entries after it
(etcdlite.raft.node, etcdlite.raft.journal): killed after its snapshot child
renamed the new snapshot into place and before it trimmed the journal, a
member finds a journal that starts before the snapshot, and pysyncobj's
start-up load cleared it, losing every acknowledged write after the
snapshot. The crash state is made here without timing luck: a member whose
journal is never trimmed. And a member killed while trimming its journal
finds it whole (it used to be rewritten in place)."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest
from pysyncobj import FAIL_REASON

import etcdlite.raft  # noqa: F401  (sets pysyncobj up, as a member does)
from etcdlite.apply import Op
from etcdlite.raft.journal import LeanJournal, trim_to_snapshot
from etcdlite.raft.node import RaftNode


def _address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:%d" % s.getsockname()[1]


async def _started(data_dir, address: str, snapshot_count: int) -> RaftNode:
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    node = RaftNode(loop, address, [], str(data_dir), on_ready=ready.set, password="test secret",
                    snapshot_count=snapshot_count)
    await asyncio.wait_for(ready.wait(), 10)
    return node


async def _put(node: RaftNode, i: int) -> int:
    """Put key k/<i> through Raft; the revision it was acknowledged at."""
    done = asyncio.get_running_loop().create_future()
    node.propose([(Op.PUT_VALUE, b"k/%d" % i, b"v%d" % i)],
                 lambda applied, reason: done.set_result((applied, reason)))
    applied, reason = await asyncio.wait_for(done, 5)
    assert reason == FAIL_REASON.SUCCESS
    return applied[0][3]


async def _until(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def _entries(journal) -> list:
    return [journal[i] for i in range(len(journal))]


def _on_disk(path) -> list:
    journal = LeanJournal(str(path))
    try:
        return _entries(journal)
    finally:
        journal._destroy()


@pytest.mark.process
def test_a_restart_keeps_the_entries_after_a_snapshot_the_journal_was_not_trimmed_to(tmp_path, monkeypatch):
    data_dir, address = tmp_path / "member", _address()
    trims = []
    # the member is "killed" between the snapshot's rename and the journal's trim: it never trims
    monkeypatch.setattr(LeanJournal, "deleteEntriesTo", lambda journal, entry_to: trims.append(entry_to))

    async def before_the_crash() -> int:
        node = await _started(data_dir, address, snapshot_count=10**6)
        try:
            for i in range(30):
                await _put(node, i)
            node._obj.forceLogCompaction()  # one snapshot, written by a forked child
            await _until(lambda: trims, "the snapshot child did not finish")
            for i in range(30, 60):  # acknowledged after the snapshot: in the journal only
                rev = await _put(node, i)
        finally:
            node.stop()
        return rev

    acknowledged = asyncio.run(before_the_crash())
    monkeypatch.undo()
    assert os.path.exists(data_dir / "raft.snapshot")
    assert _on_disk(data_dir / "raft.journal")[0][1] == 1, "the journal was trimmed"

    async def after_the_restart() -> tuple[int, set]:
        node = await _started(data_dir, address, snapshot_count=10**6)
        try:
            await _until(lambda: node.applied_index >= node._last_index(), "the log was not applied")
            with node.lock:
                kv = node.machine.kv
                return kv.current_revision, {int(item.key[2:]) for item in kv.range(b"k/", b"k0").kvs}
        finally:
            node.stop()

    revision, present = asyncio.run(after_the_restart())
    assert revision == acknowledged
    assert present == set(range(60))


def _journal(path, entries) -> LeanJournal:
    journal = LeanJournal(str(path))
    for entry in entries:
        journal.add(*entry)
    return journal


LOG = [(b"cmd-%d" % idx, idx, 1 + idx // 10) for idx in range(1, 40)]


def test_a_journal_holding_the_snapshots_last_entries_starts_at_them(tmp_path):
    journal = _journal(tmp_path / "raft.journal", LOG)
    assert trim_to_snapshot(journal, LOG[19], LOG[20])  # a snapshot of entries 1..21
    assert _entries(journal) == LOG[19:]
    journal._destroy()
    assert _on_disk(tmp_path / "raft.journal") == LOG[19:]


@pytest.mark.parametrize("before, last", [
    ((b"other", 20, 3), LOG[20]),  # another command at the index
    (LOG[19], (LOG[20][0], 21, 9)),  # another term
    ((b"cmd-50", 50, 6), (b"cmd-51", 51, 6)),  # beyond the journal's end
    ((b"cmd-39", 39, 4), (b"cmd-40", 40, 4)),  # its last entry, not the one after
    (LOG[0], LOG[1]),  # already starts at them: nothing to rewrite
])
def test_a_journal_without_them_is_left_to_pysyncobj(tmp_path, before, last):
    journal = _journal(tmp_path / "raft.journal", LOG)
    assert not trim_to_snapshot(journal, before, last)
    assert _entries(journal) == LOG


class _Killed(BaseException):
    pass


def test_a_member_killed_while_trimming_its_journal_finds_it_whole(tmp_path, monkeypatch):
    path = tmp_path / "raft.journal"
    journal = _journal(path, LOG)
    add = LeanJournal.add

    def add_then_die(self, *entry):  # killed after rewriting two entries of the trimmed journal
        if len(self) == 2:
            raise _Killed
        add(self, *entry)

    monkeypatch.setattr(LeanJournal, "add", add_then_die)
    with pytest.raises(_Killed):
        journal.deleteEntriesTo(19)
    monkeypatch.undo()
    assert _on_disk(path) == LOG
    # an error half way (not a kill) leaves the member its journal as it was
    assert _entries(journal) == LOG
    journal.deleteEntriesTo(19)
    journal.add(b"cmd-40", 40, 4)
    assert _on_disk(path) == LOG[19:] + [(b"cmd-40", 40, 4)]
    assert sorted(os.listdir(tmp_path)) == ["raft.journal"]
