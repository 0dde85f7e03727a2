"""What etcd's Lock and Election services share: etcd serves them by running
its client-side `concurrency` package (sessions, mutexes, elections) against
itself; here the same KV requests go straight to the member (`Backend`).

- `session_lease`: a session's lease (a call without one gets a new 60 s
  lease, never kept alive: etcd's orphaned session).
- `first_created`, `read_range`: the Ranges the package makes, linearizable
  and read-checked under the caller's identity (writes are checked where
  applied, as every KV write: `txn` carries the sender).
- `KeyWatch`: one watcher of the member's hub for one waiting call, woken by
  the hub's fan-out (no polling); `wait_deletes`: etcd's waitDeletes on it.
- `client_errors`: errors reach the caller as etcd's do through its
  embedded client: code Unknown, etcd's text.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque

import grpc

from etcdlite.apply import Op, StateMachine
from etcdlite.errors import EtcdError
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.server.backend import Backend
from etcdlite.server.checks import check_delete, check_txn
from etcdlite.server.rpc import unary
from etcdlite.watch_hub import NOPUT, Watcher

log = logging.getLogger("etcdlite.concurrency")

# concurrency.NewSession's TTL when it grants the session's lease itself
SESSION_TTL = 60
# events, and bytes of their keys and values, a KeyWatch keeps for a call that has
# not taken them; past either it keeps none and the call reads the state again
MAX_PENDING_EVENTS = 256
MAX_PENDING_BYTES = 4 << 20

MISSING_LEADER_KEY = EtcdError(grpc.StatusCode.UNKNOWN, '"leader" field must be provided')
ELECTION_NOT_LEADER = EtcdError(grpc.StatusCode.UNKNOWN, "election: not leader")
ELECTION_NO_LEADER = EtcdError(grpc.StatusCode.UNKNOWN, "election: no leader")
SESSION_EXPIRED = EtcdError(grpc.StatusCode.UNKNOWN, "mutex: session is expired")


class Resync(Exception):
    """A KeyWatch lost events (too many pending, or the member installed a
    snapshot): its consumer reads the state again."""


def client_errors(fn):
    """`unary` for a handler made of KV calls: etcd's embedded client turns
    their gRPC statuses back into plain errors, which reach the caller with
    code Unknown and etcd's text (`etcdserver: requested lease not found`)."""

    @functools.wraps(fn)
    async def handler(self, request, context):
        try:
            return await fn(self, request, context)
        except EtcdError as err:
            raise EtcdError(grpc.StatusCode.UNKNOWN, err.message) from None

    return unary(handler)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes [prefix, end) every key starting with prefix
    (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


def first_created(prefix: bytes) -> pb.RangeRequest:
    """The key under prefix created first (clientv3.WithFirstCreate)."""
    return pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), limit=1,
                           sort_order=pb.RangeRequest.ASCEND, sort_target=pb.RangeRequest.CREATE)


def create_revision_is(key: bytes, revision: int) -> pb.Compare:
    return pb.Compare(key=key, target=pb.Compare.CREATE, result=pb.Compare.EQUAL, create_revision=revision)


async def txn(m: Backend, context, request: pb.TxnRequest) -> pb.TxnResponse:
    """A Txn as the caller's (checked where applied, as KV's)."""
    check_txn(request, m.cfg.max_txn_ops)
    return await m.propose(Op.TXN, request, await m.auth.sender(context))


async def delete(m: Backend, context, key: bytes) -> pb.DeleteRangeResponse:
    request = pb.DeleteRangeRequest(key=key)
    check_delete(request)
    return await m.propose(Op.DELETE_RANGE, request, await m.auth.sender(context))


async def session_lease(m: Backend, context, lease: int) -> int:
    """The lease of the call's session: `lease`, or (0) a new one of
    SESSION_TTL seconds that nobody keeps alive. The lease is not looked up
    here: a put with a missing one fails with etcd's error."""
    if lease:
        return lease
    grant = pb.LeaseGrantRequest(ID=m.lessor.next_id(), TTL=SESSION_TTL)
    resp = await m.propose(Op.LEASE_GRANT, grant, await m.auth.sender(context))
    return resp.ID


async def readable(m: Backend, context, key: bytes, range_end: bytes) -> None:
    """The consistency and auth steps of a linearizable Range of
    [key, range_end) by the caller; what follows reads the local state."""
    await m.read_barrier()
    await m.auth.check_read(context, key, range_end)


