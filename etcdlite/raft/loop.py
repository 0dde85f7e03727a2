"""pysyncobj driven by the member's asyncio event loop, not by a thread.

pysyncobj is single-threaded by design: a tick polls its sockets, handles
peer messages, commits, applies and sends. Ticked from a thread of its own,
every write crossed threads twice (the proposal in through a queue and a
pipe, the result out through `call_soon_threadsafe`), and the tick thread and
the gRPC event loop fought over one GIL. Here the event loop owns pysyncobj's
sockets: `LoopPoller` stands in for its poll(2) poller, so a peer message is
handled as soon as the loop sees its socket readable, and a tick runs in the
loop afterwards (see `RaftNode`).
"""

from __future__ import annotations

import asyncio
import os
import time

from pysyncobj.poller import POLL_EVENT_TYPE

from .durable import SyncedLeadership
from .apply_pacing import ApplyPacer, PacedApply
from .journal import LeanEntries
from .learners import LearnerPeers
from .log_guard import GuardedSyncObj
from .peer_transport import PeerTransport

# a journal over its byte bound asks for a snapshot at most this often (LoopSyncObj)
SNAPSHOT_ASK_SECONDS = 5.0
# a follower's AppendEntries reply saying what its last one said, on the same connection,
# is not sent again for this long (LoopSyncObj._SyncObj__sendNextNodeIdx); below the
# heartbeat period (0.1 s), so every other heartbeat at least is answered
REPEAT_REPLY_SECONDS = 0.05

_READ = POLL_EVENT_TYPE.READ
_WRITE = POLL_EVENT_TYPE.WRITE
_ERROR = POLL_EVENT_TYPE.ERROR


