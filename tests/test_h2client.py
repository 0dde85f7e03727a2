"""The benchmarks' lean gRPC client (benchmarks/h2client.py) and its Watch
streams (benchmarks/h2watch.py) against a real etcdlite member and the real
etcd: the figures they produce are only worth something if their calls do
what grpc's do."""

from __future__ import annotations

import asyncio
import time

import pytest

from benchmarks import h2client, h2watch
from harness.etcd_client import Client
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

pytestmark = pytest.mark.process


@pytest.fixture(params=["etcdlite", "etcd"])
def endpoint(request, procs, tmp_path):
    if request.param == "etcd":
        from harness import procs as p

        if not p.have_binary(p.ETCD_BIN):
            pytest.skip("no real etcd installed")
        return procs.start_real_etcd(tmp_path, name="etcd0").endpoint
    return procs.start_etcdlite(tmp_path, name="lite0").endpoint


def run(coro):
    return asyncio.run(coro)


def test_unary_calls_and_errors(endpoint):
    async def main():
        ch = await h2client.H2Channel.connect(endpoint)
        try:
            kv, lease = h2client.KVStub(ch), h2client.LeaseStub(ch)
            put = await kv.Put(pb.PutRequest(key=b"h2c/a", value=b"1"))
            got = await kv.Range(pb.RangeRequest(key=b"h2c/a"))
            txn = await kv.Txn(pb.TxnRequest(
                compare=[pb.Compare(key=b"h2c/a", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"1")],
                success=[pb.RequestOp(request_put=pb.PutRequest(key=b"h2c/a", value=b"2"))]))
            grant = await lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60))
            with pytest.raises(h2client.CallError) as err:
                await kv.Range(pb.RangeRequest(key=b"h2c/a", revision=put.header.revision + 1000))
            # the connection goes on after an error
            after = await kv.Range(pb.RangeRequest(key=b"h2c/a"))
            return put, got, txn, grant, err.value, after
        finally:
            ch.close()

    put, got, txn, grant, err, after = run(main())
    assert got.kvs[0].value == b"1" and got.kvs[0].mod_revision == put.header.revision
    assert txn.succeeded
    assert grant.ID > 0 and grant.TTL == 60
    assert err.status == 11 and "future revision" in str(err)  # OUT_OF_RANGE, etcd's text
    assert after.kvs[0].value == b"2"
    with Client(endpoint) as c:  # what grpc itself reads back
        assert c.get(b"h2c/a").kvs[0].value == b"2"


def test_many_concurrent_calls_and_a_large_response(endpoint):
    async def main():
        ch = await h2client.H2Channel.connect(endpoint)
        try:
            kv = h2client.KVStub(ch)
            value = b"v" * 4096
            await asyncio.gather(*(kv.Put(pb.PutRequest(key=b"h2c/many/%04d" % i, value=value))
                                   for i in range(600)))
            # 2.4 MB in one response: more than the HTTP/2 default windows
            return await kv.Range(pb.RangeRequest(key=b"h2c/many/", range_end=b"h2c/many0"))
        finally:
            ch.close()

    r = run(main())
    assert r.count == 600 and len(r.kvs) == 600
    assert all(kv.value == b"v" * 4096 for kv in r.kvs)


# --- Watch streams (benchmarks/h2watch.py) --------------------------------------


