"""What the watch cache keeps and hands out: the events it applied
(``WatchEvent``), the ring of recent ones (``EventRing``), and one client's
watch over them (``CacheWatcher``). The cache itself is ``watch_cache``."""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from apiserver import errors

if TYPE_CHECKING:
    from apiserver.watch_cache import WatchCache

log = logging.getLogger("apiserver.watch_cache")

ADDED, MODIFIED, DELETED, BOOKMARK = "ADDED", "MODIFIED", "DELETED", "BOOKMARK"

Predicate = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change as the cache applied it. ``object`` is the new state (for
    DELETED the last state, with resourceVersion = the deletion's revision);
    ``prev_object`` the state before (None for ADDED)."""

    type: str
    object: Any
    prev_object: Any | None
    revision: int
    namespace: str


class EventRing:
    """The last ``capacity`` events in revision order.

    ``window_start`` is the oldest revision a watch can start from: every
    event with a greater revision is still here."""

    def __init__(self, capacity: int, window_start: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.window_start = window_start
        self._buf: list[WatchEvent | None] = [None] * capacity
        self._head = 0  # index of the oldest event
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, i: int) -> WatchEvent:
        if not 0 <= i < self._size:
            raise IndexError(i)
        return self._buf[(self._head + i) % self.capacity]

    def append(self, ev: WatchEvent) -> None:
        if self._size == self.capacity:
            # an event of the same revision may remain, so a watch from
            # revision-1 could not be served any more: the window starts here
            self.window_start = self._buf[self._head].revision
            self._buf[self._head] = ev
            self._head = (self._head + 1) % self.capacity
        else:
            self._buf[(self._head + self._size) % self.capacity] = ev
            self._size += 1

    def since(self, revision: int) -> list[WatchEvent]:
        """Every event with a revision greater than ``revision``
        (the caller checks ``revision >= window_start``)."""
        first = bisect.bisect_right(self, revision, key=lambda ev: ev.revision)
        return [self[i] for i in range(first, self._size)]

    def reset(self, window_start: int) -> None:
        self._buf = [None] * self.capacity
        self._head = self._size = 0
        self.window_start = window_start


class CacheWatcher:
    """One client's watch: an async iterator of (event type, object).

    Errors (Expired, Timeout) are raised by ``__anext__``: before the first
    event when the watch cannot start, later when it is terminated (fell
    behind, etcd history compacted). After an error or ``aclose()`` the
    iteration ends."""

    def __init__(self, cache: WatchCache, namespace: str, predicate: Predicate | None,
                 resource_version: int | None, bookmarks: bool, buffer_limit: int) -> None:
        self._cache = cache
        self._namespace = namespace
        self._predicate = predicate
        self._resource_version = resource_version
        self.bookmarks = bookmarks
        self._buffer_limit = buffer_limit
        self._registered = False
        # replayed lazily, before _pending, from _backlog_next on; shared with
        # the cache (its initial ADDED list, or a slice of its ring): read-only
        self._backlog: Sequence[WatchEvent] = ()
        self._backlog_next = 0
        self._pending: deque[tuple[str, Any]] = deque()
        self._wakeup = asyncio.Event()
        self._error: errors.ApiError | None = None
        self._terminated: asyncio.Event | None = None  # made by terminated(), set by _fail
        self._done = False
        # the newest revision the client will know of once it has read what is queued
        self.known_revision = 0

    # -- consumer side ------------------------------------------------------

    def __aiter__(self) -> CacheWatcher:
        return self

    async def __anext__(self) -> tuple[str, Any]:
        if not self._registered and not self._done and self._error is None:
            try:
                await self._cache._start_watcher(self)
            except errors.ApiError as e:
                self._error = e
        while True:
            if self._error is not None:
                err, self._error = self._error, None
                self._done = True
                raise err
            while self._backlog_next < len(self._backlog):
                ev = self._backlog[self._backlog_next]
                self._backlog_next += 1
                if self._backlog_next == len(self._backlog):
                    self._backlog, self._backlog_next = (), 0  # replayed: let the cache's copy go
                try:
                    view = self._view(ev)
                except Exception as e:  # a broken predicate ends this watch only
                    log.exception("watch predicate failed")
                    self._fail(errors.internal(f"watch filter failed: {e}"))
                    break
                if view is not None:
                    return view
            if self._error is not None:
                continue
            if self._pending:
                return self._pending.popleft()
            if self._done:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def aclose(self) -> None:
        """Unsubscribes; what is queued is dropped and the iteration ends."""
        self._drop_queued()
        self._finish()

    close = aclose

    async def terminated(self) -> None:
        """Returns once the cache has ended this watch with an error (it fell
        too far behind, the cache was reloaded): for a sender that waits on a
        client, which must give up then instead of holding the watch."""
        if self._error is None:
            if self._terminated is None:
                self._terminated = asyncio.Event()
            await self._terminated.wait()

    # -- cache side ---------------------------------------------------------

    def _view(self, ev: WatchEvent) -> tuple[str, Any] | None:
        """What this watcher sees of ``ev``, with Kubernetes' transition
        semantics for a predicate: starting to match is ADDED, stopping is
        DELETED (with the new state), never matching is nothing."""
        if self._namespace and ev.namespace != self._namespace:
            return None
        match = self._predicate
        if match is None:
            return ev.type, ev.object
        if ev.type == MODIFIED:
            now, before = match(ev.object), match(ev.prev_object)
            if now:
                return (MODIFIED if before else ADDED), ev.object
            return (DELETED, ev.object) if before else None
        return (ev.type, ev.object) if match(ev.object) else None

    def _offer(self, ev: WatchEvent) -> None:
        try:
            view = self._view(ev)
        except Exception as e:  # a broken predicate ends this watch only
            log.exception("watch predicate failed")
            self._fail(errors.internal(f"watch filter failed: {e}"))
            return
        if view is None:
            return
        self._pending.append(view)
        self.known_revision = ev.revision
        if len(self._pending) > self._buffer_limit:
            self._fail(errors.expired(
                f"watch of {self._cache.resource.name} fell too far behind "
                f"(more than {self._buffer_limit} events not read); relist"))
            return
        self._wakeup.set()

    def _offer_bookmark(self, revision: int) -> None:
        msg = self._cache.resource.new()
        msg.metadata.resource_version = str(revision)
        if self._pending and self._pending[-1][0] == BOOKMARK:
            self._pending[-1] = (BOOKMARK, msg)  # a slow reader needs only the newest
        else:
            self._pending.append((BOOKMARK, msg))
        self.known_revision = revision
        self._wakeup.set()

    def _fail(self, err: errors.ApiError) -> None:
        if self._done:
            return
        self._error = err
        self._drop_queued()
        self._finish()
        if self._terminated is not None:
            self._terminated.set()

    def _drop_queued(self) -> None:
        self._backlog = ()
        self._backlog_next = 0
        self._pending.clear()

    def _finish(self) -> None:
        """Ends the watch once what is queued has been read."""
        self._done = True
        self._cache._watchers.discard(self)
        self._wakeup.set()
