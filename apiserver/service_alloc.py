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

The single-stack IPv4 rules of ipFamilies/ipFamilyPolicy/clusterIPs are
upstream's initIPFamilyFields for a cluster with one IPv4 range.
"""

from __future__ import annotations

import ipaddress
import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from apiserver import errors, resources
from apiserver.pb import networking_pb2
from apiserver.resources import REGISTRY_PREFIX
from apiserver.service_ranges import PortRange, RangeError, ServiceCIDR
from apiserver.storage import Claims, Storage
from apiserver.validation import FieldErrors, _Raw

SERVICES = resources.BY_NAME["services"]
IPADDRESSES = resources.BY_NAME["ipaddresses"]
NODE_PORT_PREFIX = REGISTRY_PREFIX + "servicenodeports/"
IP_FAMILY_LABEL = "ipaddress.kubernetes.io/ip-family"
MANAGED_BY_LABEL = "ipaddress.kubernetes.io/managed-by"
MANAGED_BY = "ipallocator.k8s.io"
ALLOCATION_ATTEMPTS = 10

IP_FAMILIES = ("IPv4", "IPv6")
IP_FAMILY_POLICIES = ("PreferDualStack", "RequireDualStack", "SingleStack")


# ---- what a Service needs ----

def is_external_name(spec) -> bool:
    return spec.type == "ExternalName"


def is_headless(spec) -> bool:
    return len(spec.cluster_ips) == 1 and spec.cluster_ips[0] == "None" or spec.cluster_ip == "None"


def needs_node_ports(spec) -> bool:
    return spec.type in ("NodePort", "LoadBalancer")


def allocates_node_ports(spec) -> bool:
    """NodePort always; LoadBalancer unless allocateLoadBalancerNodePorts is false."""
    if spec.type == "NodePort":
        return True
    return spec.type == "LoadBalancer" and (
        not spec.HasField("allocate_load_balancer_node_ports") or spec.allocate_load_balancer_node_ports)


def needs_health_check_node_port(spec) -> bool:
    return spec.type == "LoadBalancer" and spec.external_traffic_policy == "Local"


def service_ips(spec) -> list[str]:
    """The addresses a Service holds (none for ExternalName and headless ones)."""
    if is_external_name(spec):
        return []
    return [ip for ip in spec.cluster_ips if ip and ip != "None"]


def service_node_ports(spec) -> list[int]:
    """The node ports a Service holds (one number may serve a TCP and a UDP port)."""
    out = []
    for p in spec.ports:
        if p.node_port and p.node_port not in out:
            out.append(p.node_port)
    if spec.health_check_node_port and spec.health_check_node_port not in out:
        out.append(spec.health_check_node_port)
    return out


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


def _go_strings(values) -> _Raw:
    """A []string as Go's %#v prints it in field errors."""
    return _Raw("[]string{" + ", ".join(json.dumps(v) for v in values) + "}")


def _same(a, b, field_name: str) -> bool:
    return list(getattr(a.spec, field_name)) == list(getattr(b.spec, field_name))


# ---- the strategy: field rules before validation ----

def normalize_cluster_ips(new, old) -> None:
    """clusterIP and clusterIPs[0] are one value: fill the one a client left out."""
    spec = new.spec
    if old is None:
        if spec.cluster_ip and not spec.cluster_ips:
            spec.cluster_ips.append(spec.cluster_ip)
        return
    if old.spec.cluster_ips and not spec.cluster_ips and old.spec.cluster_ip == spec.cluster_ip:
        spec.cluster_ips.extend(old.spec.cluster_ips)
    if old.spec.cluster_ip != spec.cluster_ip:
        if old.spec.cluster_ip and not spec.cluster_ip:
            if _same(old, new, "cluster_ips"):
                del spec.cluster_ips[:]
        elif _same(old, new, "cluster_ips"):
            del spec.cluster_ips[:]
            spec.cluster_ips.append(spec.cluster_ip)


