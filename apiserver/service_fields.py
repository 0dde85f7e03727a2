"""The Service fields kube-apiserver's strategy sets before validation and
allocation: which Services need an address or node ports, clusterIP and
clusterIPs kept as one value, allocated values kept across an update that
leaves them out, fields a type change makes useless cleared, and the
single-stack IPv4 rules of ipFamilies/ipFamilyPolicy (upstream's
NormalizeClusterIPs, patchAllocatedValues, dropTypeDependentFields and
initIPFamilyFields for a cluster with one IPv4 range).
"""

from __future__ import annotations

import ipaddress
import json

from apiserver import resources
from apiserver.validation_common import FieldErrors, _Raw

SERVICES = resources.BY_NAME["services"]
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
