"""The Watch service over real gRPC against a running member: many watchers on
one stream, history replay joined to live events, filters, cancellation,
progress, compaction and fragmentation, as etcd 3.4 does them.

Every expectation here was checked against etcd 3.4 itself: run the file with
ETCDLITE_TEST_TARGET=etcd to point it at /usr/bin/etcd instead.
"""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest

from harness.etcd_client import Client
from harness.procs import start_module_member
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.mvccpb import kv_pb2

pytestmark = pytest.mark.process

PUT, DELETE = kv_pb2.Event.PUT, kv_pb2.Event.DELETE
WAIT = 10.0  # seconds any single expected response may take
# the member's limit; big enough for every ordinary request, small enough to
# make fragmenting cheap to test
MAX_REQUEST_BYTES = 64 * 1024
# etcd cuts watch responses at --max-request-bytes plus its gRPC allowance
FRAGMENT_AT = MAX_REQUEST_BYTES + 512 * 1024


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    reg, m = start_module_member(
        tmp_path_factory, "watchapi",
        max_request_bytes=MAX_REQUEST_BYTES,
        experimental_watch_progress_notify_interval="1s",
    )
    yield m
    reg.cleanup()


@pytest.fixture(scope="module")
def c(member):
    with Client(member.endpoint) as client:
        yield client


class WatchStream:
    """One Watch call: requests in through a queue, responses collected by a
    thread so a test can wait for them with a deadline."""

    def __init__(self, client: Client):
        self._requests: queue.Queue = queue.Queue()
        self.responses: queue.Queue = queue.Queue()
        self.reading = threading.Event()  # cleared: the client stops reading (a slow client)
        self.reading.set()
        self.call = client.watch.Watch(iter(self._requests.get, None))
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self):
        try:
            while self.reading.wait():
                resp = next(self.call, None)
                if resp is None:
                    return
                self.responses.put(resp)
        except grpc.RpcError as err:
            self.responses.put(err)

    def send(self, **request) -> None:
        self._requests.put(pb.WatchRequest(**request))

    def next(self, timeout: float = WAIT) -> pb.WatchResponse:
        try:
            resp = self.responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no watch response within {timeout}s") from None
        if isinstance(resp, Exception):
            raise AssertionError(f"watch stream failed: {resp}")
        return resp

    def create(self, **create) -> pb.WatchResponse:
        """Create a watcher; its response must be the next one."""
        self.send(create_request=pb.WatchCreateRequest(**create))
        resp = self.next()
        assert resp.created, resp
        return resp

    def events_until(self, last: dict[int, int], timeout: float = WAIT) -> dict[int, list]:
        """Collect (type, key, value, mod_revision) per watch ID until every
        watcher in `last` (watch ID -> revision) has an event at or past
        its revision. Fails on any other kind of response."""
        got: dict[int, list] = {wid: [] for wid in last}
        deadline = time.monotonic() + timeout
        while any(not got[w] or got[w][-1][3] < rev for w, rev in last.items()):
            resp = self.next(max(0.01, deadline - time.monotonic()))
            assert resp.watch_id in got and resp.events, resp
            assert not (resp.created or resp.canceled or resp.fragment), resp
            got[resp.watch_id] += [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in resp.events]
        return got

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self.reading.set()
        self._thread.join(timeout=5)


@pytest.fixture
def stream(c):
    s = WatchStream(c)
    yield s
    s.close()


def put_rev(c, key, value=b"v") -> int:
    return c.put(key, value).header.revision


# --- many watchers on one stream -----------------------------------------------------


