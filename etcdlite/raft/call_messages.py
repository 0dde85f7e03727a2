"""Calls carried as peer messages of their own beside pysyncobj's, on the same
authenticated connections: the request/answer plumbing that the leader's
calls (etcdlite.raft.leader_calls) and the calls of a named peer
(etcdlite.raft.peer_calls) share. A message is `{"type": CALL, "items":
[(call ID, kind, payload), ...]}` or `{"type": ANSWER, "items": [(call ID,
ok, value or error), ...]}`; the answers given at once to one message leave
in one message, with the others of the same peer event.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from abc import ABC, abstractmethod


class CallMessages(ABC):
    """`obj`: the LoopSyncObj (its transport); `receive` is given every peer
    message (LoopSyncObj). Subclasses name their message types (CALL,
    ANSWER) and say how a call starts, how a failure is told, and where an
    answer given later goes."""

    CALL = ""
    ANSWER = ""

    def __init__(self, loop: asyncio.AbstractEventLoop, obj) -> None:
        self._loop = loop
        self._obj = obj
        self._handlers: dict[str, object] = {}
        self._ids = itertools.count(1)

    def handle(self, kind: str, handler) -> None:
        """`handler(payload)`: an answer (picklable) or an awaitable of one;
        raises an EtcdError for the caller."""
        self._handlers[kind] = handler

    def receive(self, node, message) -> bool:
        """A peer message: True if it was one of these calls or answers."""
        kind = message.get("type")
        if kind == self.CALL:
            answers: list = []
            for call_id, call_kind, payload in message["items"]:
                self._run(node, call_id, call_kind, payload, answers)
            if answers:  # leave with this peer event's other messages, not a turn later
                self._obj.peer_transport.send(node, {"type": self.ANSWER, "items": answers})
            return True
        if kind == self.ANSWER:
            for call_id, ok, value in message["items"]:
                answer = self._awaited(call_id)
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
        try:
            answer = self._start(self._handlers.get(kind), payload)
        except Exception as exc:  # noqa: BLE001 (every failure goes back to the caller)
            answers.append(self._failure(call_id, exc))
            return
        if not inspect.isawaitable(answer):
            answers.append((call_id, True, answer))
            return

        def done(task: asyncio.Future) -> None:
            if task.cancelled():
                item = self._failure(call_id, self._cancelled())
            elif task.exception() is not None:
                item = self._failure(call_id, task.exception())
            else:
                item = (call_id, True, task.result())
            self._send_answer(node, item)

        asyncio.ensure_future(answer).add_done_callback(done)

    # --- what subclasses say ------------------------------------------------

    @abstractmethod
    def _awaited(self, call_id: int) -> asyncio.Future | None:
        """The answer a call this member sent waits for."""

    @abstractmethod
    def _start(self, handler, payload):
        """The handler's answer (or awaitable); raises what the caller is told."""

    @abstractmethod
    def _failure(self, call_id: int, exc: BaseException) -> tuple:
        """The answer item telling the caller of `exc`."""

    @abstractmethod
    def _cancelled(self) -> BaseException:
        """What a handler cancelled before it answered tells the caller."""

    @abstractmethod
    def _send_answer(self, node, item: tuple) -> None:
        """Send an answer given after the call's message was handled."""