def patch_allocated_values(new, old) -> None:
    """An update that leaves out what was allocated (a client that sends
    what it wrote, not what it read) keeps it, as upstream's REST does."""
    spec, before = new.spec, old.spec
    if not is_external_name(before) and not is_external_name(spec):
        if not spec.cluster_ip and not spec.cluster_ips:
            spec.cluster_ip = before.cluster_ip
            spec.cluster_ips.extend(before.cluster_ips)
        if not spec.ip_families:
            spec.ip_families.extend(before.ip_families)
        if not spec.HasField("ip_family_policy") and before.HasField("ip_family_policy"):
            spec.ip_family_policy = before.ip_family_policy
    if needs_node_ports(before) and needs_node_ports(spec):
        used = set(service_node_ports(before)) & {p.node_port for p in spec.ports if p.node_port}
        by_name = {p.name: p.node_port for p in before.ports}
        for p in spec.ports:
            if not p.node_port and by_name.get(p.name) and by_name[p.name] not in used:
                p.node_port = by_name[p.name]
    if needs_health_check_node_port(before) and needs_health_check_node_port(spec):
        if not spec.health_check_node_port:
            spec.health_check_node_port = before.health_check_node_port


def drop_type_dependent_fields(new, old) -> None:
    """A type change clears what the new type has no use for, where the
    client left it as it was (a value it changed goes to validation)."""
    spec, before = new.spec, old.spec
    if not is_external_name(before) and is_external_name(spec):
        if _same(old, new, "cluster_ips") and spec.cluster_ip == before.cluster_ip:
            spec.cluster_ip = ""
            del spec.cluster_ips[:]
        if _same(old, new, "ip_families"):
            del spec.ip_families[:]
        if spec.HasField("ip_family_policy") == before.HasField("ip_family_policy") and \
                spec.ip_family_policy == before.ip_family_policy:
            spec.ClearField("ip_family_policy")
    if needs_node_ports(before) and not needs_node_ports(spec) and \
            [p.node_port for p in spec.ports] == [p.node_port for p in before.ports][:len(spec.ports)]:
        for p in spec.ports:
            p.node_port = 0
    if needs_health_check_node_port(before) and not needs_health_check_node_port(spec) and \
            spec.health_check_node_port == before.health_check_node_port:
        spec.health_check_node_port = 0
    if spec.type != "LoadBalancer" and spec.HasField("allocate_load_balancer_node_ports") and \
            before.HasField("allocate_load_balancer_node_ports") and \
            spec.allocate_load_balancer_node_ports == before.allocate_load_balancer_node_ports:
        spec.ClearField("allocate_load_balancer_node_ports")
    if not needs_node_ports(spec) and spec.external_traffic_policy == before.external_traffic_policy:
        spec.external_traffic_policy = ""


def _cluster_ip_field_errors(errs: FieldErrors, spec) -> bool:
    """Upstream's ValidateServiceClusterIPsRelatedFields; True when an IP is malformed."""
    if spec.cluster_ip:
        if not spec.cluster_ips:
            errs.required("spec.clusterIPs")
        elif spec.cluster_ips[0] != spec.cluster_ip:
            errs.invalid("spec.clusterIPs", _go_strings(spec.cluster_ips), "first value must match `clusterIP`")
    elif spec.cluster_ips:
        errs.invalid("spec.clusterIPs", _go_strings(spec.cluster_ips),
                     "must be empty when `clusterIP` is not specified")
    seen = set()
    for i, family in enumerate(spec.ip_families):
        if family not in IP_FAMILIES:
            errs.not_supported(f"spec.ipFamilies[{i}]", family, IP_FAMILIES)
        if family in seen:
            errs.duplicate(f"spec.ipFamilies[{i}]", family)
        seen.add(family)
    if spec.HasField("ip_family_policy") and spec.ip_family_policy not in IP_FAMILY_POLICIES:
        errs.not_supported("spec.ipFamilyPolicy", spec.ip_family_policy, IP_FAMILY_POLICIES)
    bad = False
    for i, ip in enumerate(spec.cluster_ips):
        if i == 0 and ip == "None":
            if len(spec.cluster_ips) > 1:
                bad = True
                errs.invalid("spec.clusterIPs", _go_strings(spec.cluster_ips),
                             "'None' must be the first and only value")
            continue
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            bad = True
            errs.invalid(f"spec.clusterIPs[{i}]", ip,
                         "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")
    if len(spec.cluster_ips) > 2:
        errs.invalid("spec.clusterIPs", _go_strings(spec.cluster_ips), "may only hold up to 2 values")
    if bad:
        return True
    if len(spec.cluster_ips) == 2 and "None" not in spec.cluster_ips:
        if {ipaddress.ip_address(ip).version for ip in spec.cluster_ips} != {4, 6}:
            errs.invalid("spec.clusterIPs", _go_strings(spec.cluster_ips),
                         "may specify no more than one IP for each IP family")
    if not is_headless(spec):
        for i, (ip, family) in enumerate(zip(spec.cluster_ips, spec.ip_families)):
            v6 = ipaddress.ip_address(ip).version == 6
            if family == "IPv4" and v6:
                errs.invalid(f"spec.clusterIPs[{i}]", ip, f"expected an IPv4 value as indicated by `ipFamilies[{i}]`")
            if family == "IPv6" and not v6:
                errs.invalid(f"spec.clusterIPs[{i}]", ip, f"expected an IPv6 value as indicated by `ipFamilies[{i}]`")
    return False


