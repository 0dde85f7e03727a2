"""Raft through pysyncobj: commands in, applied results out.

`RaftNode` hides pysyncobj behind a small surface: `propose(op, data, cb)`,
the leader and term, commit and applied indexes. pysyncobj runs in the
member's event loop (`etcdlite.raft.loop`): every member applies every
committed command to its `StateMachine` there, under `lock` (kept so that a
reader in another thread would still see whole commands only).

pysyncobj keeps its log in `<data-dir>/raft.journal` (written with pwrite,
read back from it but for the newest entries: see `etcdlite.raft.journal`)
and its snapshots in `<data-dir>/raft.snapshot`, holding the pickled state
machine. A restart loads the snapshot, then applies the journal's committed
entries after it.

An entry is on stable storage before anyone relies on it (unless
`fsync=False`, --unsafe-no-fsync; see `etcdlite.raft.durable`): the leader
syncs its journal before each pysyncobj tick, whose commit step counts the
leader itself as holding every entry it has; a follower syncs it before
its messages leave (`_before_send`), and its AppendEntries replies are
among them. One fdatasync covers every entry appended since the last, so
under load a sync serves a tick's worth of batches. The leader sends new
entries to its followers before its own sync, not after (`_send_early`),
and a new commit index before it applies (`_before_apply`).
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import functools
import logging
import os
import pickle
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pysyncobj.dns_resolver
import pysyncobj.pickle
import pysyncobj.serializer
import pysyncobj.syncobj
import pysyncobj.tcp_connection
import pysyncobj.transport
from pysyncobj import FAIL_REASON, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.node import Node, TCPNode

from etcdlite import errors
from etcdlite.apply import BatchRun, StateMachine
from etcdlite.quota import UNLIMITED

from . import durable, journal, snapshot_file
from .apply_pacing import PAUSED, ApplyPacer
from .leader_calls import LeaderCalls
from .loop import LoopPoller, LoopSyncObj
from .peer_calls import PeerCalls

log = logging.getLogger("etcdlite.raft")

# pysyncobj pickles commands (so log entries), snapshots and membership
# changes at protocol 2, which stores every bytes object as a latin-1 string:
# slower than the current protocol for our batches of serialized requests,
# and larger (measured: benchmarks/why.md).
# Any protocol reads back the same.
pysyncobj.pickle.__dict__["__protocol"] = pickle.HIGHEST_PROTOCOL
# pysyncobj reads its clock (CLOCK_MONOTONIC_RAW where there is one) through a
# lambda, dozens of times a replicated write: the same clock, called without a
# Python frame
if getattr(time, "CLOCK_MONOTONIC_RAW", None) is not None:
    _raw_clock = functools.partial(time.clock_gettime, time.CLOCK_MONOTONIC_RAW)
    for _module in (pysyncobj.syncobj, pysyncobj.tcp_connection, pysyncobj.transport, pysyncobj.dns_resolver):
        _module.monotonicTime = _raw_clock
journal.install()
durable.install()
snapshot_file.install()


class _SnapshotOs:
    """The `os` pysyncobj's snapshot writer sees: its fork's child (pickling
    and gzipping the whole state) runs at the lowest priority. Members of one
    cluster reach the snapshot point together, and such children at full
    priority take CPU the members need under load: elections and slow
    requests (measured: benchmarks/why.md).

    The child dies with its member and does not hold the member's data
    directory lock: killed with its member, a child at that priority could
    take long to exit on a busy machine, and the member restarted meanwhile
    found its data directory in use."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fork() -> int:
        member = os.getpid()
        pid = os.fork()
        if pid == 0:
            _die_with(member)
            for fd in _DIR_LOCKS:
                os.close(fd)  # the member's own descriptor keeps the lock
            try:
                os.nice(19)
            except OSError:
                pass  # not allowed to lower it: the snapshot is written at normal priority
        return pid


def _die_with(parent: int) -> None:
    """In a forked child: be killed when `parent` dies (Linux), so that no
    snapshot is renamed into a data directory another member may have
    opened since."""
    if _prctl is not None and _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL)) == 0 and os.getppid() != parent:
        os._exit(1)  # the member died before the child asked to follow it


# prctl(2), looked up before any fork (a child loads no library)
_prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1
# descriptors holding data directory locks (see _lock_data_dir), closed in snapshot children
_DIR_LOCKS: set[int] = set()


