"""The scheduling queue: which pending pod the scheduler tries next, and when a
pod that did not fit is tried again (kube-scheduler's PriorityQueue).

A pod (by key "namespace/name") is in exactly one place:

- active: ready to be tried, popped by highest priority, then earliest arrival;
- in flight: popped, being scheduled or bound, until the scheduler reports
  the outcome (``done``, ``add_unschedulable`` or ``add_backoff``);
- backoff: waiting out its backoff (initial * 2^(failed attempts - 1), capped
  at max) before it goes back to active by itself;
- unschedulable: no node fitted it; it waits for the cluster to change
  (``move_all_to_active``: a node added or updated, a bound pod gone), which
  sends it to active, or to backoff while its backoff has not expired. With no
  change it goes back anyway after ``max_unschedulable_seconds``, a safety
  net for changes no event announces.

A cluster change seen while a pod is in flight counts for it: if that attempt
then fails, the pod goes to backoff, not unschedulable, so the change it may
have missed is not waited for in vain. The same holds for an update of the
pod itself while it is in flight.

Failed attempts are counted per pod until ``done`` or ``delete`` forgets it.
Thread-safe; time comes from ``clock`` so tests can drive it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

ACTIVE, IN_FLIGHT, BACKOFF, UNSCHEDULABLE = "active", "in-flight", "backoff", "unschedulable"


@dataclass(frozen=True)
class QueuedPod:
    """What ``pop`` hands out: the pod's key, its priority, and how many
    attempts to schedule it failed before this one."""
    key: str
    priority: int
    attempts: int


@dataclass
class _Entry:
    key: str
    priority: int
    arrival: int
    where: str = ACTIVE
    attempts: int = 0
    backoff_until: float = 0.0
    unschedulable_since: float = 0.0
    popped_at_cycle: int = 0
    updated_in_flight: bool = False
    token: int = 0  # which heap item of this entry is live (older ones are stale)


class SchedulingQueue:
    def __init__(self, *, initial_backoff: float = 1.0, max_backoff: float = 10.0,
                 max_unschedulable_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < initial_backoff <= max_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.max_unschedulable_seconds = max_unschedulable_seconds
        self._clock = clock
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._active: list[tuple[int, int, int, str]] = []  # (-priority, arrival, token, key)
        self._backoff: list[tuple[float, int, int, str]] = []  # (until, arrival, token, key)
        # in the order they became unschedulable (so by unschedulable_since)
        self._unschedulable: dict[str, _Entry] = {}
        self._arrivals = itertools.count()
        self._tokens = itertools.count(1)
        self._cycle = 0  # pops so far
        self._move_cycle = -1  # the cycle at the last cluster change
        self._closed = False

    # ---- the informers' side ----

    def add(self, key: str, priority: int = 0) -> None:
        """A pending pod appeared or changed: queue it, or, when it waits as
        unschedulable, let it try again (its spec may now fit somewhere)."""
        with self._cond:
            e = self._entries.get(key)
            if e is None:
                e = self._entries[key] = _Entry(key, priority, next(self._arrivals))
                self._push_active(e)
            elif e.where == IN_FLIGHT:
                e.priority = priority
                e.updated_in_flight = True
            elif e.where == ACTIVE and e.priority != priority:
                e.priority = priority
                self._push_active(e)
            elif e.where == UNSCHEDULABLE:
                e.priority = priority
                self._move_back(e, self._clock())
            else:
                e.priority = priority

    def delete(self, key: str) -> None:
        """The pod is gone, bound, or not ours: forget it wherever it is."""
        with self._cond:
            e = self._entries.pop(key, None)
            if e is not None:
                e.token = 0
                self._unschedulable.pop(key, None)

    def move_all_to_active(self) -> None:
        """The cluster changed so that a pod that fitted nowhere may fit now."""
        with self._cond:
            self._move_cycle = self._cycle
            now = self._clock()
            for e in list(self._unschedulable.values()):
                self._move_back(e, now)

    def move_to_active(self, keys) -> None:
        """Of ``keys``, the pods waiting as unschedulable may fit now (a change that
        concerns only them: a pod placed that their affinity or spreading counts)."""
        with self._cond:
            now = self._clock()
            for key in keys:
                e = self._unschedulable.get(key)
                if e is not None:
                    self._move_back(e, now)

    # ---- the scheduler's side ----

    def pop(self, timeout: float | None = None) -> QueuedPod | None:
        """The next pod to try (now in flight), waiting up to ``timeout``
        seconds for one; None on timeout or once closed."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                self._flush(now)
                while self._active:
                    _, _, token, key = heapq.heappop(self._active)
                    e = self._entries.get(key)
                    if e is None or e.token != token or e.where != ACTIVE:
                        continue
                    self._cycle += 1
                    e.where, e.popped_at_cycle, e.updated_in_flight = IN_FLIGHT, self._cycle, False
                    e.token = 0
                    return QueuedPod(e.key, e.priority, e.attempts)
                wait = self._next_wakeup(now)
                if deadline is not None:
                    if now >= deadline:
                        return None
                    wait = deadline - now if wait is None else min(wait, deadline - now)
                self._cond.wait(wait)
            return None

    def done(self, key: str) -> None:
        """The attempt succeeded (the pod is bound) or the pod is no longer to
        be scheduled: forget it and its failed attempts."""
        self.delete(key)

    def add_unschedulable(self, key: str) -> None:
        """The attempt found no node for the pod."""
        with self._cond:
            e = self._in_flight(key)
            if e is None:
                return
            now = self._failed(e)
            if e.updated_in_flight or self._move_cycle >= e.popped_at_cycle:
                self._move_back(e, now)
            else:
                e.where, e.unschedulable_since, e.token = UNSCHEDULABLE, now, 0
                self._unschedulable[key] = e
                self._cond.notify_all()  # a pop may need a nearer wakeup

    def add_backoff(self, key: str) -> None:
        """The attempt failed for another reason (binding refused, apiserver
        unavailable): try again once its backoff expires."""
        with self._cond:
            e = self._in_flight(key)
            if e is not None:
                self._failed(e)
                self._push_backoff(e)

    def close(self) -> None:
        """Wakes every ``pop`` (which then returns None) for good."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---- looking in ----

    def backoff_seconds(self, attempts: int) -> float:
        """The wait after ``attempts`` failed attempts."""
        if attempts <= 0:
            return 0.0
        return min(self.initial_backoff * 2 ** min(attempts - 1, 62), self.max_backoff)

    def where(self, key: str) -> str | None:
        """Where the pod is (ACTIVE, IN_FLIGHT, BACKOFF, UNSCHEDULABLE), None if not queued."""
        with self._cond:
            e = self._entries.get(key)
            return e.where if e is not None else None

    def counts(self) -> dict[str, int]:
        with self._cond:
            out = {ACTIVE: 0, IN_FLIGHT: 0, BACKOFF: 0, UNSCHEDULABLE: 0}
            for e in self._entries.values():
                out[e.where] += 1
            return out

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    # ---- inside (the condition's lock held) ----

    def _in_flight(self, key: str) -> _Entry | None:
        e = self._entries.get(key)
        return e if e is not None and e.where == IN_FLIGHT else None

    def _failed(self, e: _Entry) -> float:
        now = self._clock()
        e.attempts += 1
        e.backoff_until = now + self.backoff_seconds(e.attempts)
        return now

    def _push_active(self, e: _Entry) -> None:
        self._unschedulable.pop(e.key, None)
        e.where, e.token = ACTIVE, next(self._tokens)
        heapq.heappush(self._active, (-e.priority, e.arrival, e.token, e.key))
        self._cond.notify()

    def _push_backoff(self, e: _Entry) -> None:
        self._unschedulable.pop(e.key, None)
        e.where, e.token = BACKOFF, next(self._tokens)
        heapq.heappush(self._backoff, (e.backoff_until, e.arrival, e.token, e.key))
        self._cond.notify_all()

    def _move_back(self, e: _Entry, now: float) -> None:
        if e.backoff_until > now:
            self._push_backoff(e)
        else:
            self._push_active(e)

    def _flush(self, now: float) -> None:
        while self._backoff and self._backoff[0][0] <= now:
            _, _, token, key = heapq.heappop(self._backoff)
            e = self._entries.get(key)
            if e is not None and e.token == token and e.where == BACKOFF:
                self._push_active(e)
        while self._unschedulable:
            e = next(iter(self._unschedulable.values()))
            if now - e.unschedulable_since < self.max_unschedulable_seconds:
                break
            self._move_back(e, now)

    def _next_wakeup(self, now: float) -> float | None:
        times = [self._backoff[0][0]] if self._backoff else []
        if self._unschedulable:
            e = next(iter(self._unschedulable.values()))
            times.append(e.unschedulable_since + self.max_unschedulable_seconds)
        if not times:
            return None
        return max(0.0, min(times) - now)
