"""A rate-limited work queue of keys, with Kubernetes' workqueue semantics.

Controllers put object keys ("ns/name") in, and worker threads take them out
one at a time:

- ``add(key)`` dedupes: a key waiting in the queue is there once, however
  often it is added.
- A key is handed to at most one worker at a time. Added again while it is
  being processed, it waits aside and goes back in the queue when the worker
  calls ``done(key)``, so the change that re-added it is not lost and no two
  workers reconcile one object at once.
- ``add_after(key, delay)`` adds it later (the earliest of several pending
  delays wins); ``add_rate_limited(key)`` adds it after the rate limiter's
  delay: per-key exponential backoff (5 ms doubling to 1000 s) and an overall
  token bucket (10 qps, burst 100), the larger of the two, as client-go's
  default controller rate limiter. ``forget(key)`` ends a key's backoff once it
  succeeded; ``num_requeues(key)`` counts its failures since.
- ``shut_down()``: later adds are ignored, delayed keys are dropped, waiting
  workers wake; keys already queued are still handed out, then ``get``
  returns None.

A worker's loop::

    while (key := queue.get()) is not None:
        try:
            sync(key)
            queue.forget(key)
        except Exception:
            queue.add_rate_limited(key)
        finally:
            queue.done(key)

Keys must be hashable. Every method is thread-safe. No thread of its own:
delayed keys are moved into the queue by the workers waiting in ``get``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import Hashable, Protocol

from apiserver.errors import ApiError

log = logging.getLogger("controllers.workqueue")

DEFAULT_BASE_DELAY = 0.005
DEFAULT_MAX_DELAY = 1000.0
DEFAULT_QPS = 10.0
DEFAULT_BURST = 100


class RateLimiter(Protocol):
    def when(self, key: Hashable) -> float:
        """Seconds ``key`` should wait before it is added again (counts as a failure)."""

    def forget(self, key: Hashable) -> None:
        """``key`` succeeded: stop tracking its failures."""

    def num_requeues(self, key: Hashable) -> int:
        """Failures of ``key`` since it was last forgotten."""


class ItemExponentialFailureRateLimiter:
    """base_delay * 2**failures, capped at max_delay; per key."""

    def __init__(self, base_delay: float = DEFAULT_BASE_DELAY, max_delay: float = DEFAULT_MAX_DELAY) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._failures: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def when(self, key: Hashable) -> float:
        with self._lock:
            exp = self._failures.get(key, 0)
            self._failures[key] = exp + 1
        if exp > 64:  # 2**exp would only overflow the cap
            return self.max_delay
        return min(self.base_delay * (2 ** exp), self.max_delay)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def num_requeues(self, key: Hashable) -> int:
        with self._lock:
            return self._failures.get(key, 0)


class BucketRateLimiter:
    """An overall token bucket (``qps`` refill, ``burst`` size) shared by every
    key. Each ``when`` reserves a token, possibly one not yet refilled: the delay
    is how long until it will be, so a burst of failures spreads out at ``qps``."""

    def __init__(self, qps: float = DEFAULT_QPS, burst: int = DEFAULT_BURST) -> None:
        self.qps = qps
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def when(self, key: Hashable) -> float:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def forget(self, key: Hashable) -> None:
        pass

    def num_requeues(self, key: Hashable) -> int:
        return 0


class MaxOfRateLimiter:
    """The longest delay of several limiters (each counts the failure)."""

    def __init__(self, *limiters: RateLimiter) -> None:
        if not limiters:
            raise ValueError("MaxOfRateLimiter needs at least one limiter")
        self.limiters = limiters

    def when(self, key: Hashable) -> float:
        return max(limiter.when(key) for limiter in self.limiters)

    def forget(self, key: Hashable) -> None:
        for limiter in self.limiters:
            limiter.forget(key)

    def num_requeues(self, key: Hashable) -> int:
        return max(limiter.num_requeues(key) for limiter in self.limiters)


def default_controller_rate_limiter() -> RateLimiter:
    """client-go's default: per-key 5 ms .. 1000 s backoff, overall 10 qps burst 100."""
    return MaxOfRateLimiter(ItemExponentialFailureRateLimiter(), BucketRateLimiter())


