"""Watch and Lease streams used as an attacker would (issue 24): many watchers on a
stream that never reads, requests that never stop, revisions of many events
against many watchers, odd IDs. The member must keep serving everyone else,
stay linear in the work, and stop on SIGTERM within seconds; odd IDs get the
answers the real etcd 3.4 gives.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import signal
import socket
import struct
import threading
import time
from types import SimpleNamespace

import grpc
import pytest

from etcdlite.mvcc.kv import DELETE, PUT, Event, KeyValue
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.server import watch
from etcdlite.server.watch import MAX_QUEUED_MESSAGES, WatchService, WatchStream
from etcdlite.watch_hub import Watcher, WatchHub
from grpclite.wire import (
    ACK,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    FRAME_HEADER,
    HEADERS,
    PING,
    PREFACE,
    S_INITIAL_WINDOW_SIZE,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
)
from harness.etcd_client import Client, wait_until
from harness.faultproxy import FaultProxy
from harness.h2attack import WATCH, message, request_block
from harness.h2attack import frame as _frame

# watchers over the whole keyspace on the one stream that never reads: enough that
# walking them all per event (the quadratic "fall behind" of issue 24) makes a Put
# miss PUT_DEADLINE several times over, few enough to create them in a moment
WATCHERS = 12_000
PUT_DEADLINE = 1.0  # seconds any Put from another client may take meanwhile
STOP_DEADLINE = 5.0  # seconds SIGTERM may take to stop the member


class SilentWatcher:
    """A raw HTTP/2 client with one Watch stream: it sends its requests within
    the server's flow-control windows, answers PINGs, and never grants the
    server any window of its own, so it reads nothing past the first 64 KiB
    the protocol allows."""

    def __init__(self, endpoint: str):
        host, port = endpoint.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""
        self.conn_window = DEFAULT_WINDOW
        self.stream_window = DEFAULT_WINDOW
        self.initial_window = DEFAULT_WINDOW
        self.settings_seen = False
        self.sock.sendall(PREFACE + _frame(SETTINGS, 0, 0))
        self.sock.sendall(_frame(HEADERS, END_HEADERS, 1, request_block(WATCH, endpoint.encode())))
        deadline = time.monotonic() + 5
        while not self.settings_seen:  # the server's SETTINGS, acknowledged as a client must
            self._read_frame(deadline)

    def _read_frame(self, deadline: float) -> None:
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("the server closed the connection")
            self.buf += data
        hi, lo, ftype, flags, sid = FRAME_HEADER.unpack_from(self.buf)
        n = (hi << 8) | lo
        payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
        if ftype == SETTINGS and not flags & ACK:
            for i in range(0, len(payload), 6):
                key, value = struct.unpack_from(">HL", payload, i)
                if key == S_INITIAL_WINDOW_SIZE:
                    self.stream_window += value - self.initial_window
                    self.initial_window = value
            self.sock.sendall(_frame(SETTINGS, ACK, 0))
            self.settings_seen = True
        elif ftype == WINDOW_UPDATE:
            increment = U32.unpack(payload)[0] & 0x7FFFFFFF
            if sid == 0:
                self.conn_window += increment
            elif sid == 1:
                self.stream_window += increment
        elif ftype == PING and not flags & ACK:
            self.sock.sendall(_frame(PING, ACK, 0, payload))

    def send(self, data: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while data:
            room = min(self.conn_window, self.stream_window, 16384, len(data))
            if room <= 0:
                self._read_frame(deadline)
                continue
            self.sock.sendall(_frame(DATA, 0, 1, data[:room]))
            self.conn_window -= room
            self.stream_window -= room
            data = data[room:]

    def close(self) -> None:
        self.sock.close()


def _whole_keyspace(n: int) -> bytes:
    create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00"))
    return message(create) * n


class _Member:
    """What a WatchStream uses of its member, without Raft or a store (no
    watcher here needs history)."""

    def __init__(self):
        self.hub = WatchHub(1)
        self.cfg = SimpleNamespace(max_request_bytes=1 << 20)
        self.auth = SimpleNamespace(needed=lambda call: False)  # auth disabled, no token sent

    def header(self, header, revision=None) -> None:
        header.revision = self.hub.revision if revision is None else revision

    def header_field(self, revision: int) -> bytes:
        return pb.WatchResponse(header=pb.ResponseHeader(revision=revision)).SerializeToString()


async def _turns(n: int = 50) -> None:
    """Let the loop run everything that is ready, a few times over."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_requests_wait_while_the_stream_queue_is_over_its_limits(monkeypatch):
    """A client that sends requests and reads nothing makes the stream hold at
    most its queue's limits: past them the stream reads no more requests
    (they wait in the transport, whose flow control bounds them) until the
    client has read the queue down to half, as etcd's receive loop waits on
    its send loop."""
    monkeypatch.setattr(watch, "MAX_QUEUED_MESSAGES", 10)
    create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k"))

    async def scenario():
        member = _Member()
        stream = WatchStream(member)  # no writer: everything queues, as for grpc.aio's server
        requests: asyncio.Queue = asyncio.Queue()
        for _ in range(30):
            requests.put_nowait(create)

        async def incoming():
            while True:
                yield await requests.get()

        reader = asyncio.get_running_loop().create_task(WatchService(member)._read(stream, incoming(), None))
        try:
            await _turns()
            assert (len(stream.watchers), len(stream.queue)) == (11, 11)
            responses = stream.responses()
            for _ in range(6):
                await anext(responses)
            await _turns()
            assert len(stream.watchers) == 11, "the reader went on above half the limit"
            await anext(responses)
            await _turns()
            assert (len(stream.watchers), len(stream.queue)) == (18, 11)
        finally:
            reader.cancel()
            stream.close()

    asyncio.run(scenario())


