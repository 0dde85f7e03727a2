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
import logging

from etcdlite import errors
from etcdlite.raft.call_messages import CallMessages

log = logging.getLogger("etcdlite.raft")

CALL = "etcdlite_peer_call"
ANSWER = "etcdlite_peer_answer"
# an answer not come after this is asked for again
ATTEMPT_TIMEOUT = 1.0
# between tries while the peer is not connected
RETRY_PAUSE = 0.05


class PeerCalls(CallMessages):
    """`obj`: the LoopSyncObj (its nodes, its transport); `receive` is
    given every peer message (LoopSyncObj)."""

    CALL = CALL
    ANSWER = ANSWER

    def __init__(self, loop: asyncio.AbstractEventLoop, obj) -> None:
        super().__init__(loop, obj)
        self._waiting: dict[int, asyncio.Future] = {}

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

    # --- CallMessages --------------------------------------------------------

    def _awaited(self, call_id: int) -> asyncio.Future | None:
        return self._waiting.get(call_id)

    def _start(self, handler, payload):
        if handler is None:
            raise errors.NOT_CAPABLE
        return handler(payload)

    def _failure(self, call_id: int, exc: BaseException) -> tuple:
        if not isinstance(exc, errors.EtcdError):
            log.error("peer call %d failed", call_id, exc_info=exc)
            exc = errors.EtcdError(errors.TIMEOUT.code, f"etcdlite: the peer call failed: {exc!r}")
        return call_id, False, exc

    def _cancelled(self) -> BaseException:
        return errors.STOPPED

    def _send_answer(self, node, item: tuple) -> None:
        self._send(node, {"type": ANSWER, "items": [item]})

