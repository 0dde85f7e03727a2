"""Applying committed entries a bounded amount of work per turn of the event loop.

pysyncobj applies every committed entry in one call, inside a tick, and the tick runs in
the member's event loop. An entry holding a DeleteRange of 300k keys took seconds there:
no other client was answered and SIGTERM waited (issue 24). Here the state machine may
stop inside a long command once `APPLY_SLICE` has passed (`etcdlite.apply.BatchRun`);
the entry then stays unapplied for pysyncobj (its last-applied index does not move, its
callbacks wait), nothing after it is applied, and the next turn of the loop goes on with
it. Raft order is kept, and so is what readers see: the store's write txn stays open in
between, and reads answer as of the revision before the command.

No snapshot is taken while an entry is part-applied (its state is not one the log ever
had); pysyncobj's log compaction waits for the entry to end.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pysyncobj import FAIL_REASON, SyncObj
from pysyncobj.syncobj import SyncObjExceptionWrongVer

log = logging.getLogger("etcdlite.raft")

# seconds of applying one turn of the event loop may take before a long command stops
APPLY_SLICE = 0.02


class _Paused:
    """What `ReplicatedState.apply` returns for an entry it stopped inside."""

    def __repr__(self) -> str:
        return "PAUSED"


PAUSED = _Paused()


class ApplyPacer:
    """The apply budget of one turn of the loop, and the resumption of a
    part-applied entry in the next turn (`tick` runs then)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick):
        self._loop = loop
        self._tick = tick
        self._deadline = 0.0  # this round's, once a long command asked for it
        self.paused = False  # an entry is part-applied
        self._resume_scheduled = False
        self.may_resume = True  # False: the part-applied entry waits for the next turn

    def start_round(self) -> None:
        """Applying begins (unless paused and not may_resume): a new budget."""
        self._deadline = 0.0

    def deadline(self) -> float:
        """The time.monotonic() by which this round's long commands stop
        (counted from the first one that asks: plain puts never do)."""
        if not self._deadline:
            self._deadline = time.monotonic() + APPLY_SLICE
        return self._deadline

    def pause(self) -> None:
        """The entry being applied stopped: go on in the next turn."""
        self.paused = True
        self.may_resume = False
        if not self._resume_scheduled:
            self._resume_scheduled = True
            self._loop.call_soon(self._resume)

    def finished(self) -> None:
        """The part-applied entry ended (or was replaced by a snapshot)."""
        self.paused = False
        self.may_resume = True

    def _resume(self) -> None:
        self._resume_scheduled = False
        if self.paused:
            self.may_resume = True
            self._tick()


class PacedApply(SyncObj):
    """A SyncObj mixin: pysyncobj's apply loop, but an entry whose
    application returns PAUSED is left where it is (see the module doc).
    `_apply_pacer` (an ApplyPacer) is set by the subclass."""

    def _SyncObj__applyLogEntries(self):
        applied = self._SyncObj__raftLastApplied
        commit = self._SyncObj__raftCommitIndex
        if commit <= applied:
            return False
        pacer = self._apply_pacer
        if not pacer.may_resume:
            return False
        pacer.start_round()
        waiting = self._SyncObj__commandsWaitingCommit
        for command, index, term in self._SyncObj__getEntries(applied + 1, commit - applied):
            try:
                result = self._SyncObj__doApplyCommand(command)
            except SyncObjExceptionWrongVer as err:
                # nothing after an entry this code cannot apply is applied either
                log.error("a raft entry asks for pysyncobj code version %d, newer than this one: upgrade", err.ver)
                return False
            if result is PAUSED:
                pacer.pause()
                return False
            # subscribers are taken only now: a follower may add one while the entry is part-applied
            for subscribed_term, callback in waiting.pop(index, ()):
                if subscribed_term == term:
                    callback(result, FAIL_REASON.SUCCESS)
                else:
                    callback(None, FAIL_REASON.DISCARDED)
            self._SyncObj__raftLastApplied += 1
        return False  # appendEntriesUseBatch: the tick sends, not each apply

    def _SyncObj__tryLogCompaction(self):
        if not self._apply_pacer.paused:
            super()._SyncObj__tryLogCompaction()
