"""harness.powerloss_fs keeps what was written and not synced in memory only,
shows it to readers as a page cache would, and forgets it on `drop` (the
power loss test_durability.py relies on), or tears it on `tear` (each
unsynced page lost, kept, or kept in part): a member's journal through such
tears, and pysyncobj's format without checksums through the same."""

from __future__ import annotations

import logging
import os

import pytest

from harness import powerloss_fs

pytestmark = pytest.mark.process


@pytest.fixture
def mount(tmp_path):
    reason = powerloss_fs.unavailable_reason()
    if reason:
        pytest.skip(f"power-loss filesystem unavailable: {reason}")
    m = powerloss_fs.PowerLossMount(tmp_path)
    try:
        yield m
    finally:
        m.close()


def test_unsynced_writes_are_read_back_and_lost_on_drop(mount):
    os.mkdir(mount.path / "d")
    path = mount.path / "d" / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"synced " * 1000, 0)
        os.fdatasync(fd)
        os.pwrite(fd, b"LOST", 3)  # inside a synced page
        os.pwrite(fd, b"tail", 10_000)  # past the synced end
        assert os.pread(fd, 9, 0) == b"synLOSTsy"
        assert os.fstat(fd).st_size == 10_004
        assert (mount.backing / "d" / "f").stat().st_size == 7000, "unsynced data reached the backing file"
    finally:
        os.close(fd)  # close(2) is no sync
    assert mount.unsynced_bytes() > 0
    files, lost = mount.drop("d")
    assert files == 1 and lost > 0
    assert path.read_bytes() == b"synced " * 1000


def test_a_truncation_is_unsynced_too(mount):
    path = mount.path / "f"
    path.write_bytes(b"x" * 5000)
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
        os.ftruncate(fd, 10)
        os.pwrite(fd, b"y", 20)  # the bytes between are zeros, not the old x's
        assert os.pread(fd, 100, 0) == b"x" * 10 + b"\0" * 10 + b"y"
        os.fsync(fd)
    finally:
        os.close(fd)
    mount.drop(".")
    assert path.read_bytes() == b"x" * 10 + b"\0" * 10 + b"y"


def test_a_file_renamed_into_place_unsynced_is_empty_after_the_loss(mount):
    """The risk a durable rename avoids: data synced before the rename."""
    (mount.path / "meta").write_bytes(b"old")
    fd = os.open(mount.path / "meta", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    (mount.path / "meta.tmp").write_bytes(b"new")
    os.rename(mount.path / "meta.tmp", mount.path / "meta")
    assert (mount.path / "meta").read_bytes() == b"new"
    mount.drop(".")
    assert (mount.path / "meta").read_bytes() == b""


# --- torn writes ------------------------------------------------------------------------

def _fill(path, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, 0)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_a_tear_keeps_each_unsynced_page_whole_in_part_or_not_at_all(mount):
    page, sector = powerloss_fs.PAGE, powerloss_fs.SECTOR
    path = mount.path / "f"
    _fill(path, b"a" * (16 * page), sync=True)
    _fill(path, b"b" * (16 * page) + b"c" * (8 * page), sync=False)  # over the synced pages, and past them
    counts = mount.tear(".", seed=1)
    assert counts["files"] == 1 and counts["lost"] and counts["kept"] and counts["torn"], counts
    data = path.read_bytes()
    assert 16 * page <= len(data) <= 24 * page
    seen = set()
    for n in range(len(data) // page):
        got = data[n * page:(n + 1) * page]
        old, new = (b"a", b"b") if n < 16 else (b"\0", b"c")
        kept = len(got) - len(got.lstrip(new))
        assert got == new * kept + old * (page - kept), f"page {n} is not a prefix of its write"
        assert kept % sector == 0, f"page {n} kept {kept} bytes: not whole sectors"
        seen.add("kept" if kept == page else "lost" if kept == 0 else "torn")
    assert seen == {"kept", "lost", "torn"}


def _journal_commands(n: int) -> list[bytes]:
    return [bytes(1 + (i * 13 + j) % 250 for j in range(1500 + i * 97 % 3000)) for i in range(n)]


def test_a_torn_journal_keeps_what_was_synced_and_loads_no_garbage(mount, monkeypatch):
    """A member's journal through power losses that tear what was not synced:
    after each it holds exactly the first entries written, every synced one
    among them, never a damaged one; a torn tail is cut. pysyncobj's format
    (no checksums) through the same tears loads damaged entries as whole."""
    import pysyncobj.journal

    import etcdlite.raft.journal
    from etcdlite.raft import durable
    from etcdlite.raft.journal import LeanJournal

    durable.set_sync(True)
    # allocated 64 KiB ahead, not 4 MiB (this filesystem allocates by writing zeros)
    monkeypatch.setattr(etcdlite.raft.journal, "PREALLOCATE_BYTES", 64 * 1024)
    commands = _journal_commands(40)
    cuts = 0
    for seed in range(30):
        path = str(mount.path / f"j{seed}" / "raft.journal")
        os.mkdir(os.path.dirname(path))
        journal = LeanJournal(path)
        for idx, cmd in enumerate(commands[:15], 1):
            journal.add(cmd, idx, 1)
        journal.sync()
        for idx, cmd in enumerate(commands[15:], 16):
            journal.add(cmd, idx, 1)  # never synced
        journal._destroy()
        mount.tear(f"j{seed}", seed)
        records = logging.getLogger("etcdlite.raft")
        handler = _Collect()
        records.addHandler(handler)
        try:
            got = LeanJournal(path)
        finally:
            records.removeHandler(handler)
        n = len(got)
        assert n >= 15, f"seed {seed}: synced entries lost ({n} left)"
        assert [got[i] for i in range(n)] == [(c, i, 1) for i, c in enumerate(commands[:n], 1)], \
            f"seed {seed}: entries differ from the ones written"
        got._destroy()
        cuts += any("cutting the journal there" in m for m in handler.messages)
    assert cuts, "no tear left a torn record to cut: the tears did not test the journal"

    garbage = 0
    for seed in range(30):
        path = str(mount.path / f"v1-{seed}" / "raft.journal")
        os.mkdir(os.path.dirname(path))
        old = pysyncobj.journal.FileJournal(path)  # pysyncobj's format, on the pwrite file
        for idx, cmd in enumerate(commands[:15], 1):
            old.add(cmd, idx, 1)
        old.flush()
        for idx, cmd in enumerate(commands[15:], 16):
            old.add(cmd, idx, 1)
        old._destroy()
        mount.tear(f"v1-{seed}", seed)
        got = LeanJournal(path)  # reads pysyncobj's format as an older etcdlite did
        garbage += any(got[i] != (commands[i], i + 1, 1) for i in range(len(got)))
        got._destroy()
    assert garbage, "pysyncobj's format never loaded a torn record: the tears did not show what checksums catch"
    print(f"  checksummed: {cuts} of 30 tears cut a torn tail; pysyncobj's format: {garbage} of 30 loaded garbage")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record) -> None:
        self.messages.append(record.getMessage())
