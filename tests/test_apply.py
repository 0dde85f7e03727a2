"""The state machine's batch apply (the one Raft drives) against applying the
same commands one by one: same answers, same events, same store and leases,
whichever way a command goes (the plain-Put fast path, with its event left
unmade, or the general dispatch). A PUT_VALUE command (key and value, no
request bytes) is checked against the Put it stands for."""

from __future__ import annotations

import grpc
import pytest

from etcdlite import errors
from etcdlite.apply import Op, StateMachine, events_of
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb


def put(key: bytes, value: bytes, **fields) -> tuple[int, bytes]:
    return Op.PUT, pb.PutRequest(key=key, value=value, **fields).SerializeToString()


COMMANDS = [
    (Op.LEASE_GRANT, pb.LeaseGrantRequest(ID=7, TTL=100).SerializeToString()),
    put(b"a", b"1", lease=7),        # the general path: attached to lease 7
    put(b"a", b"2"),                 # fast path: version 2, and off lease 7
    put(b"b", b"1"),                 # fast path: a new key
    put(b"b", b"2"),                 # fast path: its previous kv in the event
    (Op.PUT_VALUE, b"a", b"3"),      # the same put without a request to parse
    put(b"c", b"1", lease=7),
    put(b"b", b"3", prev_kv=True),   # the general path, answered with a PutResponse
    put(b"x", b"1", lease=99),       # lease not found
    (Op.PUT, b"\xff\xff\xff"),      # not a PutRequest
    (Op.DELETE_RANGE, pb.DeleteRangeRequest(key=b"b").SerializeToString()),
    put(b"b", b"4"),                 # fast path: a new generation after the delete
    (Op.PUT_VALUE, b"d", b"1"),      # a new key, then a new version of it
    (Op.PUT_VALUE, b"d", b"2"),
    (Op.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=7).SerializeToString()),  # deletes c, not a
]


def one_by_one(commands) -> tuple[StateMachine, list]:
    sm = StateMachine()
    out = []
    for command in commands:
        op, data = command[0], command[1]
        if op == Op.PUT_VALUE:  # what the command stands for
            data = pb.PutRequest(key=command[1], value=command[2]).SerializeToString()
            result, events = sm.apply(Op.PUT, data)
        else:
            result, events = sm.apply(op, data)
        out.append((op, result, events, sm.kv.current_revision))
    return sm, out


def test_batches_answer_as_one_by_one_and_leave_the_same_state():
    expected_sm, expected = one_by_one(COMMANDS)
    for split in (1, 3, len(COMMANDS)):
        sm = StateMachine()
        got = []
        for i in range(0, len(COMMANDS), split):
            got.extend(sm.apply_batch(COMMANDS[i:i + split]))
        assert len(got) == len(expected)
        for (op, result, events, revision), want in zip(got, expected):
            assert (op, result, events_of(events), revision) == want
        assert sm.kv.hash() == expected_sm.kv.hash()
        assert sm.leases.ids() == expected_sm.leases.ids() == []
        assert [kv.key for kv in sm.kv.range(b"\x00", b"\x00").kvs] == [b"a", b"b", b"d"]
        assert sm.kv.range(b"a").kvs[0].value == b"3" and sm.kv.range(b"d").kvs[0].version == 2


def test_fast_path_answers_with_the_revision_and_makes_events_on_demand():
    sm = StateMachine()
    (_, first, pending, revision), = sm.apply_batch([put(b"k", b"v1")])
    assert first == revision == 2 and type(pending) is tuple  # not made yet
    (_, second, pending, _), = sm.apply_batch([put(b"k", b"v2")])
    (event,) = events_of(pending)
    assert (event.type, event.kv.value, event.kv.version, event.kv.mod_revision) == (0, b"v2", 2, 3)
    assert event.prev_kv.value == b"v1" and event.prev_kv.mod_revision == first


@pytest.mark.parametrize("again", [put(b"a", b"2"), (Op.PUT_VALUE, b"a", b"2")])
def test_fast_path_detaches_a_key_from_its_old_lease(again):
    sm = StateMachine()
    sm.apply_batch(COMMANDS[:2])  # grant 7, a on lease 7
    assert sm.leases.get(7).keys == {b"a"}
    sm.apply_batch([again])  # a put again without a lease
    assert sm.leases.get(7).keys == set()
    (_, answer, events, _), = sm.apply_batch([COMMANDS[-1]])  # revoke 7
    assert isinstance(answer, pb.LeaseRevokeResponse) and events == []
    assert sm.kv.range(b"a").kvs[0].value == b"2"


def test_errors_are_answers_not_exceptions():
    sm = StateMachine()
    (_, bad, events, revision), = sm.apply_batch([(Op.PUT, b"\xff\xff\xff")])
    assert isinstance(bad, errors.EtcdError) and bad.code == grpc.StatusCode.INTERNAL
    assert events == [] and revision == 1
    (_, missing, _, _), = sm.apply_batch([put(b"x", b"1", lease=99)])
    assert missing is errors.LEASE_NOT_FOUND


def test_keep_alives_in_older_logs_still_apply():
    """Keep-alives no longer go through the log (the leader's clock: etcdlite.lessor), but
    journals written before hold Op.LEASE_RENEW entries, which replay as they did: the
    lease's TTL (its countdown restarts where it is applied), 0 for a lease gone, no change."""
    sm = StateMachine()
    sm.apply_batch([(Op.LEASE_GRANT, pb.LeaseGrantRequest(ID=7, TTL=100).SerializeToString())])
    revision = sm.kv.current_revision
    renewals = sm.apply_batch([(Op.LEASE_RENEW, pb.LeaseKeepAliveRequest(ID=i).SerializeToString()) for i in (7, 8)])
    assert [(op, r.ID, r.TTL, events) for op, r, events, _ in renewals] == [
        (Op.LEASE_RENEW, 7, 100, []), (Op.LEASE_RENEW, 8, 0, [])]
    assert sm.kv.current_revision == revision
