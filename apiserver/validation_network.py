"""Validation of the discovery.k8s.io and networking.k8s.io kinds
(EndpointSlice, IPAddress), as pkg/apis/discovery/validation and
pkg/apis/networking/validation check them. ``validation`` registers these."""

from __future__ import annotations

import ipaddress

from apiserver.syntax import dns1123_label_errors, dns1123_subdomain_errors
from apiserver.validation_common import PORT_RANGE_MESSAGE, FieldErrors, _enum, _Raw
from apiserver.validation_pod import PROTOCOLS

ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")
MAX_ENDPOINTS = 1000
MAX_ADDRESSES = 100
MAX_PORTS = 20000


def _address_errors(address_type: str, address: str) -> list[str]:
    if address_type == "FQDN":
        return dns1123_subdomain_errors(address)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    if address_type == "IPv4" and (ip is None or ip.version != 4):
        return ["must be a valid IPv4 address"]
    if address_type == "IPv6" and (ip is None or ip.version != 6):
        return ["must be a valid IPv6 address"]
    return []


def validate_endpoint_slice(errs: FieldErrors, slice_) -> None:
    _enum(errs, "addressType", slice_.address_type, ADDRESS_TYPES)
    if len(slice_.endpoints) > MAX_ENDPOINTS:
        errs.add("endpoints", "FieldValueTooMany",
                 f"Too many: {len(slice_.endpoints)}: must have at most {MAX_ENDPOINTS} items")
    for i, ep in enumerate(slice_.endpoints):
        p = f"endpoints[{i}]"
        if not ep.addresses:
            errs.required(f"{p}.addresses", "must contain at least 1 address")
        elif len(ep.addresses) > MAX_ADDRESSES:
            errs.add(f"{p}.addresses", "FieldValueTooMany",
                     f"Too many: {len(ep.addresses)}: must have at most {MAX_ADDRESSES} items")
        if slice_.address_type in ADDRESS_TYPES:
            for j, address in enumerate(ep.addresses):
                errs.each(f"{p}.addresses[{j}]", address, _address_errors(slice_.address_type, address))
        if ep.HasField("hostname"):
            errs.each(f"{p}.hostname", ep.hostname, dns1123_label_errors(ep.hostname))
        if ep.HasField("node_name"):
            errs.each(f"{p}.nodeName", ep.node_name, dns1123_subdomain_errors(ep.node_name))
    if len(slice_.ports) > MAX_PORTS:
        errs.add("ports", "FieldValueTooMany", f"Too many: {len(slice_.ports)}: must have at most {MAX_PORTS} items")
    names = set()
    for i, port in enumerate(slice_.ports):
        p = f"ports[{i}]"
        if port.HasField("name") and port.name:
            errs.each(f"{p}.name", port.name, dns1123_label_errors(port.name))
        if port.name in names:
            errs.duplicate(f"{p}.name", port.name)
        names.add(port.name)
        if not port.HasField("protocol"):
            errs.required(f"{p}.protocol")
        else:
            _enum(errs, f"{p}.protocol", port.protocol, PROTOCOLS)
        if port.HasField("port") and not 0 <= port.port <= 65535:
            errs.invalid(f"{p}.port", port.port, PORT_RANGE_MESSAGE)


def validate_endpoint_slice_update(errs: FieldErrors, new, old) -> None:
    if new.address_type != old.address_type:
        errs.invalid("addressType", new.address_type, "field is immutable")


def validate_ip_address(errs: FieldErrors, ip) -> None:
    name = ip.metadata.name
    try:
        canonical = str(ipaddress.ip_address(name))
    except ValueError:
        canonical = None
    if canonical is None:
        errs.invalid("metadata.name", name, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")
    elif canonical != name:
        errs.invalid("metadata.name", name, f"must be in canonical form ({canonical!r})")
    ref = ip.spec.parent_ref
    if not ref.ByteSize():
        errs.required("spec.parentRef")
        return
    if not ref.resource:
        errs.required("spec.parentRef.resource")
    if not ref.name:
        errs.required("spec.parentRef.name")
    if ref.namespace:
        errs.each("spec.parentRef.namespace", ref.namespace, dns1123_label_errors(ref.namespace))


def validate_ip_address_update(errs: FieldErrors, new, old) -> None:
    if new.spec.parent_ref != old.spec.parent_ref:
        r = new.spec.parent_ref
        errs.invalid("spec.parentRef", _Raw(f"{{{r.group} {r.resource} {r.namespace} {r.name}}}"),
                     "field is immutable")
