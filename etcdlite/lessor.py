"""Lease clocks: the leader's.

Which leases exist is replicated state (`LeaseTable`); when each one expires
needs a clock, and only the leader's counts, as in etcd: a keep-alive
restarts the lease's countdown in the leader's memory, without a log entry
(a follower forwards it to the leader and answers with the leader's TTL:
`etcdlite.raft.leader_calls`), and TimeToLive is the leader's answer on any
member. An expired lease is revoked by the leader proposing
`Op.LEASE_EXPIRE`, so every member deletes the attached keys at the same
revision; a keep-alive of a lease whose time is up waits for that revoke
(the lease is then gone) or for the leader's demotion (it is then asked of
the new leader). A member that becomes leader restarts every countdown at
the lease's full TTL (as etcd 3.4 does on promotion without its
experimental lease checkpoints, off by default), so no lease expires early
because the leader changed, nor because keep-alives are not in the log.

Keep-alives applied from the log (`Op.LEASE_RENEW`: journals written before
keep-alives left it) still restart the countdown they name (`touched`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from typing import TYPE_CHECKING

from etcdlite import errors
from etcdlite.apply import Op, StateMachine
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.raft import NotLeader

if TYPE_CHECKING:
    from etcdlite.server.backend import Backend

log = logging.getLogger("etcdlite.lessor")

CHECK_INTERVAL = 0.1
# how long an expiry proposal may be in flight before it is tried again
RETRY_AFTER = 1.0
# how long a keep-alive or TimeToLive may wait for the leader's answer (etcd's request
# timeout: 5 s and two election timeouts)
CALL_TIMEOUT = 7.0
# how often the leader looks whether it applied what it had committed (`_caught_up`)
APPLY_POLL = 0.005


def _generation(machine: StateMachine) -> int:
    return machine.leases.generation


def _lease_facts(machine: StateMachine, query: tuple[int, bool]):
    """(granted TTL, sorted keys if asked for), or None for no such lease."""
    lease_id, with_keys = query
    lease = machine.leases.get(lease_id)
    if lease is None:
        return None
    return lease.ttl, sorted(lease.keys) if with_keys else []


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
        # leases whose expiry the leader proposed, until it is applied or the leader
        # steps down: keep-alives of them wait for it
        self._expiring: dict[int, asyncio.Future] = {}
        # lease IDs: the member's ID in the top bits, then a counter started
        # from the clock, so IDs stay unique across restarts and members
        self._ids = itertools.count((int(time.time() * 1000) & 0xFFFFFFFFFF) << 8 | os.getpid() & 0xFF)

    def next_id(self) -> int:
        prefix = (self.member.id >> 48) & 0x7FFF
        return (prefix << 48) | (next(self._ids) & 0xFFFFFFFFFFFF)

    def bind(self, calls) -> None:
        """Answer the leader's calls (a RaftNode's LeaderCalls)."""
        self._calls = calls
        calls.handle("lease_renew", self._renew_here)
        calls.handle("lease_ttl", self._ttl_here)

    async def renew(self, lease_id: int) -> int:
        """A keep-alive: the lease's TTL, as the leader restarted its
        countdown; raises LEASE_NOT_FOUND, or the EtcdError of a leader not
        reached in time."""
        return await self._calls.call("lease_renew", lease_id, CALL_TIMEOUT)

    async def time_to_live(self, lease_id: int, with_keys: bool):
        """(seconds left, granted TTL, sorted keys if asked for), as the
        leader has them; None for no such lease."""
        return await self._calls.call("lease_ttl", (lease_id, with_keys), CALL_TIMEOUT)

    def touched(self, lease_id: int, ttl: int) -> None:
        """A grant (or a keep-alive from an older log) of this lease was applied here."""
        self._deadlines[lease_id] = time.monotonic() + ttl

    # --- on the leader ----------------------------------------------------

    def _renew_here(self, lease_id: int):
        """The leader's keep-alive: the TTL now, or an awaitable of it when
        the lease may be unknown here yet, or its time is up."""
        if not self.member.raft.is_leader:
            raise NotLeader()
        self._sync()
        ttl = self._ttls.get(lease_id)
        if ttl is None:
            return self._renew_caught_up(lease_id)
        now = time.monotonic()
        if lease_id in self._expiring or self._deadlines.get(lease_id, now + 1) <= now:
            return self._wait_expiry(lease_id)
        self._deadlines[lease_id] = now + ttl
        return ttl

    async def _renew_caught_up(self, lease_id: int) -> int:
        """A lease granted through another member is known to the leader
        once it applied what it committed (as etcd's leader, which waits
        for its applies before a forwarded keep-alive)."""
        if not await self._caught_up():
            raise errors.LEASE_NOT_FOUND
        answer = self._renew_here(lease_id)
        return await answer if asyncio.iscoroutine(answer) else answer

    async def _wait_expiry(self, lease_id: int) -> int:
        """Answer a keep-alive of a lease whose time is up once its revoke
        is applied (not found) or the leader stepped down (asked again)."""
        expiring = self._start_expiry(lease_id)
        await asyncio.shield(expiring)
        if self.member.raft.is_leader:
            raise errors.LEASE_NOT_FOUND
        raise NotLeader()

    async def _ttl_here(self, query: tuple[int, bool]):
        if not self.member.raft.is_leader:
            raise NotLeader()
        await self._caught_up()
        facts = self.member.read(_lease_facts, query)
        if facts is None:
            return None
        granted, keys = facts
        return self.remaining(query[0], granted), granted, keys

    async def _caught_up(self) -> bool:
        """Wait until the leader applied every entry it had committed when
        called; False if it had already."""
        raft = self.member.raft
        target = raft.commit_index
        if raft.applied_index >= target:
            return False
        while raft.applied_index < target:
            if not raft.is_leader:
                raise NotLeader()
            await asyncio.sleep(APPLY_POLL)
        return True

    def _sync(self) -> None:
        """Bring the countdowns in line with the replicated lease table."""
        member = self.member
        leader = member.raft.is_leader
        now = time.monotonic()
        if leader and not self._was_leader:
            # promoted: every lease gets its full TTL again
            self._generation, self._ttls = member.read(_ttls)
            self._deadlines = {lease_id: now + ttl for lease_id, ttl in self._ttls.items()}
        elif self._was_leader and not leader:
            self._end_expiries(list(self._expiring))  # their keep-alives go to the new leader
        self._was_leader = leader
        if member.read(_generation) == self._generation:
            return
        self._generation, self._ttls = member.read(_ttls)
        for lease_id, ttl in self._ttls.items():
            if lease_id not in self._deadlines:
                self._deadlines[lease_id] = now + ttl
        for lease_id in [i for i in self._deadlines if i not in self._ttls]:
            del self._deadlines[lease_id]
        self._end_expiries([i for i in self._expiring if i not in self._ttls])

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
                if not self._was_leader:
                    continue
                now = time.monotonic()
                for lease_id, deadline in list(self._deadlines.items()):
                    if deadline <= now:
                        self._start_expiry(lease_id)
            except Exception:
                log.exception("lease expiry check failed")

    def _start_expiry(self, lease_id: int) -> asyncio.Future:
        """Propose the lease's expiry unless it is on its way (tried again
        after RETRY_AFTER); the future is done once it is applied or this
        member is no longer the leader."""
        loop = asyncio.get_running_loop()
        expiring = self._expiring.get(lease_id)
        if expiring is None:
            expiring = self._expiring[lease_id] = loop.create_future()
        now = time.monotonic()
        if self._deadlines.get(lease_id, 0) <= now:
            self._deadlines[lease_id] = now + RETRY_AFTER
            loop.create_task(self._expire(lease_id))
        return expiring

    def _end_expiries(self, lease_ids) -> None:
        for lease_id in lease_ids:
            expiring = self._expiring.pop(lease_id, None)
            if expiring is not None and not expiring.done():
                expiring.set_result(None)

    async def _expire(self, lease_id: int) -> None:
        try:
            await self.member.propose(Op.LEASE_EXPIRE, pb.LeaseRevokeRequest(ID=lease_id))
        except Exception as exc:
            log.warning("expiring lease %x failed (%s); will retry", lease_id, exc)
        else:
            self._end_expiries([lease_id])
