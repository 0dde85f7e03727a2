"""``describe KIND NAME``: a readable summary of one object, its conditions,
the objects around it (a Deployment's ReplicaSets, a Node's pods) and the
Events about it, found by field selector on involvedObject.name and uid.

Labels are aligned as kubectl's describe aligns them: within one block, the
values of consecutive "Key:" lines at the same indent line up.
"""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

from apiserver import manifest
from apiserver.errors import ApiError
from apiserver.quantity import format_quantity, parse_quantity
from apiserver.resources import Resource
from apiserver.selectors import label_selector_from_proto
from controllers.kctl import kinds, printers
from controllers.kctl.layout import (
    Lines,
    annotation_lines,
    container,
    map_lines,
    pod_template,
    time_text,
)
from controllers.kctl.printers import NONE, age, selector_text
from controllers.kctl.rollout import owned_replica_sets, revision_of, same_template
from controllers.kctl.session import Session


def _metadata(lines: Lines, res: Resource, obj) -> None:
    meta = obj.metadata
    lines.add("Name", meta.name)
    if res.namespaced:
        lines.add("Namespace", meta.namespace)
    lines.add("CreationTimestamp", time_text(meta.creation_timestamp))
    lines.multi("Labels", map_lines(meta.labels))
    lines.multi("Annotations", annotation_lines(meta.annotations))
    if meta.deletion_timestamp:
        lines.add("Terminating", f"since {time_text(meta.deletion_timestamp)}")
    controller = next((r for r in meta.owner_references if r.controller), None)
    if controller is not None:
        lines.add("Controlled By", f"{controller.kind}/{controller.name}")


def _conditions(lines: Lines, conditions, *, detail: bool = True) -> None:
    if not conditions:
        return
    lines.heading("Conditions:")
    if detail:
        lines.table(["Type", "Status", "Reason", "Message"],
                    [[c.type, c.status, c.reason or NONE, c.message] for c in conditions])
    else:
        lines.table(["Type", "Status"], [[c.type, c.status] for c in conditions])


def _describe_deployment(session: Session, d, lines: Lines) -> None:
    spec, status = d.spec, d.status
    lines.add("Selector", selector_text(spec.selector))
    desired = spec.replicas if spec.HasField("replicas") else 1
    lines.add("Replicas", f"{desired} desired | {status.updated_replicas} updated | "
                          f"{status.replicas} total | {status.available_replicas} available | "
                          f"{status.unavailable_replicas} unavailable")
    lines.add("StrategyType", spec.strategy.type or "RollingUpdate")
    lines.add("MinReadySeconds", spec.min_ready_seconds)
    if spec.strategy.type in ("", "RollingUpdate"):
        ru = spec.strategy.rolling_update
        lines.add("RollingUpdateStrategy",
                  f"{ru.max_unavailable or '25%'} max unavailable, {ru.max_surge or '25%'} max surge")
    if spec.paused:
        lines.add("Paused", "true")
    pod_template(lines, spec.template)
    _conditions(lines, status.conditions, detail=True)
    sets = owned_replica_sets(session.client, d)
    new = [rs for rs in sets if same_template(rs.spec.template, spec.template)]
    old = [rs for rs in sets if rs not in new and rs.spec.replicas]

    def shown(group) -> str:
        return ", ".join(f"{rs.metadata.name} ({rs.status.replicas}/{rs.spec.replicas} replicas created)"
                         for rs in group) or NONE
    lines.add("OldReplicaSets", shown(old))
    lines.add("NewReplicaSet", shown(new))


def _pods_selected(session: Session, namespace: str, selector) -> list:
    text = str(label_selector_from_proto(selector))
    return session.client.list_all("pods", namespace, label_selector=text).items


def _describe_replica_set(session: Session, rs, lines: Lines) -> None:
    desired = rs.spec.replicas if rs.spec.HasField("replicas") else 1
    lines.add("Selector", selector_text(rs.spec.selector))
    lines.add("Replicas", f"{rs.status.replicas} current / {desired} desired")
    phases = {"Running": 0, "Pending": 0, "Succeeded": 0, "Failed": 0}
    for pod in _pods_selected(session, rs.metadata.namespace, rs.spec.selector):
        if any(r.uid == rs.metadata.uid for r in pod.metadata.owner_references):
            phases[pod.status.phase] = phases.get(pod.status.phase, 0) + 1
    lines.add("Pods Status", f"{phases['Running']} Running / {phases['Pending']} Waiting / "
                             f"{phases['Succeeded']} Succeeded / {phases['Failed']} Failed")
    revision = revision_of(rs)
    if revision:
        lines.add("Revision", revision)
    pod_template(lines, rs.spec.template)
    _conditions(lines, rs.status.conditions)


