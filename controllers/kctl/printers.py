"""How objects are printed: kubectl's tables per kind, and -o yaml|json|name.

A table's columns are kubectl's for that kind (``COLUMNS``); cells are
strings computed from the typed object. ``Table`` lays rows out as kubectl's
tabwriter does (cells padded by 3 spaces to at least 6 wide) and remembers its
column widths, so the rows ``get -w`` prints later line up with the first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import yaml

from apiserver import manifest, resources
from apiserver.resources import Resource
from apiserver.selectors import label_selector_from_proto
from controllers.kctl import kinds

CELL_PADDING = 3
CELL_MIN_WIDTH = 6
NONE = "<none>"
ROLE_LABEL_PREFIX = "node-role.kubernetes.io/"
ROLE_LABEL = "kubernetes.io/role"
MAX_ENDPOINTS_SHOWN = 3
UNSET = "<unset>"


# ---- time ----

def parse_time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """kubectl's short durations: 45s, 3m20s, 25m, 5h10m, 20h, 3d4h, 40d, 3y20d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def age(timestamp: str, now: datetime | None = None) -> str:
    t = parse_time(timestamp)
    if t is None:
        return "<unknown>"
    now = now or datetime.now(UTC)
    return human_duration((now - t).total_seconds())


# ---- cells per kind ----

def _labels_text(labels) -> str:
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels)) or NONE


def selector_text(selector) -> str:
    """A meta.v1.LabelSelector in kubectl's form ("app=web")."""
    return str(label_selector_from_proto(selector)) or NONE


def pod_state(pod) -> tuple[str, str, int]:
    """(READY "1/2", STATUS, RESTARTS) as kubectl computes them."""
    reason = pod.status.reason or pod.status.phase
    ready = restarts = 0
    running = False
    for cs in reversed(pod.status.container_statuses):
        restarts += cs.restart_count
        state = cs.state
        if state.waiting.reason:
            reason = state.waiting.reason
        elif state.HasField("terminated") and state.terminated.reason:
            reason = state.terminated.reason
        elif state.HasField("terminated"):
            reason = f"ExitCode:{state.terminated.exit_code}"
        elif cs.ready and state.HasField("running"):
            running = True
            ready += 1
    if reason == "Completed" and running:
        ready_condition = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
        reason = "Running" if ready_condition else "NotReady"
    if pod.metadata.deletion_timestamp:
        reason = "Unknown" if pod.status.reason == "NodeLost" else "Terminating"
    return f"{ready}/{len(pod.spec.containers)}", reason or "Unknown", restarts


def node_status(node) -> str:
    """"Ready", "NotReady" or "Unknown", with ",SchedulingDisabled"."""
    conditions = [c for c in node.status.conditions if c.type == "Ready"]
    if not conditions:
        status = "Unknown"
    else:
        status = "Ready" if conditions[-1].status == "True" else "NotReady"
    if node.spec.unschedulable:
        status += ",SchedulingDisabled"
    return status


def node_roles(node) -> str:
    roles = set()
    for key, value in node.metadata.labels.items():
        if key.startswith(ROLE_LABEL_PREFIX) and key[len(ROLE_LABEL_PREFIX):]:
            roles.add(key[len(ROLE_LABEL_PREFIX):])
        elif key == ROLE_LABEL and value:
            roles.add(value)
    return ",".join(sorted(roles)) or NONE


def _node_address(node, kind: str) -> str:
    return next((a.address for a in node.status.addresses if a.type == kind), NONE)


def service_ports(svc) -> str:
    parts = []
    for p in svc.spec.ports:
        port = f"{p.port}:{p.node_port}" if p.node_port else str(p.port)
        parts.append(f"{port}/{p.protocol or 'TCP'}")
    return ",".join(parts) or NONE


def service_external_ip(svc) -> str:
    """kubectl's EXTERNAL-IP: externalIPs, the load balancer's, or the external name."""
    spec = svc.spec
    kind = spec.type or "ClusterIP"
    if kind in ("ClusterIP", "NodePort"):
        return ",".join(spec.external_ips) or NONE
    if kind == "LoadBalancer":
        ips = [i.ip or i.hostname for i in svc.status.load_balancer.ingress]
        return ",".join([*spec.external_ips, *ips]) if ips else "<pending>"
    if kind == "ExternalName":
        return spec.external_name
    return "<unknown>"


def service_cluster_ip(svc) -> str:
    return (svc.spec.cluster_ips[0] if svc.spec.cluster_ips else svc.spec.cluster_ip) or NONE


