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
import itertools
import logging

from etcdlite import errors

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


class LeaderCalls:
    """`obj`: the LoopSyncObj (its leader, its transport); `receive` is
    given every peer message first (LoopSyncObj)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, obj) -> None:
        self._loop = loop
        self._obj = obj
        self._handlers: dict[str, object] = {}
        self._ids = itertools.count(1)
        # calls sent, by ID: (their answer, the leader asked, when to give up on it)
        self._waiting: dict[int, tuple] = {}
        self._watch: asyncio.TimerHandle | None = None  # _watch_waiting's next run
        # messages to send at the end of this turn: (node, type) -> items
        self._outbox: dict[tuple, list] = {}
        self._flush_scheduled = False

    def handle(self, kind: str, handler) -> None:
        """`handler(payload)`: an answer (picklable), or an awaitable of one;
        raises NotLeader, or an EtcdError for the caller."""
        self._handlers[kind] = handler

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

    def receive(self, node, message) -> bool:
        """A peer message: True if it was one of these calls or answers."""
        kind = message.get("type")
        if kind == CALL:
            answers: list = []
            for call_id, call_kind, payload in message["items"]:
                self._run(node, call_id, call_kind, payload, answers)
            if answers:  # leave with this peer event's other messages, not a turn later
                self._obj.peer_transport.send(node, {"type": ANSWER, "items": answers})
            return True
        if kind == ANSWER:
            for call_id, ok, value in message["items"]:
                waiting = self._waiting.get(call_id)
                answer = waiting[0] if waiting is not None else None
                if answer is not None and not answer.done():
                    if ok:
                        answer.set_result(value)
                    else:
                        answer.set_exception(value)
            return True
        return False

    def _run(self, node, call_id: int, kind: str, payload, answers: list) -> None:
        """Run a call from `node`: its answer goes into `answers` if it is
        there at once, else in a message of its own once it is."""
        handler = self._handlers.get(kind)
        try:
            if handler is None or not self._obj._isLeader():
                raise NotLeader()
            answer = handler(payload)
        except Exception as exc:  # noqa: BLE001 (every failure goes back to the caller)
            answers.append(self._answer_item(call_id, None, exc))
            return
        if not inspect.isawaitable(answer):
            answers.append((call_id, True, answer))
            return
        task = asyncio.ensure_future(answer)

        def done(t: asyncio.Task) -> None:
            exc = NotLeader() if t.cancelled() else t.exception()
            self._answer(node, call_id, None if exc else t.result(), exc)

        task.add_done_callback(done)

    def _answer(self, node, call_id: int, value, exc: BaseException | None) -> None:
        self._queue(node, ANSWER, self._answer_item(call_id, value, exc))

    @staticmethod
    def _answer_item(call_id: int, value, exc: BaseException | None) -> tuple:
        if exc is None:
            return call_id, True, value
        if not isinstance(exc, (errors.EtcdError, NotLeader)):
            log.error("leader call %d failed", call_id, exc_info=exc)
            exc = NotLeader()  # asked again, of whichever member leads then
        return call_id, False, exc
