"""harness.powerloss_fs keeps what was written and not synced in memory only,
shows it to readers as a page cache would, and forgets it on `drop` (the
power loss test_durability.py relies on)."""

from __future__ import annotations

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