def _with_more(shown: list[str], total: int) -> str:
    """kubectl's listWithMoreString: at most 3, then "+ N more..."."""
    if not shown:
        return UNSET
    more = total - len(shown)
    return ",".join(shown) + (f" + {more} more..." if more else "")


def endpoint_slice_ports(eps) -> str:
    shown = [str(p.port) if p.HasField("port") else (p.name or UNSET) for p in eps.ports[:MAX_ENDPOINTS_SHOWN]]
    return _with_more(shown, len(eps.ports))


def endpoint_slice_endpoints(eps) -> str:
    addresses = [a for ep in eps.endpoints for a in ep.addresses]
    return _with_more(addresses[:MAX_ENDPOINTS_SHOWN], len(addresses))


def endpoints_text(ep) -> str:
    shown, total = [], 0
    for subset in ep.subsets:
        ports = [p.port for p in subset.ports] or [None]
        for port in ports:
            for addr in subset.addresses:
                total += 1
                if len(shown) < MAX_ENDPOINTS_SHOWN:
                    shown.append(addr.ip if port is None else f"{addr.ip}:{port}")
    if not shown:
        return NONE
    more = total - len(shown)
    return ",".join(shown) + (f" + {more} more..." if more else "")


def ip_parent_ref(ip) -> str:
    """kubectl's PARENTREF of an IPAddress: group/resource/namespace/name."""
    r = ip.spec.parent_ref
    return f"{r.group}/{r.resource}/{r.namespace}/{r.name}" if r.name else NONE


_ACCESS_MODES = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX",
                 "ReadWriteOncePod": "RWOP"}
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"


def access_modes_text(modes) -> str:
    """kubectl's ACCESS MODES: RWO,ROX,RWX,RWOP in that order."""
    return ",".join(short for long, short in _ACCESS_MODES.items() if long in modes)


def pv_claim(pv) -> str:
    ref = pv.spec.claim_ref
    return f"{ref.namespace}/{ref.name}" if ref.name else ""


def storage_class_name(sc) -> str:
    default = sc.metadata.annotations.get(DEFAULT_CLASS_ANNOTATION) == "true"
    return sc.metadata.name + (" (default)" if default else "")


def _pvc_cells(c, now) -> list[str]:
    bound = c.status.phase == "Bound"
    return [c.metadata.name, c.status.phase, c.spec.volume_name,
            c.status.capacity.get("storage", "") if bound else "",
            access_modes_text(c.status.access_modes) if bound else "",
            c.spec.storage_class_name, UNSET, age(c.metadata.creation_timestamp, now)]


def _containers_and_images(spec) -> list[str]:
    return [",".join(c.name for c in spec.containers) or NONE,
            ",".join(c.image for c in spec.containers) or NONE]


def event_object(ev) -> str:
    ref = ev.involved_object
    return f"{ref.kind.lower()}/{ref.name}"


def event_last_seen(ev, now: datetime | None = None) -> str:
    return age(ev.last_timestamp or ev.event_time or ev.metadata.creation_timestamp, now)


@dataclass(frozen=True)
class Columns:
    headers: tuple[str, ...]
    cells: Callable  # (obj, now) -> list[str]
    wide_headers: tuple[str, ...] = ()
    wide_cells: Callable | None = None  # (obj) -> list[str]


def _pod_cells(p, now):
    ready, status, restarts = pod_state(p)
    return [p.metadata.name, ready, status, str(restarts), age(p.metadata.creation_timestamp, now)]


def _replicas(spec) -> int:
    return spec.replicas if spec.HasField("replicas") else 1


