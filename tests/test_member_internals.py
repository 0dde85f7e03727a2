"""A member's parts without servers or Raft: group commit (which requests
travel together as one Raft entry, turn by turn of the event loop, with a
recorder standing in for Raft; a batch's requests answered once, also when
the sweep times it out before it is applied; what runs around the answers),
the read barrier readers share, and the response header written as bytes."""

from __future__ import annotations

import asyncio

import pytest
from pysyncobj import FAIL_REASON

from etcdlite import errors
from etcdlite.apply import Op
from etcdlite.config import DEFAULT_MAX_REQUEST_BYTES, MemberConfig
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.raft import FAILURES
from etcdlite.server import group_commit
from etcdlite.server.group_commit import GroupCommit
from etcdlite.server.read_barrier import ReadBarrier
from etcdlite.server.response_header import ResponseHeaders


class HeaderRaft:
    """What ResponseHeaders reads of Raft: the term and the member table."""

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

    def finish(self, reason=None) -> None:
        n, callback = self.held.pop(0)
        callback([(Op.PUT, b"ok", [], 0)] * n, reason)


class Answering:
    """What a member does around the answers of a settled batch, recorded
    in order with the answers themselves."""

    def __init__(self) -> None:
        self.log: list = []

    def before(self) -> None:
        self.log.append("before")

    def after(self) -> None:
        self.log.append("after")


@pytest.fixture
def make_commit():
    def make(raft: RecordingRaft, answering: Answering | None = None) -> GroupCommit:
        answering = answering or Answering()
        return GroupCommit(asyncio.get_running_loop(), raft.propose, DEFAULT_MAX_REQUEST_BYTES,
                           before_answers=answering.before, after_answers=answering.after)
    return make


def in_loop(test):
    """Run an async test in a fresh event loop (the suite has no asyncio plugin)."""
    def run(make_commit):
        asyncio.run(test(make_commit))
    run.__name__ = test.__name__
    return run


def submit(commit: GroupCommit, data: bytes, answers: list) -> None:
    commit.submit(Op.PUT, None, lambda result, error: answers.append((result, error)), data=data)


async def next_turn() -> None:
    # this task resumes after the callbacks already due in this turn of the loop
    await asyncio.sleep(0)


@in_loop
async def test_a_lone_request_leaves_in_the_next_turn(make_commit):
    raft = RecordingRaft()
    commit = make_commit(raft)
    answers: list = []
    submit(commit, b"a", answers)
    assert raft.batches == []
    await next_turn()
    assert raft.batches == [[b"a"]]
    assert answers == [(b"ok:a", None)]


@in_loop
async def test_requests_arriving_together_wait_a_turn_for_more(make_commit):
    raft = RecordingRaft()
    commit = make_commit(raft)
    answers: list = []
    submit(commit, b"a", answers)
    submit(commit, b"b", answers)
    await next_turn()
    assert raft.batches == []  # several came at once: more may be on their way
    submit(commit, b"c", answers)
    await next_turn()
    assert raft.batches == [[b"a", b"b", b"c"]]
    assert [r for r, _ in answers] == [b"ok:a", b"ok:b", b"ok:c"]
    # the next batch waits again, once
    submit(commit, b"d", answers)
    submit(commit, b"e", answers)
    await next_turn()
    await next_turn()
    assert raft.batches == [[b"a", b"b", b"c"], [b"d", b"e"]]


@in_loop
async def test_a_batch_that_waited_for_a_place_leaves_when_one_frees(make_commit):
    raft = RecordingRaft(hold=True)
    commit = make_commit(raft)
    answers: list = []
    for i in range(group_commit.MAX_BATCHES_IN_FLIGHT):
        submit(commit, b"x%d" % i, answers)
        await next_turn()
    assert len(raft.batches) == group_commit.MAX_BATCHES_IN_FLIGHT
    submit(commit, b"p", answers)
    submit(commit, b"q", answers)
    await next_turn()
    await next_turn()
    assert len(raft.batches) == group_commit.MAX_BATCHES_IN_FLIGHT  # no place
    raft.finish()
    await next_turn()
    assert raft.batches[-1] == [b"p", b"q"]  # no further turn of waiting
    assert answers == [(b"ok", None)]


@in_loop
async def test_a_timed_out_batch_is_answered_once(make_commit):
    raft = RecordingRaft(hold=True)
    commit = make_commit(raft)
    answers: list = []
    submit(commit, b"slow", answers)
    await next_turn()
    assert raft.batches == [[b"slow"]]
    commit._batches[0].sent -= group_commit.REQUEST_TIMEOUT + 1  # as if sent long ago
    commit._sweep()
    assert answers == [(None, errors.TIMEOUT)]
    raft.finish()  # applied after all: its answer has been given
    assert answers == [(None, errors.TIMEOUT)]
    assert commit._in_flight == 0 and not commit._batches
    submit(commit, b"next", answers)
    await next_turn()
    assert raft.batches[-1] == [b"next"]


