"""The one route the proxy may add: the service CIDR, in a node namespace that has no route for
it. DNAT of a service with endpoints happens before routing, but a service without endpoints is
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