COLUMNS: dict[str, Columns] = {
    "pods": Columns(
        ("NAME", "READY", "STATUS", "RESTARTS", "AGE"), _pod_cells,
        ("IP", "NODE", "NOMINATED NODE"),
        lambda p: [p.status.pod_ip or NONE, p.spec.node_name or NONE,
                   p.status.nominated_node_name or NONE]),
    "deployments": Columns(
        ("NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"),
        lambda d, now: [d.metadata.name, f"{d.status.ready_replicas}/{_replicas(d.spec)}",
                        str(d.status.updated_replicas), str(d.status.available_replicas),
                        age(d.metadata.creation_timestamp, now)],
        ("CONTAINERS", "IMAGES", "SELECTOR"),
        lambda d: [*_containers_and_images(d.spec.template.spec), selector_text(d.spec.selector)]),
    "replicasets": Columns(
        ("NAME", "DESIRED", "CURRENT", "READY", "AGE"),
        lambda r, now: [r.metadata.name, str(_replicas(r.spec)), str(r.status.replicas),
                        str(r.status.ready_replicas), age(r.metadata.creation_timestamp, now)],
        ("CONTAINERS", "IMAGES", "SELECTOR"),
        lambda r: [*_containers_and_images(r.spec.template.spec), selector_text(r.spec.selector)]),
    "nodes": Columns(
        ("NAME", "STATUS", "ROLES", "AGE", "VERSION"),
        lambda n, now: [n.metadata.name, node_status(n), node_roles(n),
                        age(n.metadata.creation_timestamp, now),
                        n.status.node_info.kubelet_version or NONE],
        ("INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"),
        lambda n: [_node_address(n, "InternalIP"), _node_address(n, "ExternalIP"),
                   n.status.node_info.os_image or NONE, n.status.node_info.kernel_version or NONE,
                   n.status.node_info.container_runtime_version or NONE]),
    "services": Columns(
        ("NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"),
        lambda s, now: [s.metadata.name, s.spec.type or "ClusterIP", service_cluster_ip(s),
                        service_external_ip(s), service_ports(s),
                        age(s.metadata.creation_timestamp, now)],
        ("SELECTOR",),
        lambda s: [_labels_text(s.spec.selector)]),
    "endpoints": Columns(
        ("NAME", "ENDPOINTS", "AGE"),
        lambda e, now: [e.metadata.name, endpoints_text(e), age(e.metadata.creation_timestamp, now)]),
    "endpointslices": Columns(
        ("NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"),
        lambda e, now: [e.metadata.name, e.address_type, endpoint_slice_ports(e),
                        endpoint_slice_endpoints(e), age(e.metadata.creation_timestamp, now)]),
    "ipaddresses": Columns(
        ("NAME", "PARENTREF"),
        lambda i, now: [i.metadata.name, ip_parent_ref(i)]),
    "namespaces": Columns(
        ("NAME", "STATUS", "AGE"),
        lambda n, now: [n.metadata.name, n.status.phase or "Active",
                        age(n.metadata.creation_timestamp, now)]),
    "configmaps": Columns(
        ("NAME", "DATA", "AGE"),
        lambda c, now: [c.metadata.name, str(len(c.data) + len(c.binary_data)),
                        age(c.metadata.creation_timestamp, now)]),
    "secrets": Columns(
        ("NAME", "TYPE", "DATA", "AGE"),
        lambda s, now: [s.metadata.name, s.type or "Opaque", str(len(s.data)),
                        age(s.metadata.creation_timestamp, now)]),
    "events": Columns(
        ("LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"),
        lambda e, now: [event_last_seen(e, now), e.type, e.reason, event_object(e),
                        e.message.replace("\n", " ")],
        ("SUBOBJECT", "SOURCE", "FIRST SEEN", "COUNT", "NAME"),
        lambda e: [e.involved_object.field_path, e.source.component or e.reporting_component,
                   age(e.first_timestamp or e.event_time or e.metadata.creation_timestamp),
                   str(e.count or 1), e.metadata.name]),
    "persistentvolumes": Columns(
        ("NAME", "CAPACITY", "ACCESS MODES", "RECLAIM POLICY", "STATUS", "CLAIM", "STORAGECLASS",
         "VOLUMEATTRIBUTESCLASS", "REASON", "AGE"),
        lambda v, now: [v.metadata.name, v.spec.capacity.get("storage", ""),
                        access_modes_text(v.spec.access_modes), v.spec.persistent_volume_reclaim_policy,
                        v.status.phase, pv_claim(v), v.spec.storage_class_name, UNSET, v.status.reason,
                        age(v.metadata.creation_timestamp, now)],
        ("VOLUMEMODE",), lambda v: [v.spec.volume_mode]),
    "persistentvolumeclaims": Columns(
        ("NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS",
         "AGE"), _pvc_cells,
        ("VOLUMEMODE",), lambda c: [c.spec.volume_mode]),
    "storageclasses": Columns(
        ("NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE", "ALLOWVOLUMEEXPANSION", "AGE"),
        lambda s, now: [storage_class_name(s), s.provisioner, s.reclaim_policy or "Delete",
                        s.volume_binding_mode or "Immediate",
                        "true" if s.allow_volume_expansion else "false",
                        age(s.metadata.creation_timestamp, now)]),
    "leases": Columns(
        ("NAME", "HOLDER", "AGE"),
        lambda le, now: [le.metadata.name, le.spec.holder_identity,
                         age(le.metadata.creation_timestamp, now)]),
    "certificatesigningrequests": Columns(
        ("NAME", "AGE", "SIGNERNAME", "REQUESTOR", "REQUESTEDDURATION", "CONDITION"),
        lambda r, now: [r.metadata.name, age(r.metadata.creation_timestamp, now), r.spec.signer_name,
                        r.spec.username,
                        human_duration(r.spec.expiration_seconds) if r.spec.HasField("expiration_seconds") else NONE,
                        csr_condition(r)]),
}
# kubectl's default columns, for a kind without a printer of its own
DEFAULT_COLUMNS = Columns(("NAME", "AGE"), lambda o, now: [o.metadata.name, age(o.metadata.creation_timestamp, now)])