pysyncobj.serializer.os = _SnapshotOs()

# pysyncobj's failure reasons, as the errors etcd gives for the same cases
FAILURES = {
    FAIL_REASON.QUEUE_FULL: errors.EtcdError(
        errors.grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests"
    ),
    FAIL_REASON.MISSING_LEADER: errors.NO_LEADER,
    FAIL_REASON.DISCARDED: errors.LEADER_CHANGED,
    FAIL_REASON.NOT_LEADER: errors.LEADER_CHANGED,
    FAIL_REASON.LEADER_CHANGED: errors.LEADER_CHANGED,
    FAIL_REASON.REQUEST_DENIED: errors.NOT_CAPABLE,
    FAIL_REASON.UNKNOWN_OUTCOME: errors.TIMEOUT,
}
# how long a learner the member table no longer has is still sent the log (RaftNode._hold_learners)
LEARNER_GRACE = 2.0
# the failure of a command proposed once the node is stopped (not one of pysyncobj's reasons)
STOPPED = "stopped"
FAILURES[STOPPED] = errors.STOPPED


class ReplicatedState(SyncObjConsumer):
    """The part of a member that pysyncobj replicates and snapshots: only
    `machine` is serialized (attributes set before SyncObjConsumer.__init__
    are pysyncobj's 'properties' and stay out of snapshots)."""

    def __init__(self, lock: threading.Lock, on_applied, on_restored, pacer: ApplyPacer,
                 space_quota: int = UNLIMITED):
        self._lock = lock
        self._on_applied = on_applied
        self._on_restored = on_restored
        self._pacer = pacer
        self._run: BatchRun | None = None  # the entry part-applied, if any
        self._space_quota = space_quota  # this member's (StateMachine.space_quota)
        # a test hook (etcdlite.server.corruption.corrupting): commands(entry) -> the entry applied here
        self.rewrite = None
        super().__init__()
        self.machine = StateMachine()
        self.machine.space_quota = space_quota

    @replicated
    def apply(self, commands):
        """Apply one log entry: a batch of commands (see etcdlite.apply), in order.
        Returns, for each, (op, result, events, revision), as `on_applied`
        gets them; or PAUSED when it stopped inside a long command at the
        pacer's deadline, to be called again with the same entry (see
        etcdlite.raft.apply_pacing)."""
        with self._lock:
            run = self._run
            if run is None:
                if self.rewrite is not None:
                    commands = self.rewrite(commands)
                applied = self.machine.apply_batch(commands, self._pacer)
                if type(applied) is BatchRun:
                    self._run = applied
                    return PAUSED
            else:
                applied = run.run()
                if applied is None:
                    return PAUSED
                self._run = None
                self._pacer.finished()
        self._on_applied(applied)
        return applied

    def _deserialize(self, data):
        with self._lock:
            if self._run is not None:
                self._run.abandon()  # the state it was changing is replaced
                self._run = None
                self._pacer.finished()
            super()._deserialize(data)
            self.machine.space_quota = self._space_quota
        self._on_restored()


class PeerNode(TCPNode):
    """A peer known in Raft by its advertised address, but dialled at another
    one when `dial` is given (tests put a fault-injecting proxy there)."""

    # pysyncobj pickles peers into snapshots and membership log entries, which other members
    # and later runs read back: the name they find there stays the one the class had before
    # etcdlite.raft became a package (re-exported there)
    __module__ = "etcdlite.raft"

    def __init__(self, address: str, dial: str | None = None):
        super().__init__(address)
        self.dial = dial

    # pysyncobj keys its per-peer state by node, hashed dozens of times a
    # replicated write: without going through the `id` property (same values as Node's)
    def __hash__(self):
        return hash(self._id)

    def __eq__(self, other):
        return isinstance(other, Node) and self._id == other.id

    @property
    def ip(self):
        host = self.dial.rsplit(":", 1)[0] if self.dial else self.host
        return globalDnsResolver().resolve(host)

    @property
    def port(self):
        return int(self.dial.rsplit(":", 1)[1]) if self.dial else super().port


