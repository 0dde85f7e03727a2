"""Bad requests get etcd 3.4's gRPC status code and exact text, and leave the
member serving.

Every expectation here was checked against etcd 3.4 itself: run the file with
ETCDLITE_TEST_TARGET=etcd to point it at /usr/bin/etcd instead.
"""

from __future__ import annotations

import itertools

import grpc
import pytest

from harness.etcd_client import Client, error_of
from harness.procs import start_module_member
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

pytestmark = pytest.mark.process

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EMPTY_KEY = (INVALID, "etcdserver: key is not provided")
KEY_NOT_FOUND = (INVALID, "etcdserver: key not found")
VALUE_PROVIDED = (INVALID, "etcdserver: value is provided")
LEASE_PROVIDED = (INVALID, "etcdserver: lease is provided")
TOO_MANY_OPS = (INVALID, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = (INVALID, "etcdserver: duplicate key given in txn request")
TOO_LARGE = (INVALID, "etcdserver: request is too large")
FUTURE_REV = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
COMPACTED = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
LEASE_NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")

SMALL_MAX_REQUEST_BYTES = 32 * 1024
SMALL_MAX_TXN_OPS = 4

Op = pb.RequestOp
_serial = itertools.count()


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    reg, m = start_module_member(tmp_path_factory, "badinput")
    try:
        with Client(m.endpoint) as client:
            yield client
    finally:
        reg.cleanup()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A member with a small --max-request-bytes and --max-txn-ops."""
    reg, m = start_module_member(tmp_path_factory, "badsmall", max_request_bytes=SMALL_MAX_REQUEST_BYTES,
                          max_txn_ops=SMALL_MAX_TXN_OPS)
    try:
        with Client(m.endpoint) as client:
            yield client
    finally:
        reg.cleanup()


def assert_serves(c):
    key = b"bad/serves/%d" % next(_serial)
    rev = c.put(key, b"ok").header.revision
    got = c.get(key)
    assert [(kv.value, kv.mod_revision) for kv in got.kvs] == [(b"ok", rev)]


def rejected(c, call, expected):
    """`call` fails with `expected`, changes no revision, and the member serves on."""
    before = c.get(b"bad/probe").header.revision
    assert error_of(call) == expected
    assert c.get(b"bad/probe").header.revision == before
    assert_serves(c)


def put_op(key, value=b"", **kw):
    return Op(request_put=pb.PutRequest(key=key, value=value, **kw))


def range_op(key, **kw):
    return Op(request_range=pb.RangeRequest(key=key, **kw))


def delete_op(key, **kw):
    return Op(request_delete_range=pb.DeleteRangeRequest(key=key, **kw))


def txn_op(**kw):
    return Op(request_txn=pb.TxnRequest(**kw))


def txn(c, **kw):
    return lambda: c.kv.Txn(pb.TxnRequest(**kw))


# --- empty keys -----------------------------------------------------------------


@pytest.mark.parametrize("request_of", [
    lambda c: lambda: c.kv.Range(pb.RangeRequest(key=b"")),
    lambda c: lambda: c.kv.Range(pb.RangeRequest(key=b"", range_end=b"z")),
    lambda c: lambda: c.kv.Put(pb.PutRequest(key=b"", value=b"v")),
    lambda c: lambda: c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"", range_end=b"\x00")),
    lambda c: txn(c, compare=[pb.Compare(key=b"", target=pb.Compare.VERSION)]),
    lambda c: txn(c, success=[put_op(b"")]),
    lambda c: txn(c, success=[range_op(b"")]),
    lambda c: txn(c, failure=[delete_op(b"")]),
    lambda c: txn(c, success=[txn_op(failure=[put_op(b"")])]),
    lambda c: txn(c, success=[txn_op(compare=[pb.Compare(key=b"")])]),
], ids=["range", "range-interval", "put", "delete", "txn-compare", "txn-put", "txn-range",
        "txn-delete", "nested-put", "nested-compare"])
def test_empty_key(c, request_of):
    rejected(c, request_of(c), EMPTY_KEY)


def test_txn_op_without_a_request(c):
    # etcd refuses a RequestOp with nothing set, in either branch
    rejected(c, txn(c, success=[Op()]), KEY_NOT_FOUND)
    rejected(c, txn(c, failure=[range_op(b"bad/x"), Op()]), KEY_NOT_FOUND)


# --- put flags -------------------------------------------------------------------


def test_ignore_value_and_ignore_lease_misuse(c):
    c.put(b"bad/ig", b"v")
    rejected(c, lambda: c.put(b"bad/ig", b"v2", ignore_value=True), VALUE_PROVIDED)
    rejected(c, lambda: c.put(b"bad/ig", b"v2", ignore_lease=True, lease=0x1234), LEASE_PROVIDED)
    rejected(c, txn(c, success=[put_op(b"bad/ig", b"v2", ignore_value=True)]), VALUE_PROVIDED)
    # both need the key to exist
    rejected(c, lambda: c.put(b"bad/ig-missing", b"", ignore_value=True), KEY_NOT_FOUND)
    rejected(c, lambda: c.put(b"bad/ig-missing", b"v", ignore_lease=True), KEY_NOT_FOUND)
    rejected(c, txn(c, success=[put_op(b"bad/ig-missing", ignore_value=True)]), KEY_NOT_FOUND)
    assert c.get(b"bad/ig").kvs[0].value == b"v" and c.get(b"bad/ig-missing").count == 0


def test_lease_not_found_on_put(c):
    rejected(c, lambda: c.put(b"bad/lease", b"v", lease=0x5EEDBAD), LEASE_NOT_FOUND)
    rejected(c, txn(c, success=[put_op(b"bad/lease", b"v", lease=0x5EEDBAD)]), LEASE_NOT_FOUND)
    assert c.get(b"bad/lease").count == 0


# --- txn shape -------------------------------------------------------------------


def _ranges(n):
    return [range_op(b"bad/r%d" % i) for i in range(n)]


def test_too_many_txn_ops_default_128(c):
    c.kv.Txn(pb.TxnRequest(success=_ranges(128), failure=_ranges(128)))
    rejected(c, txn(c, success=_ranges(129)), TOO_MANY_OPS)
    rejected(c, txn(c, failure=_ranges(129)), TOO_MANY_OPS)
    compares = [pb.Compare(key=b"bad/c%d" % i, target=pb.Compare.VERSION) for i in range(129)]
    rejected(c, txn(c, compare=compares), TOO_MANY_OPS)
    # a nested txn may use what its parent's widest list leaves of the budget
    c.kv.Txn(pb.TxnRequest(success=[txn_op(success=_ranges(125))] + _ranges(2)))
    rejected(c, txn(c, success=[txn_op(success=_ranges(126))] + _ranges(2)), TOO_MANY_OPS)


def test_too_many_txn_ops_with_max_txn_ops(small):
    c = small
    c.kv.Txn(pb.TxnRequest(success=_ranges(SMALL_MAX_TXN_OPS)))
    rejected(c, txn(c, success=_ranges(SMALL_MAX_TXN_OPS + 1)), TOO_MANY_OPS)
    rejected(c, txn(c, success=[put_op(b"bad/p%d" % i) for i in range(SMALL_MAX_TXN_OPS + 1)]), TOO_MANY_OPS)
    rejected(c, txn(c, success=[txn_op(failure=_ranges(SMALL_MAX_TXN_OPS))]), TOO_MANY_OPS)


@pytest.mark.parametrize("ops", [
    [put_op(b"bad/dup"), put_op(b"bad/dup")],
    [put_op(b"bad/dup/b"), delete_op(b"bad/dup/a", range_end=b"bad/dup/c")],
    [delete_op(b"bad/dup"), put_op(b"bad/dup")],
    [put_op(b"bad/dup"), txn_op(success=[put_op(b"bad/dup")])],
    [txn_op(failure=[put_op(b"bad/dup")]), delete_op(b"bad/dup")],
    [txn_op(success=[put_op(b"bad/dup")]), txn_op(failure=[put_op(b"bad/dup")])],
    [txn_op(success=[txn_op(success=[put_op(b"bad/dup"), put_op(b"bad/dup")])])],
], ids=["put-put", "put-in-deleted-range", "delete-put", "put-nested-put",
        "nested-put-delete", "two-nested-txns", "deep"])
def test_duplicate_key_in_txn(c, ops):
    c.put(b"bad/dup", b"orig")
    rejected(c, txn(c, success=ops), DUPLICATE_KEY)
    rejected(c, txn(c, failure=ops), DUPLICATE_KEY)
    assert c.get(b"bad/dup").kvs[0].value == b"orig"


def test_writes_that_are_not_duplicates(c):
    # the branches of one nested txn exclude each other, deletes may overlap,
    # and a from-key delete (range_end "\0") is no interval to etcd's check
    ok = [
        [txn_op(success=[put_op(b"bad/nd")], failure=[put_op(b"bad/nd")])],
        [delete_op(b"bad/nd"), delete_op(b"bad/n", range_end=b"bad/o")],
        [delete_op(b"bad/nd/", range_end=b"\x00"), put_op(b"bad/nd/x")],
        [put_op(b"bad/nd/a"), delete_op(b"bad/nd/b", range_end=b"bad/nd/c")],
    ]
    for ops in ok:
        assert c.kv.Txn(pb.TxnRequest(success=ops)).succeeded


# --- revisions -------------------------------------------------------------------


def test_future_revision(c):
    now = c.put(b"bad/fut", b"v").header.revision
    assert c.get(b"bad/fut", revision=now).count == 1
    rejected(c, lambda: c.get(b"bad/fut", revision=now + 1), FUTURE_REV)
    rejected(c, txn(c, success=[range_op(b"bad/fut", revision=now + 1000)]), FUTURE_REV)
    rejected(c, lambda: c.kv.Compact(pb.CompactionRequest(revision=now + 1000)), FUTURE_REV)


def test_compacted_revision(c):
    old = c.put(b"bad/cpt", b"1").header.revision
    at = c.put(b"bad/cpt", b"2").header.revision
    c.put(b"bad/cpt", b"3")
    c.kv.Compact(pb.CompactionRequest(revision=at))
    rejected(c, lambda: c.get(b"bad/cpt", revision=old), COMPACTED)
    rejected(c, lambda: c.get(b"bad/", range_end=b"bad0", revision=at - 1), COMPACTED)
    rejected(c, txn(c, success=[range_op(b"bad/cpt", revision=old)]), COMPACTED)
    rejected(c, lambda: c.kv.Compact(pb.CompactionRequest(revision=at)), COMPACTED)
    rejected(c, lambda: c.kv.Compact(pb.CompactionRequest(revision=old)), COMPACTED)


# --- size ------------------------------------------------------------------------


def test_request_too_large_default_limit(c):
    # above --max-request-bytes (1.5 MiB) but below what gRPC accepts (+512 KiB)
    big = b"x" * (1572864 + 1024)
    rejected(c, lambda: c.put(b"bad/big", big), TOO_LARGE)
    rejected(c, txn(c, success=[put_op(b"bad/big", big)]), TOO_LARGE)
    assert c.get(b"bad/big").count == 0


def test_request_too_large_with_max_request_bytes(small):
    c = small
    c.put(b"bad/fits", b"x" * (SMALL_MAX_REQUEST_BYTES - 1024))
    rejected(c, lambda: c.put(b"bad/big", b"x" * (SMALL_MAX_REQUEST_BYTES + 1)), TOO_LARGE)
    rejected(c, lambda: c.put(b"bad/big", b"x" * (SMALL_MAX_REQUEST_BYTES * 8)), TOO_LARGE)
    half = b"x" * (SMALL_MAX_REQUEST_BYTES // 2)
    rejected(c, txn(c, success=[put_op(b"bad/b1", half), put_op(b"bad/b2", half)]), TOO_LARGE)
    assert c.get(b"bad/b", range_end=b"bad/c").count == 0
