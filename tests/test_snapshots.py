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
