"""Learners (etcd's non-voting members): etcdctl's member add --learner, member
list, member promote and member remove against etcdlite and a real etcd 3.4
(the same transcript); then three voters and a learner, where the learner
receives the log without counting toward the quorum, serves Status and
serializable reads only, stays a learner across a restart, and once promoted
counts."""

from __future__ import annotations

import json
import pickle
import re
import urllib.error
import urllib.request

import grpc
import pytest

from etcdlite import errors
from etcdlite.membership import MemberTable
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.server.learner_gate import RANGE, STATUS, refusal
from harness.etcd_client import Client, error_of, leader_of, wait_until
from harness.procs import ETCD_BIN, Member, Registry, free_port, require_binary, run_etcdctl, \
    start_etcdlite_cluster

TIMEOUT = 10
NOT_FOR_LEARNER = (grpc.StatusCode.UNAVAILABLE, "etcdserver: rpc not supported for learner")


def test_the_member_table_keeps_one_learner_and_promotes_only_it():
    table = MemberTable()
    table.add(pb.Member(ID=1, peerURLs=["http://127.0.0.1:1"]))
    table.add(pb.Member(ID=2, peerURLs=["http://127.0.0.1:2"], isLearner=True))
    with pytest.raises(errors.EtcdError) as too_many:
        table.add(pb.Member(ID=3, peerURLs=["http://127.0.0.1:3"], isLearner=True))
    assert too_many.value is errors.TOO_MANY_LEARNERS and 3 not in table
    assert [(m.ID, m.isLearner) for m in table.list()] == [(1, False), (2, True)]
    for member_id, error in ((1, errors.MEMBER_NOT_LEARNER), (9, errors.MEMBER_NOT_FOUND)):
        with pytest.raises(errors.EtcdError) as refused:
            table.promote(member_id)
        assert refused.value is error
    table.promote(2)
    assert not table.is_learner(2) and not any(m.isLearner for m in table.list())
    table.add(pb.Member(ID=3, peerURLs=["http://127.0.0.1:3"], isLearner=True))
    table.remove(3)
    assert not table.learners
    # a table pickled before learners existed (no such attribute) has none
    old = MemberTable()
    old.add(pb.Member(ID=1, peerURLs=["http://127.0.0.1:1"]))
    assert "learners" not in old.__dict__
    loaded = pickle.loads(pickle.dumps(old))
    assert not loaded.is_learner(1) and [m.isLearner for m in loaded.list()] == [False]


def test_a_learner_serves_status_and_serializable_ranges_only():
    assert refusal(STATUS, pb.StatusRequest()) is None
    assert refusal(RANGE, pb.RangeRequest(key=b"k", serializable=True)) is None
    for path, request in ((RANGE, pb.RangeRequest(key=b"k")), ("/etcdserverpb.KV/Put", pb.PutRequest()),
                          ("/etcdserverpb.Watch/Watch", None), ("/etcdserverpb.Maintenance/Snapshot",
                                                                 pb.SnapshotRequest())):
        assert refusal(path, request) == NOT_FOR_LEARNER


def _transcript(server) -> list[str]:
    """etcdctl's answers to the learner commands, member and cluster IDs replaced by names."""
    names: dict[str, str] = {}

    def normal(text: str) -> str:
        def name(match):
            return names.setdefault(match.group(0), f"<id{len(names)}>")
        # IDs are printed %16x: padded when shorter
        return re.sub(r"\b[0-9a-f]{12,16}\b", name, re.sub(r" +", " ", text.strip()))

    lines = []

    def run(*args):
        rc, out, err = run_etcdctl(server, *args)
        lines.append(normal(f"$ {' '.join(args)} -> {rc}"))
        # members come in ID order, which the ports chosen decide
        out = re.sub(r'(ETCD_INITIAL_CLUSTER=")([^"]*)', lambda m: m.group(1) + ",".join(sorted(m.group(2).split(","))),
                     out)
        answer = normal(out).splitlines()
        lines.extend(sorted(answer) if args[1] == "list" else answer)
        lines.extend(normal(l) for l in err.splitlines() if l.startswith("Error:"))
        return out

    port = free_port()
    peer = f"http://127.0.0.1:{port}"
    out = run("member", "add", "learner1", "--learner", f"--peer-urls={peer}")
    learner_id = re.search(r"Member\s+([0-9a-f]+) added", out).group(1)
    run("member", "list")
    # never started: it holds nothing of the leader's log
    run("member", "promote", learner_id)
    run("member", "add", "learner2", "--learner", "--peer-urls=http://127.0.0.1:1")
    own = next(line.split(",")[0] for line in run("member", "list").splitlines() if "learner1" not in line
               and "unstarted" not in line)
    run("member", "promote", own)
    run("member", "remove", learner_id)
    run("member", "list")
    return [line.replace(peer, "<peer>").replace(server.peer_url, "<own-peer>").replace(server.url, "<own>")
            .replace(str(server.name), "<name>") for line in lines]


