"""The Lock service (v3lockpb): etcd's mutex, served by the member.

A lock `name` is held by the keys under `name/`, one per lease
(`name/<lease in hex>`): the one created first holds it, the others wait in
create-revision order, each for the delete of the one just before it. Lock
answers once its key is the oldest; Unlock (or the lease's end) deletes it.
As etcd (client/v3/concurrency/mutex.go, 3.5's: a waiter whose own key went
with its lease is told so, where 3.4 answered as if it held the lock).
"""

from __future__ import annotations

from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.v3lockpb import v3lock_pb2, v3lock_pb2_grpc
from etcdlite.server.backend import Backend
from etcdlite.server.concurrency import (
    SESSION_EXPIRED, clean_up, client_errors, create_revision_is, delete, first_created, key_of,
    read_range, session_lease, txn, wait_deletes,
)


class LockService(v3lock_pb2_grpc.LockServicer):
    def __init__(self, member: Backend):
        self.m = member

    @client_errors
    async def Lock(self, request, context):
        m = self.m
        lease = await session_lease(m, context, request.lease)
        prefix = request.name + b"/"
        key = key_of(request.name, lease)
        # put the key unless this lease has it already (then it is reused), and read the holder
        resp = await txn(m, context, pb.TxnRequest(
            compare=[create_revision_is(key, 0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, lease=lease)),
                     pb.RequestOp(request_range=first_created(prefix))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key)),
                     pb.RequestOp(request_range=first_created(prefix))]))
        # the key's create revision: its place in the queue
        my_rev = resp.header.revision
        if not resp.succeeded:
            my_rev = resp.responses[0].response_range.kvs[0].create_revision
        owner = resp.responses[1].response_range.kvs
        header = resp.header
        if owner and owner[0].create_revision != my_rev:
            try:
                await wait_deletes(m, context, prefix, my_rev - 1)
                mine = await read_range(m, context, pb.RangeRequest(key=key))
            except BaseException:
                # given up (cancelled, past its deadline) or failed: not left in the queue
                clean_up(self._unlock_if_mine(context, key, my_rev))
                raise
            if not mine.kvs:  # its lease ended while it waited
                raise SESSION_EXPIRED
            header = mine.header
        out = v3lock_pb2.LockResponse(key=key)
        out.header.CopyFrom(header)
        m.header(out.header)
        return out

    async def _unlock_if_mine(self, context, key: bytes, my_rev: int) -> None:
        # the key this call made or found; not a newer one of the same lease
        await txn(self.m, context, pb.TxnRequest(
            compare=[create_revision_is(key, my_rev)],
            success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))]))

    @client_errors
    async def Unlock(self, request, context):
        resp = await delete(self.m, context, request.key)
        out = v3lock_pb2.UnlockResponse()
        out.header.CopyFrom(resp.header)
        self.m.header(out.header)
        return out
