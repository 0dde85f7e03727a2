"""Driving a unary call's handler coroutine without an asyncio.Task (GrpcServer's eager_unary)."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("grpclite")


class EagerCall:
    """Runs a unary call's handler coroutine without an asyncio.Task.

    The first step runs at once, inside the frame that completed the request;
    a handler that never waits (a serializable range, the bare benchmark
    server) finishes there. A handler that awaits a future is resumed from the
    future's done callback. It spares each call a Task's creation,
    registration and first scheduled step, a cost a member feels under load
    (measured: benchmarks/why.md). What this gives
    up: inside the handler there is no current task, so `asyncio.timeout()`
    and `asyncio.current_task()` do not work; servers whose handlers need them
    run with eager_unary=False (the apiserver). cancel() is Task.cancel()'s
    contract: the awaited future is cancelled, CancelledError is raised at the
    await."""

    __slots__ = ("cancel_requested", "coro", "finished", "waiting")

    def __init__(self, coro) -> None:
        self.coro = coro
        self.waiting: asyncio.Future | None = None
        self.finished = False
        self.cancel_requested = False
        self._step()

    def done(self) -> bool:
        return self.finished

    def cancel(self) -> bool:
        if self.finished:
            return False
        self.cancel_requested = True
        waiting = self.waiting
        if waiting is not None:
            waiting.cancel()  # its done callback resumes the handler
        return True

    def _wakeup(self, fut) -> None:
        self.waiting = None
        self._step()

    def _step(self) -> None:
        try:
            if self.cancel_requested:
                self.cancel_requested = False
                yielded = self.coro.throw(asyncio.CancelledError())
            else:
                yielded = self.coro.send(None)
        except StopIteration:
            self.finished = True
            return
        except BaseException:  # run_handler catches everything a handler raises
            self.finished = True
            log.exception("unary call driver")
            return
        if yielded is None:  # a bare yield (asyncio.sleep(0)): go round the loop once
            asyncio.get_running_loop().call_soon(self._step)
        elif getattr(yielded, "_asyncio_future_blocking", None):
            yielded._asyncio_future_blocking = False
            self.waiting = yielded
            yielded.add_done_callback(self._wakeup)
        else:
            self.cancel_requested = True  # not a future: end the handler as Task would
            asyncio.get_running_loop().call_soon(self._step)
