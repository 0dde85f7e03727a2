"""etcd 3.4's corruption checks and its CORRUPT alarm.

The state machine alone: while a CORRUPT alarm is active, what etcd's
corrupt applier refuses (Put, DeleteRange, a Txn that writes, Compaction,
LeaseGrant, LeaseRevoke, a lease's expiry) is answered `etcdserver: corrupt
cluster` (DATA_LOSS) and the rest goes on; the alarm outlives a snapshot; the
test hook that makes a member diverge changes the hash and not the revisions.
Then real members: a client-activated CORRUPT alarm on etcdlite and on a real
etcd 3.4, the same etcdctl session compared; and a 3-member cluster, one of
whose members applies one key's puts with another value (the test hook):
the leader's periodic check raises nothing while the stores agree, then
raises CORRUPT for that member once they do not, every member refuses writes,
and the initial check stops the diverged member at its restart with etcd's
message while a healthy member passes it.
"""

from __future__ import annotations

import pickle
import re

import grpc
import pytest
from test_space_quota import health

from etcdlite import errors
from etcdlite.alarms import AlarmTable
from etcdlite.apply import Op, StateMachine
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.server.corruption import CORRUPT_KEY_ENV, corrupting
from harness.etcd_client import Client, error_of, wait_until
from harness.procs import free_port, run_etcdctl, start_etcdlite_cluster

CORRUPT = (grpc.StatusCode.DATA_LOSS, "etcdserver: corrupt cluster")


def command(op: Op, request) -> tuple:
    return int(op), request.SerializeToString()


def alarm(action, member_id: int, kind=pb.CORRUPT) -> tuple:
    return command(Op.ALARM, pb.AlarmRequest(action=action, memberID=member_id, alarm=kind))


def results(sm: StateMachine, *commands) -> list:
    return [result for _, result, _, _ in sm.apply_batch(list(commands))]


PUT_OP = pb.RequestOp(request_put=pb.PutRequest(key=b"t", value=b"v"))
READ_OP = pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))


# ---------------------------------------------------------------------------
# the state machine


def test_a_corrupt_alarm_refuses_what_etcds_corrupt_applier_refuses_until_disarmed():
    sm = StateMachine()
    results(sm, command(Op.PUT, pb.PutRequest(key=b"a", value=b"1")),
            command(Op.LEASE_GRANT, pb.LeaseGrantRequest(ID=7, TTL=60)))
    raised = results(sm, alarm(pb.AlarmRequest.ACTIVATE, 5))[0]
    assert list(raised.alarms) == [pb.AlarmMember(memberID=5, alarm=pb.CORRUPT)]
    refused = results(
        sm,
        command(Op.PUT, pb.PutRequest(key=b"a", value=b"2")),
        (int(Op.PUT_VALUE), b"a", b"3"),
        command(Op.DELETE_RANGE, pb.DeleteRangeRequest(key=b"a")),
        command(Op.TXN, pb.TxnRequest(success=[PUT_OP])),
        command(Op.TXN, pb.TxnRequest(success=[READ_OP], failure=[pb.RequestOp(request_txn=pb.TxnRequest())])),
        command(Op.COMPACT, pb.CompactionRequest(revision=1)),
        command(Op.LEASE_GRANT, pb.LeaseGrantRequest(ID=8, TTL=60)),
        command(Op.LEASE_REVOKE, pb.LeaseRevokeRequest(ID=7)),
        command(Op.LEASE_EXPIRE, pb.LeaseRevokeRequest(ID=7)),
    )
    assert refused == [errors.CORRUPT] * 9
    assert sm.kv.current_revision == 2 and 7 in sm.leases and 8 not in sm.leases
    # a read-only txn (etcd serves it outside its applier), alarms and a NOSPACE beside it go on
    read, listed, nospace = results(sm, command(Op.TXN, pb.TxnRequest(success=[READ_OP])),
                                    alarm(pb.AlarmRequest.GET, 0, pb.NONE),
                                    alarm(pb.AlarmRequest.ACTIVATE, 6, pb.NOSPACE))
    assert read.succeeded and read.responses[0].response_range.kvs[0].value == b"1"
    assert [(a.memberID, a.alarm) for a in listed.alarms] == [(5, pb.CORRUPT)]
    assert len(nospace.alarms) == 1
    # kept through a snapshot
    sm = pickle.loads(pickle.dumps(sm))
    assert sm.alarms.corrupt
    assert results(sm, (int(Op.PUT_VALUE), b"a", b"3")) == [errors.CORRUPT]
    # disarmed: NOSPACE's refusals only
    results(sm, alarm(pb.AlarmRequest.DEACTIVATE, 5))
    assert results(sm, command(Op.DELETE_RANGE, pb.DeleteRangeRequest(key=b"a")))[0].deleted == 1
    assert results(sm, (int(Op.PUT_VALUE), b"a", b"3")) == [errors.NO_SPACE]
    results(sm, alarm(pb.AlarmRequest.DEACTIVATE, 6, pb.NOSPACE))
    assert results(sm, (int(Op.PUT_VALUE), b"a", b"3")) == [4]


