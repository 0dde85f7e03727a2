"""etcdlite's peer (Raft) traffic in TLS, with etcd's --peer-* flags: a
3-member cluster on https:// peer URLs elects, replicates and survives a
SIGKILLed member; what crosses between members is not the plaintext (it is
without TLS: the check can fail); a member with a certificate from another
CA, or from the peer CA with a Common Name not allowed, taking a member's
place is refused and learns nothing; wrong peer TLS settings are etcd's
config errors."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import ssl
import threading
import time

import grpc
import pytest

from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection

from apiserver.auth.pki import CA
from etcdlite.pb.etcdserverpb import rpc_pb2 as pb
from etcdlite.pb.etcdserverpb import rpc_pb2_grpc
from harness.etcd_client import Client, wait_until
from etcdlite.raft.loop import LoopPoller
from etcdlite.raft.peer_transport import PeerConnection, PeerTLS, mac_key
from harness.procs import Member, Registry, kill_all

ALLOWED_CN = "etcd-peer"


class CaptureRelay:
    """127.0.0.1:port -> 127.0.0.1:target_port, keeping every byte that
    passes either way (members dial each other through it with
    --experimental-peer-dial-urls)."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.captured = bytearray()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name=f"relay-{self.port}").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                target = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            target.settimeout(None)
            with self._lock:
                self._socks += [client, target]
            for src, dst in ((client, target), (target, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def bytes(self) -> bytes:
        with self._lock:
            return bytes(self.captured)

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            s.close()


class Cluster:
    """Three etcdlite members (peer TLS or not) dialling each other through
    capture relays; `pki` holds the peer CA, a rogue CA and their certificates."""

    def __init__(self, tmp, tls: bool, reg: Registry, secret: bool = True):
        self.tmp = tmp
        self.reg = reg
        self.secret = tmp / "peer.secret"
        self.secret.write_text(secrets.token_urlsafe(32))
        self.ca = CA(tmp / "pki", name="peer-ca", cn="etcd-peer-ca")
        self.members = [Member("etcdlite", f"m{i}", tmp, {}, reg) for i in range(3)]
        self.relays = [CaptureRelay(m.peer_port) for m in self.members]
        for m in self.members:
            m.peer_scheme = "https" if tls else "http"
        for m in self.members:
            m.initial_cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
            flags = {"peer_secret_file": str(self.secret) if secret else None, "log_level": "info"}
            others = [(x, r) for x, r in zip(self.members, self.relays) if x is not m]
            flags["experimental_peer_dial_urls"] = ",".join(
                f"{x.name}={'https' if tls else 'http'}://127.0.0.1:{r.port}" for x, r in others)
            if tls:
                issued = self.ca.issue(m.name, ALLOWED_CN, server=True, client=True, ips=("127.0.0.1",))
                flags.update(peer_cert_file=str(issued.cert), peer_key_file=str(issued.key),
                             peer_trusted_ca_file=str(self.ca.cert_path), peer_client_cert_auth=True,
                             peer_cert_allowed_cn=ALLOWED_CN)
            m.extra_flags = flags
        try:
            for m in self.members:
                m.launch()
            for m in self.members:
                m.wait_ready()
        except BaseException:
            self.close()
            raise

    def captured(self) -> bytes:
        return b"".join(r.bytes() for r in self.relays)

    def close(self) -> None:
        kill_all(self.members)
        for r in self.relays:
            r.close()


def _status(m: Member, timeout: float = 1.0) -> pb.StatusResponse | None:
    with grpc.insecure_channel(m.endpoint) as ch:
        try:
            return rpc_pb2_grpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=timeout)
        except grpc.RpcError:
            return None


def _has(m: Member, key: bytes, value: bytes) -> bool:
    with grpc.insecure_channel(m.endpoint) as ch:
        try:
            resp = rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=key, serializable=True), timeout=1)
        except grpc.RpcError:
            return False
    return bool(resp.kvs) and resp.kvs[0].value == value


def _replicated(members, key: bytes, value: bytes, timeout: float = 10) -> None:
    for m in members:
        wait_until(lambda: _has(m, key, value), timeout, what=f"{key!r} on {m.name}")


