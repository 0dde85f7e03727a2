"""The Lease service. Grants and revokes go through Raft; keep-alives and
remaining TTLs are the leader's clock (`Lessor`), asked of the leader by a
follower."""

from __future__ import annotations

import logging

from etcdlite import errors
from etcdlite.apply import Op, StateMachine
from etcdlite.config import MAX_LEASE_TTL, MIN_LEASE_TTL
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.quota import LEASE_OVERHEAD
from etcdlite.server.backend import Backend
from etcdlite.server.rpc import unary

log = logging.getLogger("etcdlite.lease")


def _lease_ids(machine: StateMachine):
    return machine.leases.ids(), machine.kv.current_revision


class LeaseService(rpc_pb2_grpc.LeaseServicer):
    def __init__(self, member: Backend):
        self.m = member

    @unary
    async def LeaseGrant(self, request, context):
        m = self.m
        if not m.space.admits(LEASE_OVERHEAD):
            await m.space.refuse()
        if request.TTL > MAX_LEASE_TTL:
            raise errors.LEASE_TTL_TOO_LARGE
        grant = pb.LeaseGrantRequest(
            ID=request.ID or m.lessor.next_id(),
            TTL=max(request.TTL, MIN_LEASE_TTL),
        )
        resp = await m.propose(Op.LEASE_GRANT, grant, await m.auth.sender(context))
        m.header(resp.header)
        return resp

    @unary
    async def LeaseRevoke(self, request, context):
        # checked where applied: the sender must be allowed to write every attached key
        tail = await self.m.auth.sender(context)
        resp = await self.m.propose(Op.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=request.ID), tail)
        self.m.header(resp.header)
        return resp

    async def LeaseKeepAlive(self, request_iterator, context):
        m = self.m
        async for req in request_iterator:
            # the header before the renew (as etcd): its revision is not after the one at
            # which the leader may revoke the lease
            resp = pb.LeaseKeepAliveResponse(ID=req.ID)
            m.header(resp.header, m.hub.revision)
            try:
                resp.TTL = await m.lessor.renew(req.ID)
            except errors.EtcdError as err:
                if err != errors.LEASE_NOT_FOUND:
                    await context.abort(err.code, err.message)
                resp.TTL = 0
            yield resp

    @unary
    async def LeaseTimeToLive(self, request, context):
        m = self.m
        revision = m.hub.revision
        facts = await m.lessor.time_to_live(request.ID, request.keys)
        if facts is None:
            resp = pb.LeaseTimeToLiveResponse(ID=request.ID, TTL=-1)
        else:
            remaining, granted, keys = facts
            if keys and m.auth.needed(context):
                # etcd 3.6's rule (3.4 has none): the attached keys only for who may read them
                for key in keys:
                    await m.auth.check_read(context, key, b"")
            resp = pb.LeaseTimeToLiveResponse(ID=request.ID, TTL=remaining, grantedTTL=granted, keys=keys)
        m.header(resp.header, revision)
        return resp

    @unary
    async def LeaseLeases(self, request, context):
        m = self.m
        await m.read_barrier()
        ids, revision = m.read(_lease_ids)
        resp = pb.LeaseLeasesResponse(leases=[pb.LeaseStatus(ID=i) for i in ids])
        m.header(resp.header, revision)
        return resp
