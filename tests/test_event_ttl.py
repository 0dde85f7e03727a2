"""Events expire (kube-apiserver's `--event-ttl`): stored on etcd leases that
the apiserver shares between writes (apiserver/leases.py), so etcd deletes
them and every watcher sees them go.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from apiserver import resources
from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.leases import MAX_OBJECTS_A_LEASE, LeaseManager
from apiserver.pb import core_pb2
from apiserver.server import build_parser
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc as rpc
from harness.etcd_client import wait_until
from harness.plane import start_apiserver
from harness.procs import Registry


class _Grants:
    def __init__(self):
        self.ttls = []

    async def __call__(self, ttl):
        self.ttls.append(ttl)
        return len(self.ttls)


def test_lease_manager_shares_a_lease_for_a_minute():
    now = [1000.0]
    grants = _Grants()
    leases = LeaseManager(grants, clock=lambda: now[0])

    async def run():
        first = await leases.lease(3600)
        assert grants.ttls == [3660]  # the ttl and a minute of reuse
        now[0] += 59
        assert await leases.lease(3600) == first  # still outlives the ttl from now
        now[0] += 2
        assert await leases.lease(3600) != first  # would not: a new one
        assert grants.ttls == [3660, 3660]
        # a short ttl gets 5% of it as reuse (nothing under 20 s): a lease per write
        assert await leases.lease(3) != await leases.lease(3)
        assert grants.ttls[-2:] == [3, 3]
        # at most so many objects a lease
        got = {await leases.lease(3600) for _ in range(MAX_OBJECTS_A_LEASE + 1)}
        assert len(got) == 2
    asyncio.run(run())


def test_event_ttl_flag():
    assert build_parser().parse_args([]).event_ttl == 3600  # kube-apiserver's 1h0m0s
    assert build_parser().parse_args(["--event-ttl", "90s"]).event_ttl == 90
    assert build_parser().parse_args(["--event-ttl", "0"]).event_ttl == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--event-ttl", "90"])  # Go wants a unit


def _event(name: str) -> core_pb2.Event:
    e = core_pb2.Event()
    e.metadata.name, e.metadata.namespace = name, "default"
    e.involved_object.kind, e.involved_object.name, e.involved_object.namespace = "Pod", "p", "default"
    e.reason, e.message, e.type = "Tested", "an event that expires", "Normal"
    return e


@pytest.mark.process
def test_events_expire_and_watchers_see_them_go(tmp_path):
    reg = Registry()
    try:
        member = reg.start_etcdlite(tmp_path, name="etcd")
        api = start_apiserver(tmp_path, member.url, registry=reg, event_ttl="3s")
        events = next(r for r in resources.RESOURCES if r.name == "events")
        with Client(api.endpoint, timeout=15) as c, grpc.insecure_channel(member.endpoint) as ch:
            kv, lease = rpc.KVStub(ch), rpc.LeaseStub(ch)
            c.create(_event("first"))
            c.create(core_pb2.ConfigMap(metadata={"name": "stays", "namespace": "default"}))
            stored = kv.Range(pb.RangeRequest(key=(events.prefix("default") + "first").encode())).kvs[0]
            assert stored.lease != 0
            ttl = lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=stored.lease, keys=True))
            assert ttl.grantedTTL == 3 and stored.key in ttl.keys
            cm = kv.Range(pb.RangeRequest(key=b"/registry/configmaps/default/stays")).kvs[0]
            assert cm.lease == 0  # only Events expire
            with c.watch("Event", "default", timeout=30) as watch:
                wait_until(lambda: _gone(c, "first"), timeout=20, what="the event to expire")
                deleted = next(ev for ev in watch if ev.type == "DELETED")
            assert deleted.object.metadata.name == "first"
            assert c.get("ConfigMap", "stays").metadata.name == "stays"
    finally:
        reg.cleanup()


def _gone(c: Client, name: str) -> bool:
    try:
        c.get("Event", name)
        return False
    except ApiError as e:
        return e.reason == "NotFound"
