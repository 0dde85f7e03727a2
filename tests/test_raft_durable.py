"""fsync before acknowledge (etcdlite.raft.durable, journal, node): what a
member tells anyone about is on stable storage first. The journal groups
its syncs (one fdatasync for every entry since the last); the meta file,
a trimmed journal and snapshots are synced before they are renamed into
place, and the directory after; a leader counts its own entries only once
synced, a follower replies to AppendEntries only once synced. The syncs
are seen here by recording the system calls; a power loss is in
test_durability.py."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pysyncobj.serializer
import pytest
from pysyncobj import FAIL_REASON, SyncObj

import etcdlite.raft  # noqa: F401  (sets pysyncobj up, as a member does)
from etcdlite.apply import Op
from etcdlite.raft import durable
from etcdlite.raft.journal import LeanJournal
from etcdlite.raft.loop import REPEAT_REPLY_SECONDS, LoopPoller
from etcdlite.raft.node import RaftNode
from etcdlite.raft.peer_transport import PeerConnection, PeerTransport


class Calls:
    """fdatasync, fsync and rename as the process makes them: (call, path...)."""

    def __init__(self, monkeypatch) -> None:
        self.log: list[tuple] = []
        self.threads: set[str] = set()  # where fdatasync ran
        real_fdatasync, real_fsync, real_rename = os.fdatasync, os.fsync, os.rename

        def fdatasync(fd):
            self.log.append(("fdatasync", os.readlink(f"/proc/self/fd/{fd}")))
            self.threads.add(threading.current_thread().name)
            real_fdatasync(fd)

        def fsync(fd):
            self.log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def rename(src, dst):
            self.log.append(("rename", os.path.abspath(src), os.path.abspath(dst)))
            real_rename(src, dst)

        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)

    def syncs(self) -> list[tuple]:
        return [c for c in self.log if c[0] in ("fdatasync", "fsync")]

    def clear(self) -> None:
        self.log.clear()


@pytest.fixture
def calls(monkeypatch):
    durable.set_sync(True)
    yield Calls(monkeypatch)
    durable.set_sync(True)


def test_one_fdatasync_covers_every_entry_since_the_last(tmp_path, calls):
    path = str(tmp_path / "raft.journal")
    journal = LeanJournal(path)
    calls.clear()
    for idx in range(1, 101):
        journal.add(b"cmd %d" % idx, idx, 1)
    assert calls.syncs() == [], "an append must not sync by itself (syncs are grouped)"
    journal.sync()
    assert calls.syncs() == [("fdatasync", path)]
    assert journal.synced_index == 100
    journal.sync()
    assert len(calls.syncs()) == 1, "nothing new to sync: no second fdatasync"
    journal.deleteEntriesFrom(50)  # a follower's conflicting tail removed: that too is synced
    journal.sync()
    assert len(calls.syncs()) == 2 and journal.synced_index == 50
    journal._destroy()


def test_a_new_journal_and_its_directory_are_synced_when_made(tmp_path, calls):
    path = str(tmp_path / "raft.journal")
    LeanJournal(path)._destroy()
    assert ("fdatasync", path) in calls.log and ("fsync", str(tmp_path)) in calls.log


def test_unsafe_no_fsync_syncs_nothing(tmp_path, calls):
    durable.set_sync(False)
    journal = LeanJournal(str(tmp_path / "raft.journal"))
    journal.add(b"cmd", 1, 1)
    journal.sync()
    journal.setCurrentTerm(3, None)
    journal.deleteEntriesTo(0)
    journal._destroy()
    assert calls.syncs() == []


def _synced_then_renamed(log: list, tmp: str, path: str) -> None:
    """tmp's data synced before it is renamed over path, the directory after."""
    renamed = log.index(("rename", tmp, path))
    assert any(c[0] in ("fsync", "fdatasync") and c[1] == tmp for c in log[:renamed]), \
        f"{tmp} renamed over {path} before it was synced: {log}"
    assert ("fsync", os.path.dirname(path)) in log[renamed:], f"directory not synced after the rename: {log}"


def test_term_and_vote_are_synced_before_they_count(tmp_path, calls):
    path = str(tmp_path / "raft.journal")
    journal = LeanJournal(path)
    calls.clear()
    journal.setCurrentTerm(7, "127.0.0.1:2380")  # pysyncobj stores it before it answers or asks for a vote
    _synced_then_renamed(calls.log, path + ".meta.tmp", path + ".meta")
    journal._destroy()
    assert LeanJournal(path).getVotedForNodeId() == "127.0.0.1:2380"


