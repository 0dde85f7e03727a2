"""Big applies yield (issue 24; issue 22's "big DeleteRange not stalling"): a command that
touches hundreds of thousands of keys is applied, and its events fanned out to watchers, a
bounded amount of work per turn of the member's event loop, so other clients are served
meanwhile and SIGTERM stops the member; what is applied, what readers see and what watchers
get is what applying it in one go gives.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from pysyncobj import FAIL_REASON

from etcdlite.apply import BatchRun, Op, StateMachine, events_of
from etcdlite.mvcc.kv import DELETE
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.server import maintenance
from etcdlite.server.watch import WatchStream
from etcdlite.watch_hub import STEP_EVENTS, Watcher, WatchHub
from harness.etcd_client import Client

KEYS = 300_000  # the DeleteRange
READ_DEADLINE = 1.0  # seconds a healthy client's Range may take meanwhile
STOP_DEADLINE = 5.0  # seconds SIGTERM may take to stop the member
PREFIX, PREFIX_END = b"/big/", b"/big0"


def _delete_range(key: bytes, end: bytes, prev_kv: bool = False) -> tuple:
    return (Op.DELETE_RANGE, pb.DeleteRangeRequest(key=key, range_end=end, prev_kv=prev_kv).SerializeToString())


def _loaded(n: int) -> StateMachine:
    machine = StateMachine()
    machine.apply_batch([(Op.PUT_VALUE, b"/big/%07d" % i, b"v%d" % i) for i in range(n)])
    return machine


def _txn(*ops: pb.RequestOp) -> tuple:
    return (Op.TXN, pb.TxnRequest(success=list(ops)).SerializeToString())


class _EveryStep:
    """A pacer whose deadline has always passed: a long command stops after each step."""

    def deadline(self) -> float:
        return 0.0


def _stepped(machine: StateMachine, entry: list):
    """Apply entry a step at a time: yields after each stop, returns the applied list."""
    run = machine.apply_batch(entry, _EveryStep())
    if not isinstance(run, BatchRun):
        return run
    while (applied := run.run()) is None:
        yield
    return applied


def _answers(applied) -> list:
    return [(op, result, [tuple(e) for e in events_of(events)], revision)
            for op, result, events, revision in applied]


# --- the state machine: an entry applied a step at a time ----------------------------------


def test_an_entry_stopped_inside_a_long_command_ends_as_one_applied_in_one_go():
    """An entry of a put, a DeleteRange of 5,000 keys (with prev_kv), a Txn
    deleting another range, a lease grant and a Txn of 600 puts, run with a deadline that has
    always passed (it stops after every step): the same answers, events and
    store as applying it at once. Meanwhile reads answer as of the revision
    before the long command, history has nothing of it, and the hashes hold."""
    n = 5000
    entry = [
        (Op.PUT_VALUE, b"/a", b"1"),
        _delete_range(b"/big/0000", b"/big/0003", prev_kv=True),
        _txn(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"/big/0003", range_end=PREFIX_END)),
             pb.RequestOp(request_put=pb.PutRequest(key=b"/b", value=b"2"))),
        (Op.LEASE_GRANT, pb.LeaseGrantRequest(ID=7, TTL=60).SerializeToString()),
        _txn(*[pb.RequestOp(request_put=pb.PutRequest(key=b"/t/%04d" % i, value=b"x")) for i in range(600)]),
    ]
    once = _loaded(n)
    expected = _answers(once.apply_batch(entry))

    stepped = _loaded(n)
    before = stepped.kv.current_revision
    hash_before, history_hash = stepped.kv.hash(), stepped.kv.hash_kv(before)
    steps = _stepped(stepped, entry)
    stops = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            applied = done.value
            break
        stops += 1
        kv = stepped.kv
        assert kv.writing
        revision = kv.current_revision
        # the put is applied, then each long command in turn has its txn open
        assert kv.range(PREFIX, PREFIX_END).count == {before + 1: n, before + 2: n - 3000, before + 3: 0}[revision]
        assert kv.range(b"/t/", b"/t0").count == 0
        assert all(e.kv.mod_revision <= revision for e in kv.events_since(before, PREFIX, PREFIX_END))
        assert kv.hash_kv(before) == history_hash
    assert stops >= n // 512 - 2, "the long commands did not stop between their steps"
    assert _answers(applied) == expected
    assert stepped.kv.hash() == once.kv.hash() != hash_before
    assert not stepped.kv.writing


def test_a_lease_revoked_with_many_keys_is_applied_a_step_at_a_time():
    machine = StateMachine()
    machine.apply_batch([(Op.LEASE_GRANT, pb.LeaseGrantRequest(ID=5, TTL=60).SerializeToString())])
    machine.apply_batch([(Op.PUT, pb.PutRequest(key=b"/l/%05d" % i, value=b"v", lease=5).SerializeToString())
                         for i in range(3000)])
    steps = _stepped(machine, [(Op.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=5).SerializeToString())])
    stops = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            applied = done.value
            break
        stops += 1
        assert machine.kv.range(b"/l/", b"/l0").count == 3000
    assert stops >= 3000 // 512 - 1
    (_, _, events, _), = applied
    assert len(events) == 3000 and all(e.type == DELETE for e in events)
    assert machine.kv.range(b"/l/", b"/l0").count == 0 and 5 not in machine.leases


# --- the hub: a revision of many events published a step at a time --------------------------


class _Receiver:
    """A stream that records, per watcher, each response as (revision, its event keys)."""

    def __init__(self):
        self.got: dict[int, list] = {}

    def send_event_fields(self, w, fields: bytes, revision: int) -> None:
        keys = [e.kv.key for e in pb.WatchResponse.FromString(fields).events]
        self.got.setdefault(w.id, []).append((revision, keys))


def _watcher(watch_id: int, receiver, key=PREFIX, range_end=PREFIX_END, next_revision=0) -> Watcher:
    return Watcher(watch_id, key, range_end, prev_kv=False, progress_notify=False, fragment=False,
                   filters=(), next_revision=next_revision, stream=receiver)


def test_a_revision_of_many_events_reaches_each_watcher_whole_at_the_last_step():
    """A DeleteRange's 3,000 events, published a step at a time: nothing is
    sent and the hub's revision stays the previous one until the last step,
    which sends each watcher still live all its events in one response; a
    watcher removed meanwhile gets nothing."""
    machine = _loaded(3000)
    (_, _, events, revision), = machine.apply_batch([_delete_range(PREFIX, PREFIX_END)])
    events = events_of(events)
    hub = WatchHub(revision - 1)
    receiver = _Receiver()
    whole, one_key, leaving = (_watcher(1, receiver), _watcher(2, receiver, b"/big/0000007", b""),
                               _watcher(3, receiver))
    for w in (whole, one_key, leaving):
        hub.add(w)
    steps = hub.publish_steps(events, revision)
    next(steps)
    assert hub.publishing and hub.revision == revision - 1 and not receiver.got
    hub.remove(leaving)  # its stream ended meanwhile
    for _ in steps:
        assert not receiver.got
    assert not hub.publishing and hub.revision == revision
    assert receiver.got[1] == [(revision, [b"/big/%07d" % i for i in range(3000)])]
    assert receiver.got[2] == [(revision, [b"/big/0000007"])]
    assert 3 not in receiver.got
    assert len(events) > STEP_EVENTS


# --- a member under it ------------------------------------------------------------------


def _load(c: Client, n: int, in_flight: int = 3) -> None:
    """n keys under PREFIX, 10,000 a Txn (the member runs with --max-txn-ops 10000), a few Txns
    at a time: thirty at once queue past the server's 7 s request timeout on a busy machine."""
    calls = []
    for lo in range(0, n, 10_000):
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"/big/%07d" % i, value=b"v"))
               for i in range(lo, min(n, lo + 10_000))]
        if len(calls) >= in_flight:
            calls.pop(0).result()
        calls.append(c.kv.Txn.future(pb.TxnRequest(success=ops), timeout=120))
    for call in calls:
        call.result()
    assert c.kv.Range(pb.RangeRequest(key=PREFIX, range_end=PREFIX_END, count_only=True), timeout=30).count == n


