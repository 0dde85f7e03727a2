"""The Cluster service: MemberList, MemberAdd, MemberRemove, MemberUpdate, MemberPromote.

Membership lives in the replicated member table (`etcdlite.membership`);
changing it is a command like any other, and the leader then brings Raft's
own configuration in line, one member at a time. Changes need the root role
when auth is on, as etcd's. A member's first peer URL is its Raft address
(pysyncobj's node), so MemberUpdate changes the URLs behind the same first
address only.

A learner (MemberAdd with isLearner; at most one, as etcd) receives the log
without a vote (`etcdlite.raft.learners`) and serves clients little
(`etcdlite.server.learner_gate`). MemberPromote makes it a voter once the
leader sees it in sync, as etcd's isLearnerReady: its match index at least
LEARNER_READY of the leader's last index (asked of the leader, wherever the
call comes in: `learner_ready`); the table changes, then the leader adds it
to Raft's configuration, and the call answers once that is done here.
"""

from __future__ import annotations

import asyncio
import time

from etcdlite import errors
from etcdlite.apply import Op, StateMachine
from etcdlite.config import ConfigError, host_port, member_id
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.raft import NotLeader
from etcdlite.server.backend import Backend
from etcdlite.server.rpc import unary

# how long MemberAdd waits for Raft's configuration to take the new member
CONF_CHANGE_TIMEOUT = 10.0
# a learner is in sync with the leader once its match index is this share of the leader's (etcd's readyPercent)
LEARNER_READY = 0.9
# how long MemberPromote waits for the leader's answer on the learner's progress
READY_CALL_TIMEOUT = 5.0


def _member_list(machine: StateMachine) -> list[pb.Member] | None:
    """The replicated member table's members, None before it is filled."""
    table = machine.members
    return table.list() if table.bootstrapped else None


def _was_removed(machine: StateMachine, removed_id: int) -> bool:
    return removed_id in machine.members.removed


def _bootstrapped(machine: StateMachine) -> bool:
    return machine.members.bootstrapped


class ClusterService(rpc_pb2_grpc.ClusterServicer):
    def __init__(self, member: Backend):
        self.m = member

    async def _applied_removal(self, member_id: int) -> bool:
        deadline = time.monotonic() + CONF_CHANGE_TIMEOUT
        while not self.m.read(_was_removed, member_id):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _members(self) -> list[pb.Member]:
        m = self.m
        cfg = m.cfg
        members = m.read(_member_list)
        if members is not None:
            return members
        # before the first publish is applied: what this member was told
        return sorted(
            (
                pb.Member(
                    ID=cfg.member_ids[name], name=name, peerURLs=urls,
                    clientURLs=cfg.advertise_client_urls if name == cfg.name else [],
                )
                for name, urls in cfg.initial_cluster.items()
            ),
            key=lambda member: member.ID,
        )

    @unary
    async def MemberList(self, request, context):
        resp = pb.MemberListResponse(members=self._members())
        self.m.header(resp.header)  # etcd sets no revision on Cluster responses
        return resp

    @unary
    async def MemberAdd(self, request, context):
        m = self.m
        await m.auth.check_admin(context, maintenance=False)
        try:
            addresses = [host_port(u) for u in request.peerURLs]
        except ConfigError:
            raise errors.MEMBER_BAD_URLS from None
        if not addresses:
            raise errors.MEMBER_BAD_URLS
        await m.read_barrier()
        if not m.read(_bootstrapped):
            raise errors.NOT_CAPABLE
        new = pb.Member(ID=member_id(list(request.peerURLs), m.cfg.initial_cluster_token),
                        peerURLs=request.peerURLs, isLearner=request.isLearner)
        await m.propose(Op.MEMBER_ADD, new)
        # answer once Raft's configuration here holds the new member, as etcd
        # answers once the configuration change is applied
        await _raft_holds(m, addresses[0], learner=request.isLearner)
        resp = pb.MemberAddResponse(member=new, members=self._members())
        m.header(resp.header)
        return resp

    @unary
    async def MemberRemove(self, request, context):
        m = self.m
        await m.auth.check_admin(context, maintenance=False)
        try:
            await m.propose(Op.MEMBER_REMOVE, pb.MemberRemoveRequest(ID=request.ID))
        except errors.EtcdError as err:
            # removing the leader: it may step down before its answer to a
            # forwarded proposal reaches this member, though the removal
            # committed; as etcd, answer by what was applied
            if err is not errors.LEADER_CHANGED or not await self._applied_removal(request.ID):
                raise
        resp = pb.MemberRemoveResponse(members=self._members())
        m.header(resp.header)
        return resp

    @unary
    async def MemberUpdate(self, request, context):
        m = self.m
        await m.auth.check_admin(context, maintenance=False)
        await m.read_barrier()
        current = m.read(_peer_urls_checked, request)
        if not request.peerURLs or _raft_address(request.peerURLs) != _raft_address(current):
            raise errors.RAFT_ADDRESS_CHANGE_UNSUPPORTED
        await m.propose(Op.MEMBER_UPDATE, pb.Member(ID=request.ID, peerURLs=request.peerURLs))
        resp = pb.MemberUpdateResponse(members=self._members())
        m.header(resp.header)
        return resp

    @unary
    async def MemberPromote(self, request, context):
        m = self.m
        await m.auth.check_admin(context, maintenance=False)
        await m.read_barrier()
        # as etcd: the leader's check of the learner's progress first, then
        # the table's (member not found, not a learner) as it is applied
        await m.raft.calls.call("learner_ready", request.ID, READY_CALL_TIMEOUT)
        await m.propose(Op.MEMBER_PROMOTE, pb.MemberPromoteRequest(ID=request.ID))
        address = m.read(_raft_address_of, request.ID)
        if address is not None:
            await _raft_holds(m, address, learner=False)
        resp = pb.MemberPromoteResponse(members=self._members())
        m.header(resp.header)
        return resp


def learner_ready(member: Backend, learner_id: int) -> None:
    """On the leader (a LeaderCalls handler): raises LEARNER_NOT_READY for a
    learner whose log lags the leader's (see LEARNER_READY), NotLeader on
    a member that does not lead; a member that is not a learner held here
    passes (the promotion, applied, answers for it)."""
    raft = member.raft
    if not raft.is_leader:
        raise NotLeader()
    address = member.read(_raft_address_of, learner_id)
    progress = raft.learner_progress(address) if address is not None else None
    if progress is not None:
        match, last = progress
        if match < last * LEARNER_READY:
            raise errors.LEARNER_NOT_READY


async def _raft_holds(m: Backend, address: str, learner: bool) -> None:
    """Wait until Raft's configuration here holds `address` as a voter, or
    as a learner; TIMEOUT after CONF_CHANGE_TIMEOUT."""
    deadline = time.monotonic() + CONF_CHANGE_TIMEOUT
    while address not in (m.raft.learners() if learner else m.raft.peers()):
        if time.monotonic() > deadline:
            raise errors.TIMEOUT
        await asyncio.sleep(0.05)


def _raft_address_of(machine: StateMachine, member_id: int) -> str | None:
    urls = machine.members.peer_urls().get(member_id)
    return _raft_address(urls) if urls else None


def _peer_urls_checked(machine: StateMachine, request: pb.MemberUpdateRequest) -> tuple[str, ...]:
    """The member's peer URLs now, after etcd's checks of the new ones."""
    machine.members.check_update(request.ID, request.peerURLs)
    return machine.members.peer_urls()[request.ID]


def _raft_address(peer_urls) -> str | None:
    try:
        return host_port(peer_urls[0])
    except ConfigError:
        return None
