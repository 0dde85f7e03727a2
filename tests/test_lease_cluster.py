"""Leases on three members: keep-alives renew the leader's clock without a log
entry, forwarded to it by a follower (as etcd's leasehttp); TimeToLive is the
leader's answer on every member; expiry is one revision everywhere; a leader's
SIGKILL neither ends a lease early nor leaves a keep-alive hanging."""

from __future__ import annotations

import queue
import re
import threading
import time

import grpc
import pytest

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness.etcd_client import Client, leader_of, wait_until
from harness.procs import Registry, run_etcdctl, start_cluster, start_etcdlite_cluster

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    registry = Registry()
    try:
        members = start_etcdlite_cluster(tmp_path_factory.mktemp("lease3"), 3, registry)
        leader = leader_of(members)
        yield leader, [m for m in members if m is not leader]
    finally:
        registry.cleanup()


def _keep_alive(member, lease_id: int) -> pb.LeaseKeepAliveResponse:
    with Client(member.endpoint) as c:
        return next(c.lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease_id)]), timeout=10))


def _ttls(members, lease_id: int) -> list[int]:
    out = []
    for m in members:
        with Client(m.endpoint) as c:
            out.append(c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=10))
    return out


def test_keep_alives_on_any_member_renew_the_leaders_clock(cluster):
    leader, followers = cluster
    members = [leader, *followers]
    with Client(followers[0].endpoint) as c:
        lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3), timeout=10)
        c.put(b"lc/held", b"v", lease=lease.ID)
    with Client(leader.endpoint) as c:
        index = c.maintenance.Status(pb.StatusRequest(), timeout=10).raftIndex
    # six seconds of keep-alives, once a second, through every member in turn: twice the TTL
    start = time.monotonic()
    for i in range(6):
        ka = _keep_alive(members[i % 3], lease.ID)
        assert (ka.ID, ka.TTL) == (lease.ID, 3)
        assert ka.header.member_id and ka.header.revision > 0
        time.sleep(max(0.0, start + i + 1 - time.monotonic()))
    with Client(leader.endpoint) as c:
        assert c.maintenance.Status(pb.StatusRequest(), timeout=10).raftIndex == index, \
            "a keep-alive went through the raft log"
    answers = _ttls(members, lease.ID)
    assert [a.grantedTTL for a in answers] == [3, 3, 3]
    assert [a.keys for a in answers] == [[b"lc/held"]] * 3
    ttls = [a.TTL for a in answers]
    assert max(ttls) - min(ttls) <= 1, ttls
    assert min(ttls) >= 1, ttls
    for m in members:
        with Client(m.endpoint) as c:
            assert c.get(b"lc/held", serializable=True).kvs


def test_a_lease_left_alone_expires_at_one_revision_on_every_member(cluster):
    leader, followers = cluster
    members = [leader, *followers]
    with Client(followers[1].endpoint) as c:
        lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2), timeout=10)
        for k in (b"lx/a", b"lx/b", b"lx/c"):
            c.put(k, b"v", lease=lease.ID)
        assert _keep_alive(followers[1], lease.ID).TTL == 2
        wait_until(lambda: not c.get(b"lx/", range_end=b"lx0").kvs, 15, what="the lease's expiry")
    revisions = set()
    for m in members:
        with Client(m.endpoint) as c:
            wait_until(lambda: not c.get(b"lx/", range_end=b"lx0", serializable=True).kvs, 10,
                       what="the expiry on every member")
            # the three deletes are one revision: the keys all there just before it
            gone = c.get(b"lx/", range_end=b"lx0", serializable=True).header.revision
            for rev in range(gone, 0, -1):
                kvs = c.get(b"lx/", range_end=b"lx0", revision=rev, serializable=True).kvs
                if kvs:
                    assert len(kvs) == 3
                    revisions.add(rev + 1)
                    break
            assert c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID), timeout=10).TTL == -1
    assert len(revisions) == 1, revisions
    # a keep-alive of the expired lease: TTL 0, as etcd's
    for m in members:
        assert _keep_alive(m, lease.ID).TTL == 0


def test_etcdctl_lease_keep_alive_against_a_follower_as_against_etcd(cluster, tmp_path, procs):
    _, followers = cluster
    etcd = start_cluster("etcd", tmp_path / "etcd", 3, procs, name="e")
    etcd_follower = [m for m in etcd if m is not leader_of(etcd)][0]

    def transcript(member) -> list[str]:
        rc, out, err = run_etcdctl(member, "lease", "grant", "5")
        assert rc == 0, err
        lease_id = re.search(r"lease ([0-9a-f]+) granted", out).group(1)
        rc, once, err = run_etcdctl(member, "lease", "keep-alive", "--once", lease_id)
        assert rc == 0, err
        # without --once it goes on (every TTL/3 s) until killed
        rc, stream, _ = run_etcdctl(member, "lease", "keep-alive", lease_id, timeout=4)
        assert rc == 124
        return [line.replace(lease_id, "ID") for line in (once + stream).splitlines()]

    ours, theirs = transcript(followers[0]), transcript(etcd_follower)
    assert ours[0] == theirs[0] == "lease ID keepalived with TTL(5)"
    assert len(ours) >= 3 and set(ours) == set(theirs)


def test_keep_alive_through_a_leader_sigkill(procs, tmp_path):
    members = start_etcdlite_cluster(tmp_path, 3, procs)
    leader = leader_of(members)
    follower = next(m for m in members if m is not leader)
    with Client(follower.endpoint) as c:
        lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=4), timeout=10)
        c.put(b"lk/held", b"v", lease=lease.ID)
    answers: list[tuple[float, int]] = []
    failures: list[tuple[grpc.StatusCode, str]] = []
    stop = threading.Event()

    def keep_alive():
        # as clientv3: a keep-alive every TTL/3 s on one stream, a new stream after an error
        with Client(follower.endpoint) as c:
            while not stop.is_set():
                requests: queue.Queue = queue.Queue()

                def gen():
                    while (req := requests.get()) is not None:
                        yield req

                stream = c.lease.LeaseKeepAlive(gen())
                try:
                    while not stop.is_set():
                        requests.put(pb.LeaseKeepAliveRequest(ID=lease.ID))
                        answers.append((time.monotonic(), next(stream).TTL))
                        stop.wait(4 / 3)
                except grpc.RpcError as err:
                    failures.append((err.code(), err.details()))
                    stop.wait(0.5)
                finally:
                    requests.put(None)
                    stream.cancel()

    thread = threading.Thread(target=keep_alive, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(answers) >= 2, 10, what="keep-alives before the kill")
        killed = time.monotonic()
        leader.kill()
        survivors = [m for m in members if m is not leader]
        leader_of(survivors)
        # three TTLs after the kill the lease is still there, on both survivors, all along
        with Client(follower.endpoint) as c:
            while time.monotonic() < killed + 12:
                assert c.get(b"lk/held", serializable=True).kvs, "the lease expired while kept alive"
                time.sleep(0.2)
        after = [ttl for t, ttl in answers if t > killed]
        assert after and all(ttl == 4 for ttl in after), answers
        assert answers[-1][0] > killed + 8, "keep-alives stopped being answered after the kill"
        # errors, if any, are etcd's (the stream is then opened again, as clientv3 does)
        for code, details in failures:
            assert code == grpc.StatusCode.UNAVAILABLE, failures
            assert details in ("etcdserver: no leader", "etcdserver: request timed out"), failures
    finally:
        stop.set()
        thread.join(timeout=15)
