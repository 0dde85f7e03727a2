"""What the proxy reads of the API: service ports and their endpoints, as plain values.

A Service becomes one ``ServicePortInfo`` per port (the unit kube-proxy programs); its endpoints
come from ``endpoints_by_port`` (an Endpoints object) or ``endpoints_from_slices`` (the Service's
EndpointSlices), the only two places that read endpoint objects: the rules see ``EndpointInfo``
lists keyed by (port name, protocol) either way.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds: sessionAffinityConfig.clientIP.timeoutSeconds default
PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class ServicePortInfo:
    namespace: str
    name: str
    port_name: str
    protocol: str          # TCP, UDP, SCTP
    cluster_ip: str
    port: int
    node_port: int = 0
    affinity_timeout: int = 0      # seconds; 0 = sessionAffinity None
    external_local: bool = False   # externalTrafficPolicy: Local
    internal_local: bool = False   # internalTrafficPolicy: Local
    external_ips: tuple[str, ...] = ()  # spec.externalIPs (IPv4): answered as the node port is

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def display(self) -> str:
        """``ns/name:port`` as kube-proxy's logs name a service port."""
        return f"{self.namespace}/{self.name}:{self.port_name}"

    @property
    def externally_accessible(self) -> bool:
        """Reached from outside the cluster (a node port or an external IP): the external
        traffic policy applies."""
        return self.node_port != 0 or bool(self.external_ips)


@dataclass(frozen=True, order=True)
class EndpointInfo:
    ip: str
    port: int
    node_name: str = ""
    ready: bool = True
    serving: bool | None = None    # None: same as ready (Endpoints objects do not say)
    terminating: bool = False

    @property
    def serving_terminating(self) -> bool:
        """Still serving while it shuts down: used only when a service has no ready endpoint,
        so that connections during a rollout's last moments are not refused."""
        return bool(self.serving) and self.terminating

    @property
    def hostport(self) -> str:
        return f"{self.ip}:{self.port}"


def service_ports(svc) -> list[ServicePortInfo]:
    """The ports of a Service the proxy programs: none for a headless Service (clusterIP None),
    one not yet given a clusterIP, or an ExternalName; IPv4 only."""
    spec = svc.spec
    cip = spec.cluster_ip
    if spec.type == "ExternalName" or not cip or cip == "None" or ":" in cip:
        return []
    timeout = 0
    if spec.session_affinity == "ClientIP":
        cfg = spec.session_affinity_config.client_ip
        timeout = max(1, cfg.timeout_seconds if cfg.HasField("timeout_seconds")
                      else DEFAULT_AFFINITY_TIMEOUT)
    node_ports = spec.type in ("NodePort", "LoadBalancer")
    external_ips = tuple(sorted({ip for ip in spec.external_ips if _ipv4(ip)}))
    external = node_ports or bool(external_ips)
    out = []
    for p in spec.ports:
        protocol = (p.protocol or "TCP").upper()
        if protocol not in PROTOCOLS or not p.port:
            continue
        out.append(ServicePortInfo(
            namespace=svc.metadata.namespace, name=svc.metadata.name, port_name=p.name,
            protocol=protocol, cluster_ip=cip, port=p.port,
            node_port=p.node_port if node_ports else 0, affinity_timeout=timeout,
            external_local=external and spec.external_traffic_policy == "Local",
            internal_local=spec.internal_traffic_policy == "Local", external_ips=external_ips))
    return out


def _ipv4(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
    except ValueError:
        return False


def endpoints_by_port(ep) -> dict[tuple[str, str], list[EndpointInfo]]:
    """An Endpoints object as ``{(port name, protocol): [EndpointInfo, ...]}``, ready and not
    ready addresses both (``ready`` tells them apart), sorted, without duplicates. ``ep`` may be
    None (no Endpoints yet): no endpoints."""
    out: dict[tuple[str, str], set[EndpointInfo]] = {}
    if ep is None:
        return {}
    for subset in ep.subsets:
        for port in subset.ports:
            key = (port.name, (port.protocol or "TCP").upper())
            bucket = out.setdefault(key, set())
            for addrs, ready in ((subset.addresses, True), (subset.not_ready_addresses, False)):
                for a in addrs:
                    node = a.node_name if a.HasField("node_name") else ""
                    bucket.add(EndpointInfo(a.ip, port.port, node, ready))
    return {k: sorted(v) for k, v in out.items()}


SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def endpoints_from_slices(slices) -> dict[tuple[str, str], list[EndpointInfo]]:
    """The IPv4 EndpointSlices of one Service as ``{(port name, protocol): [EndpointInfo]}``,
    with discovery/v1's conditions: ready unset counts as ready, serving unset as ready,
    terminating unset as not. An address in several slices (a slice being split or merged) is
    kept once, ready if any copy is."""
    out: dict[tuple[str, str], dict[tuple[str, int], EndpointInfo]] = {}
    for sl in slices:
        if sl.address_type and sl.address_type != "IPv4":
            continue
        for port in sl.ports:
            name = port.name if port.HasField("name") else ""
            proto = (port.protocol if port.HasField("protocol") else "TCP").upper() or "TCP"
            if not port.HasField("port"):
                continue
            bucket = out.setdefault((name, proto), {})
            for ep in sl.endpoints:
                c = ep.conditions
                ready = c.ready if c.HasField("ready") else True
                serving = c.serving if c.HasField("serving") else ready
                terminating = c.terminating if c.HasField("terminating") else False
                node = ep.node_name if ep.HasField("node_name") else ""
                for ip in ep.addresses[:1]:  # kube-proxy uses an endpoint's first address
                    info = EndpointInfo(ip, port.port, node, ready, serving, terminating)
                    seen = bucket.get((ip, port.port))
                    if seen is None or (info.ready and not seen.ready):
                        bucket[(ip, port.port)] = info
    return {k: sorted(v.values()) for k, v in out.items()}
