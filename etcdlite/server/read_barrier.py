"""Linearizable reads: a read waits until the local state holds every write
acknowledged before it arrived, by proposing a barrier command through Raft
and waiting for it to be applied here. Readers that arrive while a barrier
is on its way share the next one."""

from __future__ import annotations

import asyncio

from etcdlite.apply import Op


class ReadBarrier:
    """`raft`: the RaftNode (a one-member cluster needs no barrier: applied
    state already holds every acknowledged write); `propose`: a coroutine
    function proposing a command, as GroupCommit.propose."""

    def __init__(self, loop: asyncio.AbstractEventLoop, raft, propose) -> None:
        self.loop = loop
        self.raft = raft
        self._propose = propose
        self._next: asyncio.Future | None = None
        self._in_flight = False

    async def wait(self, serializable: bool = False) -> None:
        """Return once the local state holds every write acknowledged before
        the call (linearizable), unless `serializable`. Concurrent readers
        share one barrier entry: each waits for the first barrier proposed
        after it arrived."""
        if serializable or self.raft.single:
            return
        fut = self._next
        if fut is None:
            fut = self._next = self.loop.create_future()
            if not self._in_flight:
                self._launch()
        await asyncio.shield(fut)

    def _launch(self) -> None:
        fut, self._next = self._next, None
        self._in_flight = True
        task = self.loop.create_task(self._propose(Op.BARRIER, None))

        def done(t: asyncio.Task) -> None:
            self._in_flight = False
            if t.cancelled():
                fut.cancel()
            elif t.exception() is not None:
                fut.set_exception(t.exception())
            else:
                fut.set_result(None)
            if self._next is not None:
                self._launch()

        task.add_done_callback(done)
