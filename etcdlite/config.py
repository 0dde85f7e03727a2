"""A member's configuration, with etcd's flag names, defaults and ID rules."""

from __future__ import annotations

import hashlib
import secrets
import re
import struct
from dataclasses import dataclass, field
from urllib.parse import urlparse

DEFAULT_MAX_REQUEST_BYTES = 1572864  # 1.5 MiB, as etcd
# extra room above --max-request-bytes for gRPC framing, as etcd allows
GRPC_OVERHEAD_BYTES = 512 * 1024
DEFAULT_MAX_TXN_OPS = 128
# calls one client connection may have open at once (etcd's --max-concurrent-streams, whose
# default is unlimited): a bound, well above what any client opens, so that one connection
# cannot make a member hold streams without end
DEFAULT_MAX_CONCURRENT_STREAMS = 4096
# etcd's smallest lease TTL with its default election timeout (1 s): 1.5 x
# the election timeout, rounded up
MIN_LEASE_TTL = 2
MAX_LEASE_TTL = 9_000_000_000
# the etcd API level etcdlite implements, reported by Status
API_VERSION = "3.4.0"


class ConfigError(ValueError):
    pass


def host_port(url: str) -> str:
    """'http://127.0.0.1:2379' -> '127.0.0.1:2379'."""
    parsed = urlparse(url if "://" in url else "http://" + url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or not parsed.port:
        raise ConfigError(f"invalid URL {url!r}: expected http://HOST:PORT")
    host = parsed.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parsed.port}"


def is_tls_url(url: str) -> bool:
    """True for an https:// URL (served with TLS); http:// and bare
    HOST:PORT are served in plain text."""
    return url.strip().lower().startswith("https://")


@dataclass
class ClientTLS:
    """The PEM files behind --cert-file, --key-file and --trusted-ca-file,
    read and checked."""

    cert_chain: bytes
    private_key: bytes
    trusted_ca: bytes | None
    client_cert_auth: bool


def _read_pem(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot read it: {err.strerror or err}") from None


def _load_certs(flag: str, path: str, data: bytes) -> list:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"{flag} {path}: no PEM certificate in it")
    return certs


def split_urls(value: str) -> list[str]:
    urls = [u.strip() for u in value.split(",") if u.strip()]
    for u in urls:
        host_port(u)
    return urls


def parse_initial_cluster(value: str) -> dict[str, list[str]]:
    """'n1=http://a:2380,n2=http://b:2380' -> {'n1': [...], 'n2': [...]}."""
    members: dict[str, list[str]] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"invalid --initial-cluster entry {item!r}: expected NAME=URL")
        host_port(url)
        members.setdefault(name, []).append(url)
    if not members:
        raise ConfigError("--initial-cluster is empty")
    return members