def _log(m: Member) -> str:
    try:
        return m.log_path.read_text(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    reg = Registry()
    cluster = Cluster(tmp_path_factory.mktemp("peertls"), True, reg)
    try:
        yield cluster
    finally:
        cluster.close()
        reg.cleanup()


@pytest.mark.process
def test_tls_cluster_replicates_and_the_wire_holds_no_plaintext(tls_cluster):
    canary = b"peer-tls-canary-" + secrets.token_hex(8).encode()
    key = b"/peertls/" + secrets.token_hex(4).encode()
    with Client(tls_cluster.members[0].endpoint) as c:
        c.put(key, canary)
    _replicated(tls_cluster.members, key, canary)
    wire = tls_cluster.captured()
    assert len(wire) > 1000, "no peer traffic went through the relays"
    assert canary not in wire and key not in wire, "a written value crossed between members in the clear"
    leaders = {_status(m).leader for m in tls_cluster.members}
    assert len(leaders) == 1 and 0 not in leaders


@pytest.mark.process
def test_without_tls_the_same_capture_finds_the_value(tmp_path):
    """The control for the test above: the capture does see plaintext."""
    reg = Registry()
    cluster = Cluster(tmp_path, False, reg)
    try:
        canary = b"peer-plain-canary-" + secrets.token_hex(8).encode()
        with Client(cluster.members[0].endpoint) as c:
            c.put(b"/plain/k", canary)
        _replicated(cluster.members, b"/plain/k", canary)
        assert canary in cluster.captured()
    finally:
        cluster.close()
        reg.cleanup()


@pytest.mark.process
def test_etcds_peer_flags_alone_make_a_cluster(tmp_path):
    """No --peer-secret-file: mutual peer TLS authenticates the members (as
    etcd's), and the members agree on the frames' key without one."""
    reg = Registry()
    cluster = Cluster(tmp_path, True, reg, secret=False)
    try:
        assert "--peer-secret-file" not in cluster.members[0].argv()
        with Client(cluster.members[1].endpoint) as c:
            c.put(b"/nosecret/k", b"v")
        _replicated(cluster.members, b"/nosecret/k", b"v")
    finally:
        cluster.close()
        reg.cleanup()


@pytest.mark.process
def test_tls_cluster_survives_sigkill_of_its_leader(tls_cluster):
    members = tls_cluster.members
    leader_id = wait_until(lambda: (st := _status(members[0])) and st.leader, 10, what="a leader")
    leader = next(m for m in members if _status(m).header.member_id == leader_id)
    rest = [m for m in members if m is not leader]
    leader.kill()
    wait_until(lambda: (st := _status(rest[0])) is not None and st.leader not in (0, leader_id), 15,
               what="a new leader among the survivors")
    value = b"after-kill-" + secrets.token_hex(4).encode()
    with Client(rest[0].endpoint) as c:
        c.put(b"/peertls/after-kill", value)
    leader.start()
    _replicated(members, b"/peertls/after-kill", value, timeout=15)


@pytest.mark.process
def test_members_without_a_peer_ca_certificate_are_refused(tls_cluster):
    """Intruders take a member's place in turn (its name, peer URL and port, the
    cluster's peer secret, a fresh data dir), one with a certificate from
    another CA, one from the peer CA with a CN not allowed: neither hears
    from the leader, so neither gets the data, while the cluster keeps
    serving and its members log why; the member then comes back and catches up."""
    leader_id = wait_until(lambda: (st := _status(tls_cluster.members[0])) and st.leader, 10, what="a leader")
    # a follower's place: the writes below need no new election
    victim = next(m for m in tls_cluster.members if _status(m).header.member_id != leader_id)
    members = [m for m in tls_cluster.members if m is not victim] + [victim]
    secret_value = b"only-for-members-" + secrets.token_hex(6).encode()
    with Client(members[0].endpoint) as c:
        c.put(b"/peertls/secret", secret_value)
    _replicated(members, b"/peertls/secret", secret_value)
    victim.kill()
    rogue = CA(tls_cluster.tmp / "rogue", name="rogue-ca", cn="etcd-peer-ca")  # same name, other key
    intruders = {
        "another CA": (rogue, rogue.issue(victim.name, ALLOWED_CN, server=True, client=True, ips=("127.0.0.1",))),
        "a CN not allowed": (tls_cluster.ca, tls_cluster.ca.issue("mallory", "mallory", server=True, client=True,
                                                                  ips=("127.0.0.1",))),
    }
    for i, (who, (ca, issued)) in enumerate(intruders.items()):
        flags = dict(victim.extra_flags)
        flags.pop("experimental_peer_dial_urls")
        flags.update(peer_cert_file=str(issued.cert), peer_key_file=str(issued.key),
                     peer_trusted_ca_file=str(ca.cert_path))
        intruder = Member("etcdlite", victim.name, tls_cluster.tmp / f"intruder{i}", flags, tls_cluster.reg)
        intruder.peer_scheme = "https"
        intruder.peer_port = victim.peer_port
        intruder.initial_cluster = victim.initial_cluster
        logs_before = [len(_log(m)) for m in members[:2]]
        try:
            intruder.launch()
            wait_until(lambda: "replaying the raft log" in _log(intruder), 15, what="the intruder's raft starting")
            # an election timeout or two (1-2 s): had it been let in, the leader's
            # heartbeats (every 0.1 s) would have made it a follower with the data
            with Client(members[0].endpoint) as c:
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    assert intruder.alive, intruder.log_tail()
                    st = _status(intruder, timeout=0.5)
                    assert st is None or st.leader == 0, f"the intruder with {who} found a leader"
                    assert not _has(intruder, b"/peertls/secret", secret_value), f"the intruder with {who} got data"
                    c.put(b"/peertls/during", str(i).encode())  # the cluster keeps serving
                    time.sleep(0.2)
            # and the members say why they drop it
            refusals = lambda: "".join(_log(m)[n:] for m, n in zip(members[:2], logs_before))  # noqa: E731
            wait_until(lambda: "peer connection" in refusals() and "refused" in refusals(), 10,
                       what=f"a member refusing the intruder with {who}")
            # a member checking the intruder's certificate says what is wrong with it; one
            # whose own certificate the intruder refused (the intruder trusts its own CA) got
            # the intruder's alert
            said = refusals()
            if who == "another CA":
                assert "certificate verify failed" in said or "alert unknown ca" in said, said[-2000:]
            else:
                assert "CN mallory is not the --peer-cert-allowed-cn 'etcd-peer'" in said, said[-2000:]
        finally:
            intruder.kill()
    victim.start()
    _replicated(members, b"/peertls/during", b"1", timeout=15)


def _exchange(client_tls: PeerTLS, server_tls: PeerTLS, messages: list) -> tuple[list, bool]:
    """A dialling and an accepted PeerConnection on 127.0.0.1 in an asyncio
    loop through `LoopPoller` (as a member runs them), with 8 KiB socket
    buffers so that writes are partial; the client sends `messages` as
    soon as TCP connects (before the TLS handshake). Returns what the server
    received, and whether its connection was dropped."""
    key = mac_key("k")

    async def run():
        loop = asyncio.get_running_loop()
        poller = LoopPoller(loop, lambda: None)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        received, accepted = [], []

        def accept():
            sock, _ = listener.accept()
            sock.setblocking(False)
            conn = TcpConnection(poller=poller, socket=sock, timeout=10, sendBufferSize=2**13, recvBufferSize=2**13)
            PeerConnection.adopt(conn, key, None, server_tls)
            conn.setOnMessageReceivedCallback(received.append)
            accepted.append(conn)

        loop.add_reader(listener.fileno(), accept)
        client = PeerConnection.adopt(TcpConnection(poller=poller, timeout=10, sendBufferSize=2**13,
                                                    recvBufferSize=2**13), key, None, client_tls, "127.0.0.1")
        client.setOnConnectedCallback(lambda: [client.send(m) for m in messages])
        try:
            assert client.connect("127.0.0.1", listener.getsockname()[1])
            deadline = loop.time() + 10
            while loop.time() < deadline and len(received) < len(messages):
                if accepted and accepted[0].state == CONNECTION_STATE.DISCONNECTED:
                    break
                await asyncio.sleep(0.005)
            dropped = bool(accepted) and accepted[0].state == CONNECTION_STATE.DISCONNECTED
            return received, dropped
        finally:
            loop.remove_reader(listener.fileno())
            listener.close()
            client.disconnect()
            for conn in accepted:
                conn.disconnect()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def peer_pki(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peerpki")
    ca, rogue = CA(tmp, name="peer-ca", cn="etcd-peer-ca"), CA(tmp, name="rogue-ca", cn="etcd-peer-ca")

    def tls(ca, name, cn=ALLOWED_CN, **kw):
        issued = ca.issue(name, cn, server=True, client=True, ips=("127.0.0.1",))
        return PeerTLS(str(issued.cert), str(issued.key), str(kw.pop("trust", ca).cert_path), **kw)

    return ca, rogue, tls


def test_frames_cross_tls_whole_in_order_with_partial_writes(peer_pki):
    ca, _, tls = peer_pki
    big = secrets.token_bytes(2 << 20)
    messages = [("hello", 1), big, {"n": list(range(1000))}, b"tail"]
    received, dropped = _exchange(tls(ca, "a", client_cert_auth=True, allowed_cn=ALLOWED_CN),
                                  tls(ca, "b", client_cert_auth=True, allowed_cn=ALLOWED_CN), messages)
    assert not dropped
    assert received == messages


@pytest.mark.parametrize("case", ["client from another CA", "client CN not allowed", "no client certificate"])
def test_server_drops_a_client_it_must_not_trust_unread(peer_pki, case):
    ca, rogue, tls = peer_pki
    server = tls(ca, "srv", client_cert_auth=True, allowed_cn=ALLOWED_CN)
    if case == "client from another CA":
        client = tls(rogue, "cli", trust=ca)  # it trusts the server: only the server can refuse it
    elif case == "client CN not allowed":
        client = tls(ca, "cli", cn="mallory")
    else:
        client = tls(ca, "cli")
        client.client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts the CA, presents nothing
        client.client_context.load_verify_locations(cafile=str(ca.cert_path))
    received, dropped = _exchange(client, server, [("hello", 1)])
    assert dropped and received == []


def _config(**kw):
    from etcdlite.config import MemberConfig

    base = dict(name="a", data_dir=os.devnull,
                listen_peer_urls=["https://127.0.0.1:2380"], initial_advertise_peer_urls=["https://127.0.0.1:2380"],
                initial_cluster={"a": ["https://127.0.0.1:2380"], "b": ["https://127.0.0.1:2382"]})
    base.update(kw)
    return MemberConfig(**base)


def test_peer_tls_config_errors_are_etcds(tmp_path, capsys):
    from etcdlite.cli import main
    from etcdlite.config import ConfigError

    with pytest.raises(ConfigError, match=r"^cannot listen on TLS for 127\.0\.0\.1:2380: "
                                          r"KeyFile and CertFile are not presented"):
        _config(peer_password="s")
    ca = CA(tmp_path, name="peer-ca")
    issued = ca.issue("a", ALLOWED_CN, server=True, ips=("127.0.0.1",))
    files = dict(peer_cert_file=str(issued.cert), peer_key_file=str(issued.key))
    with pytest.raises(ConfigError, match="--peer-cert-file is given but --peer-key-file is missing"):
        _config(peer_password="s", peer_cert_file=str(issued.cert))
    with pytest.raises(ConfigError, match="mix https .* and http"):
        _config(peer_password="s", initial_cluster={"a": ["https://127.0.0.1:2380"], "b": ["http://127.0.0.1:2382"]},
                **files)
    with pytest.raises(ConfigError, match="--peer-client-cert-auth needs --peer-trusted-ca-file"):
        _config(peer_password="s", peer_client_cert_auth=True, **files)
    # no secret: TLS must authenticate both ends of every connection
    with pytest.raises(ConfigError, match="--peer-secret-file, or peer TLS with client certificates"):
        _config(peer_trusted_ca_file=str(ca.cert_path), **files)
    cfg = _config(peer_trusted_ca_file=str(ca.cert_path), peer_client_cert_auth=True, **files)
    assert cfg.peer_password and cfg.load_peer_tls() is not None
    # a key that is not the certificate's
    other = ca.issue("b", ALLOWED_CN, server=True, ips=("127.0.0.1",))
    with pytest.raises(ConfigError, match="--peer-key-file .* is not the key of --peer-cert-file"):
        _config(peer_password="s", peer_cert_file=str(issued.cert), peer_key_file=str(other.key)).load_peer_tls()
    # http peer URLs: the files are ignored, as etcd does (with its warning)
    plain = _config(peer_password="s", listen_peer_urls=["http://127.0.0.1:2380"],
                    initial_advertise_peer_urls=["http://127.0.0.1:2380"],
                    initial_cluster={"a": ["http://127.0.0.1:2380"], "b": ["http://127.0.0.1:2382"]}, **files)
    assert plain.load_peer_tls() is None
    # the command line says it and exits 2
    secret = tmp_path / "s"
    secret.write_text("x")
    rc = main(["--name", "a", "--listen-peer-urls", "https://127.0.0.1:2380",
               "--initial-cluster", "a=https://127.0.0.1:2380,b=https://127.0.0.1:2382",
               "--peer-secret-file", str(secret), "--data-dir", str(tmp_path / "d")])
    assert rc == 2
    assert "etcdlite: cannot listen on TLS for 127.0.0.1:2380: KeyFile and CertFile are not presented" \
        in capsys.readouterr().err
