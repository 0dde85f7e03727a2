"""``python -m node.proxy``: kube-proxy (nftables mode) for one node.

    python -m node.proxy --server 127.0.0.1:6443 --node-name N --node-netns NS --node-ip IP \\
        --cluster-cidr 10.244.0.0/16 [--min-sync-period 1s] [--sync-period 30s]

Runs in the root namespace and programs the node's (``--node-netns``). SIGTERM/SIGINT stop it
and leave the rules in place (traffic keeps flowing, as with upstream); ``--cleanup`` removes them
and exits.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading

import goflags

from .nft import NftError, conntrack_binary, delete_table, nft_binary
from .proxier import Proxier
from .routes import ensure_service_route
from .rules import NodeConfig

log = logging.getLogger("node.proxy")



def duration(text: str) -> float:
    """Go-style durations as kube-proxy's flags take them: ``1s``, ``250ms``, ``1m``, ``0``
    (a plain number: seconds)."""
    try:
        value = goflags.duration(text, bare_seconds=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}: e.g. 1s, 250ms, 1m") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.IPv4Network(text, strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 CIDR") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m node.proxy",
                                description="kube-proxy, nftables mode, for one node's namespace.")
    p.add_argument("--server", default="127.0.0.1:6443", help="apiserver address")
    p.add_argument("--node-name", required=True, help="this node (for the Local traffic policies)")
    p.add_argument("--node-netns", required=True, help="network namespace to program")
    p.add_argument("--node-ip", type=_ipv4, required=True, help="address NodePorts answer on")
    p.add_argument("--cluster-cidr", type=_cidr, default="10.244.0.0/16",
                   help="the pod network; clusterIP traffic from elsewhere is masqueraded")
    p.add_argument("--service-cidr", type=_cidr, default="10.96.0.0/12",
                   help="routed to the node's uplink when the node has no route for it, so "
                        "service traffic reaches the netfilter hooks, as are external IPs "
                        "(\"\" to leave routes alone)")
    p.add_argument("--min-sync-period", type=duration, default=1.0,
                   help="minimum time between syncs; changes meanwhile are batched")
    p.add_argument("--sync-period", type=duration, default=30.0,
                   help="maximum time between syncs")
    p.add_argument("--full-sync-period", type=duration, default=3600.0,
                   help="how often the whole table is rewritten even without failures")
    p.add_argument("--endpoints-source", choices=["endpoints", "endpointslices"],
                   default="endpointslices",
                   help="which objects list a Service's endpoints (Kubernetes' kube-proxy reads slices)")
    p.add_argument("--cleanup", action="store_true", help="remove the rules and exit")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    from apiserver.client import Client

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if nft_binary() is None or conntrack_binary() is None:
        print("node.proxy: needs nft and conntrack: apt-get install nftables conntrack",
              file=sys.stderr)
        return 2
    try:
        if args.cleanup:
            delete_table(args.node_netns)
            return 0
        if args.service_cidr:
            ensure_service_route(args.node_netns, args.service_cidr)
    except (NftError, OSError) as e:
        print(f"node.proxy: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cfg = NodeConfig(args.node_name, args.node_ip, args.cluster_cidr)
    with Client(args.server) as client:
        proxier = Proxier(client, cfg, args.node_netns, min_sync_period=args.min_sync_period,
                          sync_period=args.sync_period, full_sync_period=args.full_sync_period,
                          endpoints_source=args.endpoints_source, manage_routes=bool(args.service_cidr))
        proxier.start_informers()
        while not proxier.informers_synced(timeout=10.0):
            if stop.is_set():
                return 0
            log.warning("waiting for services and %s from %s", proxier.endpoints.resource,
                        args.server)
        if stop.is_set():
            return 0
        proxier.start_syncing()
        log.info("kube-proxy (nftables) for node %s in %s, node IP %s, against %s",
                 args.node_name, args.node_netns, args.node_ip, args.server)
        stop.wait()
        proxier.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
