"""The REST informer (client-go's list, watch with bookmarks, relist on 410) beside the
gRPC watch, ~14 s of ConfigMap churn with two forced relists: an apiserver restart with
etcd compacted while it is down, and both informers cut off past what the watch cache
keeps. Both caches must end equal to the apiserver's list, with every write seen as an
event or inside a relist's window. The 10-minute run is `python -m benchmarks.rest_soak`
(benchmarks/rest_soak_results.md)."""

from __future__ import annotations

import pytest
from harness.plane import apiserver_on_etcdlite

from benchmarks.rest_soak import ok, soak

pytestmark = pytest.mark.process

CACHE = 30
RATE = 20


def test_informers_miss_nothing_across_forced_relists(tmp_path_factory):
    with apiserver_on_etcdlite(tmp_path_factory, "soak", watch_cache_size=CACHE, log_level="warning") as api:
        etcd = api.etcd_servers.split("://", 1)[-1]
        # partitioned while the writer makes twice as many writes as the cache keeps
        result = soak(api, etcd, 14, rate=RATE, forced=((4, "restart"), (8, "partition")),
                      away=2 * CACHE, settle=15)
    assert result["writes"] > 150, result
    assert result["restarts"] == 1 and result["partitions"] == 1
    assert ok(result) == []
    for r in result["informers"]:
        # the partition's relist found the writes it missed: client-go's synthetic events
        assert sum(r["synthetic"].values()) > 0, r
        assert r["events"] > 100, r
