"""Leases over gRPC: grant, keep-alive, time-to-live, revoke, and expiry
decided by the leader that deletes the attached keys where watchers see it."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest

from harness.etcd_client import Client, error_of, wait_until
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness.procs import start_module_member
from etcdlite.pb.mvccpb import kv_pb2

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    reg, m = start_module_member(tmp_path_factory, "lease")
    yield m
    reg.cleanup()


@pytest.fixture
def c(member):
    with Client(member.endpoint) as client:
        yield client


def test_grant_with_given_id_and_duplicate(c):
    resp = c.lease.LeaseGrant(pb.LeaseGrantRequest(ID=0x1234, TTL=30))
    assert (resp.ID, resp.TTL) == (0x1234, 30)
    assert resp.header.revision > 0 and resp.header.member_id != 0
    assert error_of(lambda: c.lease.LeaseGrant(pb.LeaseGrantRequest(ID=0x1234, TTL=30))) == (
        grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
    ids = {s.ID for s in c.lease.LeaseLeases(pb.LeaseLeasesRequest()).leases}
    assert 0x1234 in ids


def test_generated_ids_are_distinct_and_ttl_has_a_floor(c):
    a = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=1))
    b = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=100))
    assert a.ID != b.ID and a.ID != 0 and b.ID != 0
    assert a.TTL == 2  # etcd's minimum TTL with default election settings
    assert b.TTL == 100


def test_too_large_ttl(c):
    assert error_of(lambda: c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=9_000_000_001))) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")


def test_unknown_lease_errors(c):
    assert error_of(lambda: c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=0xDEAD))) == (
        grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    assert error_of(lambda: c.put(b"lease/unknown", b"v", lease=0xDEAD)) == (
        grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    ttl = c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=0xDEAD))
    assert ttl.TTL == -1
    ka = next(c.lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=0xDEAD)])))
    assert (ka.ID, ka.TTL) == (0xDEAD, 0)
    assert not c.get(b"lease/unknown").kvs


def test_time_to_live_lists_keys_and_revoke_deletes_them(c):
    lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60))
    c.put(b"lease/r/b", b"1", lease=lease.ID)
    c.put(b"lease/r/a", b"2", lease=lease.ID)
    c.put(b"lease/r/c", b"3")
    ttl = c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID, keys=True))
    assert ttl.grantedTTL == 60 and 55 <= ttl.TTL <= 60
    assert list(ttl.keys) == [b"lease/r/a", b"lease/r/b"]
    # moving a key to no lease detaches it
    c.put(b"lease/r/b", b"1")
    ttl = c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID, keys=True))
    assert list(ttl.keys) == [b"lease/r/a"]
    before = c.get(b"lease/r/c").header.revision
    resp = c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease.ID))
    assert resp.header.revision == before + 1
    keys = [kv.key for kv in c.get(b"lease/r/", range_end=b"lease/r0").kvs]
    assert keys == [b"lease/r/b", b"lease/r/c"]
    assert c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID)).TTL == -1


def _watch(c, key, range_end):
    """Start a watch; returns (queue of responses, cancel)."""
    requests: queue.Queue = queue.Queue()
    requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=range_end)))
    out: queue.Queue = queue.Queue()

    def gen():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    call = c.watch.Watch(gen())

    def pump():
        try:
            for resp in call:
                out.put(resp)
        except grpc.RpcError:
            pass

    threading.Thread(target=pump, daemon=True).start()
    created = out.get(timeout=10)
    assert created.created
    return out, call.cancel


def test_expiry_deletes_keys_and_watchers_see_it(c):
    lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2))
    c.put(b"lease/e/1", b"a", lease=lease.ID)
    c.put(b"lease/e/2", b"b", lease=lease.ID)
    events, cancel = _watch(c, b"lease/e/", b"lease/e0")
    try:
        granted_at = time.monotonic()
        wait_until(lambda: not c.get(b"lease/e/", range_end=b"lease/e0").kvs, timeout=10, what="lease expiry")
        assert time.monotonic() - granted_at >= 1.0, "lease expired long before its TTL"
        resp = events.get(timeout=10)
        assert [(e.type, e.kv.key) for e in resp.events] == [
            (kv_pb2.Event.DELETE, b"lease/e/1"), (kv_pb2.Event.DELETE, b"lease/e/2")]
        assert resp.events[0].kv.mod_revision == resp.events[1].kv.mod_revision  # one revision
        assert c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID)).TTL == -1
    finally:
        cancel()


def test_keepalive_holds_a_lease_past_its_ttl(c):
    lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=2))
    c.put(b"lease/k", b"v", lease=lease.ID)
    stop = threading.Event()

    def requests():
        while not stop.is_set():
            yield pb.LeaseKeepAliveRequest(ID=lease.ID)
            stop.wait(0.5)

    responses = c.lease.LeaseKeepAlive(requests())
    try:
        start = time.monotonic()
        for resp in responses:
            assert (resp.ID, resp.TTL) == (lease.ID, 2)
            assert c.get(b"lease/k").kvs, "key of a kept-alive lease vanished"
            if time.monotonic() - start > 4.5:
                break
    finally:
        stop.set()
        responses.cancel()
    wait_until(lambda: not c.get(b"lease/k").kvs, timeout=10, what="expiry after keep-alives stop")
