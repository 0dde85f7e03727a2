"""The replicated state machine: how a committed command changes the store.

Every member applies the same commands in the same order to a `StateMachine`
and must end in the same state, so nothing here may read a clock, draw a
random number or depend on which member it runs on. Requests that need such
a value (a lease ID, an effective TTL) get it from the proposer, inside the
command.

A command is `(Op, serialized request)`, or `(Op.PUT_VALUE, key, value)` for
a put with nothing but a key and a value (the bulk of a busy member's writes:
nothing to parse when it is applied); with auth enabled, a request carries
its sender: `(Op, serialized request, user, auth revision)` (the Auth
service's commands and the checks: etcdlite.auth_apply). `apply` returns the response (its
header carries only the revision; the server fills in the rest) or an
`EtcdError`, and the events that watchers must see.
"""

from __future__ import annotations

import logging
import time
from enum import IntEnum

import grpc

from etcdlite import errors, quota
from etcdlite.alarms import AlarmTable
from etcdlite.auth_apply import FIRST_AUTH_OP, LAST_AUTH_OP, apply_auth, check_write, sender
from etcdlite.auth_store import AuthStore
from etcdlite.lease_table import LeaseTable
from etcdlite.membership import MemberTable
from etcdlite.mvcc import DELETE, CompactedError, Event, FutureRevisionError, KeyValue, MVCCStore
from etcdlite.mvcc.key_history import to_event
from etcdlite.mvcc.write_txn import STEP_KEYS
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.mvccpb import kv_pb2

log = logging.getLogger("etcdlite.apply")


class Op(IntEnum):
    PUT = 1
    DELETE_RANGE = 2
    TXN = 3
    COMPACT = 4
    LEASE_GRANT = 5
    LEASE_REVOKE = 6
    # a revoke decided by the leader's clock; a lease already gone is no error
    LEASE_EXPIRE = 7
    # changes nothing; a read barrier waits for it to be applied
    BARRIER = 8
    # a keep-alive: changes nothing here, but every member's lease clock
    # restarts the lease's countdown when it is applied
    LEASE_RENEW = 9
    # a member announces its name and client URLs (etcd's "publish")
    MEMBER_PUBLISH = 10
    MEMBER_ADD = 11
    MEMBER_REMOVE = 12
    # a put of a key and a value, without lease, prev_kv or ignore_*: the
    # command is (PUT_VALUE, key, value), no request to serialize and parse
    # (only `StateMachine.apply_batch` takes it)
    PUT_VALUE = 13
    # 14 to 25: the Auth service's (etcdlite.auth_apply.AuthOp)
    # a member's peer URLs replaced (etcd's MemberUpdate)
    MEMBER_UPDATE = 26
    # an AlarmRequest: list, raise or disarm alarms (etcdlite.alarms)
    ALARM = 27
    # a learner made a voting member (etcd's MemberPromote)
    MEMBER_PROMOTE = 28


def kv_to_pb(kv: KeyValue, keys_only: bool = False) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=kv.key,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        value=b"" if keys_only else kv.value,
        lease=kv.lease,
    )


_SORT_KEYS = {
    pb.RangeRequest.KEY: lambda kv: kv.key,
    pb.RangeRequest.VERSION: lambda kv: kv.version,
    pb.RangeRequest.CREATE: lambda kv: kv.create_revision,
    pb.RangeRequest.MOD: lambda kv: kv.mod_revision,
    pb.RangeRequest.VALUE: lambda kv: kv.value,
}