def test_the_alarm_table_holds_nospace_and_corrupt_only():
    table = AlarmTable()
    assert table.activate(1, pb.NONE) is None and not len(table)
    assert table.activate(1, pb.CORRUPT) is not None and table.corrupt and not table.nospace
    assert table.deactivate(1, pb.CORRUPT) is not None and not table.corrupt


def test_the_divergence_hook_changes_the_hash_and_not_the_revisions():
    healthy, diverged = StateMachine(), StateMachine()
    entry = [command(Op.PUT, pb.PutRequest(key=b"foo", value=b"bar")), (int(Op.PUT_VALUE), b"foo", b"baz"),
             (int(Op.PUT_VALUE), b"other", b"x")]
    results(healthy, *entry)
    results(diverged, *corrupting(b"foo")(entry))
    h1, c1, r1 = healthy.kv.hash_kv(0)
    h2, c2, r2 = diverged.kv.hash_kv(0)
    assert (c1, r1) == (c2, r2) == (-1, 4) and h1 != h2
    assert healthy.kv.hash_kv(1) == diverged.kv.hash_kv(1)  # before the first put of foo
    assert diverged.kv.range(b"foo").kvs[0].value != b"baz"


def test_the_flags_are_etcds():
    from etcdlite.cli import build_parser, config_from_args
    from etcdlite.config import ConfigError

    def config(*argv):
        return config_from_args(build_parser().parse_args(["--data-dir", "unused", *argv]))

    default = config()
    assert (default.initial_corrupt_check, default.corrupt_check_time) == (False, 0.0)
    given = config("--experimental-initial-corrupt-check", "--experimental-corrupt-check-time", "1m30s")
    assert (given.initial_corrupt_check, given.corrupt_check_time) == (True, 90.0)
    with pytest.raises(ConfigError):
        config("--experimental-corrupt-check-time=-1s")


def run_steps(steps, between=lambda: None):
    try:
        while True:
            next(steps)
            between()
    except StopIteration as done:
        return done.value


def test_a_stepped_hash_equals_the_whole_one_whatever_is_written_between_its_steps():
    from etcdlite.mvcc import CompactedError, MVCCStore

    store = MVCCStore()
    for i in range(50):
        store.put(b"k%02d" % i, b"v%d" % i)
    store.delete_range(b"k10", b"k20")
    expected = store.hash_kv(0)
    written = iter(range(1000))

    def write():  # new keys before, among and after those hashed; new records of old keys
        n = next(written)
        store.put(b"%s%d" % (b"a" if n % 3 == 0 else b"k15" if n % 3 == 1 else b"z", n), b"x")
        store.put(b"k%02d" % (n % 50), b"y")

    assert run_steps(store.hash_kv_steps(0, step_keys=7), write) == expected
    assert store.hash_kv(expected[2]) == expected
    # a compaction between steps (dropping the deletes' tombstones) starts it over, at the same revision
    compacted = []

    def compact_once():
        if not compacted:
            compacted.append(store.current_revision)
            store.compact(expected[2])

    again = run_steps(store.hash_kv_steps(expected[2], step_keys=7), compact_once)
    assert again == store.hash_kv(expected[2]) and again[1] == expected[2] and again[0] != expected[0]
    # ... or fails, once the revision hashed is compacted away
    steps = store.hash_kv_steps(expected[2], step_keys=7)
    next(steps)
    store.compact(store.current_revision)
    with pytest.raises(CompactedError):
        next(steps)


# ---------------------------------------------------------------------------
# members


def status(endpoint: str) -> pb.StatusResponse:
    with Client(endpoint) as c:
        return c.maintenance.Status(pb.StatusRequest(), timeout=10)


def corrupt_session(m, metrics_port: int) -> list:
    """A CORRUPT alarm activated by a client for `m`, then an etcdctl
    session around it; what it printed, with the member's ID normalised."""
    me = status(m.endpoint).header.member_id
    out: list = []

    def norm(text: str) -> str:
        text = "\n".join(line for line in text.splitlines() if not line.startswith('{"level":'))
        text = re.sub(r"took = [0-9.]+[µmn]?s", "took = <T>", text)
        text = re.sub(r"remaining\(59\ds\)", "remaining(59Xs)", text)
        text = text.replace(str(me), "<ID>").replace(format(me, "x"), "<HEX>")
        return text.replace(str(m.client_port), "<PORT>")

    def ctl(*args, stdin=None):
        rc, stdout, stderr = run_etcdctl(m, *args, stdin=stdin)
        out.append((" ".join(args), rc, norm(stdout), norm(stderr)))

    with Client(m.endpoint) as c:
        c.put(b"a", b"1")
        c.lease.LeaseGrant(pb.LeaseGrantRequest(ID=0x1234, TTL=600), timeout=10)
        raised = c.maintenance.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=me,
                                                     alarm=pb.CORRUPT), timeout=10)
        out.append(("activate", [(a.memberID == me, a.alarm) for a in raised.alarms]))
        out.append(("put", error_of(lambda: c.put(b"a", b"2"))))
        out.append(("read-only txn", c.kv.Txn(pb.TxnRequest(success=[READ_OP]), timeout=10).succeeded))
    ctl("alarm", "list")
    ctl("put", "a", "b")
    ctl("get", "a")
    ctl("txn", stdin="\nput t1 v\n\n\n")
    ctl("txn", stdin="\nget a\n\n\n")
    ctl("del", "a")
    ctl("compaction", "2")
    ctl("lease", "grant", "60")
    ctl("lease", "revoke", "1234")
    ctl("lease", "timetolive", "1234")
    out.append(("status errors", [norm(e) for e in status(m.endpoint).errors]))
    ctl("endpoint", "health")
    out.append(("health", health(metrics_port)))
    ctl("alarm", "disarm")
    ctl("alarm", "list")
    ctl("put", "a", "b")
    out.append(("health", health(metrics_port)))
    return out


