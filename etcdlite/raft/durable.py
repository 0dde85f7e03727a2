"""What a member's Raft state needs to survive a power loss, not only a
killed process: its files synced before anything depends on them.

A write that is only in the OS page cache survives the member being killed
but not the machine losing power. Raft's safety needs three things on stable
storage before a member tells anyone about them (etcd does the same, in its
WAL and snapshotter):

- log entries before the member counts or acknowledges them: the leader syncs
  its journal before pysyncobj's commit step counts the leader itself, and a
  follower before its AppendEntries reply leaves (see `etcdlite.raft.node`);
- the current term and vote before a vote is granted or asked for, and the
  commit index it stores (`SyncedMetaStorer`);
- a snapshot, and the journal trimmed to it, before either replaces the file
  it renames over: written to a temporary file, synced, renamed, the
  directory synced (`replace`).

`SYNC` is the process' setting (`--unsafe-no-fsync` turns it off, as in etcd
3.5): one member runs in a process. Without it, files are still written to a
temporary file and renamed, but nothing is synced.
"""

from __future__ import annotations

import os

import pysyncobj.serializer
from pysyncobj.journal import MetaStorer
from pysyncobj.pickle import dumps

# the process' setting: see the module doc (RaftNode sets it from the member's config)
SYNC = True


def set_sync(on: bool) -> None:
    global SYNC
    SYNC = bool(on)


def fsync_dir(path: str) -> None:
    """Make the directory's entries (a file created, renamed or removed in
    it) durable."""
    if not SYNC:
        return
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: str) -> None:
    if not SYNC:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(tmp: str, path: str) -> None:
    """Rename the finished file `tmp` over `path` so that after a power loss
    `path` holds either its old content or all of `tmp`'s: `tmp`'s data is
    synced before the rename, the rename after it."""
    fsync_path(tmp)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path))


def make_dirs(path: str) -> None:
    """os.makedirs, with each directory it creates made durable in its parent."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    make_dirs(os.path.dirname(path))
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    fsync_dir(os.path.dirname(path))


class SyncedMetaStorer(MetaStorer):
    """pysyncobj's meta file (term, vote, commit index) stored with `replace`.
    pysyncobj 0.3.17 stores it before answering a vote, as Raft requires, but
    only flushes Python's buffer and renames: after a power loss the renamed
    file can be empty, and a member that forgot its vote can vote twice in
    one term."""

    def storeMeta(self, meta) -> None:
        path = self.getPath()
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(dumps(meta))
        replace(tmp, path)


def install() -> None:
    """pysyncobj writes snapshots (its own, and one received from the
    leader) to a temporary file and renames it with `atomicReplace`: make
    that `replace`. The snapshot child runs it in the member's process image,
    so the setting (`SYNC`) is the member's."""
    pysyncobj.serializer.atomicReplace = replace


class SyncedLeadership:
    """A SyncObj mixin: a new leader's no-op entry is synced as it is
    appended. A lone member elects itself inside a tick, after that tick's
    sync and before its commit step, which counts the entry at once."""

    def _SyncObj__onBecomeLeader(self):
        super()._SyncObj__onBecomeLeader()
        log = self._SyncObj__raftLog
        if hasattr(log, "sync"):
            log.sync()