def _applying(c: Client) -> bool:
    """Whether the member has committed an entry it has not applied yet."""
    status = c.maintenance.Status(pb.StatusRequest(), timeout=10)
    return status.raftIndex > status.raftAppliedIndex


def _timed_range(c: Client) -> float:
    start = time.monotonic()
    resp = c.kv.Range(pb.RangeRequest(key=b"/healthy"), timeout=30)
    assert resp.kvs[0].value == b"yes"
    return time.monotonic() - start


# A watcher in a process of its own: decoding a response of 300k events holds the
# client's GIL for a while, which in the test's own process would delay its Ranges.
_WATCHER = """
import sys, grpc
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb, rpc_pb2_grpc as rpc
channel = grpc.insecure_channel(sys.argv[1], options=[("grpc.max_receive_message_length", -1)])
create = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"/big/", range_end=b"/big0"))
def requests():
    yield create
    sys.stdin.read()  # until the test closes it
call = rpc.WatchStub(channel).Watch(requests(), timeout=300)
assert next(call).created
print("created", flush=True)
resp = next(call)
print(len(resp.events), *sorted({e.kv.mod_revision for e in resp.events}), flush=True)
"""


@pytest.mark.process
def test_a_range_is_answered_within_a_second_while_300k_keys_are_deleted(procs, tmp_path):
    """A DeleteRange of 300k keys, watched over the whole range: while it is
    applied, and while its 300k events go to the watcher, another client's
    Range is answered within READ_DEADLINE each time; the watcher then gets
    all of them in one response (one revision: atomic), and a Range after the
    delete's answer finds none of the keys."""
    member = procs.start_etcdlite(tmp_path, **{"max-txn-ops": "10000"})
    with Client(member.endpoint) as c:
        c.put(b"/healthy", b"yes")
        _load(c, KEYS)
        watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, member.endpoint], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert watcher.stdout.readline() == "created\n"
            got: list[str] = []
            reader = threading.Thread(target=lambda: got.append(watcher.stdout.readline()), daemon=True)
            reader.start()
            delete = c.kv.DeleteRange.future(pb.DeleteRangeRequest(key=PREFIX, range_end=PREFIX_END), timeout=300)
            slowest, reads, while_applying = 0.0, 0, 0
            while not delete.done() or reader.is_alive():
                applying = not delete.done() and _applying(c)
                took = _timed_range(c)
                reads += 1
                while_applying += applying
                slowest = max(slowest, took)
                assert took < READ_DEADLINE, f"a Range took {took:.2f}s during the delete (read {reads})"
                assert reads < 10_000, "the delete and its fan-out did not end"
            assert delete.result().deleted == KEYS
            assert while_applying >= 3, f"only {while_applying} Ranges were answered while the delete was applied"
            assert got == [f"{KEYS} {delete.result().header.revision}\n"], "not one response of every event"
            assert c.kv.Range(pb.RangeRequest(key=PREFIX, range_end=PREFIX_END, count_only=True), timeout=10).count == 0
            print(f"BIG-APPLY reads={reads} while_applying={while_applying} slowest={slowest:.3f}s")
        finally:
            watcher.stdin.close()
            try:
                watcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                watcher.kill()
                watcher.wait()