def test_one_stream_many_watchers(c, stream):
    key = stream.create(key=b"w1/k").watch_id
    rng = stream.create(key=b"w1/a", range_end=b"w1/c").watch_id
    prefix = stream.create(key=b"w1/p/", range_end=b"w1/p0").watch_id
    from_key = stream.create(key=b"w1/x", range_end=b"\x00").watch_id
    assert len({key, rng, prefix, from_key}) == 4

    writes = [b"w1/k", b"w1/a", b"w1/b", b"w1/c", b"w1/p/1", b"w1/p0", b"w1/x", b"w1/y", b"w1/0"]
    rev = {k: put_rev(c, k, k + b"!") for k in writes}
    gone = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"w1/a", range_end=b"w1/z")).header.revision
    # one last txn touches every watcher once, so nothing can hide behind it
    last = c.kv.Txn(pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=k, value=b"end"))
        for k in (b"w1/k", b"w1/a", b"w1/p/end", b"w1/zz")])).header.revision

    got = stream.events_until({key: last, rng: last, prefix: last, from_key: last})

    def puts(*ks):
        return [(PUT, k, k + b"!", rev[k]) for k in ks]

    def deletes(*ks):
        return [(DELETE, k, b"", gone) for k in ks]

    assert got[key] == puts(b"w1/k") + deletes(b"w1/k") + [(PUT, b"w1/k", b"end", last)]
    assert got[rng] == puts(b"w1/a", b"w1/b") + deletes(b"w1/a", b"w1/b") + [(PUT, b"w1/a", b"end", last)]
    assert got[prefix] == puts(b"w1/p/1") + deletes(b"w1/p/1") + [(PUT, b"w1/p/end", b"end", last)]
    assert got[from_key] == puts(b"w1/x", b"w1/y") + deletes(b"w1/x", b"w1/y") + [(PUT, b"w1/zz", b"end", last)]


def test_a_new_watcher_starts_after_the_last_write(c, stream):
    """Writes applied while nobody watches still move the revision new
    watchers start from (etcdlite then skips the fan-out): the created
    response carries the last write's revision, and the watcher gets the
    next write's event, none of the earlier ones."""
    for i in range(5):
        rev = put_rev(c, b"nw/k", b"%d" % i)
    created = stream.create(key=b"nw/k")
    assert created.header.revision == rev
    nxt = put_rev(c, b"nw/k", b"next")
    assert stream.events_until({created.watch_id: nxt}) == {created.watch_id: [(PUT, b"nw/k", b"next", nxt)]}


def test_history_replay_joins_live_events_without_gap_or_duplicate(c, stream):
    first = put_rev(c, b"h/0", b"0")
    for i in range(1, 40):
        put_rev(c, b"h/%d" % (i % 7), b"%d" % i)
    written = list(range(first, first + 40))
    stop = threading.Event()

    def writer():
        i = 40
        while not stop.is_set() and i < 400:
            written.append(put_rev(c, b"h/%d" % (i % 7), b"%d" % i))
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        # creating the watcher while writes keep landing: the hand-over from
        # history to live events must neither skip nor repeat a revision
        time.sleep(0.05)
        wid = stream.create(key=b"h/", range_end=b"h0", start_revision=first).watch_id
        deadline = time.monotonic() + WAIT
        while len(written) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        t.join()
    assert len(written) >= 100, "the writer was too slow to overlap the watch creation"
    got = stream.events_until({wid: written[-1]})[wid]
    assert [e[3] for e in got] == written
    assert [e[2] for e in got] == [b"%d" % i for i in range(len(written))]


def test_prev_kv_and_delete_events(c, stream):
    wid = stream.create(key=b"pkv/k", prev_kv=True).watch_id
    r1 = put_rev(c, b"pkv/k", b"v1")
    r2 = put_rev(c, b"pkv/k", b"v2")
    r3 = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"pkv/k")).header.revision
    events = []
    while len(events) < 3:
        resp = stream.next()
        assert resp.watch_id == wid
        events += resp.events
    first, second, third = events
    assert (first.type, first.kv.value, first.kv.version, first.kv.create_revision) == (PUT, b"v1", 1, r1)
    assert not first.HasField("prev_kv")
    assert (second.kv.value, second.kv.version) == (b"v2", 2)
    assert (second.prev_kv.value, second.prev_kv.mod_revision, second.prev_kv.version) == (b"v1", r1, 1)
    # a delete event carries only the key and the deletion's revision
    assert third.type == DELETE
    assert third.kv == kv_pb2.KeyValue(key=b"pkv/k", mod_revision=r3)
    assert (third.prev_kv.value, third.prev_kv.mod_revision) == (b"v2", r2)


