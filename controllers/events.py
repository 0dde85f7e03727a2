"""Events: what a component did or saw, recorded as core.v1 Events.

``EventRecorder(client, component, host).event(obj, type, reason, message)``
writes an Event about ``obj`` (involvedObject = a reference to it) from a
background thread: the caller never waits on the apiserver and never gets an
exception; failures are logged, and events beyond a bounded backlog are
dropped, as client-go's broadcaster does. An event identical to a recent one
(same object, type, reason and message) is folded into it: its count and
lastTimestamp are patched instead of a new Event being created.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque

from apiserver import resources
from apiserver.errors import ApiError
from apiserver.pb import core_pb2, meta_pb2
from apiserver.syntax import DNS1123_SUBDOMAIN_MAX
from controllers.podutil import now_rfc3339

log = logging.getLogger("controllers.events")

NORMAL, WARNING = "Normal", "Warning"
MAX_BACKLOG = 1000  # events waiting to be written; later ones are dropped
AGGREGATION_CACHE = 4096  # recent distinct events remembered for aggregation
MAX_NAME = DNS1123_SUBDOMAIN_MAX  # an Event's name is a DNS subdomain



def object_reference(obj) -> meta_pb2.ObjectReference:
    """A reference to a typed object (an ObjectReference is returned as is)."""
    if isinstance(obj, meta_pb2.ObjectReference):
        return obj
    res = resources.of(obj)
    meta = obj.metadata
    return meta_pb2.ObjectReference(kind=res.kind, api_version=res.api_version,
                                    namespace=meta.namespace if res.namespaced else "",
                                    name=meta.name, uid=meta.uid,
                                    resource_version=meta.resource_version)


def event_name(object_name: str) -> str:
    """"<object name>.<unique suffix>", a valid DNS subdomain."""
    suffix = f"{time.time_ns():x}{secrets.token_hex(2)}"
    base = object_name[:MAX_NAME - len(suffix) - 1].rstrip(".-") or "event"
    return f"{base}.{suffix}"


class EventRecorder:
    def __init__(self, client, component: str, host: str = "") -> None:
        self.client = client
        self.component = component
        self.host = host
        self._cond = threading.Condition()
        self._backlog: deque = deque()
        self._in_flight = 0
        self._stopped = False
        self._thread: threading.Thread | None = None
        # aggregation key -> (event namespace, event name, count)
        self._recent: OrderedDict[tuple, tuple[str, str, int]] = OrderedDict()
        self.dropped = 0

    def event(self, obj, type: str, reason: str, message: str) -> None:
        """Records an Event about ``obj`` (a typed object or an ObjectReference);
        ``type`` is "Normal" or "Warning". Never raises."""
        try:
            if type not in (NORMAL, WARNING):
                log.error("event %s on %s dropped: type %r is neither Normal nor Warning",
                          reason, getattr(obj, "metadata", obj), type)
                return
            ref = meta_pb2.ObjectReference()
            ref.CopyFrom(object_reference(obj))
            with self._cond:
                if self._stopped:
                    return
                if len(self._backlog) >= MAX_BACKLOG:
                    self.dropped += 1
                    # one line per 1,000 drops: logging each one costs more than the event
                    if self.dropped % 1000 == 1:
                        log.warning("event backlog full (%d events); dropped %d so far, e.g. %s %s on %s/%s",
                                    MAX_BACKLOG, self.dropped, type, reason, ref.namespace, ref.name)
                    return
                self._backlog.append((ref, type, reason, message, now_rfc3339()))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name=f"events-{self.component}")
                    self._thread.start()
                self._cond.notify_all()
        except Exception:
            log.exception("recording event %s failed", reason)

    def eventf(self, obj, type: str, reason: str, fmt: str, *args) -> None:
        try:
            message = fmt % args if args else fmt
        except (TypeError, ValueError):
            message = f"{fmt} {args!r}"
        self.event(obj, type, reason, message)

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every event recorded so far was written (or failed)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._backlog or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def stop(self, timeout: float = 5.0) -> None:
        """Writes what is queued (within ``timeout``), then stops."""
        self.flush(timeout)
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the writer thread ----

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._backlog and not self._stopped:
                    self._cond.wait()
                if not self._backlog:
                    return
                item = self._backlog.popleft()
                self._in_flight += 1
            try:
                self._write(*item)
            except Exception:
                log.exception("writing event failed")
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    def _write(self, ref, type: str, reason: str, message: str, timestamp: str) -> None:
        key = (ref.kind, ref.namespace, ref.name, ref.uid, type, reason, message)
        namespace = ref.namespace or "default"
        recent = self._recent.get(key)
        if recent is not None:
            ev_namespace, name, count = recent
            try:
                self.client.patch("events", name, {"count": count + 1, "lastTimestamp": timestamp},
                                  ev_namespace)
                self._remember(key, (ev_namespace, name, count + 1))
                return
            except ApiError as e:
                if e.reason != "NotFound":
                    log.warning("updating event %s/%s failed: %s: %s", ev_namespace, name,
                                e.reason, e.message)
                    return
                # the event was deleted (expired): start a new one
        ev = core_pb2.Event(
            involved_object=ref, reason=reason, message=message, type=type, count=1,
            first_timestamp=timestamp, last_timestamp=timestamp,
            source=core_pb2.EventSource(component=self.component, host=self.host),
            reporting_component=self.component, reporting_instance=self.host)
        ev.metadata.name = event_name(ref.name)
        ev.metadata.namespace = namespace
        try:
            self._create(ev)
        except ApiError as e:
            log.warning("creating event %s on %s %s/%s failed: %s: %s", reason, ref.kind,
                        namespace, ref.name, e.reason, e.message)
            return
        self._remember(key, (namespace, ev.metadata.name, 1))

    def _create(self, ev) -> None:
        try:
            self.client.create(ev)
        except ApiError as e:
            # events about cluster-scoped objects live in "default"; create it
            # if this plane has not yet
            if e.reason != "NotFound" or ev.metadata.namespace != "default" or e.kind != "namespaces":
                raise
            try:
                self.client.create(core_pb2.Namespace(metadata={"name": "default"}))
            except ApiError as e2:
                if e2.reason != "AlreadyExists":
                    raise
            self.client.create(ev)

    def _remember(self, key: tuple, value: tuple[str, str, int]) -> None:
        self._recent[key] = value
        self._recent.move_to_end(key)
        while len(self._recent) > AGGREGATION_CACHE:
            self._recent.popitem(last=False)
