"""LeaderCalls (etcdlite.raft.leader_calls) between fake members in one event
loop: where a call runs, how it travels, and how it ends when the leader is
missing, silent, refusing or replaced."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from etcdlite import errors
from etcdlite.raft.leader_calls import CALL, LeaderCalls, NotLeader


class FakeTransport:
    def __init__(self, net, me):
        self.net, self.me = net, me

    def cork(self):
        pass

    def uncork(self):
        pass

    def send(self, node, message):
        if node in self.net.down or self.me in self.net.down:
            return False
        self.net.sent.append((self.me, node, message["type"], len(message["items"])))
        if node in self.net.deaf:
            return True
        message = pickle.loads(pickle.dumps(message))  # as a peer message travels
        self.net.loop.call_soon(self.net.members[node].calls.receive, self.me, message)
        return True


class FakeObj:
    def __init__(self, net, me):
        self.net, self.me = net, me
        self.peer_transport = FakeTransport(net, me)

    def _isLeader(self):
        return self.net.leader == self.me

    def _getLeader(self):
        return self.net.leader

    def isNodeConnected(self, node):
        return node not in self.net.down


class FakeMember:
    def __init__(self, net, name):
        self.obj = FakeObj(net, name)
        self.calls = LeaderCalls(net.loop, self.obj)
        self.renewed: list[int] = []
        self.calls.handle("renew", self.renew)

    def renew(self, lease_id):
        if not self.obj._isLeader():
            raise NotLeader()
        if lease_id == 404:
            raise errors.LEASE_NOT_FOUND
        self.renewed.append(lease_id)
        return 60


class Net:
    def __init__(self, loop, names=("a", "b", "c"), leader="a"):
        self.loop = loop
        self.leader = leader
        self.down: set[str] = set()
        self.deaf: set[str] = set()
        self.sent: list = []
        self.members = {n: FakeMember(self, n) for n in names}


def run(coro):
    return asyncio.run(coro)


def test_the_leader_answers_itself_and_a_follower_forwards_in_one_message_per_turn():
    async def main():
        net = Net(asyncio.get_running_loop())
        assert await net.members["a"].calls.call("renew", 1, 1.0) == 60
        assert net.sent == []
        got = await asyncio.gather(*(net.members["b"].calls.call("renew", i, 1.0) for i in (2, 3, 4)))
        assert got == [60, 60, 60]
        assert net.sent == [("b", "a", CALL, 3), ("a", "b", "etcdlite_leader_answer", 3)]
        assert net.members["a"].renewed == [1, 2, 3, 4]

    run(main())


def test_an_etcd_error_comes_back_as_it_was_raised():
    async def main():
        net = Net(asyncio.get_running_loop())
        with pytest.raises(errors.EtcdError) as raised:
            await net.members["c"].calls.call("renew", 404, 1.0)
        assert raised.value == errors.LEASE_NOT_FOUND

    run(main())


def test_no_leader_until_the_deadline_is_etcds_no_leader():
    async def main():
        net = Net(asyncio.get_running_loop(), leader=None)
        with pytest.raises(errors.EtcdError) as raised:
            await net.members["b"].calls.call("renew", 1, 0.3)
        assert raised.value == errors.NO_LEADER

    run(main())


def test_a_leader_that_never_answers_is_a_timeout():
    async def main():
        net = Net(asyncio.get_running_loop())
        net.deaf.add("a")
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(errors.EtcdError) as raised:
            await net.members["b"].calls.call("renew", 1, 0.5)
        assert raised.value == errors.TIMEOUT
        assert loop.time() - start < 0.7
        assert not net.members["b"].calls._waiting

    run(main())


def test_a_call_goes_to_the_new_leader_when_the_old_one_is_lost():
    async def main():
        loop = asyncio.get_running_loop()
        net = Net(loop)
        net.deaf.add("a")  # the leader took the call and died
        call = loop.create_task(net.members["b"].calls.call("renew", 7, 5.0))
        await asyncio.sleep(0.1)
        net.down.add("a")
        net.leader = "c"
        assert await asyncio.wait_for(call, 1.0) == 60
        assert net.members["c"].renewed == [7]

    run(main())


def test_a_deposed_leader_refuses_and_the_call_is_asked_again():
    async def main():
        loop = asyncio.get_running_loop()
        net = Net(loop)
        # b believes a leads, but a stepped down and c leads: a refuses with NotLeader
        net.leader = "c"
        net.members["b"].obj._getLeader = lambda: "a" if not any(s[1] == "a" for s in net.sent) else "c"
        assert await asyncio.wait_for(net.members["b"].calls.call("renew", 9, 5.0), 1.0) == 60
        assert [s[:2] for s in net.sent if s[2] == CALL] == [("b", "a"), ("b", "c")]
        assert net.members["c"].renewed == [9]

    run(main())
