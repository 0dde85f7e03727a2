"""The leader's lease clock.

Which leases exist is replicated state (`LeaseTable`); when each one expires
is decided here, on the leader only, from its monotonic clock. An expired
lease is revoked by proposing `Op.LEASE_EXPIRE`, so every member deletes the
attached keys at the same revision. A member that becomes leader starts
every lease's countdown afresh at its full TTL (as etcd does on promotion),
so no lease expires early because the leader changed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time

from etcdlite.apply import Op
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger("etcdlite.lessor")

CHECK_INTERVAL = 0.1
# how long an expiry proposal may be in flight before it is tried again
RETRY_AFTER = 1.0


class Lessor:
    def __init__(self, member):
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

    def _sync(self) -> None:
        """Bring the deadlines in line with the replicated lease table."""
        raft = self.member.raft
        leader = raft.is_leader
        if not leader:
            self._deadlines.clear()
            self._was_leader = False
            return
        if not self._was_leader:
            self._was_leader = True
            self._deadlines.clear()
            self._generation = -1
        table = raft.machine.leases
        if table.generation == self._generation:
            return
        with raft.lock:
            self._generation = table.generation
            self._ttls = table.ttls()
        now = time.monotonic()
        for lease_id, ttl in self._ttls.items():
            if lease_id not in self._deadlines:
                self._deadlines[lease_id] = now + ttl
        for lease_id in [i for i in self._deadlines if i not in self._ttls]:
            del self._deadlines[lease_id]

    def granted(self, lease_id: int, ttl: int) -> None:
        if self.member.raft.is_leader:
            self._deadlines[lease_id] = time.monotonic() + ttl

    def renew(self, lease_id: int) -> int:
        """KeepAlive: restart the lease's countdown; its TTL, 0 if it is gone."""
        self._sync()
        ttl = self._ttls.get(lease_id)
        if ttl is None or lease_id not in self._deadlines:
            return 0
        self._deadlines[lease_id] = time.monotonic() + ttl
        return ttl

    def remaining(self, lease_id: int, granted_ttl: int) -> int:
        self._sync()
        deadline = self._deadlines.get(lease_id)
        if deadline is None:
            return granted_ttl
        return max(0, math.floor(deadline - time.monotonic()))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            try:
                self._sync()
                now = time.monotonic()
                for lease_id, deadline in list(self._deadlines.items()):
                    if deadline <= now:
                        self._deadlines[lease_id] = now + RETRY_AFTER
                        self.member.loop.create_task(self._expire(lease_id))
            except Exception:
                log.exception("lease expiry check failed")

    async def _expire(self, lease_id: int) -> None:
        try:
            await self.member.propose(Op.LEASE_EXPIRE, pb.LeaseRevokeRequest(ID=lease_id))
        except Exception as exc:
            log.warning("expiring lease %x failed (%s); will retry", lease_id, exc)