def test_noput_and_nodelete_filters(c, stream):
    no_put = stream.create(key=b"flt/", range_end=b"flt0", filters=[pb.WatchCreateRequest.NOPUT]).watch_id
    no_del = stream.create(key=b"flt/", range_end=b"flt0", filters=[pb.WatchCreateRequest.NODELETE]).watch_id
    p1 = put_rev(c, b"flt/a")
    d1 = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"flt/a")).header.revision
    p2 = put_rev(c, b"flt/b")
    d2 = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"flt/b")).header.revision
    got = stream.events_until({no_put: d2, no_del: p2})
    assert [(e[0], e[3]) for e in got[no_put]] == [(DELETE, d1), (DELETE, d2)]
    assert [(e[0], e[3]) for e in got[no_del]] == [(PUT, p1), (PUT, p2)]
    # nothing more for the NODELETE watcher: the next event it sees is the next put
    p3 = put_rev(c, b"flt/c")
    assert [(e[0], e[3]) for e in stream.events_until({no_del: p3})[no_del]] == [(PUT, p3)]


def test_explicit_and_duplicate_watch_ids(c, stream):
    created = stream.create(key=b"wid/k", watch_id=100)
    assert (created.watch_id, created.canceled) == (100, False)
    dup = stream.create(key=b"wid/other", watch_id=100)
    assert (dup.watch_id, dup.canceled, dup.cancel_reason) == (
        -1, True, "mvcc: duplicate watch ID provided on the WatchStream")
    auto = stream.create(key=b"wid/k").watch_id
    assert auto not in (100, -1)
    rev = put_rev(c, b"wid/k")
    got = stream.events_until({100: rev, auto: rev})
    assert [e[3] for e in got[100]] == [rev] and [e[3] for e in got[auto]] == [rev]


def test_cancel(c, stream):
    a = stream.create(key=b"cancel/k").watch_id
    b = stream.create(key=b"cancel/k").watch_id
    stream.send(cancel_request=pb.WatchCancelRequest(watch_id=a))
    resp = stream.next()
    assert (resp.watch_id, resp.canceled, resp.created, list(resp.events)) == (a, True, False, [])
    rev = put_rev(c, b"cancel/k")
    # only b hears of it (an event for a would have to come before b's)
    assert stream.events_until({b: rev}) == {b: [(PUT, b"cancel/k", b"v", rev)]}
    # cancelling an unknown watcher sends nothing: the next response is the progress one
    stream.send(cancel_request=pb.WatchCancelRequest(watch_id=987654))
    stream.send(progress_request=pb.WatchProgressRequest())
    resp = stream.next()
    assert (resp.watch_id, resp.canceled) == (-1, False)


def test_progress_request(c, stream):
    wid = stream.create(key=b"prog/k").watch_id
    rev = put_rev(c, b"prog/k")
    stream.events_until({wid: rev})
    other = put_rev(c, b"prog/unwatched")
    stream.send(progress_request=pb.WatchProgressRequest())
    resp = stream.next()
    assert (resp.watch_id, list(resp.events), resp.created, resp.canceled) == (-1, [], False, False)
    assert resp.header.revision == other
    assert resp.header.member_id != 0 and resp.header.raft_term >= 1


def test_progress_notify(c, stream):
    quiet = stream.create(key=b"pn/quiet", progress_notify=True).watch_id
    rev = put_rev(c, b"pn/elsewhere")
    started = time.monotonic()
    resp = stream.next(timeout=5)  # the interval is 1 s
    assert time.monotonic() - started < 5
    assert (resp.watch_id, list(resp.events), resp.canceled) == (quiet, [], False)
    assert resp.header.revision >= rev


def test_no_progress_notify_while_events_flow(c, stream):
    busy = stream.create(key=b"pn/busy", progress_notify=True).watch_id
    # a write every 0.25 s for 2.5 s: every 1 s tick finds events sent since
    # the previous one, so etcd sends no progress notification
    last = 0
    for i in range(10):
        last = put_rev(c, b"pn/busy", b"%d" % i)
        time.sleep(0.25)
    got = []
    while not got or got[-1].events[-1].kv.mod_revision < last:
        resp = stream.next()
        if not got and not resp.events:
            continue  # a tick may fall between the creation and the first write
        assert resp.events, f"progress notification while events flow: {resp}"
        got.append(resp)
    assert sum(len(r.events) for r in got) == 10 and all(r.watch_id == busy for r in got)
    # once quiet, notifications resume
    resp = stream.next(timeout=5)
    assert (resp.watch_id, list(resp.events)) == (busy, [])