@pytest.mark.process
def test_etcdctl_learner_commands_answer_as_etcd(tmp_path):
    require_binary(ETCD_BIN, "etcd (the real etcd 3.4 server)")
    reg = Registry()
    try:
        ours = reg.start_etcdlite(tmp_path / "lite", name="solo")
        theirs = reg.start_real_etcd(tmp_path / "etcd", name="solo")
        got, want = _transcript(ours), _transcript(theirs)
        assert got == want
        assert any("can only promote a learner member which is in sync with leader" in line for line in got)
        assert any("too many learner members in cluster" in line for line in got)
    finally:
        reg.cleanup()


def _gateway(m: Member, call: str, body: dict) -> tuple[int, dict]:
    """(HTTP status, JSON answer) of a call to the member's JSON gateway."""
    request = urllib.request.Request(f"{m.url}/v3/{call}", data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _status(m: Member) -> pb.StatusResponse:
    with Client(m.endpoint) as c:
        return c.maintenance.Status(pb.StatusRequest(), timeout=TIMEOUT)


def _has(m: Member, key: bytes) -> bool:
    try:
        with Client(m.endpoint) as c:
            return bool(c.get(key, serializable=True).kvs)
    except grpc.RpcError:
        return False


def _commits(m: Member, key: bytes, timeout: float) -> bool:
    """Whether a put through `m` is acknowledged within `timeout`."""
    try:
        with Client(m.endpoint) as c:
            c.kv.Put(pb.PutRequest(key=key, value=b"v"), timeout=timeout)
        return True
    except grpc.RpcError as err:
        # no answer, or etcd's of an election under way (no leader, leader changed)
        assert err.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE), err
        return False


def _eventually_commits(m: Member, key: bytes) -> None:
    wait_until(lambda: _commits(m, key, 3.0), 20, what=f"a put of {key!r} through {m.name}")


@pytest.mark.process
def test_a_learner_follows_the_log_without_a_vote_until_promoted(tmp_path):
    reg = Registry()
    try:
        a, b, c = start_etcdlite_cluster(tmp_path, 3, reg)
        with Client(a.endpoint) as client:
            client.put(b"before", b"1")
        learner = Member("etcdlite", "l3", tmp_path, dict(a.extra_flags, initial_cluster_state="existing"), reg)
        rc, out, err = run_etcdctl(a, "member", "add", "l3", "--learner", f"--peer-urls={learner.peer_url}")
        assert rc == 0, err
        assert re.search(r"Member\s+[0-9a-f]+ added to cluster\s+[0-9a-f]+", out), out
        learner_id = int(re.search(r"Member\s+([0-9a-f]+) added", out).group(1), 16)
        learner.initial_cluster = re.search(r'ETCD_INITIAL_CLUSTER="([^"]+)"', out).group(1)
        learner.launch()  # not wait_ready: that reads linearizably, which a learner refuses
        wait_until(lambda: _has(learner, b"before"), 20, what="the learner to catch up")

        # what a learner serves: Status and serializable reads
        assert _status(learner).isLearner and not _status(a).isLearner
        with Client(learner.endpoint) as lc:
            assert error_of(lambda: lc.put(b"k", b"v")) == NOT_FOR_LEARNER
            assert error_of(lambda: lc.get(b"before")) == NOT_FOR_LEARNER
            assert error_of(lambda: lc.cluster.MemberList(pb.MemberListRequest(), timeout=TIMEOUT)) == NOT_FOR_LEARNER
            watch = lc.watch.Watch(iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k"))]),
                                   timeout=TIMEOUT)
            assert error_of(lambda: next(watch)) == NOT_FOR_LEARNER
        assert _gateway(learner, "kv/put", {"key": "aw==", "value": "dg=="}) == (
            503, {"error": NOT_FOR_LEARNER[1], "message": NOT_FOR_LEARNER[1], "code": 14})
        status, answer = _gateway(learner, "kv/range", {"key": "YmVmb3Jl", "serializable": True})
        assert status == 200 and answer["kvs"][0]["value"] == "MQ==", answer
        with Client(b.endpoint) as client:
            listed = {m.ID: m for m in client.cluster.MemberList(pb.MemberListRequest(), timeout=TIMEOUT).members}
        assert [i for i, m in listed.items() if m.isLearner] == [learner_id]
        assert listed[learner_id].name == "l3"

        # not in the quorum's count: two of three voters commit without the learner...
        learner.kill()
        b.kill()
        _eventually_commits(a, b"two-voters")
        # ...and one voter with the learner commits nothing
        learner.launch()
        wait_until(lambda: _has(learner, b"two-voters"), 20, what="the restarted learner to catch up")
        c.kill()
        assert not _commits(a, b"one-voter", 2.0)
        assert not _has(learner, b"one-voter")
        b.restart()
        _eventually_commits(b, b"again")
        wait_until(lambda: _has(learner, b"again"), 20, what="the learner to follow")
        assert _status(learner).isLearner  # still one after its restart

        # promoted, it votes: with c down, a write needs it (a and b alone are two of four)
        rc, out, err = run_etcdctl(a, "member", "promote", f"{learner_id:x}")
        assert rc == 0, err
        assert re.search(rf"Member\s+{learner_id:x} promoted in cluster\s+[0-9a-f]+", out), out
        wait_until(lambda: not _status(learner).isLearner, 10, what="the promotion applied on the learner")
        _eventually_commits(learner, b"through-the-promoted")
        with Client(a.endpoint) as client:
            assert not any(m.isLearner for m in client.cluster.MemberList(pb.MemberListRequest(),
                                                                           timeout=TIMEOUT).members)
        leader_of([a, b, learner])
    finally:
        reg.cleanup()


