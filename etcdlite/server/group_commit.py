"""Group commit: a member's write requests travel to Raft in batches, one
log entry each, and each batch's requests are answered together once it is
applied here.

Requests proposed in the same turn of the event loop travel as one Raft
entry, and while MAX_BATCHES_IN_FLIGHT entries are on their way the next one
fills up: under load a single log append, replication round and hand-back
serve many requests. One sweep times out what Raft never answers.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from typing import Callable

from etcdlite import errors
from etcdlite.apply import Op
from etcdlite.raft import FAILURES

log = logging.getLogger("etcdlite")

# etcd's request timeout with default settings: 5 s + 2 x election timeout
REQUEST_TIMEOUT = 7.0
# a batch of proposals goes to Raft early once it holds this much
MAX_BATCH_BYTES = 512 * 1024
# batches proposed and not yet applied here (or failed) at one time; further
# requests wait and leave together as the next batch (group commit)
MAX_BATCHES_IN_FLIGHT = 2
# a batch gives up its place after this long even unanswered (pysyncobj can
# lose a forwarded proposal's answer; its requests still time out on their own)
BATCH_SLOT_SECONDS = 1.0
# how often batches in flight are checked against those two limits
SWEEP_SECONDS = 0.25
_PUT_VALUE = int(Op.PUT_VALUE)


def _settle(waiters: list, applied, reason) -> None:
    """Hand a batch's results (or its failure) to its waiters: each is an
    on_done(result, error), called straight from here (the hot path), with
    the result in the command's (op, result, events, revision). A batch is
    settled once (see _Batch.settled), so each waiter is called once."""
    if reason:
        _fail(waiters, FAILURES.get(reason, errors.TIMEOUT))
        return
    for on_done, (_, result, _, _) in zip(waiters, applied):
        try:
            if isinstance(result, errors.EtcdError):
                on_done(None, result)
            else:
                on_done(result, None)
        except Exception:  # a bug there must not keep the batch's other waiters waiting
            log.exception("request callback failed")


def _fail(waiters: list, error: errors.EtcdError) -> None:
    for on_done in waiters:
        try:
            on_done(None, error)
        except Exception:
            log.exception("request callback failed")


def _resolve(fut: asyncio.Future, result, error) -> None:
    """A waiter for propose(): the answer goes to its future (unless the
    caller gave up on it)."""
    if not fut.done():
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)


class _Batch:
    """Requests proposed together, while they are in flight."""

    __slots__ = ("released", "sent", "settled", "waiters")

    def __init__(self, waiters: list, sent: float) -> None:
        self.waiters = waiters  # on_done(result, error) of each request, in order
        self.sent = sent
        self.released = False  # its in-flight place given up
        self.settled = False  # its waiters answered: applied, failed or timed out


class GroupCommit:
    """The batching of one member's proposals.

    `propose_batch(commands, callback, now=...)` is RaftNode.propose.
    Around the answering of an applied batch: `before_answers()` runs first
    (what every answer of the batch shares, made once: ResponseHeaders.check),
    `after_answers()` last (the answers leave now, not after the next turn's
    reads)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, propose_batch, max_request_bytes: int, *,
                 before_answers: Callable[[], None], after_answers: Callable[[], None]) -> None:
        self.loop = loop
        self._propose_batch = propose_batch
        self._max_request_bytes = max_request_bytes
        self._before_answers = before_answers
        self._after_answers = after_answers
        # requests waiting for the next batch: commands as proposed (see apply), and their waiters
        self._outbox: list[tuple] = []
        self._waiters: list = []
        self._outbox_bytes = 0
        self._flush_pending = False
        self._flush_waited = False  # the outbox waited a turn for more requests
        self._in_flight = 0
        self._batches: collections.deque[_Batch] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        # requests whose proposal failed or timed out (etcd's etcd_server_proposals_failed_total)
        self.failed = 0

    def pending(self) -> int:
        """Requests proposed and not answered yet (etcd's
        etcd_server_proposals_pending): those waiting for the next batch and
        those of the batches in flight."""
        return len(self._waiters) + sum(len(b.waiters) for b in self._batches)

    async def propose(self, op: Op, request, tail: tuple = ()) -> object:
        """Replicate one request and return its result once applied here.
        `tail`: what the command carries after the request (its sender with
        auth: see etcdlite.apply)."""
        fut = self.loop.create_future()
        self._enqueue(op, request, functools.partial(_resolve, fut), None, tail)
        return await fut

    def submit(self, op: Op, request, on_done, data: bytes | None = None, tail: tuple = ()) -> None:
        """propose() for callers without a coroutine: on_done(result, error)
        runs once the request is applied here (or failed), inside the apply.
        `data`: the request's bytes, when the caller has them (else it is
        serialized). Raises EtcdError at once for a request too large."""
        self._enqueue(op, request, on_done, data, tail)

    def submit_put_value(self, key: bytes, value: bytes, on_done, size: int) -> None:
        """submit() for a Put of only a key and a value (no lease, prev_kv or
        ignore_*): it travels as (Op.PUT_VALUE, key, value), nothing to parse
        where it is applied. `size`: the request's bytes on the wire."""
        self._queue((_PUT_VALUE, key, value), size, on_done)

    def _enqueue(self, op: Op, request, on_done, data: bytes | None = None, tail: tuple = ()) -> None:
        if data is None:
            data = request.SerializeToString() if request is not None else b""
        self._queue((int(op), data, *tail) if tail else (int(op), data), len(data), on_done)

    def _queue(self, command: tuple, size: int, on_done) -> None:
        if size > self._max_request_bytes:
            raise errors.REQUEST_TOO_LARGE
        self._outbox.append(command)
        self._waiters.append(on_done)
        self._outbox_bytes += size
        if self._outbox_bytes >= MAX_BATCH_BYTES:
            self._send_batch()
        elif not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        # a turn of the loop of its own (every request read in the previous
        # turn is in the outbox): the batch is proposed and ticked at once.
        # Requests that came several in one turn wait one turn more, for
        # those read in it (group commit: under load, larger batches, so
        # fewer ticks, journal appends and answering sends per request;
        # measured: benchmarks/why.md); a
        # lone request leaves at once.
        self._flush_pending = False
        if not self._outbox:
            return
        if self._in_flight >= MAX_BATCHES_IN_FLIGHT:
            self._flush_waited = True  # it waits for a place instead
            return
        if not self._flush_waited and len(self._outbox) > 1:
            self._flush_waited = self._flush_pending = True
            self.loop.call_soon(self._flush)
            return
        self._send_batch(now=True)

    def _send_batch(self, now: bool = False) -> None:
        batch, self._outbox, self._outbox_bytes = self._outbox, [], 0
        self._flush_waited = False
        sent = _Batch(self._waiters, self.loop.time())
        self._waiters = []
        self._in_flight += 1
        self._batches.append(sent)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)

        def applied(entries, reason) -> None:
            self._release(sent)
            if sent.settled:  # timed out by the sweep: already answered
                return
            sent.settled = True
            waiters, sent.waiters = sent.waiters, ()
            batches = self._batches
            while batches and batches[0].settled:
                batches.popleft()
            if not reason:
                self._before_answers()
            else:
                self.failed += len(waiters)
            _settle(waiters, entries, reason)
            self._after_answers()

        self._propose_batch(batch, applied, now=now)

    def _release(self, batch: _Batch) -> None:
        """Give the batch's in-flight place to the next one."""
        if not batch.released:
            batch.released = True
            self._in_flight -= 1
            if self._outbox and not self._flush_pending:
                self._flush_pending = True
                self.loop.call_soon(self._flush)

    def _sweep(self) -> None:
        """A batch unanswered for BATCH_SLOT_SECONDS gives up its place; its
        requests fail after REQUEST_TIMEOUT. One timer for all batches in
        flight (sent in order, so the oldest are at the front), instead of
        two per batch, nearly all cancelled."""
        self._sweeper = None
        now = self.loop.time()
        batches = self._batches
        for batch in list(batches):
            if now - batch.sent < BATCH_SLOT_SECONDS:
                break
            self._release(batch)
            if not batch.settled and now - batch.sent >= REQUEST_TIMEOUT:
                batch.settled = True
                waiters, batch.waiters = batch.waiters, ()
                self.failed += len(waiters)
                _fail(waiters, errors.TIMEOUT)
        while batches and batches[0].settled:
            batches.popleft()
        if batches:
            self._sweeper = self.loop.call_later(SWEEP_SECONDS, self._sweep)