def test_watch_from_a_compacted_revision(c, stream):
    old = put_rev(c, b"cw/k", b"1")
    put_rev(c, b"cw/k", b"2")
    at = put_rev(c, b"cw/k", b"3")
    c.kv.Compact(pb.CompactionRequest(revision=at))
    created = stream.create(key=b"cw/k", start_revision=old)
    resp = stream.next()
    assert resp.watch_id == created.watch_id
    assert (resp.canceled, resp.compact_revision, list(resp.events)) == (True, at, [])
    assert resp.header.revision == 0  # as etcd sends it
    # a negative start is a revision too, so below the compaction (as etcd)
    neg = stream.create(key=b"cw/k", start_revision=-1)
    resp = stream.next()
    assert (resp.watch_id, resp.canceled, resp.compact_revision) == (neg.watch_id, True, at)
    # from the compaction point itself history is still there
    wid = stream.create(key=b"cw/k", start_revision=at).watch_id
    assert stream.events_until({wid: at}) == {wid: [(PUT, b"cw/k", b"3", at)]}


def test_events_of_one_txn_arrive_in_one_response(c, stream):
    wid = stream.create(key=b"atom/", range_end=b"atom0").watch_id
    put_rev(c, b"atom/gone", b"x")
    rev = c.kv.Txn(pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"atom/%d" % i, value=b"v")) for i in range(5)
    ] + [pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"atom/gone"))])).header.revision
    first = stream.next()
    assert first.events[0].kv.key == b"atom/gone" and len(first.events) == 1
    resp = stream.next()
    assert resp.watch_id == wid and resp.header.revision == rev
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in resp.events] == (
        [(PUT, b"atom/%d" % i, rev) for i in range(5)] + [(DELETE, b"atom/gone", rev)])
    # a range delete too
    drev = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"atom/", range_end=b"atom0")).header.revision
    resp = stream.next()
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in resp.events] == [
        (DELETE, b"atom/%d" % i, drev) for i in range(5)]


def test_fragmented_responses(c, stream):
    value_size = MAX_REQUEST_BYTES - 1024  # each put is a valid request
    n = 24
    for i in range(n):
        c.put(b"frag/%02d" % i, bytes([65 + i]) * value_size)
    # prev_kv makes the delete's response carry every value, ~2.5x the
    # limit a watch response is fragmented at
    frag = stream.create(key=b"frag/", range_end=b"frag0", prev_kv=True, fragment=True).watch_id
    whole = stream.create(key=b"frag/", range_end=b"frag0", prev_kv=True).watch_id
    rev = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"frag/", range_end=b"frag0")).header.revision

    parts, unfragmented = [], []
    deadline = time.monotonic() + WAIT
    while not (parts and not parts[-1].fragment) or not unfragmented:
        resp = stream.next(max(0.01, deadline - time.monotonic()))
        (parts if resp.watch_id == frag else unfragmented).append(resp)
    assert len(parts) >= 3
    assert [p.fragment for p in parts] == [True] * (len(parts) - 1) + [False]
    for p in parts:
        assert p.header.revision == rev and p.events
        assert len(p.events) == 1 or p.ByteSize() < FRAGMENT_AT
    # every part but the last is full: its next event would reach the limit
    for p, after in zip(parts, parts[1:]):
        assert p.ByteSize() + after.events[0].ByteSize() + 4 >= FRAGMENT_AT
    events = [e for p in parts for e in p.events]
    assert [(e.type, e.kv.key, e.prev_kv.value) for e in events] == [
        (DELETE, b"frag/%02d" % i, bytes([65 + i]) * value_size) for i in range(n)]
    # a watcher that did not ask for fragments gets the revision whole
    (single,) = unfragmented
    assert single.watch_id == whole and not single.fragment
    assert list(single.events) == events