def test_the_commit_index_is_stored_after_the_entries_it_covers(tmp_path, calls):
    path = str(tmp_path / "raft.journal")
    journal = LeanJournal(path)
    journal.add(b"cmd", 2, 1)
    journal.setRaftCommitIndex(2)
    calls.clear()
    journal.onOneSecondTimer()
    assert calls.log[0] == ("fdatasync", path), f"the meta was stored before the journal was synced: {calls.log}"
    _synced_then_renamed(calls.log, path + ".meta.tmp", path + ".meta")
    journal._destroy()


def test_a_trimmed_journal_is_synced_before_it_replaces_the_old(tmp_path, calls):
    path = str(tmp_path / "raft.journal")
    journal = LeanJournal(path)
    for idx in range(1, 21):
        journal.add(b"cmd %d" % idx, idx, 1)
    calls.clear()
    journal.deleteEntriesTo(10)
    _synced_then_renamed(calls.log, path + ".trim", path)
    journal._destroy()
    assert [e[1] for e in LeanJournal(path)[0:]] == list(range(11, 21))


def test_a_snapshot_is_synced_before_it_replaces_the_old(tmp_path, calls):
    assert pysyncobj.serializer.atomicReplace is durable.replace
    snap = tmp_path / "raft.snapshot"
    (tmp_path / "raft.snapshot.tmp").write_bytes(b"snapshot")
    pysyncobj.serializer.atomicReplace(str(snap) + ".tmp", str(snap))
    _synced_then_renamed(calls.log, str(snap) + ".tmp", str(snap))
    assert snap.read_bytes() == b"snapshot"


def test_new_data_directories_are_synced_into_their_parents(tmp_path, calls):
    durable.make_dirs(str(tmp_path / "a" / "b"))
    assert ("fsync", str(tmp_path)) in calls.log and ("fsync", str(tmp_path / "a")) in calls.log


# --- members: when they count and acknowledge --------------------------------------------


def _address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:%d" % s.getsockname()[1]


