"""What every queue-driven controller shares: informers to start, one rate-limited work
queue of keys, worker threads running ``sync(key)``, and stop.

A controller subclasses ``Controller``, registers its informer handlers (which call
``enqueue`` or ``queue.add``) and implements ``sync``; one with a second kind of key
(volumes beside claims) adds a queue of its own with ``add_queue``. Workers reconcile only once every
informer it named has synced, so no object is taken for gone for want of a first list;
a ``sync`` that raises puts its key back with per-key backoff (``run_worker``).
"""

from __future__ import annotations

import logging
import threading
import time

from controllers.events import EventRecorder
from controllers.informer import Informer, meta_namespace_key
from controllers.workqueue import RateLimitingQueue, run_worker

log = logging.getLogger("controllers")


class Controller:
    name = "controller"

    def __init__(self, informers_to_sync: list[Informer], workers: int, sync=None) -> None:
        """``sync``: what the workers of ``queue`` run (default: the method ``sync``)."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.queue = RateLimitingQueue(name=self.name)
        self.workers = workers
        self._queues = [(self.name, self.queue, sync or self.sync, workers)]
        self._informers_to_sync = list(informers_to_sync)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._own_recorder: EventRecorder | None = None
        self._log = logging.getLogger(f"controllers.{self.name}")

    def sync(self, key) -> None:
        raise NotImplementedError

    def start(self, wait_for_sync: float = 60.0):
        """Starts the informers (idempotent), waits up to ``wait_for_sync``
        seconds for their first lists, then starts the workers (which wait
        on if the lists take longer). Returns self."""
        if self._threads:
            return self
        for inf in self._informers_to_sync:
            inf.start()
        deadline = time.monotonic() + wait_for_sync
        for inf in self._informers_to_sync:
            inf.wait_for_sync(max(0.0, deadline - time.monotonic()))
        self._start_threads()
        return self

    def add_queue(self, name: str, sync, workers: int = 1) -> RateLimitingQueue:
        """Another work queue, whose ``workers`` run ``sync`` on its keys."""
        queue = RateLimitingQueue(name=name)
        self._queues.append((name, queue, sync, workers))
        return queue

    def _start_threads(self) -> None:
        """The workers; a subclass with more loops (a monitor) adds them with ``_spawn``."""
        for name, queue, sync, workers in self._queues:
            for i in range(workers):
                self._spawn(f"{name}-{i}", lambda q=queue, s=sync: self._worker(q, s))

    def every(self, period: float, fn) -> None:
        """Runs ``fn()`` every ``period`` seconds until stop (an exception is logged, the
        loop goes on)."""
        def loop() -> None:
            while not self._stop.wait(period):
                try:
                    fn()
                except Exception:
                    self._log.exception("%s: periodic %s", self.name, getattr(fn, "__name__", fn))
        self._spawn(f"{self.name}-every", loop)

    def _spawn(self, name: str, target) -> None:
        t = threading.Thread(target=target, daemon=True, name=name)
        self._threads.append(t)
        t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the workers (not the shared informers) and flushes the events
        of a recorder the controller made itself."""
        self._stop.set()
        for _, queue, _, _ in self._queues:
            queue.shut_down()
        for t in self._threads:
            t.join(timeout)
        if self._own_recorder is not None:
            self._own_recorder.stop(timeout)

    def _recorder(self, client, recorder: EventRecorder | None, component: str = "") -> EventRecorder:
        """``recorder``, or one of the controller's own (flushed at stop) reporting as ``component``."""
        if recorder is not None:
            return recorder
        self._own_recorder = EventRecorder(client, component or self.name)
        return self._own_recorder

    def enqueue(self, obj) -> None:
        self.queue.add(meta_namespace_key(obj))

    def _worker(self, queue: RateLimitingQueue, sync) -> None:
        while not all(inf.has_synced() for inf in self._informers_to_sync):
            if self._stop.wait(0.05):
                return
        run_worker(queue, sync, self._log)
