"""The MVCC store against a plain model: one full snapshot dict per revision plus an event log.

The model states etcd's rules the obvious, slow way; Hypothesis drives both through long random
histories of puts, deletes, multi-op txns, compactions, reads and pickle round trips, and the
invariants compare them after every step.
"""

from __future__ import annotations

import pickle

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from etcdlite.mvcc import (
    DELETE,
    PUT,
    CompactedError,
    Event,
    FutureRevisionError,
    KeyValue,
    MVCCStore,
)
from etcdlite.mvcc.key_history import to_event

KEYS = [b"\x00", b"a", b"ab", b"b", b"ba", b"c"]
RANGE_ENDS = [b"", b"", b"\x00", b"a", b"b", b"bb", b"c", b"d"]
keys = st.sampled_from(KEYS)
range_ends = st.sampled_from(RANGE_ENDS)
values = st.sampled_from([b"", b"x", b"yy"])
leases = st.integers(0, 2)

put_ops = st.tuples(st.just("put"), keys, values, leases)
delete_ops = st.tuples(st.just("delete"), keys, range_ends)
# Read inside a txn at (newest readable revision + offset); offset None reads revision 0.
read_ops = st.tuples(st.just("range"), keys, range_ends,
                     st.one_of(st.none(), st.integers(-3, 1)), st.integers(0, 3))
txn_ops = st.lists(st.one_of(put_ops, delete_ops, read_ops), max_size=6)


def in_range(candidate: bytes, key: bytes, range_end: bytes) -> bool:
    if range_end == b"":
        return candidate == key
    if range_end == b"\x00":
        return key == b"\x00" or candidate >= key
    return key <= candidate < range_end


def tombstone(key: bytes, revision: int) -> KeyValue:
    return KeyValue(key, 0, revision, 0, b"", 0)


class Model:
    """Everything ever written, never forgotten; compaction only moves ``compacted``."""

    def __init__(self) -> None:
        self.snapshots: list[dict[bytes, KeyValue]] = [{}, {}]   # index = revision
        self.log: list[Event] = []   # every event ever, with the prev_kv it had when it happened
        self.compacted = -1

    @property
    def current(self) -> int:
        return len(self.snapshots) - 1

    def check_read(self, revision: int, newest: int) -> int | Exception:
        if revision <= 0:
            return newest
        if revision > newest:
            return FutureRevisionError()
        if revision < self.compacted:
            return CompactedError()
        return revision

    @staticmethod
    def select(snapshot, key, range_end, limit):
        found = sorted((k, v) for k, v in snapshot.items() if in_range(k, key, range_end))
        kvs = [v for _, v in found]
        return (kvs[:limit] if limit > 0 else kvs), len(kvs)

    def held(self, event: Event) -> bool:
        """Whether compaction kept the record behind ``event``."""
        if event.kv.mod_revision > self.compacted:
            return True
        last = [e for e in self.log
                if e.kv.key == event.kv.key and e.kv.mod_revision <= self.compacted][-1]
        return last is event and event.type == PUT

    def events_since(self, start, key, range_end) -> list[Event] | Exception:
        if start < self.compacted:
            return CompactedError()
        out = []
        previous: dict[bytes, Event] = {}
        for event in self.log:
            k = event.kv.key
            before = previous.get(k)
            previous[k] = event
            if event.kv.mod_revision < start or not in_range(k, key, range_end):
                continue
            if not self.held(event):
                continue
            prev_kv = before.kv if before is not None and self.held(before) \
                and before.type == PUT else None
            out.append(event._replace(prev_kv=prev_kv))
        return out

    def size(self) -> int:
        return sum(len(e.kv.key) + len(e.kv.value) for e in self.log if self.held(e))


class MVCCMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = MVCCStore()
        self.model = Model()
        self.replay: list[tuple] = []          # successful writes and compactions, in order
        self.hashes: dict[int, tuple] = {}     # hash_kv answers since the last compaction

    # -- writes ----------------------------------------------------------------------------

    def run_txn(self, ops) -> None:
        model = self.model
        revision = model.current + 1
        work = dict(model.snapshots[-1])
        expected_events: list[Event] = []
        txn = self.store.write()
        for op in ops:
            if op[0] == "put":
                _, key, value, lease = op
                prev = work.get(key)
                new = KeyValue(key, prev.create_revision if prev else revision, revision,
                               prev.version + 1 if prev else 1, value, lease)
                work[key] = new
                assert txn.put(key, value, lease) == (new, prev)
                expected_events.append(Event(PUT, new, prev, len(expected_events)))
            elif op[0] == "delete":
                _, key, range_end = op
                gone = [work.pop(k) for k in sorted(work) if in_range(k, key, range_end)]
                assert txn.delete_range(key, range_end) == gone
                for prev in gone:
                    expected_events.append(
                        Event(DELETE, tombstone(prev.key, revision), prev, len(expected_events)))
            else:
                _, key, range_end, offset, limit = op
                newest = revision if expected_events else model.current
                asked = 0 if offset is None else newest + offset
                at = model.check_read(asked, newest)
                if isinstance(at, Exception):
                    try:
                        txn.range(key, range_end, asked, limit)
                    except type(at):
                        continue
                    raise AssertionError(f"expected {type(at).__name__}")
                view = work if at == revision else model.snapshots[at]
                kvs, count = model.select(view, key, range_end, limit)
                result = txn.range(key, range_end, asked, limit)
                assert (result.kvs, result.count, result.revision) == (kvs, count, newest)
        # Until the txn ends the store answers as of the committed revision.
        committed = self.store.range(b"\x00", b"\x00")
        assert committed.kvs == model.select(model.snapshots[-1], b"\x00", b"\x00", 0)[0]
        assert committed.revision == model.current
        assert txn.end() == expected_events
        if expected_events:
            model.snapshots.append(work)
            model.log.extend(expected_events)
        self.replay.append(("txn", ops))

    @rule(op=put_ops, records=st.booleans())
    def put(self, op, records):
        _, key, value, lease = op
        model = self.model
        prev = model.snapshots[-1].get(key)
        if records:  # the apply loop's way: the records, made into the event afterwards
            event = to_event(key, *self.store.put_record(key, value, lease))
            kv, prev_kv, events = event.kv, event.prev_kv, [event]
        else:
            kv, prev_kv, events = self.store.put(key, value, lease)
        revision = model.current + 1
        expected = KeyValue(key, prev.create_revision if prev else revision, revision,
                            prev.version + 1 if prev else 1, value, lease)
        assert (kv, prev_kv) == (expected, prev)
        assert events == [Event(PUT, expected, prev, 0)]
        model.snapshots.append({**model.snapshots[-1], key: expected})
        model.log.extend(events)
        self.replay.append(("txn", [op]))

    @rule(key=keys, range_end=range_ends)
    def delete_range(self, key, range_end):
        self.run_txn([("delete", key, range_end)])

    @rule(ops=txn_ops)
    def txn(self, ops):
        self.run_txn(ops)

    @rule(data=st.data())
    def compact(self, data):
        model = self.model
        revision = data.draw(st.integers(model.compacted - 1, model.current + 1), "revision")
        if revision <= model.compacted:
            expected = CompactedError
        elif revision > model.current:
            expected = FutureRevisionError
        else:
            expected = None
        try:
            self.store.compact(revision)
        except (CompactedError, FutureRevisionError) as error:
            assert type(error) is expected
            return
        assert expected is None
        model.compacted = revision
        self.hashes.clear()
        self.replay.append(("compact", revision))

    # -- reads -----------------------------------------------------------------------------

    @rule(key=keys, range_end=range_ends, limit=st.integers(0, 3), data=st.data())
    def historical_range(self, key, range_end, limit, data):
        model = self.model
        revision = data.draw(st.integers(-1, model.current + 2), "revision")
        at = model.check_read(revision, model.current)
        if isinstance(at, Exception):
            try:
                self.store.range(key, range_end, revision, limit)
            except type(at):
                return
            raise AssertionError(f"expected {type(at).__name__}")
        kvs, count = model.select(model.snapshots[at], key, range_end, limit)
        assert self.store.range(key, range_end, revision, limit) == (kvs, count, model.current)

    @rule(key=keys, range_end=range_ends, data=st.data())
    def events_since(self, key, range_end, data):
        model = self.model
        start = data.draw(st.integers(-1, model.current + 1), "start")
        expected = model.events_since(start, key, range_end)
        if isinstance(expected, Exception):
            try:
                self.store.events_since(start, key, range_end)
            except type(expected):
                return
            raise AssertionError("expected CompactedError")
        assert self.store.events_since(start, key, range_end) == expected

    @rule(data=st.data())
    def hash_kv_errors(self, data):
        model = self.model
        revision = data.draw(st.integers(-1, model.current + 2), "revision")
        at = model.check_read(revision, model.current)
        if isinstance(at, Exception):
            try:
                self.store.hash_kv(revision)
            except type(at):
                return
            raise AssertionError(f"expected {type(at).__name__}")
        assert self.store.hash_kv(revision)[1:] == (model.compacted, at)

    # -- persistence and determinism -------------------------------------------------------

    @rule()
    def pickle_round_trip(self):
        before = (self.store.hash(), self.store.hash_kv())
        self.store = pickle.loads(pickle.dumps(self.store))
        assert (self.store.hash(), self.store.hash_kv()) == before

    @precondition(lambda self: self.replay)
    @rule()
    def replay_gives_same_hashes(self):
        fresh = MVCCStore()
        for kind, arg in self.replay:
            if kind == "compact":
                fresh.compact(arg)
                continue
            txn = fresh.write()
            for op in arg:
                if op[0] == "put":
                    txn.put(*op[1:])
                elif op[0] == "delete":
                    txn.delete_range(*op[1:])
            txn.end()
        assert fresh.hash() == self.store.hash()
        for revision in range(max(self.model.compacted, 1), self.model.current + 1):
            assert fresh.hash_kv(revision) == self.store.hash_kv(revision)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def revisions_agree(self):
        assert self.store.current_revision == self.model.current
        assert self.store.compact_revision == self.model.compacted

    @invariant()
    def every_readable_revision_agrees(self):
        model = self.model
        for revision in range(max(model.compacted, 1), model.current + 1):
            kvs, count = model.select(model.snapshots[revision], b"\x00", b"\x00", 0)
            assert self.store.range(b"\x00", b"\x00", revision) == (kvs, count, model.current)

    @invariant()
    def held_history_agrees(self):
        start = max(self.model.compacted, 0)
        assert self.store.events_since(start, b"\x00", b"\x00") == \
            self.model.events_since(start, b"\x00", b"\x00")

    @invariant()
    def bookkeeping_agrees(self):
        assert self.store.key_count() == len(self.model.snapshots[-1])
        assert self.store.approximate_size() == self.model.size()

    @invariant()
    def hash_kv_is_stable_until_compaction(self):
        current = self.model.current
        self.hashes.setdefault(current, self.store.hash_kv(current))
        for revision, answer in self.hashes.items():
            assert self.store.hash_kv(revision) == answer


MVCCMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMVCCAgainstModel = MVCCMachine.TestCase
