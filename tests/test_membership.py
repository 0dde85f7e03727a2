"""Membership changes with the real etcdctl: member add (the new member
catches up), member remove (the removed member stops), removing the leader."""

from __future__ import annotations

import re

import pytest

from harness.etcd_client import Client, wait_until
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness.procs import Member, run_etcdctl, start_etcdlite_cluster

pytestmark = pytest.mark.process


def _status(m):
    with Client(m.endpoint) as c:
        return c.maintenance.Status(pb.StatusRequest(), timeout=5)


def _leader(members):
    def find():
        for m in members:
            try:
                st = _status(m)
            except Exception:
                continue
            if st.leader == st.header.member_id:
                return m
        return None

    return wait_until(find, 20, what="a leader")


def _member_list(m) -> dict[str, tuple]:
    with Client(m.endpoint) as c:
        resp = c.cluster.MemberList(pb.MemberListRequest(), timeout=5)
    return {x.name: (x.ID, tuple(x.peerURLs), tuple(x.clientURLs)) for x in resp.members}


def _hashes_agree(members):
    def check():
        revs, hashes = set(), set()
        for m in members:
            with Client(m.endpoint) as c:
                rev = c.get(b"\x00probe", serializable=True).header.revision
                revs.add(rev)
        if len(revs) != 1:
            return False
        rev = revs.pop()
        for m in members:
            with Client(m.endpoint) as c:
                hashes.add(c.maintenance.HashKV(pb.HashKVRequest(revision=rev), timeout=5).hash)
        return len(hashes) == 1

    wait_until(check, 20, what="equal revisions and HashKV on every member")


def test_member_add_then_remove(procs, tmp_path, etcd_binaries):
    members = start_etcdlite_cluster(tmp_path, 3, procs)
    with Client(members[0].endpoint) as c:
        for i in range(50):
            c.put(f"mem/{i:03d}".encode(), b"v%d" % i)

    new = Member("etcdlite", "m3", tmp_path, dict(members[0].extra_flags, initial_cluster_state="existing"), procs)
    rc, out, err = run_etcdctl(members[1], "member", "add", "m3", f"--peer-urls={new.peer_url}")
    assert rc == 0, err
    assert re.search(r"Member\s+[0-9a-f]+ added to cluster\s+[0-9a-f]+", out), out
    initial = re.search(r'ETCD_INITIAL_CLUSTER="([^"]+)"', out).group(1)
    assert re.search(r'ETCD_INITIAL_CLUSTER_STATE="existing"', out), out
    assert sorted(initial.split(",")) == sorted(
        [f"{m.name}={m.peer_url}" for m in members] + [f"m3={new.peer_url}"]
    )
    new.initial_cluster = initial
    new.start()
    everyone = members + [new]
    with Client(new.endpoint) as c:
        assert len(c.get(b"mem/", range_end=b"mem0").kvs) == 50  # caught up
        c.put(b"mem/through-new", b"x")
    listed = _member_list(members[2])
    assert set(listed) == {"m0", "m1", "m2", "m3"}
    assert listed["m3"][2] == (new.url,)
    cluster_ids = {_status(m).header.cluster_id for m in everyone}
    assert len(cluster_ids) == 1, "the new member reports another cluster ID"
    _hashes_agree(everyone)

    # remove a follower: it stops by itself, the rest keeps serving
    leader = _leader(everyone)
    victim = next(m for m in everyone if m is not leader and m is not members[0])
    victim_id = listed[victim.name][0]
    rc, out, err = run_etcdctl(members[0], "member", "remove", f"{victim_id:x}")
    assert rc == 0, err
    assert re.search(rf"Member\s+{victim_id:x} removed from cluster", out), out
    wait_until(lambda: not victim.alive, 20, what="the removed member to exit")
    rest = [m for m in everyone if m is not victim]
    assert set(_member_list(rest[0])) == {m.name for m in rest}
    with Client(rest[-1].endpoint) as c:
        c.put(b"mem/after-remove", b"y")
    _hashes_agree(rest)


def test_remove_the_leader(procs, tmp_path, etcd_binaries):
    members = start_etcdlite_cluster(tmp_path, 3, procs)
    leader = _leader(members)
    leader_id = _status(leader).header.member_id
    other = next(m for m in members if m is not leader)
    rc, out, err = run_etcdctl(other, "member", "remove", f"{leader_id:x}")
    assert rc == 0, err
    wait_until(lambda: not leader.alive, 20, what="the removed leader to exit")
    rest = [m for m in members if m is not leader]
    new_leader = _leader(rest)
    assert _status(new_leader).header.member_id != leader_id
    with Client(rest[0].endpoint) as c:
        c.put(b"after-leader-removal", b"v")
    _hashes_agree(rest)
