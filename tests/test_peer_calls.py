"""PeerCalls (etcdlite.raft.peer_calls) between fake members in one event
loop: a call runs on the peer it names, its answer or error comes back, and
a peer that is not connected, or does not answer, is waited for and asked
again until the deadline."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from etcdlite import errors
from etcdlite.raft import peer_calls
from etcdlite.raft.peer_calls import PeerCalls


class Node(str):
    @property
    def id(self) -> str:
        return str(self)


class FakeTransport:
    def __init__(self, net, me):
        self.net, self.me = net, me

    def cork(self):
        pass

    def uncork(self):
        pass

    def send(self, node, message):
        if node in self.net.down:
            return False
        self.net.sent.append((self.me, node, message["type"]))
        if node in self.net.deaf:
            return True
        message = pickle.loads(pickle.dumps(message))  # as a peer message travels
        self.net.loop.call_soon(self.net.members[node].calls.receive, Node(self.me), message)
        return True


class FakeObj:
    def __init__(self, net, me):
        self.peer_transport = FakeTransport(net, me)
        self._SyncObj__otherNodes = [Node(n) for n in net.names if n != me]


class FakeMember:
    def __init__(self, net, name):
        self.calls = PeerCalls(net.loop, FakeObj(net, name))
        self.calls.handle("whoami", lambda payload: (name, payload))
        self.calls.handle("later", self.later)
        self.calls.handle("refuse", self.refuse)

    async def later(self, payload):
        await asyncio.sleep(0.01)
        return payload * 2

    def refuse(self, payload):
        raise errors.FUTURE_REV


class Net:
    def __init__(self, loop, names=("a", "b", "c")):
        self.loop = loop
        self.names = names
        self.down: set[str] = set()
        self.deaf: set[str] = set()
        self.sent: list = []
        self.members = {n: FakeMember(self, n) for n in names}


def test_a_call_runs_on_the_peer_it_names_and_its_answer_or_error_comes_back():
    async def main():
        net = Net(asyncio.get_running_loop())
        calls = net.members["a"].calls
        assert await calls.call("c", "whoami", 7, 1.0) == ("c", 7)
        assert await calls.call("b", "later", 21, 1.0) == 42
        with pytest.raises(errors.EtcdError) as refused:
            await calls.call("b", "refuse", None, 1.0)
        assert refused.value == errors.FUTURE_REV
        with pytest.raises(errors.EtcdError) as unknown:
            await calls.call("b", "nothing", None, 1.0)
        assert unknown.value == errors.NOT_CAPABLE
        with pytest.raises(errors.EtcdError) as stranger:
            await calls.call("z", "whoami", None, 1.0)
        assert stranger.value == errors.MEMBER_NOT_FOUND

    asyncio.run(main())


def test_a_peer_not_connected_or_silent_is_waited_for_until_the_deadline(monkeypatch):
    monkeypatch.setattr(peer_calls, "ATTEMPT_TIMEOUT", 0.1)

    async def main():
        loop = asyncio.get_running_loop()
        net = Net(loop)
        calls = net.members["a"].calls
        net.down.add("b")
        loop.call_later(0.2, net.down.discard, "b")
        assert await calls.call("b", "whoami", 1, 2.0) == ("b", 1)
        net.deaf.add("c")
        loop.call_later(0.25, net.deaf.discard, "c")
        assert await calls.call("c", "whoami", 2, 2.0) == ("c", 2)
        assert sum(1 for _, to, kind in net.sent if to == "c" and kind == peer_calls.CALL) >= 3
        net.down.add("b")
        started = loop.time()
        with pytest.raises(errors.EtcdError) as late:
            await calls.call("b", "whoami", 3, 0.3)
        assert late.value == errors.TIMEOUT and 0.3 <= loop.time() - started < 2.0

    asyncio.run(main())