def init_ip_family_fields(svc, old) -> None:
    """ipFamilyPolicy, ipFamilies and the clusterIPs' families for this
    single-stack IPv4 cluster; Invalid with upstream's messages."""
    spec = svc.spec
    if is_external_name(spec):
        return
    if not spec.HasField("ip_family_policy"):
        if old is not None and old.spec.HasField("ip_family_policy"):
            spec.ip_family_policy = old.spec.ip_family_policy
        elif spec.cluster_ip == "None" and not spec.selector:
            spec.ip_family_policy = "RequireDualStack"
        else:
            spec.ip_family_policy = "SingleStack"
    errs = FieldErrors()
    _cluster_ip_field_errors(errs, spec)
    errs.raise_if_any(SERVICES.kind, svc.metadata.name)
    policy = spec.ip_family_policy
    if old is not None and policy == "SingleStack":
        if _same(old, svc, "cluster_ips") and len(spec.cluster_ips) > 1:
            del spec.cluster_ips[1:]
        if _same(old, svc, "ip_families") and len(spec.ip_families) > 1:
            del spec.ip_families[1:]
    if policy == "SingleStack":
        if len(spec.cluster_ips) == 2:
            errs.invalid("spec.ipFamilyPolicy", policy,
                         "must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified")
        if len(spec.ip_families) == 2:
            errs.invalid("spec.ipFamilyPolicy", policy,
                         "must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified")
    for i, ip in enumerate(spec.cluster_ips):
        if ip == "None":
            break
        family = "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
        if i >= len(spec.ip_families):
            if family != "IPv4":
                errs.invalid(f"spec.clusterIPs[{i}]", _go_strings(spec.cluster_ips),
                             f"{family} is not configured on this cluster")
            else:
                spec.ip_families.append(family)
    errs.raise_if_any(SERVICES.kind, svc.metadata.name)
    if spec.cluster_ip == "None" and not spec.selector:
        # headless and selectorless: any family goes, the DNS answers what the Endpoints hold
        if not spec.ip_families:
            spec.ip_families.append("IPv4")
        if len(spec.ip_families) < 2 and policy != "SingleStack":
            spec.ip_families.append("IPv6" if spec.ip_families[0] == "IPv4" else "IPv4")
        return
    if policy == "RequireDualStack":
        errs.invalid("spec.ipFamilyPolicy", policy, "this cluster is not configured for dual-stack services")
    for i, family in enumerate(spec.ip_families):
        if family != "IPv4":
            errs.invalid(f"spec.ipFamilies[{i}]", family, "not configured on this cluster")
    errs.raise_if_any(SERVICES.kind, svc.metadata.name)
    if not spec.ip_families:
        spec.ip_families.append("IPv4")


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
