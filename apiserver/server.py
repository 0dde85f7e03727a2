"""`apiserver` / `python -m apiserver`: the gRPC API server, flags as kube-apiserver's."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys

import grpc

from apiserver import resources
from apiserver.auth import flags as auth_flags
from apiserver.auth.policy import ensure_default_policy
from apiserver.compactor import Compactor
from apiserver.encryption import TransformError, load_transformer
from apiserver.errors import ApiError
from apiserver.etcd3 import Etcd, EtcdTLS, parse_servers, uses_tls
from apiserver.kubelet import KubeletClients
from apiserver.podnetwork import PodNetwork
from apiserver.registry import Options, Registry
from apiserver.rest import serving as rest_serving
from apiserver.service import ApiServerService, add_to_server
from apiserver.service_alloc import IPADDRESSES, ServiceAllocator
from apiserver.service_ranges import DEFAULT_NODE_PORT_RANGE, DEFAULT_SERVICE_CIDR, PortRange, ServiceCIDR
from apiserver.service_repair import DEFAULT_REPAIR_INTERVAL, ServiceBootstrap
from apiserver.storage import Storage
from apiserver.watch_cache import WatchCache
from goflags import duration
from grpclite import GrpcServer

log = logging.getLogger("apiserver")

# largest request accepted (objects are limited further by --max-object-bytes)
MAX_RECEIVE_BYTES = 4 * 1024 * 1024


def _seconds(text: str) -> float:
    """Seconds of a non-negative Go duration flag."""
    try:
        seconds = duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="apiserver",
        description="Kubernetes-style objects over gRPC, stored in etcd (etcdlite or a real etcd).")
    p.add_argument("--etcd-servers", default="http://127.0.0.1:2379",
                   help="comma-separated etcd client URLs (every member of one cluster); https:// for TLS")
    p.add_argument("--etcd-cafile", default="", help="PEM CA that etcd's serving certificates are signed by")
    p.add_argument("--etcd-certfile", default="",
                   help="PEM client certificate presented to etcd (etcd's --client-cert-auth)")
    p.add_argument("--etcd-keyfile", default="", help="PEM key of --etcd-certfile")
    p.add_argument("--bind-address", default="127.0.0.1", help="address to serve gRPC on")
    p.add_argument("--port", type=int, default=6443, help="port to serve gRPC on (0: any free port)")
    p.add_argument("--encryption-key-file", default="",
                   help="AES-GCM key file: Secrets are encrypted at rest with its first key "
                        "(lines NAME:BASE64-32-BYTES); without it Secrets are stored in plain text")
    p.add_argument("--watch-cache-size", type=int, default=10_000,
                   help="events each resource's watch cache keeps for watchers resuming from an older resourceVersion")
    p.add_argument("--event-ttl", type=_seconds, default="1h0m0s",
                   help="how long Events are kept after their last write (a Go duration; 0: for good), "
                        "by etcd leases shared a minute at a time")
    p.add_argument("--etcd-compaction-interval", type=_seconds, default="5m0s",
                   help="how often etcd's history is compacted to what the previous turn saw (a Go duration; "
                        "0: never), agreed between apiservers through etcd's compact_rev_key, as kube-apiserver")
    p.add_argument("--default-not-ready-toleration-seconds", type=int, default=300,
                   help="tolerationSeconds of the not-ready:NoExecute toleration added to every pod")
    p.add_argument("--default-unreachable-toleration-seconds", type=int, default=300,
                   help="tolerationSeconds of the unreachable:NoExecute toleration added to every pod")
    p.add_argument("--max-object-bytes", type=int, default=1024 * 1024,
                   help="largest object accepted (RequestEntityTooLarge beyond it)")
    p.add_argument("--kubelet-host", default="127.0.0.1",
                   help="where kubelets are dialled for logs and exec, at the port each node's "
                        "status.daemonEndpoints gives (every kubelet of one machine's plane "
                        "listens on loopback)")
    p.add_argument("--service-cluster-ip-range", default=DEFAULT_SERVICE_CIDR,
                   help="IPv4 CIDR Services take their clusterIP from; its first address is the "
                        "`kubernetes` Service's")
    p.add_argument("--service-node-port-range", default=DEFAULT_NODE_PORT_RANGE,
                   help="ports NodePort and LoadBalancer Services take their nodePorts from (LOW-HIGH)")
    p.add_argument("--advertise-address", default="",
                   help="address the `kubernetes` Service's endpoints name (default: --bind-address, "
                        "or 127.0.0.1 when that is 0.0.0.0)")
    p.add_argument("--bind-netns", default="", metavar="NAME",
                   help="also serve on --advertise-address, at the same port, inside the network namespace "
                        "NAME (/run/netns/NAME: a plane's control-plane host, <prefix>-cp), where pods reach "
                        "the `kubernetes` Service's endpoint; the socket is made once the namespace and the "
                        "address exist, and again if the namespace is made anew (needs CAP_SYS_ADMIN); "
                        "pods/ and services/NAME/proxy dial pods from there too (without it they reach none)")
    p.add_argument("--service-repair-interval", type=float, default=DEFAULT_REPAIR_INTERVAL,
                   help="seconds between passes of the ClusterIP/NodePort repair loop (upstream: 180)")
    auth_flags.add_flags(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


async def serve(args: argparse.Namespace, transformer) -> int:
    etcd = Etcd(args.etcd_servers, args.etcd_tls)
    storage = Storage(etcd, transformer=transformer, ttls={"events": int(args.event_ttl)} if args.event_ttl >= 1 else {})
    log.info("connecting to etcd at %s", ",".join(etcd.endpoints))
    delay = 0.2
    while True:
        caches = {res.name: WatchCache(etcd, res, storage.decode, capacity=args.watch_cache_size)
                  for res in resources.RESOURCES}
        try:
            await asyncio.gather(*(cache.start() for cache in caches.values()))
            break
        except Exception as e:
            why = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
            log.warning("etcd at %s not reachable yet (%s); retrying; is etcd (or `etcdlite`) running?",
                        ",".join(etcd.endpoints), why)
            await asyncio.gather(*(cache.stop() for cache in caches.values()), return_exceptions=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    allocator = ServiceAllocator(storage, caches[IPADDRESSES.name], args.cidr, args.node_ports)
    registry = Registry(storage, caches, Options(
        max_object_bytes=args.max_object_bytes,
        not_ready_toleration_seconds=args.default_not_ready_toleration_seconds,
        unreachable_toleration_seconds=args.default_unreachable_toleration_seconds,
        service_account_tokens=bool(getattr(args, "service_account_signing_key_file", "")),
        webhook_netns=args.bind_netns, secured=auth_flags.secured(args)), allocator=allocator)
    bootstrap = ServiceBootstrap(registry, allocator, address=args.advertise_address, port=args.port,
                                 repair_interval=args.service_repair_interval)

    async def bootstrap_until_done(*, namespaces: bool = True, service: bool = True) -> None:
        while True:
            try:
                if namespaces:
                    await registry.ensure_system_namespaces()
                    # as kube-apiserver: one repair pass before serving, then the kubernetes Service
                    await bootstrap.repair_once()
                    if "RBAC" in args.authorization_modes:
                        await ensure_default_policy(registry)
                if service:
                    await bootstrap.ensure_kubernetes_service()
                break
            except ApiError as e:
                log.warning("cannot create the system namespaces and the kubernetes Service yet (%s); retrying",
                            e.message)
                await asyncio.sleep(1)

    # before listening (grpclite serves from listen on): clients never see a plane without them;
    # with --port 0 the kubernetes Service waits for the port
    await bootstrap_until_done(service=bool(args.port))
    # grpclite, the gRPC server etcdlite serves with: in this event loop, without grpc.aio's
    # thread hand-offs per message (measured: benchmarks/why.md)
    server = GrpcServer(max_receive_message_length=MAX_RECEIVE_BYTES, eager_unary=False)  # uses asyncio.timeout
    try:
        kubelets = KubeletClients(args.kubelet_host, auth_flags.kubelet_tls(args))
        gate = auth_flags.build_gate(args, caches) if auth_flags.secured(args) else None
        tls = auth_flags.ssl_context(args)
    except (OSError, ValueError, ssl.SSLError) as e:
        log.error("cannot read the security flags' files: %s", e)
        return 2
    add_to_server(ApiServerService(registry, kubelets), server, gate)
    # Kubernetes' REST API on the same port: connections that do not open with HTTP/2's
    # preface are HTTP/1.1 (kubectl and client-go over http://, or https:// where ALPN chose
    # http/1.1)
    rest = rest_serving.front(registry, kubelets, gate, PodNetwork(args.bind_netns))
    server.http1_protocol = rest.protocol
    address = f"{args.bind_address}:{args.port}"
    host = "127.0.0.1" if args.bind_address == "localhost" else args.bind_address.strip("[]")
    try:
        port = await server.listen(host, args.port, ssl_context=tls)
    except OSError as err:
        log.error("cannot listen on %s (%s): is another apiserver running? choose another --port",
                  address, err.strerror or err)
        return 1
    if not args.port:
        bootstrap.port = port
        await bootstrap_until_done(namespaces=False)
    await server.start()
    stop = asyncio.Event()
    tasks = []
    if args.bind_netns:
        from apiserver.netns_listen import NetnsListener

        tasks.append(asyncio.create_task(
            NetnsListener(server, args.bind_netns, args.advertise_address, port, tls).run(stop)))
    log.info("apiserver serving gRPC and REST on %s:%d over %s, authorization %s (etcd %s)", args.bind_address,
             port, "TLS" if tls else "plain text", ",".join(args.authorization_modes), ",".join(etcd.endpoints))
    repair = asyncio.create_task(bootstrap.run(stop))
    if args.etcd_compaction_interval:
        tasks.append(asyncio.create_task(Compactor(etcd, args.etcd_compaction_interval).run(stop)))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await repair
    await asyncio.gather(*tasks, return_exceptions=True)
    await rest.close()
    await server.stop(grace=1.0)
    await kubelets.close()
    await asyncio.gather(*(cache.stop() for cache in caches.values()), return_exceptions=True)
    await etcd.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        parse_servers(args.etcd_servers)
        tls = uses_tls(args.etcd_servers)
    except ValueError as e:
        print(f"apiserver: --etcd-servers: {e}", file=sys.stderr)
        return 2
    if bool(args.etcd_certfile) != bool(args.etcd_keyfile):
        print("apiserver: --etcd-certfile and --etcd-keyfile go together", file=sys.stderr)
        return 2
    if (args.etcd_cafile or args.etcd_certfile) and not tls:
        print("apiserver: --etcd-cafile/--etcd-certfile need https:// in --etcd-servers", file=sys.stderr)
        return 2
    try:
        args.etcd_tls = EtcdTLS.from_files(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile) if tls else None
    except OSError as e:
        print(f"apiserver: etcd TLS files: {e}", file=sys.stderr)
        return 2
    try:
        args.cidr = ServiceCIDR.parse(args.service_cluster_ip_range)
    except ValueError as e:
        print(f"apiserver: --service-cluster-ip-range: {e}", file=sys.stderr)
        return 2
    try:
        args.node_ports = PortRange.parse(args.service_node_port_range)
    except ValueError as e:
        print(f"apiserver: --service-node-port-range: {e}", file=sys.stderr)
        return 2
    problem = auth_flags.check(args)
    if problem:
        print(f"apiserver: {problem}", file=sys.stderr)
        return 2
    if args.bind_netns and not args.advertise_address:
        print("apiserver: --bind-netns needs --advertise-address (the address to listen on in that namespace)",
              file=sys.stderr)
        return 2
    if not args.advertise_address:
        args.advertise_address = "127.0.0.1" if args.bind_address in ("0.0.0.0", "localhost", "") \
            else args.bind_address
    try:
        transformer = load_transformer(args.encryption_key_file or None)
    except (OSError, TransformError) as e:
        print(f"apiserver: --encryption-key-file: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(args, transformer))
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"apiserver: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
