"""Calls answered by the Raft leader without a log entry, forwarded to it
over the peer connections.

Some requests are the leader's alone to answer and change nothing
replicated: a lease keep-alive restarts a countdown in the leader's memory,
TimeToLive reads it. etcd forwards both from a follower to its leader over
the peer HTTP port (its leasehttp); here they travel as peer messages of
their own beside pysyncobj's, on the same authenticated connections.

`LeaderCalls.call(kind, payload, timeout)` runs the handler registered for
`kind` on the leader: here when this member is the leader, else in a
message to the leader, whose handler's answer comes back in another. Calls
made in one turn of the event loop leave in one message per peer; the
answers given at once to one message leave in one message, with the others
of the same peer event. A handler raises `NotLeader` when
its member is not (or no longer) the leader; the call then goes to the
leader of the moment, as it does when the leader changes or its connection
is lost while an answer is awaited (a call may thus run twice: handlers are
idempotent). After `timeout` the call fails as etcd's does: `etcdserver: no
leader` if no leader was known, `etcdserver: request timed out` otherwise.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

from etcdlite import errors
from etcdlite.raft.call_messages import CallMessages

log = logging.getLogger("etcdlite.raft")

CALL = "etcdlite_leader_call"
ANSWER = "etcdlite_leader_answer"
# an answer not come after this is asked of the leader again
ATTEMPT_TIMEOUT = 1.0
# how often a waiting call looks whether the leader changed or went away
WATCH_PERIOD = 0.05
# between attempts (no leader, a refused or lost call), as etcd's 50 ms
RETRY_PAUSE = 0.05


class NotLeader(Exception):
    """Raised by a handler on a member that is not the leader: the caller
    asks the leader of the moment."""


class _Lost(Exception):
    """The leader asked changed or went away before it answered."""


class LeaderCalls(CallMessages):
    """`obj`: the LoopSyncObj (its leader, its transport); `receive` is
    given every peer message first (LoopSyncObj)."""

    CALL = CALL
    ANSWER = ANSWER

    def __init__(self, loop: asyncio.AbstractEventLoop, obj) -> None:
        super().__init__(loop, obj)
        # calls sent, by ID: (their answer, the leader asked, when to give up on it)
        self._waiting: dict[int, tuple] = {}
        self._watch: asyncio.TimerHandle | None = None  # _watch_waiting's next run
        # messages to send at the end of this turn: (node, type) -> items
        self._outbox: dict[tuple, list] = {}
        self._flush_scheduled = False

    async def call(self, kind: str, payload, timeout: float):
        loop, obj = self._loop, self._obj
        deadline = loop.time() + timeout
        no_leader = False
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.NO_LEADER if no_leader else errors.TIMEOUT
            try:
                if obj._isLeader():
                    no_leader = False
                    answer = self._handlers[kind](payload)
                    if inspect.isawaitable(answer):
                        answer = await asyncio.wait_for(answer, remaining)
                    return answer
                leader = obj._getLeader()
                no_leader = leader is None
                if leader is not None:
                    return await self._ask(leader, kind, payload, min(remaining, ATTEMPT_TIMEOUT))
            except (NotLeader, _Lost):
                pass
            except asyncio.TimeoutError:
                continue  # the deadline passed: the loop's top answers
            await asyncio.sleep(min(RETRY_PAUSE, max(0.0, deadline - loop.time())))

    async def _ask(self, leader, kind: str, payload, timeout: float):
        call_id = next(self._ids)
        answer = self._loop.create_future()
        self._waiting[call_id] = (answer, leader, self._loop.time() + timeout)
        self._queue(leader, CALL, (call_id, kind, payload))
        if self._watch is None:
            self._watch = self._loop.call_later(WATCH_PERIOD, self._watch_waiting)
        try:
            return await answer
        finally:
            self._waiting.pop(call_id, None)

    def _watch_waiting(self) -> None:
        """Give up on the calls whose leader changed or went away, or that
        waited ATTEMPT_TIMEOUT (they are asked again)."""
        self._watch = None
        obj, now = self._obj, self._loop.time()
        current = obj._getLeader()
        for answer, leader, end in list(self._waiting.values()):
            if not answer.done() and (leader != current or now >= end or not obj.isNodeConnected(leader)):
                answer.set_exception(_Lost())
        if self._waiting:
            self._watch = self._loop.call_later(WATCH_PERIOD, self._watch_waiting)

    # --- messages ---------------------------------------------------------

    def _queue(self, node, kind: str, item) -> None:
        self._outbox.setdefault((node, kind), []).append(item)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        transport = self._obj.peer_transport
        transport.cork()
        try:
            for (node, kind), items in outbox.items():
                if transport.send(node, {"type": kind, "items": items}) or kind != CALL:
                    continue
                for call_id, _, _ in items:  # not connected: tried again at once
                    waiting = self._waiting.get(call_id)
                    if waiting is not None and not waiting[0].done():
                        waiting[0].set_exception(_Lost())
        finally:
            transport.uncork()

    # --- CallMessages (handlers raise NotLeader, or an EtcdError for the caller) ---

    def _awaited(self, call_id: int) -> asyncio.Future | None:
        waiting = self._waiting.get(call_id)
        return waiting[0] if waiting is not None else None

    def _start(self, handler, payload):
        if handler is None or not self._obj._isLeader():
            raise NotLeader()
        return handler(payload)

    def _failure(self, call_id: int, exc: BaseException) -> tuple:
        if not isinstance(exc, (errors.EtcdError, NotLeader)):
            log.error("leader call %d failed", call_id, exc_info=exc)
            exc = NotLeader()  # asked again, of whichever member leads then
        return call_id, False, exc

    def _cancelled(self) -> BaseException:
        return NotLeader()

    def _send_answer(self, node, item: tuple) -> None:
        self._queue(node, ANSWER, item)
