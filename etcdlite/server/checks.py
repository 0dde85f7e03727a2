"""Request validation done before a request is proposed, with etcd's rules
and errors: what can be decided from the request alone."""

from __future__ import annotations

from etcdlite import errors
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

_SORT_ORDERS = set(pb.RangeRequest.SortOrder.values())
_SORT_TARGETS = set(pb.RangeRequest.SortTarget.values())


def check_range(r: pb.RangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY
    if r.sort_order not in _SORT_ORDERS or r.sort_target not in _SORT_TARGETS:
        raise errors.INVALID_SORT_OPTION


def check_put(r: pb.PutRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY
    if r.ignore_value and r.value:
        raise errors.VALUE_PROVIDED
    if r.ignore_lease and r.lease:
        raise errors.LEASE_PROVIDED


def check_delete(r: pb.DeleteRangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY


def check_txn(r: pb.TxnRequest, max_ops: int) -> None:
    _check_txn_ops(r, max_ops)
    _check_intervals(r.success)
    _check_intervals(r.failure)


def _check_txn_ops(r: pb.TxnRequest, max_ops: int) -> None:
    # As etcd: a nested txn may use only what its parent's widest list left
    # of the budget, and an op with no request is refused.
    widest = max(len(r.compare), len(r.success), len(r.failure))
    if widest > max_ops:
        raise errors.TOO_MANY_OPS
    for c in r.compare:
        if not c.key:
            raise errors.EMPTY_KEY
    for op in (*r.success, *r.failure):
        kind = op.WhichOneof("request")
        if kind == "request_range":
            check_range(op.request_range)
        elif kind == "request_put":
            check_put(op.request_put)
        elif kind == "request_delete_range":
            check_delete(op.request_delete_range)
        elif kind == "request_txn":
            _check_txn_ops(op.request_txn, max_ops - widest)
        else:
            raise errors.KEY_NOT_FOUND


class _Deletes:
    """The key intervals deleted in one branch. As in etcd, an interval is
    [key, range_end) compared as strings, a single key when range_end is
    empty."""

    def __init__(self):
        self.spans: list[tuple[bytes, bytes | None]] = []

    def add(self, key: bytes, range_end: bytes) -> None:
        self.spans.append((key, range_end if range_end else None))

    def covers(self, key: bytes) -> bool:
        for start, end in self.spans:
            if end is None:
                if key == start:
                    return True
            elif start <= key < end:
                return True
        return False


def _check_intervals(ops) -> tuple[set[bytes], _Deletes]:
    """A key may be written once per branch: no key put twice, none both put
    and deleted; the two branches of a nested txn exclude each other."""
    dels = _Deletes()
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            dels.add(op.request_delete_range.key, op.request_delete_range.range_end)
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _check_intervals(op.request_txn.success)
        puts_else, dels_else = _check_intervals(op.request_txn.failure)
        for key in puts_then:
            if key in puts or dels.covers(key):
                raise errors.DUPLICATE_KEY
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or dels.covers(key):
                raise errors.DUPLICATE_KEY
            puts.add(key)
        dels.spans.extend(dels_then.spans)
        dels.spans.extend(dels_else.spans)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        key = op.request_put.key
        if key in puts or dels.covers(key):
            raise errors.DUPLICATE_KEY
        puts.add(key)
    return puts, dels
