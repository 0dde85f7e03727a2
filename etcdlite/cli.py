"""`etcdlite` / `python -m etcdlite`: run one member, with etcd's flags."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from etcdlite.config import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_TXN_OPS,
    ConfigError,
    MemberConfig,
    is_tls_url,
    parse_duration,
    parse_initial_cluster,
    split_urls,
)
from etcdlite.jwt_tokens import tokens_from_spec

# see tune_gc
GC_YOUNG_THRESHOLD = 10_000

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "error": logging.ERROR, "panic": logging.CRITICAL, "fatal": logging.CRITICAL}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="etcdlite",
        description="An etcd v3 API member in Python, replicated by Raft (pysyncobj). Flags follow etcd's.",
        epilog="A local cluster in one command: etcdlite cluster up --size 3 (see etcdlite cluster up --help).",
    )
    p.add_argument("--name", default="default", help="human-readable name for this member")
    p.add_argument("--data-dir", default="", help="path to the data directory (default: ${name}.etcd)")
    p.add_argument("--listen-client-urls", default="http://127.0.0.1:2379",
                   help="comma-separated URLs to serve clients on")
    p.add_argument("--listen-metrics-urls", default="",
                   help="comma-separated http:// URLs answering only /metrics (Prometheus) and /health, "
                        "as etcd's (https is not served there)")
    p.add_argument("--advertise-client-urls", default="",
                   help="client URLs to advertise (default: --listen-client-urls)")
    p.add_argument("--listen-peer-urls", default="http://127.0.0.1:2380",
                   help="URL to listen on for peer (Raft) traffic")
    p.add_argument("--initial-advertise-peer-urls", default="",
                   help="this member's peer URL as others see it (default: --listen-peer-urls)")
    p.add_argument("--initial-cluster", default="",
                   help="NAME=PEER_URL,... for every member (default: this member alone)")
    p.add_argument("--initial-cluster-state", default="new", choices=["new", "existing"])
    p.add_argument("--initial-cluster-token", default="etcd-cluster")
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help="largest request a client may send, in bytes")
    p.add_argument("--max-txn-ops", type=int, default=DEFAULT_MAX_TXN_OPS,
                   help="most operations a txn may hold")
    p.add_argument("--max-concurrent-streams", type=int, default=DEFAULT_MAX_CONCURRENT_STREAMS,
                   help="calls one client connection may have open at once; more are refused "
                        "(RST_STREAM REFUSED_STREAM)")
    p.add_argument("--quota-backend-bytes", type=int, default=0,
                   help="raise the NOSPACE alarm when the backend's size (Status' dbSize) would reach "
                        "this many bytes; 0: etcd's default, 2 GiB; negative: no quota")
    p.add_argument("--grpc-keepalive-interval", default="2h",
                   help="a client connection that sends nothing for this long is pinged")
    p.add_argument("--grpc-keepalive-timeout", default="20s",
                   help="a pinged client connection that sends nothing back for this long is closed")
    p.add_argument("--snapshot-count", type=int, default=100_000,
                   help="Raft log entries between snapshots; the log before a snapshot is dropped")
    p.add_argument("--experimental-watch-progress-notify-interval", default="10m",
                   help="how often watchers that asked for it get a progress notification")
    p.add_argument("--peer-secret-file", default="",
                   help="file holding the cluster secret that authenticates peer traffic (the same file "
                        "on every member; required for a cluster of several members unless peer TLS "
                        "with --peer-client-cert-auth authenticates the peers)")
    p.add_argument("--peer-cert-file", default="",
                   help="Path to the peer server TLS cert file (served on https:// --listen-peer-urls and "
                        "presented when dialling a peer).")
    p.add_argument("--peer-key-file", default="", help="Path to the peer server TLS key file (unencrypted PEM).")
    p.add_argument("--peer-client-cert-auth", action="store_true",
                   help="Enable peer client cert authentication: a peer dialling this member must present "
                        "a certificate signed by --peer-trusted-ca-file.")
    p.add_argument("--peer-trusted-ca-file", default="", help="Path to the peer server TLS trusted CA file.")
    p.add_argument("--peer-cert-allowed-cn", default="",
                   help="Required CN for client certs connecting to the peer endpoint (and, as etcd, "
                        "for the certificates of the peers this member dials).")
    p.add_argument("--peer-cert-allowed-hostname", default="",
                   help="Allowed TLS hostname for inter peer authentication (checked both ways, as etcd).")
    p.add_argument("--peer-crl-file", default="",
                   help="Path to the peer certificate revocation list file (PEM or DER).")
    p.add_argument("--peer-auto-tls", action="store_true",
                   help="Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file "
                        "are not provided (encrypts, authenticates no one: keep --peer-secret-file).")
    p.add_argument("--experimental-peer-dial-urls", default="",
                   help="test hook: NAME=URL,... connect to these peers at URL instead of their "
                        "advertised peer URL (e.g. through a fault-injecting proxy)")
    p.add_argument("--cert-file", default="",
                   help="PEM certificate (chain) served to clients on the https:// --listen-client-urls")
    p.add_argument("--key-file", default="", help="PEM private key of --cert-file (unencrypted)")
    p.add_argument("--trusted-ca-file", default="",
                   help="PEM CA certificate(s) that client certificates must be signed by (with --client-cert-auth)")
    p.add_argument("--client-cert-auth", action="store_true",
                   help="require and verify client certificates signed by --trusted-ca-file")
    p.add_argument("--client-crl-file", default="",
                   help="Path to the client certificate revocation list file (PEM or DER): a client whose "
                        "certificate chain holds a revoked serial is refused after the handshake.")
    p.add_argument("--client-cert-allowed-hostname", default="",
                   help="Allowed TLS hostname for client cert authentication.")
    p.add_argument("--cipher-suites", default="",
                   help="Comma-separated list of supported TLS cipher suites between client/server and peers "
                        "(Go's names, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256; TLS 1.2 only: TLS 1.3 keeps "
                        "its own suites, as with etcd built by Go; empty: OpenSSL's defaults).")
    p.add_argument("--auth-token", default="simple",
                   help="token type given by Authenticate: 'simple' (random, kept by the members) or "
                        "'jwt,sign-method=RS256,priv-key=FILE[,pub-key=FILE][,ttl=5m]' (signed, checked by "
                        "any member with the key; HS/RS/PS/ES 256/384/512; pub-key alone: verify-only)")
    p.add_argument("--auth-token-ttl", type=int, default=300,
                   help="seconds a simple token lives after its last use")
    p.add_argument("--experimental-grpc-server", default="h2", choices=["h2", "grpcio"],
                   help="h2: etcdlite's gRPC server, run in the member's event loop (default); "
                        "grpcio: grpc.aio's server (measured slower: see benchmarks/results.md)")
    p.add_argument("--unsafe-no-fsync", action="store_true",
                   help="do not fsync the raft journal, its meta file or snapshots (as etcd 3.5's flag): "
                        "faster, but a power loss or OS crash on a majority can lose acknowledged writes; "
                        "for benchmarks and tests only")
    p.add_argument("--experimental-snapshot-bytes", type=int, default=16 << 20,
                   help="take a snapshot also once the raft journal holds this many bytes and a quarter "
                        "of the last snapshot's (an entry is a batch of requests: --snapshot-count "
                        "alone does not bound the journal's size, nor the time a restart takes to "
                        "apply it again)")
    p.add_argument("--experimental-raft-sync", default="loop", choices=["loop", "thread"],
                   help="where the leader's raft journal fdatasync runs: loop = in the event loop, which "
                        "waits for it; thread = in a thread of its own, the loop serving requests "
                        "meanwhile (see benchmarks/why.md)")
    p.add_argument("--experimental-initial-corrupt-check", action="store_true",
                   help="before serving clients, compare this member's KV hash with its peers' at its "
                        "revision; a difference at the same compact revision stops the member")
    p.add_argument("--experimental-corrupt-check-time", default="0s",
                   help="how often the leader compares the members' KV hashes and raises a CORRUPT "
                        "alarm for one that differs; 0s: never")
    p.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS))
    return p


def config_from_args(args: argparse.Namespace) -> MemberConfig:
    peer_urls = split_urls(args.listen_peer_urls)
    advertised_peers = split_urls(args.initial_advertise_peer_urls) if args.initial_advertise_peer_urls else peer_urls
    client_urls = split_urls(args.listen_client_urls)
    password = None
    if args.peer_secret_file:
        with open(args.peer_secret_file, encoding="utf-8") as f:
            password = f.read().strip()
        if not password:
            raise ConfigError(f"{args.peer_secret_file} is empty")
    tokens_from_spec(args.auth_token)  # a bad spec or key stops the start, as etcd
    if args.auth_token_ttl <= 0:
        raise ConfigError("--auth-token-ttl must be a positive number of seconds")
    if not 1 <= args.max_concurrent_streams < 2**32:
        raise ConfigError(f"--max-concurrent-streams must be between 1 and {2**32 - 1}")
    return MemberConfig(
        name=args.name,
        data_dir=args.data_dir,
        listen_client_urls=client_urls,
        advertise_client_urls=split_urls(args.advertise_client_urls) if args.advertise_client_urls else client_urls,
        listen_peer_urls=peer_urls,
        listen_metrics_urls=split_urls(args.listen_metrics_urls) if args.listen_metrics_urls else [],
        initial_advertise_peer_urls=advertised_peers,
        initial_cluster=parse_initial_cluster(args.initial_cluster) if args.initial_cluster else {},
        initial_cluster_state=args.initial_cluster_state,
        initial_cluster_token=args.initial_cluster_token,
        max_request_bytes=args.max_request_bytes,
        max_txn_ops=args.max_txn_ops,
        quota_backend_bytes=args.quota_backend_bytes,
        max_concurrent_streams=args.max_concurrent_streams,
        progress_notify_interval=parse_duration(args.experimental_watch_progress_notify_interval),
        grpc_keepalive_interval=parse_duration(args.grpc_keepalive_interval),
        grpc_keepalive_timeout=parse_duration(args.grpc_keepalive_timeout),
        snapshot_count=max(2, args.snapshot_count),
        snapshot_bytes=max(4096, args.experimental_snapshot_bytes),
        peer_password=password,
        peer_dial_urls={name: urls[0] for name, urls in parse_initial_cluster(args.experimental_peer_dial_urls).items()}
        if args.experimental_peer_dial_urls else {},
        cert_file=args.cert_file,
        key_file=args.key_file,
        trusted_ca_file=args.trusted_ca_file,
        peer_cert_file=args.peer_cert_file,
        peer_key_file=args.peer_key_file,
        peer_trusted_ca_file=args.peer_trusted_ca_file,
        peer_client_cert_auth=args.peer_client_cert_auth,
        peer_cert_allowed_cn=args.peer_cert_allowed_cn,
        peer_auto_tls=args.peer_auto_tls,
        peer_cert_allowed_hostname=args.peer_cert_allowed_hostname,
        peer_crl_file=args.peer_crl_file,
        client_crl_file=args.client_crl_file,
        client_cert_allowed_hostname=args.client_cert_allowed_hostname,
        cipher_suites=tuple(s.strip() for s in args.cipher_suites.split(",") if s.strip()),
        client_cert_auth=args.client_cert_auth,
        auth_token=args.auth_token,
        auth_token_ttl=float(args.auth_token_ttl),
        grpc_server=args.experimental_grpc_server,
        unsafe_no_fsync=args.unsafe_no_fsync,
        raft_sync=args.experimental_raft_sync,
        initial_corrupt_check=args.experimental_initial_corrupt_check,
        corrupt_check_time=parse_duration(args.experimental_corrupt_check_time),
    )


async def serve(cfg: MemberConfig) -> None:
    from etcdlite.server.member import Member

    member = Member(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # a member removed from the cluster stops, as etcd's does
    loop.create_task(member.removed.wait()).add_done_callback(lambda _: stop.set())
    starting = loop.create_task(member.start())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        if starting.exception() is not None:
            await member.stop()  # a failed start (the initial corruption check) closes what it opened
        starting.result()
        urls = ",".join(cfg.advertise_client_urls)
        if any(is_tls_url(u) for u in cfg.advertise_client_urls):
            endpoints = ",".join(u for u in cfg.advertise_client_urls if is_tls_url(u))
            endpoints += " --cacert CA.pem"
            if cfg.client_cert_auth:
                endpoints += " --cert CLIENT.pem --key CLIENT-KEY.pem"
        else:
            endpoints = ",".join(u.split("://", 1)[-1] for u in cfg.advertise_client_urls)
        logging.getLogger("etcdlite").info(
            "serving etcd v3 clients on %s (member %x, data in %s); try: "
            "ETCDCTL_API=3 etcdctl --endpoints=%s put foo bar",
            urls, member.id, cfg.data_dir, endpoints,
        )
        await stopping
    else:
        starting.cancel()
    logging.getLogger("etcdlite").info("shutting down")
    await member.stop()


def tune_gc() -> None:
    """Python's cyclic collector, set for a store that keeps millions of
    objects. Every put leaves a record tuple, tracked until a young
    collection finds it holds only bytes and ints, so young collections
    come often; at the default threshold (700) each promoted the requests
    then in flight, and full collections, which walk the whole history,
    followed, costing every put CPU and the member long pauses. Young
    collections every 10,000 allocations, and full ones considered after
    100 middle ones, cost less and pause less (measured:
    benchmarks/why.md). What the modules
    and startup made is frozen out of every collection."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 100)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cluster"]:
        from etcdlite.cluster_up import main as cluster_main

        return cluster_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=LOG_LEVELS[args.log_level],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        cfg = config_from_args(args)
        cfg.load_client_tls()  # unreadable or mismatched TLS files: fail before starting
        if cfg.peer_cert_file or cfg.peer_crl_file:
            cfg.load_peer_tls()
    except (ConfigError, OSError) as err:
        print(f"etcdlite: {err}", file=sys.stderr)
        return 2
    from etcdlite.server.corruption import DataInconsistency

    tune_gc()
    try:
        asyncio.run(serve(cfg))
    except ConfigError as err:
        print(f"etcdlite: {err}", file=sys.stderr)
        return 2
    except (OSError, DataInconsistency) as err:
        print(f"etcdlite: {err}", file=sys.stderr)
        return 1
    return 0
