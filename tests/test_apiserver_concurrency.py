"""Optimistic concurrency through the apiserver: no lost update ever passes.

A Hypothesis state machine drives several clients, each acting on its own
(possibly stale) view of a few objects, against a plain model of what etcd
must hold; then real threads race read-modify-write loops.
"""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from harness.plane import start_apiserver
from harness.procs import Registry

pytestmark = pytest.mark.process

NAMES = ("a", "b", "c")
CLIENTS = 3


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    reg = Registry()
    tmp = tmp_path_factory.mktemp("apiconc")
    member = reg.start_etcdlite(tmp, name="etcd")
    server = start_apiserver(tmp, member.url, registry=reg)
    with Client(server.endpoint, timeout=15) as client:
        yield client
    reg.cleanup()


def config_map(namespace, name, value, resource_version=""):
    cm = core_pb2.ConfigMap()
    cm.metadata.name, cm.metadata.namespace = name, namespace
    cm.metadata.resource_version = resource_version
    cm.data["value"] = value
    return cm


_namespaces = itertools.count()


class Clients(RuleBasedStateMachine):
    """Model: name -> (value, resourceVersion) of what is stored. Each client
    remembers the resourceVersion it last saw of each name (its view)."""

    client: Client = None  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.ns = f"hyp{next(_namespaces)}"
        self.client.create(core_pb2.Namespace(metadata={"name": self.ns}))
        self.model: dict[str, tuple[str, str]] = {}
        self.views: list[dict[str, str]] = [{} for _ in range(CLIENTS)]

    def _expect_error(self, reason, call, *args, **kw):
        try:
            call(*args, **kw)
        except ApiError as e:
            assert e.reason == reason, (reason, e)
            return
        raise AssertionError(f"expected {reason}, the call succeeded")

    @rule(who=st.integers(0, CLIENTS - 1), name=st.sampled_from(NAMES))
    def read(self, who, name):
        try:
            got = self.client.get("configmaps", name, self.ns)
        except ApiError as e:
            assert e.reason == "NotFound" and name not in self.model
            self.views[who].pop(name, None)
            return
        assert (got.data["value"], got.metadata.resource_version) == self.model[name]
        self.views[who][name] = got.metadata.resource_version

    @rule(who=st.integers(0, CLIENTS - 1), name=st.sampled_from(NAMES), value=st.text("xyz", max_size=3))
    def create(self, who, name, value):
        if name in self.model:
            self._expect_error("AlreadyExists", self.client.create, config_map(self.ns, name, value))
            return
        got = self.client.create(config_map(self.ns, name, value))
        self.model[name] = (value, got.metadata.resource_version)
        self.views[who][name] = got.metadata.resource_version

    @rule(who=st.integers(0, CLIENTS - 1), name=st.sampled_from(NAMES), value=st.text("xyz", max_size=3))
    def update(self, who, name, value):
        seen = self.views[who].get(name)
        if seen is None:
            return
        request = config_map(self.ns, name, value, seen)
        if name not in self.model:
            self._expect_error("NotFound", self.client.update, request)
            return
        stored_value, stored_rv = self.model[name]
        if seen != stored_rv:
            self._expect_error("Conflict", self.client.update, request)
            return
        got = self.client.update(request)
        if value == stored_value:  # nothing changed: no write
            assert got.metadata.resource_version == stored_rv
        else:
            assert int(got.metadata.resource_version) > int(stored_rv)
        self.model[name] = (value, got.metadata.resource_version)
        self.views[who][name] = got.metadata.resource_version

    @rule(who=st.integers(0, CLIENTS - 1), name=st.sampled_from(NAMES))
    def delete(self, who, name):
        seen = self.views[who].get(name)
        if seen is None:
            return
        if name not in self.model:
            self._expect_error("NotFound", self.client.delete, "configmaps", name, self.ns,
                               resource_version=seen)
            return
        if seen != self.model[name][1]:
            self._expect_error("Conflict", self.client.delete, "configmaps", name, self.ns,
                               resource_version=seen)
            return
        self.client.delete("configmaps", name, self.ns, resource_version=seen)
        del self.model[name]

    @invariant()
    def list_matches_model(self):
        listed = self.client.list("configmaps", self.ns)
        got = {cm.metadata.name: (cm.data["value"], cm.metadata.resource_version) for cm in listed.items}
        assert got == self.model


def test_stale_and_fresh_writers_against_a_model(api):
    Clients.client = api
    machine = settings(max_examples=25, stateful_step_count=25, deadline=None,
                       suppress_health_check=list(HealthCheck))(Clients)
    machine.TestCase().runTest()


def test_racing_read_modify_write_loses_nothing(api):
    """8 threads increment one counter with get + update(resourceVersion);
    a Conflict means re-read and retry. Every increment that succeeded is there."""
    api.create(core_pb2.Namespace(metadata={"name": "race"}))
    api.create(config_map("race", "counter", "0"))
    per_thread, successes, conflicts = 15, [], []
    lock = threading.Lock()

    def worker():
        done = 0
        while done < per_thread:
            current = api.get("configmaps", "counter", "race")
            nxt = config_map("race", "counter", str(int(current.data["value"]) + 1),
                             current.metadata.resource_version)
            try:
                api.update(nxt)
            except ApiError as e:
                assert e.reason == "Conflict", e
                with lock:
                    conflicts.append(1)
                continue
            done += 1
        with lock:
            successes.append(done)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert sum(successes) == 8 * per_thread
    assert api.get("configmaps", "counter", "race").data["value"] == str(8 * per_thread)
    assert conflicts, "the threads never raced; the test proved nothing"
