"""Calls one member makes of another named peer, answered by that peer
whatever its Raft role, over the peer connections.

etcd serves a few such calls on its peer HTTP port beside Raft's messages
(its corruption checks fetch a peer's HashKV from /members/hashkv); here they
travel as peer messages of their own, on the same authenticated connections
as pysyncobj's (etcdlite.raft.peer_transport), so they need no client
credentials and pass wherever Raft passes.

`PeerCalls.call(address, kind, payload, timeout)` runs the handler
registered for `kind` on the member whose Raft address is `address` and
returns its answer. While that peer is not connected the call waits for it
(pysyncobj reconnects every second); an answer not come within
ATTEMPT_TIMEOUT is asked for again, so handlers must be idempotent (they are
reads). After `timeout` the call raises `etcdserver: request timed out`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging

from etcdlite import errors

log = logging.getLogger("etcdlite.raft")

CALL = "etcdlite_peer_call"
ANSWER = "etcdlite_peer_answer"
# an answer not come after this is asked for again
ATTEMPT_TIMEOUT = 1.0
# between tries while the peer is not connected
RETRY_PAUSE = 0.05


class PeerCalls:
    """`obj`: the LoopSyncObj (its nodes, its transport); `receive` is
    given every peer message (LoopSyncObj)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, obj) -> None:
        self._loop = loop
        self._obj = obj
        self._handlers: dict[str, object] = {}
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}

    def handle(self, kind: str, handler) -> None:
        """`handler(payload)`: an answer (picklable) or an awaitable of one;
        raises an EtcdError for the caller."""
        self._handlers[kind] = handler

    def _node(self, address: str):
        return next((n for n in set(self._obj._SyncObj__otherNodes) if n.id == address), None)

    def _send(self, node, message) -> bool:
        transport = self._obj.peer_transport
        transport.cork()
        try:
            return transport.send(node, message)
        finally:
            transport.uncork()

    async def call(self, address: str, kind: str, payload, timeout: float):
        loop = self._loop
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.TIMEOUT
            node = self._node(address)
            if node is None:
                raise errors.MEMBER_NOT_FOUND
            call_id = next(self._ids)
            answer = self._waiting[call_id] = loop.create_future()
            try:
                if not self._send(node, {"type": CALL, "items": [(call_id, kind, payload)]}):
                    await asyncio.sleep(min(RETRY_PAUSE, remaining))
                    continue
                try:
                    return await asyncio.wait_for(answer, min(remaining, ATTEMPT_TIMEOUT))
                except asyncio.TimeoutError:
                    continue
            finally:
                self._waiting.pop(call_id, None)

    def receive(self, node, message) -> bool:
        """A peer message: True if it was one of these calls or answers."""
        kind = message.get("type")
        if kind == CALL:
            answers: list = []
            for call_id, call_kind, payload in message["items"]:
                self._run(node, call_id, call_kind, payload, answers)
            if answers:
                self._obj.peer_transport.send(node, {"type": ANSWER, "items": answers})
            return True
        if kind == ANSWER:
            for call_id, ok, value in message["items"]:
                answer = self._waiting.get(call_id)
                if answer is not None and not answer.done():
                    if ok:
                        answer.set_result(value)
                    else:
                        answer.set_exception(value)
            return True
        return False

    def _run(self, node, call_id: int, kind: str, payload, answers: list) -> None:
        handler = self._handlers.get(kind)
        try:
            if handler is None:
                raise errors.NOT_CAPABLE
            answer = handler(payload)
        except Exception as exc:  # noqa: BLE001 (every failure goes back to the caller)
            answers.append(_failure(call_id, exc))
            return
        if not inspect.isawaitable(answer):
            answers.append((call_id, True, answer))
            return

        def done(task: asyncio.Future) -> None:
            if task.cancelled():
                item = _failure(call_id, errors.STOPPED)
            elif task.exception() is not None:
                item = _failure(call_id, task.exception())
            else:
                item = (call_id, True, task.result())
            self._send(node, {"type": ANSWER, "items": [item]})

        asyncio.ensure_future(answer).add_done_callback(done)


def _failure(call_id: int, exc: BaseException) -> tuple:
    if not isinstance(exc, errors.EtcdError):
        log.error("peer call %d failed", call_id, exc_info=exc)
        exc = errors.EtcdError(errors.TIMEOUT.code, f"etcdlite: the peer call failed: {exc!r}")
    return call_id, False, exc
