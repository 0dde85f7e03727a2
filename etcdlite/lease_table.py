"""The replicated part of leases: which leases exist, their granted TTL and
the keys attached to each. Pure and deterministic like the MVCC store.

When a lease expires is not decided here: that needs a clock, and only the
leader's clock counts (see `etcdlite.lessor`).
"""

from __future__ import annotations


class Lease:
    __slots__ = ("id", "ttl", "keys")

    def __init__(self, lease_id: int, ttl: int):
        self.id = lease_id
        self.ttl = ttl
        self.keys: set[bytes] = set()

    def __getstate__(self):
        return (self.id, self.ttl, self.keys)

    def __setstate__(self, state):
        self.id, self.ttl, self.keys = state


class LeaseTable:
    def __init__(self):
        self._leases: dict[int, Lease] = {}
        # bumped on every grant and revoke, so the leader's expiry loop can
        # tell cheaply whether the set of leases changed
        self.generation = 0

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def ids(self) -> list[int]:
        return list(self._leases)

    def ttls(self) -> dict[int, int]:
        return {lease.id: lease.ttl for lease in self._leases.values()}

    def grant(self, lease_id: int, ttl: int) -> Lease:
        lease = Lease(lease_id, ttl)
        self._leases[lease_id] = lease
        self.generation += 1
        return lease

    def remove(self, lease_id: int) -> Lease:
        lease = self._leases.pop(lease_id)
        self.generation += 1
        return lease

    def attach(self, lease_id: int, key: bytes) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)