def parse_duration(value: str) -> float:
    """Go-style durations as etcd takes them: '10m', '5s', '100ms', '1m30s'."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ConfigError(f"invalid duration {value!r}: expected e.g. 10m, 5s, 500ms")
    return sum(float(n) * units[u] for n, u in parts)


def member_id(peer_urls: list[str], cluster_token: str) -> int:
    """A member's ID, stable across restarts: a hash of its peer URLs and the
    cluster token (etcd derives its IDs from the same inputs)."""
    digest = hashlib.sha1(("".join(sorted(peer_urls)) + cluster_token).encode()).digest()
    return struct.unpack(">Q", digest[:8])[0]


def cluster_id(member_ids: list[int]) -> int:
    digest = hashlib.sha1(b"".join(struct.pack(">Q", m) for m in sorted(member_ids))).digest()
    return struct.unpack(">Q", digest[:8])[0]


@dataclass
class MemberConfig:
    name: str = "default"
    data_dir: str = ""
    listen_client_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    advertise_client_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    listen_peer_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2380"])
    initial_advertise_peer_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2380"])
    initial_cluster: dict[str, list[str]] = field(default_factory=dict)
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    progress_notify_interval: float = 600.0
    # server keepalive (etcd's --grpc-keepalive-interval and --grpc-keepalive-timeout), seconds
    grpc_keepalive_interval: float = 7200.0
    grpc_keepalive_timeout: float = 20.0
    # Raft log entries between snapshots (etcd's --snapshot-count)
    snapshot_count: int = 100_000
    # ... or once the Raft journal holds this many bytes (entries are batches of any size)
    snapshot_bytes: int = 16 << 20
    peer_password: str | None = None
    # test hook: dial these peers (by name) at another address than they
    # advertise, e.g. through a fault-injecting proxy
    peer_dial_urls: dict[str, str] = field(default_factory=dict)
    # client TLS (etcd's flags): served on the https:// listen-client-urls
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    # etcd 3.5's --unsafe-no-fsync: nothing is synced (a power loss can lose acknowledged writes)
    unsafe_no_fsync: bool = False
    # where the leader's journal sync runs: "loop" (the event loop waits) or "thread"
    raft_sync: str = "loop"
    # etcd's --auth-token-ttl: a simple token lives this long after its last use
    auth_token_ttl: float = 300.0
    # "h2": etcdlite's own gRPC server in the member's loop (the grpclite package);
    # "grpcio": grpc.aio's server (the C core's threads)
    grpc_server: str = "h2"

    def __post_init__(self):
        self._check_client_tls()
        if not self.data_dir:
            self.data_dir = f"{self.name}.etcd"
        if not self.initial_cluster:
            self.initial_cluster = {self.name: list(self.initial_advertise_peer_urls)}
        if self.name not in self.initial_cluster:
            raise ConfigError(
                f"--initial-cluster has no entry for this member's --name {self.name!r}"
            )
        if sorted(self.initial_cluster[self.name]) != sorted(self.initial_advertise_peer_urls):
            raise ConfigError(
                f"--initial-cluster must list {self.name}={','.join(self.initial_advertise_peer_urls)}"
                " (this member's --initial-advertise-peer-urls)"
            )
        if self.initial_cluster_state not in ("new", "existing"):
            raise ConfigError("--initial-cluster-state must be 'new' or 'existing'")
        if len(self.initial_cluster) > 1 and not self.peer_password:
            # pysyncobj unpickles what arrives on the peer port: only peers
            # that prove they hold the cluster secret may be heard, loopback
            # or not (any local user could reach a loopback port)
            raise ConfigError(
                "a cluster of several members needs --peer-secret-file: peer traffic is "
                "authenticated with a shared secret. Write one to a file, e.g. "
                "`head -c 32 /dev/urandom | base64 > peer.secret`, and pass the same file to every member"
            )
        if not self.peer_password:
            # a lone member has no peers to talk to, but its peer port is
            # open all the same: lock it with a secret nobody knows
            self.peer_password = secrets.token_hex(32)

    def _check_client_tls(self) -> None:
        https = [u for u in self.listen_client_urls if is_tls_url(u)]
        missing = [flag for flag, value in (("--cert-file", self.cert_file), ("--key-file", self.key_file))
                   if not value]
        if https and missing:
            raise ConfigError(
                f"--listen-client-urls {','.join(https)}: serving https needs a certificate and its key; "
                f"missing {' and '.join(missing)}"
            )
        if len(missing) == 1:
            raise ConfigError(f"{'--key-file' if self.cert_file else '--cert-file'} is given but "
                              f"{missing[0]} is missing: TLS needs both")
        if not missing and not https:
            raise ConfigError(
                "--cert-file and --key-file are given but no --listen-client-urls URL is https://: "
                "TLS is served on https:// URLs (e.g. --listen-client-urls https://127.0.0.1:2379)"
            )
        if self.client_cert_auth and not self.trusted_ca_file:
            raise ConfigError("--client-cert-auth needs --trusted-ca-file (the CA that signs client certificates)")
        if self.trusted_ca_file and missing:
            raise ConfigError(f"--trusted-ca-file needs client TLS: {' and '.join(missing)} missing")

    def load_client_tls(self) -> ClientTLS | None:
        """Read and check the client TLS files (ConfigError if one is
        missing, unreadable or not what it should be); None without TLS."""
        if not self.cert_file:
            return None
        from cryptography.hazmat.primitives import serialization

        cert = _read_pem("--cert-file", self.cert_file)
        key = _read_pem("--key-file", self.key_file)
        ca = _read_pem("--trusted-ca-file", self.trusted_ca_file) if self.trusted_ca_file else None
        leaf = _load_certs("--cert-file", self.cert_file, cert)[0]
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError) as err:
            raise ConfigError(
                f"--key-file {self.key_file}: not an unencrypted PEM private key ({err})"
            ) from None
        spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            raise ConfigError(f"--key-file {self.key_file} is not the key of --cert-file {self.cert_file}")
        if ca is not None:
            _load_certs("--trusted-ca-file", self.trusted_ca_file, ca)
        return ClientTLS(cert_chain=cert, private_key=key, trusted_ca=ca,
                         client_cert_auth=self.client_cert_auth)

    @property
    def member_ids(self) -> dict[str, int]:
        return {name: member_id(urls, self.initial_cluster_token) for name, urls in self.initial_cluster.items()}

    @property
    def id(self) -> int:
        return self.member_ids[self.name]

    @property
    def cluster_id(self) -> int:
        return cluster_id(list(self.member_ids.values()))

    @property
    def raft_address(self) -> str:
        return host_port(self.initial_advertise_peer_urls[0])

    @property
    def raft_peers(self) -> list[str]:
        return [host_port(urls[0]) for name, urls in self.initial_cluster.items() if name != self.name]

    @property
    def raft_dial(self) -> dict[str, str]:
        """Raft address -> where to connect to it, for peers dialled elsewhere."""
        return {
            host_port(self.initial_cluster[name][0]): host_port(url)
            for name, url in self.peer_dial_urls.items()
            if name in self.initial_cluster and name != self.name
        }
