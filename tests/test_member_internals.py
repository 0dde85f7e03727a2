"""etcdlite's Member without servers: group commit (which requests travel
together as one Raft entry, turn by turn of the event loop, with a recorder
standing in for Raft), a batch's requests answered once (also when the sweep
times it out before it is applied), and the response header it writes as
bytes."""

from __future__ import annotations

import asyncio

import pytest

from etcdlite import errors
from etcdlite.apply import Op
from etcdlite.config import MemberConfig
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.server import member as member_module
from etcdlite.server.member import Member


class HeaderRaft:
    """What header_field reads of Raft: the term and the member table."""

    def __init__(self, term: int, cluster_id: int) -> None:
        self.term = term
        self.machine = type("Machine", (), {})()
        self.machine.members = type("Members", (), {"cluster_id": cluster_id})()


class RecordingRaft(HeaderRaft):
    """Takes batches as RaftNode.propose does; applies them at once, or
    holds them (`hold`) until `finish` is called, answering each command
    with an (op, result, events, revision) as ReplicatedState.apply does."""

    def __init__(self, hold: bool = False) -> None:
        super().__init__(term=1, cluster_id=0)
        self.hold = hold
        self.batches: list[list[bytes]] = []
        self.held: list = []

    def propose(self, commands, callback, *, now: bool = False) -> None:
        self.batches.append([data for _, data in commands])
        if self.hold:
            self.held.append((len(commands), callback))
        else:
            callback([(op, b"ok:" + data, [], 0) for op, data in commands], None)

    def finish(self) -> None:
        n, callback = self.held.pop(0)
        callback([(Op.PUT, b"ok", [], 0)] * n, None)


@pytest.fixture
def make_member(tmp_path):
    def make(raft: RecordingRaft) -> Member:
        m = Member(MemberConfig(data_dir=str(tmp_path)))
        m.loop = asyncio.get_running_loop()
        m.raft = raft
        return m
    return make


def in_loop(test):
    """Run an async test in a fresh event loop (the suite has no asyncio plugin)."""
    def run(make_member):
        asyncio.run(test(make_member))
    run.__name__ = test.__name__
    return run


def submit(m: Member, data: bytes, answers: list) -> None:
    m.submit(Op.PUT, None, lambda result, error: answers.append((result, error)), data=data)


async def next_turn() -> None:
    # this task resumes after the callbacks already due in this turn of the loop
    await asyncio.sleep(0)


@in_loop
async def test_a_lone_request_leaves_in_the_next_turn(make_member):
    raft = RecordingRaft()
    m = make_member(raft)
    answers: list = []
    submit(m, b"a", answers)
    assert raft.batches == []
    await next_turn()
    assert raft.batches == [[b"a"]]
    assert answers == [(b"ok:a", None)]


@in_loop
async def test_requests_arriving_together_wait_a_turn_for_more(make_member):
    raft = RecordingRaft()
    m = make_member(raft)
    answers: list = []
    submit(m, b"a", answers)
    submit(m, b"b", answers)
    await next_turn()
    assert raft.batches == []  # several came at once: more may be on their way
    submit(m, b"c", answers)
    await next_turn()
    assert raft.batches == [[b"a", b"b", b"c"]]
    assert [r for r, _ in answers] == [b"ok:a", b"ok:b", b"ok:c"]
    # the next batch waits again, once
    submit(m, b"d", answers)
    submit(m, b"e", answers)
    await next_turn()
    await next_turn()
    assert raft.batches == [[b"a", b"b", b"c"], [b"d", b"e"]]


@in_loop
async def test_a_batch_that_waited_for_a_place_leaves_when_one_frees(make_member):
    raft = RecordingRaft(hold=True)
    m = make_member(raft)
    answers: list = []
    for i in range(member_module.MAX_BATCHES_IN_FLIGHT):
        submit(m, b"x%d" % i, answers)
        await next_turn()
    assert len(raft.batches) == member_module.MAX_BATCHES_IN_FLIGHT
    submit(m, b"p", answers)
    submit(m, b"q", answers)
    await next_turn()
    await next_turn()
    assert len(raft.batches) == member_module.MAX_BATCHES_IN_FLIGHT  # no place
    raft.finish()
    await next_turn()
    assert raft.batches[-1] == [b"p", b"q"]  # no further turn of waiting
    assert answers == [(b"ok", None)]


@in_loop
async def test_a_timed_out_batch_is_answered_once(make_member):
    raft = RecordingRaft(hold=True)
    m = make_member(raft)
    answers: list = []
    submit(m, b"slow", answers)
    await next_turn()
    assert raft.batches == [[b"slow"]]
    m._batches[0].sent -= member_module.REQUEST_TIMEOUT + 1  # as if sent long ago
    m._sweep()
    assert answers == [(None, errors.TIMEOUT)]
    raft.finish()  # applied after all: its answer has been given
    assert answers == [(None, errors.TIMEOUT)]
    assert m._in_flight == 0 and not m._batches
    submit(m, b"next", answers)
    await next_turn()
    assert raft.batches[-1] == [b"next"]


REVISIONS = [0, 1, 2, 126, 127, 128, 129, 255, 256, 300, 16383, 16384, 16385, 2097151, 2097152,
             2097153, 3000000, 268435455, 268435456, 2**40 + 5]


@pytest.mark.parametrize("term, cluster_id", [(0, 0), (1, 7), (12, 0xFEDCBA9876543210)])
def test_header_field_is_protobufs_response_header(tmp_path, term, cluster_id):
    m = Member(MemberConfig(data_dir=str(tmp_path)))
    m.raft = HeaderRaft(term, cluster_id)
    # in order (runs of revisions sharing the kept bytes), back and forth, repeated
    revisions = [r for base in REVISIONS for r in (base, base + 1, base + 2, base)] + REVISIONS[::-1]
    for revision in revisions:
        expected = pb.PutResponse(header=pb.ResponseHeader(
            cluster_id=cluster_id or m.cluster_id, member_id=m.id, revision=revision, raft_term=term))
        assert m.header_field(revision) == expected.SerializeToString(), revision
    # a new term is in the next header, also within a run of revisions
    m.header_field(3000000)
    m.raft.term = term + 1
    got = pb.PutResponse.FromString(m.header_field(3000001)).header
    assert (got.raft_term, got.revision) == (term + 1, 3000001)
    # a batch's answers: the term as check_header last saw it, then the new one
    m.raft.term = term + 2
    got = pb.PutResponse.FromString(m.batch_header_field(3000002)).header
    assert (got.raft_term, got.revision) == (term + 1, 3000002)
    m.check_header()
    got = pb.PutResponse.FromString(m.batch_header_field(3000003)).header
    assert (got.raft_term, got.revision) == (term + 2, 3000003)