def execute_range(reader, r: pb.RangeRequest) -> pb.RangeResponse:
    """Serve a RangeRequest from `reader` (the store, or a write txn inside
    a Txn) with etcd's rules for limit, sorting, filters and counting."""
    filtered = r.min_mod_revision or r.max_mod_revision or r.min_create_revision or r.max_create_revision
    limit = r.limit
    if r.sort_order != pb.RangeRequest.NONE or filtered:
        limit = 0  # sort or filter everything first, truncate afterwards
    elif limit > 0:
        limit += 1  # one more than asked tells whether there is more
    try:
        if r.count_only and not filtered:
            result = reader.range(r.key, r.range_end, r.revision, 0, count_only=True)
        else:
            result = reader.range(r.key, r.range_end, r.revision, limit)
    except CompactedError:
        raise errors.COMPACTED from None
    except FutureRevisionError:
        raise errors.FUTURE_REV from None
    kvs = result.kvs
    if filtered:
        kvs = [
            kv
            for kv in kvs
            if (not r.min_mod_revision or kv.mod_revision >= r.min_mod_revision)
            and (not r.max_mod_revision or kv.mod_revision <= r.max_mod_revision)
            and (not r.min_create_revision or kv.create_revision >= r.min_create_revision)
            and (not r.max_create_revision or kv.create_revision <= r.max_create_revision)
        ]
    order = r.sort_order
    if order == pb.RangeRequest.NONE and r.sort_target != pb.RangeRequest.KEY:
        order = pb.RangeRequest.ASCEND
    if order != pb.RangeRequest.NONE and not (order == pb.RangeRequest.ASCEND and r.sort_target == pb.RangeRequest.KEY):
        kvs = sorted(kvs, key=_SORT_KEYS[r.sort_target], reverse=order == pb.RangeRequest.DESCEND)
    resp = pb.RangeResponse(count=result.count)
    resp.header.revision = result.revision
    if r.count_only:
        return resp  # as etcd: no kvs, so never `more`
    if r.limit > 0 and len(kvs) > r.limit:
        kvs = kvs[: r.limit]
        resp.more = True
    keys_only = r.keys_only
    resp.kvs.extend([kv_to_pb(kv, keys_only) for kv in kvs])
    return resp


def _compare(c: pb.Compare, kv: KeyValue | None) -> bool:
    target = c.target
    given = c.WhichOneof("target_union")
    if target == pb.Compare.VALUE:
        have, want = kv.value, (c.value if given == "value" else b"")
    elif target == pb.Compare.VERSION:
        have, want = (kv.version if kv else 0), (c.version if given == "version" else 0)
    elif target == pb.Compare.CREATE:
        have, want = (kv.create_revision if kv else 0), (c.create_revision if given == "create_revision" else 0)
    elif target == pb.Compare.MOD:
        have, want = (kv.mod_revision if kv else 0), (c.mod_revision if given == "mod_revision" else 0)
    elif target == pb.Compare.LEASE:
        have, want = (kv.lease if kv else 0), (c.lease if given == "lease" else 0)
    else:
        return True
    result = c.result
    if result == pb.Compare.EQUAL:
        return have == want
    if result == pb.Compare.NOT_EQUAL:
        return have != want
    if result == pb.Compare.GREATER:
        return have > want
    if result == pb.Compare.LESS:
        return have < want
    return True


def events_of(events) -> list[Event]:
    """An applied command's events (see StateMachine.apply_batch): a list,
    or a plain Put's (key, record, previous record), made into its Event."""
    if type(events) is tuple:
        return [to_event(*events)]
    return events


# the hot path's names, looked up once
_PUT = int(Op.PUT)
_PUT_VALUE = int(Op.PUT_VALUE)
_TXN = int(Op.TXN)
_PutRequest = pb.PutRequest.FromString
# a lease's share of the backend's size: its ID and TTL
LEASE_BYTES = 16
# the room left for a put when there is no quota
_NO_QUOTA_ROOM = 1 << 62


