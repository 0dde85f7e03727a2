"""Raft snapshots (--snapshot-count): the data directory stays bounded under
a stream of writes, a restart restores from snapshot plus log, and a member
added after the log was cut catches up from a snapshot."""

from __future__ import annotations

import re

import pytest

from harness.etcd_client import Client, wait_until
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness.procs import Member, run_etcdctl, start_etcdlite_cluster

pytestmark = pytest.mark.process


def _dir_size(path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def _write_rounds(c, rounds: int, start: int) -> int:
    """Overwrite 10 keys `rounds` times, compacting MVCC history as etcd
    users do, so the state itself stays the same size."""
    rev = 0
    for i in range(start, start + rounds):
        rev = c.put(b"snap/%d" % (i % 10), b"x" * 200 + b"%d" % i).header.revision
        if i % 250 == 249:
            c.kv.Compact(pb.CompactionRequest(revision=rev))
    return rev


def test_data_dir_stays_bounded_and_restart_restores(procs, tmp_path):
    m = procs.start_etcdlite(tmp_path, name="snap", snapshot_count=200)
    with Client(m.endpoint) as c:
        _write_rounds(c, 1500, 0)
        first = _dir_size(m.data_dir)
        rev = _write_rounds(c, 3000, 1500)
        second = _dir_size(m.data_dir)
    assert (m.data_dir / "raft.snapshot").exists()
    # three times the writes, about the same footprint
    assert second <= first * 1.3 + 256 * 1024, (first, second)
    m.kill()
    m.restart()
    with Client(m.endpoint) as c:
        resp = c.get(b"snap/", range_end=b"snap0")
        assert len(resp.kvs) == 10
        assert resp.header.revision == rev
        assert {kv.value[200:] for kv in resp.kvs} == {b"%d" % i for i in range(4490, 4500)}


def test_new_member_catches_up_from_a_snapshot(procs, tmp_path, etcd_binaries):
    members = start_etcdlite_cluster(tmp_path, 3, procs, snapshot_count=100)
    with Client(members[0].endpoint) as c:
        for i in range(400):
            c.put(b"cu/%03d" % i, b"v")
    new = Member("etcdlite", "m3", tmp_path, dict(members[0].extra_flags, initial_cluster_state="existing"), procs)
    rc, out, err = run_etcdctl(members[0], "member", "add", "m3", f"--peer-urls={new.peer_url}")
    assert rc == 0, err
    new.initial_cluster = re.search(r'ETCD_INITIAL_CLUSTER="([^"]+)"', out).group(1)
    new.start()
    assert (new.data_dir / "raft.snapshot").exists(), "the new member did not get a snapshot"
    with Client(new.endpoint) as c:
        assert len(c.get(b"cu/", range_end=b"cu0").kvs) == 400
        rev = c.put(b"cu/new", b"v").header.revision
    hashes = set()
    for m in members + [new]:
        with Client(m.endpoint) as c:
            wait_until(lambda: c.get(b"\x00", serializable=True).header.revision >= rev, 10, what="catch-up")
            hashes.add(c.maintenance.HashKV(pb.HashKVRequest(revision=rev)).hash)
    assert len(hashes) == 1, "members disagree after the snapshot catch-up"


class _Niceness:
    """Pickles as the niceness of the process pickling it."""

    def __reduce__(self):
        import os
        return int, (os.nice(0),)


def test_a_journal_of_big_entries_is_cut_by_its_size(procs, tmp_path):
    """Entries are batches of any size: 400 Txns of 50 puts of 300 bytes (~6 MB of
    journal, far from --snapshot-count's 100,000 entries) make snapshots because the
    journal outgrows --experimental-snapshot-bytes; the journal stays near that size,
    the snapshot is a plain pickle (no gzip), and a restart has every key."""
    limit = 1 << 20
    m = procs.start_etcdlite(tmp_path, name="bytes", experimental_snapshot_bytes=limit)
    journal = m.data_dir / "raft.journal"
    with Client(m.endpoint) as c:
        for t in range(400):
            ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"big/%05d" % (t * 50 + i), value=b"v" * 300))
                   for i in range(50)]
            rev = c.kv.Txn(pb.TxnRequest(success=ops), timeout=10).header.revision
            if t % 50 == 49:
                wait_until(lambda: journal.stat().st_size < 5 * limit, timeout=30,
                           what="the journal to be cut after a snapshot")
        wait_until(lambda: (m.data_dir / "raft.snapshot").exists(), timeout=30, what="a snapshot")
    # what the records take: the file is allocated 4 MiB at a time, ahead of them
    biggest = journal.stat().st_blocks * 512
    assert biggest < 5 * limit + (4 << 20), biggest
    from etcdlite.raft import snapshot_file
    assert (m.data_dir / "raft.snapshot").read_bytes()[:20] == snapshot_file.MAGIC  # not gzipped: checksummed
    m.kill()
    m.restart()
    with Client(m.endpoint) as c:
        resp = c.kv.Range(pb.RangeRequest(key=b"big/", range_end=b"big0", count_only=True), timeout=10)
        assert resp.count == 20_000 and resp.header.revision == rev