@pytest.mark.process
def test_sigterm_stops_a_member_in_the_middle_of_a_300k_key_delete(procs, tmp_path):
    member = procs.start_etcdlite(tmp_path, **{"max-txn-ops": "10000"})
    with Client(member.endpoint) as c:
        _load(c, KEYS)
        c.kv.DeleteRange.future(pb.DeleteRangeRequest(key=PREFIX, range_end=PREFIX_END), timeout=60)
        deadline = time.monotonic() + 30
        while not _applying(c):
            assert time.monotonic() < deadline, "the delete was never seen being applied"
        start = time.monotonic()
        os.kill(member.pid, signal.SIGTERM)
        try:
            member.proc.wait(timeout=STOP_DEADLINE)
        except Exception:
            raise AssertionError(f"the member ignored SIGTERM for {STOP_DEADLINE}s during the delete") from None
        print(f"BIG-APPLY sigterm took {time.monotonic() - start:.2f}s")


def test_no_snapshot_is_served_of_a_part_applied_entry():
    """Maintenance.Snapshot waits while a long command is part-applied: the
    store then holds part of a revision, a state the log never had."""
    machine = _loaded(2000)
    run = machine.apply_batch([_delete_range(PREFIX, PREFIX_END)], _EveryStep())
    assert isinstance(run, BatchRun)
    assert maintenance._snapshot(machine) is None
    while run.run() is None:
        pass
    data, revision = maintenance._snapshot(machine)
    assert revision == machine.kv.current_revision and data.startswith(maintenance.SNAPSHOT_MAGIC)


# --- Raft: the entry stays unapplied for pysyncobj until it is whole -----------------------


