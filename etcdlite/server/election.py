"""The Election service (v3electionpb): etcd's election, served by the member.

The candidates of election `name` are the keys under `name/`, one per lease
(`name/<lease in hex>`, its value the candidate's proclamation); the one
created first leads. Campaign answers once the caller's key is the oldest,
with a LeaderKey (name, key, the key's create revision, lease) that Proclaim
and Resign act on while the key still has that create revision. As etcd
(client/v3/concurrency/election.go), whose errors it answers with.
"""

from __future__ import annotations

import asyncio
from collections import deque

from etcdlite.apply import StateMachine
from etcdlite.errors import EtcdError
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.mvccpb.kv_pb2 import Event
from etcdlite.pb.v3electionpb import v3election_pb2 as epb
from etcdlite.pb.v3electionpb import v3election_pb2_grpc
from etcdlite.server.backend import Backend
from etcdlite.server.concurrency import (
    ELECTION_NO_LEADER, ELECTION_NOT_LEADER, MISSING_LEADER_KEY, KeyWatch, Resync, clean_up,
    client_errors, create_revision_is, first_created, key_of, prefix_end, read_range, readable,
    session_lease, txn, wait_deletes,
)


class ElectionService(v3election_pb2_grpc.ElectionServicer):
    def __init__(self, member: Backend):
        self.m = member

    @client_errors
    async def Campaign(self, request, context):
        m = self.m
        lease = await session_lease(m, context, request.lease)
        key = key_of(request.name, lease)
        resp = await txn(m, context, pb.TxnRequest(
            compare=[create_revision_is(key, 0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=request.value, lease=lease))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))]))
        rev = resp.header.revision
        if not resp.succeeded:  # this lease campaigns already: its key, with the new value
            kv = resp.responses[0].response_range.kvs[0]
            rev = kv.create_revision
            if kv.value != request.value:
                try:
                    await self._proclaim(context, key, rev, lease, request.value)
                except BaseException:
                    clean_up(self._resign(context, key, rev))
                    raise
        try:
            await wait_deletes(m, context, request.name + b"/", rev - 1)
        except asyncio.CancelledError:  # given up (cancelled, past its deadline): out of the race
            clean_up(self._resign(context, key, rev))
            raise
        out = epb.CampaignResponse(leader=epb.LeaderKey(name=request.name, key=key, rev=rev, lease=lease))
        out.header.CopyFrom(resp.header)  # the campaign's write, as etcd's
        m.header(out.header)
        return out

    async def _proclaim(self, context, key: bytes, rev: int, lease: int, value: bytes) -> pb.ResponseHeader:
        resp = await txn(self.m, context, pb.TxnRequest(
            compare=[create_revision_is(key, rev)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))]))
        if not resp.succeeded:
            raise ELECTION_NOT_LEADER
        return resp.header

    async def _resign(self, context, key: bytes, rev: int) -> pb.ResponseHeader:
        resp = await txn(self.m, context, pb.TxnRequest(
            compare=[create_revision_is(key, rev)],
            success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))]))
        return resp.header

    @client_errors
    async def Proclaim(self, request, context):
        if not request.HasField("leader"):
            raise MISSING_LEADER_KEY
        leader = request.leader
        # as etcd's: a LeaderKey without a lease gets a new session's lease for the put
        lease = await session_lease(self.m, context, leader.lease)
        out = epb.ProclaimResponse()
        out.header.CopyFrom(await self._proclaim(context, leader.key, leader.rev, lease, request.value))
        self.m.header(out.header)
        return out

    @client_errors
    async def Resign(self, request, context):
        if not request.HasField("leader"):
            raise MISSING_LEADER_KEY
        leader = request.leader
        await session_lease(self.m, context, leader.lease)  # etcd's session, even here
        out = epb.ResignResponse()
        out.header.CopyFrom(await self._resign(context, leader.key, leader.rev))
        self.m.header(out.header)
        return out

    @client_errors
    async def Leader(self, request, context):
        resp = await read_range(self.m, context, first_created(request.name + b"/"))
        if not resp.kvs:
            raise ELECTION_NO_LEADER
        return self._leader(resp.header.revision, resp.kvs[0])

    def _leader(self, revision: int, kv) -> epb.LeaderResponse:
        out = epb.LeaderResponse(kv=kv)
        self.m.header(out.header, revision)
        return out

    async def Observe(self, request, context):
        """The leader's key-value, then each of its puts; after its delete,
        the next leader's (or the first put of a candidate, when there is
        none). A client that reads slowly may miss a value between two it
        gets, never the newest (etcd's promise). As etcd's, the stream ends
        without an error when a read fails (auth refused)."""
        m = self.m
        prefix = request.name + b"/"
        end = prefix_end(prefix)
        try:
            await readable(m, context, prefix, end)
        except EtcdError:
            return
        # one watcher of the whole prefix from this first read on: the reads below come later
        # and their revision says which of its events are older than what they saw
        resp = m.read(StateMachine.range, first_created(prefix))
        with KeyWatch(m, prefix, end, resp.header.revision + 1) as watch:
            backlog: deque = deque()  # (revision, event) taken from the watch, not looked at yet

            async def event():
                while not backlog:
                    backlog.extend(await watch.next())
                return backlog.popleft()

            sent = None  # the key-value last sent
            while True:
                seen = resp.header.revision
                kv = resp.kvs[0] if resp.kvs else None
                try:
                    while kv is None:  # no leader: the first candidate's put
                        revision, ev = await event()
                        if revision > seen and ev.type != Event.DELETE:
                            kv, seen = ev.kv, revision
                    if sent is None or (kv.key, kv.mod_revision) != (sent.key, sent.mod_revision):
                        sent = kv
                        yield self._leader(seen, kv)
                    while True:  # its proclamations, until its delete
                        revision, ev = await event()
                        if revision <= seen or ev.kv.key != sent.key:
                            continue
                        if ev.type == Event.DELETE:
                            break
                        sent, seen = ev.kv, revision
                        yield self._leader(revision, ev.kv)
                except Resync:  # events were lost: read again
                    backlog.clear()
                try:
                    resp = await read_range(m, context, first_created(prefix))
                except EtcdError:
                    return
