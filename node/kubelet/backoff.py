"""Per-key exponential back-off for container restarts and image pulls.

Kubernetes' flowcontrol.Backoff as the kubelet uses it: the first failure
waits 10 s, each further one doubles the wait up to 300 s; a key whose last
failure is more than twice the cap old (10 minutes) starts again at 10 s. The
clock is injected so every step is a table test.

``container_back_off`` is the kubelet's doBackOff: before restarting a
container it asks whether its last exit is still inside the back-off window,
and if so answers with Kubernetes' CrashLoopBackOff message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from apiserver.pb import core_pb2
from node.kubelet import labels
from node.kubelet.runtime_status import CONTAINER_EXITED, PodRuntimeStatus

INITIAL = 10.0     # seconds: the kubelet's backOffPeriod
MAX = 300.0        # seconds: MaxContainerBackOff

CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"


@dataclass
class _Entry:
    delay: float
    last_update: float


def _fmt(seconds: float) -> str:
    """A duration as Go prints one: 10s, 1m20s, 5m0s."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s}s"
    h, m = divmod(m, 60)
    return f"{h}h{m}m{s}s"


class Backoff:
    """Thread-safe per-key back-off. Times are the clock's (seconds)."""

    def __init__(self, initial: float = INITIAL, cap: float = MAX,
                 clock: Callable[[], float] = time.time) -> None:
        self.initial, self.cap, self.clock = initial, cap, clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def _expired(self, event_time: float, entry: _Entry) -> bool:
        # stable again once it went twice the cap without a failure
        return event_time - entry.last_update > 2 * self.cap

    def next(self, key: str, event_time: float) -> None:
        """Records a failure at ``event_time``: the wait grows (or starts over)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or self._expired(event_time, entry):
                entry = self._entries[key] = _Entry(self.initial, 0.0)
            else:
                entry.delay = min(entry.delay * 2, self.cap)
            entry.last_update = self.clock()

    def get(self, key: str) -> float:
        """The current wait of ``key`` (0 when it has none)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.delay if entry else 0.0

    def is_in_back_off_since(self, key: str, event_time: float) -> bool:
        """True while less than the key's wait has passed since ``event_time``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or self._expired(event_time, entry):
                return False
            return self.clock() - event_time < entry.delay

    def is_in_back_off_since_update(self, key: str, event_time: float) -> bool:
        """True while less than the key's wait has passed between its last
        failure and ``event_time`` (image pulls ask this with now)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or self._expired(event_time, entry):
                return False
            return event_time - entry.last_update < entry.delay

    def reset(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def gc(self) -> None:
        """Forgets the keys stable for twice the cap."""
        now = self.clock()
        with self._lock:
            for key in [k for k, e in self._entries.items() if self._expired(now, e)]:
                del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def container_key(pod: core_pb2.Pod, container: core_pb2.Container) -> str:
    """The back-off key of a container: the pod and the container's spec hash
    (a changed container starts with a clean slate), as getStableKey."""
    m = pod.metadata
    return f"{m.name}_{m.namespace}_{m.uid}_{container.name}_{labels.container_hash(container)}"


def image_key(pod: core_pb2.Pod, image: str) -> str:
    return f"{pod.metadata.uid}_{image}"


def container_back_off(backoff: Backoff, pod: core_pb2.Pod, container: core_pb2.Container,
                       status: PodRuntimeStatus) -> str | None:
    """None when the container may start now (its last exit is then recorded as a
    failure, so the next restart waits longer); else the CrashLoopBackOff message
    to show as its waiting reason."""
    last_exit = next((c for c in status.containers  # newest first
                      if c.name == container.name and c.state == CONTAINER_EXITED), None)
    if last_exit is None:
        return None
    key = container_key(pod, container)
    if backoff.is_in_back_off_since(key, last_exit.finished_at):
        return (f"back-off {_fmt(backoff.get(key))} restarting failed container={container.name} "
                f"pod={labels.format_pod(pod)}")
    backoff.next(key, last_exit.finished_at)
    return None