class LoopPoller:
    """pysyncobj's poller interface over `loop.add_reader`/`add_writer`.

    `poll` does nothing: the loop dispatches socket events itself, and
    `on_event` runs after each one (the owner schedules a tick there). An
    error or hang-up on a socket wakes its reader, and pysyncobj's read path
    then finds the socket broken, as it does with poll(2)'s POLLERR.
    `cork`/`uncork` run around each event's handling (the owner sets them:
    messages sent while handling one event leave together)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_event):
        self._loop = loop
        self._on_event = on_event
        self.cork = self.uncork = _nothing
        self._callbacks: dict[int, object] = {}
        self._masks: dict[int, int] = {}

    def subscribe(self, descr: int, callback, mask: int) -> None:
        loop = self._loop
        self._callbacks[descr] = callback
        old = self._masks.get(descr, 0)
        self._masks[descr] = mask
        read, was_read = bool(mask & (_READ | _ERROR)), bool(old & (_READ | _ERROR))
        if read and not was_read:
            loop.add_reader(descr, self._ready, descr, _READ)
        elif was_read and not read:
            loop.remove_reader(descr)
        write, was_write = bool(mask & _WRITE), bool(old & _WRITE)
        if write and not was_write:
            loop.add_writer(descr, self._ready, descr, _WRITE)
        elif was_write and not write:
            loop.remove_writer(descr)

    def unsubscribe(self, descr: int) -> None:
        if self._masks.pop(descr, None) is None:
            return
        self._callbacks.pop(descr, None)
        # pysyncobj closes a socket before unsubscribing it: the selector
        # then fails to modify the closed descriptor, but it has dropped it
        for remove in (self._loop.remove_reader, self._loop.remove_writer):
            try:
                remove(descr)
            except OSError:
                pass

    def poll(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        for descr in list(self._masks):
            self.unsubscribe(descr)

    def _ready(self, descr: int, event: int) -> None:
        callback = self._callbacks.get(descr)
        if callback is None:
            return
        self.cork()
        try:
            callback(descr, event)
        finally:
            self.uncork()
            self._on_event()


def _nothing() -> None:
    pass


class LoopSyncObj(SyncedLeadership, PacedApply, LeanEntries, LearnerPeers, GuardedSyncObj):
    """A `GuardedSyncObj` (with learners: `LearnerPeers`; reading its `LeanJournal` through `LeanEntries`,
    syncing it when it becomes leader: `SyncedLeadership`, applying at
    `pacer`'s pace through `PacedApply`) whose sockets are watched by `poller`
    (a `LoopPoller`) instead of the poll(2) poller pysyncobj makes for itself,
    talking to its peers through `PeerTransport`, where `leader_calls` (a
    `LeaderCalls`) and `peer_calls` (a `PeerCalls`) have the first look at
    every message."""

    def __init__(self, self_node, other_nodes, conf, consumers, poller: LoopPoller, pacer: ApplyPacer,
                 snapshot_bytes: int = 16 << 20, peer_tls=None):
        # set before SyncObj.__init__, so pysyncobj counts them among the
        # attributes it keeps out of its snapshots
        self.__dict__["_loop_poller"] = poller
        self.__dict__["_apply_pacer"] = pacer
        self.__dict__["_snapshot_bytes"] = snapshot_bytes
        self.__dict__["_snapshot_asked"] = 0.0  # when the journal's size last asked for one
        self.__dict__["peer_tls"] = peer_tls  # PeerTransport's TLS (a PeerTLS), or None
        self.__dict__["leader_calls"] = None  # a LeaderCalls, set by the RaftNode
        self.__dict__["peer_calls"] = None  # a PeerCalls, set by the RaftNode
        self.__dict__["before_apply"] = None  # runs before committed entries are applied (RaftNode)
        self.__dict__["forwarded_waiting"] = False  # a follower forwarded a command not yet in the log
        self.__dict__["forwarded_by"] = None  # the last follower that did
        self.__dict__["_last_reply"] = (None, 0.0)  # what the last success reply said, and when
        super().__init__(self_node, other_nodes, conf, consumers=consumers, transportClass=PeerTransport)

    def _SyncObj__tryLogCompaction(self):
        """pysyncobj takes a snapshot (and cuts the journal after it) every
        `logCompactionMinEntries` entries (--snapshot-count); an entry is a
        batch of requests of any size, so the journal a restart reads and
        applies again had no bound in bytes: a million keys put in Txns of
        100 made 10,000 entries, 290 MB, a minute of start-up. A journal of
        more than `snapshot_bytes`, or than a quarter of the last snapshot,
        asks for a snapshot too (at most one ask every SNAPSHOT_ASK_SECONDS:
        a snapshot that failed is not retried at once). Applying the journal
        again costs about three times what loading a snapshot of the same
        size does (benchmarks/why.md): a quarter keeps a restart's replay
        under the snapshot's load, while a large state is written again only
        after a quarter of its size in writes."""
        journal = self._SyncObj__raftLog
        size = getattr(journal, "size_bytes", 0)
        if size > self.__dict__["_snapshot_bytes"] and not self._SyncObj__forceLogCompaction:
            now = time.monotonic()
            if now - self.__dict__["_snapshot_asked"] >= SNAPSHOT_ASK_SECONDS:
                try:
                    snapshot = os.path.getsize(self._SyncObj__conf.fullDumpFile)
                except (OSError, TypeError):
                    snapshot = 0
                if size > snapshot // 4:
                    self.__dict__["_snapshot_asked"] = now
                    self._SyncObj__forceLogCompaction = True
        super()._SyncObj__tryLogCompaction()

    def _SyncObj__onMessageReceived(self, node, message):
        calls = self.__dict__["leader_calls"]
        if calls is not None and calls.receive(node, message):
            return
        calls = self.__dict__["peer_calls"]
        if calls is not None and calls.receive(node, message):
            return
        if message.get("type") == "apply_command":
            # a follower's client waits for this command: see RaftNode._before_apply
            self.__dict__["forwarded_waiting"] = True
            self.__dict__["forwarded_by"] = node
        super()._SyncObj__onMessageReceived(node, message)

    def _SyncObj__sendNextNodeIdx(self, node, reset=False, nextNodeIdx=None, success=False):
        """A follower answers every AppendEntries; most of a lone writer's
        are the leader's new commit index alone, whose answer repeats the
        previous one (the same next index), costing the follower a send
        before it applies the entry its client waits for, and the leader
        a read. Such a repeat is not sent within REPEAT_REPLY_SECONDS of the
        answer it repeats, on the same connection: Raft's replies may be
        lost, and this one tells the leader nothing new (a connection that
        drops loses what it held, so a new connection answers again). A
        reset (the logs differ) is always sent; so is the first answer to
        a heartbeat after that long, which keeps the leader counting this
        follower (its leaderFallbackTimeout)."""
        if success and not reset:
            if nextNodeIdx is None:
                nextNodeIdx = self._SyncObj__getCurrentLogIndex() + 1
            conn = self._SyncObj__transport._connections.get(node)
            said = (node, getattr(conn, "generation", None), self.raftCurrentTerm, nextNodeIdx)
            now = time.monotonic()
            last, when = self.__dict__["_last_reply"]
            if said == last and now - when < REPEAT_REPLY_SECONDS:
                return
            self.__dict__["_last_reply"] = (said, now)
        super()._SyncObj__sendNextNodeIdx(node, reset=reset, nextNodeIdx=nextNodeIdx, success=success)

    def _SyncObj__applyLogEntries(self):
        before = self.__dict__["before_apply"]
        if before is not None and self._SyncObj__raftCommitIndex > self._SyncObj__raftLastApplied:
            before()
        return super()._SyncObj__applyLogEntries()

    @property
    def peer_transport(self) -> PeerTransport:
        return self._SyncObj__transport

    @property
    def _poller(self):
        return self.__dict__["_loop_poller"]

    @_poller.setter
    def _poller(self, value) -> None:
        pass  # SyncObj.__init__ assigns its own poller; the loop's is kept
