"""The peer port unpickles what peers send, so it must only hear peers that
hold the cluster secret. A crafted pickle from an unauthenticated client is
dropped: it runs no code, changes no state, and the cluster keeps serving."""

from __future__ import annotations

import pickle
import socket
import struct
import zlib

import pytest

from harness.etcd_client import Client, wait_until
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from harness.procs import start_etcdlite_cluster


class _OpenFile:
    """Unpickling this opens (so creates) a file: proof that code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _frame(message) -> bytes:
    # pysyncobj's wire framing: native int length, then zlib(pickle(message))
    data = zlib.compress(pickle.dumps(message, protocol=2), 3)
    return struct.pack("i", len(data)) + data


@pytest.mark.process
def test_crafted_pickle_on_peer_port_is_ignored(procs, tmp_path):
    members = start_etcdlite_cluster(tmp_path, 3, procs)
    marker = tmp_path / "pwned"
    payload = _frame(_OpenFile(str(marker)))
    # the payload is live: unpickled, it creates the marker
    probe = tmp_path / "probe"
    pickle.loads(zlib.decompress(_frame(_OpenFile(str(probe)))[4:])).close()
    assert probe.exists()

    with Client(members[0].endpoint) as c:
        before = c.put(b"sec/k", b"v").header.revision
    for m in members:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", m.peer_port), timeout=5) as s:
                try:
                    s.sendall(payload * 3)
                    s.settimeout(2)
                    s.recv(1024)  # the member drops the connection
                except OSError:
                    pass
    assert not marker.exists(), "a member unpickled an unauthenticated message"
    for m in members:
        assert m.alive
        with Client(m.endpoint) as c:
            resp = c.get(b"sec/k")
            assert resp.kvs[0].value == b"v"
            assert resp.header.revision == before
    with Client(members[1].endpoint) as c:
        assert c.put(b"sec/after", b"v").header.revision == before + 1
    for m in members:
        with Client(m.endpoint) as c:
            wait_until(lambda: c.get(b"sec/after", serializable=True).kvs, 10, what="replication")


def test_cluster_without_a_secret_refuses_to_start(tmp_path):
    from etcdlite.config import ConfigError, MemberConfig

    with pytest.raises(ConfigError, match="--peer-secret-file"):
        MemberConfig(
            name="a",
            initial_advertise_peer_urls=["http://127.0.0.1:1"],
            initial_cluster={"a": ["http://127.0.0.1:1"], "b": ["http://127.0.0.1:2"]},
        )


@pytest.mark.process
def test_unauthenticated_hello_gets_no_answer(procs, tmp_path):
    """A peer that cannot prove the secret gets nothing back, not even the
    member's half of pysyncobj's handshake."""
    members = start_etcdlite_cluster(tmp_path, 3, procs)
    with Client(members[0].endpoint) as c:
        st = c.maintenance.Status(pb.StatusRequest())
    assert st.leader
    with socket.create_connection(("127.0.0.1", members[0].peer_port), timeout=5) as s:
        s.sendall(_frame("127.0.0.1:1"))  # a plain, unauthenticated hello
        s.settimeout(3)
        try:
            got = s.recv(4096)
        except OSError:
            got = b""
    assert got == b"", "the member answered an unauthenticated peer"
