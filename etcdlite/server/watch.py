"""The Watch service: one bidirectional stream carries many watchers.

Requests are read by a task of their own; everything sent goes through one
queue per stream, so responses keep the order they were produced in (a
watcher's created response before its events, events in revision order).
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from etcdlite.mvcc import CompactedError
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.server.member import GRPC_OVERHEAD_BYTES
from etcdlite.watch_hub import Watcher, event_to_pb

log = logging.getLogger("etcdlite.watch")

# etcd sends at most this many revisions of history in one response
MAX_REVISIONS_PER_RESPONSE = 1000
ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"


def _field_size(n: int) -> int:
    """Bytes a length-delimited field of n bytes (field number < 16) takes."""
    return 1 + max(1, (n.bit_length() + 6) // 7) + n


class WatchStream:
    def __init__(self, member):
        self.m = member
        self.queue: asyncio.Queue = asyncio.Queue()
        self.watchers: dict[int, Watcher] = {}
        self._next_id = 0
        # watchers sent events since the last progress tick: as in etcd,
        # they are skipped by that tick's progress notification
        self._busy: set[int] = set()

    # --- sending ---------------------------------------------------------

    def _response(self, watch_id: int, revision: int, **fields) -> pb.WatchResponse:
        resp = pb.WatchResponse(watch_id=watch_id, **fields)
        self.m.header(resp.header, revision)
        return resp

    def send_events(self, w: Watcher, events, revision: int) -> None:
        if w.progress_notify:
            self._busy.add(w.id)
        if w.fragment:
            for resp in self._fragments(w, events, revision):
                self.queue.put_nowait(resp)
            return
        resp = self._response(w.id, revision)
        resp.events.extend(events)
        self.queue.put_nowait(resp)

    def send_event_fields(self, w: Watcher, fields: bytes, revision: int) -> None:
        """The fast path of live events: the response is put together from
        bytes (header and events serialized once per revision, whatever
        the number of watchers), not built and serialized per watcher."""
        if w.progress_notify:
            self._busy.add(w.id)
        self.queue.put_nowait(self.m.header_field(revision) + w.id_field + fields)

    def _fragments(self, w: Watcher, events, revision: int):
        """As etcd: a response of two or more events that reaches the limit
        (--max-request-bytes plus the gRPC allowance) is cut into parts,
        each below the limit unless it holds a single event; every part but
        the last carries fragment=true."""
        limit = self.m.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES
        resp = self._response(w.id, revision)
        resp.events.extend(events)
        if len(events) < 2 or resp.ByteSize() < limit:
            yield resp
            return
        empty = self._response(w.id, revision, fragment=True).ByteSize()
        current, size = [], empty
        for ev in events:
            ev_size = _field_size(ev.ByteSize())
            if current and size + ev_size >= limit:
                part = self._response(w.id, revision, fragment=True)
                part.events.extend(current)
                yield part
                current, size = [], empty
            current.append(ev)
            size += ev_size
        part = self._response(w.id, revision)
        part.events.extend(current)
        yield part

    def send_progress(self, w: Watcher, revision: int) -> None:
        """The periodic progress notification (--experimental-watch-progress-notify-interval)."""
        if w.id in self._busy:
            self._busy.discard(w.id)
            return
        self.queue.put_nowait(self._response(w.id, revision))

    def cancel_compacted(self, w: Watcher, compact_revision: int) -> None:
        self._drop(w)
        # etcd's compacted-watcher responses carry header revision 0
        self.queue.put_nowait(self._response(w.id, 0, canceled=True, compact_revision=compact_revision))

    # --- requests --------------------------------------------------------

    def create(self, req: pb.WatchCreateRequest) -> None:
        hub = self.m.hub
        key = req.key or b"\x00"  # an empty key means the smallest key
        range_end = req.range_end
        if range_end and range_end != b"\x00" and key >= range_end:
            self.queue.put_nowait(
                self._response(-1, hub.revision, created=True, canceled=True, cancel_reason=ERR_EMPTY_RANGE)
            )
            return
        watch_id = req.watch_id
        if watch_id:
            if watch_id in self.watchers:
                self.queue.put_nowait(
                    self._response(-1, hub.revision, created=True, canceled=True, cancel_reason=ERR_DUPLICATE_ID)
                )
                return
        else:
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        # only 0 means "from now"; like etcd, a negative start is a revision
        # (below any compaction, so the watcher is cancelled as compacted)
        start = req.start_revision if req.start_revision != 0 else hub.revision + 1
        w = Watcher(
            watch_id, key, range_end,
            prev_kv=req.prev_kv, progress_notify=req.progress_notify, fragment=req.fragment,
            filters=set(req.filters), next_revision=start, stream=self,
        )
        self.watchers[watch_id] = w
        self.queue.put_nowait(self._response(watch_id, hub.revision, created=True))
        if start <= hub.revision:
            raft = self.m.raft
            with raft.lock:
                store = raft.machine.kv
                try:
                    history = store.events_since(start, key, range_end)
                    upto = store.current_revision
                except CompactedError:
                    compacted = store.compact_revision
                    history = None
            if history is None:
                self.queue.put_nowait(
                    self._response(watch_id, 0, canceled=True, compact_revision=compacted)
                )
                del self.watchers[watch_id]
                return
            self._replay(w, history)
            w.next_revision = upto + 1
        hub.add(w)

    def _replay(self, w: Watcher, history) -> None:
        batch, revisions, last = [], 0, None
        for ev in history:
            if not w.wants(ev):
                continue
            rev = ev.kv.mod_revision
            if rev != last:
                if revisions == MAX_REVISIONS_PER_RESPONSE:
                    self.send_events(w, batch, last)
                    batch, revisions = [], 0
                revisions += 1
                last = rev
            batch.append(event_to_pb(ev, w.prev_kv))
        if batch:
            self.send_events(w, batch, last)

    def cancel(self, watch_id: int) -> None:
        w = self.watchers.get(watch_id)
        if w is None:
            return
        self._drop(w)
        self.queue.put_nowait(self._response(watch_id, self.m.hub.revision, canceled=True))

    def progress(self) -> None:
        # not tied to any watcher: every event up to this revision was sent
        self.queue.put_nowait(self._response(-1, self.m.hub.revision))

    def _drop(self, w: Watcher) -> None:
        self.watchers.pop(w.id, None)
        self._busy.discard(w.id)
        self.m.hub.remove(w)

    def close(self) -> None:
        for w in list(self.watchers.values()):
            self._drop(w)


def _serialize(message) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_to_server(service: WatchService, server) -> None:
    """As the generated add_WatchServicer_to_server, except that responses
    may be given already serialized (bytes)."""
    handler = grpc.stream_stream_rpc_method_handler(
        service.Watch, request_deserializer=pb.WatchRequest.FromString, response_serializer=_serialize)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("etcdserverpb.Watch", {"Watch": handler}),))


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, member):
        self.m = member

    async def Watch(self, request_iterator, context):
        stream = WatchStream(self.m)
        reader = asyncio.get_running_loop().create_task(self._read(stream, request_iterator))
        try:
            while True:
                yield await stream.queue.get()
        finally:
            reader.cancel()
            stream.close()

    async def _read(self, stream: WatchStream, request_iterator) -> None:
        try:
            async for req in request_iterator:
                kind = req.WhichOneof("request_union")
                try:
                    if kind == "create_request":
                        stream.create(req.create_request)
                    elif kind == "cancel_request":
                        stream.cancel(req.cancel_request.watch_id)
                    elif kind == "progress_request":
                        stream.progress()
                except Exception:  # a bug must not end other watchers' stream
                    log.exception("watch request %s failed", kind)
        except asyncio.CancelledError:
            raise
        except Exception:
            # the client went away; a client that only half-closes keeps
            # receiving, as with etcd
            pass
