"""Watchers and the fan-out of applied events to them.

Raft applies commands; their events reach the `WatchHub` in apply order,
through `publish`. A watcher that starts in the
past first gets history from the MVCC store, then live events from the hub;
`next_revision` makes the hand-over exact (no event twice, none missed).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from etcdlite.apply import kv_to_pb
from etcdlite.mvcc import DELETE, PUT, Event
from etcdlite.pb.mvccpb import kv_pb2

NOPUT = 0
NODELETE = 1
_INT64_MASK = (1 << 64) - 1
# events a step of `WatchHub.publish_steps` converts (a few milliseconds of work); a
# revision with fewer is published in one go
STEP_EVENTS = 512


def event_to_pb(ev: Event, with_prev: bool) -> kv_pb2.Event:
    out = kv_pb2.Event(type=ev.type)
    kv = ev.kv
    if ev.type == DELETE:
        out.kv.key = kv.key
        out.kv.mod_revision = kv.mod_revision
    else:
        out.kv.CopyFrom(kv_to_pb(kv))
    if with_prev and ev.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_to_pb(ev.prev_kv))
    return out


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, n >> 14))
    if n < 0x10000000:  # revisions past two million
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, (n >> 14) & 0x7F | 0x80, n >> 21))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def event_field(ev: kv_pb2.Event) -> bytes:
    """The event as WatchResponse's `events` field (number 11) on the wire."""
    data = ev.SerializeToString()
    return b"\x5a" + varint(len(data)) + data


class Watcher:
    __slots__ = ("id", "key", "range_end", "prev_kv", "progress_notify", "fragment",
                 "skip_put", "skip_delete", "next_revision", "stream", "id_field")

    def __init__(self, watch_id, key, range_end, *, prev_kv, progress_notify, fragment, filters,
                 next_revision, stream):
        self.id = watch_id
        self.key = key
        self.range_end = range_end  # b"" single key, b"\0" from key, else [key, end)
        self.prev_kv = prev_kv
        self.progress_notify = progress_notify
        self.fragment = fragment
        self.skip_put = NOPUT in filters
        self.skip_delete = NODELETE in filters
        self.next_revision = next_revision
        self.stream = stream
        # WatchResponse's watch_id field (number 2) on the wire; 0 is left out, as protobuf does,
        # and a negative ID (etcd takes any the client gives) is its 64-bit two's complement
        self.id_field = b"\x10" + varint(watch_id & _INT64_MASK) if watch_id else b""

    def matches_range(self, key: bytes) -> bool:
        if key < self.key:
            return False
        end = self.range_end
        return end == b"\x00" or key < end

    def wants(self, ev: Event) -> bool:
        if ev.type == PUT:
            return not self.skip_put
        return not self.skip_delete


