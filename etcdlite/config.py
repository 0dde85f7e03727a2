"""A member's configuration, with etcd's flag names, defaults and ID rules."""

from __future__ import annotations

import hashlib
import secrets
import re
import struct
from dataclasses import dataclass, field
from urllib.parse import urlparse

DEFAULT_MAX_REQUEST_BYTES = 1572864  # 1.5 MiB, as etcd
DEFAULT_MAX_TXN_OPS = 128
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
    progress_notify_interval: float = 600.0
    peer_password: str | None = None
    # test hook: dial these peers (by name) at another address than they
    # advertise, e.g. through a fault-injecting proxy
    peer_dial_urls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
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
