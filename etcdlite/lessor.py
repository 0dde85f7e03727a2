"""Lease clocks.

Which leases exist is replicated state (`LeaseTable`); when each one expires
needs a clock. Every member keeps a countdown per lease, restarted whenever a
grant or a keep-alive (`Op.LEASE_RENEW`) is applied, so any member can answer
TimeToLive; but only the leader acts on it: an expired lease is revoked by
proposing `Op.LEASE_EXPIRE`, so every member deletes the attached keys at the
same revision. A member that becomes leader restarts every countdown at the
lease's full TTL (as etcd does on promotion), so no lease expires early
because the leader changed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from typing import TYPE_CHECKING

from etcdlite.apply import Op, StateMachine
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

if TYPE_CHECKING:
    from etcdlite.server.backend import Backend

log = logging.getLogger("etcdlite.lessor")

CHECK_INTERVAL = 0.1
# how long an expiry proposal may be in flight before it is tried again
RETRY_AFTER = 1.0


def _generation(machine: StateMachine) -> int:
    return machine.leases.generation


def _ttls(machine: StateMachine) -> tuple[int, dict[int, int]]:
    """(the lease table's generation, lease ID -> granted TTL)."""
    leases = machine.leases
    return leases.generation, leases.ttls()


class Lessor:
    def __init__(self, member: Backend):
        self.member = member
        self._deadlines: dict[int, float] = {}
        self._ttls: dict[int, int] = {}
        self._generation = -1
        self._was_leader = False
        # lease IDs: the member's ID in the top bits, then a counter started
        # from the clock, so IDs stay unique across restarts and members
        self._ids = itertools.count((int(time.time() * 1000) & 0xFFFFFFFFFF) << 8 | os.getpid() & 0xFF)

    def next_id(self) -> int:
        prefix = (self.member.id >> 48) & 0x7FFF
        return (prefix << 48) | (next(self._ids) & 0xFFFFFFFFFFFF)

    def touched(self, lease_id: int, ttl: int) -> None:
        """A grant or keep-alive of this lease was applied here."""
        self._deadlines[lease_id] = time.monotonic() + ttl

    def _sync(self) -> None:
        """Bring the countdowns in line with the replicated lease table."""
        member = self.member
        leader = member.raft.is_leader
        now = time.monotonic()
        if leader and not self._was_leader:
            # promoted: every lease gets its full TTL again
            self._generation, self._ttls = member.read(_ttls)
            self._deadlines = {lease_id: now + ttl for lease_id, ttl in self._ttls.items()}
        self._was_leader = leader
        if member.read(_generation) == self._generation:
            return
        self._generation, self._ttls = member.read(_ttls)
        for lease_id, ttl in self._ttls.items():
            if lease_id not in self._deadlines:
                self._deadlines[lease_id] = now + ttl
        for lease_id in [i for i in self._deadlines if i not in self._ttls]:
            del self._deadlines[lease_id]

    def remaining(self, lease_id: int, granted_ttl: int) -> int:
        self._sync()
        deadline = self._deadlines.get(lease_id)
        if deadline is None:
            return granted_ttl
        return max(0, math.floor(deadline - time.monotonic()))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            try:
                self._sync()
                if not self._was_leader:
                    continue
                now = time.monotonic()
                for lease_id, deadline in list(self._deadlines.items()):
                    if deadline <= now:
                        self._deadlines[lease_id] = now + RETRY_AFTER
                        loop.create_task(self._expire(lease_id))
            except Exception:
                log.exception("lease expiry check failed")

    async def _expire(self, lease_id: int) -> None:
        try:
            await self.member.propose(Op.LEASE_EXPIRE, pb.LeaseRevokeRequest(ID=lease_id))
        except Exception as exc:
            log.warning("expiring lease %x failed (%s); will retry", lease_id, exc)
