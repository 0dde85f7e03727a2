"""The KV service over real gRPC against a running member: Range, Put,
DeleteRange, Txn and Compact answer exactly as etcd 3.4 does.

Every expectation here was checked against etcd 3.4 itself: run the file with
ETCDLITE_TEST_TARGET=etcd to point it at /usr/bin/etcd instead.
"""

from __future__ import annotations

import os

import grpc
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from harness.etcd_client import Client, error_of
from harness.procs import Registry, start_module_member
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb

R = pb.RangeRequest
C = pb.Compare
Op = pb.RequestOp


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    reg, m = start_module_member(tmp_path_factory, "kvapi")
    yield m
    reg.cleanup()


@pytest.fixture(scope="module")
def c(member):
    with Client(member.endpoint) as client:
        yield client


def keys(resp) -> list[bytes]:
    return [kv.key for kv in resp.kvs]


def current_revision(c) -> int:
    return c.get(b"\x00kvapi-probe").header.revision


def put_op(key, value=b"", **kw):
    return Op(request_put=pb.PutRequest(key=key, value=value, **kw))


def range_op(key, **kw):
    return Op(request_range=R(key=key, **kw))


def delete_op(key, **kw):
    return Op(request_delete_range=pb.DeleteRangeRequest(key=key, **kw))


def txn_op(**kw):
    return Op(request_txn=pb.TxnRequest(**kw))


# --- Range ------------------------------------------------------------------


@pytest.mark.process
def test_range_single_key_interval_prefix_from_key_and_all(c):
    for k in (b"rg/a", b"rg/b", b"rg/c", b"rg/d", b"rg0"):
        c.put(k, k.upper())

    one = c.get(b"rg/b")
    assert keys(one) == [b"rg/b"] and one.kvs[0].value == b"RG/B"
    assert (one.count, one.more) == (1, False)

    assert keys(c.get(b"rg/b", range_end=b"rg/d")) == [b"rg/b", b"rg/c"]
    prefix = c.get(b"rg/", range_end=b"rg0")  # etcdctl's --prefix for "rg/"
    assert keys(prefix) == [b"rg/a", b"rg/b", b"rg/c", b"rg/d"] and prefix.count == 4

    from_key = c.get(b"rg/c", range_end=b"\x00")
    got = keys(from_key)
    assert got[:3] == [b"rg/c", b"rg/d", b"rg0"]
    assert all(k >= b"rg/c" for k in got) and got == sorted(got)
    assert from_key.count == len(got)

    everything = c.get(b"\x00", range_end=b"\x00")
    got = keys(everything)
    assert {b"rg/a", b"rg/b", b"rg/c", b"rg/d", b"rg0"} <= set(got)
    assert got == sorted(got) and everything.count == len(got)

    missing = c.get(b"rg/zzz")
    assert (list(missing.kvs), missing.count, missing.more) == ([], 0, False)
    # an interval whose end is not above its start is empty
    assert c.get(b"rg/c", range_end=b"rg/a").count == 0


@pytest.mark.process
def test_range_limit_more_and_count(c):
    for i in range(5):
        c.put(b"lim/%d" % i, b"v")
    resp = c.get(b"lim/", range_end=b"lim0", limit=2)
    assert keys(resp) == [b"lim/0", b"lim/1"]
    assert (resp.more, resp.count) == (True, 5)
    resp = c.get(b"lim/", range_end=b"lim0", limit=5)
    assert (len(resp.kvs), resp.more, resp.count) == (5, False, 5)
    resp = c.get(b"lim/", range_end=b"lim0", limit=9)
    assert (len(resp.kvs), resp.more, resp.count) == (5, False, 5)
    resp = c.get(b"lim/", range_end=b"lim0", limit=0)
    assert (len(resp.kvs), resp.more, resp.count) == (5, False, 5)