async def read_range(m: Backend, context, request: pb.RangeRequest) -> pb.RangeResponse:
    await readable(m, context, request.key, request.range_end)
    return m.read(StateMachine.range, request)


class KeyWatch:
    """A watcher of [key, range_end) from `start` on, in the member's hub, for
    one call that waits: it keeps the events it is sent (at most
    MAX_PENDING_EVENTS and MAX_PENDING_BYTES) until the call takes them
    with `next()`. Made right
    after a read at revision start - 1, in the same step of the event loop
    (no await between), so that nothing after the read is missed: the hub
    skips what a watcher's next_revision says it has seen. `close()` when
    done (a `with` block)."""

    def __init__(self, m: Backend, key: bytes, range_end: bytes, start: int, *, deletes_only: bool = False):
        self.hub = m.hub
        self.pending: deque = deque()  # (revision, pb Event)
        self.pending_bytes = 0
        self.lost = False
        self._wakeup: asyncio.Future | None = None
        # fragment: the hub sends messages (send_events), not wire bytes
        self.watcher = Watcher(0, key, range_end, prev_kv=False, progress_notify=False, fragment=True,
                               filters={NOPUT} if deletes_only else set(), next_revision=start, stream=self)
        self.hub.add(self.watcher)

    def __enter__(self) -> KeyWatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.hub.remove(self.watcher)

    async def next(self) -> list[tuple[int, object]]:
        """The events sent since the last call, waiting for one if none;
        raises Resync if some were lost."""
        while not self.pending and not self.lost:
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        if self.lost:
            self.lost = False
            raise Resync
        events = list(self.pending)
        self._drop()
        return events

    def _drop(self) -> None:
        self.pending.clear()
        self.pending_bytes = 0

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # --- what the hub calls (a Watcher's stream) ---------------------------

    def send_events(self, w: Watcher, events, revision: int) -> None:
        if not self.lost:
            self.pending_bytes += sum(len(ev.kv.key) + len(ev.kv.value) for ev in events)
            if len(self.pending) + len(events) > MAX_PENDING_EVENTS or self.pending_bytes > MAX_PENDING_BYTES:
                self.lost = True
                self._drop()
            else:
                self.pending.extend((revision, ev) for ev in events)
        self._wake()

    def send_progress(self, w: Watcher, revision: int) -> None:
        pass

    def cancel_compacted(self, w: Watcher, compact_revision: int) -> None:
        """The hub's reset (a snapshot replaced the state): the watcher
        leaves the hub; the call reads again and watches anew."""
        self.hub.remove(w)
        self.lost = True
        self._drop()
        self._wake()


def _last_created_before(machine: StateMachine, span: tuple[bytes, bytes, int]):
    """(the key under the span created last at or before max_create_rev, or
    None; the store's revision)."""
    key, range_end, max_create_rev = span
    resp = machine.range(pb.RangeRequest(
        key=key, range_end=range_end, limit=1, max_create_revision=max_create_rev,
        sort_order=pb.RangeRequest.DESCEND, sort_target=pb.RangeRequest.CREATE))
    return (resp.kvs[0].key if resp.kvs else None), resp.header.revision


async def wait_deletes(m: Backend, context, prefix: bytes, max_create_rev: int) -> int:
    """Return once no key under prefix has a create revision at or below
    max_create_rev (etcd's waitDeletes: wait for the delete of the newest
    such key, then look again); returns the revision of the last read."""
    end = prefix_end(prefix)
    while True:
        await readable(m, context, prefix, end)
        key, revision = m.read(_last_created_before, (prefix, end, max_create_rev))
        if key is None:
            return revision
        with KeyWatch(m, key, b"", revision + 1, deletes_only=True) as watch:
            try:
                await watch.next()  # a delete of the key
            except Resync:
                pass


_cleanups: set[asyncio.Task] = set()


def clean_up(coro) -> None:
    """Run `coro` (a write that undoes what a cancelled call left: its lock or
    campaign key) after the call has ended, as etcd's Unlock and Resign with
    the client's own context do."""
    task = asyncio.get_running_loop().create_task(coro)
    _cleanups.add(task)

    def done(task: asyncio.Task) -> None:
        _cleanups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("cleaning up after a cancelled call failed: %s", task.exception())

    task.add_done_callback(done)


def key_of(name: bytes, lease: int) -> bytes:
    """A session's key under a lock's or election's name (etcd: "%s/%x")."""
    return name + b"/" + (b"%x" % lease)