class _Receiver:
    """A stream that records what the hub sends each watcher: (type, key, has prev_kv) per event."""

    def __init__(self):
        self.got: dict[int, list] = {}

    def _record(self, w, events) -> None:
        self.got.setdefault(w.id, []).extend((e.type, e.kv.key, e.HasField("prev_kv")) for e in events)

    def send_events(self, w, events, revision) -> None:
        self._record(w, events)

    def send_event_fields(self, w, fields, revision) -> None:
        self._record(w, pb.WatchResponse.FromString(fields).events)


def _watcher(watch_id, key, range_end, receiver, *, prev_kv=False, fragment=False, filters=(),
             next_revision=2):
    return Watcher(watch_id, key, range_end, prev_kv=prev_kv, progress_notify=False, fragment=fragment,
                   filters=set(filters), next_revision=next_revision, stream=receiver)


def _deletes(keys, revision: int = 2) -> list[Event]:
    return [Event(DELETE, KeyValue(k, 0, revision, 0, b"", 0), KeyValue(k, 1, 1, 1, b"v", 0), i)
            for i, k in enumerate(keys)]


def test_a_revision_of_many_events_reaches_each_watcher_as_matching_one_by_one_would():
    """Random revisions of several events and random watchers (single keys,
    ranges, from-key, filters, prev_kv, fragmenting, some already past the
    revision): each watcher gets exactly the events of its range that its
    filters let through, in the revision's order, once."""
    rnd = random.Random(24)
    alphabet = [b"a", b"ab", b"b", b"ba", b"c", b"d", b"\x00", b"z"]
    for _ in range(300):
        keys = rnd.sample(alphabet, rnd.randint(2, len(alphabet)))
        events = [Event(rnd.choice((PUT, DELETE)), KeyValue(k, 1, 2, 1, b"v" + k, 0),
                        rnd.choice((None, KeyValue(k, 1, 1, 1, b"old", 0))), i)
                  for i, k in enumerate(keys)]
        hub, receiver, expected = WatchHub(1), _Receiver(), {}
        for watch_id in range(rnd.randint(1, 12)):
            key = rnd.choice(alphabet)
            range_end = rnd.choice((b"", b"\x00", rnd.choice(alphabet), key + b"\x00"))
            if range_end not in (b"", b"\x00") and range_end <= key:
                range_end = b""
            w = _watcher(watch_id, key, range_end, receiver, prev_kv=rnd.random() < 0.5,
                         fragment=rnd.random() < 0.3, filters=rnd.sample((0, 1), rnd.randint(0, 1)),
                         next_revision=rnd.choice((2, 2, 3)))
            hub.add(w)
            if w.next_revision == 2:
                expected[watch_id] = [
                    (e.type, e.kv.key, w.prev_kv and e.prev_kv is not None) for e in events
                    if (e.kv.key == key if not range_end else w.matches_range(e.kv.key)) and w.wants(e)
                ]
        hub.publish(events, 2)
        assert receiver.got == {i: got for i, got in expected.items() if got}, (keys, expected)


def test_a_revision_of_many_events_costs_a_lookup_per_watcher_not_one_per_event():
    """6,000 watchers of one key each, as ranges, and one revision deleting
    6,000 keys: each watcher gets its one event, in far less time than the
    36 million range checks of testing every event against every watcher."""
    keys = [b"key/%05d" % i for i in range(6000)]
    hub, receiver = WatchHub(1), _Receiver()
    for i, key in enumerate(keys):
        hub.add(_watcher(i, key, key + b"\x00", receiver))
    start = time.monotonic()
    hub.publish(_deletes(keys), 2)
    took = time.monotonic() - start
    assert receiver.got == {i: [(DELETE, key, False)] for i, key in enumerate(keys)}
    assert took < 1.0, f"one revision took {took:.2f}s"


