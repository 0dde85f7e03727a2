"""etcd 3.4's corruption checks (its etcdserver/corrupt.go): members compare
the hashes of their MVCC stores (HashKV's) and a CORRUPT alarm is raised for
one that differs.

- The initial check (--experimental-initial-corrupt-check): before serving
  clients, a member hashes its store at its revision and asks each peer for
  its hash at that revision; a peer whose hash differs with the same compact
  revision means this member (or that peer) holds other data: the member does
  not start (`DataInconsistency`, etcd's "... found data inconsistency with
  peers"). Peers that cannot answer (not reachable, behind, compacted past
  it) are logged and skipped, as etcd does.
- The periodic check (--experimental-corrupt-check-time, 0: off): on the
  leader only, as etcd's checkHashKV. It hashes its store at its revision R,
  asks every peer for its hash at R, passes a read barrier and hashes again.
  The leader itself is suspect if its two hashes of the same revisions
  differ; a peer whose revision is past the leader's, whose compact revision
  is past the leader's, or whose hash differs at the same compact revision,
  is. The first suspect gets a CORRUPT alarm, proposed through Raft: every
  member then refuses writes (etcdlite.apply.refused_when_corrupt) until it
  is disarmed.

Hashes travel as peer calls (etcdlite.raft.peer_calls) on the Raft
connections, where etcd uses its peer HTTP port: no client credentials (the
client API's HashKV needs the root role under auth) and nothing added to the
replicated state. A member hashes its store a few thousand keys a turn of
its event loop, serving and applying in between, as etcd's HashByRev walks
its backend beside the writes: a few milliseconds of work for a small store,
about 1.3 s per 1M keys (README).
"""

from __future__ import annotations

import asyncio
import logging
import os

from etcdlite import errors
from etcdlite.alarms import CORRUPT
from etcdlite.apply import Op
from etcdlite.config import host_port
from etcdlite.mvcc import CompactedError, FutureRevisionError
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger("etcdlite")

HASH_KV = "hash_kv"
# a peer's answer is awaited this long (etcd's request timeout, 5 s + two election timeouts)
PEER_TIMEOUT = 5.0
# a peer asked for the hash of a revision it has not applied yet waits this long for it
CATCH_UP = 1.0
# keys hashed in one turn of the event loop (a few milliseconds), under the lock that applying takes
HASH_STEP_KEYS = 4096
# test hook: a member started with this variable set applies every put of
# that key with another value, so its store diverges from its peers'
CORRUPT_KEY_ENV = "ETCDLITE_TEST_CORRUPT_KEY"
NOT_SERVING = errors.EtcdError(errors.STOPPED.code, "etcdlite: the member is starting (it does not serve yet)")


class DataInconsistency(Exception):
    """The initial check found a peer with another hash at the same revision
    and compact revision: the member must not start."""


def _start_hash(machine, revision: int):
    """(the store's hash at `revision` as steps (MVCCStore.hash_kv_steps), its current revision)."""
    return machine.kv.hash_kv_steps(revision, HASH_STEP_KEYS), machine.kv.current_revision


def _hash_step(machine, steps):
    """One step of a hash: None, or what the hash returns once it is done."""
    try:
        next(steps)
    except StopIteration as done:
        return done.value
    except CompactedError:
        raise errors.COMPACTED from None
    except FutureRevisionError:
        raise errors.FUTURE_REV from None
    return None


def _current_revision(machine) -> int:
    return machine.kv.current_revision


def _peer_urls(machine) -> dict[int, list[str]]:
    return machine.members.peer_urls()


