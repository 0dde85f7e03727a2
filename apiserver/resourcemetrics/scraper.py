"""Every kubelet scraped at once, when a request needs metrics fresher than the last round.

metrics-server scrapes every node each --metric-resolution (15 s) whether asked or not; here a
round runs only when a request finds the last one at least RESOLUTION old, so an idle cluster
costs nothing. A node or container read once has no metrics yet (CPU is a rate between two
points): while anything read has only one point, a request at least RETRY after the last round
scrapes again instead of waiting out the resolution, so the second point comes as soon as the
kubelet has read its cgroups again (its housekeeping: 10 s by default).

Bounded: one round at a time (requests meanwhile wait for it, and a request that goes away does
not cancel it for the others); each kubelet has SCRAPE_TIMEOUT to answer whole, and what it may
send is bounded by the fetch (apiserver/rest/metricsapi.py). A kubelet that fails or times out
is left out of the round (logged), as metrics-server leaves it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from apiserver.resourcemetrics.decode import Batch, decode
from apiserver.resourcemetrics.store import Store

log = logging.getLogger("apiserver.metrics")

RESOLUTION = 15.0  # metrics-server's --metric-resolution default
RETRY = 1.0
SCRAPE_TIMEOUT = 5.0

# fetch(node name, kubelet port) -> the text of its /metrics/resource
Fetch = Callable[[str, int], Awaitable[str]]


class Scraper:
    def __init__(self, fetch: Fetch, *, resolution: float = RESOLUTION, retry: float = RETRY,
                 timeout: float = SCRAPE_TIMEOUT, clock=time.monotonic) -> None:
        self.fetch = fetch
        self.resolution, self.retry, self.timeout = resolution, retry, timeout
        self.clock = clock
        self.store = Store(int(resolution * 1e9))
        self.rounds = 0
        self._last_round = float("-inf")
        self._scraped: frozenset[str] = frozenset()
        self._round: asyncio.Future | None = None

    def _due(self, targets: dict[str, int]) -> bool:
        age = self.clock() - self._last_round
        if age >= self.resolution:
            return True
        return age >= self.retry and (self.store.incomplete() or not set(targets) <= self._scraped)

    async def fresh(self, targets: dict[str, int]) -> Store:
        """The store, after a round over ``targets`` (node name -> kubelet port) if one is due."""
        if self._round is None and self._due(targets):
            self._round = asyncio.ensure_future(self._scrape(dict(targets)))
        if self._round is not None:
            await asyncio.shield(self._round)
        return self.store

    async def _scrape(self, targets: dict[str, int]) -> None:
        started = self.clock()
        try:
            batches = await asyncio.gather(*(self._one(name, port) for name, port in targets.items()))
            merged = Batch()
            for b in batches:
                if b is not None:
                    merged.nodes.update(b.nodes)
                    merged.pods.update(b.pods)
            self.store.store(merged)
            self.rounds += 1
        finally:
            self._last_round, self._scraped, self._round = started, frozenset(targets), None

    async def _one(self, node: str, port: int) -> Batch | None:
        try:
            async with asyncio.timeout(self.timeout):
                text = await self.fetch(node, port)
            return decode(text, node, time.time_ns())
        except Exception as e:  # noqa: BLE001 - one kubelet's failure leaves only it out
            log.warning("scraping the resource metrics of node %s failed: %s", node, str(e) or type(e).__name__)
            return None