class RaftNode:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        self_address: str,
        peer_addresses: list[str],
        data_dir: str,
        *,
        bind_address: str | None = None,
        on_applied=lambda applied: None,
        on_restored=lambda: None,
        on_ready=lambda: None,
        password: str | None = None,
        tick_period: float = 0.05,
        snapshot_count: int = 100_000,
        snapshot_bytes: int = 16 << 20,
        dial: dict[str, str] | None = None,
        desired_peers=None,
        learner_peers=None,
        may_campaign=None,
        is_learner=None,
        fsync: bool = True,
        sync_in_thread: bool = False,
        peer_tls=None,
        space_quota: int = UNLIMITED,
    ):
        durable.set_sync(fsync)
        # the leader's journal syncs run here, the loop going on meanwhile (see _leader_tick)
        self._sync_pool = ThreadPoolExecutor(1, thread_name_prefix="raft-sync") if fsync and sync_in_thread else None
        self._sync_running = False
        self._sync_failed = False
        if not fsync:
            log.warning("--unsafe-no-fsync: the raft journal, its meta file and snapshots are not synced; "
                        "a power loss or OS crash on a majority of members can lose acknowledged writes "
                        "(for benchmarks and tests only)")
        durable.make_dirs(data_dir)
        self._dir_lock = _lock_data_dir(data_dir)
        try:
            _check_snapshot(os.path.join(data_dir, "raft.snapshot"))
        except BaseException:
            _DIR_LOCKS.discard(self._dir_lock)
            os.close(self._dir_lock)
            raise
        self.lock = threading.Lock()
        self._pacer = ApplyPacer(loop, self._tick)
        self.state = ReplicatedState(self.lock, on_applied, on_restored, self._pacer, space_quota)
        self.single = not peer_addresses
        self._tick_period = tick_period
        conf = SyncObjConf(
            autoTick=False,
            # no append per proposal: `_tick` sends once per tick instead
            appendEntriesUseBatch=True,
            journalFile=os.path.join(data_dir, "raft.journal"),
            fullDumpFile=os.path.join(data_dir, "raft.snapshot"),
            # the snapshot (pickle + gzip of the whole state) is written by a
            # forked child: written inline, it stalls the member on a large
            # state (measured: benchmarks/why.md)
            useFork=True,
            logCompactionMinEntries=snapshot_count,
            logCompactionMinTime=3600,
            connectionRetryTime=1.0,
            # entries are batches of requests (see Member.propose): send
            # them whole rather than through pysyncobj's chunked transfer
            appendEntriesBatchSizeBytes=4 * 1024 * 1024,
            sendBufferSize=1024 * 1024,
            recvBufferSize=1024 * 1024,
            commandsWaitLeader=True,
            bindAddress=bind_address,
            maxBindRetries=5,
            password=password,
            onReady=on_ready,
            dynamicMembershipChange=True,
        )
        _set_timing(conf, self.single)
        self._dial = dial = dial or {}
        self._desired_peers = desired_peers
        self._learner_peers = learner_peers
        self._learners_leaving: dict[str, float] = {}  # address -> when the table stopped holding it
        self._last_reconcile = 0.0
        peers = [PeerNode(address, dial.get(address)) for address in peer_addresses]
        self._loop = loop
        self._tick_pending = False
        self._stopped = False
        self._poller = LoopPoller(loop, self._after_event)
        self._obj = LoopSyncObj(self_address, peers, conf, [self.state], self._poller, self._pacer,
                                snapshot_bytes=snapshot_bytes, peer_tls=peer_tls)
        _keep_log_after_snapshot(self._obj)
        self._obj.__dict__["may_campaign"] = may_campaign
        self._obj.__dict__["is_learner"] = is_learner
        # calls the leader answers outside the log (lease keep-alives): see etcdlite.raft.leader_calls
        self.calls = LeaderCalls(loop, self._obj)
        self._obj.__dict__["leader_calls"] = self.calls
        # calls one member makes of a named peer (the corruption checks' hashes): etcdlite.raft.peer_calls
        self.peer_calls = PeerCalls(loop, self._obj)
        self._obj.__dict__["peer_calls"] = self.peer_calls
        self._journal = self._obj._SyncObj__raftLog
        transport = self._obj.peer_transport
        self._poller.cork, self._poller.uncork = transport.cork, transport.uncork
        transport.before_send = self._before_send
        self._last_index = self._obj._SyncObj__getCurrentLogIndex
        self._send_append_entries = self._obj._SyncObj__sendAppendEntries
        self._commit_told = 0  # the highest commit index sent to the followers by _before_apply
        self._forwarded_upto = 0  # the last log index that may hold a command a follower forwarded
        self._obj.__dict__["before_apply"] = self._before_apply
        # leaders this member came to know, as etcd's etcd_server_leader_changes_seen_total: a
        # known leader other than the one last seen (none, during an election, counts as one)
        self.leader_changes = 0
        self._leader_seen = None
        self._timer = loop.call_soon(self._periodic)

    # Ticking. A tick runs in the event loop after a proposal, after a peer
    # socket event that leaves it work (`_after_event`; coalesced: one per
    # loop iteration) and every tick period (for elections and heartbeats).
    # Inside a pysyncobj tick, appending new
    # commands comes after committing and applying, so a single member
    # (nobody to wait for) ticks again at once to commit what it appended.
    # pysyncobj's own sending of an AppendEntries per proposal and per
    # applied batch is off (appendEntriesUseBatch): the leader sends one
    # message per follower per tick, carrying the new entries and the new
    # commit index together.
    def _schedule_tick(self) -> None:
        if not self._tick_pending and not self._stopped:
            self._tick_pending = True
            self._loop.call_soon(self._tick)

    def _after_event(self) -> None:
        """After a peer socket event was handled: a tick when it has work
        (entries to apply or to commit, commands to append or forward).
        pysyncobj handles each message as it reads it (replies, votes, terms,
        appends), so most events leave a tick nothing to do: a follower's
        read of new entries, a leader's read of the second acknowledgement
        (measured: benchmarks/why.md). What is time-bound (elections,
        heartbeats, a pending leadership transfer, reconnecting) is the
        periodic tick's, every tick period. A follower told a new commit
        index applies it at once (`_apply_now`), and ticks too if commands
        wait to be forwarded (proposed while it knew no leader: the message
        that brought the commit index may have brought the leader)."""
        obj = self._obj
        commit = obj.raftCommitIndex
        if commit > obj.raftLastApplied and not obj._isLeader():
            self._apply_now()
            if obj._SyncObj__commandsQueue._FastQueue__queue:
                self._schedule_tick()
        elif (commit > obj.raftLastApplied or obj._SyncObj__commandsQueue._FastQueue__queue
                or (commit < self._last_index() and obj._isLeader())):
            self._schedule_tick()

    def _apply_now(self) -> None:
        """A follower applies what its new commit index covers inside the
        event that brought it (its clients' answers do not wait for the
        loop's next turn), and only that: the rest of a tick (elections,
        forwarding, snapshots) is the periodic tick's."""
        self._corked(self._obj._SyncObj__applyLogEntries, "apply")

    def _corked(self, step, what: str) -> None:
        """One step of a tick on its own, what it sends leaving together."""
        self._poller.cork()
        try:
            step()
        except Exception:
            log.exception("raft %s failed", what)
        finally:
            self._poller.uncork()

    def _periodic(self) -> None:
        self._hold_learners()
        self._tick()
        self._note_leader()
        if not self._stopped:
            self._timer = self._loop.call_later(self._tick_period, self._periodic)

    def _note_leader(self) -> None:
        """Count a change of leader (seen every tick period, off the write
        path: elections take longer than that)."""
        leader = self.leader if self.has_leader else None
        if leader != self._leader_seen:
            self._leader_seen = leader
            if leader is not None:
                self.leader_changes += 1

    def _tick(self) -> None:
        self._tick_pending = False
        if self._stopped:
            return
        obj = self._obj
        self._poller.cork()
        try:
            last, commit = self._last_index(), obj.raftCommitIndex
            if self._sync_pool is not None and obj._isLeader():
                self._leader_tick()
            else:
                if obj._isLeader():
                    # append what was proposed first: pysyncobj's tick appends
                    # last, after committing, so a lone member would need a
                    # second tick to commit its own proposals
                    obj._checkCommandsToApply()
                    if not self.single and self._last_index() != last:
                        self._send_early()
                        last = self._last_index()
                self._do_tick()
                while self.single and obj._isLeader() and obj.raftCommitIndex < self._last_index():
                    self._do_tick()
            if obj._isLeader() and (self._last_index() != last
                                    or obj.raftCommitIndex != max(commit, self._commit_told)):
                self._send_append_entries()
            self._reconcile_peers()
            single = not obj._SyncObj__otherNodes and not obj.__dict__["learners"]
            if single != self.single:
                self.single = single
                _set_timing(obj._SyncObj__conf, single)
        except Exception:
            log.exception("raft tick failed")
        finally:
            self._poller.uncork()

    def _send_early(self) -> None:
        """The leader's new entries leave for the followers before its own
        sync (the Raft paper, 10.2.1): the followers write and sync them
        while it syncs, and a write's wait is the longer of the two, not
        their sum. Nothing is acknowledged sooner than it was: the leader
        counts itself as holding an entry only after its sync (`_do_tick`),
        a follower acknowledges one only after its own (`_before_send`)."""
        self._send_append_entries()
        self._obj.peer_transport.flush_now()

    def _before_apply(self) -> None:
        """Inside pysyncobj's tick, between its commit step and applying:
        when a write a follower forwarded is among the newly committed
        entries, the leader tells its followers the new commit index first,
        so that the follower applies and answers it while the leader applies
        it, not after (pysyncobj told the follower the write's index when it
        was appended: the commit index is all it waits for). When only the
        leader's own clients wait, their answers leave first and the commit
        index right after them (`_tick`'s send): the two sends (each waking a
        follower) are off their path."""
        obj = self._obj
        commit = obj.raftCommitIndex
        if self.single or commit <= self._commit_told or not obj._isLeader():
            return
        if obj.raftLastApplied >= self._forwarded_upto and not obj.__dict__["forwarded_waiting"]:
            return
        self._commit_told = commit
        self._send_append_entries()
        transport = obj.peer_transport
        transport.flush_now(first=transport._connections.get(obj.__dict__["forwarded_by"]))

    def _note_forwarded(self) -> None:
        """After the leader appended what was proposed: the last index that
        may hold a command a follower forwarded (pysyncobj appends those from
        the same queue as the leader's own; the flag stays while the queue
        holds any)."""
        obj = self._obj
        if obj.__dict__["forwarded_waiting"]:
            self._forwarded_upto = self._last_index()
            if not obj._SyncObj__commandsQueue._FastQueue__queue:
                obj.__dict__["forwarded_waiting"] = False

    def _do_tick(self) -> None:
        # pysyncobj's commit step counts the leader as holding every entry in
        # its log: make that true on disk first (appends since the last tick)
        self._journal.sync()
        self._obj.doTick(0.0)
        self._note_forwarded()

    def _leader_tick(self) -> None:
        """The leader's tick when its syncs run in a thread (`_sync_pool`):
        pysyncobj's tick, whose commit step counts the leader as holding
        every entry in its log, runs only while all of them are durable;
        entries appended by it (what was proposed meanwhile: the tick
        appends last) are then synced in the thread while the loop goes on
        (reads requests, serves reads, sends the new entries to followers),
        and the sync's end ticks again. One sync at a time: what is proposed
        during it waits in pysyncobj's queue and goes in the next, so under
        load a sync covers what the loop read during the previous one."""
        if self._sync_running or self._sync_failed:
            return  # its end ticks
        journal, obj = self._journal, self._obj
        if not journal.dirty:
            obj.doTick(0.0)
        if obj._isLeader() and journal.dirty:
            index, running = journal.sync_in(self._sync_pool)
            if running is not None:
                self._sync_running = True
                running.add_done_callback(
                    lambda _: self._loop.call_soon_threadsafe(self._leader_synced, index))

    def _leader_synced(self, index: int) -> None:
        self._sync_running = False
        if self._stopped:
            return
        try:
            self._journal.synced(index)
        except OSError as err:
            # as etcd, which stops on a failed WAL sync: after fdatasync fails the written
            # pages may be dropped (marked clean), so a retry that succeeds proves nothing
            self._sync_failed = True
            log.critical("fdatasync of the raft journal failed (%s): this member commits nothing more; "
                         "check the disk, then restart it", err)
            return
        self._tick()

    def _before_send(self) -> None:
        """Runs before peer messages leave: a follower's AppendEntries
        replies must not leave before the entries they report are durable
        (a vote is stored synced before its reply is made: see
        `durable.SyncedMetaStorer`). The leader's own messages (entries,
        heartbeats) promise nothing about its disk; it syncs before counting
        itself (`_do_tick`), while its followers sync what it sent them."""
        if not self._obj._isLeader():
            self._journal.sync()

    def _reconcile_peers(self) -> None:
        """On the leader, once a second: make pysyncobj's node list follow the
        replicated member table, one change at a time (Raft's single-server
        membership changes; pysyncobj refuses a change while the previous one
        is uncommitted, and it is simply tried again)."""
        if self._desired_peers is None:
            return
        now = time.monotonic()
        if now - self._last_reconcile < 1.0 or not self._obj._isLeader():
            return
        self._last_reconcile = now
        desired = self._desired_peers()
        if desired is None:
            return
        current = {node.id: node for node in self._obj._SyncObj__otherNodes}
        for address in sorted(desired - current.keys()):
            log.info("adding %s to the raft configuration", address)
            self._obj.addNodeToCluster(PeerNode(address, self._dial.get(address)), callback=_log_change)
            return
        for address in sorted(current.keys() - desired):
            log.info("removing %s from the raft configuration", address)
            self._obj.removeNodeFromCluster(current[address], callback=_log_change)
            return

    def _hold_learners(self) -> None:
        """Every tick period: hold as learners (etcdlite.raft.learners) the
        members the replicated member table says are. One the table no
        longer has is let go LEARNER_GRACE later: a removed learner learns
        of its removal from the log (then stops), as a removed voter does
        before the leader takes it out of Raft's configuration."""
        if self._learner_peers is None:
            return
        wanted = self._learner_peers()
        if wanted is None:
            return
        now = time.monotonic()
        held, leaving = self._obj.learner_addresses(), self._learners_leaving
        for address in [a for a in leaving if a in wanted or a not in held]:
            del leaving[address]  # in the table again, or let go
        for address in held - wanted:
            if now - leaving.setdefault(address, now) < LEARNER_GRACE:
                wanted.add(address)
        try:
            self._obj.hold_learners(wanted, lambda address: PeerNode(address, self._dial.get(address)))
        except Exception:
            log.exception("raft learners update failed")

    def learners(self) -> set[str]:
        """Raft addresses of the learners this member holds now."""
        return self._obj.learner_addresses()

    def learner_progress(self, address: str) -> tuple[int, int] | None:
        """On the leader: (the learner's match index, the leader's last
        index), None if no learner is held at `address`."""
        match = self._obj.learner_match(address)
        return None if match is None else (match, self._last_index())

    def transfer_leadership(self, address: str) -> None:
        """Ask pysyncobj (on the leader) to hand leadership to `address`;
        best effort: watch `leader` to see it happen."""
        node = next((n for n in set(self._obj._SyncObj__otherNodes) if n.id == address), None)
        if node is not None:
            self._obj.transferLeadership(node, callback=_log_change)

    def peers(self) -> set[str]:
        """Raft addresses of the other members as pysyncobj has them now
        (copied in one step)."""
        return {node.id for node in set(self._obj._SyncObj__otherNodes)}

    def propose(self, commands: list[tuple], callback, *, now: bool = False) -> None:
        """Append a batch of commands (see etcdlite.apply) to the log as one entry;
        `callback(applied, fail_reason)` runs in the event loop once it is
        applied here (`applied` as ReplicatedState.apply returns it), or has
        failed. With `now`, the tick that appends (and, on a lone member,
        commits and applies) runs before this returns, instead of in a later
        turn of the loop; on a follower, the batch leaves for the leader
        before this returns (`_forward`)."""
        if self._stopped:  # a late write (a cancelled Lock's clean-up) as the member stops
            self._loop.call_soon(callback, None, STOPPED)
            return
        self.state.apply(commands, callback=callback)
        if not now:
            self._schedule_tick()
        elif self.single or self._obj._isLeader():
            self._tick()
        else:
            self._forward()

    def _forward(self) -> None:
        """A follower's proposals leave for the leader now: what pysyncobj's
        tick does with them, without the rest of a tick (elections, commits,
        applying: nothing a proposal changes). With no leader known they
        wait in pysyncobj's queue for a tick that knows one."""
        self._corked(self._obj._checkCommandsToApply, "forward")

    @property
    def machine(self) -> StateMachine:
        return self.state.machine

    @property
    def is_leader(self) -> bool:
        return self._obj._isLeader()

    @property
    def leader(self) -> str | None:
        leader = self._obj._getLeader()
        return None if leader is None else leader.id

    @property
    def has_leader(self) -> bool:
        """Whether this member has a leader, as etcd's Raft tells it: the
        leader itself, or a follower that heard from its leader within its
        election timeout. (pysyncobj keeps its last leader while connected to
        no peer, starting no election; etcd's follower would have dropped it
        as it campaigned.)"""
        obj = self._obj
        if obj._getLeader() is None:
            return False
        return obj._isLeader() or pysyncobj.syncobj.monotonicTime() <= obj._SyncObj__raftElectionDeadline

    @property
    def term(self) -> int:
        return self._obj.raftCurrentTerm

    @property
    def commit_index(self) -> int:
        return self._obj.raftCommitIndex

    @property
    def applied_index(self) -> int:
        return self._obj.raftLastApplied

    def stop(self) -> None:
        """Close pysyncobj's sockets and files; call in the event loop."""
        if self._stopped:
            return
        self._stopped = True
        self._timer.cancel()
        self._obj.destroy()
        if self._sync_pool is not None:
            self._sync_pool.shutdown(wait=True)
        self._poller.close()
        _DIR_LOCKS.discard(self._dir_lock)
        os.close(self._dir_lock)


