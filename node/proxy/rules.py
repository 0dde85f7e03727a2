"""The nftables rules of kube-proxy's nftables mode, as data: pure functions from service ports and
endpoints to chains, map elements and sets in the table ``ip kube-proxy``. Nothing here runs nft;
``transaction.py`` turns two of these states into one transaction.

The shape (the design of upstream's pkg/proxy/nftables, written afresh and smaller):

- ``nat-prerouting``/``nat-output`` jump to ``services``, which dispatches on
  ``daddr . l4proto . dport`` through the verdict map ``service-ips`` (clusterIPs) and, for the
  node's own address (set ``nodeport-ips``), on ``l4proto . dport`` through ``service-nodeports``.
- A service port has a chain ``service-…`` choosing among its ready endpoints with
  ``numgen random mod N``, and a chain ``endpoint-…`` per endpoint that DNATs. A pod talking to
  itself through its service (hairpin), and clusterIP traffic from outside the pod network, are
  marked for masquerade; ``nat-postrouting`` masquerades marked packets.
- ``sessionAffinity: ClientIP``: a timeout set ``affinity-…`` per endpoint remembers the clients
  it served; the service chain sends a remembered client back to its endpoint first.
- ``internalTrafficPolicy: Local``: clusterIP traffic goes to ``local-…`` (this node's endpoints
  only), dropped when there are none. ``externalTrafficPolicy: Local``: NodePort traffic from
  outside goes to this node's endpoints unmasqueraded (the client's IP is kept), dropped when there
  are none; traffic from pods and from the node itself still reaches every endpoint.
- ``externalIPs``: ``externalIP . l4proto . port`` in ``service-ips`` leads to the same
  ``external-…`` chain as the node port (masqueraded, or this node's endpoints for Local), as
  in upstream's nftables proxier; reaching the node that has the address is the admin's
  routing, as in Kubernetes (the proxy routes the address to the node's uplink when the node has
  no route for it, so that without endpoints it is refused rather than unroutable).
- A service port without ready endpoints is in ``no-endpoint-services``/``no-endpoint-nodeports``
  with ``goto reject-chain``: connections are refused at once (ICMP port unreachable), checked
  for new connections in the input and forward hooks, and in output after its DNAT. A
  clusterIP's ports that no service port defines are rejected too (set ``cluster-ips``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass, field

from .model import EndpointInfo, ServicePortInfo

TABLE = "kube-proxy"
FAMILY = "ip"
MASQ_MARK = "0x4000"

# base chains: name -> (type, hook, priority)
BASE_CHAINS = {
    "filter-input": ("filter", "input", -110),
    "filter-forward": ("filter", "forward", -110),
    "filter-forward-post-dnat": ("filter", "forward", -90),
    "filter-output-post-dnat": ("filter", "output", -90),
    "nat-prerouting": ("nat", "prerouting", -100),
    "nat-output": ("nat", "output", -100),
    "nat-postrouting": ("nat", "postrouting", 100),
}

SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
NODEPORT_IPS = "nodeport-ips"
CLUSTER_IPS = "cluster-ips"
REJECT_CHAIN = "reject-chain"
MARK_MASQ = "mark-for-masquerade"

MAPS = {
    SERVICE_IPS: "type ipv4_addr . inet_proto . inet_service : verdict ; "
                 'comment "ClusterIP traffic" ;',
    SERVICE_NODEPORTS: 'type inet_proto . inet_service : verdict ; comment "NodePort traffic" ;',
    NO_ENDPOINT_SERVICES: "type ipv4_addr . inet_proto . inet_service : verdict ; "
                          'comment "service ports without endpoints: reject or drop" ;',
    NO_ENDPOINT_NODEPORTS: "type inet_proto . inet_service : verdict ; "
                           'comment "node ports without endpoints: reject or drop" ;',
}
SETS = {
    NODEPORT_IPS: 'type ipv4_addr ; comment "addresses that accept NodePort traffic" ;',
    CLUSTER_IPS: 'type ipv4_addr ; comment "every clusterIP: ports not defined are rejected" ;',
}

# Chain and set names hold "/" (never in a Kubernetes name), so ours are told from the fixed ones.
SERVICE_PREFIX, LOCAL_PREFIX, EXTERNAL_PREFIX = "service-", "local-", "external-"
ENDPOINT_PREFIX, AFFINITY_PREFIX = "endpoint-", "affinity-"


@dataclass(frozen=True)
class NodeConfig:
    node_name: str
    node_ip: str
    cluster_cidr: str


@dataclass
class Rules:
    """A part of the table: chains (name -> rules, in order), elements ((container, key) ->
    verdict, "" in a set) and sets (name -> definition). ``udp`` lists, per UDP service port, what
    conntrack cleanup compares: (clusterIP, port, nodePort, ready endpoint IPs)."""
    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    elements: dict[tuple[str, str], str] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)
    udp: list[tuple[str, int, int, frozenset[str]]] = field(default_factory=list)
    external_ips: set[str] = field(default_factory=set)  # to be routable in the node (routes.py)

    def update(self, other: "Rules") -> None:
        self.external_ips |= other.external_ips
        self.chains.update(other.chains)
        for k, v in other.elements.items():
            self.elements.setdefault(k, v)  # a key claimed twice: the first owner keeps it
        self.sets.update(other.sets)
        self.udp.extend(other.udp)

    def rule_count(self) -> int:
        return sum(len(r) for r in self.chains.values())


def is_service_name(name: str) -> bool:
    """Chains and sets named for a service port or endpoint (the rest are fixed)."""
    return "/" in name


@functools.lru_cache(maxsize=1 << 16)
def _hashed(name: str) -> str:
    """``HASH-name``: the hash keeps names distinct and easy to tell apart at a glance. (Five
    bytes are eight base32 letters; cached, since a sync names every endpoint twice.)"""
    digest = hashlib.sha256(name.encode()).digest()
    return base64.b32encode(digest[:5]).decode() + "-" + name


def port_base(sp: ServicePortInfo) -> str:
    return _hashed(f"{sp.namespace}/{sp.name}/{sp.protocol.lower()}/{sp.port_name}")


def endpoint_base(sp: ServicePortInfo, ep: EndpointInfo) -> str:
    return _hashed(f"{sp.namespace}/{sp.name}/{sp.protocol.lower()}/{sp.port_name}"
                   f"__{ep.ip}/{ep.port}")


def affinity_set_name(sp: ServicePortInfo, ep: EndpointInfo) -> str:
    # The timeout is part of the name: nft keeps an existing set's timeout on "add set", so a
    # changed timeout must be a new set.
    return f"{AFFINITY_PREFIX}{endpoint_base(sp, ep)}/t{sp.affinity_timeout}"


def base_rules(cfg: NodeConfig) -> Rules:
    """The fixed part of the table: hooks, dispatch, reject and masquerade helpers, and the node
    address that NodePorts answer on."""
    r = Rules()
    jump_new = "ct state new jump"
    r.chains.update({
        "filter-input": (f"{jump_new} endpoints-check",),
        "filter-forward": (f"{jump_new} endpoints-check",),
        "filter-forward-post-dnat": (f"{jump_new} cluster-ips-check",),
        # The node's own traffic is checked after its DNAT (output's nat runs after a filter at
        # -110): a NodePort with Local policy and no endpoint here is dropped for outside clients
        # but short-circuited to every endpoint for the node itself, which only DNAT can tell.
        "filter-output-post-dnat": (f"{jump_new} endpoints-check",
                                    f"{jump_new} cluster-ips-check"),
        "nat-prerouting": ("jump services",),
        "nat-output": ("jump services",),
        "nat-postrouting": ("jump masquerading",),
        "services": (
            f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
            f"ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
        ),
        "endpoints-check": (
            f"ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",
            f"ip daddr @{NODEPORT_IPS} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
        ),
        "cluster-ips-check": (
            f'ip daddr @{CLUSTER_IPS} reject comment "no service port of that clusterIP"',
        ),
        REJECT_CHAIN: ("reject",),
        MARK_MASQ: (f"meta mark set meta mark or {MASQ_MARK}",),
        "masquerading": (
            f"meta mark and {MASQ_MARK} == 0 return",
            f"meta mark set meta mark xor {MASQ_MARK}",
            "masquerade fully-random",
        ),
    })
    r.elements[(NODEPORT_IPS, cfg.node_ip)] = ""
    return r


def _numgen(endpoint_chains: list[str]) -> str:
    arms = ", ".join(f"{i} : goto {c}" for i, c in enumerate(endpoint_chains))
    return f"numgen random mod {len(endpoint_chains)} vmap {{ {arms} }}"


def _policy_chain(sp: ServicePortInfo, eps: list[EndpointInfo],
                  masq_not_from_pods: str | None) -> tuple[str, ...]:
    rules: list[str] = []
    if masq_not_from_pods:
        rules.append(masq_not_from_pods)
    chains = [ENDPOINT_PREFIX + endpoint_base(sp, ep) for ep in eps]
    if sp.affinity_timeout:
        for ep, chain in zip(eps, chains):
            rules.append(f"ip saddr @{affinity_set_name(sp, ep)} goto {chain}")
    rules.append(_numgen(chains))
    return tuple(rules)


def service_port_rules(cfg: NodeConfig, sp: ServicePortInfo,
                       endpoints: list[EndpointInfo]) -> Rules:
    """The chains, elements and sets of one service port on node ``cfg.node_name``."""
    r = Rules()
    proto = sp.protocol.lower()
    base = port_base(sp)
    cluster_chain, local_chain = SERVICE_PREFIX + base, LOCAL_PREFIX + base
    external_chain = EXTERNAL_PREFIX + base
    ready = [e for e in endpoints if e.ready]
    if not ready:  # the last pods of a rollout: still serving while they terminate
        ready = [e for e in endpoints if e.serving_terminating]
    local = [e for e in ready if e.node_name == cfg.node_name]
    cip_key = f"{sp.cluster_ip} . {proto} . {sp.port}"
    np_key = f"{proto} . {sp.node_port}"
    r.elements[(CLUSTER_IPS, sp.cluster_ip)] = ""
    if proto == "udp":
        served = frozenset(e.ip for e in ready)
        r.udp.append((sp.cluster_ip, sp.port, sp.node_port, served))
        r.udp.extend((ip, sp.port, 0, served) for ip in sp.external_ips)

    ext_keys = [f"{ip} . {proto} . {sp.port}" for ip in sp.external_ips]
    r.external_ips.update(sp.external_ips)

    if not ready:
        r.elements[(NO_ENDPOINT_SERVICES, cip_key)] = f"goto {REJECT_CHAIN}"
        if sp.node_port:
            r.elements[(NO_ENDPOINT_NODEPORTS, np_key)] = f"goto {REJECT_CHAIN}"
        for key in ext_keys:
            r.elements[(NO_ENDPOINT_SERVICES, key)] = f"goto {REJECT_CHAIN}"
        return r

    # clusterIP traffic from outside the pod network (the node's own processes, a routed client)
    # is masqueraded so that the endpoint's reply comes back through this node.
    masq = (f"ip daddr {sp.cluster_ip} {proto} dport {sp.port} "
            f"ip saddr != {cfg.cluster_cidr} jump {MARK_MASQ}")
    uses_cluster = not sp.internal_local or sp.externally_accessible
    uses_local = bool(local) and (sp.internal_local or sp.external_local)
    if uses_cluster:
        r.chains[cluster_chain] = _policy_chain(sp, ready, None if sp.internal_local else masq)
    if uses_local:
        r.chains[local_chain] = _policy_chain(sp, local, masq if sp.internal_local else None)

    if not sp.internal_local:
        r.elements[(SERVICE_IPS, cip_key)] = f"goto {cluster_chain}"
    elif local:
        r.elements[(SERVICE_IPS, cip_key)] = f"goto {local_chain}"
    else:
        r.elements[(NO_ENDPOINT_SERVICES, cip_key)] = "drop"

    if sp.externally_accessible:
        if sp.node_port:
            r.elements[(SERVICE_NODEPORTS, np_key)] = f"goto {external_chain}"
        for key in ext_keys:
            r.elements[(SERVICE_IPS, key)] = f"goto {external_chain}"
        if not sp.external_local:
            r.chains[external_chain] = (f"jump {MARK_MASQ}", f"goto {cluster_chain}")
        else:
            ext = [f'ip saddr {cfg.cluster_cidr} goto {cluster_chain} comment "pods: any endpoint"',
                   f'fib saddr type local jump {MARK_MASQ} comment "the node itself"',
                   f"fib saddr type local goto {cluster_chain}"]
            if local:
                ext.append(f"goto {local_chain}")
            else:  # outside clients fall through undNATed to the no-endpoint checks
                if sp.node_port:
                    r.elements[(NO_ENDPOINT_NODEPORTS, np_key)] = "drop"
                for key in ext_keys:
                    r.elements[(NO_ENDPOINT_SERVICES, key)] = "drop"
            r.chains[external_chain] = tuple(ext)

    reachable = {e for e in ready if uses_cluster} | set(local if uses_local else ())
    for ep in sorted(reachable):
        chain = ENDPOINT_PREFIX + endpoint_base(sp, ep)
        rules = [f"ip saddr {ep.ip} jump {MARK_MASQ}"]  # hairpin: a pod reaching itself
        if sp.affinity_timeout:
            aff = affinity_set_name(sp, ep)
            r.sets[aff] = (f"type ipv4_addr ; flags dynamic,timeout ; "
                           f"timeout {sp.affinity_timeout}s ;")
            rules.append(f"update @{aff} {{ ip saddr }}")
        rules.append(f"meta l4proto {proto} dnat to {ep.ip}:{ep.port}")
        r.chains[chain] = tuple(rules)
    return r


def service_rules(cfg: NodeConfig, ports: list[ServicePortInfo],
                  endpoints: dict[tuple[str, str], list[EndpointInfo]]) -> Rules:
    """Every port of one Service; ``endpoints`` as ``model.endpoints_by_port`` gives them."""
    r = Rules()
    for sp in ports:
        r.update(service_port_rules(cfg, sp, endpoints.get((sp.port_name, sp.protocol), [])))
    return r
