"""One key's history: its records in revision order, and what reading or compacting it means.

A record is one change to one key, kept as a plain tuple so the store pickles small and fast:

    (main, sub, create_revision, version, value, lease)

``version == 0`` marks a tombstone, the deletion that ends a generation; a tombstone carries
create_revision 0, value b"" and lease 0, which is exactly the kv a DELETE event shows. A key's
records are strictly increasing in (main, sub), so they can be bisected by revision.
Hot paths below index records with literals (0 = main, 3 = version) to stay fast.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from .kv import DELETE, PUT, Event, KeyValue

Record = tuple[int, int, int, int, bytes, int]

# Compares above every record of a main revision, whatever its sub-revision.
_AFTER_ALL_SUBS = 1 << 62


def live_at(records: list[Record], revision: int) -> Record | None:
    """The key's live record as of ``revision``, or None if it did not exist then."""
    last = records[-1]
    if last[0] <= revision:
        return last if last[3] else None
    i = bisect_right(records, (revision, _AFTER_ALL_SUBS))
    if not i:
        return None
    record = records[i - 1]
    return record if record[3] else None


# KeyValue(...) and Event(...) run the namedtuples' Python __new__; building the tuples
# directly costs half as much, on every read and every put
_new = tuple.__new__


def to_kv(key: bytes, record: Record) -> KeyValue:
    return _new(KeyValue, (key, record[2], record[0], record[3], record[4], record[5]))


def to_event(key: bytes, record: Record, previous: Record | None) -> Event:
    """The event ``record`` stands for; ``previous`` is the record just before it, if held."""
    prev_kv = to_kv(key, previous) if previous is not None and previous[3] else None
    kind = PUT if record[3] else DELETE
    kv = _new(KeyValue, (key, record[2], record[0], record[3], record[4], record[5]))
    return _new(Event, (kind, kv, prev_kv, record[1]))


def events_since(key: bytes, records: list[Record], start: int, upto: int) -> list[Event]:
    """Events of every held record with main revision in [``start``, ``upto``], oldest first."""
    last = records[-1][0]
    if last < start:
        return []
    i = bisect_left(records, (start,))
    previous = records[i - 1] if i else None
    events = []
    for record in records[i:] if last <= upto else records[i:bisect_right(records, (upto, _AFTER_ALL_SUBS))]:
        events.append(to_event(key, record, previous))
        previous = record
    return events


def compacted(records: list[Record], revision: int) -> int:
    """How many leading records a compaction at ``revision`` drops from this key.

    Kept: every record after ``revision``, plus the latest one at or before it unless that one
    is a tombstone. That is exactly what reads at revisions >= ``revision`` can still see.
    """
    i = bisect_right(records, (revision, _AFTER_ALL_SUBS))
    if not i:
        return 0
    return i if records[i - 1][3] == 0 else i - 1


def record_size(key: bytes, record: Record) -> int:
    """A record's share of ``MVCCStore.approximate_size``: its key and value bytes."""
    return len(key) + len(record[4])
