"""The leader's lease clock (etcdlite.lessor) on a fake member: keep-alives
renew in memory, a keep-alive of a lease whose time is up waits for the
revoke (or for the leader's demotion), a promoted leader gives every lease
its full TTL."""

from __future__ import annotations

import asyncio

import pytest

from etcdlite import errors
from etcdlite.apply import Op, StateMachine
from etcdlite.lessor import Lessor
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.raft import NotLeader


class FakeRaft:
    is_leader = True
    commit_index = applied_index = 10


class FakeMember:
    id = 0x1234 << 48

    def __init__(self):
        self.raft = FakeRaft()
        self.machine = StateMachine()
        self.expiries: list[asyncio.Future] = []

    def read(self, query, *arg):
        return query(self.machine, *arg)

    def grant(self, lease_id: int, ttl: int) -> None:
        self.machine.apply_batch([(Op.LEASE_GRANT, pb.LeaseGrantRequest(ID=lease_id, TTL=ttl).SerializeToString())])

    async def propose(self, op, request):
        assert op == Op.LEASE_EXPIRE
        done = asyncio.get_running_loop().create_future()
        self.expiries.append(done)
        await done  # the test decides: applied (the lease removed) or failed
        self.machine.apply_batch([(op, request.SerializeToString())])


async def _answer(value):
    return await value if asyncio.iscoroutine(value) else value


def test_a_keep_alive_restarts_the_countdown_in_memory():
    async def main():
        member = FakeMember()
        lessor = Lessor(member)
        member.grant(7, 5)
        assert lessor._renew_here(7) == 5
        assert lessor.remaining(7, 5) in (4, 5)
        with pytest.raises(errors.EtcdError) as raised:
            await _answer(lessor._renew_here(8))
        assert raised.value == errors.LEASE_NOT_FOUND
        member.raft.is_leader = False
        with pytest.raises(NotLeader):
            lessor._renew_here(7)

    asyncio.run(main())


def test_a_keep_alive_after_the_deadline_waits_for_the_revoke():
    async def main():
        member = FakeMember()
        lessor = Lessor(member)
        member.grant(7, 5)
        lessor._sync()
        lessor._deadlines[7] = 0.0  # its time is up
        waiting = asyncio.ensure_future(_answer(lessor._renew_here(7)))
        await asyncio.sleep(0.01)
        assert not waiting.done() and len(member.expiries) == 1, "the expiry is proposed, the keep-alive waits"
        member.expiries[0].set_result(None)  # applied: the lease is gone
        with pytest.raises(errors.EtcdError) as raised:
            await asyncio.wait_for(waiting, 1)
        assert raised.value == errors.LEASE_NOT_FOUND

    asyncio.run(main())


def test_a_deposed_leaders_waiting_keep_alive_is_asked_of_the_next_which_gives_the_full_ttl():
    async def main():
        member = FakeMember()
        old = Lessor(member)
        member.grant(7, 5)
        old._sync()
        old._deadlines[7] = 0.0
        waiting = asyncio.ensure_future(_answer(old._renew_here(7)))
        await asyncio.sleep(0.01)
        member.raft.is_leader = False
        old._sync()  # the expiry loop's next look
        with pytest.raises(NotLeader):
            await asyncio.wait_for(waiting, 1)
        # the member that leads next, on the same replicated state (the expiry never applied)
        new = Lessor(member)
        member.raft.is_leader = True
        assert new._renew_here(7) == 5
        assert new.remaining(7, 5) in (4, 5)

    asyncio.run(main())


def test_time_to_live_waits_for_the_leader_to_apply_what_it_committed():
    async def main():
        member = FakeMember()
        lessor = Lessor(member)
        member.raft.commit_index = 11  # the grant is committed, not applied yet
        asking = asyncio.ensure_future(lessor._ttl_here((7, True)))
        await asyncio.sleep(0.02)
        assert not asking.done()
        member.grant(7, 30)
        member.machine.leases.attach(7, b"k")
        member.raft.applied_index = 11
        remaining, granted, keys = await asyncio.wait_for(asking, 1)
        assert (granted, keys) == (30, [b"k"]) and remaining in (29, 30)

    asyncio.run(main())
