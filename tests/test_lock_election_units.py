"""Lock and Election's parts without processes.

KeyWatch (etcdlite.server.concurrency), what a waiting Lock, Campaign or
Observe call holds in the member's watch hub: it gets the events after the
read it was made with and none before, holds a bounded number of them, and
leaves the hub when the call ends, or when a snapshot resets the hub.
Election.Observe over a bare MVCC store: every proclamation in order, and the
newest one to a reader that fell behind."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from etcdlite.mvcc import DELETE, PUT, Event, KeyValue, MVCCStore
from etcdlite.pb.v3electionpb import v3election_pb2 as epb
from etcdlite.server.concurrency import MAX_PENDING_BYTES, MAX_PENDING_EVENTS, KeyWatch, Resync, prefix_end
from etcdlite.server.election import ElectionService
from etcdlite.watch_hub import WatchHub


def put(key: bytes, revision: int, value: bytes = b"v") -> Event:
    return Event(PUT, KeyValue(key, revision, revision, 1, value, 0), None, 0)


def delete(key: bytes, revision: int) -> Event:
    return Event(DELETE, KeyValue(key, 0, revision, 0, b"", 0), None, 0)


def member(revision: int = 10):
    return SimpleNamespace(hub=WatchHub(revision))


def run(coro):
    return asyncio.run(coro)


def test_events_from_the_start_revision_on_and_only_in_its_range():
    m = member()

    async def main():
        with KeyWatch(m, b"n/", b"n0", 12) as watch:
            m.hub.publish([put(b"n/a", 11)], 11)  # at the read's revision or before: seen already
            m.hub.publish([put(b"other", 12)], 12)
            m.hub.publish([put(b"n/a", 13, b"x"), delete(b"n/b", 13)], 13)
            events = await watch.next()
        assert [(rev, ev.type, ev.kv.key) for rev, ev in events] == [(13, PUT, b"n/a"), (13, DELETE, b"n/b")]
        assert events[0][1].kv.value == b"x"
        assert len(m.hub) == 0

    run(main())


def test_a_waiting_call_is_woken_by_the_event_and_deletes_only_skips_puts():
    m = member()

    async def main():
        with KeyWatch(m, b"k", b"", 11, deletes_only=True) as watch:
            waiting = asyncio.ensure_future(watch.next())
            await asyncio.sleep(0)
            m.hub.publish([put(b"k", 11)], 11)
            await asyncio.sleep(0)
            assert not waiting.done()
            m.hub.publish([delete(b"k", 12)], 12)
            assert [(rev, ev.type) for rev, ev in await waiting] == [(12, DELETE)]

    run(main())


def test_a_call_that_reads_too_slowly_holds_a_bounded_number_of_events_then_reads_again():
    m = member()

    async def main():
        with KeyWatch(m, b"n/", b"n0", 11) as watch:
            for rev in range(11, 11 + MAX_PENDING_EVENTS + 1):
                m.hub.publish([put(b"n/a", rev)], rev)
            assert len(watch.pending) == 0  # dropped, not grown
            with pytest.raises(Resync):
                await watch.next()
            m.hub.publish([put(b"n/a", 1000)], 1000)
            assert [rev for rev, _ in await watch.next()] == [1000]

    run(main())


def test_a_snapshot_reset_takes_it_out_of_the_hub_and_the_call_reads_again():
    m = member()

    async def main():
        watch = KeyWatch(m, b"k", b"", 11)
        m.hub.reset(50)
        assert len(m.hub) == 0
        with pytest.raises(Resync):
            await watch.next()
        watch.close()  # twice is harmless

    run(main())


def test_a_cancelled_wait_leaves_nothing_behind():
    m = member()

    async def main():
        async def call():
            with KeyWatch(m, b"k", b"", 11) as watch:
                await watch.next()

        task = asyncio.ensure_future(call())
        await asyncio.sleep(0)
        assert len(m.hub) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(m.hub) == 0

    run(main())


@pytest.mark.parametrize("prefix, end", [
    (b"lock/", b"lock0"),
    (b"a\xff/", b"a\xff0"),
    (b"a\xff", b"b"),
    (b"\xff\xff", b"\x00"),
])
def test_prefix_end(prefix, end):
    assert prefix_end(prefix) == end


def test_the_bytes_held_are_bounded_too():
    m = member()

    async def main():
        with KeyWatch(m, b"k", b"", 11) as watch:
            m.hub.publish([put(b"k", 11, b"x" * (MAX_PENDING_BYTES // 2))], 11)
            m.hub.publish([put(b"k", 12, b"x" * (MAX_PENDING_BYTES // 2))], 12)
            assert watch.pending_bytes == 0
            with pytest.raises(Resync):
                await watch.next()

    run(main())


class StoreMember:
    """What the Election service reads of its member, over a bare MVCC store
    whose writes reach the hub at once."""

    def __init__(self):
        self.machine = SimpleNamespace(kv=MVCCStore())
        self.hub = WatchHub(self.machine.kv.current_revision)
        self.auth = SimpleNamespace(check_read=self._nothing)

    async def _nothing(self, *args) -> None:
        pass

    async def read_barrier(self, serializable: bool = False) -> None:
        pass

    def read(self, query, *arg):
        return query(self.machine, *arg)

    def header(self, h, revision=None) -> None:
        if revision is not None:
            h.revision = revision

    def put(self, key: bytes, value: bytes) -> int:
        kv, _, events = self.machine.kv.put(key, value)
        self.hub.publish(events, kv.mod_revision)
        return kv.mod_revision

    def delete(self, key: bytes) -> None:
        _, events = self.machine.kv.delete_range(key)
        self.hub.publish(events, self.machine.kv.current_revision)


def test_observe_follows_leaders_and_gives_a_reader_that_fell_behind_the_newest_value():
    m = StoreMember()
    observe = ElectionService(m).Observe(epb.LeaderRequest(name=b"e"), None)

    async def value():
        resp = await observe.__anext__()
        return resp.kv.key, resp.kv.value, resp.header.revision

    async def main():
        first = m.put(b"e/1", b"v0")
        assert await value() == (b"e/1", b"v0", first)
        revs = [m.put(b"e/1", b"v%d" % n) for n in (1, 2)]  # not read at once: each is sent, in order
        assert [await value(), await value()] == [(b"e/1", b"v1", revs[0]), (b"e/1", b"v2", revs[1])]

        for n in range(3, 3 + MAX_PENDING_EVENTS + 1):  # more than are kept for it
            last = m.put(b"e/1", b"v%d" % n)
        m.put(b"e/2", b"second")
        assert await value() == (b"e/1", b"v%d" % n, last + 1)  # the newest, read again
        after = m.put(b"e/1", b"after")
        assert await value() == (b"e/1", b"after", after)

        m.delete(b"e/1")
        assert (await value())[:2] == (b"e/2", b"second")
        m.delete(b"e/2")
        waiting = asyncio.ensure_future(value())
        await asyncio.sleep(0)
        assert not waiting.done()  # no leader: the first candidate's put
        third = m.put(b"e/3", b"third")
        assert await waiting == (b"e/3", b"third", third)
        await observe.aclose()
        assert len(m.hub) == 0

    run(main())
