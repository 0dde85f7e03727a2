"""The Maintenance service: Status, Hash, HashKV, Snapshot, Defragment,
Alarm, MoveLeader."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import time

from etcdlite import errors
from etcdlite.alarms import alarm_text
from etcdlite.apply import Op, StateMachine
from etcdlite.config import API_VERSION, host_port
from etcdlite.mvcc import CompactedError, FutureRevisionError
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.server.backend import Backend
from etcdlite.server.rpc import unary

SNAPSHOT_MAGIC = b"etcdlite-snapshot-v1\n"
SNAPSHOT_CHUNK = 32 * 1024
# how long MoveLeader waits for the new leader
MOVE_LEADER_TIMEOUT = 5.0


def _peer_urls(machine: StateMachine) -> dict[int, list[str]]:
    return machine.members.peer_urls()


def _status_figures(machine: StateMachine) -> tuple[int, int, list[str]]:
    """(the store's revision, the backend's size in bytes, the active alarms as text)."""
    return machine.kv.current_revision, machine.backend_size(), [alarm_text(a) for a in machine.alarms.get()]


def _hash_and_revision(machine: StateMachine) -> tuple[int, int]:
    kv = machine.kv
    return kv.hash(), kv.current_revision


def _hash_kv(machine: StateMachine, revision: int) -> tuple[int, int, int]:
    try:
        return machine.kv.hash_kv(revision)
    except CompactedError:
        raise errors.COMPACTED from None
    except FutureRevisionError:
        raise errors.FUTURE_REV from None


def _snapshot(machine: StateMachine) -> tuple[bytes, int] | None:
    """(the magic line and the pickled machine, the store's revision); None
    while a long command is part-applied (its state is not one the log had:
    etcdlite.raft.apply_pacing)."""
    if machine.kv.writing:
        return None
    data = SNAPSHOT_MAGIC + pickle.dumps(machine, protocol=pickle.HIGHEST_PROTOCOL)
    return data, machine.kv.current_revision


class MaintenanceService(rpc_pb2_grpc.MaintenanceServicer):
    def __init__(self, member: Backend):
        self.m = member

    def _raft_addresses(self) -> dict[int, str]:
        """Member ID -> Raft address, from the member table (or, before it
        is filled, from this member's --initial-cluster)."""
        m = self.m
        table = m.read(_peer_urls)
        if not table:
            table = {m.cfg.member_ids[name]: urls for name, urls in m.cfg.initial_cluster.items()}
        return {mid: host_port(urls[0]) for mid, urls in table.items() if urls}

    def _leader_id(self) -> int:
        leader = self.m.raft.leader
        if leader is None:
            return 0
        return next((mid for mid, address in self._raft_addresses().items() if address == leader), 0)

    @unary
    async def MoveLeader(self, request, context):
        """As etcd: only the leader takes it; answers once the target leads."""
        m = self.m
        if not m.raft.is_leader:
            raise errors.NOT_LEADER
        target = self._raft_addresses().get(request.targetID)
        if target is None:
            raise errors.BAD_LEADER_TRANSFEREE
        deadline = time.monotonic() + MOVE_LEADER_TIMEOUT
        asked = 0.0
        while m.raft.leader != target:
            now = time.monotonic()
            if now > deadline:
                raise errors.LEADER_TRANSFER_TIMEOUT
            if now - asked > 1.0:  # pysyncobj refuses while the target lags
                m.raft.transfer_leadership(target)
                asked = now
            await asyncio.sleep(0.05)
        resp = pb.MoveLeaderResponse()
        m.header(resp.header, m.hub.revision)
        return resp

    @unary
    async def Status(self, request, context):
        m = self.m
        revision, size, alarms = m.read(_status_figures)
        resp = pb.StatusResponse(
            version=API_VERSION,
            dbSize=size,
            dbSizeInUse=size,
            leader=self._leader_id(),
            raftIndex=m.raft.commit_index,
            raftTerm=m.raft.term,
            raftAppliedIndex=m.raft.applied_index,
            isLearner=m.learner,
        )
        # etcd 3.4's errors: no leader, then each alarm
        if not resp.leader:
            resp.errors.append(errors.NO_LEADER.message)
        resp.errors.extend(alarms)
        m.header(resp.header, revision)
        return resp

    @unary
    async def Hash(self, request, context):
        m = self.m
        await m.auth.check_admin(context)  # as etcd: the root role, with auth
        h, revision = m.read(_hash_and_revision)
        resp = pb.HashResponse(hash=h)
        m.header(resp.header, revision)
        return resp

    @unary
    async def HashKV(self, request, context):
        m = self.m
        await m.auth.check_admin(context)
        h, compact_rev, revision = m.read(_hash_kv, request.revision)
        resp = pb.HashKVResponse(hash=h, compact_revision=compact_rev)
        m.header(resp.header, revision)
        return resp

    async def Snapshot(self, request, context):
        """The whole state machine, in etcdlite's own format (etcdctl's
        `snapshot restore` reads bbolt files and cannot load it): a magic
        line, the pickled state padded to 512 bytes, and a sha256 of all
        that, as etcd appends one."""
        m = self.m
        try:
            await m.auth.check_admin(context)
        except errors.EtcdError as err:
            await context.abort(err.code, err.message)
        while (taken := m.read(_snapshot)) is None:
            await asyncio.sleep(0.01)
        data, revision = taken
        data += b"\0" * (-len(data) % 512)
        data += hashlib.sha256(data).digest()
        for offset in range(0, len(data), SNAPSHOT_CHUNK):
            blob = data[offset : offset + SNAPSHOT_CHUNK]
            resp = pb.SnapshotResponse(remaining_bytes=len(data) - offset - len(blob), blob=blob)
            m.header(resp.header, revision)
            yield resp

    @unary
    async def Defragment(self, request, context):
        await self.m.auth.check_admin(context)
        # nothing to defragment: the store lives in memory and in the raft log; etcd 3.4
        # answers without a header
        return pb.DefragmentResponse()

    @unary
    async def Alarm(self, request, context):
        """Every action through Raft, as etcd 3.4 (a GET too: linearizable);
        no auth check, as etcd's; the answer has no header, as 3.4's."""
        return await self.m.propose(Op.ALARM, request)
