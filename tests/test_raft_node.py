"""What etcdlite.raft leaves in pysyncobj's pickles and in pysyncobj itself: a peer pickles
under the name it had before etcdlite.raft became a package (snapshots, membership log entries
and other members read it back), and importing the package sets pysyncobj up as a member needs."""

from __future__ import annotations

import io
import pickle
import time
import types

import pysyncobj.journal
import pysyncobj.pickle
import pysyncobj.serializer
import pysyncobj.syncobj
import pysyncobj.tcp_connection
import pysyncobj.transport
from pysyncobj.node import TCPNode

import etcdlite.raft
from etcdlite.raft import journal, node


def _load(data: bytes) -> tuple[object, list[tuple[str, str]]]:
    """The unpickled object, and the classes the pickle named."""
    names = []

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            names.append((module, name))
            return super().find_class(module, name)

    return Unpickler(io.BytesIO(data)).load(), names


def test_a_peer_pickles_as_etcdlite_raft_peer_node():
    peer = node.PeerNode("127.0.0.1:2380", "127.0.0.1:12380")
    data = pysyncobj.pickle.dumps(["add", peer.id, peer])
    (_, _, back), names = _load(data)
    assert names == [("etcdlite.raft", "PeerNode")]
    assert type(back) is node.PeerNode
    assert (back.id, back.dial, back.port) == ("127.0.0.1:2380", "127.0.0.1:12380", 12380)


def test_a_peer_pickled_before_the_package_loads():
    # pysyncobj.pickle.dumps(PeerNode("127.0.0.1:2380")) from etcdlite/raft.py (a74a8a8)
    old = (
        b"\x80\x05\x95\x8c\x00\x00\x00\x00\x00\x00\x00\x8c\retcdlite.raft\x94\x8c\x08PeerNode\x94\x93\x94)"
        b"\x81\x94}\x94(\x8c\x03_id\x94\x8c\x0e127.0.0.1:2380\x94\x8c\x11_TCPNode__address\x94h\x06"
        b"\x8c\x0e_TCPNode__host\x94\x8c\t127.0.0.1\x94\x8c\x0e_TCPNode__port\x94ML\t\x8c\x04dial\x94Nub."
    )
    peer = pysyncobj.pickle.loads(old)
    assert type(peer) is etcdlite.raft.PeerNode
    assert (peer.id, peer.dial, peer.port) == ("127.0.0.1:2380", None, 2380)


def test_importing_the_package_sets_pysyncobj_up():
    assert pysyncobj.pickle.__dict__["__protocol"] == pickle.HIGHEST_PROTOCOL
    assert pysyncobj.syncobj.createJournal is journal._create_journal
    assert pysyncobj.journal.ResizableFile is journal.JournalFile
    assert isinstance(pysyncobj.serializer.os, node._SnapshotOs)
    # pysyncobj's clock, called without a Python frame: the same clock it picked
    for module in (pysyncobj.syncobj, pysyncobj.tcp_connection, pysyncobj.transport):
        before = time.clock_gettime(time.CLOCK_MONOTONIC_RAW)
        now = module.monotonicTime()
        assert before <= now <= time.clock_gettime(time.CLOCK_MONOTONIC_RAW)
        assert not isinstance(module.monotonicTime, types.FunctionType)


def test_a_peer_is_the_same_key_as_pysyncobjs_node_of_its_address():
    peer = node.PeerNode("127.0.0.1:2380", "127.0.0.1:12380")
    plain = TCPNode("127.0.0.1:2380")
    assert peer == plain and plain == peer and hash(peer) == hash(plain)
    assert {peer: 1}[plain] == 1 and {plain: 2}[peer] == 2
    assert peer != node.PeerNode("127.0.0.1:2381") and peer != "127.0.0.1:2380"
    old = pysyncobj.pickle.loads(pysyncobj.pickle.dumps(peer))
    assert {peer: 3}[old] == 3


def _event_after(commit: int, applied: int, leader: bool, queued: list, last: int = 0) -> list[str]:
    """What RaftNode._after_event does after a peer message leaving this state: the steps called."""
    calls = []
    obj = types.SimpleNamespace(raftCommitIndex=commit, raftLastApplied=applied, _isLeader=lambda: leader,
                                _SyncObj__commandsQueue=types.SimpleNamespace(_FastQueue__queue=queued))
    fake = types.SimpleNamespace(_obj=obj, _last_index=lambda: last or commit,
                                 _apply_now=lambda: calls.append("apply"),
                                 _schedule_tick=lambda: calls.append("tick"))
    node.RaftNode._after_event(fake)
    return calls


def test_a_follower_told_a_commit_index_applies_and_ticks_only_for_queued_commands():
    assert _event_after(5, 4, leader=False, queued=[]) == ["apply"]
    # commands proposed while no leader was known leave at once, not at the next periodic tick
    assert _event_after(5, 4, leader=False, queued=[("cmd", None)]) == ["apply", "tick"]
    assert _event_after(4, 4, leader=False, queued=[("cmd", None)]) == ["tick"]
    assert _event_after(4, 4, leader=False, queued=[]) == []
    assert _event_after(4, 4, leader=True, queued=[], last=5) == ["tick"]  # entries to commit