def _describe_pod(session: Session, pod, lines: Lines) -> None:
    node = pod.spec.node_name
    lines.add("Node", f"{node}/{pod.status.host_ip}" if node and pod.status.host_ip else node or NONE)
    lines.add("Start Time", time_text(pod.status.start_time))
    _, status, _ = printers.pod_state(pod)
    lines.add("Status", status)
    lines.add("IP", pod.status.pod_ip or NONE)
    lines.heading("Containers:")
    statuses = {s.name: s for s in pod.status.container_statuses}
    for c in pod.spec.containers:
        container(lines, c, statuses.get(c.name))
    _conditions(lines, pod.status.conditions, detail=False)
    lines.multi("Node-Selectors", map_lines(pod.spec.node_selector))
    tolerations = []
    for t in pod.spec.tolerations:
        text = t.key + (f"={t.value}" if t.value else "") + (f":{t.effect}" if t.effect else "")
        if t.operator == "Exists" and not t.key:
            text = "op=Exists" + (f":{t.effect}" if t.effect else "")
        elif t.operator == "Exists":
            text += " op=Exists"
        if t.HasField("toleration_seconds"):
            text += f" for {t.toleration_seconds}s"
        tolerations.append(text)
    lines.multi("Tolerations", tolerations)


def _requests_of(pod) -> tuple[Fraction, Fraction]:
    cpu = mem = Fraction(0)
    for c in pod.spec.containers:
        if "cpu" in c.resources.requests:
            cpu += parse_quantity(c.resources.requests["cpu"])
        if "memory" in c.resources.requests:
            mem += parse_quantity(c.resources.requests["memory"])
    return cpu, mem


def _describe_node(session: Session, node, lines: Lines) -> None:
    lines.add("Roles", printers.node_roles(node))
    taints = [f"{t.key}" + (f"={t.value}" if t.value else "") + f":{t.effect}" for t in node.spec.taints]
    lines.multi("Taints", taints)
    lines.add("Unschedulable", "true" if node.spec.unschedulable else "false")
    if node.status.conditions:
        lines.heading("Conditions:")
        lines.table(["Type", "Status", "LastHeartbeatTime", "Reason", "Message"],
                    [[c.type, c.status, time_text(c.last_heartbeat_time), c.reason or NONE, c.message]
                     for c in node.status.conditions])
    lines.heading("Addresses:")
    for a in node.status.addresses:
        lines.add(a.type, a.address, 2)
    for title, m in (("Capacity", node.status.capacity), ("Allocatable", node.status.allocatable)):
        lines.heading(f"{title}:")
        for k in sorted(m):
            lines.add(k, m[k], 2)
    info = node.status.node_info
    lines.heading("System Info:")
    for label, value in (("Kernel Version", info.kernel_version), ("OS Image", info.os_image),
                         ("Operating System", info.operating_system),
                         ("Architecture", info.architecture),
                         ("Container Runtime Version", info.container_runtime_version),
                         ("Kubelet Version", info.kubelet_version)):
        lines.add(label, value, 2)
    pods = [p for p in session.client.list_all("pods", "", field_selector=f"spec.nodeName={node.metadata.name}").items
            if p.status.phase not in ("Succeeded", "Failed")]
    lines.heading(f"Non-terminated Pods:          ({len(pods)} in total)")
    rows, cpu_total, mem_total = [], Fraction(0), Fraction(0)
    for p in pods:
        cpu, mem = _requests_of(p)
        cpu_total += cpu
        mem_total += mem
        rows.append([p.metadata.namespace, p.metadata.name, format_quantity(cpu),
                     format_quantity(mem, binary=True), age(p.metadata.creation_timestamp)])
    if rows:
        lines.table(["Namespace", "Name", "CPU Requests", "Memory Requests", "Age"], rows)
    lines.heading("Allocated resources:")
    lines.table(["Resource", "Requests"],
                [["cpu", _share(cpu_total, node.status.allocatable.get("cpu"), binary=False)],
                 ["memory", _share(mem_total, node.status.allocatable.get("memory"), binary=True)]])


def _share(used: Fraction, allocatable: str | None, *, binary: bool) -> str:
    text = format_quantity(used, binary=binary)
    if not allocatable:
        return text
    total = parse_quantity(allocatable)
    return f"{text} ({int(used * 100 / total) if total else 0}%)"