@pytest.mark.process
def test_range_at_historical_revisions(c):
    r1 = c.put(b"hist/k", b"v1").header.revision
    r2 = c.put(b"hist/k", b"v2").header.revision
    c.put(b"hist/j", b"j1")
    r3 = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"hist/k")).header.revision
    now = current_revision(c)

    at1 = c.get(b"hist/k", revision=r1)
    assert [(kv.value, kv.version, kv.create_revision, kv.mod_revision) for kv in at1.kvs] == [
        (b"v1", 1, r1, r1)]
    assert at1.header.revision == now  # the header names the store's revision, not the one read
    at2 = c.get(b"hist/k", revision=r2)
    assert [(kv.value, kv.version, kv.create_revision, kv.mod_revision) for kv in at2.kvs] == [
        (b"v2", 2, r1, r2)]
    assert c.get(b"hist/k", revision=r3).count == 0
    assert keys(c.get(b"hist/", range_end=b"hist0", revision=r2)) == [b"hist/k"]
    assert keys(c.get(b"hist/", range_end=b"hist0", revision=r3)) == [b"hist/j"]
    assert keys(c.get(b"hist/", range_end=b"hist0", revision=now)) == [b"hist/j"]


# Writes chosen so that key, create, mod, version and value orders all differ
# somewhere: create a<d<b<c, mod a<d<c<b, version a<b<c<d, value c<b<d<a.
SORT_WRITES = [(b"a", b"m"), (b"d", b"z"), (b"b", b"q"), (b"c", b"y"), (b"d", b"b"), (b"d", b"k0"),
               (b"d", b"k"), (b"c", b"y2"), (b"c", b"a"), (b"b", b"c")]
SORT_EXPECTED = {
    R.KEY: b"abcd", R.CREATE: b"adbc", R.MOD: b"adcb", R.VERSION: b"abcd", R.VALUE: b"cbda",
}


@pytest.fixture(scope="module")
def sort_prefix(c):
    for k, v in SORT_WRITES:
        c.put(b"sort/" + k, v)
    return b"sort/"


@pytest.mark.process
@pytest.mark.parametrize("order", [R.NONE, R.ASCEND, R.DESCEND], ids=["none", "ascend", "descend"])
@pytest.mark.parametrize("target", [R.KEY, R.VERSION, R.CREATE, R.MOD, R.VALUE],
                         ids=["key", "version", "create", "mod", "value"])
def test_range_sort_order_and_target(c, sort_prefix, order, target):
    resp = c.get(sort_prefix, range_end=b"sort0", sort_order=order, sort_target=target)
    got = b"".join(k[len(sort_prefix):] for k in keys(resp))
    expected = SORT_EXPECTED[target]
    if order == R.DESCEND:
        expected = expected[::-1]
    # with no order, etcd returns key order for KEY and ascends by any other target
    assert got == expected
    assert resp.count == 4


@pytest.mark.process
def test_sort_then_limit_truncates_the_sorted_list(c, sort_prefix):
    resp = c.get(sort_prefix, range_end=b"sort0", sort_order=R.DESCEND, sort_target=R.MOD, limit=2)
    assert keys(resp) == [b"sort/b", b"sort/c"]
    assert (resp.more, resp.count) == (True, 4)


@pytest.mark.process
def test_serializable_keys_only_count_only(c):
    for i in range(3):
        c.put(b"ro/%d" % i, b"value%d" % i)
    lin = c.get(b"ro/", range_end=b"ro0")
    ser = c.get(b"ro/", range_end=b"ro0", serializable=True)
    assert list(ser.kvs) == list(lin.kvs) and ser.count == 3

    ko = c.get(b"ro/", range_end=b"ro0", keys_only=True)
    assert keys(ko) == [b"ro/0", b"ro/1", b"ro/2"]
    assert all(kv.value == b"" and kv.version == 1 and kv.mod_revision > 0 for kv in ko.kvs)

    co = c.get(b"ro/", range_end=b"ro0", count_only=True)
    assert (list(co.kvs), co.count, co.more) == ([], 3, False)
    # with no kvs sent there is never "more", whatever the limit
    co = c.get(b"ro/", range_end=b"ro0", count_only=True, limit=1)
    assert (list(co.kvs), co.count, co.more) == ([], 3, False)
    ko = c.get(b"ro/", range_end=b"ro0", keys_only=True, limit=2)
    assert (keys(ko), ko.more, ko.count) == ([b"ro/0", b"ro/1"], True, 3)


