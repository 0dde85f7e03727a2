"""Checksummed journal records and snapshots (etcdlite.raft.journal,
snapshot_file), read at start as etcd reads its WAL: a torn last record (what
a power loss leaves of a write after the last sync: a sector of it lost, or
the file ending inside it) is cut with a warning; any other damage, to the
last record too (every sector there, its checksum wrong: bit rot of what may
have been synced and acknowledged), refuses to start, saying what to do; a
snapshot that fails its checksum refuses too.

Damage is made here byte by byte on a journal written by LeanJournal; what a
power loss tears is made by harness.powerloss_fs in test_powerloss_fs.py and
test_durability.py. Without checksums (pysyncobj's format, which older
etcdlite wrote and which is still read, once, to upgrade it) a record that
lost a page in its middle loads as if whole: that is shown here too."""

from __future__ import annotations

import logging
import os
import shutil

import pysyncobj.journal
import pysyncobj.pickle
import pytest
from pysyncobj.serializer import Serializer

import etcdlite.raft  # noqa: F401  (installs LeanJournal and the snapshot files, as a member does)
from etcdlite.raft import durable, journal as jmod, snapshot_file
from etcdlite.raft.journal import MAPPED_FILE, JournalCorrupt, LeanJournal
from etcdlite.raft.node import _check_snapshot

ENTRIES = 10


@pytest.fixture(autouse=True)
def _no_syncs(monkeypatch):
    # the files are on the test's disk: what is checked here is what is read back;
    # small files (allocated 64 KiB ahead, not 4 MiB) to copy and read many times
    durable.set_sync(False)
    monkeypatch.setattr(jmod, "PREALLOCATE_BYTES", 64 * 1024)
    yield
    durable.set_sync(True)


def command(idx: int, size: int = 90) -> bytes:
    """A command with no zero byte (a damaged byte never makes a zero sector of it)."""
    return bytes(1 + (idx * 7 + j) % 250 for j in range(size))