def _describe_service(session: Session, svc, lines: Lines) -> None:
    lines.add("Selector", ",".join(map_lines(svc.spec.selector)) or NONE)
    lines.add("Type", svc.spec.type or "ClusterIP")
    if svc.spec.HasField("ip_family_policy"):
        lines.add("IP Family Policy", svc.spec.ip_family_policy)
    if svc.spec.ip_families:
        lines.add("IP Families", ",".join(svc.spec.ip_families))
    lines.add("IP", svc.spec.cluster_ip or NONE)
    if svc.spec.cluster_ips:
        lines.add("IPs", ",".join(svc.spec.cluster_ips))
    if svc.spec.type == "ExternalName":
        lines.add("External Name", svc.spec.external_name)
    try:
        ep = session.client.get("endpoints", svc.metadata.name, svc.metadata.namespace)
        endpoints = printers.endpoints_text(ep)
    except ApiError:
        endpoints = NONE
    for p in svc.spec.ports:
        lines.add("Port", f"{p.name or '<unset>'}  {p.port}/{p.protocol or 'TCP'}")
        lines.add("TargetPort", f"{p.target_port or p.port}/{p.protocol or 'TCP'}")
        if p.node_port:
            lines.add("NodePort", f"{p.name or '<unset>'}  {p.node_port}/{p.protocol or 'TCP'}")
    lines.add("Endpoints", endpoints)
    lines.add("Session Affinity", svc.spec.session_affinity or "None")
    if svc.spec.external_traffic_policy:
        lines.add("External Traffic Policy", svc.spec.external_traffic_policy)
    if svc.spec.HasField("internal_traffic_policy"):
        lines.add("Internal Traffic Policy", svc.spec.internal_traffic_policy)


def _describe_secret(session: Session, secret, lines: Lines) -> None:
    lines.add("Type", secret.type or "Opaque")
    lines.heading("Data")
    lines.heading("====")
    for k in sorted(secret.data):
        lines.add(k, f"{len(secret.data[k])} bytes")


def _describe_config_map(session: Session, cm, lines: Lines) -> None:
    lines.heading("Data")
    lines.heading("====")
    for k in sorted(cm.data):
        lines.heading(f"{k}:")
        lines.heading("----")
        for text in cm.data[k].splitlines() or [""]:
            lines.raw(text)
        lines.raw("")
    if cm.binary_data:
        lines.heading("BinaryData")
        lines.heading("====")
        for k in sorted(cm.binary_data):
            lines.add(k, f"{len(cm.binary_data[k])} bytes")


def _describe_namespace(session: Session, ns, lines: Lines) -> None:
    lines.add("Status", ns.status.phase or "Active")


def _describe_rest(session: Session, obj, lines: Lines) -> None:
    """Kinds without a summary of their own: their fields as YAML."""
    data = {k: v for k, v in manifest.to_dict(obj).items()
            if k not in ("apiVersion", "kind", "metadata")}
    for text in printers.to_yaml(data).splitlines() if data else []:
        lines.raw(text)


DESCRIBERS = {
    "deployments": _describe_deployment,
    "replicasets": _describe_replica_set,
    "pods": _describe_pod,
    "nodes": _describe_node,
    "services": _describe_service,
    "secrets": _describe_secret,
    "configmaps": _describe_config_map,
    "namespaces": _describe_namespace,
}


def events_about(session: Session, obj, res: Resource) -> list:
    """The Events whose involvedObject is ``obj``, oldest first: selected by
    name and kind on the server, then by uid here, so that events about an
    earlier object of the same name stay out while events recorded without
    a uid still show."""
    meta = obj.metadata
    terms = f"involvedObject.name={meta.name},involvedObject.kind={res.kind}"
    namespace = meta.namespace if res.namespaced else ""
    events = [e for e in session.client.list_all("events", namespace, field_selector=terms).items
              if e.involved_object.uid in ("", meta.uid)]
    return sorted(events, key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)


def _events(lines: Lines, events) -> None:
    if not events:
        lines.add("Events", NONE)
        return
    lines.heading("Events:")
    now = datetime.now(UTC)
    rows = []
    for e in events:
        seen = printers.event_last_seen(e, now)
        if e.count > 1:
            seen = f"{seen} (x{e.count} over {age(e.first_timestamp, now)})"
        rows.append([e.type, e.reason, seen, e.source.component or e.reporting_component or NONE,
                     e.message.replace("\n", " ")])
    lines.table(["Type", "Reason", "Age", "From", "Message"], rows)


def describe(session: Session, res: Resource, name: str) -> str:
    obj = session.client.get(res.name, name, session.namespace)
    lines = Lines()
    _metadata(lines, res, obj)
    DESCRIBERS.get(res.name, _describe_rest)(session, obj, lines)
    if res.name != "events":
        _events(lines, events_about(session, obj, res))
    return lines.render()


def cmd_describe(session: Session, args) -> int:
    pairs = kinds.targets(args.args)
    texts = []
    for res, name in pairs:
        texts.append(describe(session, res, name))
    session.out.write("\n\n".join(texts))
    session.out.flush()
    return 0