@pytest.mark.process
def test_min_max_mod_and_create_revision_filters(c):
    c.put(b"flt/a", b"1").header.revision
    rb = c.put(b"flt/b", b"1").header.revision
    rc = c.put(b"flt/c", b"1").header.revision
    ra2 = c.put(b"flt/a", b"2").header.revision  # a: create ra, mod ra2
    span = dict(key=b"flt/", range_end=b"flt0")

    assert keys(c.kv.Range(R(**span, min_mod_revision=rc))) == [b"flt/a", b"flt/c"]
    assert keys(c.kv.Range(R(**span, max_mod_revision=rb))) == [b"flt/b"]
    assert keys(c.kv.Range(R(**span, min_create_revision=rb))) == [b"flt/b", b"flt/c"]
    assert keys(c.kv.Range(R(**span, max_create_revision=rb))) == [b"flt/a", b"flt/b"]
    both = c.kv.Range(R(**span, min_mod_revision=rb, max_mod_revision=rc))
    assert keys(both) == [b"flt/b", b"flt/c"]
    # count is the range's size before filtering, as in etcd
    assert both.count == 3
    limited = c.kv.Range(R(**span, min_mod_revision=rb, limit=1))
    assert (keys(limited), limited.more, limited.count) == ([b"flt/a"], True, 3)
    assert keys(c.kv.Range(R(**span, min_mod_revision=ra2 + 1))) == []


# --- Put ----------------------------------------------------------------------


@pytest.mark.process
def test_put_revisions_and_prev_kv(c):
    first = c.put(b"put/k", b"v1", prev_kv=True)
    assert not first.HasField("prev_kv")
    second = c.put(b"put/k", b"v2", prev_kv=True)
    assert second.header.revision == first.header.revision + 1
    prev = second.prev_kv
    assert (prev.key, prev.value, prev.version, prev.create_revision, prev.mod_revision) == (
        b"put/k", b"v1", 1, first.header.revision, first.header.revision)
    third = c.put(b"put/k", b"v3")  # no prev_kv unless asked
    assert not third.HasField("prev_kv") and third.header.revision == second.header.revision + 1
    kv = c.get(b"put/k").kvs[0]
    assert (kv.value, kv.version, kv.create_revision, kv.mod_revision) == (
        b"v3", 3, first.header.revision, third.header.revision)


@pytest.mark.process
def test_put_with_lease_ignore_value_and_ignore_lease(c):
    lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=300)).ID
    try:
        r1 = c.put(b"pl/k", b"v1", lease=lease)
        assert c.get(b"pl/k").kvs[0].lease == lease
        ttl = c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease, keys=True))
        assert list(ttl.keys) == [b"pl/k"]

        # ignore_lease: new value, the lease stays
        r2 = c.put(b"pl/k", b"v2", ignore_lease=True, prev_kv=True)
        assert r2.prev_kv.value == b"v1" and r2.prev_kv.lease == lease
        kv = c.get(b"pl/k").kvs[0]
        assert (kv.value, kv.lease, kv.version, kv.mod_revision) == (b"v2", lease, 2, r2.header.revision)

        # ignore_value: value stays, lease is replaced (here: dropped)
        r3 = c.put(b"pl/k", b"", ignore_value=True)
        kv = c.get(b"pl/k").kvs[0]
        assert (kv.value, kv.lease, kv.version, kv.mod_revision) == (b"v2", 0, 3, r3.header.revision)
        assert r1.header.revision < r2.header.revision < r3.header.revision
        ttl = c.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease, keys=True))
        assert list(ttl.keys) == []
    finally:
        c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease))
    assert c.get(b"pl/k").kvs[0].value == b"v2"  # detached: the revoke left it alone


# --- DeleteRange --------------------------------------------------------------


@pytest.mark.process
def test_delete_single_range_and_prev_kv(c):
    for k in (b"del/a", b"del/b", b"del/c", b"del/d"):
        c.put(k, b"val-" + k)
    before = current_revision(c)

    one = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"del/a"))
    assert (one.deleted, list(one.prev_kvs), one.header.revision) == (1, [], before + 1)
    assert c.get(b"del/a").count == 0

    some = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"del/a", range_end=b"del/d", prev_kv=True))
    assert some.deleted == 2 and some.header.revision == before + 2
    assert [(kv.key, kv.value, kv.version) for kv in some.prev_kvs] == [
        (b"del/b", b"val-del/b", 1), (b"del/c", b"val-del/c", 1)]
    assert keys(c.get(b"del/", range_end=b"del0")) == [b"del/d"]
    # a deletion is kept in history
    assert keys(c.get(b"del/", range_end=b"del0", revision=before)) == [
        b"del/a", b"del/b", b"del/c", b"del/d"]