def _stops_within(member, seconds: float) -> float:
    """Seconds SIGTERM took to end the member; fails past `seconds`."""
    start = time.monotonic()
    os.kill(member.pid, signal.SIGTERM)
    try:
        member.proc.wait(timeout=seconds)
    except Exception:
        raise AssertionError(f"the member ignored SIGTERM for {seconds}s") from None
    return time.monotonic() - start


@pytest.mark.process
def test_a_stream_of_watchers_that_never_reads_costs_others_nothing(procs, tmp_path):
    """One stream, WATCHERS watchers over every key, never read: its queue
    passes its message limit after a few Puts, and from then on every event
    would have walked all of the stream's watchers (quadratic in them). Each
    Put from another client is answered within a second, and SIGTERM stops
    the member within seconds."""
    member = procs.start_etcdlite(tmp_path)
    attacker = SilentWatcher(member.endpoint)
    try:
        attacker.send(_whole_keyspace(WATCHERS))
        with Client(member.endpoint) as c:
            # enough events to fill the stream's queue past its limit, and some more
            for i in range(MAX_QUEUED_MESSAGES // WATCHERS + 5):
                start = time.monotonic()
                c.kv.Put(pb.PutRequest(key=b"k%d" % i, value=b"v"), timeout=30)
                took = time.monotonic() - start
                assert took < PUT_DEADLINE, f"put {i} took {took:.1f}s"
        assert _stops_within(member, STOP_DEADLINE) < STOP_DEADLINE
    finally:
        attacker.close()


@pytest.mark.process
def test_many_watchers_left_behind_together_catch_up_every_event_once(procs, tmp_path):
    """A client with 1,000 watchers over the whole keyspace stops reading
    while enough Puts are made to pass its stream's message limit (beyond
    what the transport holds), then reads again: every watcher gets every Put
    once, in order, and follows live events afterwards. (Each watcher falls
    behind on its own, the stream catches them up from history 512 at a time
    sharing one read of it; the old code, all at once, passed this too.)"""
    watchers = 1000
    member = procs.start_etcdlite(tmp_path)
    with Client(member.endpoint, options=[("grpc.http2.bdp_probe", 0)]) as c:
        create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"\x00", range_end=b"\x00"))
        requests: queue.Queue = queue.Queue()
        for _ in range(watchers):
            requests.put(create)
        call = c.watch.Watch(iter(requests.get, None), timeout=120)
        try:
            ids = {next(call).watch_id for _ in range(watchers)}
            assert len(ids) == watchers
            revisions = [c.put(b"k%d" % (i % 7), b"v%d" % i).header.revision
                         for i in range(2 * MAX_QUEUED_MESSAGES // watchers)]
            revisions.append(c.put(b"last", b"v").header.revision)  # sent live, or after catching up
            got: dict[int, list[int]] = {i: [] for i in ids}
            deadline = time.monotonic() + 60
            while any(not revs or revs[-1] < revisions[-1] for revs in got.values()):
                assert time.monotonic() < deadline, "not every watcher caught up within 60s"
                resp = next(call)
                assert not (resp.created or resp.canceled), resp
                got[resp.watch_id] += [e.kv.mod_revision for e in resp.events]
            assert all(revs == revisions for revs in got.values())
        finally:
            requests.put(None)
            call.cancel()


# --- negative IDs: as etcd 3.4 (it takes any the client gives) --------------------------


def _errors(call):
    try:
        return call()
    except grpc.RpcError as err:
        return err.code(), err.details()


def _lease_answers(c: Client, lease_id: int) -> list:
    """What the Lease calls answer for a lease the client named lease_id."""
    lease = c.lease
    out = [_errors(lambda: (lambda r: (r.ID, r.TTL, r.error))(
        lease.LeaseGrant(pb.LeaseGrantRequest(ID=lease_id, TTL=60), timeout=10)))]
    out.append(_errors(lambda: lease.LeaseGrant(pb.LeaseGrantRequest(ID=lease_id, TTL=60), timeout=10)))
    ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=10)
    out.append((ttl.ID, ttl.grantedTTL, ttl.TTL > 0))
    out.append(sorted(s.ID for s in lease.LeaseLeases(pb.LeaseLeasesRequest(), timeout=10).leases))
    out.append(_errors(lambda: c.put(b"lease-key", b"v", lease=lease_id).prev_kv.key))
    ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id, keys=True), timeout=10)
    out.append(list(ttl.keys))
    kept = lease.LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease_id)]), timeout=10)
    out.append(_errors(lambda: [(r.ID, r.TTL) for r in kept]))
    revoked = _errors(lambda: lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease_id), timeout=10))
    out.append(revoked if isinstance(revoked, tuple) else "revoked")
    out.append(lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease_id), timeout=10).TTL)
    out.append(c.get(b"lease-key").count)
    return out


