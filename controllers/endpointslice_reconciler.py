"""What the EndpointSlices of one Service should become: the pure half of the
EndpointSlice controller (upstream's staging endpointslice reconciler).

Endpoints are built per pod (``desired_endpoints``) and grouped by the ports
they resolve to; ``reconcile`` turns the Service's current slices and the
desired groups into creates, updates and deletes, changing as few slices as
it can: an endpoint stays in the slice that holds it while it is wanted (an
update in place when its conditions change), slices that lose endpoints
take the new ones first, then slices with room, then new slices of at most
``max_per_slice`` (100, upstream's --max-endpoints-per-slice default). A
Service with no endpoints keeps one empty "placeholder" slice, as upstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apiserver.pb import discovery_pb2, meta_pb2
from controllers.endpoints import resolve_target_port
from controllers.podutil import is_pod_ready

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
HEADLESS_LABEL = "service.kubernetes.io/headless"
ZONE_LABEL = "topology.kubernetes.io/zone"
MAX_ENDPOINTS_PER_SLICE = 100

PortKey = tuple  # ((name, port, protocol, appProtocol), ...) sorted


def in_slices(pod) -> bool:
    """A pod that has an endpoint at all: it has an IP and has not finished.
    Terminating pods stay, with terminating=true (upstream since 1.26)."""
    return bool(pod.status.pod_ip) and pod.status.phase not in ("Succeeded", "Failed")


def endpoint_of(service, pod, node_zone: str = "") -> discovery_pb2.Endpoint:
    serving = is_pod_ready(pod)
    terminating = bool(pod.metadata.deletion_timestamp)
    ep = discovery_pb2.Endpoint(addresses=[pod.status.pod_ip])
    ep.conditions.ready = service.spec.publish_not_ready_addresses or (serving and not terminating)
    ep.conditions.serving = serving
    ep.conditions.terminating = terminating
    ep.target_ref.CopyFrom(meta_pb2.ObjectReference(
        kind="Pod", namespace=pod.metadata.namespace, name=pod.metadata.name, uid=pod.metadata.uid))
    if pod.spec.node_name:
        ep.node_name = pod.spec.node_name
    if node_zone:
        ep.zone = node_zone
    if pod.spec.hostname and pod.spec.subdomain == service.metadata.name:
        ep.hostname = pod.spec.hostname
    return ep


def endpoint_ports(service, pod) -> PortKey | None:
    """The ports this pod serves the Service's ports on; None when a Service
    with ports finds none of them on the pod (it is left out)."""
    ports = []
    for sp in service.spec.ports:
        number = resolve_target_port(sp, pod)
        if number is not None:
            ports.append((sp.name, number, sp.protocol or "TCP", sp.app_protocol if sp.HasField("app_protocol") else None))
    if service.spec.ports and not ports:
        return None
    return tuple(sorted(ports, key=lambda p: (p[0], p[1], p[2])))


def desired_endpoints(service, pods, zones: dict[str, str] | None = None) -> dict[PortKey, list]:
    """port set -> [Endpoint], for the pods the Service selects (already filtered by selector)."""
    zones = zones or {}
    groups: dict[PortKey, list] = {}
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        if not in_slices(pod):
            continue
        key = endpoint_ports(service, pod)
        if key is None:
            continue
        groups.setdefault(key, []).append(endpoint_of(service, pod, zones.get(pod.spec.node_name, "")))
    return groups


def slice_ports(slice_) -> PortKey:
    return tuple(sorted(((p.name, p.port, p.protocol, p.app_protocol if p.HasField("app_protocol") else None)
                         for p in slice_.ports), key=lambda p: (p[0], p[1], p[2])))


def _identity(ep) -> tuple:
    """What makes two endpoints the same one: the pod (or, without one, the addresses)."""
    if ep.target_ref.uid or ep.target_ref.name:
        return ("pod", ep.target_ref.namespace, ep.target_ref.name, ep.target_ref.uid)
    return ("addresses", tuple(ep.addresses))


def _port_messages(key: PortKey) -> list:
    out = []
    for name, port, protocol, app in key:
        p = discovery_pb2.EndpointPort(name=name, port=port, protocol=protocol)
        if app is not None:
            p.app_protocol = app
        out.append(p)
    return out


@dataclass
class Changes:
    """Slices to create (no name yet: generateName), update (changed copies
    of existing ones) and delete."""
    create: list = field(default_factory=list)
    update: list = field(default_factory=list)
    delete: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.create or self.update or self.delete)


def reconcile(existing: list, desired: dict[PortKey, list], new_slice,
              max_per_slice: int = MAX_ENDPOINTS_PER_SLICE, *, placeholder: bool = True) -> Changes:
    """``existing``: this Service's slices (not modified); ``new_slice()``: an
    empty slice with this Service's metadata; see the module docstring.
    ``placeholder``: keep an empty slice when nothing is desired (the
    mirroring controller keeps none)."""
    changes = Changes()
    if not desired and not placeholder:
        changes.delete = list(existing)
        return changes
    if not desired:
        # one empty placeholder keeps "this Service has no endpoints" visible
        keep = next((s for s in existing if not s.endpoints and not s.ports), None)
        changes.delete = [s for s in existing if s is not keep]
        if keep is None:
            changes.create.append(new_slice())
        return changes
    by_ports: dict[PortKey, list] = {}
    for s in existing:
        by_ports.setdefault(slice_ports(s), []).append(s)
    for key, slices in by_ports.items():
        if key not in desired:
            changes.delete.extend(slices)
    for key, wanted in desired.items():
        _reconcile_ports(changes, key, by_ports.get(key, []), wanted, new_slice, max_per_slice)
    return changes


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _reconcile_ports(changes: Changes, key: PortKey, slices: list, wanted: list, new_slice,
                     max_per_slice: int) -> None:
    want = {_identity(ep): ep for ep in wanted}
    placed: set = set()
    work = []  # [original, copy, changed]
    for s in slices:
        copy = _copy(s)
        del copy.endpoints[:]
        changed = False
        for ep in s.endpoints:
            ident = _identity(ep)
            target = want.get(ident)
            if target is None or ident in placed or len(copy.endpoints) >= max_per_slice:
                changed = True
                continue
            copy.endpoints.append(target)
            placed.add(ident)
            changed = changed or target != ep
        work.append([s, copy, changed])
    missing = [ep for ident, ep in want.items() if ident not in placed]
    # slices already being written take new endpoints first, then any with room
    for take_unchanged in (False, True):
        for item in work:
            _, copy, changed = item
            if changed == take_unchanged:
                continue
            while missing and len(copy.endpoints) < max_per_slice:
                copy.endpoints.append(missing.pop(0))
                item[2] = True
    for original, copy, changed in work:
        if not changed:
            continue
        if copy.endpoints:
            changes.update.append(copy)
        else:
            changes.delete.append(original)
    while missing:
        s = new_slice()
        s.ports.extend(_port_messages(key))
        s.endpoints.extend(missing[:max_per_slice])
        del missing[:max_per_slice]
        changes.create.append(s)
