"""What the apiserver keeps right about Services by itself: the ``kubernetes``
Service in ``default`` (and its Endpoints and EndpointSlice, naming this
apiserver), and the repair loop over ClusterIP and NodePort allocations.

The repair loop is upstream's two repair controllers (ipallocator's and
portallocator's) in one pass: it reads every Service, IPAddress and
NodePort record at one etcd revision, then
- frees a record no Service holds (a leak: an IPAddress or NodePort made by
  hand, or left by something that bypassed the apiserver). Upstream waits
  for three passes before freeing, because its allocations are written
  apart from the Service; here both go in one Txn, so a record without its
  Service in one consistent read is a leak already, and the delete is a CAS
  on the revision read, so a record taken meanwhile is left alone;
- recreates the record of a Service whose value has none (an Event
  ``ClusterIPNotAllocated`` / ``PortNotAllocated``);
- reports, as Warning Events on the Service, a value two Services hold
  (``ClusterIPAlreadyAllocated`` / ``PortAlreadyAllocated``) and one outside
  the configured range (``ClusterIPOutOfRange`` / ``PortOutOfRange``), which
  only recreating the Service fixes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

from apiserver import errors, resources
from apiserver.errors import ApiError
from apiserver.etcd3 import pb
from apiserver.pb import core_pb2, discovery_pb2
from apiserver.service_alloc import (
    IPADDRESSES,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NODE_PORT_PREFIX,
    SERVICES,
    ServiceAllocator,
    ip_key,
    ip_owner,
    port_key,
    port_owner,
    port_record,
)
from apiserver.service_fields import service_ips, service_node_ports

log = logging.getLogger("apiserver.service_repair")

KUBERNETES_SERVICE = "kubernetes"
DEFAULT_REPAIR_INTERVAL = 180.0  # upstream's repair controllers run every 3 minutes
IP_REPAIR_COMPONENT = "ipallocator-repair-controller"
PORT_REPAIR_COMPONENT = "portallocator-repair-controller"
ENDPOINTS = resources.BY_NAME["endpoints"]
ENDPOINT_SLICES = resources.BY_NAME["endpointslices"]
EVENTS = resources.BY_NAME["events"]


def kubernetes_service(cluster_ip: str, port: int) -> core_pb2.Service:
    svc = core_pb2.Service()
    svc.metadata.name, svc.metadata.namespace = KUBERNETES_SERVICE, "default"
    svc.metadata.labels.update({"component": "apiserver", "provider": "kubernetes"})
    svc.spec.type = "ClusterIP"
    svc.spec.cluster_ip = cluster_ip
    svc.spec.ports.add(name="https", protocol="TCP", port=443, target_port=str(port))
    svc.spec.session_affinity = "None"
    return svc


@dataclass
class RepairReport:
    """What one pass found (values as "ns/name ip" or "ns/name port")."""
    freed: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    out_of_range: list[str] = field(default_factory=list)


class ServiceBootstrap:
    """The ``kubernetes`` Service and its endpoints; the allocation repair loop."""

    def __init__(self, registry, allocator: ServiceAllocator, *, address: str, port: int,
                 repair_interval: float = DEFAULT_REPAIR_INTERVAL) -> None:
        self.registry = registry
        self.storage = registry.storage
        self.allocator = allocator
        self.address = address
        self.port = port
        self.repair_interval = repair_interval

    # ---- the kubernetes Service ----

    async def ensure_kubernetes_service(self) -> None:
        """Created at start-up, as kube-apiserver's controller does; an
        existing one is left as it is (its address is kept)."""
        svc = kubernetes_service(self.allocator.cidr.first(), self.port)
        try:
            current = await self.registry.get(SERVICES, "default", KUBERNETES_SERVICE)
        except ApiError as e:
            if e.reason != "NotFound":
                raise
            current = None
        if current is None:
            # (a create of an existing one would be refused for its address before its name)
            await self.registry.create(SERVICES, svc)
        else:
            if list(current.spec.ports) != list(svc.spec.ports):
                # this apiserver's port changed: the Service follows (its address stays)
                del current.spec.ports[:]
                current.spec.ports.extend(svc.spec.ports)
                await self.registry.update(SERVICES, current)
        await self._ensure_endpoints()

    async def _ensure_endpoints(self) -> None:
        ep = core_pb2.Endpoints()
        ep.metadata.name, ep.metadata.namespace = KUBERNETES_SERVICE, "default"
        # this apiserver writes the slice itself: the mirroring controller leaves it
        ep.metadata.labels["endpointslice.kubernetes.io/skip-mirror"] = "true"
        subset = ep.subsets.add()
        subset.addresses.add(ip=self.address)
        subset.ports.add(name="https", port=self.port, protocol="TCP")
        eps = discovery_pb2.EndpointSlice(address_type="IPv4")
        eps.metadata.name, eps.metadata.namespace = KUBERNETES_SERVICE, "default"
        eps.metadata.labels["kubernetes.io/service-name"] = KUBERNETES_SERVICE
        endpoint = eps.endpoints.add(addresses=[self.address])
        endpoint.conditions.ready = True
        eps.ports.add(name="https", port=self.port, protocol="TCP")
        for res, want, same in ((ENDPOINTS, ep, lambda a, b: list(a.subsets) == list(b.subsets)
                                 and dict(a.metadata.labels) == dict(b.metadata.labels)),
                                (ENDPOINT_SLICES, eps, lambda a, b: (list(a.endpoints), list(a.ports))
                                 == (list(b.endpoints), list(b.ports)))):
            try:
                current = await self.registry.get(res, "default", KUBERNETES_SERVICE)
            except ApiError as e:
                if e.reason != "NotFound":
                    raise
                try:
                    await self.registry.create(res, want)
                except ApiError as e2:
                    if e2.reason != "AlreadyExists":
                        raise
                continue
            if not same(current, want):
                want.metadata.resource_version = current.metadata.resource_version
                await self.registry.update(res, want)

    # ---- repair ----

    async def repair_once(self) -> RepairReport:
        report = RepairReport()
        (svc_kvs, ip_kvs, port_kvs), _ = await self.storage.read_prefixes(
            [SERVICES.prefix().encode(), IPADDRESSES.prefix().encode(), NODE_PORT_PREFIX.encode()])
        services = []
        for kv in svc_kvs:
            try:
                services.append(self.storage.decode(SERVICES, kv.key, kv.value, kv.mod_revision))
            except ApiError as e:
                log.warning("repair: skipping %s: %s", kv.key.decode("utf-8", "replace"), e.message)
        ips = {}
        for kv in ip_kvs:
            try:
                ips[kv.key] = (kv, self.storage.decode(IPADDRESSES, kv.key, kv.value, kv.mod_revision))
            except ApiError:
                continue
        ports = {kv.key: kv for kv in port_kvs}
        cidr, port_range = self.allocator.cidr, self.allocator.node_ports

        # who holds what, by the Services' own specs
        ip_holders: dict[str, list] = {}
        port_holders: dict[int, list] = {}
        for svc in services:
            for ip in service_ips(svc.spec):
                ip_holders.setdefault(ip, []).append(svc)
            for port in service_node_ports(svc.spec):
                port_holders.setdefault(port, []).append(svc)

        for ip, holders in ip_holders.items():
            key = ip_key(ip)
            if not cidr.contains(ip):
                for svc in holders:
                    report.out_of_range.append(f"{_name(svc)} {ip}")
                    await self._event(svc, IP_REPAIR_COMPONENT, "ClusterIPOutOfRange",
                                      f"Cluster IP [IPv4]: {ip} is not within the configured Service CIDR "
                                      f"{cidr}; please recreate service")
                continue
            record = ips.get(key)
            owner = ip_owner(record[1]) if record else None
            keeper = next((s for s in holders if _owner(s) == owner), None)
            if keeper is None:
                keeper = holders[0]
                value = self.allocator.ip_record(keeper, ip)
                if await self._put_if(key, record[0].mod_revision if record else 0, value):
                    report.repaired.append(f"{_name(keeper)} {ip}")
                    await self._event(keeper, IP_REPAIR_COMPONENT, "ClusterIPNotAllocated",
                                      f"Cluster IP [IPv4]: {ip} is not allocated; repairing")
            for svc in holders:
                if svc is not keeper:
                    report.duplicates.append(f"{_name(svc)} {ip}")
                    await self._event(svc, IP_REPAIR_COMPONENT, "ClusterIPAlreadyAllocated",
                                      f"Cluster IP [IPv4]: {ip} was assigned to multiple services; "
                                      "please recreate service")
        for key, (kv, rec) in ips.items():
            ip = rec.metadata.name
            if rec.metadata.labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
                continue  # made by hand for someone else's use: not ours to free
            if not any(_owner(s) == ip_owner(rec) for s in ip_holders.get(ip, ())):
                if await self._delete_if(key, kv.mod_revision):
                    report.freed.append(f"{'/'.join(ip_owner(rec) or ('?', '?'))} {ip}")
                    log.info("repair: freed ClusterIP %s, held by no Service", ip)

        for port, holders in port_holders.items():
            key = port_key(port)
            if not port_range.contains(port):
                for svc in holders:
                    report.out_of_range.append(f"{_name(svc)} {port}")
                    await self._event(svc, PORT_REPAIR_COMPONENT, "PortOutOfRange",
                                      f"Port {port} is not within the port range {port_range}; "
                                      "please recreate service")
                continue
            kv = ports.get(key)
            owner = port_owner(kv.value) if kv else None
            keeper = next((s for s in holders if _owner(s) == owner), None)
            if keeper is None:
                keeper = holders[0]
                value = port_record(keeper.metadata.namespace, keeper.metadata.name)
                if await self._put_if(key, kv.mod_revision if kv else 0, value):
                    report.repaired.append(f"{_name(keeper)} {port}")
                    await self._event(keeper, PORT_REPAIR_COMPONENT, "PortNotAllocated",
                                      f"Port {port} is not allocated; repairing")
            for svc in holders:
                if svc is not keeper:
                    report.duplicates.append(f"{_name(svc)} {port}")
                    await self._event(svc, PORT_REPAIR_COMPONENT, "PortAlreadyAllocated",
                                      f"Port {port} was assigned to multiple services; please recreate service")
        for key, kv in ports.items():
            tail = key[len(NODE_PORT_PREFIX):]
            port = int(tail) if tail.isdigit() else None
            owner = port_owner(kv.value)
            if port is None or not any(_owner(s) == owner for s in port_holders.get(port, ())):
                if await self._delete_if(key, kv.mod_revision):
                    report.freed.append(f"{'/'.join(owner or ('?', '?'))} {tail.decode('utf-8', 'replace')}")
                    log.info("repair: freed NodePort %s, held by no Service", tail.decode("utf-8", "replace"))
        for svc in services:
            if svc.spec.type != "ExternalName" and not svc.spec.cluster_ip and not svc.metadata.deletion_timestamp:
                # stored before Services had addresses (an older apiserver's data): give it one
                try:
                    updated = await self.registry.update(SERVICES, svc)
                    report.repaired.append(f"{_name(svc)} {updated.spec.cluster_ip}")
                except ApiError as e:
                    log.warning("repair: cannot give %s an address yet: %s", _name(svc), e.message)
        return report

    async def _put_if(self, key: bytes, mod_revision: int, value: bytes) -> bool:
        return await self._txn(key, mod_revision, pb.RequestOp(request_put=pb.PutRequest(key=key, value=value)))

    async def _delete_if(self, key: bytes, mod_revision: int) -> bool:
        return await self._txn(key, mod_revision, pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key)))

    async def _txn(self, key: bytes, mod_revision: int, op) -> bool:
        cmp = pb.Compare(key=key, target=pb.Compare.CompareTarget.MOD,
                         result=pb.Compare.CompareResult.EQUAL, mod_revision=mod_revision)
        resp = await self.storage._call(self.storage.etcd.kv.Txn, pb.TxnRequest(compare=[cmp], success=[op]))
        return resp.succeeded

    async def _event(self, svc, component: str, reason: str, message: str) -> None:
        log.warning("repair: service %s: %s: %s", _name(svc), reason, message)
        ev = core_pb2.Event(reason=reason, message=message, type="Warning", count=1)
        ev.metadata.name = f"{svc.metadata.name}.{secrets.token_hex(8)}"
        ev.metadata.namespace = svc.metadata.namespace
        ref = ev.involved_object
        ref.kind, ref.api_version = "Service", "v1"
        ref.namespace, ref.name, ref.uid = svc.metadata.namespace, svc.metadata.name, svc.metadata.uid
        ev.source.component = component
        ev.reporting_component = component
        from apiserver.registry import now_rfc3339
        ev.first_timestamp = ev.last_timestamp = now_rfc3339()
        try:
            await self.registry.create(EVENTS, ev)
        except ApiError as e:
            log.warning("repair: cannot record event %s on %s: %s", reason, _name(svc), e.message)

    async def run(self, stop: asyncio.Event) -> None:
        """Every repair_interval seconds until ``stop``: the endpoints of
        ``kubernetes``, then a repair pass; failures are logged and retried."""
        while not stop.is_set():
            try:
                await self._ensure_endpoints()
                report = await self.repair_once()
                if report.freed or report.repaired or report.duplicates or report.out_of_range:
                    log.info("repair: freed %s, repaired %s, duplicates %s, out of range %s",
                             report.freed, report.repaired, report.duplicates, report.out_of_range)
            except (ApiError, errors.ApiError) as e:
                log.warning("service allocation repair failed (%s); retrying in %.0f s",
                            e.message, self.repair_interval)
            except Exception:  # noqa: BLE001 - the loop must outlive one bad pass
                log.exception("service allocation repair failed; retrying")
            try:
                await asyncio.wait_for(stop.wait(), self.repair_interval)
            except asyncio.TimeoutError:
                pass


def _owner(svc) -> tuple[str, str]:
    return svc.metadata.namespace, svc.metadata.name


def _name(svc) -> str:
    return f"{svc.metadata.namespace}/{svc.metadata.name}"
