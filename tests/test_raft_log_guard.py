"""pysyncobj's follower truncates entries it already acknowledged when a
leader re-sends from an older index, and its leader re-sends whatever is in
flight after each acknowledgement; GuardedSyncObj fixes both (see
etcdlite/raft/log_guard.py for why that matters)."""

from __future__ import annotations

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.syncobj import _RAFT_STATE
from pysyncobj.node import TCPNode

from etcdlite.raft.log_guard import GuardedSyncObj, entries_to_keep
from harness.procs import free_port

NOOP = b"\x01"  # pysyncobj's no-op command: appended, never applied


def E(idx, term):
    return (NOOP, idx, term)


def test_entries_to_keep_rules():
    local = [E(i, 1) for i in range(4, 11)]
    # all of the message matches: keep the leader's own (term 1) entries after it
    assert entries_to_keep(local, 3, [E(4, 1), E(5, 1)], 1) == local[2:]
    # heartbeat (no entries) from the same term
    assert entries_to_keep(local, 3, [], 1) == local
    # a conflict inside the message: truncate, as Raft does
    assert entries_to_keep(local, 3, [E(4, 1), E(5, 2)], 2) == []
    # the message goes further than the local log: nothing to keep
    assert entries_to_keep(local[:2], 3, [E(4, 1), E(5, 1), E(6, 1)], 1) == []
    # extras written in an older term may conflict with the leader's log
    assert entries_to_keep(local, 3, [E(4, 1)], 2) == []
    mixed = [E(4, 1), E(5, 1), E(6, 2), E(7, 2), E(8, 1)]
    # keeps up to the leader's own last entry (entries after it cannot exist
    # in a real log; the rule still stops there)
    assert entries_to_keep(mixed, 3, [E(4, 1)], 2) == mixed[1:4]


def _follower(cls):
    me, leader = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    conf = SyncObjConf(autoTick=False, appendEntriesUseBatch=True)
    obj = cls(me, [leader], conf)
    sent = []
    transport = obj._SyncObj__transport
    transport.send = lambda node, message: sent.append(message) or True
    return obj, TCPNode(leader), sent


def _log(obj):
    return [(e[1], e[2]) for e in obj._SyncObj__getEntries(1)]


def _append(obj, node, prev_idx, prev_term, entries, term=1):
    obj._SyncObj__onMessageReceived(node, {
        "type": "append_entries", "term": term, "commit_index": 1,
        "entries": entries, "prevLogIdx": prev_idx, "prevLogTerm": prev_term,
    })


@pytest.mark.parametrize("cls, keeps", [(GuardedSyncObj, True), (SyncObj, False)])
def test_resend_from_older_index(cls, keeps):
    obj, leader, sent = _follower(cls)
    try:
        _append(obj, leader, 1, 0, [E(i, 1) for i in range(2, 11)])
        assert _log(obj)[-1] == (10, 1)
        assert sent[-1]["next_node_idx"] == 11
        _append(obj, leader, 3, 1, [E(4, 1), E(5, 1)])  # a re-send from index 4
        _append(obj, leader, 3, 1, [])  # a heartbeat from there
        if keeps:
            assert _log(obj)[-1] == (10, 1), "acknowledged entries were dropped"
            assert sent[-1]["success"] and sent[-1]["next_node_idx"] == 11
        else:
            # pysyncobj itself: still drops them. If this starts failing,
            # pysyncobj was fixed and the guard can go.
            assert _log(obj)[-1] == (3, 1)
    finally:
        obj._SyncObj__transport.destroy()


def test_conflicting_entries_are_still_replaced():
    obj, leader, sent = _follower(GuardedSyncObj)
    try:
        _append(obj, leader, 1, 0, [E(i, 1) for i in range(2, 11)])
        _append(obj, leader, 3, 1, [E(4, 2)], term=2)
        assert _log(obj)[-2:] == [(3, 1), (4, 2)]
        assert sent[-1]["success"] and sent[-1]["next_node_idx"] == 5
    finally:
        obj._SyncObj__transport.destroy()


def _leader(cls, next_index: int):
    obj, follower, sent = _follower(cls)
    obj._SyncObj__raftState = _RAFT_STATE.LEADER
    obj._SyncObj__raftNextIndex[follower] = next_index
    obj._SyncObj__raftMatchIndex[follower] = 0
    return obj, follower


def _reply(obj, node, next_idx, success=True, reset=False):
    obj._SyncObj__onMessageReceived(node, {
        "type": "next_node_idx", "next_node_idx": next_idx, "success": success, "reset": reset,
    })


@pytest.mark.parametrize("cls, keeps", [(GuardedSyncObj, True), (SyncObj, False)])
def test_ack_of_older_entries_keeps_next_index(cls, keeps):
    # the leader has sent entries up to 10; the follower acknowledges up to 4
    obj, follower = _leader(cls, 11)
    try:
        _reply(obj, follower, 5)
        assert obj._SyncObj__raftMatchIndex[follower] == 4
        if keeps:
            assert obj._SyncObj__raftNextIndex[follower] == 11, "entries in flight would be sent again"
        else:
            # pysyncobj itself moves back and re-sends 5..10. If this starts
            # failing, pysyncobj was fixed and this part of the guard can go.
            assert obj._SyncObj__raftNextIndex[follower] == 5
        _reply(obj, follower, 12)  # an acknowledgement beyond: follows it
        assert obj._SyncObj__raftNextIndex[follower] == 12
        assert obj._SyncObj__raftMatchIndex[follower] == 11
    finally:
        obj._SyncObj__transport.destroy()


def test_reset_still_moves_next_index_back():
    # a follower that lost entries in flight says where it really is
    obj, follower = _leader(GuardedSyncObj, 11)
    try:
        _reply(obj, follower, 3, success=False, reset=True)
        assert obj._SyncObj__raftNextIndex[follower] == 3
    finally:
        obj._SyncObj__transport.destroy()