class WatchHub:
    """Live watchers ("synced": they get each revision's events as it is
    published) and parked ones ("unsynced": their stream catches them up
    from the store's history, then adds them back)."""

    def __init__(self, revision: int):
        self.revision = revision  # the newest revision published to watchers
        self._by_key: dict[bytes, set[Watcher]] = {}
        self._ranges: set[Watcher] = set()
        self._parked: set[Watcher] = set()
        # a revision is being published a step at a time (publish_steps): a new
        # watcher must catch up from history instead of joining the fan-out
        self.publishing = False

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_key.values()) + len(self._ranges) + len(self._parked)

    def live(self) -> bool:
        """Whether any watcher waits for published events."""
        return bool(self._by_key or self._ranges)

    def add(self, w: Watcher) -> None:
        self._parked.discard(w)
        if w.range_end:
            self._ranges.add(w)
        else:
            self._by_key.setdefault(w.key, set()).add(w)

    def park(self, w: Watcher) -> None:
        """Stop publishing to w (it stays known, for reset)."""
        self.remove(w)
        self._parked.add(w)

    def remove(self, w: Watcher) -> None:
        self._parked.discard(w)
        if w.range_end:
            self._ranges.discard(w)
            return
        group = self._by_key.get(w.key)
        if group is not None:
            group.discard(w)
            if not group:
                del self._by_key[w.key]

    def holds(self, w: Watcher) -> bool:
        """Whether w is live (in the fan-out)."""
        if w.range_end:
            return w in self._ranges
        group = self._by_key.get(w.key)
        return group is not None and w in group

    def watchers(self):
        """The live watchers."""
        for group in self._by_key.values():
            yield from group
        yield from self._ranges

    def reset(self, revision: int) -> None:
        """The state was replaced by a snapshot: history may have gaps, so
        watchers, live and parked, are cancelled as compacted and clients
        restart them."""
        self.revision = revision
        for w in [*self.watchers(), *self._parked]:
            w.stream.cancel_compacted(w, revision)

    def publish(self, events: list[Event], revision: int) -> None:
        """Deliver the events of one applied command (one revision)."""
        self.revision = revision
        by_key, ranges = self._by_key, self._ranges
        if not by_key and not ranges:
            return
        if len(events) > 1:
            self._publish_many(events, revision)
            return
        matched: dict[Watcher, list[Event]] = {}
        for ev in events:
            key = ev.kv.key
            group = by_key.get(key)
            if group:
                for w in group:
                    if w.wants(ev):
                        matched.setdefault(w, []).append(ev)
            for w in ranges:
                if w.matches_range(key) and w.wants(ev):
                    matched.setdefault(w, []).append(ev)
        if not matched:
            return
        # each event is converted (and serialized) once, whatever the number of watchers
        cache: dict[tuple[int, bool], kv_pb2.Event] = {}
        wire: dict[tuple[int, bool], bytes] = {}
        for w, evs in matched.items():
            if revision < w.next_revision:
                continue  # already sent from history
            w.next_revision = revision + 1
            out = []
            for ev in evs:
                slot = (id(ev), w.prev_kv)
                pbev = cache.get(slot)
                if pbev is None:
                    pbev = cache[slot] = event_to_pb(ev, w.prev_kv)
                out.append(pbev)
            if w.fragment:
                w.stream.send_events(w, out, revision)  # may need cutting into parts
                continue
            fields = []
            for ev, pbev in zip(evs, out):
                slot = (id(ev), w.prev_kv)
                field = wire.get(slot)
                if field is None:
                    field = wire[slot] = event_field(pbev)
                fields.append(field)
            w.stream.send_event_fields(w, fields[0] if len(fields) == 1 else b"".join(fields), revision)

    def _publish_many(self, events: list[Event], revision: int) -> None:
        for _ in self._publish_many_steps(events, revision, False):
            pass

    def publish_steps(self, events: list[Event], revision: int):
        """`publish` as a generator that yields between steps of
        STEP_EVENTS events, for a revision of many (a DeleteRange of 300k
        keys took seconds in one go). Each watcher still gets the whole
        revision at once, at the last step; until then `revision` stays
        the previous one (progress notifications claim nothing unsent) and
        `publishing` is set: watchers created meanwhile catch up from the
        store's history, which holds this revision already."""
        if len(events) <= STEP_EVENTS or (not self._by_key and not self._ranges):
            self.publish(events, revision)
            return
        self.publishing = True
        try:
            yield from self._publish_many_steps(events, revision, True)
        finally:
            self.publishing = False

    def _publish_many_steps(self, events: list[Event], revision: int, stepped: bool):
        """publish for a revision of several events (a txn, a range delete, a
        lease's keys): the events sorted by key, each watcher finds its own
        by bisection, and watchers that want the same span of them share one
        response body. The cost is a bisection per watcher plus the events
        sent, never events x watchers. A generator: `stepped`, it yields
        between steps (see publish_steps), and the watchers sent to are those
        live at the end."""
        order, keys = yield from _key_order(events)
        spans: list[tuple[Watcher, int, int]] = []  # a watcher and its events: keys[lo:hi]
        by_key = self._by_key
        # the fewer of the single-key watchers' keys and the revision's keys is walked
        for key in by_key if len(by_key) < len(keys) else dict.fromkeys(keys):
            group = by_key.get(key)
            if group:
                lo = bisect_left(keys, key)
                if lo < len(keys) and keys[lo] == key:
                    spans.extend((w, lo, bisect_right(keys, key, lo)) for w in group)
        everything = len(keys)
        for w in self._ranges:
            lo = bisect_left(keys, w.key)
            hi = everything if w.range_end == b"\x00" else bisect_left(keys, w.range_end)
            if lo < hi:
                spans.append((w, lo, hi))
        bodies: dict[tuple, tuple[list, bytes]] = {}
        converted: dict = {}
        if stepped:
            # every body made first, a step at a time, then all sent in one go; a body for
            # watchers without `fragment` keeps only the events' bytes (the messages go as
            # they are made, not all at the end)
            for w, lo, hi in spans:
                slot = (lo, hi, w.prev_kv, w.skip_put, w.skip_delete, w.fragment)
                if revision >= w.next_revision and slot not in bodies:
                    bodies[slot] = yield from _body_steps(events, order[lo:hi], w, converted)
            yield from _release(converted)  # each event's bytes: a step at a time too
            self.revision = revision
        for w, lo, hi in spans:  # a list: sending may take w out of the hub's sets
            if revision < w.next_revision:
                continue  # already sent from history
            if stepped and not self.holds(w):
                continue  # cancelled, or its stream ended, while the bodies were made
            slot = (lo, hi, w.prev_kv, w.skip_put, w.skip_delete, w.fragment)
            body = bodies.get(slot)
            if body is None:
                body = bodies[slot] = _body(events, sorted(order[lo:hi]), w, converted)
            out, fields = body
            if not out:
                continue  # its filters leave nothing
            w.next_revision = revision + 1
            if w.fragment:
                w.stream.send_events(w, out, revision)  # may need cutting into parts
            else:
                w.stream.send_event_fields(w, fields, revision)


