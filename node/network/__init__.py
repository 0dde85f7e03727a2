"""The pod network of the data plane, all inside namespaces the plane names with its prefix:

- ``fabric``: the plane's L2 segment and the node namespaces on it (addresses, pod bridge, routes
  between nodes' podCIDRs);
- ``pod``: the CNI-like plugin the runtime calls per sandbox (veth + address + default route);
- ``ipam``: host-local address files for a node's podCIDR;
- ``netns``: sockets and sysctls inside a namespace from a process that stays in its own (probes);
- ``iproute``: the one place that runs iproute2, and ``NetworkError``;
- ``owner``: which process owns a prefix, so that leftovers of dead runs can be swept.

``cleanup(prefix)`` removes what this package made for a prefix; ``sweep()`` does it for every
plane whose owner process is gone.
"""

from __future__ import annotations

import os
import secrets

from . import owner
from .iproute import NetworkError, ip, netns_exists, netns_names

__all__ = ["NetworkError", "cleanup", "cleanup_pods", "sweep", "new_prefix", "prefixed_netns"]


def new_prefix() -> str:
    """A fresh plane id: ``kp`` + 4 lowercase hex, none in use on this machine (no owner marker,
    no namespace, no runc state under /run of that name), so that planes of test runs side by
    side (pytest-xdist's workers) never share one."""
    for _ in range(1000):
        prefix = "kp" + secrets.token_hex(2)
        if not _prefix_in_use(prefix):
            return prefix
    raise NetworkError("no free plane prefix among 1000 tries: remove leftovers with "
                       "node.network.sweep() (or `ip netns list` / /run/kp*)")


def _prefix_in_use(prefix: str) -> bool:
    if os.path.exists(owner.marker_path(prefix)):
        return True
    if any(n == prefix or n.startswith(prefix + "-") for n in netns_names()):
        return True
    try:
        return any(n == prefix or n.startswith(prefix + "-") for n in os.listdir(owner.RUN_DIR))
    except FileNotFoundError:
        return False


def prefixed_netns(prefix: str) -> list[str]:
    """The namespaces named ``prefix`` or ``prefix-...`` (so ``kp3fa2-n1`` covers node 1 and its
    pods, never node 10)."""
    owner.check_prefix(prefix)
    return [n for n in netns_names() if n == prefix or n.startswith(prefix + "-")]


def cleanup(prefix: str) -> None:
    """Delete every namespace of ``prefix`` (with them go every veth, bridge, address and route
    this package made: it makes nothing elsewhere) and the prefix's owner marker. Idempotent;
    "already gone" is not an error. Raises NetworkError only if a namespace survives."""
    names = prefixed_netns(prefix)
    if names:
        ip(batch=[f"netns del {n}" for n in names], force=True, check=False)
        left = [n for n in names if netns_exists(n)]
        if left:
            # One more try each, to get the error text of what is holding it.
            for n in left:
                ip("netns", "del", n, check=False)
            left = [n for n in left if netns_exists(n)]
        if left:
            raise NetworkError(f"cleanup {prefix}", f"namespaces still present: {left}",
                               "something holds a mount on /run/netns/<name>; umount it")
    owner.release(prefix)


def cleanup_pods(node_netns: str) -> None:
    """Delete the pod namespaces of one node (``<node_netns>-*``), keeping the node's own: what a
    runtime's cleanup does, since the node namespace belongs to the fabric. Idempotent."""
    names = [n for n in prefixed_netns(node_netns) if n != node_netns]
    if names:
        ip(batch=[f"netns del {n}" for n in names], force=True, check=False)
    left = [n for n in names if netns_exists(n)]
    if left:
        raise NetworkError(f"cleanup pods of {node_netns}", f"namespaces still present: {left}",
                           "something holds a mount on /run/netns/<name>; umount it")


def sweep() -> list[str]:
    """Clean up every plane (``kp`` + 4 hex) whose marker names a process that is gone; return
    their prefixes. Planes alive, and prefixes without a marker, are left alone."""
    swept = []
    for prefix in owner.marked_prefixes():
        if owner.owner_alive(prefix) is False:
            cleanup(prefix)
            swept.append(prefix)
    return swept