def csr_condition(csr) -> str:
    """Approved/Denied/Failed as its conditions say, Issued once it holds a certificate."""
    conditions = [c.type for c in csr.status.conditions]
    if csr.status.certificate:
        conditions.append("Issued")
    return ",".join(conditions) or "Pending"


# ---- tables ----

class Table:
    """Rows of one kind, laid out as kubectl's tabwriter does."""

    def __init__(self, res: Resource, *, wide: bool = False, namespaced_column: bool = False,
                 show_labels: bool = False, show_kind: bool = False,
                 event_column: bool = False) -> None:
        self.res = res
        self.columns = COLUMNS.get(res.name, DEFAULT_COLUMNS)
        self.wide = wide and self.columns.wide_cells is not None
        self.namespaced_column = namespaced_column and res.namespaced
        self.show_labels = show_labels
        self.show_kind = show_kind  # names as "deployment.apps/web", for several kinds at once
        self.event_column = event_column
        self.widths: list[int] = []

    def headers(self) -> list[str]:
        out = list(self.columns.headers)
        if self.wide:
            out += self.columns.wide_headers
        if self.show_labels:
            out.append("LABELS")
        if self.namespaced_column:
            out.insert(0, "NAMESPACE")
        if self.event_column:
            out.insert(0, "EVENT")
        return out

    def row(self, obj, now: datetime | None = None, event: str = "") -> list[str]:
        now = now or datetime.now(UTC)
        cells = list(self.columns.cells(obj, now))
        if self.show_kind and self.res.name != "events":
            cells[0] = kinds.ref(self.res, cells[0])
        if self.wide:
            cells += self.columns.wide_cells(obj)
        if self.show_labels:
            cells.append(_labels_text(obj.metadata.labels))
        if self.namespaced_column:
            cells.insert(0, obj.metadata.namespace)
        if self.event_column:
            cells.insert(0, event)
        return cells

    def render(self, rows: list[list[str]]) -> list[str]:
        """Lines for ``rows``; column widths only grow across calls."""
        for row in rows:
            if len(self.widths) < len(row):
                self.widths += [0] * (len(row) - len(self.widths))
            for i, cell in enumerate(row):
                self.widths[i] = max(self.widths[i], len(cell) + CELL_PADDING, CELL_MIN_WIDTH)
        lines = []
        for row in rows:
            padded = [cell.ljust(self.widths[i]) for i, cell in enumerate(row[:-1])]
            lines.append("".join(padded) + (row[-1] if row else ""))
        return lines


# ---- -o yaml|json|name ----

def as_list(items: list[dict]) -> dict:
    return {"apiVersion": "v1", "items": items, "kind": "List",
            "metadata": {"resourceVersion": ""}}


def to_yaml(data: dict) -> str:
    """Keys sorted, block style, as kubectl prints YAML."""
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True,
                          width=float("inf"))


def to_json(data: dict) -> str:
    return json.dumps(data, indent=4, ensure_ascii=False)


def write_objects(out: TextIO, objs: list, output: str, *, single: bool) -> None:
    """``objs`` as -o yaml/json (one object when ``single``, else a List) or name."""
    if output == "name":
        for obj in objs:
            print(kinds.ref(resources.of(obj), obj.metadata.name), file=out)
        return
    dicts = [manifest.to_dict(o) for o in objs]
    data = dicts[0] if single and len(dicts) == 1 else as_list(dicts)
    text = to_yaml(data) if output == "yaml" else to_json(data) + "\n"
    out.write(text)
    out.flush()
