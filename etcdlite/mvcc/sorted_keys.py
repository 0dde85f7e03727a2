"""An ordered set of keys for range scans, kept as short sorted chunks.

One flat sorted list would make each insert of a new key O(n) in memmove; chunks of at most
``_SPLIT_AT`` keys keep inserts and removals cheap while scans stay plain list iteration.
The state is two lists of bytes, so it pickles small.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from itertools import chain
from typing import Iterator

_SPLIT_AT = 1024


class SortedKeys:
    """Distinct byte keys in ascending order.

    Invariant: ``_maxes[i] == _chunks[i][-1]``, chunks are non-empty, sorted, and every key of
    chunk i is below every key of chunk i + 1.
    """

    def __init__(self) -> None:
        self._chunks: list[list[bytes]] = []
        self._maxes: list[bytes] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            yield from chunk

    def to_list(self) -> list[bytes]:
        """Every key, ascending, in a list of their own (a copy: later changes are not in it)."""
        return list(chain.from_iterable(self._chunks))

    def add(self, key: bytes) -> None:
        """Insert a key the set does not hold yet."""
        maxes = self._maxes
        chunks = self._chunks
        self._len += 1
        if not maxes:
            chunks.append([key])
            maxes.append(key)
            return
        i = bisect_left(maxes, key)
        if i == len(maxes):
            i -= 1
            chunk = chunks[i]
            chunk.append(key)
            maxes[i] = key
        else:
            chunk = chunks[i]
            insort(chunk, key)
        if len(chunk) > _SPLIT_AT:
            half = len(chunk) >> 1
            upper = chunk[half:]
            del chunk[half:]
            chunks.insert(i + 1, upper)
            maxes[i] = chunk[-1]
            maxes.insert(i + 1, upper[-1])

    def remove(self, key: bytes) -> None:
        """Remove a key the set holds."""
        i = bisect_left(self._maxes, key)
        chunk = self._chunks[i]
        j = bisect_left(chunk, key)
        if j == len(chunk) or chunk[j] != key:
            raise KeyError(key)
        del chunk[j]
        self._len -= 1
        if chunk:
            self._maxes[i] = chunk[-1]
        else:
            del self._chunks[i]
            del self._maxes[i]

    def irange(self, start: bytes, end: bytes | None) -> Iterator[bytes]:
        """Keys k with ``start <= k < end`` ascending; ``end`` None means no upper bound."""
        maxes = self._maxes
        chunks = self._chunks
        i = bisect_left(maxes, start)
        if i == len(maxes):
            return
        chunk = chunks[i]
        j = bisect_left(chunk, start)
        while True:
            if end is not None and chunk[-1] >= end:
                yield from chunk[j:bisect_left(chunk, end, j)]
                return
            yield from chunk[j:] if j else chunk
            i += 1
            if i == len(chunks):
                return
            chunk = chunks[i]
            j = 0
