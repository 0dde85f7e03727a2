"""The watch cache against real etcd members (etcdlite and etcd 3.4).

Objects are written straight through the etcd KV API, encoded the way the
storage layer does (resourceVersion cleared, a prefix in front), so the cache
is seen to rely on its decode callable only. Every test uses a resource name
of its own, so tests sharing a member do not see each other's keys.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os

from harness import procs
import pytest
from harness.faultproxy import FaultProxy

from apiserver.errors import ApiError
from apiserver.etcd3 import Etcd, pb
from apiserver.pb import core_pb2
from apiserver.resources import BY_NAME, Resource
from apiserver.watch_cache import WatchCache
from apiserver.watch_events import ADDED, BOOKMARK, DELETED, MODIFIED

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

KINDS = ("etcdlite", "etcd")
MAGIC = b"\x00test-encoding\x01"
_names = itertools.count()


def new_resource() -> Resource:
    return dataclasses.replace(BY_NAME["pods"], name=f"wcpods{os.getpid()}x{next(_names)}")


def encode(pod: core_pb2.Pod) -> bytes:
    stored = core_pb2.Pod()
    stored.CopyFrom(pod)
    stored.metadata.resource_version = ""
    return MAGIC + stored.SerializeToString()


def decode(resource: Resource, key: bytes, value: bytes, mod_revision: int):
    assert value.startswith(MAGIC), (key, value[:20])
    msg = resource.message()
    msg.ParseFromString(value[len(MAGIC):])
    msg.metadata.resource_version = str(mod_revision)
    return msg


def pod(ns: str, name: str, labels: dict | None = None, node: str = "") -> core_pb2.Pod:
    p = core_pb2.Pod()
    p.metadata.namespace, p.metadata.name = ns, name
    p.metadata.labels.update(labels or {})
    p.spec.node_name = node
    return p


def start_member(kind: str, registry: procs.Registry, tmp_path, name: str) -> procs.Member:
    if kind == "etcd":
        return registry.start_real_etcd(tmp_path, name=name)
    return registry.start_etcdlite(tmp_path, name=name)


@pytest.fixture(scope="module", params=KINDS)
def member(request, tmp_path_factory):
    reg = procs.Registry()
    try:
        yield start_member(request.param, reg, tmp_path_factory.mktemp(f"wc-{request.param}"), "wc")
    finally:
        reg.cleanup()


def run(coro):
    return asyncio.run(coro)


class Writer:
    """Writes pods of one resource and keeps the expected event history."""

    def __init__(self, etcd: Etcd, res: Resource) -> None:
        self.etcd, self.res = etcd, res
        self.live: dict[tuple[str, str], core_pb2.Pod] = {}
        self.history: list[tuple[int, str, str, str]] = []  # (revision, type, ns, name)
        self.states: list[core_pb2.Pod] = []  # each event's object (DELETED: the last state)

    async def put(self, p: core_pb2.Pod) -> int:
        key = self.res.key(p.metadata.namespace, p.metadata.name).encode()
        resp = await self.etcd.kv.Put(pb.PutRequest(key=key, value=encode(p)),
                                      timeout=10, wait_for_ready=True)
        self._record(resp.header.revision, p)
        return resp.header.revision

    async def put_many(self, pods: list[core_pb2.Pod]) -> int:
        """Several pods in one Txn: one revision."""
        ops = [pb.RequestOp(request_put=pb.PutRequest(
            key=self.res.key(p.metadata.namespace, p.metadata.name).encode(), value=encode(p)))
            for p in pods]
        resp = await self.etcd.kv.Txn(pb.TxnRequest(success=ops), timeout=10, wait_for_ready=True)
        for p in pods:
            self._record(resp.header.revision, p)
        return resp.header.revision

    def _record(self, rev: int, p: core_pb2.Pod) -> None:
        ident = (p.metadata.namespace, p.metadata.name)
        kind = MODIFIED if ident in self.live else ADDED
        self.live[ident] = p
        self.history.append((rev, kind, *ident))
        self.states.append(p)

    async def delete(self, ns: str, name: str) -> int:
        key = self.res.key(ns, name).encode()
        resp = await self.etcd.kv.DeleteRange(pb.DeleteRangeRequest(key=key),
                                              timeout=10, wait_for_ready=True)
        assert resp.deleted == 1
        self.states.append(self.live.pop((ns, name)))
        self.history.append((resp.header.revision, DELETED, ns, name))
        return resp.header.revision

    def after(self, revision: int, ns: str = "") -> list[tuple[int, str, str, str]]:
        return [h for h in self.history if h[0] > revision and (not ns or h[2] == ns)]


async def other_write(etcd: Etcd, n: int = 1) -> int:
    """Writes outside every watched prefix: the revision moves, no event."""
    rev = 0
    for i in range(n):
        resp = await etcd.kv.Put(pb.PutRequest(key=b"/elsewhere/x", value=b"%d" % i),
                                 timeout=10, wait_for_ready=True)
        rev = resp.header.revision
    return rev


def seen(event) -> tuple[int, str, str, str]:
    kind, obj = event
    return int(obj.metadata.resource_version), kind, obj.metadata.namespace, obj.metadata.name


async def take(w, n: int, timeout: float = 15.0, skip_bookmarks: bool = True) -> list:
    out = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            ev = await anext(w)
            if skip_bookmarks and ev[0] == BOOKMARK:
                continue
            out.append(ev)
    return out


async def nothing_within(w, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            while True:
                ev = await anext(w)
                if ev[0] != BOOKMARK:
                    raise AssertionError(f"unexpected event {ev[0]} {ev[1]}")
    except TimeoutError:
        return True


async def expect_error(w, reason: str, timeout: float = 15.0) -> ApiError:
    async with asyncio.timeout(timeout):
        with pytest.raises(ApiError) as info:
            while True:
                await anext(w)
    assert info.value.reason == reason, info.value
    return info.value


class CountingWatch:
    """The etcd Watch stub, counting the streams opened through it."""

    def __init__(self, stub) -> None:
        self.stub, self.opened = stub, 0

    def Watch(self, *args, **kw):
        self.opened += 1
        return self.stub.Watch(*args, **kw)


async def started(etcd: Etcd, res: Resource, **kw) -> WatchCache:
    cache = WatchCache(etcd, res, decode, **kw)
    await cache.start()
    return cache


# ---- replay and order ----------------------------------------------------------


def test_a_watch_from_every_revision_sees_exactly_the_later_changes(member):
    async def body():
        etcd = Etcd(member.endpoint)
        res = new_resource()
        w = Writer(etcd, res)
        await w.put(pod("a", "p0"))
        await w.put(pod("b", "p0"))
        cache = await started(etcd, res)
        base = cache.revision
        assert base >= w.history[-1][0]
        # the current objects, as ADDED, in key order, with their revisions
        first = await take(cache.watch(), 2)
        assert [seen(e) for e in first] == [(r, ADDED, ns, n) for r, _, ns, n in w.history]
        live = cache.watch(resource_version=base)
        live_ns = cache.watch(resource_version=base, namespace="b")

        for i in range(6):
            await w.put(pod("a", f"p{i % 3}", node=f"n{i}"))
            await w.put(pod("b", f"p{i % 2}", node=f"n{i}"))
            await other_write(etcd)
            if i % 2:
                await w.delete("a", f"p{i % 3}")
        await w.put_many([pod("a", "t1"), pod("b", "t1"), pod("b", "t2")])
        await w.delete("b", "t2")
        last = w.history[-1][0]

        expected = w.after(base)
        assert [seen(e) for e in await take(live, len(expected))] == expected
        assert [seen(e) for e in await take(live_ns, len(w.after(base, "b")))] == w.after(base, "b")
        await cache.wait_fresh(last)
        for rev in range(base, last + 1):
            got = await take(cache.watch(resource_version=rev), len(w.after(rev)))
            assert [seen(e) for e in got] == w.after(rev), rev
        # objects carry the new state; DELETED the last state at the deletion's revision
        replay = await take(cache.watch(resource_version=base), len(expected))
        states = w.states[len(w.history) - len(expected):]
        assert [obj.spec.node_name for _, obj in replay] == [p.spec.node_name for p in states]
        assert any(kind == DELETED and obj.spec.node_name for kind, obj in replay)
        # the cache's objects = etcd's, and list serves them
        items, rev = cache.list()
        assert rev == cache.revision
        assert [(o.metadata.namespace, o.metadata.name) for o in items] == sorted(w.live)
        items, _ = cache.list("b", lambda o: o.metadata.name == "t1")
        assert [(o.metadata.namespace, o.metadata.name) for o in items] == [("b", "t1")]
        assert await nothing_within(live, 0.3)
        await cache.stop()
        await etcd.close()

    run(body())


def test_a_hundred_watchers_cost_one_etcd_watch(member):
    async def body():
        etcd = Etcd(member.endpoint)
        counting = CountingWatch(etcd.watch)
        etcd.watch = counting
        res = new_resource()
        cache = await started(etcd, res)
        w = Writer(etcd, res)
        base = cache.revision
        watchers = [cache.watch(resource_version=base, namespace=("", "a", "b")[i % 3]) for i in range(100)]
        for i in range(20):
            await w.put(pod("ab"[i % 2], f"p{i % 7}", node=f"n{i}"))
        for i, watcher in enumerate(watchers):
            ns = ("", "a", "b")[i % 3]
            got = await take(watcher, len(w.after(base, ns)))
            assert [seen(e) for e in got] == w.after(base, ns)
        assert counting.opened == 1 and cache.watch_streams_opened == 1
        assert cache.watcher_count == 100
        for watcher in watchers:
            await watcher.aclose()
        assert cache.watcher_count == 0
        await cache.stop()
        await etcd.close()

    run(body())


def test_predicate_transitions_are_added_and_deleted(member):
    async def body():
        etcd = Etcd(member.endpoint)
        res = new_resource()
        w = Writer(etcd, res)
        await w.put(pod("ns", "before", {"app": "web"}))
        await w.put(pod("ns", "other", {"app": "db"}))
        cache = await started(etcd, res)
        web = cache.watch(predicate=lambda p: p.metadata.labels.get("app") == "web")
        assert [(k, o.metadata.name) for k, o in await take(web, 1)] == [(ADDED, "before")]

        await w.put(pod("ns", "a", {"app": "web"}))           # new, matches: ADDED
        await w.put(pod("ns", "b", {"app": "db"}))            # new, no match: nothing
        await w.put(pod("ns", "b", {"app": "web"}))           # starts matching: ADDED
        await w.put(pod("ns", "a", {"app": "db"}))            # stops matching: DELETED, new state
        await w.put(pod("ns", "a", {"app": "db", "x": "1"}))  # still no match: nothing
        await w.put(pod("ns", "b", {"app": "web", "v": "2"}))  # still matches: MODIFIED
        await w.delete("ns", "a")                             # gone while not matching: nothing
        await w.delete("ns", "b")                             # gone while matching: DELETED
        got = [(k, o.metadata.name, dict(o.metadata.labels)) for k, o in await take(web, 5)]
        assert got == [
            (ADDED, "a", {"app": "web"}),
            (ADDED, "b", {"app": "web"}),
            (DELETED, "a", {"app": "db"}),
            (MODIFIED, "b", {"app": "web", "v": "2"}),
            (DELETED, "b", {"app": "web", "v": "2"}),
        ]
        assert await nothing_within(web, 0.3)
        await cache.stop()
        await etcd.close()

    run(body())


def test_a_broken_predicate_or_value_harms_no_other_watcher(member):
    async def body():
        etcd = Etcd(member.endpoint)
        res = new_resource()
        w = Writer(etcd, res)
        cache = await started(etcd, res)
        base = cache.revision

        def broken(p):
            if p.metadata.name == "boom":
                raise KeyError("boom")
            return True

        fragile = cache.watch(resource_version=base, predicate=broken)
        sound = cache.watch(resource_version=base)
        await w.put(pod("ns", "fine"))
        # a value the decode callable rejects: logged and skipped
        await etcd.kv.Put(pb.PutRequest(key=res.key("ns", "garbage").encode(), value=b"not ours"),
                          timeout=10, wait_for_ready=True)
        await w.put(pod("ns", "boom"))
        await w.put(pod("ns", "after"))
        assert [seen(e) for e in await take(sound, 3)] == w.history
        err = await expect_error(fragile, "InternalError")  # unread events are dropped
        assert "boom" in err.message
        assert sorted(o.metadata.name for o in cache.list()[0]) == ["after", "boom", "fine"]
        assert cache.watcher_count == 1
        await cache.stop()
        await etcd.close()

    run(body())


# ---- the window, freshness, bookmarks ------------------------------------------


def test_a_new_cache_replays_recent_history_so_watchers_resume(member):
    """What an apiserver restart looks like to a client: a fresh cache loads at
    revision R, yet a watch from an older resourceVersion (within the backfill)
    gets exactly the later changes; older than the backfill is Expired."""
    async def body():
        etcd = Etcd(member.endpoint)
        res = new_resource()
        w = Writer(etcd, res)
        first = await started(etcd, res)
        base = first.revision
        for i in range(6):
            await w.put(pod("ns", f"p{i % 3}", node=f"n{i}"))
        await w.delete("ns", "p0")
        await first.stop()
        marks = [base] + [rev for rev, *_ in w.history]
        fresh = await started(etcd, res, backfill=50)
        assert fresh.revision >= marks[-1]
        for mark in marks[:-1]:
            got = await take(fresh.watch(resource_version=mark), len(w.after(mark)))
            assert [seen(e) for e in got] == w.after(mark), mark
        narrow = await started(etcd, res, backfill=2)
        await expect_error(narrow.watch(resource_version=base), "Expired")
        for cache in (fresh, narrow):
            await cache.stop()
        await etcd.close()

    run(body())


def test_a_revision_older_than_the_ring_is_expired(member):
    async def body():
        etcd = Etcd(member.endpoint)
        res = new_resource()
        w = Writer(etcd, res)
        cache = await started(etcd, res, capacity=5, backfill=0)
        base = cache.revision
        # before anything was dropped, the whole history since the list is there
        assert cache.oldest_revision == base
        early = await expect_error(cache.watch(resource_version=base - 1), "Expired")
        assert early.message == f"too old resource version: {base - 1} ({base})"
        for i in range(8):
            await w.put(pod("ns", f"p{i}"))
        last = w.history[-1][0]
        await cache.wait_fresh(last)
        oldest = cache.oldest_revision
        assert oldest == w.history[2][0]  # 8 events, 5 kept: the 3rd one's revision starts the window
        err = await expect_error(cache.watch(resource_version=base), "Expired")
        assert err.message == f"too old resource version: {base} ({oldest})"
        assert err.grpc_code.name == "OUT_OF_RANGE"
        got = await take(cache.watch(resource_version=oldest), 5)
        assert [seen(e) for e in got] == w.after(oldest)
        await cache.stop()
        await etcd.close()

    run(body())


def test_wait_fresh_asks_etcd_for_progress_and_times_out_when_too_large(member):
    async def body():
        etcd = Etcd(member.endpoint)
        res = new_resource()
        # no periodic progress: only wait_fresh's own requests can move the revision
        cache = await started(etcd, res, progress_interval=600, bookmark_interval=600)
        elsewhere = await other_write(etcd, 3)
        assert cache.revision < elsewhere
        await cache.wait_fresh(elsewhere, timeout=10)
        assert cache.revision >= elsewhere
        # a watch from a revision the cache has not reached waits for it
        ahead = await other_write(etcd)
        w = Writer(etcd, res)
        watcher = cache.watch(resource_version=ahead)
        await w.put(pod("ns", "p"))
        assert [seen(e) for e in await take(watcher, 1)] == w.history
        too_large = cache.revision + 1000
        with pytest.raises(ApiError) as info:
            await cache.wait_fresh(too_large, timeout=0.5)
        assert info.value.reason == "Timeout"
        assert info.value.message == f"Too large resource version: {too_large}, current: {cache.revision}"
        await expect_error(cache.watch(resource_version=too_large), "Timeout")
        await cache.stop()
        await etcd.close()

    run(body())


def test_bookmarks_advance_on_an_idle_resource(member):
    async def body():
        etcd = Etcd(member.endpoint)
        res = new_resource()
        cache = await started(etcd, res, bookmark_interval=0.1, progress_interval=0.1)
        w = Writer(etcd, res)
        await w.put(pod("ns", "p"))
        await cache.wait_fresh(w.history[-1][0])
        plain = cache.watch(resource_version=cache.revision)
        marked = cache.watch(resource_version=cache.revision, bookmarks=True)
        elsewhere = await other_write(etcd, 2)
        async with asyncio.timeout(15):
            while True:
                kind, obj = await anext(marked)
                assert kind == BOOKMARK, (kind, obj)
                assert obj.metadata.name == "" and obj.metadata.resource_version
                if int(obj.metadata.resource_version) >= elsewhere:
                    break
        mark = int(obj.metadata.resource_version)
        assert await nothing_within(plain, 0.2)  # no bookmarks unless asked for
        # resuming from the bookmark misses nothing and repeats nothing
        resumed = cache.watch(resource_version=mark)
        await w.put(pod("ns", "p", node="n1"))
        assert [seen(e) for e in await take(resumed, 1)] == w.history[-1:]
        got = await take(marked, 1)
        assert [seen(e) for e in got] == w.history[-1:]
        await cache.stop()
        await etcd.close()

    run(body())


# ---- slow watchers ---------------------------------------------------------------


def test_a_slow_watcher_is_expired_without_stalling_the_others(member):
    async def body():
        etcd = Etcd(member.endpoint)
        res = new_resource()
        cache = await started(etcd, res, watcher_buffer=20)
        w = Writer(etcd, res)
        base = cache.revision
        slow = cache.watch(resource_version=base)
        fast = cache.watch(resource_version=base)
        received = []

        async def read_fast():
            received.extend(await take(fast, 60))

        reader = asyncio.create_task(read_fast())
        for i in range(60):
            await w.put(pod("ns", f"p{i % 5}", node=f"n{i}"))
        await reader
        assert [seen(e) for e in received] == w.after(base)
        assert cache.watcher_count == 1  # the slow one is gone
        err = await expect_error(slow, "Expired")
        assert "fell too far behind" in err.message
        with pytest.raises(StopAsyncIteration):
            await anext(slow)
        await cache.stop()
        await etcd.close()

    run(body())


# ---- etcd trouble -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_cache_rewatches_after_its_member_is_killed_and_restarted(kind, procs, tmp_path):
    m = start_member(kind, procs, tmp_path, "killed")

    async def body():
        etcd = Etcd(m.endpoint)
        res = new_resource()
        cache = await started(etcd, res, progress_interval=0.2)
        w = Writer(etcd, res)
        base = cache.revision
        watcher = cache.watch(resource_version=base)
        for i in range(10):
            await w.put(pod("ns", f"p{i % 4}", node=f"n{i}"))
        # killed while the cache may still be receiving these
        await asyncio.to_thread(m.kill)
        await asyncio.to_thread(m.restart)
        for i in range(10, 20):
            await w.put(pod("ns", f"p{i % 4}", node=f"n{i}"))
        await w.delete("ns", "p1")
        got = await take(watcher, len(w.history), timeout=30)
        assert [seen(e) for e in got] == w.history
        assert await nothing_within(watcher, 0.3)
        assert cache.watch_streams_opened >= 2 and cache.reloads == 0
        await cache.stop()
        await etcd.close()

    run(body())


@pytest.mark.parametrize("kind", KINDS)
def test_compaction_while_disconnected_expires_every_watcher(kind, procs, tmp_path):
    m = start_member(kind, procs, tmp_path, "compacted")

    async def body():
        with FaultProxy(0, m.client_port) as proxy:
            via_proxy = Etcd(proxy.address)
            direct = Etcd(m.endpoint)
            res = new_resource()
            cache = await started(via_proxy, res, progress_interval=0.2)
            w = Writer(direct, res)
            base = cache.revision
            watchers = [cache.watch(resource_version=base), cache.watch(namespace="ns", bookmarks=True)]
            await w.put(pod("ns", "p0"))
            await cache.wait_fresh(w.history[-1][0])

            await asyncio.to_thread(proxy.block)
            for i in range(5):
                await w.put(pod("ns", f"p{i}", node="n"))
            await w.delete("ns", "p0")
            compact_at = w.history[-1][0]
            await direct.kv.Compact(pb.CompactionRequest(revision=compact_at, physical=True),
                                    timeout=10, wait_for_ready=True)
            await asyncio.to_thread(proxy.unblock)

            for watcher in watchers:
                # what was already delivered may be read first
                async with asyncio.timeout(30):
                    with pytest.raises(ApiError) as info:
                        while True:
                            await anext(watcher)
                assert info.value.reason == "Expired"
            assert cache.reloads == 1 and cache.revision >= compact_at
            assert cache.oldest_revision >= compact_at
            # a relist gets the state after compaction, and watching goes on from it
            items, rev = cache.list()
            assert sorted(o.metadata.name for o in items) == ["p1", "p2", "p3", "p4"]
            relisted = cache.watch(resource_version=rev)
            await w.put(pod("ns", "p9"))
            assert [seen(e) for e in await take(relisted, 1)] == w.history[-1:]
            await expect_error(cache.watch(resource_version=base), "Expired")
            await cache.stop()
            await via_proxy.close()
            await direct.close()

    run(body())


def test_a_stopped_cache_ends_its_watches(member):
    async def body():
        etcd = Etcd(member.endpoint)
        res = new_resource()
        cache = await started(etcd, res)
        w = Writer(etcd, res)
        watcher = cache.watch()
        await w.put(pod("ns", "p"))
        await take(watcher, 1)
        await cache.stop()
        with pytest.raises(StopAsyncIteration):
            await anext(watcher)
        await expect_error(cache.watch(), "ServiceUnavailable")
        with pytest.raises(ApiError) as info:
            await cache.wait_fresh(cache.revision + 1)
        assert info.value.reason == "ServiceUnavailable"
        await etcd.close()

    run(body())
