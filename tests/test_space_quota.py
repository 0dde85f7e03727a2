"""etcd's space quota (--quota-backend-bytes) and its NOSPACE alarm.

The state machine alone: the capped applier (while NOSPACE is raised, Put, a
Txn with puts and LeaseGrant are refused; deletes, compaction and reads go on),
the quota applier (a write taking the backend to the member's quota is applied
and answered NO_SPACE, and the member told), alarms kept through a snapshot
and the member-local quota not. Then real members: one etcdlite member and a
real etcd 3.4 with the same small quota, filled until refused, and the same
etcdctl session (alarm list, refused writes, Status' errors, /health, the
gateway, compact, defrag, disarm) compared; a 3-member cluster whose member
with the smallest quota raises the alarm as it applies a write past it, then
every member refusing writes, the alarm kept through a restart.
"""

from __future__ import annotations

import http.client
import json
import pickle
import re
import urllib.error
import urllib.request

import grpc
import pytest

from etcdlite import errors, quota
from etcdlite.alarms import AlarmTable, alarm_text
from etcdlite.apply import LEASE_BYTES, Op, StateMachine
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness.etcd_client import Client, error_of
from harness.procs import free_port, run_etcdctl, start_etcdlite_cluster

NOSPACE_TEXT = "etcdserver: mvcc: database space exceeded"
VALUE = b"x" * 2000


def put(key: bytes, value: bytes = b"v") -> tuple:
    return Op.PUT, pb.PutRequest(key=key, value=value).SerializeToString()


def txn(*ops: pb.RequestOp) -> tuple:
    return Op.TXN, pb.TxnRequest(success=list(ops)).SerializeToString()


def alarm(action, member_id: int = 0, kind=pb.NONE) -> tuple:
    return Op.ALARM, pb.AlarmRequest(action=action, memberID=member_id, alarm=kind).SerializeToString()


def results(sm: StateMachine, *commands) -> list:
    return [result for _, result, _, _ in sm.apply_batch(list(commands))]


# ---------------------------------------------------------------------------
# the state machine


def test_the_quota_follows_etcds_flag_and_costs():
    assert quota.quota_limit(0) == 2 * 1024**3
    assert quota.quota_limit(-1) == quota.UNLIMITED
    assert quota.quota_limit(12345) == 12345
    assert quota.quota_limit(9 * 1024**3) == 9 * 1024**3  # kept, with etcd's warning
    t = pb.TxnRequest(
        success=[pb.RequestOp(request_put=pb.PutRequest(key=b"ab", value=b"cd")),
                 pb.RequestOp(request_range=pb.RangeRequest(key=b"ab"))],
        failure=[pb.RequestOp(request_put=pb.PutRequest(key=b"a", value=b"b")),
                 pb.RequestOp(request_put=pb.PutRequest(key=b"a", value=b"b"))])
    assert quota.txn_cost(t) == 2 * (256 + 2)  # the larger branch
    assert quota.txn_cost(pb.TxnRequest(success=[t.success[1]])) == 0
    # unlike etcd 3.4, a nested txn's puts count (or they would get past the alarm)
    assert quota.txn_cost(pb.TxnRequest(failure=[pb.RequestOp(request_txn=t)])) == 2 * (256 + 2)
    assert quota.admits(100, 10**9, 0)  # adding nothing always passes (etcd 3.4.23)
    assert not quota.admits(1000, 1000 - 300, 300) and quota.admits(1000, 1000 - 301, 300)


def test_a_write_past_the_quota_is_applied_answered_nospace_and_flagged():
    sm = StateMachine()
    sm.space_quota = 400  # a put of 100 bytes costs 356
    first, second = results(sm, put(b"a", b"x" * 99), (Op.PUT_VALUE, b"b", b"x" * 99))
    assert first == 2 and second == errors.NO_SPACE
    assert sm.kv.current_revision == 3 and sm.space_exceeded  # applied all the same, as etcd
    assert sm.backend_size() == 200
    sm.space_exceeded = False
    sm.space_quota = 200 + 64  # a lease costs 64
    [grant] = results(sm, (Op.LEASE_GRANT, pb.LeaseGrantRequest(ID=5, TTL=60).SerializeToString()))
    assert grant == errors.NO_SPACE and 5 in sm.leases and sm.space_exceeded
    assert sm.backend_size() == 200 + LEASE_BYTES
    # nothing raised: nothing refused up front
    assert not sm.alarms.nospace