@pytest.mark.process
def test_delete_of_nothing_does_not_bump_the_revision(c):
    before = current_revision(c)
    resp = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"del-none/x", prev_kv=True))
    assert (resp.deleted, list(resp.prev_kvs), resp.header.revision) == (0, [], before)
    resp = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"del-none/", range_end=b"del-none0"))
    assert (resp.deleted, resp.header.revision) == (0, before)
    assert current_revision(c) == before


# --- Txn ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def txn_keys(c):
    """cmp/a: value "5", version 2; cmp/b: value "1", leased; nothing else under cmp/."""
    lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600)).ID
    ca = c.put(b"cmp/a", b"4").header.revision
    ma = c.put(b"cmp/a", b"5").header.revision
    cb = c.put(b"cmp/b", b"1", lease=lease).header.revision
    return {"lease": lease, "create_a": ca, "mod_a": ma, "create_b": cb}


def _cmp(key, target, result, range_end=b"", **value):
    return C(key=key, range_end=range_end, target=target, result=result, **value)


def compare_cases(t):
    a, b, missing = b"cmp/a", b"cmp/b", b"cmp/none"
    return [
        ("value == 5", _cmp(a, C.VALUE, C.EQUAL, value=b"5"), True),
        ("value == 4", _cmp(a, C.VALUE, C.EQUAL, value=b"4"), False),
        ("value != 4", _cmp(a, C.VALUE, C.NOT_EQUAL, value=b"4"), True),
        ("value > 4", _cmp(a, C.VALUE, C.GREATER, value=b"4"), True),
        ("value < 4", _cmp(a, C.VALUE, C.LESS, value=b"4"), False),
        ("value < 50 bytewise", _cmp(a, C.VALUE, C.LESS, value=b"50"), True),
        ("version == 2", _cmp(a, C.VERSION, C.EQUAL, version=2), True),
        ("version > 2", _cmp(a, C.VERSION, C.GREATER, version=2), False),
        ("version < 3", _cmp(a, C.VERSION, C.LESS, version=3), True),
        ("create == ", _cmp(a, C.CREATE, C.EQUAL, create_revision=t["create_a"]), True),
        ("create != ", _cmp(a, C.CREATE, C.NOT_EQUAL, create_revision=t["create_a"]), False),
        ("mod == ", _cmp(a, C.MOD, C.EQUAL, mod_revision=t["mod_a"]), True),
        ("mod < ", _cmp(a, C.MOD, C.LESS, mod_revision=t["mod_a"]), False),
        ("mod > 0", _cmp(a, C.MOD, C.GREATER, mod_revision=0), True),
        ("lease == ", _cmp(b, C.LEASE, C.EQUAL, lease=t["lease"]), True),
        ("lease == 0 (unleased)", _cmp(a, C.LEASE, C.EQUAL, lease=0), True),
        ("lease == 0 (leased)", _cmp(b, C.LEASE, C.EQUAL, lease=0), False),
        # a missing key compares as zero, except that a value compare always fails
        ("missing version == 0", _cmp(missing, C.VERSION, C.EQUAL, version=0), True),
        ("missing create == 0", _cmp(missing, C.CREATE, C.EQUAL, create_revision=0), True),
        ("missing mod > 0", _cmp(missing, C.MOD, C.GREATER, mod_revision=0), False),
        ("missing lease == 0", _cmp(missing, C.LEASE, C.EQUAL, lease=0), True),
        ("missing value == ''", _cmp(missing, C.VALUE, C.EQUAL, value=b""), False),
        ("missing value != x", _cmp(missing, C.VALUE, C.NOT_EQUAL, value=b"x"), False),
        # over a range, every key must hold
        ("range version > 0", _cmp(a, C.VERSION, C.GREATER, b"cmp0", version=0), True),
        ("range version == 2", _cmp(a, C.VERSION, C.EQUAL, b"cmp0", version=2), False),
        ("range value > 0", _cmp(a, C.VALUE, C.GREATER, b"cmp0", value=b"0"), True),
        ("range value == 5", _cmp(a, C.VALUE, C.EQUAL, b"cmp0", value=b"5"), False),
        ("range mod < next", _cmp(b"cmp/", C.MOD, C.LESS, b"cmp0", mod_revision=t["create_b"] + 1), True),
        ("from-key create > 0", _cmp(b"cmp/a", C.CREATE, C.GREATER, b"\x00", create_revision=0), True),
        ("empty range version == 0", _cmp(b"cmp/x", C.VERSION, C.EQUAL, b"cmp/z", version=0), True),
        ("empty range value == ''", _cmp(b"cmp/x", C.VALUE, C.EQUAL, b"cmp/z", value=b""), False),
    ]


