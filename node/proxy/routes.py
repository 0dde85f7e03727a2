"""The routes the proxy may add: the service CIDR, and each Service's externalIPs, in a node
namespace that has no route for them. DNAT of a service with endpoints happens before routing, but a service without endpoints is
refused in the forward and output hooks, which a packet reaches only if it was routable: a real
node has a default route for that; our node namespaces (node.network.fabric) have none. The
uplink is the choice because that is where a node's default route would point."""

from __future__ import annotations

import ipaddress

from node.network.fabric import NODE_IFNAME
from node.network.iproute import ip


def ensure_service_route(netns: str, service_cidr: str) -> bool:
    """Route ``service_cidr`` to the node's uplink unless some route already covers it; True
    when one was added."""
    probe = str(ipaddress.IPv4Network(service_cidr).network_address + 1)
    if ip("route", "get", probe, netns=netns, check=False).returncode == 0:
        return False
    ip("route", "replace", service_cidr, "dev", NODE_IFNAME, netns=netns)
    return True


ROUTE_PROTO = "250"  # marks the external-IP routes the proxy added (and may take away)


def our_external_routes(netns: str) -> set[str]:
    """The external-IP routes a proxy (this one or one before it) added in ``netns``."""
    out = ip("-4", "route", "show", "proto", ROUTE_PROTO, netns=netns, check=False).stdout
    return {line.split()[0].removesuffix("/32") for line in out.splitlines() if line.strip()}


def sync_external_routes(netns: str, wanted: set[str], have: set[str]) -> set[str]:
    """Route each address of ``wanted`` that no route covers to the uplink, and remove the
    routes of ``have`` (ours) no longer wanted; returns the routes of ours now in place."""
    for addr in sorted(have - wanted):
        ip("route", "del", f"{addr}/32", "dev", NODE_IFNAME, "proto", ROUTE_PROTO, netns=netns, check=False)
    ours = have & wanted
    for addr in sorted(wanted - have):
        if ip("route", "get", addr, netns=netns, check=False).returncode == 0:
            continue  # routable already (a default route, an address of the node's)
        ip("route", "replace", f"{addr}/32", "dev", NODE_IFNAME, "proto", ROUTE_PROTO, netns=netns)
        ours.add(addr)
    return ours