def test_a_bad_request_does_not_break_the_stream(c, stream):
    good = stream.create(key=b"bad/k").watch_id
    stream.send(create_request=pb.WatchCreateRequest(key=b"bad/z", range_end=b"bad/a"))
    resp = stream.next()
    assert (resp.watch_id, resp.created, resp.canceled, resp.cancel_reason) == (
        -1, True, True, "mvcc: watcher range is empty")
    stream.send(create_request=pb.WatchCreateRequest(key=b"bad/z", range_end=b"bad/z"))
    assert stream.next().cancel_reason == "mvcc: watcher range is empty"
    later = stream.create(key=b"bad/k").watch_id
    rev = put_rev(c, b"bad/k")
    got = stream.events_until({good: rev, later: rev})
    assert [e[3] for e in got[good]] == [rev] and [e[3] for e in got[later]] == [rev]


# --- a client that reads slower than events come ------------------------------------------

SLOW_VALUE = b"s" * (60 * 1024)


@pytest.fixture
def slow_stream(member):
    """A stream whose client buffers little while it does not read (its
    channel does not grow its flow-control windows) and accepts large
    responses (etcd sends up to 1,000 revisions of history in one)."""
    client = Client(member.endpoint, options=[("grpc.http2.bdp_probe", 0),
                                              ("grpc.max_receive_message_length", 256 << 20)])
    s = WatchStream(client)
    yield s
    s.close()
    client.close()


def _fill(c, keys, n) -> list[int]:
    """n puts of SLOW_VALUE cycling over keys; their revisions."""
    return [put_rev(c, keys[i % len(keys)], SLOW_VALUE + b"%d" % i) for i in range(n)]


def test_a_slow_client_gets_every_event_once_it_reads_again(c, slow_stream):
    """The client stops reading while ~36 MB of events are written for its
    watchers (more than the server buffers per stream), then reads again:
    every watcher gets every event in order, once, with prev_kv, and
    follows live events afterwards. (The server moves the watchers out of
    the live fan-out and replays the rest from history.)"""
    stream = slow_stream
    one = stream.create(key=b"slow/a", prev_kv=True).watch_id
    every = stream.create(key=b"slow/", range_end=b"slow0").watch_id
    stream.reading.clear()
    revs = _fill(c, [b"slow/a", b"slow/b"], 600)
    stream.reading.set()
    got = stream.events_until({one: revs[-2], every: revs[-1]}, timeout=60)
    assert [e[3] for e in got[every]] == revs
    assert [e[1] for e in got[every]] == [b"slow/a", b"slow/b"] * 300
    assert [e[3] for e in got[one]] == revs[0::2]
    assert all(e[2] == SLOW_VALUE + b"%d" % (2 * i) for i, e in enumerate(got[one]))
    live = put_rev(c, b"slow/a", b"live")
    after = stream.events_until({one: live, every: live})
    assert after[one] == after[every] == [(PUT, b"slow/a", b"live", live)]


def test_a_slow_client_left_behind_by_compaction_is_told_so(c, slow_stream):
    """While the client is not reading, ~60 MB of events are written to its
    watcher's key and then compacted away. When it reads again it gets the
    events the server had buffered, in order from the first, then a cancel
    with the compact revision instead of the rest, as from etcd: the server
    did not hold all of them in memory for it."""
    stream = slow_stream
    wid = stream.create(key=b"slowc/k").watch_id
    stream.reading.clear()
    revs = _fill(c, [b"slowc/k"], 1000)
    c.kv.Compact(pb.CompactionRequest(revision=revs[-1]))
    stream.reading.set()
    seen = []
    deadline = time.monotonic() + 60
    while True:
        resp = stream.next(max(0.01, deadline - time.monotonic()))
        assert resp.watch_id == wid, resp
        if resp.canceled:
            break
        seen += [e.kv.mod_revision for e in resp.events]
    assert resp.compact_revision == revs[-1]
    assert seen == revs[:len(seen)]
    assert len(seen) < len(revs) // 2, f"{len(seen)} of {len(revs)} events were buffered"
