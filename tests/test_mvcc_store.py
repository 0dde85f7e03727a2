"""Unit tests of the MVCC store's rules, one rule a test."""

from __future__ import annotations

import pickle

import pytest

from etcdlite.mvcc import (
    DELETE,
    PUT,
    CompactedError,
    Event,
    FutureRevisionError,
    KeyValue,
    MVCCStore,
    RangeResult,
)


def kv(key, create, mod, version, value, lease=0):
    return KeyValue(key, create, mod, version, value, lease)


def keys_of(result: RangeResult) -> list[bytes]:
    return [item.key for item in result.kvs]


@pytest.fixture
def abc() -> MVCCStore:
    """Keys a, b, c put at revisions 2, 3, 4."""
    store = MVCCStore()
    for key in (b"a", b"b", b"c"):
        store.put(key, b"v" + key)
    return store


# -- revisions, versions, generations -----------------------------------------------------

def test_new_store_revisions():
    store = MVCCStore()
    assert store.current_revision == 1
    assert store.compact_revision == -1
    assert store.range(b"a") == RangeResult([], 0, 1)
    assert store.key_count() == 0
    assert store.approximate_size() == 0


def test_put_bumps_revision_and_tracks_versions():
    store = MVCCStore()
    new, prev, events = store.put(b"k", b"1", lease=7)
    assert new == kv(b"k", 2, 2, 1, b"1", 7)
    assert prev is None
    assert events == [Event(PUT, new, None, 0)]
    assert store.current_revision == 2

    new2, prev2, events2 = store.put(b"k", b"2")
    assert new2 == kv(b"k", 2, 3, 2, b"2", 0)
    assert prev2 == new
    assert events2 == [Event(PUT, new2, new, 0)]
    assert store.current_revision == 3
    assert store.range(b"k").kvs == [new2]


def test_delete_ends_generation_and_reput_starts_new_one():
    store = MVCCStore()
    store.put(b"k", b"1")
    store.put(b"k", b"2")
    deleted, events = store.delete_range(b"k")
    assert deleted == [kv(b"k", 2, 3, 2, b"2")]
    assert events == [Event(DELETE, kv(b"k", 0, 4, 0, b""), deleted[0], 0)]
    assert store.current_revision == 4
    assert store.range(b"k") == RangeResult([], 0, 4)

    new, prev, _ = store.put(b"k", b"3")
    assert new == kv(b"k", 5, 5, 1, b"3")
    assert prev is None


def test_delete_of_missing_or_deleted_key_changes_nothing():
    store = MVCCStore()
    assert store.delete_range(b"nope") == ([], [])
    assert store.current_revision == 1
    store.put(b"k", b"1")
    store.delete_range(b"k")
    assert store.delete_range(b"k") == ([], [])
    assert store.delete_range(b"a", b"z") == ([], [])
    assert store.current_revision == 3


def test_delete_range_deletes_live_keys_in_key_order_in_one_revision(abc):
    abc.delete_range(b"b")
    deleted, events = abc.delete_range(b"a", b"\x00")
    assert deleted == [kv(b"a", 2, 2, 1, b"va"), kv(b"c", 4, 4, 1, b"vc")]
    assert [(e.type, e.kv.key, e.kv.mod_revision, e.sub) for e in events] == [
        (DELETE, b"a", 6, 0), (DELETE, b"c", 6, 1)]
    assert abc.current_revision == 6
    assert abc.key_count() == 0


def test_lease_is_per_put_not_inherited():
    store = MVCCStore()
    store.put(b"k", b"1", lease=5)
    new, _, _ = store.put(b"k", b"2")
    assert new.lease == 0


# -- write txns ---------------------------------------------------------------------------

def test_txn_changes_share_one_revision_with_sub_revisions():
    store = MVCCStore()
    store.put(b"x", b"0")
    txn = store.write()
    a, _ = txn.put(b"a", b"1")
    b, _ = txn.put(b"b", b"2")
    deleted = txn.delete_range(b"x")
    events = txn.end()
    assert a.mod_revision == b.mod_revision == 3
    assert deleted == [kv(b"x", 2, 2, 1, b"0")]
    assert [(e.type, e.kv.key, e.kv.mod_revision, e.sub) for e in events] == [
        (PUT, b"a", 3, 0), (PUT, b"b", 3, 1), (DELETE, b"x", 3, 2)]
    assert store.current_revision == 3