async def _until(predicate, timeout: float, what: str):
    """Poll predicate() on the event loop until it holds; fail at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


class _PerWatcher:
    """on_events sink of one stream: watch_id -> mod_revisions in arrival order."""

    def __init__(self):
        self.revs = {}

    def __call__(self, resp, now):
        self.revs.setdefault(resp.watch_id, []).extend(ev.kv.mod_revision for ev in resp.events)

    def count(self):
        return sum(len(v) for v in self.revs.values())


def test_watch_streams_deliver_every_put_to_every_watcher(endpoint):
    """2 streams x 50 watchers on one key, one connection; 20 puts from another client."""
    streams, per, puts = 2, 50, 20

    async def main():
        ch = await h2watch.WatchChannel.connect(endpoint)
        try:
            sinks = [_PerWatcher() for _ in range(streams)]
            sts = [ch.watch(on_events=s) for s in sinks]
            for st in sts:
                st.create(b"h2w/key", count=per)
            await asyncio.gather(*(st.wait_created(per, timeout=20) for st in sts))
            with Client(endpoint) as c:
                revs = [(await asyncio.to_thread(c.put, b"h2w/key", b"%d" % i)).header.revision
                        for i in range(puts)]
            # events come in order: once every watcher has the last put, it has all it will get
            await _until(lambda: all(len(s.revs) == per and all(r[-1:] == revs[-1:] for r in s.revs.values())
                                     for s in sinks), 20, "the last put at every watcher")
            assert not any(st.ended for st in sts)
            return sts, sinks, revs, dict(ch.errors)
        finally:
            ch.close()

    sts, sinks, revs, errors = run(main())
    assert errors == {}
    assert revs == sorted(revs)
    for st, sink in zip(sts, sinks):
        assert st.created == per
        assert sorted(st.watch_ids) == sorted(sink.revs)  # every watcher got events, none unknown
        for watch_id, got in sink.revs.items():
            assert got == revs, f"stream {st.sid} watcher {watch_id}"


@pytest.mark.parametrize("window", [65535, h2client.RECV_WINDOW])
def test_watch_response_larger_than_the_windows(endpoint, window):
    """A 200 KiB event: more than the 64 KiB stream and connection windows
    (window=65535: delivered only if the receiver's WINDOW_UPDATEs work; the
    default window needs none)."""
    value = bytes(range(256)) * 800  # 204,800 bytes

    async def main():
        got = []
        ch = await h2watch.WatchChannel.connect(endpoint, on_events=lambda r, now: got.extend(r.events),
                                                recv_window=window)
        try:
            st = ch.watch()
            st.create(b"h2w/big")
            await st.wait_created(1, timeout=20)
            with Client(endpoint) as c:
                rev = (await asyncio.to_thread(c.put, b"h2w/big", value)).header.revision
                await asyncio.to_thread(c.put, b"h2w/big", b"small")  # and the stream goes on after it
            await _until(lambda: len(got) >= 2, 20, "both events")
            return got, rev, dict(ch.errors), ch.window_updates_sent
        finally:
            ch.close()

    got, rev, errors, updates = run(main())
    assert errors == {}  # the server kept to the windows too
    assert got[0].kv.mod_revision == rev and got[0].kv.value == value
    assert got[1].kv.value == b"small"
    if window == 65535:
        assert updates >= 3  # at least 3 windows' worth given back to the stream


def test_watch_on_a_compacted_revision_is_reported(endpoint):
    async def main():
        ch = await h2watch.WatchChannel.connect(endpoint)
        try:
            with Client(endpoint) as c:
                revs = [c.put(b"h2w/old", b"%d" % i).header.revision for i in range(5)]
                c.kv.Compact(pb.CompactionRequest(revision=revs[3], physical=True), timeout=10)
            st = ch.watch()
            st.create(b"h2w/old", start_revision=revs[0])
            await st.wait(lambda s: s.control or s.ended, timeout=20)
            return st, revs, dict(ch.errors)
        finally:
            ch.close()

    st, revs, errors = run(main())
    assert len(st.control) == 1
    resp = st.control[0]
    assert resp.compact_revision == revs[3] and resp.canceled
    assert errors == {f"watch compacted (compact_revision {revs[3]})": 1}


def test_load_worker_records_watch_events_with_the_lean_receiver(endpoint):
    """benchmarks.load's watch task with client="h2", as the suite runs it: streams over
    several connections, events recorded with the send time stamped in the value."""
    from benchmarks.load import _Worker
    from benchmarks.watch_writer import binary_stamp

    w = _Worker()
    t = {"op": "watch", "endpoints": [endpoint], "streams": 3, "watchers_per_stream": 4, "key": b"h2w/load",
         "client": "h2", "index": 0}
    try:
        w.loop.run_until_complete(w.setup_watch(t))
        assert len(w.h2chans) == 3
        with Client(endpoint) as c:
            revs = [c.put(b"h2w/load", binary_stamp(time.time())).header.revision for _ in range(5)]
        got_revs, sent, recv, errors = w.loop.run_until_complete(w.run_watch(20, expected=5 * 12))
    finally:
        w.loop.run_until_complete(w.close())
        w.loop.close()
        asyncio.set_event_loop(None)
    assert errors == {}
    assert sorted(got_revs) == sorted(revs * 12)
    assert all(0 <= b - a < 20 for a, b in zip(sent, recv))
