"""`etcdlite cluster up --size N`: start and supervise a local cluster.

Member i (name n<i>) serves clients on base-port + 2i and Raft on
base-port + 2i + 1, with its data in <data-dir>/n<i>. A member that dies
(non-zero exit, a signal) is restarted unless --no-restart; one that exits
cleanly (e.g. removed from the cluster) is not. Ctrl-C or SIGTERM stops all.
With --peer-tls, Raft traffic runs in mutual TLS: a peer CA and a
certificate per member are made in <data-dir>/pki, and the members get
etcd's --peer-cert-file, --peer-key-file, --peer-trusted-ca-file and
--peer-client-cert-auth on https:// peer URLs (beside the peer secret).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import threading
import time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="etcdlite cluster up", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=3, choices=[1, 3, 5], help="number of members")
    p.add_argument("--base-port", type=int, default=2379, help="client port of the first member")
    p.add_argument("--data-dir", default="cluster.etcd", help="parent of the members' data directories")
    p.add_argument("--no-restart", action="store_true", help="do not restart members that exit")
    p.add_argument("--peer-tls", action="store_true",
                   help="peer traffic in mutual TLS, certificates made in <data-dir>/pki")
    p.add_argument("--log-level", default="warn")
    return p


def make_peer_pki(directory: str, names: list[str]) -> None:
    """ca.crt and <name>.crt/.key per member (CN etcd-peer, 127.0.0.1),
    made once: an existing CA and certificates are kept across runs."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, mode=0o700, exist_ok=True)
    if all(os.path.exists(os.path.join(directory, f"{n}.crt")) for n in ["ca", *names]):
        return
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, public_key, signer, ca: bool):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=365))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = (b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                              x509.DNSName("localhost")]), critical=False)
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                       ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        return b.sign(signer, hashes.SHA256())

    def write(name: str, data: bytes, private: bool = False) -> None:
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcdlite-peer-ca")])
    ca_cert = build(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcd-peer")])
        write(f"{name}.key", key_pem(key), private=True)
        write(f"{name}.crt", build(subject, ca_name, key.public_key(), ca_key, ca=False)
              .public_bytes(serialization.Encoding.PEM))
    write("ca.key", key_pem(ca_key), private=True)
    write("ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))


class Supervisor:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.names = [f"n{i}" for i in range(args.size)]
        self.client = {n: args.base_port + 2 * i for i, n in enumerate(self.names)}
        self.peer = {n: args.base_port + 2 * i + 1 for i, n in enumerate(self.names)}
        self.scheme = "https" if args.peer_tls else "http"
        self.cluster = ",".join(f"{n}={self.scheme}://127.0.0.1:{self.peer[n]}" for n in self.names)
        self.secret_file = os.path.join(args.data_dir, "peer.secret")
        self.pki = os.path.join(args.data_dir, "pki")
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()

    def argv(self, name: str) -> list[str]:
        argv = [
            sys.executable, "-m", "etcdlite",
            "--name", name,
            "--data-dir", os.path.join(self.args.data_dir, name),
            "--listen-client-urls", f"http://127.0.0.1:{self.client[name]}",
            "--listen-peer-urls", f"{self.scheme}://127.0.0.1:{self.peer[name]}",
            "--initial-cluster", self.cluster,
            "--peer-secret-file", self.secret_file,
            "--log-level", self.args.log_level,
        ]
        if self.args.peer_tls:
            argv += ["--peer-cert-file", os.path.join(self.pki, f"{name}.crt"),
                     "--peer-key-file", os.path.join(self.pki, f"{name}.key"),
                     "--peer-trusted-ca-file", os.path.join(self.pki, "ca.crt"),
                     "--peer-client-cert-auth"]
        return argv

    def start(self, name: str) -> None:
        proc = subprocess.Popen(self.argv(name), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True)
        self.procs[name] = proc
        threading.Thread(target=self._relay, args=(name, proc), daemon=True).start()

    def _relay(self, name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            print(f"[{name}] {line}", end="", flush=True)

    def wait_ready(self, timeout: float = 60.0) -> bool:
        import grpc

        from etcdlite.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

        deadline = time.monotonic() + timeout
        pending = set(self.names)
        while pending and time.monotonic() < deadline and not self.stopping.is_set():
            for name in sorted(pending):
                with grpc.insecure_channel(f"127.0.0.1:{self.client[name]}") as ch:
                    try:
                        st = rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=1)
                    except grpc.RpcError:
                        continue
                    if st.leader:
                        pending.discard(name)
            time.sleep(0.2)
        return not pending

    def supervise(self) -> None:
        while not self.stopping.wait(0.5):
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                if code == 0 or self.args.no_restart:
                    print(f"[cluster] {name} exited with {code}; not restarting", flush=True)
                    del self.procs[name]
                else:
                    print(f"[cluster] {name} exited with {code}; restarting", flush=True)
                    self.start(name)

    def stop(self) -> None:
        self.stopping.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "up":
        print("usage: etcdlite cluster up [--size 1|3|5] [--base-port 2379] [--data-dir cluster.etcd] [--peer-tls]",
              file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv[1:])
    sup = Supervisor(args)
    os.makedirs(args.data_dir, exist_ok=True)
    if not os.path.exists(sup.secret_file):
        fd = os.open(sup.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    if args.peer_tls:
        make_peer_pki(sup.pki, sup.names)
    signal.signal(signal.SIGTERM, lambda *_: sup.stopping.set())
    for name in sup.names:
        sup.start(name)
    print(f"[cluster] starting {args.size} members, data in {args.data_dir}/"
          + (f", peer TLS certificates in {sup.pki}/" if args.peer_tls else ""), flush=True)
    try:
        if sup.wait_ready():
            endpoints = ",".join(f"127.0.0.1:{sup.client[n]}" for n in sup.names)
            print(f"[cluster] ready: ETCDCTL_API=3 etcdctl --endpoints={endpoints} endpoint status -w table",
                  flush=True)
        elif not sup.stopping.is_set():
            print("[cluster] members are not ready after 60 s; see their output above", flush=True)
        sup.supervise()
    except KeyboardInterrupt:
        pass
    finally:
        print("[cluster] stopping", flush=True)
        sup.stop()
    return 0