def test_while_nospace_is_raised_writes_that_add_are_refused_and_the_rest_goes_on():
    sm = StateMachine()
    results(sm, put(b"a"), put(b"b"))
    [raised] = results(sm, alarm(pb.AlarmRequest.ACTIVATE, 7, pb.NOSPACE))
    assert list(raised.alarms) == [pb.AlarmMember(memberID=7, alarm=pb.NOSPACE)]
    rng = pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))
    nested = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"c"))])
    refused = results(
        sm, put(b"c"), (Op.PUT_VALUE, b"c", b"v"),
        txn(rng, pb.RequestOp(request_put=pb.PutRequest(key=b"c"))),
        txn(rng, pb.RequestOp(request_txn=nested)),
        (Op.LEASE_GRANT, pb.LeaseGrantRequest(ID=1, TTL=60).SerializeToString()))
    assert refused == [errors.NO_SPACE] * 5
    assert sm.kv.current_revision == 3 and not sm.leases.ids()
    read, deleted, compacted = results(
        sm, txn(rng), (Op.DELETE_RANGE, pb.DeleteRangeRequest(key=b"b").SerializeToString()),
        (Op.COMPACT, pb.CompactionRequest(revision=4).SerializeToString()))
    assert read.responses[0].response_range.kvs[0].value == b"v"
    assert deleted.deleted == 1 and compacted.header.revision == 4
    [listed] = results(sm, alarm(pb.AlarmRequest.GET))
    assert [alarm_text(a) for a in listed.alarms] == ["memberID:7 alarm:NOSPACE "]
    # an alarm activated in the same batch caps the puts after it
    sm2 = StateMachine()
    got = results(sm2, put(b"a"), alarm(pb.AlarmRequest.ACTIVATE, 1, pb.NOSPACE), (Op.PUT_VALUE, b"b", b"v"))
    assert got[0] == 2 and got[2] == errors.NO_SPACE
    # disarmed: writes go on
    [gone] = results(sm, alarm(pb.AlarmRequest.DEACTIVATE, 7, pb.NOSPACE))
    assert len(gone.alarms) == 1 and not sm.alarms.nospace
    assert results(sm, put(b"c")) == [5]
    [again] = results(sm, alarm(pb.AlarmRequest.DEACTIVATE, 7, pb.NOSPACE))
    assert not again.alarms


def test_alarms_outlive_a_snapshot_and_the_member_local_quota_does_not():
    sm = StateMachine()
    sm.space_quota = 1000
    sm.space_exceeded = True
    results(sm, alarm(pb.AlarmRequest.ACTIVATE, 3, pb.NOSPACE), alarm(pb.AlarmRequest.ACTIVATE, 2, pb.NOSPACE))
    restored = pickle.loads(pickle.dumps(sm))
    assert restored.alarms.nospace and len(restored.alarms) == 2
    assert [a.memberID for a in restored.alarms.get()] == [2, 3]
    assert restored.space_quota == quota.UNLIMITED and not restored.space_exceeded
    old = StateMachine()
    del old.alarms  # a snapshot from before alarms
    assert not pickle.loads(pickle.dumps(old)).alarms.nospace


def test_the_alarm_table_is_bounded():
    table = AlarmTable()
    assert table.activate(1, pb.NONE) is None and not len(table)  # NOSPACE and CORRUPT only
    for member in range(5000):
        table.activate(member, pb.NOSPACE)
    assert len(table) == 1024
    assert table.activate(1, pb.NOSPACE) is not None  # already there: found, not added
    assert alarm_text(pb.AlarmMember()) == ""