def test_txn_reads_its_own_writes_and_store_reads_do_not():
    store = MVCCStore()
    store.put(b"a", b"old")
    txn = store.write()
    assert txn.range(b"a") == RangeResult([kv(b"a", 2, 2, 1, b"old")], 1, 2)
    txn.put(b"a", b"new")
    txn.put(b"b", b"fresh")
    seen = txn.range(b"a", b"\x00")
    assert seen == RangeResult([kv(b"a", 2, 3, 2, b"new"), kv(b"b", 3, 3, 1, b"fresh")], 2, 3)
    # Reading the txn's own revision explicitly is allowed, one further is the future.
    assert txn.range(b"b", revision=3).count == 1
    with pytest.raises(FutureRevisionError):
        txn.range(b"b", revision=4)
    # The store still answers as of the committed revision.
    assert store.range(b"a", b"\x00") == RangeResult([kv(b"a", 2, 2, 1, b"old")], 1, 2)
    txn.delete_range(b"a")
    assert txn.range(b"a").count == 0
    txn.end()
    assert store.range(b"a", b"\x00").kvs == [kv(b"b", 3, 3, 1, b"fresh")]


def test_txn_without_writes_keeps_revision():
    store = MVCCStore()
    store.put(b"a", b"1")
    txn = store.write()
    assert txn.range(b"a").revision == 2
    assert txn.delete_range(b"zzz") == []
    assert txn.end() == []
    assert store.current_revision == 2


def test_txn_put_twice_same_key():
    store = MVCCStore()
    txn = store.write()
    first, prev1 = txn.put(b"k", b"1")
    second, prev2 = txn.put(b"k", b"2")
    events = txn.end()
    assert first == kv(b"k", 2, 2, 1, b"1") and prev1 is None
    assert second == kv(b"k", 2, 2, 2, b"2") and prev2 == first
    assert [e.sub for e in events] == [0, 1]
    assert store.range(b"k").kvs == [second]
    assert store.events_since(2, b"k") == events


def test_txn_delete_then_put_same_key_starts_generation_at_txn_revision():
    store = MVCCStore()
    store.put(b"k", b"1")
    txn = store.write()
    txn.delete_range(b"k")
    new, prev = txn.put(b"k", b"2")
    txn.end()
    assert new == kv(b"k", 3, 3, 1, b"2") and prev is None
    assert store.range(b"k", revision=2).kvs == [kv(b"k", 2, 2, 1, b"1")]


def test_one_txn_at_a_time_and_no_use_after_end():
    store = MVCCStore()
    txn = store.write()
    with pytest.raises(RuntimeError):
        store.write()
    with pytest.raises(RuntimeError):
        store.compact(1)
    txn.end()
    with pytest.raises(RuntimeError):
        txn.put(b"a", b"1")
    with pytest.raises(RuntimeError):
        txn.end()
    store.write().end()


# -- range conventions --------------------------------------------------------------------

@pytest.mark.parametrize("key, range_end, expected", [
    (b"b", b"", [b"b"]),
    (b"bb", b"", []),
    (b"b", b"\x00", [b"b", b"c"]),
    (b"\x00", b"\x00", [b"a", b"b", b"c"]),
    (b"a", b"c", [b"a", b"b"]),
    (b"a", b"b\x00", [b"a", b"b"]),
    (b"", b"\x00", [b"a", b"b", b"c"]),
    (b"c", b"c", []),
    (b"c", b"a", []),
    (b"d", b"\x00", []),
])
def test_range_end_conventions(abc, key, range_end, expected):
    result = abc.range(key, range_end)
    assert keys_of(result) == expected
    assert result.count == len(expected)


def test_range_all_includes_key_nul_byte():
    store = MVCCStore()
    store.put(b"\x00", b"nul")
    store.put(b"\x00\x01", b"x")
    assert keys_of(store.range(b"\x00", b"\x00")) == [b"\x00", b"\x00\x01"]
    assert keys_of(store.range(b"\x00")) == [b"\x00"]


def test_range_all_from_nul_byte_includes_the_empty_key():
    # Key b"\x00" with range_end b"\x00" means every key, down to b"" (the server layer is
    # what rejects empty keys); any other key with b"\x00" means keys >= it.
    store = MVCCStore()
    store.put(b"", b"empty")
    store.put(b"a", b"1")
    assert keys_of(store.range(b"\x00", b"\x00")) == [b"", b"a"]
    assert keys_of(store.range(b"\x01", b"\x00")) == [b"a"]
    assert [d.key for d in store.delete_range(b"\x00", b"\x00")[0]] == [b"", b"a"]


