"""etcdlite's MVCC store: etcd v3's revisioned key-value model, pure and deterministic.

No threads, sockets, clocks or protobuf: the Raft apply layer drives it, the gRPC layer
translates its values and errors. Files, one idea each:

- ``kv``: KeyValue, Event, RangeResult (shapes of mvccpb's messages)
- ``errors``: CompactedError, FutureRevisionError (etcd's texts)
- ``key_range``: what a (key, range_end) pair names
- ``key_history``: one key's records, reading and compacting them
- ``sorted_keys``: the ordered key set behind range scans
- ``store``: MVCCStore (revisions, reads, events, compaction, hashes)
- ``write_txn``: WriteTxn (changes committed as one revision)
- ``hashing``: the checksums behind hash_kv and hash
"""

from .errors import CompactedError, FutureRevisionError
from .kv import DELETE, PUT, Event, KeyValue, RangeResult
from .store import MVCCStore
from .write_txn import WriteTxn

__all__ = [
    "DELETE",
    "PUT",
    "CompactedError",
    "Event",
    "FutureRevisionError",
    "KeyValue",
    "MVCCStore",
    "RangeResult",
    "WriteTxn",
]