def write_journal(path, n: int = ENTRIES, size: int = 90) -> tuple[list, list, int]:
    """A journal of n entries: (entries, record offsets, end of the records)."""
    journal = LeanJournal(str(path))
    added = [(command(i, size), i, 1 + i // 4) for i in range(1, n + 1)]
    for entry in added:
        journal.add(*entry)
    offsets, end = list(journal._offsets), journal._end
    journal.sync()
    journal._destroy()
    return added, offsets, end


def entries(journal) -> list:
    return [journal[i] for i in range(len(journal))]


def damage(path, at: int, xor: int = 0x5A) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, at)[0]
        os.pwrite(fd, bytes([byte ^ xor]), at)
    finally:
        os.close(fd)


def test_records_carry_a_version_mark_and_checksums(tmp_path):
    path = tmp_path / "raft.journal"
    added, offsets, end = write_journal(path)
    data = path.read_bytes()
    assert data.startswith(jmod.MAGIC) and offsets[0] == jmod.FIRST_RECORD
    for offset, (cmd, idx, term) in zip(offsets, added):
        assert data[offset:offset + jmod._HEAD.size + len(cmd)] == jmod.encode_record(jmod.ENTRY, idx, term, cmd)[
            :jmod._HEAD.size + len(cmd)]
    assert not any(data[end:]), "zeros (allocated ahead) after the records"
    assert entries(LeanJournal(str(path))) == added


def _reopens_cut(path, added, last, caplog) -> None:
    """The journal at `path` opens cut at `last` (its last record dropped,
    with a warning), and takes and keeps a new record there."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="etcdlite.raft"):
        journal = LeanJournal(str(path))
    assert entries(journal) == added[:-1]
    assert "cutting the journal there" in caplog.text, caplog.text
    assert os.path.getsize(path) == last, "the file is cut where the good records end"
    journal.add(b"next", len(added), 9)
    journal.sync()
    journal._destroy()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="etcdlite.raft"):
        again = LeanJournal(str(path))
    assert entries(again) == added[:-1] + [(b"next", len(added), 9)] and not caplog.text
    again._destroy()


@pytest.mark.parametrize("size", [90, 1500], ids=["one sector", "four sectors"])
def test_every_damaged_byte_of_the_last_record_refuses_to_start(tmp_path, size):
    """A last record with every sector there that fails its checksum was not
    torn by a power loss (which loses whole sectors): it was damaged after it
    was written, perhaps after it was synced and acknowledged, and cutting it
    would forget an acknowledged entry. etcd's WAL refuses it too. Its length
    field damaged (the record then seems to run into the zeros after it, or
    past the file's end) is told apart by the checksum being right with the
    length its data has."""
    pristine = tmp_path / "pristine"
    added, offsets, end = write_journal(pristine, size=size)
    last = offsets[-1]
    record = jmod._HEAD.size + size
    if size > 500:
        assert len(_sector_parts(last, last + record)) == 4, "the record spans sectors"
    path = tmp_path / "raft.journal"
    data = pristine.read_bytes()
    # every byte of its head and, of a long command, every 5th and those at a sector's edges
    for at in [at for at in range(last, last + record)
               if size < 500 or at - last < jmod._HEAD.size or (at - last) % 5 == 0 or at % 512 in (0, 511)]:
        shutil.copy(pristine, path)
        xor = 0xA5 if data[at] == 0x5A else 0x5A  # never a zero byte: no sector's part of it made zeros
        damage(path, at, xor)
        with pytest.raises(JournalCorrupt) as err:
            LeanJournal(str(path))
        text = str(err.value)
        assert "damaged at its end" in text and f"byte {last}" in text, f"byte {at - last}: {text}"
        assert "member remove" in text, text
        assert path.read_bytes() == _damaged(pristine, at, xor), "a refused journal is left as it was"


def test_a_last_record_with_its_length_damaged_says_so(tmp_path):
    path = tmp_path / "raft.journal"
    added, offsets, end = write_journal(path)
    damage(path, offsets[-1] + 5)  # 122 bytes long says 23162: it seems to run into the zeros after it
    with pytest.raises(JournalCorrupt, match="with 122 its checksum is right"):
        LeanJournal(str(path))


def test_a_whole_last_record_out_of_sequence_or_garbage_after_the_last_refuses(tmp_path):
    """Neither is what a power loss leaves (the journal only appends, each
    record's index following the last, into zeros)."""
    path = tmp_path / "raft.journal"
    added, offsets, end = write_journal(path)
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, jmod.encode_record(jmod.ENTRY, ENTRIES + 2, 9, command(12)), end)
    os.close(fd)
    with pytest.raises(JournalCorrupt, match=f"holds index {ENTRIES + 2} term 9 after index {ENTRIES} .*"
                                             "it is whole, its checksum right"):
        LeanJournal(str(path))
    _zero(path, end, end + 512)
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, b"not a record, in a sector that was written", end)
    os.close(fd)
    with pytest.raises(JournalCorrupt, match="its head is not a record's"):
        LeanJournal(str(path))


def _sector_parts(start: int, stop: int) -> list:
    """(start, stop) of each sector's part of the bytes from start to stop."""
    parts = []
    while start < stop:
        step = min(stop, start + 512 - start % 512)
        parts.append((start, step))
        start = step
    return parts


def test_a_last_record_that_lost_a_sector_or_is_cut_short_is_cut(tmp_path, caplog):
    """What a power loss leaves of a last record written after the last sync:
    any one of its sectors lost (zeros, as allocated), its last sectors lost
    (then its data ends early: the lost sectors are found from the length its
    head claims), or the file ending anywhere inside it."""
    pristine = tmp_path / "pristine"
    added, offsets, end = write_journal(pristine, size=1500)
    last = offsets[-1]
    stop = last + jmod._HEAD.size + 1500
    path = tmp_path / "raft.journal"
    parts = _sector_parts(last, stop)
    assert len(parts) == 4
    for start, part_end in parts:  # one sector lost
        shutil.copy(pristine, path)
        _zero(path, start, part_end)
        _reopens_cut(path, added, last, caplog)
    for start, _ in parts[1:]:  # every sector from one on lost: the data ends early
        shutil.copy(pristine, path)
        _zero(path, start, stop)
        _reopens_cut(path, added, last, caplog)
    for at in range(last + 1, stop, 7):  # the file ends inside it
        shutil.copy(pristine, path)
        os.truncate(path, at)
        _reopens_cut(path, added, last, caplog)


@pytest.mark.parametrize("split", [8, 16, 24])
def test_a_head_straddling_sectors_that_lost_its_second_part_is_cut(tmp_path, caplog, split):
    """The last record's head begins `split` bytes before a sector's end;
    the next sectors were lost: its data ends inside its head."""
    path = tmp_path / "raft.journal"
    journal = LeanJournal(str(path))
    first = (command(1, 512 - split - jmod.FIRST_RECORD - jmod._HEAD.size), 1, 1)
    journal.add(*first)
    last = journal._end
    assert last == 512 - split
    added = [first, (command(2, 900), 2, 1)]
    journal.add(*added[-1])
    journal.sync()
    journal._destroy()
    _zero(path, 512, 512 * 3)
    _reopens_cut(path, added, last, caplog)


def test_every_damaged_byte_of_a_middle_record_refuses_to_start(tmp_path):
    pristine = tmp_path / "pristine"
    added, offsets, end = write_journal(pristine)
    middle = offsets[ENTRIES // 2]
    path = tmp_path / "raft.journal"
    for at in range(middle, middle + jmod._HEAD.size + len(added[ENTRIES // 2][0])):
        shutil.copy(pristine, path)
        damage(path, at)
        with pytest.raises(JournalCorrupt) as err:
            LeanJournal(str(path))
        text = str(err.value)
        assert "damaged before its end" in text and f"byte {middle}" in text, text
        assert "member remove" in text and "--initial-cluster-state=existing" in text, text
        assert path.read_bytes() == _damaged(pristine, at), "a refused journal is left as it was"


def _damaged(pristine, at: int, xor: int = 0x5A) -> bytes:
    data = bytearray(pristine.read_bytes())
    data[at] ^= xor
    return bytes(data)


def _zero(path, start: int, stop: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(stop - start), start)
    finally:
        os.close(fd)


@pytest.mark.parametrize("tear", ["its last sectors", "its first sector", "cut short at the file's end",
                                  "a sector lost with whole records after it"])
def test_a_torn_tail_is_cut(tmp_path, tear, caplog):
    """What a power loss leaves of records written after the last sync: a
    record's sectors missing (zeros, as allocated), or the file ending in
    it; records after a torn one may be whole (their pages were written)."""
    path = tmp_path / "raft.journal"
    added, offsets, end = write_journal(path, n=12, size=1500)  # records of ~3 sectors
    torn = 8
    start = offsets[torn]
    if tear == "its last sectors":
        _zero(path, start + 1024 - start % 512, end)
    elif tear == "its first sector":
        _zero(path, start, start + 512 - start % 512)
    elif tear == "cut short at the file's end":
        os.truncate(path, start + 700)
    else:
        sector = start + 512 - start % 512
        _zero(path, sector, sector + 512)
        assert offsets[torn + 2] > sector + 512  # whole records after the lost sector
    with caplog.at_level(logging.WARNING, logger="etcdlite.raft"):
        journal = LeanJournal(str(path))
    assert entries(journal) == added[:torn]
    assert "cutting the journal there" in caplog.text
    assert (tmp_path / "raft.journal.broken").stat().st_size > 0, "what was cut is kept to look at"
    journal._destroy()


def test_good_records_after_a_damaged_one_that_lost_no_sector_refuse(tmp_path):
    """The same place, damaged without zeros: what follows was synced."""
    path = tmp_path / "raft.journal"
    added, offsets, end = write_journal(path, n=12, size=1500)
    damage(path, offsets[8] + 700)
    with pytest.raises(JournalCorrupt, match="damaged before its end"):
        LeanJournal(str(path))


def test_removed_entries_stay_removed_and_the_file_is_only_appended_to(tmp_path):
    path = str(tmp_path / "raft.journal")
    journal = LeanJournal(path)
    for i in range(1, 11):
        journal.add(command(i), i, 1)
    journal.deleteEntriesFrom(6)  # a follower's conflicting tail (indexes 7..10)
    written = journal._end
    journal.add(b"seven", 7, 2)
    journal._destroy()
    reopened = LeanJournal(path)
    assert [e[1] for e in entries(reopened)] == list(range(1, 8)) and reopened[-1] == (b"seven", 7, 2)
    assert reopened._offsets[-1] == written, "appended after the TRUNCATE record, not over the old records"
    reopened.clear()  # a snapshot from the leader replaces everything
    reopened.add(b"snap-a", 40, 3)
    reopened.add(b"snap-b", 41, 3)
    reopened._destroy()
    assert entries(LeanJournal(path)) == [(b"snap-a", 40, 3), (b"snap-b", 41, 3)]


def test_a_header_that_is_not_a_journals_refuses(tmp_path):
    path = tmp_path / "raft.journal"
    write_journal(path)
    damage(path, 3)
    with pytest.raises(JournalCorrupt, match="header is not an etcdlite raft journal"):
        LeanJournal(str(path))


# --- pysyncobj's format: read once, written again with checksums ------------------------

def _write_v1(path, monkeypatch, commands) -> None:
    monkeypatch.setattr(pysyncobj.journal, "ResizableFile", MAPPED_FILE)
    old = pysyncobj.journal.FileJournal(str(path))
    for idx, cmd in enumerate(commands, 1):
        old.add(cmd, idx, 1)
    old._destroy()
    monkeypatch.undo()


def test_a_journal_in_pysyncobjs_format_is_written_again_with_checksums(tmp_path, monkeypatch):
    path = tmp_path / "raft.journal"
    commands = [command(i) for i in range(1, 30)]
    _write_v1(path, monkeypatch, commands)
    assert path.read_bytes().startswith(b"PYSYNCOBJ")
    journal = LeanJournal(str(path))
    expected = [(c, i, 1) for i, c in enumerate(commands, 1)]
    assert entries(journal) == expected
    assert path.read_bytes().startswith(jmod.MAGIC), "upgraded in place (renamed over)"
    journal.add(b"after", 30, 2)
    journal._destroy()
    assert entries(LeanJournal(str(path))) == expected + [(b"after", 30, 2)]


def test_without_checksums_a_record_that_lost_a_page_loads_as_garbage(tmp_path, monkeypatch):
    """Why checksums: pysyncobj's format checks a record's size at both ends
    only. A record of three pages whose middle page never reached the disk
    (written after the last sync) reads back whole, with zeros inside, and
    would be applied. The same tear of a checksummed record is cut."""
    big = command(7, 3 * 4096)
    old_path = tmp_path / "old" / "raft.journal"
    old_path.parent.mkdir()
    _write_v1(old_path, monkeypatch, [command(i) for i in range(1, 7)] + [big])
    data = old_path.read_bytes()
    start = data.index(big[:64])
    page = (start // 4096 + 1) * 4096
    _zero(old_path, page, page + 4096)
    loaded = entries(LeanJournal(str(old_path)))
    assert len(loaded) == 7 and loaded[-1][0] != big and bytes(4096) in loaded[-1][0], \
        "the torn record loaded as if whole: garbage"

    new_path = tmp_path / "raft.journal"
    journal = LeanJournal(str(new_path))
    for i in range(1, 7):
        journal.add(command(i), i, 1)
    start = journal._end
    journal.add(big, 7, 1)
    journal._destroy()
    page = (start // 4096 + 1) * 4096
    _zero(new_path, page, page + 4096)
    assert [e[1] for e in entries(LeanJournal(str(new_path)))] == list(range(1, 7))


# --- snapshots ------------------------------------------------------------------------

def _snapshot(path, state) -> None:
    s = Serializer(str(path), 1 << 20, False, None, None, None)
    s.serialize(state, 1)
    assert path.exists()


def test_a_snapshot_carries_its_checksum_and_loads(tmp_path):
    path = tmp_path / "raft.snapshot"
    state = {"keys": [b"k%d" % i * 50 for i in range(2000)]}
    _snapshot(path, state)
    data = path.read_bytes()
    assert data.startswith(snapshot_file.MAGIC) and data.endswith(snapshot_file.END_MAGIC)
    assert snapshot_file.verify(str(path))
    assert Serializer(str(path), 1 << 20, False, None, None, None).deserialize() == state


@pytest.mark.parametrize("where", ["header", "middle", "trailer", "cut short"])
def test_a_damaged_snapshot_refuses_to_start(tmp_path, where):
    path = tmp_path / "raft.snapshot"
    _snapshot(path, {"keys": [b"k%d" % i * 50 for i in range(2000)]})
    size = path.stat().st_size
    if where == "cut short":
        os.truncate(path, size - 100)
    else:
        damage(path, {"header": 3, "middle": size // 2, "trailer": size - 10}[where])
    with pytest.raises(snapshot_file.SnapshotCorrupt) as err:
        _check_snapshot(str(path))
    assert "raft snapshot" in str(err.value) and "member remove" in str(err.value)


def test_snapshots_of_before_checksums_still_load(tmp_path):
    path = tmp_path / "raft.snapshot"
    with open(path, "wb") as f:
        pysyncobj.pickle.dump({"state": b"plain"}, f)
    assert snapshot_file.verify(str(path)) is False  # nothing to check
    _check_snapshot(str(path))
    assert Serializer(str(path), 1 << 20, False, None, None, None).deserialize() == {"state": b"plain"}


# --- a member, as a process -----------------------------------------------------------------

def _exited(member, timeout: float = 30) -> int:
    from harness.etcd_client import wait_until

    wait_until(lambda: member.proc.poll() is not None, timeout, what=f"{member.name} to exit")
    return member.proc.returncode


@pytest.mark.process
@pytest.mark.parametrize("damage_to", ["a torn journal tail", "a journal record before the last", "the snapshot"])
def test_a_member_cuts_a_torn_tail_and_refuses_damaged_data(procs, tmp_path, damage_to):
    from harness.etcd_client import Client

    m = procs.start_etcdlite(tmp_path, name="dmg", snapshot_count=50)
    with Client(m.endpoint) as c:
        for i in range(130):
            c.put(b"d/%03d" % i, b"v%d" % i)
    m.terminate()
    data = m.data_dir
    assert (data / "raft.snapshot").exists()
    journal = LeanJournal(str(data / "raft.journal"))
    offsets, lengths, end, n = list(journal._offsets), list(journal._lengths), journal._end, len(journal)
    journal._destroy()
    assert n >= 3, f"only {n} entries in the journal"
    # a record in the middle whose command has bytes to damage (a no-op's may be one byte: the
    # byte after it is padding, which no checksum covers)
    middle = next(i for i in range(n // 2, n - 1) if lengths[i] > 1)
    if damage_to == "a torn journal tail":
        record = jmod.encode_record(jmod.ENTRY, 10_000, 1, command(1, 3000))
        fd = os.open(data / "raft.journal", os.O_RDWR)
        os.pwrite(fd, record[:2048], end)  # its first sectors reached the disk, not the rest
        os.close(fd)
    elif damage_to == "a journal record before the last":
        damage(data / "raft.journal", offsets[middle] + jmod._HEAD.size + lengths[middle] // 2)
    else:
        damage(data / "raft.snapshot", (data / "raft.snapshot").stat().st_size // 2)
    m.launch()
    if damage_to == "a torn journal tail":
        m.wait_ready()
        with Client(m.endpoint) as c:
            assert c.get(b"d/", range_end=b"d0").count == 130
        assert "cutting the journal there" in m.log_tail(200)
        return
    assert _exited(m) == 1
    text = m.log_tail(20)
    assert ("damaged before its end" if "journal" in damage_to else "fails its checksum") in text, text
    assert "etcdctl member remove" in text, text


@pytest.mark.parametrize("tail", ["zeros", "a torn record", "past the file's end"])
def test_pysyncobjs_format_drops_records_its_header_counts_but_the_disk_lost(tmp_path, monkeypatch, tail):
    """An older etcdlite's journal after a power loss: the header (rewritten
    on every append) may count records the disk lost. The upgrade keeps the
    whole records, as the older etcdlite did."""
    from pysyncobj.journal import LAST_RECORD_OFFSET_OFFSET

    path = tmp_path / "raft.journal"
    commands = [command(i) for i in range(1, 12)]
    _write_v1(path, monkeypatch, commands)
    data = path.read_bytes()
    end = int.from_bytes(data[LAST_RECORD_OFFSET_OFFSET:LAST_RECORD_OFFSET_OFFSET + 4], "little")
    start = end - (len(commands[-1]) + 24)  # the last record: size, index, term, command, size
    if tail == "zeros":
        _zero(path, start, end)
    elif tail == "a torn record":
        _zero(path, end - 4, end)
    else:
        os.truncate(path, start + 10)
    assert entries(LeanJournal(str(path))) == [(c, i, 1) for i, c in enumerate(commands[:-1], 1)]
    assert path.read_bytes().startswith(jmod.MAGIC)