def test_delete_range_uses_same_conventions(abc):
    assert [d.key for d in abc.delete_range(b"c", b"a")[0]] == []
    assert [d.key for d in abc.delete_range(b"a", b"c")[0]] == [b"a", b"b"]
    assert keys_of(abc.range(b"\x00", b"\x00")) == [b"c"]


def test_limit_truncates_kvs_but_not_count(abc):
    result = abc.range(b"a", b"\x00", limit=2)
    assert keys_of(result) == [b"a", b"b"]
    assert result.count == 3
    assert abc.range(b"a", b"\x00", limit=5).count == 3
    assert len(abc.range(b"a", b"\x00", limit=0).kvs) == 3


def test_range_skips_deleted_keys_in_count(abc):
    abc.delete_range(b"b")
    result = abc.range(b"\x00", b"\x00", limit=1)
    assert keys_of(result) == [b"a"]
    assert result.count == 2


def test_range_result_revision_is_current_even_for_historical_reads(abc):
    assert abc.range(b"a", revision=2).revision == 4


# -- historical reads ---------------------------------------------------------------------

def test_historical_reads_see_each_revision():
    store = MVCCStore()
    store.put(b"a", b"1")          # 2
    store.put(b"b", b"1")          # 3
    store.put(b"a", b"2")          # 4
    store.delete_range(b"b")       # 5
    store.put(b"b", b"3")          # 6
    everything = (b"\x00", b"\x00")
    assert store.range(*everything, revision=1).kvs == []
    assert store.range(*everything, revision=2).kvs == [kv(b"a", 2, 2, 1, b"1")]
    assert store.range(*everything, revision=3).kvs == [kv(b"a", 2, 2, 1, b"1"),
                                                        kv(b"b", 3, 3, 1, b"1")]
    assert store.range(*everything, revision=4).kvs == [kv(b"a", 2, 4, 2, b"2"),
                                                        kv(b"b", 3, 3, 1, b"1")]
    assert store.range(*everything, revision=5).kvs == [kv(b"a", 2, 4, 2, b"2")]
    assert store.range(b"b", revision=6).kvs == [kv(b"b", 6, 6, 1, b"3")]
    assert store.range(b"b", revision=0) == store.range(b"b", revision=-3)


def test_future_revision_read_fails():
    store = MVCCStore()
    store.put(b"a", b"1")
    with pytest.raises(FutureRevisionError, match="required revision is a future revision"):
        store.range(b"a", revision=3)


# -- compaction ---------------------------------------------------------------------------

def history_store() -> MVCCStore:
    store = MVCCStore()
    store.put(b"a", b"1")          # 2
    store.put(b"a", b"2")          # 3
    store.put(b"b", b"1")          # 4
    store.delete_range(b"b")       # 5
    store.put(b"c", b"1")          # 6
    store.put(b"a", b"3")          # 7
    return store


def snapshot(store: MVCCStore, revision: int) -> list[KeyValue]:
    return store.range(b"\x00", b"\x00", revision=revision).kvs


def test_compaction_keeps_answers_at_and_after_compact_revision():
    store = history_store()
    before = {rev: snapshot(store, rev) for rev in range(1, 8)}
    store.compact(5)
    assert store.compact_revision == 5
    for rev in range(5, 8):
        assert snapshot(store, rev) == before[rev]
    with pytest.raises(CompactedError, match="required revision has been compacted"):
        store.range(b"a", revision=4)


def test_compaction_drops_superseded_records_and_tombstoned_keys():
    store = history_store()
    size_before = store.approximate_size()
    store.compact(5)
    # b's last record at or before 5 is a tombstone: b is gone; a keeps 3 (latest <= 5) and 7.
    assert [e.kv.key for e in store.events_since(5, b"\x00", b"\x00")] == [b"c", b"a"]
    assert store.approximate_size() == size_before - (1 + 1) - (1 + 1) - 1
    assert [(e.kv.mod_revision) for e in store.events_since(5, b"a")] == [7]
    store.compact(7)
    assert store.events_since(7, b"\x00", b"\x00") == [
        Event(PUT, kv(b"a", 2, 7, 3, b"3"), None, 0)]
    assert store.approximate_size() == 2 + 2


def test_compaction_of_deleted_key_frees_it_entirely():
    store = MVCCStore()
    store.put(b"k", b"value")
    store.delete_range(b"k")
    store.compact(3)
    assert store.approximate_size() == 0
    assert store.range(b"\x00", b"\x00") == RangeResult([], 0, 3)
    new, prev, _ = store.put(b"k", b"again")
    assert new == kv(b"k", 4, 4, 1, b"again") and prev is None


