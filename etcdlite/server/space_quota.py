"""The space quota before Raft (etcd's quota KV and lease servers): a Put, a
Txn with puts or a LeaseGrant that would take the backend to this member's
quota is not proposed; this member's NOSPACE alarm is raised (replicated:
every member lists it and refuses such writes while it is active, see
StateMachine._space_check) and the request is answered NO_SPACE once it is.

The check reads the size the store keeps (StateMachine.backend_size): O(1)
per request, no walk of the store.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from etcdlite import errors
from etcdlite.alarms import NOSPACE
from etcdlite.apply import Op
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.quota import KV_OVERHEAD, UNLIMITED, admits

log = logging.getLogger("etcdlite")


class SpaceGuard:
    """One member's quota. `state`: its RaftNode.state (whose machine a
    snapshot replaces); `submit`: Backend.submit."""

    def __init__(self, member_id: int, limit: int, state, submit) -> None:
        self.member_id = member_id
        self.limit = limit
        self._state = state
        self._submit = submit
        # while this member's alarm is being raised: what to call once it is
        self._waiting: list[Callable[[], None]] | None = None

    def put_admitted(self, key: bytes, value: bytes) -> bool:
        """Whether a Put of `key` and `value` passes (the hot path: inlined)."""
        limit = self.limit
        return (limit == UNLIMITED
                or self._state.machine.backend_size() + KV_OVERHEAD + len(key) + len(value) < limit)

    def admits(self, cost: int) -> bool:
        """Whether a request adding `cost` bytes (etcdlite.quota) passes."""
        return admits(self.limit, self._state.machine.backend_size(), cost)

    def raise_alarm(self, then: Callable[[], None] | None = None) -> None:
        """Raise this member's NOSPACE alarm through Raft (unless it is
        raised already), then call `then` once it is applied here (or the
        proposal failed). Raises under way are joined, not repeated."""
        if self._waiting is not None:
            if then is not None:
                self._waiting.append(then)
            return
        if self._state.machine.alarms.has(self.member_id, NOSPACE):
            if then is not None:
                then()
            return
        self._waiting = [then] if then is not None else []
        request = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=self.member_id, alarm=NOSPACE)
        try:
            self._submit(Op.ALARM, request, self._raised)
        except errors.EtcdError as err:
            self._raised(None, err)

    def _raised(self, result, error) -> None:
        if error is None:
            log.warning("member %x: the backend reached its quota (%d bytes); alarm NOSPACE raised",
                        self.member_id, self.limit)
        else:
            log.warning("member %x: raising alarm NOSPACE failed: %s", self.member_id, error)
        waiting, self._waiting = self._waiting or [], None
        for then in waiting:
            then()

    async def refuse(self):
        """raise_alarm, then raise NO_SPACE (for the coroutine handlers)."""
        raised = asyncio.get_running_loop().create_future()
        self.raise_alarm(lambda: raised.done() or raised.set_result(None))
        await raised
        raise errors.NO_SPACE