def _keep_log_after_snapshot(obj: LoopSyncObj) -> None:
    """Have pysyncobj's start-up load of the snapshot keep the journal's
    entries after it (`journal.trim_to_snapshot`): the journal is trimmed to
    the snapshot once the snapshot child has renamed it into place, and a
    member killed in between lost every acknowledged write after the
    snapshot. Done on the snapshot as pysyncobj reads it (it can be large:
    read once); a snapshot from the leader (not at start-up) replaces the
    journal anyway."""
    serializer = obj._SyncObj__serializer
    load = serializer.deserialize

    def deserialize():
        if not obj._SyncObj__needLoadDumpFile:
            # one received from the leader (at start-up, RaftNode checked it)
            try:
                snapshot_file.verify(obj._SyncObj__conf.fullDumpFile)
            except snapshot_file.SnapshotCorrupt as err:
                log.critical("%s; not installing it: this member stays behind until the leader sends another", err)
                raise
        data = load()
        if obj._SyncObj__needLoadDumpFile:
            try:
                if journal.trim_to_snapshot(obj._SyncObj__raftLog, data[2], data[1]):
                    log.info("raft journal trimmed to the snapshot at index %d on load", data[1][1])
            except Exception:
                log.exception("could not trim the raft journal to the snapshot")
        return data

    serializer.deserialize = deserialize