def test_compaction_revision_errors():
    store = history_store()
    with pytest.raises(FutureRevisionError):
        store.compact(8)
    store.compact(7)
    assert store.compact_revision == 7
    with pytest.raises(CompactedError):
        store.compact(7)
    with pytest.raises(CompactedError):
        store.compact(3)


def test_compaction_within_one_revision_keeps_last_sub_revision():
    store = MVCCStore()
    txn = store.write()
    txn.put(b"k", b"1")
    txn.put(b"k", b"2")
    txn.end()
    store.compact(2)
    assert store.range(b"k").kvs == [kv(b"k", 2, 2, 2, b"2")]
    assert [e.sub for e in store.events_since(2, b"k")] == [1]


def test_repeated_compactions_and_writes_between_them():
    store = MVCCStore()
    for i in range(10):
        store.put(b"k", b"%d" % i)       # revisions 2..11
        if i % 3 == 2:
            store.compact(store.current_revision - 1)
    assert store.compact_revision == 9
    assert [e.kv.mod_revision for e in store.events_since(9, b"k")] == [9, 10, 11]
    assert store.range(b"k", revision=9).kvs == [kv(b"k", 2, 9, 8, b"7")]
    assert store.range(b"k").kvs == [kv(b"k", 2, 11, 10, b"9")]


# -- events -------------------------------------------------------------------------------

def test_events_since_orders_by_revision_then_sub_with_prev_kv():
    store = MVCCStore()
    store.put(b"b", b"1")                      # 2
    txn = store.write()                        # 3
    txn.put(b"c", b"1")
    txn.put(b"a", b"1")
    txn.put(b"b", b"2")
    txn.end()
    store.delete_range(b"a", b"c")             # 4: a, b
    events = store.events_since(2, b"\x00", b"\x00")
    assert [(e.kv.mod_revision, e.sub, e.type, e.kv.key) for e in events] == [
        (2, 0, PUT, b"b"),
        (3, 0, PUT, b"c"), (3, 1, PUT, b"a"), (3, 2, PUT, b"b"),
        (4, 0, DELETE, b"a"), (4, 1, DELETE, b"b"),
    ]
    assert events[0].prev_kv is None
    assert events[3].prev_kv == kv(b"b", 2, 2, 1, b"1")
    assert events[4].kv == kv(b"a", 0, 4, 0, b"")
    assert events[4].prev_kv == kv(b"a", 3, 3, 1, b"1")
    assert events[5].prev_kv == kv(b"b", 2, 3, 2, b"2")
    assert store.events_since(3, b"b") == [events[3], events[5]]
    assert store.events_since(4, b"a", b"b") == [events[4]]
    assert store.events_since(5, b"\x00", b"\x00") == []
    assert store.events_since(100, b"b") == []


def test_events_match_what_writes_returned():
    store = MVCCStore()
    emitted = []
    emitted += store.put(b"x", b"1")[2]
    emitted += store.put(b"y", b"1")[2]
    emitted += store.put(b"x", b"2")[2]
    emitted += store.delete_range(b"x", b"z")[1]
    emitted += store.put(b"x", b"3")[2]
    assert store.events_since(1, b"\x00", b"\x00") == emitted


def test_events_since_compaction_rule():
    store = history_store()
    store.compact(5)
    with pytest.raises(CompactedError):
        store.events_since(4, b"a")
    replay = store.events_since(5, b"a")
    # a@3 was kept as the state at 5 but sits below the start; a@7's prev is a@3, still held.
    assert [e.kv.mod_revision for e in replay] == [7]
    assert replay[0].prev_kv == kv(b"a", 2, 3, 2, b"2")
    assert [e.kv.key for e in store.events_since(5, b"a", b"d")] == [b"c", b"a"]


def test_events_since_at_compact_revision_replays_kept_record_without_prev():
    store = MVCCStore()
    store.put(b"a", b"1")                      # 2
    store.put(b"a", b"2")                      # 3
    store.compact(3)
    assert store.events_since(3, b"a") == [Event(PUT, kv(b"a", 2, 3, 2, b"2"), None, 0)]


# -- hashes -------------------------------------------------------------------------------

def build(ops) -> MVCCStore:
    store = MVCCStore()
    for op, *args in ops:
        getattr(store, op)(*args)
    return store


OPS = [("put", b"a", b"1"), ("put", b"b", b"2"), ("put", b"a", b"3"),
       ("delete_range", b"b"), ("put", b"c", b"4", 9), ("compact", 3), ("put", b"a", b"5")]


