"""The cloud's load balancers: a router namespace ``<prefix>-lb`` on the fabric (10.250.255.254)
holding one virtual IP per balancer (10.250.254.<n>/32 on its eth0, so it answers ARP for it).

Per port, nftables rules DNAT a new connection to one of the balancer's nodes, at random, on
the port's NodePort, and masquerade it: the node answers the router, which undoes both
translations on the way back to the client (without the masquerade the node would answer the
client directly from its own address, and the client would drop it). The whole table is
rewritten in one ``nft -f`` transaction at every change, so the router never holds half of an
update; a change the kernel refuses leaves the balancer as it was, in the router and the API.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from node.network.fabric import Fabric
from node.network.iproute import ip
from node.network.netns import write_sysctl_in

ROUTER_IP = "10.250.255.254"
VIP_FORMAT = "10.250.254.{}"  # n in 1..254
TABLE = "cloud-lb"


class LoadBalancerError(Exception):
    """``status``: the HTTP status the cloud's API answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class LoadBalancer:
    name: str
    vip: str
    ports: list  # [{"protocol": "TCP", "port": 80, "nodePort": 30080}]
    nodes: list  # node addresses

    def view(self) -> dict:
        return {"name": self.name, "ip": self.vip, "ports": self.ports, "nodes": self.nodes}


class Router:
    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self.netns = f"{fabric.prefix}-lb"
        self._lock = threading.Lock()
        self._lbs: dict[str, LoadBalancer] = {}

    def create(self) -> None:
        """The router's namespace on the fabric, forwarding, and an empty table."""
        self.fabric.add_host("lb", ROUTER_IP)
        write_sysctl_in(self.netns, "net.ipv4.ip_forward", "1")
        # it sends packets back out the interface they came in on: no redirects to the client
        write_sysctl_in(self.netns, "net.ipv4.conf.all.send_redirects", "0")
        write_sysctl_in(self.netns, "net.ipv4.conf.eth0.send_redirects", "0")
        self._write()

    def list(self) -> list[LoadBalancer]:
        with self._lock:
            return list(self._lbs.values())

    def get(self, name: str) -> LoadBalancer:
        with self._lock:
            lb = self._lbs.get(name)
            if lb is None:
                raise LoadBalancerError(404, f"load balancer {name} not found")
            return lb

    def ensure(self, name: str, ports: list[dict], nodes: list[str]) -> LoadBalancer:
        """Create or update: a balancer keeps its virtual IP for its whole life."""
        clean = []
        for p in ports:
            if not isinstance(p, dict):
                raise LoadBalancerError(400, f"load balancer {name}: each port is an object")
            proto = str(p.get("protocol", "TCP")).upper()
            if proto not in ("TCP", "UDP"):
                raise LoadBalancerError(400, f"load balancer {name}: protocol {proto} is not supported (TCP, UDP)")
            try:
                port, node_port = int(p["port"]), int(p["nodePort"])
            except (KeyError, TypeError, ValueError):
                raise LoadBalancerError(400, f"load balancer {name}: each port needs port and nodePort") from None
            clean.append({"protocol": proto, "port": port, "nodePort": node_port})
        with self._lock:
            lb = self._lbs.get(name)
            if lb is None:
                used = {x.vip for x in self._lbs.values()}
                vip = next((v for n in range(1, 255) if (v := VIP_FORMAT.format(n)) not in used), None)
                if vip is None:
                    raise LoadBalancerError(409, "no virtual IP left (254 load balancers)")
                ip("addr", "replace", f"{vip}/32", "dev", "eth0", netns=self.netns)
                lb = self._lbs[name] = LoadBalancer(name, vip, [], [])
            before = lb.ports, lb.nodes
            lb.ports, lb.nodes = clean, sorted(set(nodes))
            try:
                self._write()
            except Exception:
                lb.ports, lb.nodes = before
                raise
            return lb

    def delete(self, name: str) -> None:
        with self._lock:
            lb = self._lbs.pop(name, None)
            if lb is None:
                raise LoadBalancerError(404, f"load balancer {name} not found")
            self._write()
            ip("addr", "del", f"{lb.vip}/32", "dev", "eth0", netns=self.netns, check=False)

    def _write(self) -> None:
        from node.proxy.nft import run_script

        run_script(self.netns, render_rules(list(self._lbs.values())))


def render_rules(lbs: list[LoadBalancer]) -> str:
    """The router's whole table for these balancers, replacing the old one in one transaction:
    per port, a chain choosing a node at random (numgen) and one DNAT chain per node."""
    lines = [f"add table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    chains, dispatch = [], []
    for i, lb in enumerate(sorted(lbs, key=lambda x: x.vip)):
        for j, port in enumerate(lb.ports):
            if not lb.nodes:
                continue  # nothing listens on the VIP: the router's kernel resets the connection
            proto = port["protocol"].lower()
            name = f"lb{i}p{j}"
            dispatch.append(f"    ip daddr {lb.vip} {proto} dport {port['port']} goto {name}")
            targets = ", ".join(f"{k} : goto {name}n{k}" for k in range(len(lb.nodes)))
            chains.append(f"  chain {name} {{\n    numgen random mod {len(lb.nodes)} vmap {{ {targets} }}\n  }}")
            for k, node in enumerate(lb.nodes):
                # nft maps an address:port only after a transport protocol match
                chains.append(f"  chain {name}n{k} {{\n    meta l4proto {proto} dnat to {node}:{port['nodePort']}\n  }}")
    lines += chains
    lines.append("  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;")
    lines += dispatch
    lines.append("  }")
    lines.append("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n"
                 "    ct status dnat masquerade\n  }")
    lines.append("}")
    return "\n".join(lines) + "\n"