@pytest.mark.process
def test_txn_compares(c, txn_keys):
    failures = []
    for name, cmp, expected in compare_cases(txn_keys):
        resp = c.kv.Txn(pb.TxnRequest(compare=[cmp], success=[range_op(b"cmp/a")],
                                      failure=[range_op(b"cmp/b")]))
        if resp.succeeded != expected:
            failures.append(name)
        assert len(resp.responses) == 1
        assert keys(resp.responses[0].response_range) == ([b"cmp/a"] if resp.succeeded else [b"cmp/b"])
    assert failures == []


@pytest.mark.process
def test_txn_compares_are_anded(c, txn_keys):
    yes = _cmp(b"cmp/a", C.VALUE, C.EQUAL, value=b"5")
    no = _cmp(b"cmp/a", C.VERSION, C.EQUAL, version=9)
    assert c.kv.Txn(pb.TxnRequest(compare=[yes, yes])).succeeded
    assert not c.kv.Txn(pb.TxnRequest(compare=[yes, no])).succeeded
    assert not c.kv.Txn(pb.TxnRequest(compare=[no, yes])).succeeded
    assert c.kv.Txn(pb.TxnRequest()).succeeded  # no compare: success


def _branch_ops(p: bytes):
    """put, range, delete, nested txn, range: all under the prefix p."""
    end = p[:-1] + b"0"
    return [
        put_op(p + b"new", b"n", prev_kv=True),
        range_op(p, range_end=end),
        delete_op(p + b"old", prev_kv=True),
        txn_op(compare=[_cmp(p + b"old", C.VERSION, C.EQUAL, version=1)],
               success=[put_op(p + b"nested", b"yes")],
               failure=[put_op(p + b"nested", b"no")]),
        range_op(p, range_end=end),
    ]


@pytest.mark.process
@pytest.mark.parametrize("take_success", [True, False], ids=["success", "failure"])
def test_txn_branch_with_put_range_delete_and_nested_txn(c, take_success):
    base = b"brS" if take_success else b"brF"
    then_p, else_p = base + b"/then/", base + b"/else/"
    mine, other = (then_p, else_p) if take_success else (else_p, then_p)
    c.put(then_p + b"old", b"o")
    c.put(else_p + b"old", b"o")
    c.put(base + b"/gate", b"open" if take_success else b"shut")
    before = current_revision(c)
    resp = c.kv.Txn(pb.TxnRequest(
        compare=[_cmp(base + b"/gate", C.VALUE, C.EQUAL, value=b"open")],
        success=_branch_ops(then_p), failure=_branch_ops(else_p)))
    assert resp.succeeded == take_success
    rev = before + 1
    assert resp.header.revision == rev
    put, rng, dele, nested, rng2 = resp.responses
    assert put.response_put.header.revision == rev and not put.response_put.HasField("prev_kv")
    # reads inside the txn see the txn's earlier writes, at the txn's revision
    assert rng.response_range.header.revision == rev
    assert keys(rng.response_range) == [mine + b"new", mine + b"old"]
    assert rng.response_range.kvs[0].mod_revision == rev
    assert (dele.response_delete_range.deleted, dele.response_delete_range.header.revision) == (1, rev)
    assert [kv.value for kv in dele.response_delete_range.prev_kvs] == [b"o"]
    # nested compares see the state before the txn, where old still existed
    sub = nested.response_txn
    assert sub.succeeded
    assert sub.HasField("header") and sub.header.revision == 0  # etcd leaves it empty
    assert sub.responses[0].response_put.header.revision == rev
    assert keys(rng2.response_range) == [mine + b"nested", mine + b"new"]
    assert [kv.value for kv in rng2.response_range.kvs] == [b"yes", b"n"]
    # one revision for the whole txn; the branch not taken did nothing
    assert current_revision(c) == rev
    assert c.get(mine + b"nested").kvs[0].mod_revision == rev
    assert keys(c.get(other, range_end=other[:-1] + b"0")) == [other + b"old"]