# ---------------------------------------------------------------------------
# members


def fill(endpoint: str) -> tuple[int, grpc.StatusCode, str]:
    """Put 2000-byte values until refused: (the puts that passed, the
    refusal's code and text)."""
    with Client(endpoint) as c:
        for i in range(5000):
            try:
                c.put(b"k%04d" % i, VALUE)
            except grpc.RpcError as err:
                return i, err.code(), err.details()
    pytest.fail("the quota never refused a put")


def health(port: int) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def gateway(port: int, path: str, body: dict, norm) -> tuple[int, object]:
    """(status, JSON body) of a POST to the gRPC gateway on a client port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body).encode())
        resp = conn.getresponse()
        return resp.status, json.loads(norm(resp.read().decode()))
    finally:
        conn.close()


def member_id(endpoint: str) -> int:
    with Client(endpoint) as c:
        return c.maintenance.Status(pb.StatusRequest(), timeout=10).header.member_id


def status_errors(endpoint: str) -> list[str]:
    with Client(endpoint) as c:
        return list(c.maintenance.Status(pb.StatusRequest(), timeout=10).errors)


def nospace_session(m, metrics_port: int) -> list:
    """Fill `m` until refused, then an etcdctl session around the NOSPACE
    alarm; what it printed, with the member's ID and port normalised."""
    me = member_id(m.endpoint)
    out: list = []

    def norm(text: str) -> str:
        text = "\n".join(line for line in text.splitlines() if not line.startswith('{"level":'))
        text = re.sub(r"took = [0-9.]+[µmn]?s", "took = <T>", text)
        return text.replace(str(me), "<ID>").replace(format(me, "x"), "<HEX>").replace(str(m.client_port), "<PORT>")

    def ctl(*args, stdin=None):
        rc, stdout, stderr = run_etcdctl(m, *args, stdin=stdin)
        out.append((" ".join(args), rc, norm(stdout), norm(stderr)))

    _, code, text = fill(m.endpoint)
    out.append(("refused put", code, text))
    ctl("alarm", "list")
    ctl("put", "a", "b")                    # refused: the alarm
    ctl("lease", "grant", "60")
    ctl("txn", stdin="\nput t1 v\n\n\n")    # a txn with a put
    ctl("get", "k0000", "--keys-only")       # reads and deletes go on
    ctl("del", "k0000")
    out.append(("status errors", [norm(e) for e in status_errors(m.endpoint)]))
    out.append(("health", health(metrics_port)))
    ctl("endpoint", "health")
    for path, body in (("/v3/maintenance/alarm", {}), ("/v3/kv/put", {"key": "YQ==", "value": "Yg=="})):
        out.append((path, *gateway(m.client_port, path, body, norm)))
    with Client(m.endpoint) as c:
        rev = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"k", range_end=b"l"), timeout=10).header.revision
        c.kv.Compact(pb.CompactionRequest(revision=rev), timeout=10)
    ctl("defrag")
    ctl("put", "a", "b")                    # still refused: the alarm is raised
    ctl("alarm", "disarm")
    ctl("alarm", "list")
    ctl("put", "a", "b")
    out.append(("status errors", status_errors(m.endpoint)))
    out.append(("health", health(metrics_port)))
    return out


@pytest.mark.process
def test_a_member_at_its_quota_answers_as_etcd_34(procs, tmp_path, etcd_binaries):
    """The same small quota on etcdlite and on the real etcd 3.4: the put
    that would pass it is refused with etcd's error, the alarm listed by
    etcdctl, Status and /health, writes refused, reads, deletes and
    compaction served, and compact + defrag + disarm let writes in again."""
    sessions = []
    for kind in ("etcd", "etcdlite"):
        port = free_port()
        start = procs.start_real_etcd if kind == "etcd" else procs.start_etcdlite
        m = start(tmp_path / kind, name=f"{kind}q", quota_backend_bytes=300_000,
                  listen_metrics_urls=f"http://127.0.0.1:{port}")
        sessions.append(nospace_session(m, port))
        m.kill()
    ref, got = sessions
    assert ref[0] == ("refused put", grpc.StatusCode.RESOURCE_EXHAUSTED, NOSPACE_TEXT)
    assert ("alarm list", 0, "memberID:<ID> alarm:NOSPACE ", "") in ref
    assert got == ref


