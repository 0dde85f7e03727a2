"""Keeps ``Records`` current from the apiserver: an informer on Services and one on their
endpoints, EndpointSlices (discovery.k8s.io/v1, grouped by their ``kubernetes.io/service-name``
label) where the apiserver serves that kind, else Endpoints.

An endpoint counts when it is ready (discovery/v1: ``ready`` unset means ready; Endpoints: in
``addresses``, not ``notReadyAddresses``), as the DNS specification asks; the EndpointSlice and
Endpoints controllers already count not-ready pods as ready for a Service with
``publishNotReadyAddresses``.
"""

from __future__ import annotations

import logging
import threading

from apiserver import resources
from controllers.informer import Informer, meta_namespace_key
from node.dns.records import EndpointInfo, Port, Records, ServiceInfo

log = logging.getLogger("node.dns.source")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SOURCES = ("endpointslices", "endpoints")


def default_source() -> str:
    return "endpointslices" if resources.lookup("endpointslices") is not None else "endpoints"


def service_info(svc) -> ServiceInfo:
    spec = svc.spec
    ports = tuple(Port(p.name, (p.protocol or "TCP").upper(), p.port) for p in spec.ports)
    external = getattr(spec, "external_name", "") if spec.type == "ExternalName" else ""
    return ServiceInfo(svc.metadata.namespace, svc.metadata.name, spec.cluster_ip, ports,
                       external.strip(".") if external else "")


def endpoints_of(ep) -> list[EndpointInfo]:
    """The ready addresses of an Endpoints object with the ports of their subset."""
    out = []
    for subset in ep.subsets:
        ports = tuple(Port(p.name, (p.protocol or "TCP").upper(), p.port) for p in subset.ports)
        for a in subset.addresses:
            out.append(EndpointInfo(a.ip, a.hostname, ports))
    return _merge_ports(out)


def endpoints_of_slices(slices) -> list[EndpointInfo]:
    """The ready IPv4 endpoints of a Service's EndpointSlices, each address once."""
    out = []
    for sl in slices:
        if sl.address_type and sl.address_type != "IPv4":
            continue
        ports = tuple(Port(p.name if p.HasField("name") else "",
                           (p.protocol if p.HasField("protocol") else "TCP").upper() or "TCP",
                           p.port) for p in sl.ports if p.HasField("port"))
        for ep in sl.endpoints:
            c = ep.conditions
            if c.HasField("ready") and not c.ready:
                continue
            hostname = ep.hostname if ep.HasField("hostname") else ""
            for ip in ep.addresses:
                out.append(EndpointInfo(ip, hostname, ports))
    return _merge_ports(out)


def _merge_ports(eps: list[EndpointInfo]) -> list[EndpointInfo]:
    """One EndpointInfo per (ip, hostname) with the union of its ports (an address can sit in
    several subsets or slices, each with other ports)."""
    merged: dict[tuple[str, str], set] = {}
    for e in eps:
        merged.setdefault((e.ip, e.hostname), set()).update(e.ports)
    return [EndpointInfo(ip, host, tuple(sorted(ports, key=lambda p: (p.name, p.protocol, p.port))))
            for (ip, host), ports in merged.items()]


class ClusterSource:
    """The informers feeding ``records``; ``start()``, ``wait_for_sync(timeout)``, ``stop()``."""

    def __init__(self, client, records: Records, source: str = "") -> None:
        self.records = records
        self.source = source or default_source()
        if self.source not in SOURCES:
            raise ValueError(f"endpoints source {self.source!r}: use one of {', '.join(SOURCES)}")
        self.services = Informer(client, "services")
        self.endpoints = Informer(client, self.source)
        self._slices: dict[str, dict[str, object]] = {}  # service key -> slice name -> slice
        self._lock = threading.Lock()
        self.services.add_handler(self._service_changed, lambda old, new: self._service_changed(new),
                                  self._service_deleted)
        if self.source == "endpoints":
            self.endpoints.add_handler(self._endpoints_changed,
                                       lambda old, new: self._endpoints_changed(new),
                                       self._endpoints_deleted)
        else:
            self.endpoints.add_handler(self._slice_changed, self._slice_updated, self._slice_deleted)

    def start(self) -> "ClusterSource":
        self.services.start()
        self.endpoints.start()
        return self

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        return self.services.wait_for_sync(timeout) and self.endpoints.wait_for_sync(timeout)

    def stop(self) -> None:
        self.services.stop()
        self.endpoints.stop()

    # ---- Services ----

    def _service_changed(self, svc) -> None:
        self.records.set_service(service_info(svc))

    def _service_deleted(self, svc) -> None:
        self.records.set_service(None, meta_namespace_key(svc))

    # ---- Endpoints ----

    def _endpoints_changed(self, ep) -> None:
        self.records.set_endpoints(meta_namespace_key(ep), endpoints_of(ep))

    def _endpoints_deleted(self, ep) -> None:
        self.records.set_endpoints(meta_namespace_key(ep), None)

    # ---- EndpointSlices ----

    @staticmethod
    def _service_key(sl) -> str | None:
        svc = sl.metadata.labels.get(SERVICE_NAME_LABEL, "")
        return f"{sl.metadata.namespace}/{svc}" if svc else None

    def _slice_changed(self, sl) -> None:
        key = self._service_key(sl)
        if key is None:
            return
        with self._lock:
            self._slices.setdefault(key, {})[sl.metadata.name] = sl
            slices = list(self._slices[key].values())
        self.records.set_endpoints(key, endpoints_of_slices(slices))

    def _slice_updated(self, old, new) -> None:
        old_key = self._service_key(old)
        if old_key is not None and old_key != self._service_key(new):
            self._slice_deleted(old)  # relabelled to another Service
        self._slice_changed(new)

    def _slice_deleted(self, sl) -> None:
        key = self._service_key(sl)
        if key is None:
            return
        with self._lock:
            group = self._slices.get(key, {})
            group.pop(sl.metadata.name, None)
            if not group:
                self._slices.pop(key, None)
            slices = list(group.values())
        self.records.set_endpoints(key, endpoints_of_slices(slices))
