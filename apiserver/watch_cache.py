"""The watch cache: one etcd watch per resource serves every client watch of it.

As kube-apiserver's Cacher: ``start()`` lists the resource's prefix at a
revision R and watches etcd from R+1; the cache keeps the current objects and a
ring of the last ``capacity`` events. A client watch replays from the ring (or
from the current objects) and then gets every later change as it is applied, so
a thousand watchers cost one etcd watch.

Contracts a caller relies on:

- Objects handed out (by ``watch`` and ``list``) are SHARED with the cache and
  with other watchers: treat them as read-only and copy before changing one
  (``resources.wrap`` and ``CopyFrom`` copy). This saves a copy per watcher per
  event.
- ``revision`` only moves forward, and every change at or below it has been
  applied to the cache: a watch from ``revision`` (or from a bookmark) misses
  nothing.
- Errors are ``ApiError``s: Expired (too old resourceVersion, watcher fell
  behind, etcd history compacted under the cache), Timeout (resourceVersion the
  cache has not reached), ServiceUnavailable (cache stopped).

etcd before 3.4.24/3.5.8 may answer a WatchProgressRequest with a revision
whose events are still on their way (etcd issue #15220). So a progress revision
counts only once a later response confirms it (the next progress answer, or an
event past it), and not at all while a freshly (re)created watch may still be
replaying history.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import grpc

from apiserver import errors
from apiserver.etcd3 import Etcd, pb, prefix_range_end
from apiserver.resources import Resource
from apiserver.watch_events import (
    ADDED,
    DELETED,
    MODIFIED,
    CacheWatcher,
    EventRing,
    Predicate,
    WatchEvent,
)

log = logging.getLogger("apiserver.watch_cache")


# keys per Range page when (re)loading the cache
LIST_PAGE = 1000
RANGE_TIMEOUT = 30.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
# while a watch may be replaying history, progress revisions are ignored for
# at most this long (etcd 3.4 syncs lagging watchers every 100 ms)
CATCH_UP_GRACE = 1.0
# how often wait_fresh's progress requests are repeated while unanswered
FRESH_POLL = 0.1

Decode = Callable[[Resource, bytes, bytes, int], Any]


class WatchCache:
    """The current objects and recent events of one resource, fed by one etcd watch.

    ``decode(resource, key, value, mod_revision)`` turns a stored value into
    the typed message with metadata.resource_version = str(mod_revision); the
    cache never reads values any other way. Call ``start()`` and ``stop()``
    on the event loop that uses the cache.
    """

    def __init__(self, etcd: Etcd, resource: Resource, decode: Decode, *, capacity: int = 10_000,
                 bookmark_interval: float = 1.0, progress_interval: float = 1.0,
                 watcher_buffer: int | None = None, backfill: int | None = None) -> None:
        self.etcd = etcd
        self.resource = resource
        self._decode = decode
        self._prefix = resource.prefix().encode()
        self._range_end = prefix_range_end(self._prefix)
        self._bookmark_interval = bookmark_interval
        self._progress_interval = progress_interval
        # a client watcher with more unread events than this is expired
        self._watcher_buffer = watcher_buffer if watcher_buffer is not None else capacity
        self._objects: dict[bytes, Any] = {}
        # ADDED for every object in key order, shared by the watches from "now"
        # opened before the objects next change (None: build it again)
        self._initial: tuple[WatchEvent, ...] | None = None
        self._ring = EventRing(capacity)
        self._ring_revision = 0  # the newest event's revision
        self._revision = 0
        self._watchers: set[CacheWatcher] = set()
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._stopped = False
        # the etcd watch stream
        self._call = None
        self._created = False
        self._write_lock = asyncio.Lock()
        self._want_progress = asyncio.Event()
        self._first_watch = asyncio.Event()
        self._tentative: int | None = None  # a progress revision awaiting confirmation
        self._catch_up: tuple[int, float] | None = None  # (revision, deadline)
        # how many etcd Watch streams this cache opened: 1 while etcd is healthy
        self.watch_streams_opened = 0
        self.reloads = 0
        # After a (re)load at revision R the ring is refilled from etcd's
        # history of the last `backfill` revisions, so a client that watched
        # an apiserver before it restarted resumes from its resourceVersion
        # instead of relisting. (from, R) while that replay is under way; its
        # events wait in _backfill_events until it is complete.
        self._backfill_revisions = capacity if backfill is None else backfill
        self._backfill: tuple[int, int] | None = None
        self._backfill_retry: tuple[int, int] | None = None
        self._backfill_events: list[WatchEvent] = []
        self._backfill_done = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------

    async def start(self, watch_timeout: float = 10.0) -> None:
        """Loads the objects (raises grpc.RpcError if etcd cannot be read) and
        starts following etcd. Returns once etcd has accepted the watch (or
        after ``watch_timeout`` seconds, the watch still being retried); the
        cache serves from then on."""
        if self._started:
            raise RuntimeError("watch cache already started")
        objects, revision = await self._load()
        self._started = True
        self._replace(objects, revision, None)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow_etcd(), name=f"watch-cache-{self.resource.name}"),
                       loop.create_task(self._request_progress_loop()),
                       loop.create_task(self._bookmark_loop())]
        # a watch created late replays what was written meanwhile in one
        # burst; etcd also batches events to a watch until it has replayed
        # the history (the backfill), so serve once that is behind us
        try:
            async with asyncio.timeout(watch_timeout):
                await self._first_watch.wait()
                await self._backfill_done.wait()
        except TimeoutError:
            log.warning("%s: etcd has not accepted the watch yet; still trying", self.resource.name)

    async def stop(self) -> None:
        """Stops following etcd; client watches end (after what they have
        queued), wait_fresh callers get ServiceUnavailable."""
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for w in list(self._watchers):
            w._finish()
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(errors.unavailable("the watch cache is stopped"))

    @property
    def revision(self) -> int:
        """The newest etcd revision whose changes the cache has applied."""
        return self._revision

    @property
    def oldest_revision(self) -> int:
        """The oldest resourceVersion a watch can start from."""
        return self._ring.window_start

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    # -- reading --------------------------------------------------------------

    async def wait_fresh(self, revision: int, timeout: float = 3.0) -> None:
        """Returns once the cache has seen ``revision``; Timeout error if it
        does not within ``timeout`` seconds."""
        if self._revision >= revision:
            return
        if self._stopped:
            raise errors.unavailable("the watch cache is stopped")
        fut = asyncio.get_running_loop().create_future()
        waiter = (revision, fut)
        self._waiters.append(waiter)
        self._want_progress.set()
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise errors.timeout(f"Too large resource version: {revision}, current: {self._revision}") from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def get(self, namespace: str, name: str):
        """The cached object (shared: read-only), or None; as fresh as ``revision``."""
        return self._objects.get(self.resource.key(namespace, name).encode())

    def list(self, namespace: str = "", predicate: Predicate | None = None) -> tuple[list, int]:
        """(objects in key order, the cache revision they are current at).
        Objects are shared: read-only."""
        items = []
        for key in sorted(self._objects):
            if namespace and self._namespace_of(key) != namespace:
                continue
            obj = self._objects[key]
            if predicate is None or predicate(obj):
                items.append(obj)
        return items, self._revision

    def watch(self, *, namespace: str = "", predicate: Predicate | None = None,
              resource_version: int | None = None, bookmarks: bool = False) -> CacheWatcher:
        """A client watch. ``resource_version`` None (or 0): ADDED for every
        current object, then every change. N: every change after N, in order;
        Expired if the ring no longer reaches back to N, and first waits (as
        wait_fresh) when N is newer than the cache. ``namespace`` "" is every
        namespace; ``predicate(obj)`` filters with transition semantics.
        ``bookmarks``: a BOOKMARK (an empty object whose resourceVersion is the
        cache revision) every bookmark interval in which the revision moved."""
        w = CacheWatcher(self, namespace, predicate, resource_version or None, bookmarks,
                         self._watcher_buffer)
        # start now when no waiting is needed, so "now" means the time of this call
        if w._resource_version is None or w._resource_version <= self._revision:
            try:
                self._register(w)
            except errors.ApiError as e:
                w._error = e
        return w

    async def _start_watcher(self, w: CacheWatcher) -> None:
        if self._stopped or not self._started:
            raise errors.unavailable(f"the watch cache of {self.resource.name} is not running")
        rv = w._resource_version
        if rv is not None and rv > self._revision:
            await self.wait_fresh(rv)
        self._register(w)

    def _register(self, w: CacheWatcher) -> None:
        """Queues the watcher's replay and subscribes it, without yielding to
        the event loop in between, so it misses and repeats nothing."""
        if self._stopped or not self._started:
            raise errors.unavailable(f"the watch cache of {self.resource.name} is not running")
        if w._done:
            return  # closed while waiting to start
        rv = w._resource_version
        if rv is None:
            w._backlog = self._initial_events()
            w.known_revision = 0  # ADDED events carry no list revision: bookmark it
        else:
            if rv < self._ring.window_start:
                raise errors.expired(f"too old resource version: {rv} ({self._ring.window_start})")
            w._backlog = self._ring.since(rv)
            w.known_revision = rv
        w._registered = True
        self._watchers.add(w)

    def _initial_events(self) -> tuple[WatchEvent, ...]:
        """What a watch from "now" replays first; one copy however many watch,
        so a watch costs a reference until it has sent it."""
        if self._initial is None:
            self._initial = tuple(
                WatchEvent(ADDED, self._objects[key], None, self._revision, self._namespace_of(key))
                for key in sorted(self._objects))
        return self._initial

    # -- applying etcd's changes ------------------------------------------------

    def _namespace_of(self, key: bytes) -> str:
        if not self.resource.namespaced:
            return ""
        ns, sep, _ = key[len(self._prefix):].partition(b"/")
        return ns.decode("utf-8", "replace") if sep else ""

    def _apply(self, ev) -> None:
        """One etcd mvcc Event: update the objects, the ring, the watchers."""
        key, rev = ev.kv.key, ev.kv.mod_revision
        if rev < self._ring_revision:
            return  # never happens: etcd sends each watch's events once, in order
        if rev <= self._revision:
            # a progress revision was trusted too early (etcd #15220): apply
            # anyway so the objects stay right; a bookmark may have lied
            log.warning("%s: event at %d arrived after progress %d", self.resource.name, rev, self._revision)
        self._ring_revision = rev
        namespace = self._namespace_of(key)
        prev = self._objects.get(key)
        self._initial = None
        if ev.type == type(ev).DELETE:
            self._objects.pop(key, None)
            obj = self._decode_or_none(key, ev.prev_kv.value, ev.prev_kv.mod_revision) \
                if ev.HasField("prev_kv") else None
            if obj is None and prev is not None:
                obj = type(prev)()
                obj.CopyFrom(prev)
            if obj is None:
                return  # nothing known to tell
            obj.metadata.resource_version = str(rev)
            out = WatchEvent(DELETED, obj, prev if prev is not None else obj, rev, namespace)
        else:
            obj = self._decode_or_none(key, ev.kv.value, rev)
            if obj is None:
                return  # the last good state stays
            self._objects[key] = obj
            out = WatchEvent(MODIFIED if prev is not None else ADDED, obj, prev, rev, namespace)
        self._ring.append(out)
        for w in list(self._watchers):
            w._offer(out)

    def _replayed(self, ev) -> None:
        """An event of the history before the load revision: for the ring
        only (the objects are already at the load revision)."""
        key, rev = ev.kv.key, ev.kv.mod_revision
        prev = self._decode_or_none(key, ev.prev_kv.value, ev.prev_kv.mod_revision) \
            if ev.HasField("prev_kv") else None
        if ev.type == type(ev).DELETE:
            if prev is None:
                return
            obj = type(prev)()
            obj.CopyFrom(prev)
            obj.metadata.resource_version = str(rev)
            kind = DELETED
        else:
            obj = self._decode_or_none(key, ev.kv.value, rev)
            if obj is None:
                return
            kind = MODIFIED if prev is not None else ADDED
        self._backfill_events.append(WatchEvent(kind, obj, prev, rev, self._namespace_of(key)))

    def _finish_backfill(self) -> None:
        """The replay reached the load revision: the window opens back to its start."""
        first, _ = self._backfill
        live = [self._ring[i] for i in range(len(self._ring))]
        self._ring.reset(first - 1)
        for ev in self._backfill_events + live:
            self._ring.append(ev)
        self._backfill = None
        self._backfill_events = []
        self._backfill_done.set()

    def _decode_or_none(self, key: bytes, value: bytes, mod_revision: int):
        try:
            return self._decode(self.resource, key, value, mod_revision)
        except Exception:  # one bad value must not stop the resource
            log.exception("%s: cannot decode %r at revision %d; skipped", self.resource.name, key, mod_revision)
            return None

    def _advance(self, revision: int) -> None:
        if revision <= self._revision:
            return
        self._revision = revision
        if self._waiters:
            for want, fut in self._waiters:
                if want <= revision and not fut.done():
                    fut.set_result(None)

    def _replace(self, objects: dict, revision: int, why: errors.ApiError | None) -> None:
        """Starts over from a fresh list; every client watcher ends with ``why``."""
        self._objects = objects
        self._initial = None
        self._ring.reset(revision)
        self._ring_revision = revision
        self._tentative = None
        first = max(1, revision - self._backfill_revisions + 1)
        self._backfill = (first, revision) if self._backfill_revisions > 0 and first <= revision else None
        self._backfill_events = []
        if self._backfill is None:
            self._backfill_done.set()
        for w in list(self._watchers):
            w._fail(why or errors.expired("the watch cache was reloaded; relist"))
        self._advance(revision)

    async def _load(self) -> tuple[dict, int]:
        """Every object under the prefix at one revision, in pages."""
        objects: dict[bytes, Any] = {}
        revision = 0
        key = self._prefix
        while True:
            resp = await self.etcd.kv.Range(
                pb.RangeRequest(key=key, range_end=self._range_end, limit=LIST_PAGE, revision=revision),
                timeout=RANGE_TIMEOUT)
            revision = revision or resp.header.revision
            for kv in resp.kvs:
                obj = self._decode_or_none(kv.key, kv.value, kv.mod_revision)
                if obj is not None:
                    objects[kv.key] = obj
            if not resp.more or not resp.kvs:
                return objects, revision
            key = resp.kvs[-1].key + b"\0"

    # -- following etcd ---------------------------------------------------------

    async def _follow_etcd(self) -> None:
        """Keeps one etcd watch open, re-watching from revision+1 with backoff
        when it breaks and reloading when etcd compacted past the cache."""
        delay = BACKOFF_MIN
        while True:
            try:
                await self._watch_once()
                log.info("%s: etcd watch stream ended; re-watching", self.resource.name)
            except _Compacted as c:
                await self._reload(c.compact_revision)
                delay = BACKOFF_MIN
                continue
            except asyncio.CancelledError:
                raise
            except grpc.RpcError as e:
                log.info("%s: etcd watch failed (%s); re-watching from %d",
                         self.resource.name, e.code() if hasattr(e, "code") else e, self._revision + 1)
            except Exception:
                log.exception("%s: etcd watch failed; re-watching", self.resource.name)
            if self._created:
                delay = BACKOFF_MIN
            self._created = False
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _watch_once(self) -> None:
        start = self._backfill[0] if self._backfill else self._revision + 1
        call = self.etcd.watch.Watch()
        self.watch_streams_opened += 1
        self._call = call
        try:
            create = pb.WatchCreateRequest(key=self._prefix, range_end=self._range_end,
                                           start_revision=start, prev_kv=True, progress_notify=True)
            async with self._write_lock:
                await call.write(pb.WatchRequest(create_request=create))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    return
                self._on_response(resp, start)
                # let the watchers just woken read before the next response
                await asyncio.sleep(0)
        finally:
            self._call = None
            self._tentative = None
            self._catch_up = None
            # a replay cut short is not resumed (its events would repeat):
            # the window stays at the load revision, unless etcd compacted
            # part of it and the rest is worth asking for again
            self._backfill, self._backfill_retry = self._backfill_retry if self._backfill else None, None
            self._backfill_events = []
            if self._backfill is None:
                self._backfill_done.set()
            call.cancel()

    def _on_response(self, resp, start: int) -> None:
        if resp.canceled:
            if resp.compact_revision and self._backfill:
                first, loaded = self._backfill
                if resp.compact_revision < loaded:
                    self._backfill_retry = (resp.compact_revision + 1, loaded)
                raise _WatchCanceled("history before the load revision is compacted; replaying less")
            if resp.compact_revision:
                raise _Compacted(resp.compact_revision)
            raise _WatchCanceled(resp.cancel_reason or "etcd canceled the watch")
        if resp.created:
            self._created = True
            self._first_watch.set()
            current = resp.header.revision
            # history from start..current is replayed first: until it is in,
            # etcd 3.4 may report progress past events not sent yet
            self._catch_up = (current, time.monotonic() + CATCH_UP_GRACE) if current >= start else None
            return
        if resp.events:
            for ev in resp.events:
                if self._backfill:
                    if ev.kv.mod_revision <= self._backfill[1]:
                        self._replayed(ev)
                        continue
                    self._finish_backfill()
                self._apply(ev)
            newest = resp.events[-1].kv.mod_revision
            if self._catch_up is not None and newest >= self._catch_up[0]:
                self._catch_up = None
            if self._tentative is not None and newest >= self._tentative:
                self._tentative = None
            self._advance(newest)
            return
        self._on_progress(resp.header.revision)

    def _on_progress(self, revision: int) -> None:
        if self._catch_up is not None:
            if time.monotonic() < self._catch_up[1]:
                return
            self._catch_up = None
        if self._backfill and revision >= self._backfill[1]:
            self._finish_backfill()
        if self._tentative is not None:
            self._advance(self._tentative)  # confirmed by this later answer
        self._tentative = revision if revision > self._revision else None
        if self._tentative is not None and self._waiters:
            self._want_progress.set()

    async def _reload(self, compact_revision: int) -> None:
        """etcd compacted the history the cache still needed: list again."""
        lost = self._revision
        delay = BACKOFF_MIN
        while True:
            try:
                objects, revision = await self._load()
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  (etcd trouble: keep trying, the cache must not die)
                log.info("%s: reload failed (%s); retrying", self.resource.name, e)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, BACKOFF_MAX)
        self.reloads += 1
        log.warning("%s: etcd compacted to %d past the cache's revision %d; reloaded at %d",
                    self.resource.name, compact_revision, lost, revision)
        self._replace(objects, revision,
                      errors.expired(f"too old resource version: {lost} ({compact_revision})"))

    async def _request_progress_loop(self) -> None:
        """A WatchProgressRequest every progress interval (so an idle
        resource's revision advances), and at once for wait_fresh."""
        while True:
            # while replaying history (backfill) or someone waits, ask often
            interval = FRESH_POLL if self._waiters or self._backfill else self._progress_interval
            try:
                async with asyncio.timeout(interval):
                    await self._want_progress.wait()
            except TimeoutError:
                pass
            self._want_progress.clear()
            call = self._call
            if call is None or not self._created:
                continue
            try:
                async with self._write_lock:
                    await call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001  (the stream broke: _follow_etcd re-watches)
                log.debug("%s: progress request not sent: %s", self.resource.name, e)

    async def _bookmark_loop(self) -> None:
        while True:
            await asyncio.sleep(self._bookmark_interval)
            revision = self._revision
            for w in list(self._watchers):
                if w.bookmarks and revision > w.known_revision:
                    w._offer_bookmark(revision)


class _Compacted(Exception):
    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"compacted at {compact_revision}")
        self.compact_revision = compact_revision


class _WatchCanceled(Exception):
    pass
