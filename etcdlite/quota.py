"""etcd's space quota (--quota-backend-bytes): the sizes, and what a request
is estimated to add.

A request that would take the backend to the quota or past it is refused with
NOSPACE and raises the NOSPACE alarm (etcdlite.alarms); the backend's size is
`StateMachine.backend_size`, what Status reports as dbSize. Checking is O(1)
per put (a Txn: O(its ops)): the size is kept as the store changes, never
walked for.
"""

from __future__ import annotations

import logging

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger("etcdlite")

# etcd's: the quota when --quota-backend-bytes is 0, and the largest it advises
DEFAULT_QUOTA_BYTES = 2 * 1024**3
MAX_QUOTA_BYTES = 8 * 1024**3
# etcd's estimates of what storing a key's metadata and a lease costs beyond their bytes
KV_OVERHEAD = 256
LEASE_OVERHEAD = 64
# no quota: a request is never refused (a negative --quota-backend-bytes, as etcd's)
UNLIMITED = 0


def quota_limit(flag: int) -> int:
    """The quota for --quota-backend-bytes `flag`: 0 means etcd's default,
    a negative value no quota (UNLIMITED); over MAX_QUOTA_BYTES is kept, with
    etcd's warning."""
    if flag < 0:
        log.warning("--quota-backend-bytes %d: the backend quota is disabled", flag)
        return UNLIMITED
    if flag == 0:
        return DEFAULT_QUOTA_BYTES
    if flag > MAX_QUOTA_BYTES:
        log.warning("--quota-backend-bytes %d exceeds the maximum recommended quota %d", flag, MAX_QUOTA_BYTES)
    return flag


def put_cost(key: bytes, value: bytes) -> int:
    return KV_OVERHEAD + len(key) + len(value)


def txn_cost(t: pb.TxnRequest) -> int:
    """As etcd: the puts of the larger branch; unlike etcd 3.4, a nested
    txn's puts count too (there they count for nothing, so a nested put
    would get past the NOSPACE alarm and the quota would bound nothing)."""
    return max(_branch_cost(t.success), _branch_cost(t.failure))


def _branch_cost(ops) -> int:
    cost = 0
    for op in ops:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            put = op.request_put
            cost += KV_OVERHEAD + len(put.key) + len(put.value)
        elif kind == "request_txn":
            cost += txn_cost(op.request_txn)
    return cost


def admits(limit: int, size: int, cost: int) -> bool:
    """etcd 3.4's check: a request that adds nothing always passes; one that
    adds passes while size + cost stays below the quota."""
    return cost == 0 or limit == UNLIMITED or size + cost < limit
