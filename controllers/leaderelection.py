"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's.

Several replicas of a component (controller-manager, scheduler) each run a
``LeaderElector`` on one Lease; at most one holds it and acts. The lease
records the holder, its leaseDurationSeconds, acquireTime, renewTime and the
count of leaseTransitions; every write is a compare-and-swap on the lease's
resourceVersion, so two candidates never both win one round.

Expiry is judged by the candidate's own monotonic clock, never by comparing
clocks across machines: a lease held by someone else counts as expired once
its record has not changed for leaseDurationSeconds since this candidate
first saw it as it is. So a new candidate waits a full lease duration before
taking over, even from a holder that died long ago.

The leader renews every ``retry_period``. If it cannot renew for
``renew_deadline`` (shorter than ``lease_duration``, so it stops acting before
anyone else may start), it gives leadership up, calls ``on_stopped_leading``,
and ``run()`` returns; the process then usually exits and restarts as a
candidate. ``stop()`` releases a held lease (empty holder) so a standby takes
over at its next retry rather than after the lease duration.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from apiserver.errors import ApiError
from apiserver.pb import coordination_pb2, core_pb2

log = logging.getLogger("controllers.leaderelection")

JITTER = 1.2  # retries wait retry_period * [1, JITTER)


def now_micro() -> str:
    """The current time as Kubernetes' MicroTime (RFC 3339, microseconds, UTC)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(lease) -> tuple:
    s = lease.spec
    return (s.holder_identity, s.lease_duration_seconds, s.acquire_time, s.renew_time,
            s.lease_transitions)


class LeaderElector:
    def __init__(self, client, lease_name: str, namespace: str = "kube-system", *, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 on_started_leading: Callable[[], None] | None = None,
                 on_stopped_leading: Callable[[], None] | None = None,
                 release_on_stop: bool = True) -> None:
        """``on_started_leading()`` runs in a thread of its own (it may block:
        it is typically the component's main loop) once this candidate leads;
        ``on_stopped_leading()`` runs in the elector's thread when leadership
        ends (lost or released by ``stop()``), only if it had started."""
        if not identity:
            raise ValueError("identity must not be empty")
        if not lease_duration > renew_deadline > 0:
            raise ValueError("need lease_duration > renew_deadline > 0")
        if not renew_deadline > retry_period * JITTER > 0:
            raise ValueError(f"need renew_deadline > retry_period * {JITTER}")
        self.client = client
        self.lease_name = lease_name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.release_on_stop = release_on_stop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # the lease as last read or written, and when (monotonic) its record last changed
        self._observed: coordination_pb2.Lease | None = None
        self._observed_at = 0.0
        self._leading = False
        # monotonic start of the last successful acquire/renew round (the lease
        # was written after it, so leadership is counted conservatively)
        self._last_renew = 0.0
        self._namespace_ready = False

    def __repr__(self) -> str:
        return f"<LeaderElector {self.namespace}/{self.lease_name} {self.identity} leading={self._leading}>"

    # ---- public ----

    def is_leader(self) -> bool:
        """True while this candidate holds the lease and renewed it within renew_deadline."""
        with self._lock:
            return self._leading and time.monotonic() - self._last_renew < self.renew_deadline

    def leader(self) -> str:
        """The holder identity last observed ("" when none)."""
        with self._lock:
            return self._observed.spec.holder_identity if self._observed is not None else ""

    def run(self) -> None:
        """Campaigns until leading, leads until the lease is lost or ``stop()``."""
        if not self._acquire_loop():
            return
        threading.Thread(target=self._started, daemon=True,
                         name=f"leader-{self.lease_name}").start()
        try:
            self._renew_loop()
        finally:
            with self._lock:
                self._leading = False
            log.info("%s: stopped leading %s/%s", self.identity, self.namespace, self.lease_name)
            if self.on_stopped_leading is not None:
                try:
                    self.on_stopped_leading()
                except Exception:
                    log.exception("on_stopped_leading failed")
            # released only after the component stopped acting on its leadership
            if self._stop.is_set() and self.release_on_stop:
                self._release()

    def start(self) -> "LeaderElector":
        """``run()`` in a daemon thread."""
        self._thread = threading.Thread(target=self.run, daemon=True,
                                        name=f"leaderelection-{self.lease_name}")
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stops campaigning; a leader calls on_stopped_leading, then releases
        the lease (unless release_on_stop is False), before this returns."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---- the loops ----

    def _started(self) -> None:
        log.info("%s: became leader of %s/%s", self.identity, self.namespace, self.lease_name)
        if self.on_started_leading is not None:
            try:
                self.on_started_leading()
            except Exception:
                log.exception("on_started_leading failed")

    def _wait_retry(self) -> bool:
        """Sleeps one jittered retry period; False when stopped meanwhile."""
        return not self._stop.wait(self.retry_period * random.uniform(1.0, JITTER))

    def _acquire_loop(self) -> bool:
        while not self._stop.is_set():
            started = time.monotonic()
            if self._try_acquire_or_renew():
                with self._lock:
                    self._leading = True
                    self._last_renew = started
                return True
            if not self._wait_retry():
                break
        return False

    def _renew_loop(self) -> None:
        while self._wait_retry():
            deadline = time.monotonic() + self.renew_deadline
            while True:
                started = time.monotonic()
                if self._bounded_round(deadline - started):
                    with self._lock:
                        self._last_renew = started
                    break
                if self._stop.is_set():
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("%s: could not renew %s/%s within %.1fs; giving up leadership",
                                self.identity, self.namespace, self.lease_name, self.renew_deadline)
                    return
                if self._stop.wait(min(self.retry_period, left)):
                    return

    def _bounded_round(self, timeout: float) -> bool:
        """A round that counts as failed after ``timeout`` seconds. It runs in a
        daemon thread, so a call stuck on an unreachable apiserver (the client's
        own timeout may be long) cannot keep a leader past its renew deadline."""
        result: list[bool] = []
        t = threading.Thread(target=lambda: result.append(self._try_acquire_or_renew()),
                             daemon=True, name=f"lease-round-{self.lease_name}")
        t.start()
        t.join(max(0.0, timeout))
        return bool(result and result[0])

    # ---- one round ----

    def _try_acquire_or_renew(self) -> bool:
        """One read-and-CAS round; True when this candidate holds the lease after it."""
        try:
            self._ensure_namespace()
            return self._round()
        except ApiError as e:
            if e.reason != "Conflict":
                log.warning("%s: lease %s/%s: %s: %s", self.identity, self.namespace,
                            self.lease_name, e.reason, e.message)
            return False
        except Exception:
            log.exception("%s: lease %s/%s round failed", self.identity, self.namespace, self.lease_name)
            return False

    def _round(self) -> bool:
        now = now_micro()
        try:
            lease = self.client.get("leases", self.lease_name, self.namespace)
        except ApiError as e:
            if e.reason != "NotFound":
                raise
            lease = coordination_pb2.Lease()
            lease.metadata.name = self.lease_name
            lease.metadata.namespace = self.namespace
            self._fill(lease, now, acquired=True, transitions=0)
            try:
                created = self.client.create(lease)
            except ApiError as e2:
                if e2.reason == "AlreadyExists":
                    return False
                raise
            self._observe(created, changed=True)
            return True

        self._observe(lease, changed=self._observed is None or _record(lease) != _record(self._observed))
        spec = lease.spec
        holder = spec.holder_identity if spec.HasField("holder_identity") else ""
        held_by_me = holder == self.identity
        if holder and not held_by_me:
            duration = spec.lease_duration_seconds if spec.HasField("lease_duration_seconds") else 0
            with self._lock:
                unchanged_for = time.monotonic() - self._observed_at
            if unchanged_for < duration:
                return False
        new = coordination_pb2.Lease()
        new.CopyFrom(lease)  # keeps resourceVersion: the update is a CAS on it
        if held_by_me:
            new.spec.renew_time = now
            new.spec.lease_duration_seconds = math.ceil(self.lease_duration)
        else:
            transitions = spec.lease_transitions + 1 if spec.HasField("lease_transitions") else 1
            self._fill(new, now, acquired=True, transitions=transitions)
        updated = self.client.update(new)
        self._observe(updated, changed=True)
        return True

    def _fill(self, lease, now: str, *, acquired: bool, transitions: int) -> None:
        lease.spec.holder_identity = self.identity
        lease.spec.lease_duration_seconds = math.ceil(self.lease_duration)
        if acquired:
            lease.spec.acquire_time = now
        lease.spec.renew_time = now
        lease.spec.lease_transitions = transitions

    def _observe(self, lease, *, changed: bool) -> None:
        with self._lock:
            self._observed = lease
            if changed:
                self._observed_at = time.monotonic()

    def _release(self) -> bool:
        """Gives a held lease up at once: empty holder, so standbys need not wait."""
        try:
            lease = self.client.get("leases", self.lease_name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return False
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = now_micro()
            self.client.update(lease)
            return True
        except ApiError as e:
            log.warning("%s: releasing %s/%s failed: %s: %s", self.identity, self.namespace,
                        self.lease_name, e.reason, e.message)
            return False

    def _ensure_namespace(self) -> None:
        if self._namespace_ready:
            return
        try:
            self.client.get("namespaces", self.namespace, "")
        except ApiError as e:
            if e.reason == "Forbidden":
                # a least-privilege identity (the cloud-controller-manager's) may not read
                # namespaces; a secure apiserver makes kube-system itself at start, and a Lease
                # in a missing namespace would fail on its own with NotFound
                self._namespace_ready = True
                return
            if e.reason != "NotFound":
                raise
            try:
                self.client.create(core_pb2.Namespace(metadata={"name": self.namespace}))
            except ApiError as e2:
                if e2.reason != "AlreadyExists":
                    raise
        self._namespace_ready = True