@pytest.mark.process
def test_raft_applies_a_long_entry_over_many_turns_and_snapshots_only_after_it(tmp_path, monkeypatch):
    """A lone RaftNode applying a DeleteRange of 20,000 keys, a step per turn
    (a slice of 0): the event loop turns many times before the answer; meanwhile the entry is committed
    but not applied, reads see the keys, and a forced log compaction waits;
    once the entry is whole it snapshots (a forked child), and a node
    restarted from that snapshot has none of the keys."""
    from etcdlite.raft import apply_pacing
    from etcdlite.raft import node as raft_node

    monkeypatch.setattr(apply_pacing, "APPLY_SLICE", 0.0)  # a step a turn

    async def scenario():
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        address = "127.0.0.1:%d" % _free_port()
        node = raft_node.RaftNode(loop, address, [], str(tmp_path / "member"), on_ready=ready.set,
                                  password="test secret", snapshot_count=10**6)
        try:
            await asyncio.wait_for(ready.wait(), 10)
            await _proposed(node, [(Op.PUT_VALUE, b"/big/%07d" % i, b"v") for i in range(20_000)])
            turns = 0
            seen_paused = answered = False

            def turn():
                nonlocal turns, seen_paused
                if answered:
                    return
                turns += 1
                if node.applied_index < node.commit_index:
                    seen_paused = True
                    with node.lock:
                        assert node.machine.kv.range(PREFIX, PREFIX_END).count == 20_000
                    node._obj.forceLogCompaction()
                    assert not os.path.exists(tmp_path / "member" / "raft.snapshot")
                loop.call_soon(turn)

            loop.call_soon(turn)
            applied = await _proposed(node, [_delete_range(PREFIX, PREFIX_END)])
            answered = True
            assert applied[0][1].deleted == 20_000
            assert seen_paused and turns >= 20_000 // 512, f"applied in {turns} turns"
            deadline = time.monotonic() + 60  # the snapshot child runs at the lowest priority
            while not os.path.exists(tmp_path / "member" / "raft.snapshot"):
                assert time.monotonic() < deadline, "no snapshot after the entry was applied"
                await asyncio.sleep(0.05)
        finally:
            node.stop()
        ready = asyncio.Event()
        node = raft_node.RaftNode(loop, address, [], str(tmp_path / "member"), on_ready=ready.set,
                                  password="test secret", snapshot_count=10**6)
        try:
            await asyncio.wait_for(ready.wait(), 10)
            with node.lock:
                assert node.machine.kv.range(PREFIX, PREFIX_END).count == 0
        finally:
            node.stop()

    asyncio.run(scenario())


async def _proposed(node, commands) -> list:
    done = asyncio.get_running_loop().create_future()
    node.propose(commands, lambda applied, reason: done.set_result((applied, reason)))
    applied, reason = await asyncio.wait_for(done, 30)
    assert reason == FAIL_REASON.SUCCESS
    return applied


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Member:
    """What a WatchStream uses of its member: a real state machine and hub, no Raft."""

    def __init__(self, machine: StateMachine, hub: WatchHub):
        self.machine, self.hub = machine, hub
        self.cfg = SimpleNamespace(max_request_bytes=1 << 20)

    def read(self, query, *arg):
        return query(self.machine, *arg)

    def header(self, header, revision=None) -> None:
        header.revision = self.hub.revision if revision is None else revision

    def header_field(self, revision: int) -> bytes:
        return pb.WatchResponse(header=pb.ResponseHeader(revision=revision)).SerializeToString()


def test_a_watcher_created_while_a_revision_is_published_gets_it_once_from_history():
    """A watcher created from "now" while the hub is part-way through a
    revision would miss it (the hub's fan-out list was taken before it came):
    it catches up from the store's history instead, and the hub's last step
    does not send it again."""
    machine = _loaded(3000)
    (_, _, events, revision), = machine.apply_batch([_delete_range(PREFIX, PREFIX_END)])
    hub = WatchHub(revision - 1)
    member = _Member(machine, hub)
    hub.add(_watcher(1, _Receiver()))  # someone is watching, so the revision is published a step at a time
    stream = WatchStream(member)
    steps = hub.publish_steps(events_of(events), revision)
    for _ in range(8):  # past the key order (5 steps of 512 events) and the fan-out list, into the bodies
        next(steps)
    stream.create(pb.WatchCreateRequest(key=PREFIX, range_end=PREFIX_END))
    remaining = sum(1 for _ in steps)
    assert remaining >= 1
    responses = [pb.WatchResponse.FromString(m) if isinstance(m, bytes) else m for m in stream.queue]
    created, *rest = responses
    assert created.created and created.header.revision == revision - 1
    assert [(r.header.revision, len(r.events)) for r in rest] == [(revision, 3000)]
    assert not stream.unsynced and hub.holds(stream.watchers[created.watch_id])
