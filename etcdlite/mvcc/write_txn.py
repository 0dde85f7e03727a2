"""WriteTxn: a batch of changes that commits as one main revision.

The txn writes straight into the store's history under revision ``begin + 1`` (the store is
single-writer and never aborts a txn), and the store's revision moves only at ``end()``, so
reads on the store during the txn still see the last committed revision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .key_history import Record, to_event
from .key_range import KeySpan, resolve
from .kv import Event, KeyValue, RangeResult

if TYPE_CHECKING:
    from .store import MVCCStore

# keys a step of ``WriteTxn.delete_range_steps`` deletes (a few milliseconds of work)
STEP_KEYS = 512


def put_record(store: MVCCStore, key: bytes, value: bytes, lease: int, main: int,
               sub: int) -> tuple[Record, Record | None]:
    """Append the record of a put at (main, sub) to ``key``'s history: (the new record, the
    key's previous live record or None when this starts a generation). The caller owns the
    revision."""
    records = store._history.get(key)
    if records is None:
        records = store._history[key] = []
        store._keys.add(key)
        last = None
    else:
        last = records[-1]
        if not last[3]:
            last = None
    if last is None:
        create = main
        version = 1
        store._live += 1
    else:
        create = last[2]
        version = last[3] + 1
    record = (main, sub, create, version, value, lease)
    records.append(record)
    if len(records) == 2:
        # a key with two records or more is in _shrinkable until compaction leaves it one
        # (compaction keeps it there otherwise), so only this append can be its first; not
        # probing the set on every put saves a cache miss on a large store
        store._shrinkable.add(key)
    store._size += len(key) + len(value)
    return record, last


class WriteTxn:
    """Changes sharing one main revision, with sub-revisions 0, 1, 2, ... in call order.

    If nothing is written, the txn leaves the revision where it was.
    """

    __slots__ = ("_store", "_begin", "_sub", "_events", "_open")

    def __init__(self, store: MVCCStore) -> None:
        self._store = store
        self._begin = store._current
        self._sub = 0
        self._events: list[Event] = []
        self._open = True

    @property
    def revision(self) -> int:
        """The newest revision this txn reads at: its own once it has written."""
        return self._begin + 1 if self._sub else self._begin

    def range(self, key: bytes, range_end: bytes = b"", revision: int = 0,
              limit: int = 0, count_only: bool = False) -> RangeResult:
        """As ``MVCCStore.range``, but the newest readable revision is this txn's own once it
        has written (so it reads its own writes), and that is the result's ``revision``."""
        self._check_open()
        store = self._store
        newest = self.revision
        at = store._readable(revision, newest)
        kvs, count = store._read(key, range_end, at, limit, count_only)
        return RangeResult(kvs, count, newest)

    @property
    def events(self) -> list[Event]:
        """The events so far, in sub-revision order (the list ``end`` returns)."""
        return self._events

    def put(self, key: bytes, value: bytes, lease: int = 0) -> tuple[KeyValue, KeyValue | None]:
        """Set ``key``: (its new kv, its previous live kv or None when this starts a generation)."""
        self._check_open()
        sub = self._sub
        record, last = put_record(self._store, key, value, lease, self._begin + 1, sub)
        event = to_event(key, record, last)
        self._events.append(event)
        self._sub = sub + 1
        return event.kv, event.prev_kv

    def delete_range(self, key: bytes, range_end: bytes = b"") -> list[KeyValue]:
        """Delete the live keys in the range: their last live kvs, in key order."""
        self._check_open()
        deleted: list[KeyValue] = []
        self._delete(self._keys_in(key, range_end), deleted)
        return deleted

    def delete_range_steps(self, key: bytes, range_end: bytes = b""):
        """``delete_range`` as a generator that yields after every ``STEP_KEYS`` keys and
        returns the same list: a range of many keys is deleted a part at a time, the txn
        staying open in between (nothing else may write meanwhile; reads see the revision
        before the txn)."""
        self._check_open()
        keys = self._keys_in(key, range_end)
        deleted: list[KeyValue] = []
        for lo in range(0, len(keys), STEP_KEYS):
            if lo:
                yield
            self._delete(keys[lo:lo + STEP_KEYS], deleted)
        return deleted

    def _keys_in(self, key: bytes, range_end: bytes) -> list[bytes]:
        store = self._store
        kind, start, end = resolve(key, range_end)
        if kind == KeySpan.SINGLE:
            return [start] if start in store._history else []
        if kind == KeySpan.EMPTY:
            return []
        return list(store._keys.irange(start, end))

    def _delete(self, keys: list[bytes], deleted: list[KeyValue]) -> None:
        store = self._store
        history = store._history
        main = self._begin + 1
        for k in keys:
            records = history[k]
            last = records[-1]
            if not last[3]:
                continue
            sub = self._sub
            tombstone = (main, sub, 0, 0, b"", 0)
            records.append(tombstone)
            event = to_event(k, tombstone, last)
            deleted.append(event.prev_kv)
            self._events.append(event)
            self._sub = sub + 1
            store._shrinkable.add(k)
            store._size += len(k)
            store._live -= 1

    def end(self) -> list[Event]:
        """Commit: the txn's events in sub-revision order, [] if it wrote nothing."""
        self._check_open()
        self._open = False
        self._store._write_ended(bool(self._sub))
        return self._events

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("mvcc: write txn already ended")
