"""The apiserver's connection to etcd: one gRPC channel over every endpoint.

``--etcd-servers`` lists the members as kube-apiserver takes them
(``http://127.0.0.1:2379,http://127.0.0.1:22379``); the channel picks the first
reachable one and fails over to the next when it goes away, so a member's death
costs the calls in flight, not the connection. Only the etcd v3 wire API is
used (etcdlite's generated stubs are that API), so a real etcd works the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from etcdlite.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

# The etcd v3 messages, for the storage and watch cache modules.
pb = rpc_pb2

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # reconnect fast after a member restarts
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


def parse_servers(servers: str) -> list[str]:
    """``http://h:p,h2:p2`` -> ["h:p", "h2:p2"]; raises ValueError on a bad entry."""
    out = []
    for item in servers.split(","):
        item = item.strip()
        if not item:
            continue
        if "://" in item:
            parts = urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
                raise ValueError(f"bad etcd server URL {item!r} (want http://host:port)")
            out.append(f"{parts.hostname}:{parts.port}")
        else:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"bad etcd server {item!r} (want host:port)")
            out.append(item)
    if not out:
        raise ValueError("no etcd servers given")
    return out


def uses_tls(servers: str) -> bool:
    """Whether ``servers`` are https:// (all of them; a mix is refused)."""
    schemes = {urlsplit(s.strip()).scheme if "://" in s else "" for s in servers.split(",") if s.strip()}
    if "https" in schemes and schemes != {"https"}:
        raise ValueError("--etcd-servers mixes https:// with other URLs: give every member the same scheme")
    return schemes == {"https"}


@dataclass(frozen=True)
class EtcdTLS:
    """kube-apiserver's --etcd-cafile, --etcd-certfile, --etcd-keyfile: the PEM bytes."""
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def from_files(cls, ca_file: str = "", cert_file: str = "", key_file: str = "") -> EtcdTLS:
        def read(path: str) -> bytes | None:
            if not path:
                return None
            with open(path, "rb") as f:
                return f.read()
        return cls(read(ca_file), read(cert_file), read(key_file))


def channel_target(endpoints: list[str]) -> str:
    if len(endpoints) == 1:
        return endpoints[0]
    # gRPC's static resolver: every address in one target, pick_first over them
    return "ipv4:" + ",".join(endpoints)


class Etcd:
    """KV and Watch stubs of one etcd cluster over a grpc.aio channel."""

    def __init__(self, servers: str | list[str], tls: EtcdTLS | None = None) -> None:
        """``tls``: https:// servers, verified with its CA (else the system's), and its client
        certificate presented (etcd's --client-cert-auth; with etcd auth on, its CN is the user)."""
        self.endpoints = parse_servers(servers) if isinstance(servers, str) else list(servers)
        target = channel_target(self.endpoints)
        if tls is None:
            self.channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=tls.ca, private_key=tls.key,
                                                 certificate_chain=tls.cert)
            options = list(_CHANNEL_OPTIONS)
            if len(self.endpoints) > 1:  # one name to check every member's certificate against
                options.append(("grpc.ssl_target_name_override", self.endpoints[0].rpartition(":")[0]))
            self.channel = grpc.aio.secure_channel(target, creds, options=options)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"
