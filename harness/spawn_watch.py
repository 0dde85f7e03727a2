"""Notice every child process this interpreter starts, however it is started.

tests/conftest.py arms a SpawnWatch for each test, so that a test which starts a process without
the ``process`` marker fails instead of slipping into ``pytest -m "not process"`` (the quick,
process-free run). A child can come from three doors, each watched here:

- ``subprocess.Popen`` (``subprocess.run``, asyncio's subprocesses, the harness's servers and
  etcdctl): its ``__init__`` is wrapped;
- ``os.fork`` (multiprocessing's "fork" context, pysyncobj's snapshot child): an at-fork hook;
- multiprocessing's "spawn" and "forkserver" contexts, which call ``_posixsubprocess`` directly:
  ``multiprocessing.util.spawnv_passfds`` is wrapped.
"""

from __future__ import annotations

import multiprocessing.util
import os
import subprocess
import threading


class SpawnWatch:
    """While installed, records a short description of every process started; ``take()`` hands
    them over and forgets them. Installs nest: uninstall in the reverse order of install."""

    def __init__(self) -> None:
        self._started: list[str] = []
        self._lock = threading.Lock()
        self._installed = False
        self._saved: tuple | None = None
        self._fork_hook_registered = False  # at-fork hooks cannot be removed: registered once

    def install(self) -> None:
        if self._installed:
            return
        popen_init = subprocess.Popen.__init__
        spawnv_passfds = multiprocessing.util.spawnv_passfds
        watch = self

        def watched_popen_init(popen, args, *a, **kw):
            watch._record(f"subprocess.Popen({args!r})")
            return popen_init(popen, args, *a, **kw)

        def watched_spawnv_passfds(path, args, passfds):
            watch._record(f"multiprocessing spawn of {path} {list(args)!r}")
            return spawnv_passfds(path, args, passfds)

        self._saved = (popen_init, spawnv_passfds)
        subprocess.Popen.__init__ = watched_popen_init
        multiprocessing.util.spawnv_passfds = watched_spawnv_passfds
        if not self._fork_hook_registered:
            os.register_at_fork(before=self._on_fork)
            self._fork_hook_registered = True
        self._installed = True

    def uninstall(self) -> None:
        if not self._installed:
            return
        subprocess.Popen.__init__, multiprocessing.util.spawnv_passfds = self._saved
        self._installed = False

    def take(self) -> list[str]:
        """What was started since the last take(), oldest first."""
        with self._lock:
            started, self._started = self._started, []
        return started

    def _on_fork(self) -> None:
        if self._installed:
            self._record(f"os.fork() in thread {threading.current_thread().name}")

    def _record(self, what: str) -> None:
        with self._lock:
            self._started.append(what)