class StateMachine:
    """The MVCC store, the lease table, the member table, the auth store and
    the alarms, changed only through `apply`."""

    # Member-local, left out of snapshots: this member's space quota
    # (etcdlite.quota; set by its ReplicatedState), and whether an applied
    # write took the backend to it (the member then raises its NOSPACE alarm).
    # Only answers depend on them, never the state.
    space_quota = quota.UNLIMITED
    space_exceeded = False

    def __init__(self):
        self.kv = MVCCStore()
        self.leases = LeaseTable()
        self.members = MemberTable()
        self.auth = AuthStore()
        self.alarms = AlarmTable()

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("space_quota", None)
        state.pop("space_exceeded", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "auth" not in state:  # a snapshot from before auth
            self.auth = AuthStore()
        if "alarms" not in state:  # ... or before alarms
            self.alarms = AlarmTable()

    def backend_size(self) -> int:
        """The backend's size in bytes, as Status reports it (dbSize) and the
        space quota holds it: the key and value bytes of every record the
        store holds (so compaction shrinks it), and LEASE_BYTES a lease."""
        return self.kv.approximate_size() + LEASE_BYTES * len(self.leases)

    def _put_room(self) -> int:
        """A plain put passes the quota while the store's size + its key and
        value bytes stay below this (etcdlite.quota.admits, inlined)."""
        limit = self.space_quota
        if limit == quota.UNLIMITED:
            return _NO_QUOTA_ROOM
        return limit - quota.KV_OVERHEAD - LEASE_BYTES * len(self.leases)

    def apply_batch(self, commands, pacer=None, start: int = 0, applied: list | None = None):
        """Apply a log entry's commands in order (from `start`, appending to
        `applied`): for each, (op, its result, its events (see `events_of`),
        the store's revision after it). With a `pacer` (see `BatchRun`) a
        long command may stop once the pacer's deadline has passed: a
        BatchRun is returned then, to go on with later.

        The plain put, the bulk of a busy member's writes (a PUT_VALUE, or a
        Put without lease, prev_kv or ignore_*), is applied here without
        `apply`'s dispatch: its result is its revision, as `_plain_put`
        gives it, and its event is left unmade, as (key, record, previous
        record), until a watcher or the lease table needs it (making it was
        a large share of the store's put: measured, benchmarks/why.md)."""
        if applied is None:
            applied = []
        append = applied.append
        kv = self.kv
        put = kv.put_record
        # with auth enabled every command's sender is checked first (`_refusal`)
        guarded = self.auth.enabled
        # a CORRUPT alarm refuses what etcd's corrupt applier does (`refused_when_corrupt`)
        corrupt = self.alarms.corrupt
        # the space quota (`_space_check`, inlined for the plain put)
        capped = self.alarms.nospace
        room = self._put_room()
        size = kv.approximate_size
        for i, command in enumerate(commands[start:] if start else commands, start + 1):
            op = command[0]
            if corrupt and refused_when_corrupt(op, command[1]):
                append((op, errors.CORRUPT, [], kv.current_revision))
                continue
            if op == _PUT_VALUE:
                if guarded:  # sent while auth was disabled: nobody's
                    append((op, errors.USER_EMPTY, [], kv.current_revision))
                    continue
                key, value = command[1], command[2]
            else:
                data = command[1]
                p = None  # a Put's PutRequest, parsed once for all paths
                if len(command) > 2 or guarded or op >= FIRST_AUTH_OP:
                    if FIRST_AUTH_OP <= op <= LAST_AUTH_OP:
                        result, events = apply_auth(self, command)
                        guarded = self.auth.enabled
                        append((op, result, events, kv.current_revision))
                        continue
                    if guarded:
                        refused, p = self._refusal(command)
                        if refused is not None:
                            append((op, refused, [], kv.current_revision))
                            continue
                if op in _STEPPED:
                    steps = self.apply_steps(op, data)
                    if not _go_on(steps, op, self, applied, pacer):
                        return BatchRun(self, commands, applied, pacer, i, steps, op)
                    continue
                if op == _PUT and p is None:
                    try:
                        p = _PutRequest(data)
                    except Exception:
                        pass  # apply() answers for it
                if p is None or p.lease or p.prev_kv or p.ignore_value or p.ignore_lease:
                    result, events = self.apply(op, data, p)
                    append((op, result, events, kv.current_revision))
                    capped, room, corrupt = self.alarms.nospace, self._put_room(), self.alarms.corrupt
                    continue
                key, value = p.key, p.value
            if capped:
                append((op, errors.NO_SPACE, [], kv.current_revision))
                continue
            over = size() + len(key) + len(value) >= room
            record, last = put(key, value)
            events = (key, record, last)
            if last is not None and last[5]:
                self._track_leases(events_of(events))  # the key left its lease
            revision = record[0]
            if over:
                self.space_exceeded = True
                append((op, errors.NO_SPACE, events, revision))
                continue
            append((op, revision, events, revision))
        return applied

    def _refusal(self, command) -> tuple[errors.EtcdError | None, object]:
        """With auth enabled: (etcd's error if the command's sender may not
        make it, else None; a Put's parsed request, else None)."""
        try:
            return None, check_write(self, command[0], command[1], sender(command))
        except errors.EtcdError as err:
            return err, None
        except Exception as exc:  # a request that does not parse: apply() answers for it
            log.debug("checking command %r failed: %r", command[0], exc)
            return None, None

    def apply(self, op: int, data: bytes, parsed=None) -> tuple[object, list[Event]]:
        """One command: (its result, its events). `parsed`: a Put's
        PutRequest when the caller has already parsed `data`."""
        if self.alarms.corrupt and refused_when_corrupt(op, data):
            return errors.CORRUPT, []
        if op in STEPPED_OPS:
            steps = self.apply_steps(op, data)
            try:
                while True:
                    next(steps)
            except StopIteration as done:
                return done.value
        try:
            if op == _PUT:
                put = parsed if parsed is not None else _PutRequest(data)
                over = self._space_check(quota.put_cost(put.key, put.value))
                if put.prev_kv or put.ignore_value or put.ignore_lease:
                    self._check_put(put)
                    return self._answer(self._write(self._put_request, put), over)
                lease = put.lease
                if lease and lease not in self.leases:
                    raise errors.LEASE_NOT_FOUND
                return self._answer(self._plain_put(put.key, put.value, lease), over)
            if op == Op.COMPACT:
                return self._compact(pb.CompactionRequest.FromString(data)), []
            if op == Op.LEASE_GRANT:
                over = self._space_check(quota.LEASE_OVERHEAD)
                return self._answer((self._lease_grant(pb.LeaseGrantRequest.FromString(data)), []), over)
            if op == Op.ALARM:
                return self.alarms.apply(pb.AlarmRequest.FromString(data)), []
            if op == Op.BARRIER:
                return None, []
            if op == Op.MEMBER_PUBLISH:
                self.members.publish(pb.MemberAddResponse.FromString(data))
                return None, []
            if op == Op.MEMBER_ADD:
                self.members.add(pb.Member.FromString(data))
                return None, []
            if op == Op.MEMBER_REMOVE:
                self.members.remove(pb.MemberRemoveRequest.FromString(data).ID)
                return None, []
            if op == Op.MEMBER_UPDATE:
                self.members.update(pb.Member.FromString(data))
                return None, []
            if op == Op.MEMBER_PROMOTE:
                self.members.promote(pb.MemberPromoteRequest.FromString(data).ID)
                return None, []
            if op == Op.LEASE_RENEW:
                return self._lease_renew(pb.LeaseKeepAliveRequest.FromString(data).ID), []
        except errors.EtcdError as err:
            return err, []
        except Exception as exc:
            return _bug(op, exc), []
        return errors.EtcdError(grpc.StatusCode.INTERNAL, f"etcdlite: unknown command {op!r}"), []

    def apply_steps(self, op: int, data: bytes):
        """`apply` for the commands that can touch many keys (STEPPED_OPS:
        DeleteRange, Txn, a lease's revocation), as a generator: it yields
        between parts of the work (a few milliseconds each: `STEP_KEYS`
        keys) and returns (result, events). Between two parts the store's
        write txn is open: reads see the revision before the command, and
        nothing else may be applied."""
        try:
            if op == Op.DELETE_RANGE:
                return (yield from self._write_steps(self._delete_range_steps,
                                                     pb.DeleteRangeRequest.FromString(data)))
            if op == Op.TXN:
                t = pb.TxnRequest.FromString(data)
                over = self._space_check(quota.txn_cost(t))
                return self._answer((yield from self._txn_steps(t)), over)
            if op == Op.LEASE_REVOKE or op == Op.LEASE_EXPIRE:
                return (yield from self._lease_revoke_steps(pb.LeaseRevokeRequest.FromString(data).ID,
                                                            op == Op.LEASE_EXPIRE))
        except errors.EtcdError as err:
            return err, []
        except Exception as exc:
            return _bug(op, exc), []
        return errors.EtcdError(grpc.StatusCode.INTERNAL, f"etcdlite: not a stepped command {op!r}"), []

    # --- the space quota (etcd's capped and quota appliers) ----------------

    def _space_check(self, cost: int) -> bool:
        """For a request adding `cost` bytes (etcdlite.quota): NO_SPACE at
        once while a NOSPACE alarm is raised, if it adds anything; else
        whether it takes the backend to this member's quota, in which case
        it is applied all the same and answered NO_SPACE (`_answer`), as
        etcd's quota applier does (every member applies alike; only the
        answer and this member's alarm depend on its quota)."""
        if cost and self.alarms.nospace:
            raise errors.NO_SPACE
        return not quota.admits(self.space_quota, self.backend_size(), cost)

    def _answer(self, answer: tuple, over: bool) -> tuple:
        if over and not isinstance(answer[0], errors.EtcdError):
            self.space_exceeded = True
            return errors.NO_SPACE, answer[1]
        return answer

    # --- reads -----------------------------------------------------------

    def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        return execute_range(self.kv, r)

    # --- writes ----------------------------------------------------------

    def _write(self, fn, request):
        # Everything that can refuse a request is checked before the write
        # txn opens; the txn is ended whatever happens, so that a bug can
        # never leave the store unable to apply the next command.
        txn = self.kv.write()
        try:
            resp = fn(txn, request)
        finally:
            events = txn.end()
            self._track_leases(events)
        return resp, events

    def _write_steps(self, steps, request):
        """`_write` for a generator `steps(txn, request)`; the lease table
        follows the events a step at a time too, before the txn ends (until
        the command is whole, reads see the revision before it)."""
        txn = self.kv.write()
        tracked = 0
        try:
            resp = yield from steps(txn, request)
            events = txn.events
            while tracked < len(events):
                if tracked:
                    yield
                self._track_leases(events[tracked:tracked + STEP_KEYS])
                tracked += STEP_KEYS
        except BaseException:
            self._track_leases(txn.end()[tracked:])
            raise
        return resp, txn.end()

    def _check_put(self, p: pb.PutRequest) -> None:
        if p.ignore_value or p.ignore_lease:
            if not self.kv.range(p.key).kvs:
                raise errors.KEY_NOT_FOUND
        if p.lease and p.lease not in self.leases:
            raise errors.LEASE_NOT_FOUND

    def _plain_put(self, key: bytes, value: bytes, lease: int) -> tuple[int, list[Event]]:
        """A Put without prev_kv / ignore_* (checked in `apply`; without a
        lease either, `apply_batch` does the same itself): its result is only
        the new revision (the server answers with the header)."""
        kv, prev, events = self.kv.put(key, value, lease)
        if kv.lease or (prev is not None and prev.lease):
            self._track_leases(events)
        return kv.mod_revision, events

    def _put_request(self, txn, p: pb.PutRequest) -> pb.PutResponse:
        """A Put with prev_kv, ignore_value or ignore_lease, in its own txn."""
        resp = pb.PutResponse()
        self._put(txn, p, resp)
        return resp

    def _put(self, txn, p: pb.PutRequest, resp: pb.PutResponse) -> None:
        """A Txn's put, answered in `resp` (the Txn response's own field: no
        message made and copied per put, a fifth of a replayed Txn's cost)."""
        value, lease = p.value, p.lease
        prev = None
        if p.ignore_value or p.ignore_lease or p.prev_kv:
            found = txn.range(p.key).kvs
            prev = found[0] if found else None
            if prev is None and (p.ignore_value or p.ignore_lease):
                raise errors.KEY_NOT_FOUND
            if p.ignore_value:
                value = prev.value
            if p.ignore_lease:
                lease = prev.lease
        kv, _ = txn.put(p.key, value, lease)
        resp.header.revision = kv.mod_revision
        if p.prev_kv and prev is not None:
            resp.prev_kv.CopyFrom(kv_to_pb(prev))

    def _delete_range_steps(self, txn, d: pb.DeleteRangeRequest):
        deleted = yield from txn.delete_range_steps(d.key, d.range_end)
        resp = pb.DeleteRangeResponse(deleted=len(deleted))
        resp.header.revision = txn.revision
        if d.prev_kv:
            for lo in range(0, len(deleted), STEP_KEYS):
                if lo:
                    yield
                resp.prev_kvs.extend([kv_to_pb(kv) for kv in deleted[lo:lo + STEP_KEYS]])
        return resp

    @staticmethod
    def _delete_keys_steps(txn, keys: list[bytes]):
        for lo in range(0, len(keys), STEP_KEYS):
            if lo:
                yield
            for key in keys[lo:lo + STEP_KEYS]:
                txn.delete_range(key, b"")

    def _track_leases(self, events: list[Event]) -> None:
        leases = self.leases
        for ev in events:
            prev = ev.prev_kv
            if ev.type == DELETE:
                if prev is not None and prev.lease:
                    leases.detach(prev.lease, prev.key)
                continue
            if prev is not None and prev.lease and prev.lease != ev.kv.lease:
                leases.detach(prev.lease, prev.key)
            if ev.kv.lease:
                leases.attach(ev.kv.lease, ev.kv.key)

    # --- txn -------------------------------------------------------------

    def _txn_steps(self, t: pb.TxnRequest):
        # Like etcd, every compare (nested txns' too) is evaluated against
        # the state before the txn, and the chosen ops are checked before
        # any of them runs, so a failing txn changes nothing.
        path = self._txn_path(t)
        self._check_txn(t, path)
        resp, events = yield from self._write_steps(lambda txn, req: self._exec_txn(txn, req, path), t)
        resp.header.revision = self.kv.current_revision
        return resp, events

    def _compares_hold(self, t: pb.TxnRequest) -> bool:
        for c in t.compare:
            kvs = self.kv.range(c.key, c.range_end).kvs
            if not kvs:
                # a value compare on a missing key always fails
                if c.target == pb.Compare.VALUE or not _compare(c, None):
                    return False
                continue
            for kv in kvs:
                if not _compare(c, kv):
                    return False
        return True

    def _txn_path(self, t: pb.TxnRequest):
        succeeded = self._compares_hold(t)
        ops = t.success if succeeded else t.failure
        return succeeded, [self._txn_path(op.request_txn) for op in ops if op.HasField("request_txn")]

    def _check_txn(self, t: pb.TxnRequest, path) -> None:
        succeeded, nested = path
        nested_paths = iter(nested)
        current, compacted = self.kv.current_revision, self.kv.compact_revision
        for op in t.success if succeeded else t.failure:
            kind = op.WhichOneof("request")
            if kind == "request_put":
                self._check_put(op.request_put)
            elif kind == "request_range":
                rev = op.request_range.revision
                if rev > current:
                    raise errors.FUTURE_REV
                if 0 < rev < compacted:
                    raise errors.COMPACTED
            elif kind == "request_txn":
                self._check_txn(op.request_txn, next(nested_paths))

    def _exec_txn(self, txn, t: pb.TxnRequest, path):
        """The chosen ops, run in txn (a generator: see `apply_steps`);
        returns the TxnResponse."""
        succeeded, nested = path
        nested_paths = iter(nested)
        resp = pb.TxnResponse(succeeded=succeeded)
        for n, op in enumerate(t.success if succeeded else t.failure, 1):
            if not n % TXN_STEP_OPS:
                yield  # a txn of thousands of ops (--max-txn-ops) is applied a step at a time too
            kind = op.WhichOneof("request")
            out = resp.responses.add()
            if kind == "request_range":
                out.response_range.CopyFrom(execute_range(txn, op.request_range))
            elif kind == "request_put":
                self._put(txn, op.request_put, out.response_put)
            elif kind == "request_delete_range":
                out.response_delete_range.CopyFrom((yield from self._delete_range_steps(txn, op.request_delete_range)))
            elif kind == "request_txn":
                sub = yield from self._exec_txn(txn, op.request_txn, next(nested_paths))
                sub.header.SetInParent()  # etcd sends a nested txn's header empty
                out.response_txn.CopyFrom(sub)
        return resp

    # --- compaction and leases -------------------------------------------

    def _compact(self, c: pb.CompactionRequest) -> pb.CompactionResponse:
        try:
            self.kv.compact(c.revision)
        except CompactedError:
            raise errors.COMPACTED from None
        except FutureRevisionError:
            raise errors.FUTURE_REV from None
        resp = pb.CompactionResponse()
        resp.header.revision = self.kv.current_revision
        return resp

    def _lease_grant(self, g: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        if g.ID in self.leases:
            raise errors.LEASE_EXIST
        self.leases.grant(g.ID, g.TTL)
        resp = pb.LeaseGrantResponse(ID=g.ID, TTL=g.TTL)
        resp.header.revision = self.kv.current_revision
        return resp

    def _lease_renew(self, lease_id: int) -> pb.LeaseKeepAliveResponse:
        lease = self.leases.get(lease_id)
        resp = pb.LeaseKeepAliveResponse(ID=lease_id, TTL=lease.ttl if lease is not None else 0)
        resp.header.revision = self.kv.current_revision
        return resp

    def _lease_revoke_steps(self, lease_id: int, expiry: bool):
        lease = self.leases.get(lease_id)
        if lease is None:
            if expiry:
                return None, []
            raise errors.LEASE_NOT_FOUND
        _, events = yield from self._write_steps(self._delete_keys_steps, sorted(lease.keys))
        self.leases.remove(lease_id)
        resp = pb.LeaseRevokeResponse()
        resp.header.revision = self.kv.current_revision
        return resp, events


# what etcd 3.4's corrupt applier refuses: Put, DeleteRange, Txn, Compaction,
# LeaseGrant and LeaseRevoke (a lease's expiry is a revoke there too)
_CORRUPT_REFUSED = frozenset(int(op) for op in (Op.PUT, Op.PUT_VALUE, Op.DELETE_RANGE, Op.COMPACT,
                                                Op.LEASE_GRANT, Op.LEASE_REVOKE, Op.LEASE_EXPIRE))


def refused_when_corrupt(op: int, data) -> bool:
    """Whether command `op` (its request `data`) is refused while a CORRUPT
    alarm is active. A read-only Txn is not: etcd serves it outside Raft and
    its applier, as Range; alarms, auth, membership and keep-alives go on."""
    if op in _CORRUPT_REFUSED:
        return True
    if op == _TXN:
        try:
            t = pb.TxnRequest.FromString(data)
        except Exception:
            return True
        # etcd's isTxnReadonly: every op of both branches a range (a nested txn is not)
        return not all(o.HasField("request_range") for o in (*t.success, *t.failure))
    return False


def _bug(op, exc: Exception) -> errors.EtcdError:
    # A bug. Every member hits it on the same command, so answering with an
    # error keeps them equal; raising would wedge the apply loop on this
    # entry forever.
    log.exception("applying command %r failed", op)
    return errors.EtcdError(grpc.StatusCode.INTERNAL, f"etcdlite: applying the request failed: {exc!r}")


# ops of a txn in a step of `StateMachine.apply_steps` (a few milliseconds of work)
TXN_STEP_OPS = 256
# commands that `StateMachine.apply_steps` applies (those that can touch any number of keys)
STEPPED_OPS = frozenset({Op.DELETE_RANGE, Op.TXN, Op.LEASE_REVOKE, Op.LEASE_EXPIRE})
_STEPPED = frozenset(int(op) for op in STEPPED_OPS)


class BatchRun:
    """The application of one log entry (a batch of commands) that stopped
    between the steps of a long command (`StateMachine.apply_steps`) once
    its pacer's deadline had passed, to go on from there when `run` is
    called: a DeleteRange of 300k keys takes seconds, and the member's event
    loop, which applies, serves every client meanwhile. What it applies, and
    in what order, does not depend on where it stopped. A pacer is an object
    whose `deadline()` is the time.monotonic() by which this turn's work
    should stop (etcdlite.raft.apply_pacing.ApplyPacer)."""

    __slots__ = ("machine", "commands", "applied", "pacer", "_next", "_steps", "_op")

    def __init__(self, machine: StateMachine, commands, applied: list, pacer, next_command: int, steps, op: int):
        self.machine = machine
        self.commands = commands
        self.applied = applied
        self.pacer = pacer
        self._next = next_command  # the command after the one under way
        self._steps = steps  # the generator of the command under way
        self._op = op

    def run(self):
        """Go on until the end (returns the applied list, as
        `StateMachine.apply_batch`) or until the pacer's deadline passes
        inside a long command again (returns None)."""
        if not _go_on(self._steps, self._op, self.machine, self.applied, self.pacer):
            return None
        rest = self.machine.apply_batch(self.commands, self.pacer, self._next, self.applied)
        if type(rest) is BatchRun:
            self._next, self._steps, self._op = rest._next, rest._steps, rest._op
            return None
        self._steps = None
        return rest

    def abandon(self) -> None:
        """Give up the command under way (the state it was changing was
        replaced by a snapshot); its txn is ended on the store it had."""
        if self._steps is not None:
            self._steps.close()
            self._steps = None


def _go_on(steps, op: int, machine: StateMachine, applied: list, pacer) -> bool:
    """Run a long command's steps until it ends (True: its answer is
    appended to `applied`) or, with a pacer, its deadline passes (False)."""
    try:
        if pacer is None:
            while True:
                next(steps)
        deadline = pacer.deadline()
        while True:
            next(steps)
            if time.monotonic() >= deadline:
                return False
    except StopIteration as done:
        result, events = done.value
    applied.append((op, result, events, machine.kv.current_revision))
    return True