@pytest.mark.process
def test_a_client_activated_corrupt_alarm_answers_as_etcd_34(procs, tmp_path, etcd_binaries):
    sessions = []
    for kind in ("etcd", "etcdlite"):
        port = free_port()
        start = procs.start_real_etcd if kind == "etcd" else procs.start_etcdlite
        m = start(tmp_path / kind, name=f"{kind}c", listen_metrics_urls=f"http://127.0.0.1:{port}")
        sessions.append(corrupt_session(m, port))
        m.kill()
    ref, got = sessions
    assert ("alarm list", 0, "memberID:<ID> alarm:CORRUPT ", "") in ref
    assert ("put", CORRUPT) in ref and ("health", (503, b'{"health":"false"}\n')) in ref
    assert got == ref


def alarm_list(m) -> list[str]:
    rc, out, err = run_etcdctl(m, "alarm", "list")
    assert rc == 0, err
    return out.splitlines()


def checks_finished(m) -> int:
    return m.log_path.read_text(errors="replace").count("finished peer corruption check (2 peers checked)")


@pytest.mark.process
def test_the_leader_raises_corrupt_for_a_diverged_member_and_the_initial_check_stops_it(procs, tmp_path):
    def diverging_m2(members):
        members[2].extra_env = {CORRUPT_KEY_ENV: "foo"}

    # a new member does not check at start (it has nothing to compare yet), as etcd
    members = start_etcdlite_cluster(tmp_path, 3, procs, before_launch=diverging_m2,
                                     experimental_corrupt_check_time="0.3s",
                                     experimental_initial_corrupt_check=True)
    m0, m1, m2 = members
    ids = [status(m.endpoint).header.member_id for m in members]
    if status(m0.endpoint).leader == ids[2]:  # the leader cannot tell who differs: have a healthy one lead
        with Client(m2.endpoint) as c:
            c.maintenance.MoveLeader(pb.MoveLeaderRequest(targetID=ids[0]), timeout=10)
    leader = members[ids.index(status(m0.endpoint).leader)]
    assert leader is not m2
    with Client(m0.endpoint) as c:
        for i in range(20):
            c.put(b"k%d" % i, b"v")
    # healthy: the checks compare both peers and raise nothing
    seen = checks_finished(leader)
    wait_until(lambda: checks_finished(leader) >= seen + 2, 10, what="two peer corruption checks")
    assert alarm_list(m0) == []
    # m2 applies foo's put with another value: the leader's next check names it
    with Client(m0.endpoint) as c:
        c.put(b"foo", b"bar")
    wait_until(lambda: alarm_list(m1), 10, what="a CORRUPT alarm")
    assert alarm_list(m1) == [f"memberID:{ids[2]} alarm:CORRUPT "]
    for m in members:
        with Client(m.endpoint) as c:
            assert error_of(lambda: c.put(b"a", b"b")) == CORRUPT
            assert error_of(lambda: c.kv.Txn(pb.TxnRequest(success=[PUT_OP]), timeout=10)) == CORRUPT
            assert error_of(lambda: c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60), timeout=10)) == CORRUPT
            assert c.get(b"foo").kvs  # reads go on
        assert list(status(m.endpoint).errors) == [f"memberID:{ids[2]} alarm:CORRUPT "]
    rc, _, err = run_etcdctl(m0, "put", "a", "b")
    assert (rc, err.strip().splitlines()[-1]) == (1, "Error: etcdserver: corrupt cluster")
    # the diverged member stopped, the alarm disarmed: writes go on
    m2.kill()
    rc, out, err = run_etcdctl(m1, "alarm", "disarm")
    assert (rc, out) == (0, f"memberID:{ids[2]} alarm:CORRUPT \n"), err
    with Client(m0.endpoint) as c:
        revision = c.put(b"a", b"b").header.revision
    # the initial check: the diverged member, restarted, finds itself unlike its peers and exits
    m2.launch()
    rc = m2.proc.wait(timeout=20)
    log = m2.log_tail(5)
    assert rc == 1 and f"etcdlite: {ids[2]:x} found data inconsistency with peers" in log, log
    # ... and a healthy member passes it
    m1.restart()
    assert "initial corruption check passed" in m1.log_tail(200)
    with Client(m1.endpoint) as c:
        assert c.put(b"a", b"c").header.revision > revision
    assert alarm_list(m0) == []