class RateLimitingQueue:
    def __init__(self, rate_limiter: RateLimiter | None = None, *, name: str = "") -> None:
        self.name = name
        self.rate_limiter = rate_limiter if rate_limiter is not None else default_controller_rate_limiter()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Hashable] = deque()  # keys ready for a worker, in order
        self._dirty: set[Hashable] = set()  # keys needing processing (queued, or re-added while processing)
        self._processing: set[Hashable] = set()  # keys a worker holds
        self._waiting: dict[Hashable, float] = {}  # delayed key -> monotonic time it is due
        self._heap: list[tuple[float, int, Hashable]] = []  # (due, seq, key); stale entries skipped
        self._seq = itertools.count()
        self._shutting_down = False

    # ---- adding ----

    def add(self, key: Hashable) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: Hashable) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # queued again by done()
        self._queue.append(key)
        self._cond.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        """``key`` goes in the queue after ``delay`` seconds (at once if <= 0)."""
        with self._cond:
            if self._shutting_down:
                return
            if delay <= 0:
                self._add_locked(key)
                return
            due = time.monotonic() + delay
            current = self._waiting.get(key)
            if current is not None and current <= due:
                return
            self._waiting[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            # waiting workers recompute how long to sleep
            self._cond.notify_all()

    def add_rate_limited(self, key: Hashable) -> None:
        """Adds ``key`` after the rate limiter's delay; counts as one failure of it."""
        self.add_after(key, self.rate_limiter.when(key))

    def forget(self, key: Hashable) -> None:
        """Ends ``key``'s backoff (it succeeded). It must still be ``done()``."""
        self.rate_limiter.forget(key)

    def num_requeues(self, key: Hashable) -> int:
        return self.rate_limiter.num_requeues(key)

    # ---- taking ----

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key, now held by the caller until ``done(key)``; None after
        ``timeout`` seconds without one, or once shut down and drained."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                self._promote_due_locked(now)
                if self._queue:
                    key = self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                if self._shutting_down:
                    return None
                wait = None if deadline is None else deadline - now
                if wait is not None and wait <= 0:
                    return None
                if self._heap:
                    until_due = self._heap[0][0] - now
                    wait = until_due if wait is None else min(wait, until_due)
                self._cond.wait(wait)

    def _promote_due_locked(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._waiting.get(key) != due:
                continue  # superseded by an earlier add_after
            del self._waiting[key]
            self._add_locked(key)

    def done(self, key: Hashable) -> None:
        """The worker finished ``key``; if it was added meanwhile it is queued again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    # ---- lifecycle and introspection ----

    def shut_down(self) -> None:
        with self._cond:
            self._shutting_down = True
            self._waiting.clear()
            self._heap.clear()
            self._cond.notify_all()

    def shutting_down(self) -> bool:
        with self._cond:
            return self._shutting_down

    def __len__(self) -> int:
        """Keys ready for a worker now (not those delayed or being processed)."""
        with self._cond:
            return len(self._queue)

    def num_waiting(self) -> int:
        """Keys added with a delay that has not passed yet."""
        with self._cond:
            return len(self._waiting)


def run_worker(queue: RateLimitingQueue, sync, logger: logging.Logger = log) -> None:
    """A controller worker: ``sync(key)`` for each key until the queue shuts
    down; a failure re-adds the key with the queue's backoff, a success
    forgets its backoff."""
    while (key := queue.get()) is not None:
        try:
            sync(key)
            queue.forget(key)
        except ApiError as e:
            # a Conflict is routine: the cache was behind; the retry reads it anew
            logger.log(logging.DEBUG if e.reason == "Conflict" else logging.INFO,
                       "%s: %s: %s; retrying", key, e.reason, e.message)
            queue.add_rate_limited(key)
        except Exception:
            logger.exception("%s failed; retrying", key)
            queue.add_rate_limited(key)
        finally:
            queue.done(key)


def start_workers(queue: RateLimitingQueue, sync, count: int, name: str,
                  logger: logging.Logger = log) -> list[threading.Thread]:
    """``count`` daemon threads running ``run_worker(queue, sync)``."""
    threads = []
    for i in range(count):
        t = threading.Thread(target=run_worker, args=(queue, sync, logger), daemon=True, name=f"{name}-{i}")
        t.start()
        threads.append(t)
    return threads
