"""A member killed with SIGKILL under load loses no acknowledged write."""

from __future__ import annotations

import threading

import grpc
import pytest

from harness.etcd_client import Client
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

pytestmark = pytest.mark.process


def test_sigkill_during_concurrent_puts_loses_no_acknowledged_put(procs, tmp_path):
    member = procs.start_etcdlite(tmp_path, name="crash")
    acked: dict[bytes, tuple[bytes, int]] = {}
    lock = threading.Lock()
    enough = threading.Event()
    stop = threading.Event()

    def writer(n: int) -> None:
        with Client(member.endpoint) as c:
            i = 0
            while not stop.is_set():
                key, value = f"w{n}/{i:06d}".encode(), f"v{n}-{i}".encode()
                try:
                    rev = c.put(key, value).header.revision
                except grpc.RpcError:
                    return  # the member is gone: this put was never acknowledged
                with lock:
                    acked[key] = (value, rev)
                    if len(acked) >= 400:
                        enough.set()
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    try:
        assert enough.wait(60), "writers made no progress"
        member.kill()  # SIGKILL while the writers are still going
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert len(acked) >= 400
    top = max(rev for _, rev in acked.values())

    member.restart()
    with Client(member.endpoint) as c:
        got = {kv.key: (kv.value, kv.mod_revision) for kv in c.get(b"w", range_end=b"x").kvs}
        missing = [k for k in acked if k not in got]
        assert not missing, f"{len(missing)} acknowledged puts lost, e.g. {missing[:5]}"
        changed = [k for k, v in acked.items() if got[k] != v]
        assert not changed, f"acknowledged puts came back different: {changed[:5]}"
        # revisions continue from where they were, never reused
        assert c.put(b"after", b"restart").header.revision > top


def test_leases_and_revision_survive_restart(procs, tmp_path):
    member = procs.start_etcdlite(tmp_path, name="leases")
    with Client(member.endpoint) as c:
        lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600), timeout=10)
        c.put(b"leased", b"v", lease=lease.ID)
        c.kv.Compact(pb.CompactionRequest(revision=2), timeout=10)
        rev = c.put(b"plain", b"v").header.revision
    member.kill()
    member.restart()
    with Client(member.endpoint) as c:
        ttl = c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID, keys=True), timeout=10)
        assert ttl.grantedTTL == 600 and list(ttl.keys) == [b"leased"]
        assert 0 < ttl.TTL <= 600
        resp = c.get(b"leased")
        assert resp.kvs[0].lease == lease.ID
        assert resp.header.revision == rev
        try:
            c.get(b"plain", revision=1)
            raise AssertionError("read below the compacted revision succeeded after restart")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.OUT_OF_RANGE
            assert err.details() == "etcdserver: mvcc: required revision has been compacted"


def test_sigterm_shuts_down_cleanly_and_keeps_data(procs, tmp_path):
    member = procs.start_etcdlite(tmp_path, name="term")
    with Client(member.endpoint) as c:
        c.put(b"k", b"v")
    assert member.terminate() == 0
    member.restart()
    with Client(member.endpoint) as c:
        assert c.get(b"k").kvs[0].value == b"v"
