"""The values the store hands out; shapes mirror etcd's mvccpb messages field for field."""

from __future__ import annotations

from typing import NamedTuple

# mvccpb.Event.EventType values.
PUT = 0
DELETE = 1


class KeyValue(NamedTuple):
    """One key as of one revision (mvccpb.KeyValue)."""

    key: bytes
    create_revision: int
    mod_revision: int
    version: int
    value: bytes
    lease: int


class Event(NamedTuple):
    """One change to one key.

    For a DELETE, ``kv`` is the tombstone ``KeyValue(key, 0, deletion_revision, 0, b"", 0)``,
    as etcd reports it. ``prev_kv`` is the key's previous live KeyValue while the store still
    holds it, else None (always None for a put that starts a generation). ``sub`` orders the
    events that share one main revision.
    """

    type: int
    kv: KeyValue
    prev_kv: KeyValue | None
    sub: int


class RangeResult(NamedTuple):
    """The answer to a range read.

    ``kvs`` is sorted by key and cut to the limit; ``count`` is the number of keys in the range
    before the limit; ``revision`` is the store's revision at read time (the header revision),
    not the historical revision that was read.
    """

    kvs: list[KeyValue]
    count: int
    revision: int