@in_loop
async def test_the_answers_of_a_batch_come_between_its_two_hooks(make_commit):
    raft = RecordingRaft(hold=True)
    answering = Answering()
    commit = make_commit(raft, answering)
    commit.submit(Op.PUT, None, lambda result, error: answering.log.append((result, error)), data=b"a")
    await next_turn()
    raft.finish()
    assert answering.log == ["before", (b"ok", None), "after"]
    # a failed batch: nothing to make for its answers, which still leave at once
    answering.log.clear()
    commit.submit(Op.PUT, None, lambda result, error: answering.log.append((result, error)), data=b"b")
    await next_turn()
    raft.finish(FAIL_REASON.NOT_LEADER)
    assert answering.log == [(None, FAILURES[FAIL_REASON.NOT_LEADER]), "after"]


class BarrierRaft:
    """What ReadBarrier reads of Raft: whether the member is alone."""

    single = False


async def until(condition, timeout: float = 5.0) -> None:
    """Let the loop run until condition() holds (no sleeping: turn by turn)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await next_turn()


def test_readers_waiting_together_share_one_barrier():
    async def run() -> None:
        loop = asyncio.get_running_loop()
        proposed: list[asyncio.Future] = []  # one per barrier proposed, answered by the test

        async def propose(op, request):
            assert (op, request) == (Op.BARRIER, None)
            proposed.append(loop.create_future())
            return await proposed[-1]

        raft = BarrierRaft()
        barrier = ReadBarrier(loop, raft, propose)
        first = loop.create_task(barrier.wait())
        await until(lambda: len(proposed) == 1)
        # readers that come while that barrier is on its way wait for the next
        together = [loop.create_task(barrier.wait()) for _ in range(3)]
        await next_turn()
        assert len(proposed) == 1  # one barrier in flight at a time
        proposed[0].set_result(None)
        await until(first.done)
        assert first.exception() is None and not any(t.done() for t in together)
        await until(lambda: len(proposed) == 2)  # one barrier for the three of them
        proposed[1].set_exception(errors.TIMEOUT)  # a failed barrier fails its readers
        await until(lambda: all(t.done() for t in together))
        assert all(t.exception() is errors.TIMEOUT for t in together)
        # serializable reads and a lone member's reads propose nothing
        await barrier.wait(serializable=True)
        raft.single = True
        await barrier.wait()
        assert len(proposed) == 2

    asyncio.run(run())


REVISIONS = [0, 1, 2, 126, 127, 128, 129, 255, 256, 300, 16383, 16384, 16385, 2097151, 2097152,
             2097153, 3000000, 268435455, 268435456, 2**40 + 5]


def headers_of(raft: HeaderRaft) -> ResponseHeaders:
    cfg = MemberConfig()
    return ResponseHeaders(cfg.id, cfg.cluster_id, raft)


@pytest.mark.parametrize("term, cluster_id", [(0, 0), (1, 7), (12, 0xFEDCBA9876543210)])
def test_header_field_is_protobufs_response_header(term, cluster_id):
    headers = headers_of(HeaderRaft(term, cluster_id))
    # in order (runs of revisions sharing the kept bytes), back and forth, repeated
    revisions = [r for base in REVISIONS for r in (base, base + 1, base + 2, base)] + REVISIONS[::-1]
    for revision in revisions:
        expected = pb.PutResponse(header=pb.ResponseHeader(cluster_id=cluster_id or headers.cluster_id,
                                  member_id=headers.member_id, revision=revision, raft_term=term))
        assert headers.field(revision) == expected.SerializeToString(), revision
    # a new term is in the next header, also within a run of revisions
    headers.field(3000000)
    headers.raft.term = term + 1
    got = pb.PutResponse.FromString(headers.field(3000001)).header
    assert (got.raft_term, got.revision) == (term + 1, 3000001)
    # a batch's answers: the term as check last saw it, then the new one
    headers.raft.term = term + 2
    got = pb.PutResponse.FromString(headers.batch_field(3000002)).header
    assert (got.raft_term, got.revision) == (term + 1, 3000002)
    headers.check()
    got = pb.PutResponse.FromString(headers.batch_field(3000003)).header
    assert (got.raft_term, got.revision) == (term + 2, 3000003)


def test_a_filled_header_is_the_header_field():
    headers = headers_of(HeaderRaft(term=3, cluster_id=0))
    for revision in (0, 5, 300, 3000000):
        resp = pb.PutResponse()
        headers.fill(resp.header, revision)
        assert resp.SerializeToString() == headers.field(revision)
    resp = pb.PutResponse(header=pb.ResponseHeader(revision=42))
    headers.fill(resp.header)  # no revision given: the header's own stays
    assert resp.header.revision == 42 and resp.header.member_id == headers.member_id