def test_hash_is_deterministic_and_survives_pickle():
    one, two = build(OPS), build(OPS)
    assert one.hash_kv() == two.hash_kv()
    assert one.hash() == two.hash()
    restored = pickle.loads(pickle.dumps(one))
    assert restored.hash_kv() == one.hash_kv()
    assert restored.hash_kv(5) == one.hash_kv(5)
    assert restored.hash() == one.hash()
    assert restored.range(b"\x00", b"\x00") == one.range(b"\x00", b"\x00")
    assert restored.approximate_size() == one.approximate_size()
    assert restored.key_count() == one.key_count() == 2
    # The restored copy keeps working the same way as the original.
    assert restored.put(b"d", b"6") == one.put(b"d", b"6")
    restored.compact(6)
    one.compact(6)
    assert restored.hash() == one.hash()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_with_every_protocol(protocol):
    store = build(OPS)
    restored = pickle.loads(pickle.dumps(store, protocol=protocol))
    assert restored.hash() == store.hash()
    assert restored.events_since(3, b"\x00", b"\x00") == store.events_since(3, b"\x00", b"\x00")


@pytest.mark.parametrize("change", [
    ("put", b"a", b"1", 1),            # same key and value, other lease
    ("put", b"a", b"X"),               # other value
    ("put", b"A", b"1"),               # other key
])
def test_hash_changes_when_data_differs(change):
    base = build([("put", b"a", b"1")])
    other = build([change])
    assert base.hash_kv()[0] != other.hash_kv()[0]
    assert base.hash() != other.hash()


def test_hash_kv_reports_revision_and_compaction_and_is_stable_under_later_writes():
    store = build(OPS[:5])
    crc, compacted, rev = store.hash_kv(4)
    assert (compacted, rev) == (-1, 4)
    assert store.hash_kv()[2] == 6
    store.put(b"z", b"later")
    assert store.hash_kv(4) == (crc, -1, 4)
    assert store.hash_kv()[0] != store.hash_kv(6)[0]
    store.compact(4)
    crc_after, compacted, rev = store.hash_kv(4)
    assert (compacted, rev) == (4, 4)
    assert crc_after != crc   # a@2 dropped
    with pytest.raises(CompactedError):
        store.hash_kv(3)
    with pytest.raises(FutureRevisionError):
        store.hash_kv(8)


def test_hash_tracks_compaction_and_revision():
    one, two = build(OPS[:5]), build(OPS[:5])
    two.compact(2)        # drops nothing, yet the stores differ in compact revision
    assert one.hash_kv()[0] == two.hash_kv()[0]
    assert one.hash() != two.hash()


# -- bookkeeping --------------------------------------------------------------------------

def test_key_count_and_approximate_size_follow_writes():
    store = MVCCStore()
    store.put(b"ab", b"123")
    store.put(b"ab", b"45")
    store.put(b"c", b"")
    assert store.key_count() == 2
    assert store.approximate_size() == 5 + 4 + 1
    store.delete_range(b"ab")
    assert store.key_count() == 1
    assert store.approximate_size() == 5 + 4 + 1 + 2
    store.compact(store.current_revision)
    assert store.approximate_size() == 1
    assert store.key_count() == 1


def test_many_keys_range_scan_in_order():
    store = MVCCStore()
    keys = [b"%05d" % ((i * 7919) % 5000) for i in range(5000)]
    for key in keys:
        store.put(key, b"")
    result = store.range(b"01000", b"02000")
    assert keys_of(result) == [b"%05d" % i for i in range(1000, 2000)]
    store.delete_range(b"00000", b"04990")
    store.compact(store.current_revision)
    assert keys_of(store.range(b"\x00", b"\x00")) == [b"%05d" % i for i in range(4990, 5000)]


def test_count_only_counts_what_a_full_range_returns_at_every_revision():
    """count_only skips making the key-values, not the rules: deleted keys, keys made
    after the revision and keys deleted after it count as a full range finds them."""
    s = MVCCStore()
    for i in range(20):
        s.put(b"c/%02d" % i, b"v")
    s.delete_range(b"c/05", b"c/10")
    s.put(b"c/07", b"again")
    s.put(b"c/99", b"late")
    txn = s.write()
    txn.delete_range(b"c/00")
    txn.put(b"c/50", b"in txn")
    assert txn.range(b"c/", b"c0", count_only=True).count == len(txn.range(b"c/", b"c0").kvs) == 17
    txn.end()
    for rev in range(1, s.current_revision + 1):
        full = s.range(b"c/", b"c0", rev)
        counted = s.range(b"c/", b"c0", rev, count_only=True)
        assert counted.count == full.count == len(full.kvs) and counted.kvs == [], rev