def _summary(resp: pb.WatchResponse) -> tuple:
    return (resp.watch_id, resp.created, resp.canceled, resp.cancel_reason,
            tuple((e.type, e.kv.key, e.kv.value) for e in resp.events))


def _watch_answers(c: Client) -> list:
    """What one Watch stream answers to watchers the client numbered -5 and -1
    (-1 being the ID etcd's own stream-wide responses carry), a duplicate, an
    automatic ID, a Put, a cancel of each and a progress request."""
    requests: queue.Queue = queue.Queue()
    responses: queue.Queue = queue.Queue()
    call = c.watch.Watch(iter(requests.get, None))

    def pump():
        try:
            for resp in call:
                responses.put(resp)
        except grpc.RpcError:
            pass

    threading.Thread(target=pump, daemon=True).start()

    def ask(n: int, **request) -> list:
        if request:
            requests.put(pb.WatchRequest(**request))
        return [_summary(responses.get(timeout=10)) for _ in range(n)]

    def create(watch_id: int) -> dict:
        return {"create_request": pb.WatchCreateRequest(key=b"watched", watch_id=watch_id)}

    try:
        out = [ask(1, **create(-5)), ask(1, **create(-5)), ask(1, **create(-1)), ask(1, **create(0))]
        c.put(b"watched", b"v")
        out.append(sorted(ask(3)))
        for watch_id in (-5, -1):
            out.append(ask(1, cancel_request=pb.WatchCancelRequest(watch_id=watch_id)))
        out.append(ask(1, progress_request=pb.WatchProgressRequest()))
        return out
    finally:
        requests.put(None)
        call.cancel()


@pytest.mark.process
def test_negative_lease_and_watch_ids_are_answered_as_etcd_answers_them(procs, tmp_path):
    """etcd 3.4 takes a negative lease ID (LeaseGrant, Put, KeepAlive, Revoke)
    and a negative watch ID (-1 included) like any other the client chooses;
    etcdlite answers every call the same, down to the watch_id of live events."""
    answers = []
    members = procs.start_real_etcd(tmp_path, name="etcd0"), procs.start_etcdlite(tmp_path, name="lite0")
    for member in members:
        with Client(member.endpoint) as c:
            answers.append([_lease_answers(c, -7), _lease_answers(c, -1), _watch_answers(c)])
    etcd, lite = answers
    assert lite == etcd


# --- a client that vanishes without a FIN ------------------------------------------------------


@pytest.mark.process
def test_a_watch_whose_client_is_cut_off_is_closed_by_the_server_keepalive(procs, tmp_path):
    """A Watch through a proxy that then blackholes (a network cut: no FIN, no RST, nothing
    answers): with --grpc-keepalive-interval 1s and --grpc-keepalive-timeout 1s the member pings,
    hears nothing, and closes the connection about 2 s after the cut (its log says so; once the
    cut heals the client finds its call ended); a watch whose client answers the pings goes on."""
    member = procs.start_etcdlite(tmp_path, **{"grpc-keepalive-interval": "1s", "grpc-keepalive-timeout": "1s"})
    port = int(member.endpoint.rsplit(":", 1)[1])
    create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"ka/", range_end=b"ka0"))
    with FaultProxy(0, port) as cut, FaultProxy(0, port) as healthy, \
            Client(cut.address) as c, Client(healthy.address) as h, Client(member.endpoint) as writer:
        stop = threading.Event()

        def requests():
            yield create
            stop.wait()

        calls = [c.watch.Watch(requests(), timeout=60), h.watch.Watch(requests(), timeout=60)]
        try:
            for call in calls:
                assert next(call).created
            writer.put(b"ka/1", b"v")
            for call in calls:
                assert [e.kv.key for e in next(call).events] == [b"ka/1"]
            cut.block("blackhole")
            start = time.monotonic()
            wait_until(lambda: "no answer to a keepalive PING" in member.log_path.read_text(), timeout=10,
                       what="the member to close the cut-off connection")
            took = time.monotonic() - start
            assert 1.5 < took < 3.5, f"closed {took:.1f}s after the cut (interval 1s + timeout 1s)"
            cut.unblock()
            with pytest.raises(grpc.RpcError) as ended:
                next(calls[0])
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
            writer.put(b"ka/2", b"v")
            assert [e.kv.key for e in next(calls[1]).events] == [b"ka/2"]  # the healthy watch goes on
            print(f"KEEPALIVE cut-off connection closed {took:.2f}s after the cut")
        finally:
            stop.set()
            for call in calls:
                call.cancel()