@pytest.mark.process
def test_a_learner_is_sent_a_snapshot_outlives_its_leaders_restart_and_stops_once_removed(tmp_path):
    reg = Registry()
    try:
        (voter,) = start_etcdlite_cluster(tmp_path, 1, reg, snapshot_count=20)
        # this one on grpc.aio's server: its refusals are an interceptor's
        learner = Member("etcdlite", "l1", tmp_path, dict(voter.extra_flags, initial_cluster_state="existing",
                                                         experimental_grpc_server="grpcio"), reg)
        with Client(voter.endpoint) as client:
            added = client.cluster.MemberAdd(pb.MemberAddRequest(peerURLs=[learner.peer_url], isLearner=True),
                                             timeout=TIMEOUT)
            assert added.member.isLearner and [m.isLearner for m in added.members].count(True) == 1
            for i in range(60):
                client.put(b"k%02d" % i, b"v")
        snapshot = voter.data_dir / "raft.snapshot"
        wait_until(snapshot.exists, 20, what="a snapshot")
        learner.initial_cluster = f"{voter.name}={voter.peer_url},l1={learner.peer_url}"
        learner.launch()
        wait_until(lambda: _has(learner, b"k59"), 20, what="the learner to catch up")
        assert (learner.data_dir / "raft.snapshot").exists()  # what it got first
        with Client(learner.endpoint) as lc:
            assert error_of(lambda: lc.put(b"k", b"v")) == NOT_FOR_LEARNER
            assert error_of(lambda: lc.get(b"k00")) == NOT_FOR_LEARNER
            watch = lc.watch.Watch(iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k"))]),
                                   timeout=TIMEOUT)
            assert error_of(lambda: next(watch)) == NOT_FOR_LEARNER
            assert lc.maintenance.Status(pb.StatusRequest(), timeout=TIMEOUT).isLearner

        voter.restart()  # its member table, learner included, from the snapshot
        with Client(voter.endpoint) as client:
            listed = client.cluster.MemberList(pb.MemberListRequest(), timeout=TIMEOUT).members
            assert [m.ID for m in listed if m.isLearner] == [added.member.ID]
            client.put(b"after-restart", b"v")
        wait_until(lambda: _has(learner, b"after-restart"), 20, what="the learner to follow the restarted leader")

        rc, out, err = run_etcdctl(voter, "member", "remove", f"{added.member.ID:x}")
        assert rc == 0, err
        wait_until(lambda: not learner.alive, 20, what="the removed learner to exit")
        with Client(voter.endpoint) as client:
            assert len(client.cluster.MemberList(pb.MemberListRequest(), timeout=TIMEOUT).members) == 1
            client.put(b"after-removal", b"v")
    finally:
        reg.cleanup()
