"""etcd compaction, as kube-apiserver does it (`--etcd-compaction-interval`,
5 minutes): every interval the store's history older than the previous turn
is compacted, so etcd keeps about one interval of old revisions for watchers
and paged lists to resume from, and no more.

Several apiservers on one etcd agree without talking: the key
`compact_rev_key` holds the revision the last turn saw, and its version
counts turns. A compactor whose count matches the key's takes the turn (a
Txn that bumps the version and writes the current revision), then compacts
to the revision written one turn before; one that loses the Txn adopts the
key's count and tries again next interval. So with any number of
apiservers the history is compacted once an interval (within two when the
one that compacted stops), never to less than one interval back.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from apiserver.etcd3 import Etcd, pb

log = logging.getLogger("apiserver.compactor")

COMPACT_REV_KEY = b"compact_rev_key"
DEFAULT_INTERVAL = 300.0
REQUEST_TIMEOUT = 10.0


class Compactor:
    def __init__(self, etcd: Etcd, interval: float = DEFAULT_INTERVAL) -> None:
        self.etcd = etcd
        self.interval = interval
        self.turns = 0  # the key's version this compactor last knew
        self.revision = 0  # the revision it saw then: what the next turn compacts to

    async def turn(self) -> int | None:
        """One turn: the revision compacted to, or None (another apiserver's turn, or the first)."""
        resp = await self.etcd.kv.Txn(pb.TxnRequest(
            compare=[pb.Compare(key=COMPACT_REV_KEY, target=pb.Compare.VERSION,
                                result=pb.Compare.EQUAL, version=self.turns)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=COMPACT_REV_KEY,
                                                            value=str(self.revision).encode()))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=COMPACT_REV_KEY))]),
            timeout=REQUEST_TIMEOUT)
        previous, self.revision = self.revision, resp.header.revision
        if not resp.succeeded:
            kvs = resp.responses[0].response_range.kvs
            self.turns = kvs[0].version if kvs else 0
            return None
        self.turns += 1
        if not previous:  # nothing seen a turn ago: no history to drop yet
            return None
        try:
            await self.etcd.kv.Compact(pb.CompactionRequest(revision=previous), timeout=REQUEST_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            if "required revision has been compacted" not in (e.details() or ""):
                raise
        return previous

    async def run(self, stop: asyncio.Event) -> None:
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
                return
            except TimeoutError:
                pass
            try:
                compacted = await self.turn()
            except grpc.RpcError as e:
                log.warning("etcd compaction failed (%s: %s); trying again in %gs",
                            e.code().name, e.details(), self.interval)
                continue
            if compacted:
                log.info("compacted etcd's history up to revision %d", compacted)