@pytest.mark.process
def test_txn_read_only_and_no_op_writes_keep_the_revision(c):
    c.put(b"tro/k", b"v")
    before = current_revision(c)
    ro = c.kv.Txn(pb.TxnRequest(success=[range_op(b"tro/k"), range_op(b"tro/none")]))
    assert ro.header.revision == before
    assert [r.response_range.header.revision for r in ro.responses] == [before, before]
    noop = c.kv.Txn(pb.TxnRequest(success=[delete_op(b"tro/none"), range_op(b"tro/k")]))
    assert noop.header.revision == before
    assert noop.responses[0].response_delete_range.header.revision == before
    assert current_revision(c) == before
    # a historical read inside a txn
    old = c.put(b"tro/k", b"v2").header.revision - 1
    hist = c.kv.Txn(pb.TxnRequest(success=[range_op(b"tro/k", revision=old)]))
    assert [kv.value for kv in hist.responses[0].response_range.kvs] == [b"v"]


@pytest.mark.process
def test_txn_failing_a_check_in_the_chosen_branch_changes_nothing(c):
    c.put(b"tchk/k", b"orig")
    before = current_revision(c)
    bad_lease = pb.TxnRequest(success=[put_op(b"tchk/k", b"new"), put_op(b"tchk/j", b"x", lease=0x7E57BAD)])
    assert error_of(lambda: c.kv.Txn(bad_lease)) == (
        grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    future = pb.TxnRequest(success=[put_op(b"tchk/k", b"new"), range_op(b"tchk/k", revision=before + 100)])
    assert error_of(lambda: c.kv.Txn(future)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
    ignore = pb.TxnRequest(success=[put_op(b"tchk/k", b"new"), put_op(b"tchk/none", ignore_value=True)])
    assert error_of(lambda: c.kv.Txn(ignore)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key not found")
    nested = pb.TxnRequest(success=[put_op(b"tchk/k", b"new"),
                                    txn_op(success=[put_op(b"tchk/j", b"x", lease=0x7E57BAD)])])
    assert error_of(lambda: c.kv.Txn(nested)) == (
        grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
    assert current_revision(c) == before
    assert c.get(b"tchk/k").kvs[0].value == b"orig" and c.get(b"tchk/j").count == 0
    # the same problem in the branch not taken is no problem
    ok = c.kv.Txn(pb.TxnRequest(compare=[_cmp(b"tchk/k", C.VALUE, C.EQUAL, value=b"orig")],
                                success=[put_op(b"tchk/k", b"new")],
                                failure=[put_op(b"tchk/j", b"x", lease=0x7E57BAD)]))
    assert ok.succeeded and ok.header.revision == before + 1
    assert c.get(b"tchk/k").kvs[0].value == b"new"


# --- Compact and headers ------------------------------------------------------


@pytest.mark.process
def test_compact_then_historical_reads(c):
    r1 = c.put(b"cpt/k", b"v1").header.revision
    r2 = c.put(b"cpt/k", b"v2").header.revision
    r3 = c.put(b"cpt/k", b"v3").header.revision
    resp = c.kv.Compact(pb.CompactionRequest(revision=r2))
    assert resp.header.revision == r3
    compacted = (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
    assert error_of(lambda: c.get(b"cpt/k", revision=r1)) == compacted
    assert [kv.value for kv in c.get(b"cpt/k", revision=r2).kvs] == [b"v2"]  # at the compaction point
    assert [kv.value for kv in c.get(b"cpt/k", revision=r3).kvs] == [b"v3"]
    assert error_of(lambda: c.kv.Txn(pb.TxnRequest(success=[range_op(b"cpt/k", revision=r1)]))) == compacted
    assert error_of(lambda: c.kv.Compact(pb.CompactionRequest(revision=r2))) == compacted
    assert error_of(lambda: c.kv.Compact(pb.CompactionRequest(revision=r1))) == compacted
    assert current_revision(c) == r3  # compaction is no write


@pytest.mark.process
def test_every_kv_response_header_names_cluster_member_and_term(c, member):
    status = c.maintenance.Status(pb.StatusRequest())
    members = c.cluster.MemberList(pb.MemberListRequest())
    assert [m.ID for m in members.members] == [status.header.member_id]
    rev = c.put(b"hdr/k", b"v").header.revision
    headers = [
        c.get(b"hdr/k").header,
        c.put(b"hdr/k", b"v").header,
        c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"hdr/k")).header,
        c.kv.Txn(pb.TxnRequest(success=[put_op(b"hdr/k", b"v")])).header,
        c.kv.Compact(pb.CompactionRequest(revision=rev)).header,
    ]
    for h in headers:
        assert h.cluster_id == status.header.cluster_id != 0
        assert h.member_id == status.header.member_id != 0
        assert h.raft_term >= 1 and h.raft_term == status.header.raft_term
        assert h.revision >= rev
    # a plain put's response on the wire is exactly protobuf's encoding of it
    # (etcdlite puts that one together from bytes)
    raw = c.channel.unary_unary("/etcdserverpb.KV/Put")(pb.PutRequest(key=b"hdr/k", value=b"w").SerializeToString())
    resp = pb.PutResponse.FromString(raw)
    assert resp.header.revision > rev and resp.header.member_id == status.header.member_id
    assert raw == resp.SerializeToString(deterministic=True)


@pytest.mark.process
@pytest.mark.skipif(os.environ.get("ETCDLITE_TEST_TARGET") == "etcd", reason="etcdlite's server option")
def test_kv_and_watch_on_the_grpcio_server(tmp_path):
    """--experimental-grpc-server=grpcio runs the KV service's coroutine
    methods and the Watch generator (etcdlite's own server runs the writes as
    callback handlers and Watch writing to its stream): the same answers."""
    reg = Registry()
    try:
        m = reg.start_etcdlite(tmp_path, name="grpcio0", experimental_grpc_server="grpcio",
                               max_request_bytes=64 * 1024)
        with Client(m.endpoint) as c:
            raw = c.channel.unary_unary("/etcdserverpb.KV/Put")(pb.PutRequest(key=b"g/k", value=b"1").SerializeToString())
            first = pb.PutResponse.FromString(raw)
            assert raw == first.SerializeToString(deterministic=True) and first.header.member_id
            second = c.put(b"g/k", b"2", prev_kv=True)
            assert second.header.revision == first.header.revision + 1 and second.prev_kv.value == b"1"
            txn = c.kv.Txn(pb.TxnRequest(
                compare=[pb.Compare(key=b"g/k", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"2")],
                success=[put_op(b"g/k", b"3")]))
            assert txn.succeeded and txn.header.revision == second.header.revision + 1
            assert c.get(b"g/k").kvs[0].value == b"3"
            assert c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"g/k")).deleted == 1
            assert error_of(lambda: c.put(b"", b"v")) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                            "etcdserver: key is not provided")
            code, _ = error_of(lambda: c.put(b"g/big", b"x" * (64 * 1024 + 10)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            c.kv.Compact(pb.CompactionRequest(revision=txn.header.revision))
            # a watch from history (before the compaction point: cancelled) and one from now
            requests = iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(
                                 key=b"g/k", start_revision=first.header.revision)),
                             pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"g/w"))])
            responses = c.watch.Watch(requests, timeout=10)
            got = [next(responses) for _ in range(3)]  # created, compacted cancel, created
            assert got[0].created and got[2].created
            assert got[1].canceled and got[1].compact_revision == txn.header.revision
            rev = c.put(b"g/w", b"x").header.revision
            event = next(responses)
            assert (event.watch_id, [(e.kv.key, e.kv.mod_revision) for e in event.events]) == \
                (got[2].watch_id, [(b"g/w", rev)])
            responses.cancel()
    finally:
        reg.cleanup()


@given(st.integers(min_value=0, max_value=2**64 - 1))
@example(0x7F)
@example(0x80)
@example(0x3FFF)
@example(0x4000)
@example(0x1FFFFF)
@example(0x200000)
@example(0xFFFFFFF)
@example(0x10000000)
def test_varint_is_protobufs_encoding(n):
    """Responses put together from bytes (plain puts, watch events) carry
    revisions and lengths as varints written by watch_hub.varint: they must
    be protobuf's bytes for every value, past the short forms included."""
    from google.protobuf.internal.encoder import _VarintBytes

    from etcdlite.watch_hub import varint

    assert varint(n) == _VarintBytes(n)
