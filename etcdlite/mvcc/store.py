"""MVCCStore: every key's history under one global revision, read at any uncompacted revision.

The store is pure and deterministic: the same calls in the same order give the same state,
the same answers and the same hashes, on any member and after a pickle round trip.
"""

from __future__ import annotations

from .errors import CompactedError, FutureRevisionError
from .hashing import hash_history
from .key_history import Record, compacted, events_since, live_at, record_size, to_event, to_kv
from .key_range import KeySpan, resolve
from .kv import Event, KeyValue, RangeResult
from .sorted_keys import SortedKeys
from .write_txn import WriteTxn, put_record


def _event_order(event: Event) -> tuple[int, int]:
    return event.kv.mod_revision, event.sub


class MVCCStore:
    """A multi-version key-value store with etcd v3's revision semantics.

    State (all plain containers, so pickling is cheap and exact):

    - ``_history``: key -> that key's records, oldest first (see ``key_history``). A key stays
      here, tombstoned or not, until compaction leaves it no record.
    - ``_keys``: the same keys, ordered, for range scans.
    - ``_shrinkable``: keys that a future compaction may shorten (more than one record, or a
      tombstone last); a key whose history is one live record has nothing to compact, so
      compaction only visits keys written since it last settled.

    Writes go through ``write()``; one write txn may be open at a time. While it is open
    (a long one stays open across turns of the apply loop: ``WriteTxn.delete_range_steps``),
    ``range``, ``events_since`` and the hashes still answer as of the last committed
    revision.
    """

    def __init__(self) -> None:
        self._history: dict[bytes, list[Record]] = {}
        self._keys = SortedKeys()
        self._shrinkable: set[bytes] = set()
        self._current = 1
        self._compacted = -1
        self._size = 0
        self._live = 0
        self._writing = False

    # -- revisions -------------------------------------------------------------------------

    @property
    def current_revision(self) -> int:
        """The revision of the last committed write (1 for a new store)."""
        return self._current

    @property
    def compact_revision(self) -> int:
        """The revision of the last compaction, -1 if there was none."""
        return self._compacted

    def _readable(self, revision: int, newest: int) -> int:
        """The revision a read asking for ``revision`` sees; <= 0 means ``newest``."""
        if revision <= 0:
            return newest
        if revision > newest:
            raise FutureRevisionError()
        if revision < self._compacted:
            raise CompactedError()
        return revision

    # -- reads -----------------------------------------------------------------------------

    def range(self, key: bytes, range_end: bytes = b"", revision: int = 0,
              limit: int = 0, count_only: bool = False) -> RangeResult:
        """Keys in the range live at ``revision`` (<= 0: current), each as of that revision.

        Reading at exactly the compact revision is allowed; below it raises CompactedError,
        above the current revision FutureRevisionError. ``limit`` > 0 cuts ``kvs`` but not
        ``count``. See ``key_range`` for what ``range_end`` means. ``count_only``: ``kvs`` is
        left empty (no key-value made per key: counting a million keys took seconds).
        """
        at = self._readable(revision, self._current)
        kvs, count = self._read(key, range_end, at, limit, count_only)
        return RangeResult(kvs, count, self._current)

    def _read(self, key: bytes, range_end: bytes, at: int,
              limit: int, count_only: bool = False) -> tuple[list[KeyValue], int]:
        kind, start, end = resolve(key, range_end)
        history = self._history
        if kind == KeySpan.SINGLE:
            records = history.get(start)
            if records is None:
                return [], 0
            record = live_at(records, at)
            if record is None:
                return [], 0
            return [to_kv(start, record)], 1
        if kind == KeySpan.EMPTY:
            return [], 0
        kvs: list[KeyValue] = []
        count = 0
        if count_only:
            for k in self._keys.irange(start, end):
                records = history[k]
                last = records[-1]
                if (last[3] if last[0] <= at else live_at(records, at) is not None):
                    count += 1
            return kvs, count
        for k in self._keys.irange(start, end):
            record = live_at(history[k], at)
            if record is not None:
                count += 1
                if limit <= 0 or count <= limit:
                    kvs.append(to_kv(k, record))
        return kvs, count

    def events_since(self, start_revision: int, key: bytes,
                     range_end: bytes = b"") -> list[Event]:
        """Every held change to keys in the range at main revision >= ``start_revision``.

        Ordered by (main revision, sub-revision). Follows etcd's watch rule: starting below the
        compact revision raises CompactedError; starting exactly at it replays what compaction
        kept. A start above the current revision simply finds nothing yet, and an open write
        txn's changes are not there yet.
        """
        if start_revision < self._compacted:
            raise CompactedError()
        kind, low, high = resolve(key, range_end)
        history = self._history
        upto = self._current
        if kind == KeySpan.SINGLE:
            records = history.get(low)
            return events_since(low, records, start_revision, upto) if records else []
        if kind == KeySpan.EMPTY:
            return []
        events: list[Event] = []
        for k in self._keys.irange(low, high):
            records = history[k]
            if records[-1][0] >= start_revision:
                events.extend(events_since(k, records, start_revision, upto))
        events.sort(key=_event_order)
        return events

    def key_count(self) -> int:
        """Number of live keys at the current revision."""
        return self._live

    def approximate_size(self) -> int:
        """Bytes of keys and values in every held record, tombstones counting their key."""
        return self._size

    # -- writes ----------------------------------------------------------------------------

    def write(self) -> WriteTxn:
        """Begin the write txn; its changes share revision ``current_revision + 1``."""
        self._not_writing()
        self._writing = True
        return WriteTxn(self)

    def _write_ended(self, wrote: bool) -> None:
        if wrote:
            self._current += 1
        self._writing = False

    @property
    def writing(self) -> bool:
        """Whether a write txn is open (its changes, part made, are not readable yet)."""
        return self._writing

    def _not_writing(self) -> None:
        if self._writing:
            raise RuntimeError("mvcc: a write txn is open")

    def put(self, key: bytes, value: bytes,
            lease: int = 0) -> tuple[KeyValue, KeyValue | None, list[Event]]:
        """One-put txn: (the new kv, the key's previous live kv or None, its events). The
        most common write, so without a WriteTxn object: the same record, the same event."""
        record, last = self.put_record(key, value, lease)
        event = to_event(key, record, last)
        return event.kv, event.prev_kv, [event]

    def put_record(self, key: bytes, value: bytes, lease: int = 0) -> tuple[Record, Record | None]:
        """``put`` answering with records (see ``key_history``): (the new one, the key's
        previous live one or None). The apply loop's hot path: the KeyValue and Event values,
        ``to_event(key, *answer)``, are made only when someone needs them."""
        if self._writing:
            self._not_writing()  # raises
        main = self._current + 1
        answer = put_record(self, key, value, lease, main, 0)
        self._current = main
        return answer

    def delete_range(self, key: bytes,
                     range_end: bytes = b"") -> tuple[list[KeyValue], list[Event]]:
        """One-delete txn: (the deleted keys' last live kvs in key order, their events)."""
        txn = self.write()
        deleted = txn.delete_range(key, range_end)
        return deleted, txn.end()

    # -- compaction ------------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        """Forget history that no read at a revision >= ``revision`` can see.

        Per key, keep the records after ``revision`` and the latest one at or before it,
        unless that one is a tombstone; a key left with nothing disappears. Raises
        CompactedError if ``revision`` is not above the compact revision and
        FutureRevisionError if it is above the current revision.
        """
        self._not_writing()
        if revision <= self._compacted:
            raise CompactedError()
        if revision > self._current:
            raise FutureRevisionError()
        history = self._history
        settled = []
        for key in self._shrinkable:
            records = history[key]
            dropped = compacted(records, revision)
            if dropped:
                self._size -= sum(record_size(key, r) for r in records[:dropped])
                del records[:dropped]
            if not records:
                del history[key]
                self._keys.remove(key)
                settled.append(key)
            elif len(records) == 1 and records[0][3]:
                settled.append(key)
        self._shrinkable.difference_update(settled)
        self._compacted = revision

    # -- hashing ---------------------------------------------------------------------------

    def hash_kv(self, revision: int = 0) -> tuple[int, int, int]:
        """(crc32, compact revision, revision hashed) of the history visible up to ``revision``.

        The crc covers every held record with main revision <= ``revision`` (<= 0: current),
        keys ascending and each key's records in revision order, encoded as in
        ``hashing.hash_history``. So it is unchanged by later writes, changed by a compaction
        that drops records (hence the compact revision in the answer, to compare like with
        like), and equal on any two stores that applied the same calls. ``revision`` is
        validated as for ``range``.
        """
        at = self._readable(revision, self._current)
        return hash_history(self._history, self._keys, at), self._compacted, at

    def hash_kv_steps(self, revision: int = 0, step_keys: int = 4096):
        """``hash_kv`` a part at a time: a generator that yields after every ``step_keys``
        keys and returns what hash_kv returns, for a caller that lets other work run in
        between, writes included. Writes in between change nothing hashed (their records are
        past the revision hashed; a key created since has none before it); a compaction in
        between starts the hash over (CompactedError if it passed the revision hashed).
        """
        at = self._readable(revision, self._current)
        while True:
            compacted = self._compacted
            keys = self._keys.to_list()
            crc = 0
            for lo in range(0, len(keys), step_keys):
                if lo:
                    yield
                    if self._compacted != compacted:
                        break
                crc = hash_history(self._history, keys[lo:lo + step_keys], at, crc=crc)
            else:
                return crc, compacted, at
            self._readable(at, self._current)

    def hash(self) -> int:
        """crc32 of the whole store: its current and compact revisions, then every record
        (an open write txn's are not there yet)."""
        return hash_history(self._history, self._keys, self._current,
                            header=(self._current, self._compacted))
