"""etcd leases for objects that expire (Events, after `--event-ttl`), shared
between writes as kube-apiserver's etcd3 lease manager does: one lease per
stretch of time rather than one per object, so a burst of Events costs etcd
a LeaseGrant per minute, not one per Event.

A lease asked for `ttl` is granted for `ttl + reuse` (reuse: 5% of the ttl,
at most 60 s) and handed out again while it will outlive `ttl` from now, and
for up to 1,000 objects; an object so lives between `ttl` and `ttl + reuse`.
"""

from __future__ import annotations

import asyncio
import time

REUSE_SECONDS = 60
REUSE_FRACTION = 0.05
MAX_OBJECTS_A_LEASE = 1000


class LeaseManager:
    def __init__(self, grant, *, clock=time.monotonic) -> None:
        """`grant(ttl) -> lease ID` asks etcd (awaitable)."""
        self._grant = grant
        self._clock = clock
        self._lock = asyncio.Lock()
        self._lease = 0
        self._expires = 0.0
        self._objects = 0

    async def lease(self, ttl: int) -> int:
        async with self._lock:
            now = self._clock()
            reuse = min(REUSE_SECONDS, int(ttl * REUSE_FRACTION))
            if (self._lease and now + ttl < self._expires <= now + ttl + reuse
                    and self._objects < MAX_OBJECTS_A_LEASE):
                self._objects += 1
                return self._lease
            self._lease = await self._grant(ttl + reuse)
            self._expires = now + ttl + reuse
            self._objects = 1
            return self._lease