async def _until(condition, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def _start_three(tmp_path, nodes: list, on_applied=lambda applied: None) -> None:
    """Three members in the running loop, put in `nodes` as they are made."""
    loop = asyncio.get_running_loop()
    addresses = [_address() for _ in range(3)]
    for i, address in enumerate(addresses):
        others = [a for a in addresses if a != address]
        nodes.append(RaftNode(loop, address, others, str(tmp_path / f"m{i}"), password="test secret",
                              on_applied=on_applied))


async def _put_all(node: RaftNode, n: int) -> None:
    """n batches of one put each, proposed together (so several share a tick)."""
    loop = asyncio.get_running_loop()
    futures = []
    for i in range(n):
        done = loop.create_future()
        node.propose([(Op.PUT_VALUE, b"k/%d" % i, b"v")],
                     lambda applied, reason, done=done: done.done() or done.set_result(reason))
        futures.append(done)
        if i % 7 == 0:
            await asyncio.sleep(0)
    reasons = await asyncio.wait_for(asyncio.gather(*futures), 30)
    assert set(reasons) == {FAIL_REASON.SUCCESS}


@pytest.mark.process
@pytest.mark.parametrize("sync_in_thread", [False, True], ids=["sync-in-loop", "sync-in-thread"])
def test_a_lone_leader_commits_only_what_it_synced(tmp_path, calls, sync_in_thread):
    """Every apply (the acknowledgement) finds the entry synced: on a lone
    member the commit step counts only the leader, which holds every entry
    in its log, on disk or not; also when the sync runs in a thread
    (--experimental-raft-sync=thread) while the loop appends more."""
    unsynced_applies = []

    async def run() -> None:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        box = []

        def on_applied(applied) -> None:
            node = box[0]
            if node._journal.synced_index < node.commit_index:
                unsynced_applies.append((node._journal.synced_index, node.commit_index))

        node = RaftNode(loop, _address(), [], str(tmp_path / "m"), on_ready=ready.set,
                        on_applied=on_applied, password="test secret", sync_in_thread=sync_in_thread)
        box.append(node)
        try:
            await asyncio.wait_for(ready.wait(), 10)
            calls.clear()
            await _put_all(node, 200)
        finally:
            node.stop()

    asyncio.run(run())
    assert not unsynced_applies, f"entries applied before they were synced: {unsynced_applies[:5]}"
    journal_syncs = [c for c in calls.syncs() if c[1].endswith("raft.journal")]
    assert 0 < len(journal_syncs) < 200, f"{len(journal_syncs)} journal syncs for 200 puts: not grouped"
    assert any(t.startswith("raft-sync") for t in calls.threads) == sync_in_thread, calls.threads


@pytest.mark.process
def test_followers_reply_to_append_entries_only_once_synced(tmp_path, calls, monkeypatch):
    """Three members in one event loop; every AppendEntries reply
    (next_node_idx, success) is checked as its bytes go to the socket: the
    follower's journal must be synced up to the index it reports."""
    nodes: list[RaftNode] = []
    pending: dict[int, list[int]] = {}  # id(transport) -> indexes reported, not yet on the wire
    early: list[tuple] = []
    checked = [0]

    original_try_send = PeerConnection._TcpConnection__trySendBuffer

    def try_send(conn):
        reported = pending.get(id(conn.transport))
        if reported:
            node = next(n for n in nodes if n._obj.peer_transport is conn.transport)
            for idx in reported:
                checked[0] += 1
                if node._journal.synced_index < idx - 1:
                    early.append((idx - 1, node._journal.synced_index))
            reported.clear()
        return original_try_send(conn)

    monkeypatch.setattr(PeerConnection, "_TcpConnection__trySendBuffer", try_send)

    def recording(node: RaftNode):
        obj = node._obj
        original = obj._SyncObj__sendNextNodeIdx
        transport = obj.peer_transport

        def send_next_node_idx(peer, reset=False, nextNodeIdx=None, success=False):
            if success and nextNodeIdx is not None:
                pending.setdefault(id(transport), []).append(nextNodeIdx)
            return original(peer, reset=reset, nextNodeIdx=nextNodeIdx, success=success)

        # an instance attribute, removed again below: pysyncobj snapshots its __dict__
        obj.__dict__["_SyncObj__sendNextNodeIdx"] = send_next_node_idx

    async def run() -> None:
        _start_three(tmp_path, nodes)
        for node in nodes:
            recording(node)
        try:
            await _until(lambda: any(n.is_leader for n in nodes), "a leader elected")
            leader = next(n for n in nodes if n.is_leader)
            await _put_all(leader, 300)
            await _until(lambda: all(n.commit_index >= leader.commit_index for n in nodes),
                         "followers caught up")
        finally:
            for node in nodes:
                node._obj.__dict__.pop("_SyncObj__sendNextNodeIdx", None)
                node.stop()

    asyncio.run(run())
    assert checked[0] > 10, "no AppendEntries replies seen: the check did not run"
    assert not early, f"replies sent before their entries were synced (reported, synced): {early[:5]}"


async def _lone_writes(tmp_path, nodes: list, on_applied, writes: int = 20, through: str = "leader",
                      stop: bool = True) -> None:
    """Three members in this loop (put in `nodes` as they are made); `writes`
    puts proposed one at a time, as a lone client's, on the leader (or
    through a follower); then stopped, unless not `stop` (the caller stops them)."""
    _start_three(tmp_path, nodes, on_applied)
    try:
        await _until(lambda: any(n.is_leader for n in nodes), "a leader elected")
        leader = next(n for n in nodes if n.is_leader)
        target = leader if through == "leader" else next(n for n in nodes if n is not leader)
        if target is not leader:
            await _until(lambda: target._obj._getLeader() is not None, "the follower knows its leader")
        for _ in range(writes):
            await _put_all(target, 1)
    except BaseException:
        stop = True
        raise
    finally:
        if stop:
            for node in nodes:
                node.stop()


@pytest.mark.process
def test_the_leader_sends_entries_before_its_own_sync_and_counts_itself_after(tmp_path, calls, monkeypatch):
    """Three members in one event loop. The leader's new entries leave for
    the followers before its journal is synced (the two syncs overlap), yet
    nothing is applied (acknowledged) on the leader before its own sync
    covers it: the followers' replies alone are not a majority."""
    nodes: list[RaftNode] = []
    sent_unsynced = [0]
    unsynced_applies: list[tuple] = []
    original_try_send = PeerConnection._TcpConnection__trySendBuffer

    def try_send(conn):
        node = next((n for n in nodes if n._obj.peer_transport is conn.transport), None)
        if node is not None and node.is_leader and node._journal.dirty and conn._TcpConnection__writeBuffer:
            sent_unsynced[0] += 1
        return original_try_send(conn)

    monkeypatch.setattr(PeerConnection, "_TcpConnection__trySendBuffer", try_send)

    def on_applied(applied) -> None:
        for node in nodes:
            if node.is_leader and node._journal.synced_index < node.commit_index:
                unsynced_applies.append((node._journal.synced_index, node.commit_index))

    asyncio.run(_lone_writes(tmp_path, nodes, on_applied))
    assert sent_unsynced[0] >= 20, f"entries sent before the leader's sync: {sent_unsynced[0]} of 20 writes"
    assert not unsynced_applies, f"applied before the leader synced (synced, commit): {unsynced_applies[:5]}"


def _record_commit_told(monkeypatch, nodes: list):
    """{id(a leader's transport): the highest commit index it sent}, and a log of
    (what, index) as entries are applied on the leader and commit indexes sent."""
    told: dict[int, int] = {}
    events: list[tuple] = []
    original_send = PeerConnection.send

    def send(conn, message):
        if isinstance(message, dict) and message.get("type") == "append_entries":
            key = id(conn.transport)
            if message["commit_index"] > told.get(key, 0):
                told[key] = message["commit_index"]
                events.append(("told", message["commit_index"]))
        return original_send(conn, message)

    monkeypatch.setattr(PeerConnection, "send", send)

    def on_applied(applied) -> None:
        for node in nodes:
            if node.is_leader and node.applied_index < node.commit_index:
                events.append(("applied", node.applied_index + 1))  # the entry being applied

    return told, events, on_applied


@pytest.mark.process
def test_a_write_forwarded_by_a_follower_gets_the_commit_index_sent_before_the_leader_applies(
        tmp_path, monkeypatch):
    """A write proposed through a follower is applied and answered there once it
    hears the commit index: the leader sends it before applying the entry itself,
    not after (three members in one event loop)."""
    nodes: list[RaftNode] = []
    _, events, on_applied = _record_commit_told(monkeypatch, nodes)
    asyncio.run(_lone_writes(tmp_path, nodes, on_applied, through="follower"))
    told = 0
    late = []
    for what, index in events:
        if what == "told":
            told = max(told, index)
        elif told < index:
            late.append((index, told))
    assert sum(1 for what, _ in events if what == "applied") >= 20, events[-10:]
    assert not late, f"applied on the leader before the followers were told (index, told): {late[:5]}"


@pytest.mark.process
def test_a_write_of_the_leaders_own_client_is_answered_before_the_commit_index_is_sent(
        tmp_path, monkeypatch):
    """Only the leader's own client waits: its answer does not wait for the two
    commit-index sends (each waking a follower); they leave right after, in the
    same tick, so a follower still learns every commit at once."""
    nodes: list[RaftNode] = []
    _, events, on_applied = _record_commit_told(monkeypatch, nodes)
    asyncio.run(_lone_writes(tmp_path, nodes, on_applied, through="leader"))
    applied = [index for what, index in events if what == "applied"]
    assert len(applied) >= 20, events[-10:]
    told = 0
    early = []
    for what, index in events:
        if what == "told":
            told = max(told, index)
        elif told >= index:
            early.append((index, told))
    assert not early, f"the commit index was sent before the leader's own answer (index, told): {early[:5]}"
    # and it was sent after each: every applied index was told before the next write was proposed
    told_after = {index for what, index in events if what == "told"}
    assert set(applied[:-1]) <= told_after, sorted(set(applied[:-1]) - told_after)[:5]


@pytest.mark.process
def test_a_follower_does_not_repeat_its_last_reply_at_once(tmp_path, monkeypatch):
    """A lone writer's every other AppendEntries is the commit index alone, and
    the follower's answer would repeat its previous one: it is not sent again
    within REPEAT_REPLY_SECONDS on the same connection. A new index is always
    answered, so are idle heartbeats (the leader keeps counting its
    followers), a reset, and a repeat on a new connection (what the old one
    held may be lost). Three members in one event loop."""
    nodes: list[RaftNode] = []
    sent: list[tuple] = []  # (the follower's SyncObj, generation, next index, reset, time) as passed to pysyncobj
    original = SyncObj._SyncObj__sendNextNodeIdx

    def send_next_node_idx(obj, node, reset=False, nextNodeIdx=None, success=False):
        if success:
            conn = obj.peer_transport._connections.get(node)
            sent.append((obj, getattr(conn, "generation", None), nextNodeIdx, reset, time.monotonic()))
        return original(obj, node, reset=reset, nextNodeIdx=nextNodeIdx, success=success)

    monkeypatch.setattr(SyncObj, "_SyncObj__sendNextNodeIdx", send_next_node_idx)
    writes = 30

    async def run() -> None:
        await _lone_writes(tmp_path, nodes, lambda applied: None, writes=writes, stop=False)
        try:
            leader = next(n for n in nodes if n.is_leader)
            followers = [n._obj for n in nodes if n is not leader]
            for obj in followers:
                mine = [r for r in sent if r[0] is obj]
                assert len(mine) < 1.5 * writes, f"{len(mine)} replies to {writes} lone writes"
                repeats = [(a[2], round(b[4] - a[4], 3)) for a, b in zip(mine, mine[1:])
                           if a[1:4] == b[1:4] and b[4] - a[4] < REPEAT_REPLY_SECONDS]
                assert not repeats, f"replies repeated at once (index, seconds after): {repeats[:5]}"
            counted = len(sent)  # from now on idle: heartbeats only, every 0.1 s

            def answered(obj) -> int:
                return sum(1 for r in sent[counted:] if r[0] is obj)

            await _until(lambda: all(answered(obj) >= 3 for obj in followers),
                         "three heartbeats answered by each follower", timeout=3)
            obj = followers[0]
            peer = obj._getLeader()
            index = obj._SyncObj__getCurrentLogIndex() + 1
            before = len(sent)
            obj._SyncObj__sendNextNodeIdx(peer, nextNodeIdx=index, success=True)
            obj._SyncObj__sendNextNodeIdx(peer, nextNodeIdx=index, success=True)
            assert len(sent) - before <= 1, "the same reply sent twice at once"
            before = len(sent)
            obj._SyncObj__sendNextNodeIdx(peer, nextNodeIdx=index, success=True, reset=True)
            assert len(sent) == before + 1, "a reset was not sent"
            obj._SyncObj__sendNextNodeIdx(peer, nextNodeIdx=index, success=True)
            conn = obj.peer_transport._connections[peer]
            generation = conn.generation
            conn.disconnect()  # as a dropped connection: pysyncobj dials again
            assert conn.generation != generation
            before = len(sent)
            obj._SyncObj__sendNextNodeIdx(peer, nextNodeIdx=index, success=True)
            assert len(sent) == before + 1, "the repeat on a new connection was not sent"
        finally:
            for node in nodes:
                node.stop()

    asyncio.run(run())


@pytest.mark.process
@pytest.mark.parametrize("through", ["leader", "follower"])
def test_a_peer_message_that_leaves_nothing_to_do_is_not_followed_by_a_tick(tmp_path, monkeypatch, through):
    """pysyncobj handles a message as it reads it; a tick after it is for
    entries to commit or apply and commands to append or forward. A
    follower's read of new entries, or the leader's of a second
    acknowledgement, needs none: lone writes tick a follower about once a
    write (at the commit index), not twice, and each still applies at once
    on every member. Three members in one event loop."""
    nodes: list[RaftNode] = []
    ticks: dict[int, int] = {}  # id(RaftNode) -> ticks scheduled (proposals, socket events)
    original = RaftNode._schedule_tick

    def schedule_tick(node):
        if not node._tick_pending:
            ticks[id(node)] = ticks.get(id(node), 0) + 1
        return original(node)

    monkeypatch.setattr(RaftNode, "_schedule_tick", schedule_tick)
    writes = 30

    async def run() -> None:
        await _lone_writes(tmp_path, nodes, lambda applied: None, writes=writes, through=through, stop=False)
        try:
            leader = next(n for n in nodes if n.is_leader)
            await _until(lambda: all(n.applied_index == leader.commit_index for n in nodes),
                         "every member applied every write", timeout=5)
        finally:
            for node in nodes:
                node.stop()

    asyncio.run(run())
    leader = next(n for n in nodes if n.is_leader)
    proposer = leader if through == "leader" else next(n for n in nodes if n is not leader)  # as _lone_writes
    for node in nodes:
        count = ticks.get(id(node), 0)
        if node is leader or node is proposer:  # its proposals, and the commit
            assert count < 2.5 * writes, f"the {'leader' if node is leader else 'proposer'} ticked {count} times"
        else:  # the commit index only (before: the entries too)
            assert count < 1.5 * writes, f"a follower ticked {count} times for {writes} writes"


@pytest.mark.process
def test_a_write_through_a_follower_leaves_at_once_and_is_applied_as_its_commit_arrives(tmp_path, monkeypatch):
    """The follower's client waits through two more hops than the leader's:
    its proposal leaves for the leader inside the proposing call, without a
    pysyncobj tick; at the commit the leader sends it the commit index
    before the other follower (each send wakes one); and it applies the
    write (answers its client) in the event that brings the commit index,
    not a loop turn later, and without the rest of a tick. Three members in one event loop."""
    nodes: list[RaftNode] = []
    ticks: dict[int, int] = {}  # id(SyncObj) -> pysyncobj ticks
    forwarded: list[int] = []  # id(transport) of each apply_command sent
    flushes: list[tuple] = []  # (transport, first, [connections flushed]) of each flush_now naming a first
    not_applied: list[tuple] = []  # (commit, applied) on the proposer after an event
    original_tick, original_send, original_flush = SyncObj._onTick, PeerConnection.send, PeerConnection.flush
    original_flush_now, original_ready = PeerTransport.flush_now, LoopPoller._ready

    def on_tick(obj, *args):
        ticks[id(obj)] = ticks.get(id(obj), 0) + 1
        return original_tick(obj, *args)

    def send(conn, message):
        if isinstance(message, dict) and message.get("type") == "apply_command":
            forwarded.append(id(conn.transport))
        return original_send(conn, message)

    def flush_now(transport, first=None):
        if first is None:
            return original_flush_now(transport)
        flushes.append((transport, first, []))
        try:
            return original_flush_now(transport, first)
        finally:
            flushes.append(None)

    def flush(conn):
        if flushes and flushes[-1] is not None:
            flushes[-1][2].append(conn)
        return original_flush(conn)

    monkeypatch.setattr(SyncObj, "_onTick", on_tick)
    monkeypatch.setattr(PeerConnection, "send", send)
    monkeypatch.setattr(PeerConnection, "flush", flush)
    monkeypatch.setattr(PeerTransport, "flush_now", flush_now)
    watched: list[RaftNode] = []  # the proposer, once chosen

    def ready(poller, descr, event):  # before the members subscribe their sockets
        original_ready(poller, descr, event)
        for node in watched:
            if poller is node._poller and node.commit_index > node.applied_index:
                not_applied.append((node.commit_index, node.applied_index))

    monkeypatch.setattr(LoopPoller, "_ready", ready)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        _start_three(tmp_path, nodes)
        try:
            await _until(lambda: any(n.is_leader for n in nodes), "a leader elected")
            leader = next(n for n in nodes if n.is_leader)
            proposer = next(n for n in nodes if n is not leader)
            await _until(lambda: proposer._obj._getLeader() is not None, "the follower knows its leader")
            to_proposer = next(conn for node, conn in leader._obj.peer_transport._connections.items()
                               if node.id == proposer._obj.selfNode.id)

            watched.append(proposer)
            ticks_before = ticks.get(id(proposer._obj), 0)
            for i in range(20):
                done = loop.create_future()
                ticked, sent = ticks.get(id(proposer._obj), 0), len(forwarded)
                proposer.propose([(Op.PUT_VALUE, b"k/%d" % i, b"v")],
                                 lambda applied, reason, done=done: done.done() or done.set_result(reason), now=True)
                assert forwarded[sent:] == [id(proposer._obj.peer_transport)], "the proposal did not leave at once"
                assert ticks.get(id(proposer._obj), 0) == ticked, "the proposal ticked the follower"
                assert await asyncio.wait_for(done, 10) == FAIL_REASON.SUCCESS
            # applying at the commit index is not a whole tick: only the periodic ones ran
            assert ticks.get(id(proposer._obj), 0) - ticks_before < 10, "the follower ticked to apply"
            told = [(first, conns) for transport, first, conns in filter(None, flushes)
                    if transport is leader._obj.peer_transport]
            assert len(told) >= 20, f"commit indexes sent before the apply: {len(told)} for 20 writes"
            assert all(first is to_proposer and conns[0] is to_proposer for first, conns in told), \
                "the other follower was told the commit index first"
        finally:
            for node in nodes:
                node.stop()

    asyncio.run(run())
    assert not not_applied, f"the proposer left committed entries for a later turn (commit, applied): {not_applied[:5]}"


def test_unsafe_no_fsync_is_off_unless_asked_for():
    from etcdlite.cli import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args([])).unsafe_no_fsync is False
    assert config_from_args(build_parser().parse_args(["--unsafe-no-fsync"])).unsafe_no_fsync is True