@pytest.mark.process
def test_a_cluster_refuses_writes_on_every_member_and_keeps_the_alarm_through_a_restart(procs, tmp_path):
    """m2 has the smallest quota: the writes sent to m0 pass m0's check, and
    the one m2 applies past its own quota has m2 raise its alarm (etcd's
    quota applier), which then caps every member."""
    def smaller_quota_on_m2(members):
        members[2].extra_flags["quota_backend_bytes"] = 100_000

    members = start_etcdlite_cluster(tmp_path, 3, procs, before_launch=smaller_quota_on_m2,
                                     quota_backend_bytes=150_000)
    m0, m1, m2 = members
    ids = [member_id(m.endpoint) for m in members]
    passed, code, text = fill(m0.endpoint)
    assert (code, text) == (grpc.StatusCode.RESOURCE_EXHAUSTED, NOSPACE_TEXT)
    stored = passed * (len(b"k0000") + len(VALUE))
    assert 100_000 - 2256 <= stored < 150_000 - 2256  # m2's quota, not m0's

    def alarm_list(m) -> list[str]:
        rc, out, err = run_etcdctl(m, "alarm", "list")
        assert rc == 0, err
        return out.splitlines()

    assert alarm_list(m0) == [f"memberID:{ids[2]} alarm:NOSPACE "]
    # reads, deletes and compaction anywhere; the store is then far below the quota
    with Client(m1.endpoint) as c:
        assert c.get(b"k0000").kvs[0].value == VALUE
        rev = c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"k", range_end=b"l"), timeout=10).header.revision
        c.kv.Compact(pb.CompactionRequest(revision=rev), timeout=10)
        size = c.maintenance.Status(pb.StatusRequest(), timeout=10).dbSize
        assert size < 1000
    # ... but the replicated alarm still refuses, on every member, what would add
    for m in (m1, m2):
        with Client(m.endpoint) as c:
            assert error_of(lambda: c.put(b"a", b"b")) == (grpc.StatusCode.RESOURCE_EXHAUSTED, NOSPACE_TEXT)
            assert error_of(lambda: c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=10)) == \
                (grpc.StatusCode.RESOURCE_EXHAUSTED, NOSPACE_TEXT)
            put_op = pb.RequestOp(request_put=pb.PutRequest(key=b"t", value=b"v"))
            assert error_of(lambda: c.kv.Txn(pb.TxnRequest(success=[put_op]), timeout=10)) == \
                (grpc.StatusCode.RESOURCE_EXHAUSTED, NOSPACE_TEXT)
            read_op = pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))
            assert c.kv.Txn(pb.TxnRequest(success=[read_op]), timeout=10).succeeded
    # it survives a restart (the alarm is in the replicated state, as in etcd's backend)
    m2.restart(kill=True)
    assert status_errors(m2.endpoint) == [f"memberID:{ids[2]} alarm:NOSPACE "]
    with Client(m2.endpoint) as c:
        assert error_of(lambda: c.put(b"a", b"b")) == (grpc.StatusCode.RESOURCE_EXHAUSTED, NOSPACE_TEXT)
    assert alarm_list(m2) == [f"memberID:{ids[2]} alarm:NOSPACE "]
    # defrag and disarm on one member: writes go on everywhere
    rc, out, err = run_etcdctl(m1, "defrag")
    assert rc == 0, err
    rc, out, err = run_etcdctl(m1, "alarm", "disarm")
    assert (rc, out) == (0, f"memberID:{ids[2]} alarm:NOSPACE \n"), err
    with Client(m2.endpoint) as c:
        assert c.put(b"a", b"b").header.revision > rev
    assert alarm_list(m0) == []
    assert status_errors(m0.endpoint) == []