class CorruptionChecks:
    """`member`: the Member (its id, cfg, raft, read, read_barrier, propose)."""

    def __init__(self, member) -> None:
        self.m = member
        # peers are answered once this member serves clients (after its own
        # initial check), as etcd serves its peer port only then
        self.answering = False
        member.raft.peer_calls.handle(HASH_KV, self._answer_hash)

    async def hash_kv(self, revision: int) -> tuple[int, int, int]:
        """(hash, compact revision, current revision) at `revision` (0: the
        current one), as etcd's HashByRev answers; the store is hashed
        HASH_STEP_KEYS keys a turn of the event loop, the member serving
        and applying in between (as etcd hashes in a read txn of its own)."""
        m = self.m
        steps, current = m.read(_start_hash, revision)
        while (done := m.read(_hash_step, steps)) is None:
            await asyncio.sleep(0)
        h, compacted, _ = done
        return h, compacted, current

    # --- the peer's side ---------------------------------------------------

    async def _answer_hash(self, revision) -> tuple[int, int, int, int]:
        """A peer's ask for this member's hash at `revision`: (member ID,
        hash, compact revision, current revision). A revision not applied
        here yet is waited for a moment (a follower is often an entry
        behind its leader), then refused as etcd does (FUTURE_REV)."""
        if type(revision) is not int or revision < 0:
            raise errors.EtcdError(errors.FUTURE_REV.code, "etcdlite: a revision must be an int >= 0")
        if not self.answering:
            raise NOT_SERVING
        m = self.m
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP
        while m.read(_current_revision) < revision and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return (m.id, *await self.hash_kv(revision))

    # --- asking the peers --------------------------------------------------

    def _peers(self) -> dict[int, str]:
        """Member ID -> Raft address of every other member (the member table,
        or --initial-cluster before it is filled)."""
        m = self.m
        table = m.read(_peer_urls)
        if not table:
            table = {m.cfg.member_ids[name]: urls for name, urls in m.cfg.initial_cluster.items()}
        return {mid: host_port(urls[0]) for mid, urls in table.items() if urls and mid != m.id}

    async def _ask(self, member_id: int, address: str, revision: int):
        try:
            answer = await self.m.raft.peer_calls.call(address, HASH_KV, revision, PEER_TIMEOUT)
        except errors.EtcdError as err:
            return member_id, None, err
        return member_id, answer, None

    async def peer_hashes(self, revision: int) -> list[tuple[int, tuple | None, errors.EtcdError | None]]:
        """For each peer: (its member ID, its answer (ID, hash, compact
        revision, current revision) or None, the error it gave instead)."""
        peers = self._peers()
        return list(await asyncio.gather(*(self._ask(mid, a, revision) for mid, a in peers.items())))

    # --- the initial check -------------------------------------------------

    async def initial_check(self) -> None:
        """etcd's CheckInitialHashKV; raises DataInconsistency."""
        m = self.m
        log.info("member %x: starting initial corruption check with timeout %gs", m.id, PEER_TIMEOUT)
        h, compacted, revision = await self.hash_kv(0)
        mismatches = 0
        for peer, answer, err in await self.peer_hashes(revision):
            if answer is None:
                if err == errors.FUTURE_REV:
                    log.warning("member %x: cannot check the hash of peer %x at revision %d: "
                                "the peer is lagging behind", m.id, peer, revision)
                elif err == errors.COMPACTED:
                    log.warning("member %x: cannot check the hash of peer %x at revision %d: "
                                "this member is lagging behind", m.id, peer, revision)
                else:
                    log.warning("member %x: hash request to peer %x failed: %s", m.id, peer, err.message)
                continue
            _, peer_hash, peer_compacted, peer_revision = answer
            if peer_hash == h:
                continue
            if peer_compacted == compacted:
                log.warning("member %x: hash %d != peer %x's hash %d (revision %d, peer revision %d, "
                            "compact revision %d)", m.id, h, peer, peer_hash, revision, peer_revision, compacted)
                mismatches += 1
            else:
                log.warning("member %x: cannot check the hash of peer %x: it has another compact revision "
                            "%d (revision %d)", m.id, peer, peer_compacted, revision)
        if mismatches:
            raise DataInconsistency(f"{m.id:x} found data inconsistency with peers")
        log.info("member %x: initial corruption check passed; no corruption", m.id)

    # --- the periodic check ------------------------------------------------

    async def monitor(self, interval: float) -> None:
        """etcd's monitorKVHash: every `interval`, on the leader, check_once."""
        log.info("member %x: enabled corruption checking every %gs", self.m.id, interval)
        while True:
            await asyncio.sleep(interval)
            if not self.m.raft.is_leader:
                continue
            try:
                await self.check_once()
            except errors.EtcdError as err:
                log.warning("member %x: failed to check hash KV: %s", self.m.id, err.message)
            except Exception:
                log.exception("member %x: failed to check hash KV", self.m.id)

    async def check_once(self) -> int | None:
        """etcd's checkHashKV; returns the member a CORRUPT alarm was raised
        for, if any (at most one a check, as etcd)."""
        m = self.m
        h, compacted, revision = await self.hash_kv(0)
        peers = await self.peer_hashes(revision)
        await m.read_barrier()
        h2, compacted2, revision2 = await self.hash_kv(0)
        suspect: int | None = None

        def mismatch(member_id: int, why: str, *args) -> None:
            nonlocal suspect
            log.warning("member %x: corruption check: " + why, m.id, *args)
            if suspect is None:
                suspect = member_id

        if h2 != h and revision2 == revision and compacted2 == compacted:
            mismatch(m.id, "mismatched hashes %d and %d for revision %d", h, h2, revision)
        checked = 0
        for peer, answer, err in peers:
            if answer is None:
                log.warning("member %x: hash request at revision %d to peer %x failed: %s",
                            m.id, revision, peer, err.message)
                continue
            checked += 1
            _, peer_hash, peer_compacted, peer_revision = answer
            if peer_revision > revision2:
                mismatch(peer, "revision %d from member %x, expected at most %d", peer_revision, peer, revision2)
            if peer_compacted > compacted2:
                mismatch(peer, "compact revision %d from member %x, expected at most %d",
                         peer_compacted, peer, compacted2)
            if peer_compacted == compacted and peer_hash != h:
                mismatch(peer, "hash %d at revision %d from member %x, expected hash %d",
                         peer_hash, revision, peer, h)
        log.info("member %x: finished peer corruption check (%d peers checked)", m.id, checked)
        if suspect is not None:
            request = pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=suspect, alarm=CORRUPT)
            await m.propose(Op.ALARM, request)
            log.warning("member %x: alarm CORRUPT raised for member %x", m.id, suspect)
        return suspect


def corrupting(key: bytes):
    """The test hook behind CORRUPT_KEY_ENV: a rewrite of log entries
    (ReplicatedState.rewrite) applying every plain put of `key` with its
    value reversed and marked, so this member's store, and its hash, differ
    from its peers' while its revisions stay the same."""
    def wrong(value: bytes) -> bytes:
        return b"corrupted:" + value[::-1]

    def rewrite(commands):
        out = []
        for command in commands:
            op = command[0]
            if op == Op.PUT_VALUE and command[1] == key:
                command = (op, key, wrong(command[2]))
            elif op == Op.PUT:
                try:
                    put = pb.PutRequest.FromString(command[1])
                except Exception:
                    put = None
                if put is not None and put.key == key:
                    put.value = wrong(put.value)
                    command = (op, put.SerializeToString(), *command[2:])
            out.append(command)
        return out

    return rewrite


def corrupt_key_from_env() -> bytes | None:
    value = os.environ.get(CORRUPT_KEY_ENV)
    return value.encode() if value else None
