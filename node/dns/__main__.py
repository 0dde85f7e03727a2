"""``python -m node.dns --server 127.0.0.1:6443 --listen 10.250.0.1:53 --netns kp3fa2-n0``: the
cluster DNS server, answering for ``--cluster-domain`` from the apiserver's Services and
endpoints, on UDP and TCP at ``--listen`` (inside ``--netns`` when given: a node's namespace,
where pods reach it by the node's address).

As Kubernetes reaches its DNS through the ``kube-dns`` Service in kube-system (clusterIP
10.96.0.10 by convention), the server makes that Service (no selector, ports 53 UDP ``dns`` and
TCP ``dns-tcp``) when it is missing, and points its Endpoints at its own address, so kube-proxy
routes the clusterIP here; ``--register ''`` skips both.

It answers only once the informers have listed (at most ``--sync-timeout`` seconds), so a pod
starting with the cluster never caches a NXDOMAIN for a Service that exists.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from node.dns.records import Records
from node.dns.server import DnsServer
from node.dns.source import SOURCES, ClusterSource
from node.dns.wire import Responder

log = logging.getLogger("node.dns")

DNS_PORTS = (("dns", "UDP"), ("dns-tcp", "TCP"))


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"--listen {text!r}: give IP:PORT, e.g. 10.250.0.1:53")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m node.dns", description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="127.0.0.1:6443", help="apiserver address")
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 53),
                   help="IP:PORT to answer on, UDP and TCP (default 127.0.0.1:53)")
    p.add_argument("--netns", default="", help="network namespace to listen in (a node's)")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument("--ttl", type=int, default=5, help="TTL of every record (CoreDNS' default 5 s)")
    p.add_argument("--endpoints-source", choices=SOURCES, default="",
                   help="endpointslices where the apiserver serves them (default), else endpoints")
    p.add_argument("--register", default="kube-system/kube-dns",
                   help="the Service to reach this server by ('' for none)")
    p.add_argument("--service-ip", default="10.96.0.10", help="the clusterIP asked for that Service")
    p.add_argument("--sync-timeout", type=float, default=10.0)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def register(client, service: str, service_ip: str, ip: str, port: int) -> None:
    """The selectorless Service ``ns/name`` (made when missing) and its Endpoints naming
    ``ip:port``; a clusterIP already taken leaves the Service without it (an error says so)."""
    namespace, _, name = service.rpartition("/")
    namespace = namespace or "kube-system"
    svc = core_pb2.Service()
    svc.metadata.name, svc.metadata.namespace = name, namespace
    svc.metadata.labels["k8s-app"] = "kube-dns"
    svc.spec.cluster_ip = service_ip
    for pname, proto in DNS_PORTS:
        svc.spec.ports.add(name=pname, protocol=proto, port=53, target_port=str(port))
    try:
        client.create(svc)
        log.info("made Service %s/%s (clusterIP %s)", namespace, name, service_ip)
    except ApiError as e:
        if e.reason != "AlreadyExists":
            log.error("could not make Service %s/%s: %s: %s (pods reach the DNS server at %s "
                      "directly meanwhile)", namespace, name, e.reason, e.message, ip)
    ep = core_pb2.Endpoints()
    ep.metadata.name, ep.metadata.namespace = name, namespace
    ep.metadata.labels["k8s-app"] = "kube-dns"
    subset = ep.subsets.add()
    subset.addresses.add(ip=ip)
    for pname, proto in DNS_PORTS:
        subset.ports.add(name=pname, port=port, protocol=proto)
    for _ in range(5):  # a conflict with another writer: read again and retry
        try:
            current = client.get("endpoints", name, namespace)
        except ApiError as e:
            if e.reason != "NotFound":
                raise
            try:
                client.create(ep)
                return
            except ApiError as e2:
                if e2.reason == "AlreadyExists":
                    continue
                raise
        if list(current.subsets) == list(ep.subsets):
            return
        del current.subsets[:]
        current.subsets.extend(ep.subsets)
        try:
            client.update(current)
            return
        except ApiError as e:
            if e.reason != "Conflict":
                raise
    log.error("could not point Endpoints %s/%s at %s:%d: kept conflicting", namespace, name, ip, port)


def main(argv: list[str] | None = None) -> int:
    from apiserver.client import Client

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = args.listen
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    records = Records(args.cluster_domain, args.ttl, server_ips=(host,))
    try:
        server = DnsServer(Responder(records), host, port, args.netns)
    except OSError as e:
        where = f" in netns {args.netns}" if args.netns else ""
        log.error("cannot listen on %s:%d%s: %s (is the address on an interface there, the port "
                  "free, and are we root for port 53?)", host, port, where, e)
        return 1
    with Client(args.server) as client:
        source = ClusterSource(client, records, args.endpoints_source).start()
        if not source.wait_for_sync(args.sync_timeout):
            log.warning("Services and endpoints not listed after %.0f s (apiserver at %s?); "
                        "answering from what is known", args.sync_timeout, args.server)
        server.start()
        log.info("cluster DNS for %s serving on %s:%d (udp, tcp)%s from %s", records.zone, host,
                 server.address[1], f" in {args.netns}" if args.netns else "", source.source)
        if args.register:
            while not stop.is_set():
                try:
                    register(client, args.register, args.service_ip, host, server.address[1])
                    break
                except ApiError as e:
                    log.warning("registering %s: %s: %s; retrying", args.register, e.reason, e.message)
                    stop.wait(2.0)
        while not stop.wait(1.0):
            pass
        server.stop()
        source.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
