"""The Watch service: one bidirectional stream carries many watchers.

Requests are read by a task of their own; everything sent goes through one
queue per stream, so responses keep the order they were produced in (a
watcher's created response before its events, events in revision order).

A stream whose client reads slower than events come holds at most
MAX_QUEUED_BYTES (or MAX_QUEUED_MESSAGES) of unsent responses: beyond that
each watcher that has an event for it leaves the live fan-out instead
("unsynced"; etcd's "victims"), one at a time, so that falling behind costs
what sending would have. Once the client has read the backlog they are caught
up from the store's history a bounded step at a time (at most
MAX_WATCHERS_PER_SYNC watchers a step, one step a turn of the loop), then
rejoin. A watcher created with a start revision in the past is caught up the
same way. History compacted before a watcher caught up cancels it with
compact_revision, as etcd does; nothing is dropped silently. Requests wait
while the queue is over its limits (as etcd's receive loop waits for its
send loop), so a client that never reads cannot make the stream hold more.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from itertools import islice

from etcdlite import errors
from etcdlite.apply import StateMachine
from etcdlite.config import GRPC_OVERHEAD_BYTES
from etcdlite.mvcc import CompactedError
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from etcdlite.server.backend import Backend
from etcdlite.watch_hub import Watcher, event_to_pb
from grpclite import GrpcServer, add_servicer

log = logging.getLogger("etcdlite.watch")

# etcd sends at most this many revisions of history in one response
MAX_REVISIONS_PER_RESPONSE = 1000
# unsent responses a stream may hold before its watchers fall behind (see above)
MAX_QUEUED_BYTES = 16 << 20
MAX_QUEUED_MESSAGES = 50_000
# unsynced watchers one catch-up step serves (etcd's maxWatchersPerSync)
MAX_WATCHERS_PER_SYNC = 512
ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"


def _field_size(n: int) -> int:
    """Bytes a length-delimited field of n bytes (field number < 16) takes."""
    return 1 + max(1, (n.bit_length() + 6) // 7) + n


def _size(message) -> int:
    return len(message) if type(message) is bytes else message.ByteSize()


class WatchStream:
    """The watchers of one Watch call and what is to be sent to them.

    With etcdlite's gRPC server a response is written to the HTTP/2 stream
    at once (`writer.try_write`) unless that stream already holds its share
    of unsent data or older responses wait here; `queue` holds only what the
    client has not made room for. With grpc.aio's server everything goes
    through `queue` and the handler's async generator."""

    def __init__(self, member: Backend, writer=None):
        self.m = member
        self.writer = writer  # grpclite's ServicerContext, or None
        self.queue: deque = deque()
        self.queued_bytes = 0
        self._wakeup: asyncio.Future | None = None
        self._room: asyncio.Future | None = None  # the request reader waits for room
        self.watchers: dict[int, Watcher] = {}
        # watchers out of the live fan-out, waiting for history (by id)
        self.unsynced: dict[int, Watcher] = {}
        self._progress_deferred = False
        self._next_id = 0
        # watchers sent events since the last progress tick: as in etcd,
        # they are skipped by that tick's progress notification
        self._busy: set[int] = set()

    # --- sending ---------------------------------------------------------

    def _enqueue(self, message) -> None:
        queue = self.queue
        if not queue and self.writer is not None and self.writer.try_write(message):
            return
        queue.append(message)
        self.queued_bytes += _size(message)
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _queued(self) -> None:
        """Until something is queued or some watcher waits for history."""
        while not self.queue and not self.unsynced:
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup

    def _pop(self):
        message = self.queue.popleft()
        self.queued_bytes -= _size(message)
        room = self._room
        if room is not None and not self._half_full():
            self._room = None
            if not room.done():  # else the reader was cancelled
                room.set_result(None)
        return message

    def _full(self) -> bool:
        return self.queued_bytes > MAX_QUEUED_BYTES or len(self.queue) > MAX_QUEUED_MESSAGES

    def _half_full(self) -> bool:
        return self.queued_bytes >= MAX_QUEUED_BYTES // 2 or len(self.queue) >= MAX_QUEUED_MESSAGES // 2

    async def room(self) -> None:
        """Until the queue is under half its limits, if it is over them: the
        requests' reader waits here, and the client's requests then wait in
        the transport (bounded by its flow control)."""
        while self._full():
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await self._room

    async def responses(self):
        """The responses in order, for a server that sends what a generator
        yields; catches unsynced watchers up when the client has read
        everything queued."""
        while True:
            while not self.queue and self.unsynced:
                self.catch_up()
                await asyncio.sleep(0)  # a step a turn, as in send_queued
            await self._queued()
            if self.queue:
                yield self._pop()

    async def send_queued(self) -> None:
        """With a writer: whenever the client makes room, send what is
        queued, then catch unsynced watchers up; returns when the call ends."""
        writer = self.writer
        while not writer.done():
            if self.queue:
                if writer.try_write(self.queue[0]):
                    self._pop()
                else:
                    await writer.writable()
            elif self.unsynced and writer.writable_now():
                self.catch_up()
                await asyncio.sleep(0)  # a step a turn: the loop serves others between steps
            elif self.unsynced:
                await writer.writable()
            else:
                await self._queued()

    def _fall_behind(self, w: Watcher, revision: int) -> None:
        """w leaves the live fan-out instead of being sent revision's events
        (the queue is over its limits): it gets them from history, with what
        follows, once the client has read the backlog. Only the watcher that
        has an event moves, so a stream's fall costs O(1) per event, never a
        walk over its other watchers."""
        self.m.hub.park(w)
        w.next_revision = revision
        self.unsynced[w.id] = w

    def catch_up(self) -> None:
        """One bounded step of history for the unsynced watchers: one
        response each (see _replay) for at most MAX_WATCHERS_PER_SYNC of
        them, while the queue is under half its limits. A watcher that
        reaches the store's revision rejoins the live fan-out (the hub skips
        what it already got)."""
        self.m.read(self._catch_up_from)
        if not self.unsynced and self._progress_deferred:
            self._progress_deferred = False
            self.progress()

    def _catch_up_from(self, machine: StateMachine) -> None:
        """catch_up's step, under the lock that applying takes: the first
        MAX_WATCHERS_PER_SYNC unsynced watchers; one that is not done goes
        to the back of the line."""
        hub = self.m.hub
        store = machine.kv
        upto = store.current_revision
        unsynced = self.unsynced
        if self._half_full():
            return
        # watchers that fell behind together on one range share one read of its history
        histories: dict[tuple[int, bytes, bytes], list] = {}
        for w in list(islice(unsynced.values(), MAX_WATCHERS_PER_SYNC)):
            if self._half_full():
                break
            span = (w.next_revision, w.key, w.range_end)
            history = histories.get(span)
            if history is None:
                try:
                    history = histories[span] = store.events_since(*span)
                except CompactedError:
                    self.cancel_compacted(w, store.compact_revision)
                    continue
            done = self._replay(w, history, upto)
            del unsynced[w.id]
            if done:
                w.next_revision = upto + 1
                hub.add(w)
            else:
                unsynced[w.id] = w

    def _response(self, watch_id: int, revision: int, **fields) -> pb.WatchResponse:
        resp = pb.WatchResponse(watch_id=watch_id, **fields)
        self.m.header(resp.header, revision)
        return resp

    def send_events(self, w: Watcher, events, revision: int) -> None:
        """Live events (the hub's), as messages."""
        if self.queue and self._full():
            self._fall_behind(w, revision)
            return
        self._send(w, events, revision)

    def _send(self, w: Watcher, events, revision: int) -> None:
        if w.progress_notify:
            self._busy.add(w.id)
        if w.fragment:
            for resp in self._fragments(w, events, revision):
                self._enqueue(resp)
        else:
            resp = self._response(w.id, revision)
            resp.events.extend(events)
            self._enqueue(resp)

    def send_event_fields(self, w: Watcher, fields: bytes, revision: int) -> None:
        """The fast path of live events: the response is put together from
        bytes (header and events serialized once per revision, whatever
        the number of watchers), not built and serialized per watcher."""
        queue = self.queue
        if queue and (self.queued_bytes > MAX_QUEUED_BYTES or len(queue) > MAX_QUEUED_MESSAGES):
            self._fall_behind(w, revision)
            return
        if w.progress_notify:
            self._busy.add(w.id)
        self._enqueue(self.m.header_field(revision) + w.id_field + fields)

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
        if self._full():
            return  # the client has not read what came before: as etcd, no notification
        self._enqueue(self._response(w.id, revision))

    def cancel_compacted(self, w: Watcher, compact_revision: int) -> None:
        self._drop(w)
        # etcd's compacted-watcher responses carry header revision 0
        self._enqueue(self._response(w.id, 0, canceled=True, compact_revision=compact_revision))

    # --- requests --------------------------------------------------------

    def create(self, req: pb.WatchCreateRequest) -> None:
        hub = self.m.hub
        key = req.key or b"\x00"  # an empty key means the smallest key
        range_end = req.range_end
        if range_end and range_end != b"\x00" and key >= range_end:
            self._enqueue(
                self._response(-1, hub.revision, created=True, canceled=True, cancel_reason=ERR_EMPTY_RANGE)
            )
            return
        watch_id = req.watch_id
        if watch_id:
            if watch_id in self.watchers:
                self._enqueue(
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
        self._enqueue(self._response(watch_id, hub.revision, created=True))
        if start <= hub.revision or self.unsynced or hub.publishing:
            # history first (or the stream is behind anyway, or the hub is part-way
            # through a revision this watcher would miss): through catch-up
            hub.park(w)
            self.unsynced[watch_id] = w
            self.catch_up()
            if self.unsynced:
                # more to replay than one step sent: the sender, which may be waiting for
                # something queued (the step's responses went straight out), goes on
                self._wake()
        else:
            hub.add(w)

    def refuse(self, reason: str) -> None:
        """A create request the sender may not make (auth): etcd's answer,
        created and canceled at once, with the reason."""
        self._enqueue(self._response(-1, self.m.hub.revision, created=True, canceled=True, cancel_reason=reason))

    def _replay(self, w: Watcher, history, upto: int) -> bool:
        """Send w one response of history (the events it wants): at most
        MAX_REVISIONS_PER_RESPONSE revisions, and no more than fit the
        response size limit and keep the queue under half its byte limit (at
        least one revision). True if that was
        all of it, else w.next_revision is where the rest starts.

        Its header carries `upto`, the store's revision when the history was
        read, not its last event's: etcd's catch-up of unsynced watchers
        (syncWatchers) stamps every response it sends with the store's
        current revision, each part of a long replay too. A live response
        carries its events' revision, which is the current one then."""
        batch, revisions, last = [], 0, None
        # responses stay below the size live ones get cut at (see _fragments),
        # so that clients with gRPC's default 4 MiB receive limit can read them;
        # a watcher that takes fragments gets, as from etcd, the revisions one
        # response would hold, cut into parts at that size
        room = MAX_QUEUED_BYTES // 2 - self.queued_bytes
        if not w.fragment:
            room = min(room, self.m.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES - 1024)
        for ev in history:
            if not w.wants(ev):
                continue
            rev = ev.kv.mod_revision
            if rev != last:
                if revisions and (revisions == MAX_REVISIONS_PER_RESPONSE or room <= 0):
                    self._send(w, batch, upto)
                    w.next_revision = rev
                    return False
                revisions += 1
                last = rev
            pbev = event_to_pb(ev, w.prev_kv)
            room -= pbev.ByteSize()
            batch.append(pbev)
        if batch:
            self._send(w, batch, upto)
        return True

    def cancel(self, watch_id: int) -> None:
        w = self.watchers.get(watch_id)
        if w is None:
            return
        self._drop(w)
        self._enqueue(self._response(watch_id, self.m.hub.revision, canceled=True))

    def progress(self) -> None:
        # not tied to any watcher: every event up to this revision was sent,
        # which is not so while some watcher is catching up (etcd defers it too)
        if self.unsynced:
            self._progress_deferred = True
            return
        self._enqueue(self._response(-1, self.m.hub.revision))

    def _drop(self, w: Watcher) -> None:
        self.watchers.pop(w.id, None)
        self.unsynced.pop(w.id, None)
        self._busy.discard(w.id)
        self.m.hub.remove(w)

    def close(self) -> None:
        for w in list(self.watchers.values()):
            self._drop(w)


def add_to_server(service: WatchService, server) -> None:
    """As the generated add_WatchServicer_to_server, except that responses
    may be given already serialized (bytes), and that on etcdlite's own
    server the handler writes to its stream itself (Watch is then the
    coroutine watch_direct; grpc.aio's server needs the generator)."""
    if isinstance(server, GrpcServer):
        service.Watch = service.watch_direct
    add_servicer(rpc_pb2_grpc.add_WatchServicer_to_server, service, server)


class WatchService(rpc_pb2_grpc.WatchServicer):
    def __init__(self, member: Backend):
        self.m = member

    async def Watch(self, request_iterator, context):
        stream = WatchStream(self.m)
        reader = asyncio.get_running_loop().create_task(self._read(stream, request_iterator, context))
        try:
            async for response in stream.responses():
                yield response
        finally:
            reader.cancel()
            stream.close()

    async def watch_direct(self, request_iterator, context):
        stream = WatchStream(self.m, writer=context)
        reader = asyncio.get_running_loop().create_task(self._read(stream, request_iterator, context))
        try:
            await stream.send_queued()
        finally:
            reader.cancel()
            stream.close()

    async def _refusal(self, context, req: pb.WatchCreateRequest) -> str | None:
        """Why the sender may not watch what it asks for, as etcd words it
        (its gRPC error as Go prints it), None if it may. Unlike etcd 3.4,
        which checks only the first key of a watch from a key on, the whole
        range is checked, as for a Range."""
        try:
            await self.m.auth.check_read(context, req.key or b"\x00", req.range_end)
        except errors.EtcdError as err:
            if err not in (errors.INVALID_AUTH_TOKEN, errors.AUTH_OLD_REVISION, errors.USER_EMPTY):
                err = errors.PERMISSION_DENIED
            go_code = "".join(word.capitalize() for word in err.code.name.split("_"))
            return f"rpc error: code = {go_code} desc = {err.message}"
        return None

    async def _read(self, stream: WatchStream, request_iterator, context) -> None:
        auth = self.m.auth
        try:
            async for req in request_iterator:
                await stream.room()
                kind = req.WhichOneof("request_union")
                try:
                    if kind == "create_request":
                        if auth.needed(context):
                            reason = await self._refusal(context, req.create_request)
                            if reason is not None:
                                stream.refuse(reason)
                                continue
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