def _check_snapshot(path: str) -> None:
    """Refuse to start from a snapshot that fails its checksum: pysyncobj
    would log the failed load and go on from the journal alone, on an empty
    state."""
    if not os.path.isfile(path):
        return
    try:
        snapshot_file.verify(path)
    except snapshot_file.SnapshotCorrupt as err:
        raise snapshot_file.SnapshotCorrupt(f"{err}. This member cannot start from it. {journal.RECOVER}") from None


def _set_timing(conf: SyncObjConf, single: bool) -> None:
    """Raft timing for a cluster of one (nobody to wait for: elect ourselves
    at once after a restart) or of several; pysyncobj reads these settings
    afresh each time, so they follow membership changes."""
    if single:
        election, heartbeat = (0.05, 0.1), 0.01
    else:
        election, heartbeat = (1.0, 2.0), 0.1
    conf.raftMinTimeout, conf.raftMaxTimeout = election
    conf.appendEntriesPeriod = heartbeat
    conf.connectionTimeout = election[1] * 2
    # a leader cut off from the majority steps down after this
    conf.leaderFallbackTimeout = election[1] * 2


def _log_change(result, reason) -> None:
    if reason:
        log.info("raft configuration change not taken (reason %s); will retry", reason)


def _lock_data_dir(data_dir: str) -> int:
    """Two members on one data directory would corrupt its journal."""
    fd = os.open(os.path.join(data_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(f"data directory {data_dir} is in use by another member; stop it or pick another --data-dir")
    _DIR_LOCKS.add(fd)
    return fd
