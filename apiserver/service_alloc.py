"""ClusterIPs and NodePorts of Services, allocated as kube-apiserver does
(pkg/registry/core/service: the strategy's field rules, storage/alloc.go, the
IP and port allocators), kept in etcd beside the Services.

How allocations are kept: one record per allocated value, written in the
same etcd Txn as the Service (``storage.Claims``). An IP is an IPAddress
object (networking.k8s.io/v1, as Kubernetes since 1.33 keeps them, named by
the address, its parentRef the Service); a NodePort is a record at
``/registry/servicenodeports/<port>`` naming its Service (upstream keeps
ports in one bitmap, a RangeAllocation; there is no kind for one port). Why
records rather than upstream's older bitmap: the Service and its allocations
commit together or not at all, so a crashed apiserver cannot leak an
allocation or write a Service whose address is not held; two creates that
want the same value meet on that one key (exactly one Txn wins); creates for
different values never conflict; and a write is a few hundred bytes, where a
/12 bitmap is 128 KiB rewritten on every allocation. The repair loop
(``service_repair``) still checks both sides, as upstream's do.

The field rules that come before allocation (clusterIPs, ipFamilies, type
changes) are in ``service_fields``.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from apiserver import errors, resources
from apiserver.pb import networking_pb2
from apiserver.resources import REGISTRY_PREFIX
from apiserver.service_fields import (
    _go_strings,
    allocates_node_ports,
    drop_type_dependent_fields,
    init_ip_family_fields,
    is_external_name,
    is_headless,
    needs_health_check_node_port,
    needs_node_ports,
    normalize_cluster_ips,
    patch_allocated_values,
    service_ips,
    service_node_ports,
)
from apiserver.service_ranges import PortRange, RangeError, ServiceCIDR
from apiserver.storage import Claims, Storage
from apiserver.validation_common import FieldErrors

SERVICES = resources.BY_NAME["services"]
IPADDRESSES = resources.BY_NAME["ipaddresses"]
NODE_PORT_PREFIX = REGISTRY_PREFIX + "servicenodeports/"
IP_FAMILY_LABEL = "ipaddress.kubernetes.io/ip-family"
MANAGED_BY_LABEL = "ipaddress.kubernetes.io/managed-by"
MANAGED_BY = "ipallocator.k8s.io"
ALLOCATION_ATTEMPTS = 10


def ip_key(ip: str) -> bytes:
    return IPADDRESSES.key("", ip).encode()


def port_key(port: int) -> bytes:
    return f"{NODE_PORT_PREFIX}{port}".encode()


def port_record(namespace: str, name: str) -> bytes:
    return json.dumps({"namespace": namespace, "name": name}, sort_keys=True).encode()


def port_owner(value: bytes) -> tuple[str, str] | None:
    try:
        rec = json.loads(value)
        return rec["namespace"], rec["name"]
    except (ValueError, KeyError, TypeError):
        return None


def ip_owner(ip: networking_pb2.IPAddress) -> tuple[str, str] | None:
    ref = ip.spec.parent_ref
    if ref.resource != "services" or ref.group:
        return None
    return ref.namespace, ref.name


# ---- allocation: the records a write takes and frees ----

@dataclass
class Plan:
    """The claims of one write, and for each value the user asked for, the
    field error to answer with if another Service holds it."""
    claims: Claims = field(default_factory=Claims)
    requested: dict[bytes, tuple[str, object, str]] = field(default_factory=dict)

    def raise_if_requested(self, name: str, taken: set[bytes]) -> None:
        errs = FieldErrors()
        for key in sorted(taken):
            if key in self.requested:
                path, value, detail = self.requested[key]
                errs.invalid(path, value, detail)
        errs.raise_if_any(SERVICES.kind, name)


class _Taken:
    """Addresses (or ports) known to be held: the IPAddress watch cache or a
    read of the port records, plus what a failed Txn just found."""

    def __init__(self, held, avoid: set) -> None:
        self.held, self.avoid = held, avoid

    def __contains__(self, value) -> bool:
        return value in self.avoid or self.held(value)


class ServiceAllocator:
    """Plans a Service's allocations; the registry writes them with the Service."""

    def __init__(self, storage: Storage, ip_cache, cidr: ServiceCIDR, node_ports: PortRange,
                 rng: random.Random | None = None) -> None:
        self.storage = storage
        self.ip_cache = ip_cache  # the ipaddresses WatchCache
        self.cidr = cidr
        self.node_ports = node_ports
        self.rng = rng or random.Random()

    # ---- before validation ----

    def prepare_create(self, svc) -> None:
        normalize_cluster_ips(svc, None)
        init_ip_family_fields(svc, None)

    def prepare_update(self, new, old) -> None:
        normalize_cluster_ips(new, old)
        patch_allocated_values(new, old)
        drop_type_dependent_fields(new, old)
        init_ip_family_fields(new, old)

    # ---- records ----

    def ip_record(self, svc, ip: str) -> bytes:
        rec = networking_pb2.IPAddress()
        rec.metadata.name = ip
        rec.metadata.uid = str(uuid.uuid4())
        rec.metadata.generation = 1
        rec.metadata.creation_timestamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        rec.metadata.labels[IP_FAMILY_LABEL] = "IPv4"
        rec.metadata.labels[MANAGED_BY_LABEL] = MANAGED_BY
        ref = rec.spec.parent_ref
        ref.resource, ref.namespace, ref.name = "services", svc.metadata.namespace, svc.metadata.name
        key = ip_key(ip)
        return self.storage.encode(IPADDRESSES, key, rec)

    def _ip_held(self, avoid: set[bytes]) -> _Taken:
        avoided = {k.decode()[len(IPADDRESSES.prefix()):] for k in avoid}
        return _Taken(lambda ip: self.ip_cache.get("", ip) is not None, avoided)

    async def _ports_held(self, avoid: set[bytes]) -> _Taken:
        [kvs], _ = await self.storage.read_prefixes([NODE_PORT_PREFIX.encode()], keys_only=True)
        held = {int(kv.key[len(NODE_PORT_PREFIX):]) for kv in kvs if kv.key[len(NODE_PORT_PREFIX):].isdigit()}
        avoided = {int(k[len(NODE_PORT_PREFIX):]) for k in avoid if k.startswith(NODE_PORT_PREFIX.encode())}
        return _Taken(held.__contains__, avoided)

    def _take_ip(self, plan: Plan, svc, ip: str, requested: bool) -> None:
        key = ip_key(ip)
        plan.claims.take[key] = self.ip_record(svc, ip)
        if requested:
            plan.requested[key] = ("spec.clusterIPs", _go_strings(svc.spec.cluster_ips),
                                   f"failed to allocate IP {ip}: provided IP is already allocated")

    async def _allocate_ips(self, plan: Plan, svc, avoid: set[bytes], old_ips: list[str]) -> None:
        spec = svc.spec
        if is_external_name(spec) or is_headless(spec):
            return
        if not spec.cluster_ips:
            try:
                ip = self.cidr.pick(self._ip_held(avoid), self.rng)
            except RangeError:
                # the watch cache may not have seen a release yet: ask etcd before saying full
                [kvs], _ = await self.storage.read_prefixes([IPADDRESSES.prefix().encode()], keys_only=True)
                held = {kv.key.decode()[len(IPADDRESSES.prefix()):] for kv in kvs}
                try:
                    ip = self.cidr.pick(_Taken(held.__contains__, self._ip_held(avoid).avoid), self.rng)
                except RangeError as e:
                    raise errors.internal(f"failed to allocate a serviceIP: {e}") from None
            spec.cluster_ip = ip
            spec.cluster_ips.append(ip)
            self._take_ip(plan, svc, ip, requested=False)
            return
        ip = spec.cluster_ips[0]
        if ip in old_ips:
            return
        fail = ("spec.clusterIPs", _go_strings(spec.cluster_ips))
        try:
            self.cidr.check(ip)
        except RangeError as e:
            raise errors.invalid(SERVICES.kind, svc.metadata.name,
                                 [self._cause(*fail, f"failed to allocate IP {ip}: {e}")]) from None
        held = self.ip_cache.get("", ip) is not None or ip_key(ip) in avoid
        if held:  # the cache may lag a release: etcd decides
            held = bool(await self.storage.read_keys([ip_key(ip)]))
        if held:
            raise errors.invalid(SERVICES.kind, svc.metadata.name, [self._cause(
                *fail, f"failed to allocate IP {ip}: provided IP is already allocated")])
        self._take_ip(plan, svc, ip, requested=True)

    @staticmethod
    def _cause(path: str, value, detail: str) -> tuple[str, str, str]:
        errs = FieldErrors()
        errs.invalid(path, value, detail)
        return errs.causes[0]

    async def _allocate_node_ports(self, plan: Plan, svc, avoid: set[bytes], old_ports: list[int]) -> None:
        spec = svc.spec
        wanted = needs_node_ports(spec) and (allocates_node_ports(spec) or any(p.node_port for p in spec.ports))
        hc = needs_health_check_node_port(spec)
        todo = hc and spec.health_check_node_port not in old_ports
        if wanted:
            todo = todo or any(p.node_port not in old_ports if p.node_port else allocates_node_ports(spec)
                               for p in spec.ports)
        if not todo:
            return
        held = await self._ports_held(avoid)
        record = port_record(svc.metadata.namespace, svc.metadata.name)
        errs = FieldErrors()
        mine: dict[int, int] = {}  # service port -> node port, so TCP and UDP of one port share it
        claimed = set(old_ports)

        def claim(path: str, port: int) -> None:
            if port in claimed:
                return
            try:
                self.node_ports.check(port)
            except RangeError as e:
                errs.invalid(path, port, str(e))
                return
            if port in held:
                errs.invalid(path, port, "provided port is already allocated")
                return
            key = port_key(port)
            plan.claims.take[key] = record
            plan.requested[key] = (path, port, "provided port is already allocated")
            claimed.add(port)

        def pick() -> int:
            try:
                port = self.node_ports.pick(_Taken(lambda p: p in held or p in claimed, set()), self.rng)
            except RangeError as e:
                raise errors.internal(f"failed to allocate a nodePort: {e}") from None
            plan.claims.take[port_key(port)] = record
            claimed.add(port)
            return port

        if wanted:
            for i, p in enumerate(spec.ports):
                if p.node_port:
                    claim(f"spec.ports[{i}].nodePort", p.node_port)
                    mine.setdefault(p.port, p.node_port)
                elif allocates_node_ports(spec):
                    same = mine.get(p.port) or next(
                        (q.node_port for q in spec.ports[i + 1:] if q.port == p.port and q.node_port), 0)
                    p.node_port = same or pick()
                    mine[p.port] = p.node_port
        if hc:
            if spec.health_check_node_port:
                claim("spec.healthCheckNodePort", spec.health_check_node_port)
            else:
                spec.health_check_node_port = pick()
        errs.raise_if_any(SERVICES.kind, svc.metadata.name)

    async def _frees(self, svc, ips: list[str], ports: list[int]) -> dict[bytes, int]:
        """key -> mod_revision of those of ``ips`` and ``ports`` that ``svc`` really holds."""
        owner = (svc.metadata.namespace, svc.metadata.name)
        kvs = await self.storage.read_keys([ip_key(ip) for ip in ips] + [port_key(p) for p in ports])
        out = {}
        for key, kv in kvs.items():
            if key.startswith(NODE_PORT_PREFIX.encode()):
                held_by = port_owner(kv.value)
            else:
                try:
                    held_by = ip_owner(self.storage.decode(IPADDRESSES, key, kv.value, kv.mod_revision))
                except errors.ApiError:
                    held_by = None
            if held_by == owner:
                out[key] = kv.mod_revision
        return out

    # ---- entry points ----

    async def plan_create(self, svc, avoid: set[bytes]) -> Plan:
        """Fills in clusterIP(s) and nodePorts; the claims to write with ``svc``."""
        plan = Plan()
        await self._allocate_ips(plan, svc, avoid, [])
        await self._allocate_node_ports(plan, svc, avoid, [])
        return plan

    async def plan_update(self, new, old, avoid: set[bytes]) -> Plan:
        plan = Plan()
        old_ips, old_ports = service_ips(old.spec), service_node_ports(old.spec)
        if not is_external_name(new.spec) and not is_headless(new.spec) and (
                is_external_name(old.spec) or not old_ips):
            # from ExternalName, or a Service stored before it had an address
            await self._allocate_ips(plan, new, avoid, [])
        await self._allocate_node_ports(plan, new, avoid, old_ports)
        gone_ips = [ip for ip in old_ips if ip not in service_ips(new.spec)]
        gone_ports = [p for p in old_ports if p not in service_node_ports(new.spec)]
        plan.claims.free.update(await self._frees(old, gone_ips, gone_ports))
        return plan

    async def plan_delete(self, old) -> Plan:
        plan = Plan()
        plan.claims.free.update(await self._frees(old, service_ips(old.spec), service_node_ports(old.spec)))
        return plan
