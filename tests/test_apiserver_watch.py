"""Watch through the apiserver, end to end, on etcdlite and on the real etcd:
a watcher started at any listed resourceVersion sees exactly the later
changes, in order; it resumes across an apiserver SIGKILL from its last
resourceVersion; a too-old resourceVersion is Expired and a relist recovers;
bookmarks; selector transitions."""

from __future__ import annotations

import threading

import grpc
import pytest

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from harness.etcd_client import wait_until
from harness.plane import start_apiserver
from harness.procs import Registry

pytestmark = pytest.mark.process

CACHE_SIZE = 40


@pytest.fixture(scope="module", params=["etcdlite", "etcd"])
def plane(request, tmp_path_factory):
    reg = Registry()
    tmp = tmp_path_factory.mktemp(f"apiwatch-{request.param}")
    if request.param == "etcd":
        member = reg.start_real_etcd(tmp, name="etcd")
    else:
        member = reg.start_etcdlite(tmp, name="etcd")
    api = start_apiserver(tmp, member.url, registry=reg, watch_cache_size=CACHE_SIZE)
    client = Client(api.endpoint, timeout=15)
    client.create(core_pb2.Namespace(metadata={"name": "w"}))
    yield api, client
    client.close()
    reg.cleanup()


def cm(name, value="", labels=None):
    m = core_pb2.ConfigMap()
    m.metadata.name, m.metadata.namespace = name, "w"
    m.metadata.labels.update(labels or {})
    if value:
        m.data["v"] = value
    return m


def collect(watch, count, timeout=20.0):
    """The first ``count`` non-bookmark events of ``watch`` (stops it after)."""
    out, done = [], threading.Event()

    def run():
        try:
            for event in watch:
                if event.type != "BOOKMARK":
                    out.append((event.type, event.object.metadata.name,
                                event.object.data.get("v", ""), event.object.metadata.resource_version))
                if len(out) >= count:
                    break
        except ApiError as e:
            out.append(e)
        finally:
            done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    done.wait(timeout)
    watch.stop()
    t.join(5)
    return out


def test_watch_from_every_listed_revision_sees_exactly_the_later_changes(plane):
    _, c = plane
    start = c.list("configmaps", "w").resource_version
    history = []  # (type, name, value, rv) as each write returned it
    for i in range(6):
        obj = c.create(cm(f"k{i}", "0"))
        history.append(("ADDED", f"k{i}", "0", obj.metadata.resource_version))
        obj = c.patch("configmaps", f"k{i}", {"data": {"v": "1"}}, "w")
        history.append(("MODIFIED", f"k{i}", "1", obj.metadata.resource_version))
        if i % 2:
            gone = c.delete("configmaps", f"k{i}", "w")
            history.append(("DELETED", f"k{i}", "1", gone.metadata.resource_version))
    revisions = [start] + [h[3] for h in history]
    for i, rv in enumerate(revisions):
        expected = history[i:]
        if not expected:
            continue
        got = collect(c.watch("configmaps", "w", resource_version=rv), len(expected))
        assert got == expected, f"watch from {rv}"


def test_watch_from_now_lists_then_follows(plane):
    _, c = plane
    c.create(cm("now-a", "x"))
    w = c.watch("configmaps", "w", label_selector="")
    existing = {o.metadata.name for o in c.list("configmaps", "w").items}
    c.create(cm("now-b", "y"))
    got = collect(w, len(existing) + 1)
    assert all(e[0] == "ADDED" for e in got)
    assert {e[1] for e in got} == existing | {"now-b"}


def test_label_selector_transitions(plane):
    _, c = plane
    start = c.list("configmaps", "w").resource_version
    c.create(cm("sel", labels={"tier": "web"}))
    c.patch("configmaps", "sel", {"metadata": {"labels": {"tier": "db"}}}, "w")
    c.patch("configmaps", "sel", {"metadata": {"labels": {"tier": "web"}}}, "w")
    got = collect(c.watch("configmaps", "w", label_selector="tier=web", resource_version=start), 3)
    assert [e[0] for e in got] == ["ADDED", "DELETED", "ADDED"]


def test_too_old_resource_version_is_expired_and_a_relist_recovers(plane):
    _, c = plane
    old = c.list("configmaps", "w").resource_version
    for i in range(CACHE_SIZE + 10):
        c.create(cm(f"churn{i}"))
    with pytest.raises(ApiError) as info:
        list(c.watch("configmaps", "w", resource_version=old))
    assert info.value.reason == "Expired" and info.value.grpc_code == grpc.StatusCode.OUT_OF_RANGE
    relisted = c.list("configmaps", "w")
    w = c.watch("configmaps", "w", resource_version=relisted.resource_version)
    c.create(cm("after-relist"))
    assert [e[1] for e in collect(w, 1)] == ["after-relist"]


def test_bookmarks_advance_on_an_idle_resource(plane):
    _, c = plane
    quiet = c.list("services", "w").resource_version
    w = c.watch("services", "w", resource_version=quiet, bookmarks=True)
    written = int(c.create(cm("elsewhere")).metadata.resource_version)
    seen = []

    def run():
        for event in w:
            seen.append(event)
            if event.type == "BOOKMARK" and int(event.object.metadata.resource_version) >= written:
                break

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(15)
    w.stop()
    assert seen and seen[-1].type == "BOOKMARK"
    assert int(seen[-1].object.metadata.resource_version) >= written
    assert all(e.type == "BOOKMARK" for e in seen)


def test_watch_resumes_across_an_apiserver_kill(plane):
    api, c = plane
    start = c.list("configmaps", "w").resource_version
    before = [c.create(cm(f"r{i}", "a")).metadata.resource_version for i in range(3)]
    got = collect(c.watch("configmaps", "w", resource_version=start), 3)
    assert [e[3] for e in got] == before
    # other resources move the revision on: the restarted cache starts past got[-1]
    c.create(core_pb2.Node(metadata={"name": "unrelated"}))
    api.kill()
    api.start()
    wait_until(lambda: c.list("namespaces", limit=1), 20, what="apiserver back")
    after = [c.patch("configmaps", f"r{i}", {"data": {"v": "b"}}, "w").metadata.resource_version
             for i in range(3)]
    resumed = collect(c.watch("configmaps", "w", resource_version=got[-1][3]), 3)
    assert [(e[0], e[1], e[2]) for e in resumed] == [("MODIFIED", f"r{i}", "b") for i in range(3)]
    assert [e[3] for e in resumed] == after