def _key_order(events: list[Event]):
    """(indices of events in key order, their keys in that order), a
    generator (see publish_steps): a range delete's or a lease's events are
    in key order already, which a step at a time finds; others are sorted."""
    n = len(events)
    keys: list[bytes] = []
    for lo in range(0, n, STEP_EVENTS):
        if lo:
            yield
        part = [ev.kv.key for ev in events[lo:lo + STEP_EVENTS]]
        if (keys and part[0] < keys[-1]) or any(a > b for a, b in zip(part, part[1:])):
            order = sorted(range(n), key=lambda i: events[i].kv.key)
            return order, [events[i].kv.key for i in order]
        keys += part
    return range(n), keys


def _body_steps(events: list[Event], indices, w: Watcher, converted: dict):
    """`_body` a step at a time (a generator); `indices` in any order. For a
    watcher without `fragment` the messages are not kept: the body's first
    part is then the number of events, not their list."""
    indices = sorted(indices)
    out, fields = [], []
    kept = 0
    for lo in range(0, len(indices), STEP_EVENTS):
        if lo:
            yield
        part = indices[lo:lo + STEP_EVENTS]
        if w.fragment:
            part_out, part_fields = _body(events, part, w, converted)
            out += part_out
        else:
            part_fields, n = _fields(events, part, w, converted)
            kept += n
        fields.append(part_fields)
    return (out if w.fragment else kept), b"".join(fields)


def _release(items: dict):
    """Empty `items` a step at a time (a generator): freeing hundreds of thousands of objects
    at once is a stall of its own."""
    pop = items.popitem
    while items:
        for _ in range(min(STEP_EVENTS * 4, len(items))):
            pop()
        yield


def _fields(events: list[Event], indices: list[int], w: Watcher, converted: dict) -> tuple[bytes, int]:
    """The events at `indices` that w's filters let through, as WatchResponse fields on the
    wire, and how many; each event is converted once per revision (per prev_kv choice) and
    only its bytes are kept (in `converted`, under a key of its own)."""
    fields = []
    prev_kv = w.prev_kv
    for i in indices:
        ev = events[i]
        if not w.wants(ev):
            continue
        slot = (i, prev_kv, b"")
        field = converted.get(slot)
        if field is None:
            field = converted[slot] = event_field(event_to_pb(ev, prev_kv))
        fields.append(field)
    return b"".join(fields), len(fields)


def _body(events: list[Event], indices: list[int], w: Watcher, converted: dict) -> tuple[list, bytes]:
    """The events at `indices` (in revision order) that w's filters let
    through, as messages and as WatchResponse fields on the wire; each event
    is converted once per revision (per prev_kv choice)."""
    out, fields = [], []
    for i in indices:
        ev = events[i]
        if not w.wants(ev):
            continue
        slot = (i, w.prev_kv)
        done = converted.get(slot)
        if done is None:
            pbev = event_to_pb(ev, w.prev_kv)
            done = converted[slot] = (pbev, event_field(pbev))
        out.append(done[0])
        fields.append(done[1])
    return out, b"".join(fields)
