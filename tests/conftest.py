"""Shared fixtures: process registry with guaranteed cleanup, an etcdctl runner, and the check
that every test starting a process carries the ``process`` marker (so that
``pytest -m "not process"`` stays the quick, process-free run)."""

from __future__ import annotations

import fnmatch

import pytest

from harness import procs as _procs
from harness.spawn_watch import SpawnWatch

_spawns = SpawnWatch()


# Tests whose assertion is a time bound (a bystander served within 1 s during an attack, a flood
# not starving another client, a Range answered within a second during a 300k-key delete, the
# checker's 5,000-op history in 10 s) or that time a machine-wide effect (power loss through FUSE):
# they get the ``serial`` marker, and `make test` runs them after the parallel part, alone on the
# machine, so that a neighbour worker's load can never be the reason they fail (nor hide why).
# A file name alone takes the whole file; "file::name" one test (and its parametrizations).
SERIAL = (
    "test_h2_abuse.py",
    "test_watch_abuse.py",
    "test_durability*.py",
    "test_powerloss*.py",
    "test_lease_cluster.py",
    "test_cluster_dns.py::test_a_flooding_client_does_not_starve_another",
    "test_big_applies.py::test_a_range_is_answered_within_a_second_while_300k_keys_are_deleted",
    "test_linearizability_checker.py::test_performance_5000_ops_5_keys_10_clients",
    "test_cert_rotation.py::test_the_kubelet_renews_before_expiry_and_goes_on_after_it",
    "test_tls_bootstrap_real.py::test_a_real_kubelet_rotates_its_certificate_and_goes_on",
    "test_kubelet_stats.py",
    "test_admission_webhooks.py::test_a_slow_webhook_times_out_and_slows_only_its_own_requests",
    "test_kubectl_top.py",
)


def _serial(item) -> bool:
    file = item.path.name
    test = f"{file}::{getattr(item, 'originalname', item.name)}"
    return any(fnmatch.fnmatchcase(file, p) or fnmatch.fnmatchcase(test, p) for p in SERIAL)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark the timing-bound tests (SERIAL) ``serial`` before ``-m`` selects on it."""
    for item in items:
        if _serial(item):
            item.add_marker(pytest.mark.serial)


@pytest.fixture
def procs():
    """A Registry: ``procs.start_real_etcd(tmp_path, name=...)``,
    ``procs.start_etcdlite(tmp_path, name=..., **flags)``. Everything it started is
    SIGKILLed at teardown, pass or fail."""
    reg = _procs.Registry()
    try:
        yield reg
    finally:
        reg.cleanup()


@pytest.fixture(autouse=True)
def _kill_leftover_processes():
    """Safety net for members/background etcdctls started during a test without a
    Registry (e.g. ``Member.start_real_etcd(...)`` directly): kill what this test
    started and left running. Members owned by a Registry are left to its owner
    (a module-scoped fixture may keep one across tests); the session-wide net below
    catches those."""
    before_members = set(map(id, _procs.all_members()))
    before_bg = set(map(id, _procs._BACKGROUND))
    yield
    _procs.stop_background([b for b in list(_procs._BACKGROUND) if id(b) not in before_bg])
    _procs.kill_all([m for m in _procs.all_members()
                     if id(m) not in before_members and not m.registries])


@pytest.fixture(scope="session", autouse=True)
def _kill_everything_at_session_end():
    yield
    _procs.stop_background()
    _procs.kill_all()


@pytest.fixture(scope="session", autouse=True)
def _watch_spawns():
    _spawns.install()
    yield
    _spawns.uninstall()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Forget what was started before this test's setup: the module- and session-scoped
    fixtures set up for it count as its own."""
    _spawns.take()


@pytest.fixture(autouse=True)
def _process_marker_enforced(request):
    """Fail a test that started a process (in its call or in any fixture set up for it) without
    the ``process`` marker."""
    yield
    started = _spawns.take()
    if started and request.node.get_closest_marker("process") is None:
        pytest.fail(f"started {len(started)} process(es) without @pytest.mark.process "
                    f"(add it to the test, or pytestmark to its module); first: {started[0]}",
                    pytrace=False)


@pytest.fixture
def etcd_binaries():
    """Skip unless both the real etcd and etcdctl are installed."""
    _procs.require_binary(_procs.ETCD_BIN, "etcd (the real etcd 3.4 server)")
    _procs.require_binary(_procs.ETCDCTL_BIN, "etcdctl 3.4")
    return _procs.ETCD_BIN, _procs.ETCDCTL_BIN


@pytest.fixture
def etcdctl():
    """``etcdctl(endpoints, *args, stdin=None, timeout=20) -> (rc, stdout, stderr)``.

    ``endpoints`` is a Member, "host:port" or a list of them; runs
    /usr/bin/etcdctl with ETCDCTL_API=3 --endpoints=... ."""
    _procs.require_binary(_procs.ETCDCTL_BIN, "etcdctl 3.4")
    return _procs.run_etcdctl
