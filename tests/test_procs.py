"""Self-checks of the process harness (harness/procs.py) against the real etcd."""

from __future__ import annotations

import socket

import pytest

from harness.procs import MemberNotReady, free_port


def test_free_port_is_bindable_and_unique():
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))


@pytest.mark.process
def test_real_etcd_put_get_kill_restart(procs, etcdctl, etcd_binaries, tmp_path):
    m = procs.start_real_etcd(tmp_path, name="selfcheck")
    assert m.alive and m.endpoint == f"127.0.0.1:{m.client_port}"
    assert m.url == f"http://{m.endpoint}"

    assert etcdctl(m, "put", "k", "v") == (0, "OK\n", "")
    assert etcdctl(m, "get", "k") == (0, "k\nv\n", "")
    rc, out, err = etcdctl(m, "txn", stdin='value("k") = "v"\n\nput k2 w\n\n\n')
    assert (rc, out) == (0, "SUCCESS\n\nOK\n"), err

    # SIGKILL, then restart on the same ports and data dir: data survives.
    port = m.client_port
    m.kill()
    assert not m.alive
    m.restart()
    assert m.alive and m.client_port == port
    assert etcdctl(m, "get", "k2", "--print-value-only") == (0, "w\n", "")

    # SIGTERM path.
    rc = m.terminate(timeout=10)
    assert rc is not None and not m.alive
    assert m in list(procs)


@pytest.mark.process
def test_start_failure_reports_log_tail(procs, etcd_binaries, tmp_path):
    with pytest.raises(MemberNotReady) as ei:
        procs.start_real_etcd(tmp_path, name="broken", no_such_flag="x")
    assert "no-such-flag" in str(ei.value)
    assert not procs.members[0].alive


@pytest.mark.process
def test_etcdctl_timeout_is_reported(procs, etcdctl, etcd_binaries, tmp_path):
    m = procs.start_real_etcd(tmp_path, name="slow")
    rc, out, err = etcdctl(m, "watch", "never", timeout=1)
    assert rc == 124 and "timed out" in err