def test_a_gzipped_snapshot_still_loads(tmp_path):
    """Snapshots written before they were plain pickles (pysyncobj gzips them) load."""
    import gzip

    import etcdlite.raft  # noqa: F401  (installs the plain snapshot files)
    import pysyncobj.pickle
    from pysyncobj.serializer import Serializer
    path = tmp_path / "raft.snapshot"
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb") as g:
        pysyncobj.pickle.dump({"state": b"old"}, g)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert Serializer(str(path), 1 << 20, False, None, None, None).deserialize() == {"state": b"old"}


def test_the_snapshot_is_written_by_a_child_at_the_lowest_priority(tmp_path):
    # pysyncobj's own snapshot writer, as a member runs it (etcdlite.raft installs the fork)
    import os

    import etcdlite.raft  # noqa: F401
    from pysyncobj.config import SERIALIZER_STATE
    from pysyncobj.serializer import Serializer
    ours = os.nice(0)
    s = Serializer(str(tmp_path / "raft.snapshot"), 1 << 20, True, None, None, None)
    s.serialize(_Niceness(), 1)
    wait_until(lambda: s.checkSerializing()[0] != SERIALIZER_STATE.SERIALIZING, timeout=20)
    assert s.deserialize() == 19 and os.nice(0) == ours


def test_the_snapshot_child_does_not_hold_its_members_data_dir_lock(tmp_path):
    # a member killed with its child: the child (nice 19) may take long to exit on a busy
    # machine, and the member restarted meanwhile found its data directory in use
    import os
    import time

    from etcdlite.raft import node
    lock = node._lock_data_dir(str(tmp_path))
    started, started_w = os.pipe()
    child = node._SnapshotOs.fork()
    if child == 0:
        os.write(started_w, b".")  # what the fork does in the child is done
        time.sleep(30)
        os._exit(0)
    try:
        os.close(started_w)
        assert os.read(started, 1) == b"."
        os.close(started)
        node._DIR_LOCKS.discard(lock)
        os.close(lock)  # the member is gone; its child is not
        again = node._lock_data_dir(str(tmp_path))
        node._DIR_LOCKS.discard(again)
        os.close(again)
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_the_snapshot_child_dies_with_its_member(tmp_path):
    # a child outliving its member could rename its snapshot into a data directory
    # another member has opened since
    import os
    import subprocess
    import sys
    from pathlib import Path

    member = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from etcdlite.raft import node\n"
        "child = node._SnapshotOs.fork()\n"
        "if child == 0:\n"
        "    time.sleep(30)\n"
        "    os._exit(0)\n"
        "print(child, flush=True)\n"
        "time.sleep(30)\n"
    )], stdout=subprocess.PIPE)
    child = int(member.stdout.readline())
    try:
        assert _alive(child)
        member.kill()
        member.wait()
        wait_until(lambda: not _alive(child), timeout=10, what="the snapshot child to die")
    finally:
        member.kill()
        member.stdout.close()
        if _alive(child):
            os.kill(child, 9)
