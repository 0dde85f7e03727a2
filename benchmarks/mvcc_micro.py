"""Micro-benchmark of the MVCC store alone: bulk puts, point gets, a range scan, compaction.

Run: .venv/bin/python benchmarks/mvcc_micro.py [N]
"""

from __future__ import annotations

import os
import pickle
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from etcdlite.mvcc import MVCCStore  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rng = random.Random(42)
    keys = [rng.randbytes(16) for _ in range(n)]  # distinct with overwhelming probability
    value = rng.randbytes(1024)
    store = MVCCStore()

    t0 = time.perf_counter()
    for key in keys:
        store.put(key, value)
    t_put = time.perf_counter() - t0

    sample = rng.sample(keys, min(n, 100_000))
    t0 = time.perf_counter()
    for key in sample:
        store.range(key)
    t_get = (time.perf_counter() - t0) / len(sample)

    old = 2 + n // 2
    t0 = time.perf_counter()
    for key in sample[:20_000]:
        store.range(key, revision=old)
    t_hist = (time.perf_counter() - t0) / min(len(sample), 20_000)

    t0 = time.perf_counter()
    for key in keys[:n // 2]:
        store.put(key, value)
    t_update = (time.perf_counter() - t0) / (n // 2)

    t0 = time.perf_counter()
    whole = store.range(b"\x00", b"\x00", limit=100)
    t_scan = time.perf_counter() - t0

    t0 = time.perf_counter()
    store.compact(store.current_revision)
    t_compact = time.perf_counter() - t0

    t0 = time.perf_counter()
    blob = pickle.dumps(store, protocol=pickle.HIGHEST_PROTOCOL)
    t_pickle = time.perf_counter() - t0
    t0 = time.perf_counter()
    pickle.loads(blob)
    t_unpickle = time.perf_counter() - t0

    t0 = time.perf_counter()
    store.hash_kv()
    t_hash = time.perf_counter() - t0

    print(f"{n} puts of distinct 16-byte keys, 1 KiB values: {t_put:.3f} s "
          f"({t_put / n * 1e6:.2f} us/put)")
    print(f"point get (current):        {t_get * 1e6:.2f} us")
    print(f"point get (historical):     {t_hist * 1e6:.2f} us")
    print(f"update of an existing key:  {t_update * 1e6:.2f} us")
    print(f"range over all {whole.count} keys (count + limit 100): {t_scan * 1e3:.1f} ms")
    print(f"compact after {n // 2} updates: {t_compact * 1e3:.1f} ms")
    print(f"pickle {len(blob) / 2**20:.1f} MiB: dump {t_pickle * 1e3:.0f} ms, "
          f"load {t_unpickle * 1e3:.0f} ms")
    print(f"hash_kv over everything:    {t_hash * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
