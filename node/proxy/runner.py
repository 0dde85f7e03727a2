"""A bounded-frequency runner: calls ``fn`` when asked, but never twice within ``min_interval``
(requests meanwhile fold into one later call), and at least every ``max_interval`` even unasked.
``fn`` returns None, or a number of seconds after which it wants to run again (a retry, or stale
chains to delete). This is what lets a thousand Endpoints changes in a second cost one nft
transaction, as upstream's BoundedFrequencyRunner does for kube-proxy (minSyncPeriod)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("node.proxy.runner")


class BoundedFrequencyRunner:
    def __init__(self, fn: Callable[[], float | None], min_interval: float, max_interval: float,
                 name: str = "sync") -> None:
        self._fn = fn
        self.min_interval = min_interval
        self.max_interval = max_interval
        self._cond = threading.Condition()
        self._requested = False
        self._due: float | None = None  # monotonic time of a retry fn asked for
        self._stop = False
        self._last = float("-inf")
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> "BoundedFrequencyRunner":
        self._thread.start()
        return self

    def run(self) -> None:
        """Ask for a call as soon as the minimum interval allows."""
        with self._cond:
            self._requested = True
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _next_time(self) -> float:
        if self._last == float("-inf"):  # never ran: wait for the first request
            return self._last if (self._requested or self._due is not None) else float("inf")
        nxt = self._last + self.max_interval
        if self._due is not None:
            nxt = min(nxt, self._due)
        if self._requested:
            nxt = min(nxt, self._last + self.min_interval)
        return max(nxt, self._last + self.min_interval)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop:
                    wait = self._next_time() - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(None if wait == float("inf") else wait)
                if self._stop:
                    return
                self._requested = False
                self._due = None
                self._last = time.monotonic()
            try:
                again = self._fn()
            except Exception:  # the function logs its own failures; never let the loop die
                log.exception("sync failed")
                again = self.min_interval
            if again is not None:
                with self._cond:
                    due = time.monotonic() + again
                    self._due = due if self._due is None else min(self._due, due)
