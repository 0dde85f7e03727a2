"""A member's configuration, with etcd's flag names, defaults and ID rules."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import ssl
import struct
from dataclasses import dataclass, field
from urllib.parse import urlparse

import goflags
from etcdlite.tls_policy import HandshakePolicy, PolicyError, RevocationList, check_cipher_suites

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
    # checked once a client's handshake is done (--client-crl-file, --client-cert-allowed-hostname)
    policy: HandshakePolicy | None = None
    cipher_suites: tuple[str, ...] = ()


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


def _check_key_pair(cert_flag: str, cert_path: str, key_flag: str, key_path: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM), read and checked: a certificate, an
    unencrypted key, and the key of that certificate."""
    from cryptography.hazmat.primitives import serialization

    cert = _read_pem(cert_flag, cert_path)
    key = _read_pem(key_flag, key_path)
    leaf = _load_certs(cert_flag, cert_path, cert)[0]
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{key_flag} {key_path}: not an unencrypted PEM private key ({err})") from None
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ConfigError(f"{key_flag} {key_path} is not the key of {cert_flag} {cert_path}")
    return cert, key


def _go_quote(s: str) -> str:
    """Go's %q of a printable string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
    try:
        seconds = goflags.duration(value)
    except ValueError as e:
        raise ConfigError(f"{e}: expected e.g. 10m, 5s, 500ms") from None
    if seconds < 0:
        raise ConfigError(f"invalid duration {value!r}: must not be negative")
    return seconds


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
    # etcd's --listen-metrics-urls: HTTP/1.1 serving /metrics and /health (http:// only)
    listen_metrics_urls: list[str] = field(default_factory=list)
    initial_advertise_peer_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2380"])
    initial_cluster: dict[str, list[str]] = field(default_factory=dict)
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcd-cluster"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS
    # etcd's --quota-backend-bytes as given (0: the default; negative: none): etcdlite.quota
    quota_backend_bytes: int = 0
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
    client_crl_file: str = ""
    client_cert_allowed_hostname: str = ""
    # etcd's --cipher-suites (Go's names): TLS 1.2 suites of the client and peer listeners and dials
    cipher_suites: tuple[str, ...] = ()
    # peer TLS (etcd's --peer-* flags): Raft traffic in TLS when the peer URLs are https://
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    peer_client_cert_auth: bool = False
    peer_cert_allowed_cn: str = ""
    peer_cert_allowed_hostname: str = ""
    peer_crl_file: str = ""
    peer_auto_tls: bool = False
    # etcd 3.5's --unsafe-no-fsync: nothing is synced (a power loss can lose acknowledged writes)
    unsafe_no_fsync: bool = False
    # where the leader's journal sync runs: "loop" (the event loop waits) or "thread"
    raft_sync: str = "loop"
    # etcd's --experimental-initial-corrupt-check: compare hashes with the peers before serving
    initial_corrupt_check: bool = False
    # etcd's --experimental-corrupt-check-time, seconds (0: off): the leader's periodic hash check
    corrupt_check_time: float = 0.0
    # etcd's --auth-token: "simple", or "jwt,sign-method=..,priv-key=..,pub-key=..,ttl=.." (etcdlite.jwt_tokens)
    auth_token: str = "simple"
    # etcd's --auth-token-ttl: a simple token lives this long after its last use
    auth_token_ttl: float = 300.0
    # "h2": etcdlite's own gRPC server in the member's loop (the grpclite package);
    # "grpcio": grpc.aio's server (the C core's threads)
    grpc_server: str = "h2"

    def __post_init__(self):
        try:
            check_cipher_suites(list(self.cipher_suites))
        except PolicyError as err:
            raise ConfigError(str(err)) from None
        self._check_client_tls()
        https = [u for u in self.listen_metrics_urls if is_tls_url(u)]
        if https:
            raise ConfigError(f"--listen-metrics-urls {','.join(https)}: https is not served on metrics URLs "
                              "(not implemented yet); use http:// URLs")
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
        self._check_peer_tls()
        if len(self.initial_cluster) > 1 and not self.peer_password:
            if self.peer_tls_authenticates:
                # peers are authenticated by their certificates: the frames'
                # MAC key need not be secret, only the same on every member
                self.peer_password = f"etcdlite peer TLS, cluster {self.initial_cluster_token}"
            else:
                # pysyncobj unpickles what arrives on the peer port: only peers
                # that prove they hold the cluster secret (or, in TLS, a
                # certificate from the peer CA) may be heard, loopback or not
                # (any local user could reach a loopback port)
                raise ConfigError(
                    "a cluster of several members needs --peer-secret-file, or peer TLS with client "
                    "certificates (https:// peer URLs, --peer-cert-file, --peer-key-file, "
                    "--peer-trusted-ca-file and --peer-client-cert-auth): peer traffic must be "
                    "authenticated. Write a secret to a file, e.g. "
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
            raise ConfigError(f"{'--cert-file' if self.cert_file else '--key-file'} is given but "
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
        if self.grpc_server == "grpcio" and (self.client_crl_file or self.client_cert_allowed_hostname
                                             or self.cipher_suites) and https:
            raise ConfigError("--client-crl-file, --client-cert-allowed-hostname and --cipher-suites are "
                              "served by --experimental-grpc-server h2 only")

    @property
    def peer_tls(self) -> bool:
        """True when Raft traffic runs in TLS: the peer URLs are https://."""
        return any(is_tls_url(u) for u in self.listen_peer_urls)

    @property
    def peer_tls_authenticates(self) -> bool:
        """True when peer TLS alone keeps strangers out: every connection's
        two ends present certificates from the peer CA."""
        return (self.peer_tls and self.peer_client_cert_auth and bool(self.peer_trusted_ca_file)
                and bool(self.peer_cert_file) and not self.peer_auto_tls)

    def _check_peer_tls(self) -> None:
        urls = self.listen_peer_urls + self.initial_advertise_peer_urls + \
            [u for us in self.initial_cluster.values() for u in us]
        https = [u for u in urls if is_tls_url(u)]
        http = [u for u in urls if not is_tls_url(u)]
        if https and http:
            raise ConfigError(
                f"peer URLs mix https ({', '.join(sorted(set(https)))}) and http "
                f"({', '.join(sorted(set(http)))}): etcdlite speaks TLS to every peer or to none; "
                "make every peer URL (--listen-peer-urls, --initial-advertise-peer-urls, --initial-cluster) "
                "https:// or every one http://"
            )
        files = (("--peer-cert-file", self.peer_cert_file), ("--peer-key-file", self.peer_key_file))
        missing = [flag for flag, value in files if not value]
        if len(missing) == 1:
            present = "--peer-cert-file" if self.peer_cert_file else "--peer-key-file"
            raise ConfigError(f"{present} is given but {missing[0]} is missing: peer TLS needs both")
        log = logging.getLogger("etcdlite")
        if not self.peer_tls:
            for u in self.listen_peer_urls:
                if not missing:
                    log.warning("The scheme of peer url %s is HTTP while peer key/cert files are presented. "
                                "Ignored peer key/cert files.", u)
                if self.peer_client_cert_auth:
                    log.warning("The scheme of peer url %s is HTTP while client cert auth "
                                "(--peer-client-cert-auth) is enabled. Ignored client cert auth for this url.", u)
            return
        if missing and not self.peer_auto_tls:
            raise ConfigError(
                f"cannot listen on TLS for {host_port(self.listen_peer_urls[0])}: KeyFile and CertFile are "
                "not presented (https:// peer URLs need --peer-cert-file and --peer-key-file, or --peer-auto-tls)"
            )
        if self.peer_cert_allowed_cn and self.peer_cert_allowed_hostname:
            # etcd's TLSInfo says it when it makes the peer listener's TLS configuration
            raise ConfigError(f"AllowedCN and AllowedHostname are mutually exclusive "
                              f"(cn={_go_quote(self.peer_cert_allowed_cn)}, "
                              f"hostname={_go_quote(self.peer_cert_allowed_hostname)})")
        if self.peer_client_cert_auth and not self.peer_trusted_ca_file and not (self.peer_auto_tls and missing):
            raise ConfigError("--peer-client-cert-auth needs --peer-trusted-ca-file (the CA that signs "
                              "the members' peer certificates)")
        if self.peer_auto_tls and missing and self.peer_client_cert_auth:
            log.warning("--peer-auto-tls: peer certificates are self-signed, --peer-client-cert-auth "
                        "is ignored (use --peer-cert-file and --peer-key-file from a CA to authenticate peers)")

    def load_peer_tls(self):
        """The `PeerTLS` of the peer flags, files read and checked
        (ConfigError if one is missing, unreadable or not what it should
        be), or None when the peer URLs are http://. --peer-auto-tls makes
        a self-signed certificate under <data-dir>/fixtures/peer, as etcd."""
        if not self.peer_tls:
            return None
        from etcdlite.raft.peer_transport import PeerTLS

        cert, key, auto = self.peer_cert_file, self.peer_key_file, False
        if not cert:
            cert, key = self._auto_peer_cert()
            auto = True
        else:
            _check_key_pair("--peer-cert-file", cert, "--peer-key-file", key)
        if self.peer_trusted_ca_file:
            ca = _read_pem("--peer-trusted-ca-file", self.peer_trusted_ca_file)
            _load_certs("--peer-trusted-ca-file", self.peer_trusted_ca_file, ca)
        try:
            crl = RevocationList("--peer-crl-file", self.peer_crl_file) if self.peer_crl_file else None
            return PeerTLS(cert, key, self.peer_trusted_ca_file, client_cert_auth=self.peer_client_cert_auth,
                           allowed_cn=self.peer_cert_allowed_cn, auto=auto,
                           allowed_hostname=self.peer_cert_allowed_hostname, crl=crl,
                           cipher_suites=self.cipher_suites)
        except PolicyError as err:
            raise ConfigError(str(err)) from None
        except (ssl.SSLError, OSError) as err:
            raise ConfigError(f"peer TLS: {err}") from None

    def _auto_peer_cert(self) -> tuple[str, str]:
        """etcd's --peer-auto-tls: a self-signed certificate for the peer
        URLs' hosts, made once in <data-dir>/fixtures/peer."""
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        directory = os.path.join(self.data_dir, "fixtures", "peer")
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        if os.path.exists(cert_path) and os.path.exists(key_path):
            return cert_path, key_path
        os.makedirs(directory, mode=0o700, exist_ok=True)
        hosts = sorted({urlparse(u).hostname for u in self.listen_peer_urls + self.initial_advertise_peer_urls})
        alt = []
        for h in hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                alt.append(x509.DNSName(h))
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etcd")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .sign(key, hashes.SHA256()))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def load_client_tls(self) -> ClientTLS | None:
        """Read and check the client TLS files (ConfigError if one is
        missing, unreadable or not what it should be); None without TLS."""
        if not self.cert_file:
            return None
        cert, key = _check_key_pair("--cert-file", self.cert_file, "--key-file", self.key_file)
        ca = _read_pem("--trusted-ca-file", self.trusted_ca_file) if self.trusted_ca_file else None
        if ca is not None:
            _load_certs("--trusted-ca-file", self.trusted_ca_file, ca)
        try:
            crl = RevocationList("--client-crl-file", self.client_crl_file) if self.client_crl_file else None
        except PolicyError as err:
            raise ConfigError(str(err)) from None
        return ClientTLS(cert_chain=cert, private_key=key, trusted_ca=ca,
                         client_cert_auth=self.client_cert_auth,
                         policy=HandshakePolicy(crl, self.client_cert_allowed_hostname),
                         cipher_suites=self.cipher_suites)

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
