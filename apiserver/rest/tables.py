"""Tables (meta.k8s.io/v1 Table): what ``kubectl get`` prints, computed by
the server as kube-apiserver's printers do, with the same columns per kind
(priority 1 columns are the ``-o wide`` ones). Works on objects' JSON form.
"""

from __future__ import annotations

from datetime import datetime, timezone

TABLE_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def wants_table(accept: str) -> str:
    """The Table content type ``accept`` asks for first, or ""."""
    for part in accept.split(","):
        params = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in part.split(";")[1:])}
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io":
            return f"application/json;as=Table;v={params.get('v', 'v1')};g=meta.k8s.io"
        if part.split(";")[0].strip() in ("application/json", "*/*", "application/*"):
            return ""
    return ""


def age(timestamp: str, now: datetime | None = None) -> str:
    """kubectl's short duration (HumanDuration) since an RFC 3339 time."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return "<invalid>"
    seconds = int(((now or datetime.now(timezone.utc)) - then).total_seconds())
    if seconds < -1:
        return "<invalid>"
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m{s}s" if s else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        m = minutes % 60
        return f"{hours}h{m}m" if m else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        h = hours % 24
        return f"{days}d{h}h" if h else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        d = days % 365
        return f"{years}y{d}d" if d else f"{years}y"
    return f"{years}y"


def _col(name: str, kind: str = "string", priority: int = 0, fmt: str = "", description: str = "") -> dict:
    return {"name": name, "type": kind, "format": fmt, "description": description or name,
            "priority": priority}


NAME = _col("Name", fmt="name", description="Name must be unique within a namespace.")
AGE = _col("Age", description="CreationTimestamp is a timestamp representing the server time when this object was created.")


def _meta(o: dict) -> dict:
    return o.get("metadata", {})


def _selector(sel: dict | None) -> str:
    if not sel:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op = e.get("operator")
        values = ",".join(e.get("values") or [])
        if op == "In":
            parts.append(f"{e['key']} in ({values})")
        elif op == "NotIn":
            parts.append(f"{e['key']} notin ({values})")
        elif op == "Exists":
            parts.append(e["key"])
        elif op == "DoesNotExist":
            parts.append(f"!{e['key']}")
    return ",".join(parts) or "<none>"


def _containers(spec: dict) -> tuple[str, str]:
    cs = spec.get("containers") or []
    return ",".join(c.get("name", "") for c in cs), ",".join(c.get("image", "") for c in cs)


def _waiting_or_terminated(state: dict) -> str:
    """The reason a container's state gives the pod's STATUS column, or ""."""
    waiting, terminated = state.get("waiting"), state.get("terminated")
    if waiting and waiting.get("reason"):
        return waiting["reason"]
    if terminated is not None:
        if terminated.get("reason"):
            return terminated["reason"]
        if terminated.get("signal"):
            return f"Signal:{terminated['signal']}"
        return f"ExitCode:{terminated.get('exitCode', 0)}"
    return ""


def _pod_status(spec: dict, status: dict, meta: dict) -> tuple[str, int, int, str]:
    """(STATUS, ready containers, restarts, last restart time) as kubectl's pod printer
    computes them: the phase or status.reason, then init containers' progress, then the
    containers' waiting/terminated reasons (the first container's wins), Terminating."""
    reason = status.get("reason") or status.get("phase") or ""
    conditions = status.get("conditions") or []
    if any(c.get("type") == "PodScheduled" and c.get("reason") == "SchedulingGated" for c in conditions):
        reason = "SchedulingGated"
    inits = spec.get("initContainers") or []
    initializing = False
    for i, cs in enumerate(status.get("initContainerStatuses") or []):
        state = cs.get("state") or {}
        terminated = state.get("terminated")
        if terminated is not None and terminated.get("exitCode", 0) == 0:
            continue
        if state.get("running") and (inits[i] if i < len(inits) else {}).get("restartPolicy") == "Always":
            continue
        initializing = True
        why = _waiting_or_terminated(state)
        if terminated is not None:
            reason = f"Init:{why}"
        elif why and why != "PodInitializing":
            reason = f"Init:{why}"
        else:
            reason = f"Init:{i}/{len(inits)}"
        break
    ready = restarts = 0
    last_restart = ""
    initialized = any(c.get("type") == "Initialized" and c.get("status") == "True" for c in conditions)
    if not initializing or initialized:
        running = False
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += int(cs.get("restartCount", 0))
            finished = ((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt", "")
            last_restart = max(last_restart, finished)
            state = cs.get("state") or {}
            why = _waiting_or_terminated(state)
            if why:
                reason = why
            elif cs.get("ready") and state.get("running") is not None:
                running = True
                ready += 1
        if reason == "Completed" and running:
            ready_condition = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
            reason = "Running" if ready_condition else "NotReady"
    if meta.get("deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif status.get("phase") not in ("Succeeded", "Failed"):
            reason = "Terminating"
    return reason, ready, restarts, last_restart


def _pod_row(o: dict) -> list:
    spec, status, meta = o.get("spec", {}), o.get("status", {}), _meta(o)
    reason, ready, restarts, last_restart = _pod_status(spec, status, meta)
    restarts_text = str(restarts)
    if restarts and last_restart:
        restarts_text = f"{restarts} ({age(last_restart)} ago)"
    ips = status.get("podIPs") or ([{"ip": status["podIP"]}] if status.get("podIP") else [])
    gates = spec.get("readinessGates") or []
    if gates:
        true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
        gates_text = f"{sum(1 for g in gates if g.get('conditionType') in true)}/{len(gates)}"
    else:
        gates_text = "<none>"
    return [meta.get("name", ""), f"{ready}/{len(spec.get('containers') or [])}", reason, restarts_text,
            age(meta.get("creationTimestamp", "")), ips[0]["ip"] if ips else "<none>",
            spec.get("nodeName") or "<none>", status.get("nominatedNodeName") or "<none>", gates_text]


def _node_row(o: dict) -> list:
    meta, spec, status = _meta(o), o.get("spec", {}), o.get("status", {})
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    ready = conds.get("Ready")
    state = ["Ready" if ready == "True" else "NotReady" if ready == "False" else "Unknown"]
    if spec.get("unschedulable"):
        state.append("SchedulingDisabled")
    roles = sorted(k.split("/", 1)[1] for k in (meta.get("labels") or {})
                   if k.startswith("node-role.kubernetes.io/") and k.split("/", 1)[1])
    info = status.get("nodeInfo", {})
    addrs = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    return [meta.get("name", ""), ",".join(state), ",".join(roles) or "<none>",
            age(meta.get("creationTimestamp", "")), info.get("kubeletVersion", ""),
            addrs.get("InternalIP") or "<none>", addrs.get("ExternalIP") or "<none>",
            info.get("osImage") or "<unknown>", info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>"]


def _deployment_row(o: dict) -> list:
    meta, spec, status = _meta(o), o.get("spec", {}), o.get("status", {})
    names, images = _containers(spec.get("template", {}).get("spec", {}))
    return [meta.get("name", ""), f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
            status.get("updatedReplicas", 0), status.get("availableReplicas", 0),
            age(meta.get("creationTimestamp", "")), names, images, _selector(spec.get("selector"))]


def _replicaset_row(o: dict) -> list:
    meta, spec, status = _meta(o), o.get("spec", {}), o.get("status", {})
    names, images = _containers(spec.get("template", {}).get("spec", {}))
    return [meta.get("name", ""), spec.get("replicas", 0), status.get("replicas", 0),
            status.get("readyReplicas", 0), age(meta.get("creationTimestamp", "")), names, images,
            _selector(spec.get("selector"))]


def _service_row(o: dict) -> list:
    meta, spec = _meta(o), o.get("spec", {})
    kind = spec.get("type", "ClusterIP")
    external = ",".join(spec.get("externalIPs") or [])
    if kind == "LoadBalancer":
        ingress = o.get("status", {}).get("loadBalancer", {}).get("ingress") or []
        external = ",".join(i.get("ip") or i.get("hostname", "") for i in ingress) or "<pending>"
    elif kind == "ExternalName":
        external = spec.get("externalName", "")
    ports = []
    for p in spec.get("ports") or []:
        text = f"{p.get('port')}"
        if p.get("nodePort"):
            text += f":{p['nodePort']}"
        ports.append(f"{text}/{p.get('protocol', 'TCP')}")
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
    return [meta.get("name", ""), kind, spec.get("clusterIP") or "<none>", external or "<none>",
            ",".join(ports) or "<none>", age(meta.get("creationTimestamp", "")), selector or "<none>"]


def _namespace_row(o: dict) -> list:
    return [_meta(o).get("name", ""), o.get("status", {}).get("phase", "Active"),
            age(_meta(o).get("creationTimestamp", ""))]


def _configmap_row(o: dict) -> list:
    return [_meta(o).get("name", ""), len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            age(_meta(o).get("creationTimestamp", ""))]


def _secret_row(o: dict) -> list:
    return [_meta(o).get("name", ""), o.get("type", "Opaque"),
            len(o.get("data") or {}) + len(o.get("stringData") or {}),
            age(_meta(o).get("creationTimestamp", ""))]


def _endpoints_row(o: dict) -> list:
    eps = []
    for subset in o.get("subsets") or []:
        ports = subset.get("ports") or [{}]
        for a in subset.get("addresses") or []:
            for p in ports:
                eps.append(f"{a.get('ip')}:{p['port']}" if p.get("port") else a.get("ip", ""))
    text = ",".join(eps[:3]) + (f" + {len(eps) - 3} more..." if len(eps) > 3 else "")
    return [_meta(o).get("name", ""), text or "<none>", age(_meta(o).get("creationTimestamp", ""))]


def _lease_row(o: dict) -> list:
    return [_meta(o).get("name", ""), o.get("spec", {}).get("holderIdentity") or "<none>",
            age(_meta(o).get("creationTimestamp", ""))]


def _event_source(o: dict) -> str:
    source = o.get("source") or {}
    if source.get("component"):
        return ", ".join(v for v in (source["component"], source.get("host", "")) if v)
    return ", ".join(v for v in (o.get("reportingComponent", ""), o.get("reportingInstance", "")) if v)


def _event_row(o: dict) -> list:
    first = age(o["firstTimestamp"]) if o.get("firstTimestamp") else age(o.get("eventTime", ""))
    last = age(o["lastTimestamp"]) if o.get("lastTimestamp") else first
    ref = o.get("involvedObject") or {}
    kind = ref.get("kind", "").lower()
    target = f"{kind}/{ref['name']}" if ref.get("name") else kind
    return [last, o.get("type", ""), o.get("reason", ""), target, ref.get("fieldPath", ""),
            _event_source(o), o.get("message", "").strip(), first, o.get("count") or 1,
            _meta(o).get("name", "")]


_ACCESS_MODES = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX",
                 "ReadWriteOncePod": "RWOP"}


def access_modes_text(modes) -> str:
    """kubectl's ACCESS MODES: the short forms in a fixed order, comma-separated."""
    return ",".join(short for long, short in _ACCESS_MODES.items() if long in (modes or ()))


def _pv_row(o: dict) -> list:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    ref = spec.get("claimRef") or {}
    claim = f"{ref.get('namespace', '')}/{ref.get('name', '')}" if ref.get("name") else ""
    return [_meta(o).get("name", ""), (spec.get("capacity") or {}).get("storage", ""),
            access_modes_text(spec.get("accessModes")), spec.get("persistentVolumeReclaimPolicy", ""),
            status.get("phase", ""), claim, spec.get("storageClassName", ""), "<unset>",
            status.get("reason", ""), age(_meta(o).get("creationTimestamp", "")),
            spec.get("volumeMode", "")]


def _pvc_row(o: dict) -> list:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    bound = status.get("phase") == "Bound"
    return [_meta(o).get("name", ""), status.get("phase", ""), spec.get("volumeName", ""),
            (status.get("capacity") or {}).get("storage", "") if bound else "",
            access_modes_text(status.get("accessModes")) if bound else "",
            spec.get("storageClassName", ""), "<unset>", age(_meta(o).get("creationTimestamp", "")),
            spec.get("volumeMode", "")]


def _storage_class_row(o: dict) -> list:
    name = _meta(o).get("name", "")
    if (_meta(o).get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class") == "true":
        name += " (default)"
    return [name, o.get("provisioner", ""), o.get("reclaimPolicy", "Delete"),
            o.get("volumeBindingMode", "Immediate"), bool(o.get("allowVolumeExpansion")),
            age(_meta(o).get("creationTimestamp", ""))]


def _service_account_row(o: dict) -> list:
    return [_meta(o).get("name", ""), len(o.get("secrets") or []), age(_meta(o).get("creationTimestamp", ""))]


def _role_row(o: dict) -> list:
    return [_meta(o).get("name", ""), _meta(o).get("creationTimestamp", "")]


def _binding_row(o: dict) -> list:
    ref = o.get("roleRef") or {}
    subjects = o.get("subjects") or []
    users = ", ".join(s.get("name", "") for s in subjects if s.get("kind") == "User")
    groups = ", ".join(s.get("name", "") for s in subjects if s.get("kind") == "Group")
    sas = ", ".join(f"{s.get('namespace', '')}/{s.get('name', '')}" for s in subjects
                    if s.get("kind") == "ServiceAccount")
    return [_meta(o).get("name", ""), f"{ref.get('kind', '')}/{ref.get('name', '')}",
            age(_meta(o).get("creationTimestamp", "")), users, groups, sas]


def _duration(seconds: int) -> str:
    """A duration as kubectl prints one (apimachinery's HumanDuration): 10m, 3h30m, 24h, 7d."""
    minutes, hours = seconds // 60, seconds // 3600
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m" if seconds % 60 == 0 else f"{minutes}m{seconds % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    return f"{hours // (24 * 365)}y"


def _csr_row(o: dict) -> list:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    conditions = [c.get("type", "") for c in status.get("conditions") or []]
    if status.get("certificate"):
        conditions.append("Issued")
    seconds = spec.get("expirationSeconds")
    return [_meta(o).get("name", ""), age(_meta(o).get("creationTimestamp", "")), spec.get("signerName", ""),
            spec.get("username", ""), _duration(int(seconds)) if seconds else "<none>",
            ",".join(conditions) or "Pending"]


def _webhooks_row(o: dict) -> list:
    return [_meta(o).get("name", ""), len(o.get("webhooks") or ()), age(_meta(o).get("creationTimestamp", ""))]


def _default_row(o: dict) -> list:
    return [_meta(o).get("name", ""), age(_meta(o).get("creationTimestamp", ""))]


# resource -> (columns, row); kube's printers (pkg/printers/internalversion)
PRINTERS = {
    "pods": ([NAME, _col("Ready", description="The aggregate readiness state of this pod for accepting traffic."),
              _col("Status", description="The aggregate status of the containers in this pod."),
              _col("Restarts", "string", description="The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
              AGE, _col("IP", priority=1, description="IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
              _col("Node", priority=1, description="NodeName is a request to schedule this pod onto a specific node."),
              _col("Nominated Node", priority=1, description="nominatedNodeName is set only when this pod preempts other pods on the node."),
              _col("Readiness Gates", priority=1, description="If specified, all readiness gates will be evaluated for pod readiness.")],
             _pod_row),
    "nodes": ([NAME, _col("Status", description="The status of the node"), _col("Roles", description="The roles of the node"),
               AGE, _col("Version", description="Kubelet Version reported by the node."),
               _col("Internal-IP", priority=1), _col("External-IP", priority=1),
               _col("OS-Image", priority=1), _col("Kernel-Version", priority=1),
               _col("Container-Runtime", priority=1)], _node_row),
    "deployments": ([NAME, _col("Ready"), _col("Up-to-date", "integer"), _col("Available", "integer"), AGE,
                     _col("Containers", priority=1), _col("Images", priority=1),
                     _col("Selector", priority=1)], _deployment_row),
    "replicasets": ([NAME, _col("Desired", "integer"), _col("Current", "integer"), _col("Ready", "integer"),
                     AGE, _col("Containers", priority=1), _col("Images", priority=1),
                     _col("Selector", priority=1)], _replicaset_row),
    "services": ([NAME, _col("Type"), _col("Cluster-IP"), _col("External-IP"), _col("Port(s)"), AGE,
                  _col("Selector", priority=1)], _service_row),
    "namespaces": ([NAME, _col("Status"), AGE], _namespace_row),
    "configmaps": ([NAME, _col("Data", "integer"), AGE], _configmap_row),
    "secrets": ([NAME, _col("Type"), _col("Data", "integer"), AGE], _secret_row),
    "endpoints": ([NAME, _col("Endpoints"), AGE], _endpoints_row),
    "leases": ([NAME, _col("Holder"), AGE], _lease_row),
    "serviceaccounts": ([NAME, _col("Secrets", "integer"), AGE], _service_account_row),
    "roles": ([NAME, _col("Created At", "date")], _role_row),
    "clusterroles": ([NAME, _col("Created At", "date")], _role_row),
    "rolebindings": ([NAME, _col("Role"), AGE, _col("Users", priority=1), _col("Groups", priority=1),
                      _col("ServiceAccounts", priority=1)], _binding_row),
    "clusterrolebindings": ([NAME, _col("Role"), AGE, _col("Users", priority=1), _col("Groups", priority=1),
                             _col("ServiceAccounts", priority=1)], _binding_row),
    "events": ([_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"),
                _col("Subobject", priority=1), _col("Source", priority=1), _col("Message"),
                _col("First Seen", priority=1), _col("Count", priority=1),
                _col("Name", priority=1, fmt="name")], _event_row),
    "persistentvolumes": ([NAME, _col("Capacity"), _col("Access Modes"), _col("Reclaim Policy"),
                           _col("Status"), _col("Claim"), _col("StorageClass"),
                           _col("VolumeAttributesClass"), _col("Reason"), AGE,
                           _col("VolumeMode", priority=1)], _pv_row),
    "persistentvolumeclaims": ([NAME, _col("Status"), _col("Volume"), _col("Capacity"),
                                _col("Access Modes"), _col("StorageClass"),
                                _col("VolumeAttributesClass"), AGE,
                                _col("VolumeMode", priority=1)], _pvc_row),
    "certificatesigningrequests": ([NAME, AGE, _col("SignerName"), _col("Requestor"),
                                   _col("RequestedDuration"), _col("Condition")], _csr_row),
    "storageclasses": ([NAME, _col("Provisioner"), _col("ReclaimPolicy"), _col("VolumeBindingMode"),
                        _col("AllowVolumeExpansion", "boolean"), AGE], _storage_class_row),
    "validatingwebhookconfigurations": ([NAME, _col("Webhooks", "integer"), AGE], _webhooks_row),
    "mutatingwebhookconfigurations": ([NAME, _col("Webhooks", "integer"), AGE], _webhooks_row),
}


def columns(resource: str) -> list[dict]:
    return PRINTERS.get(resource, ([NAME, AGE], None))[0]


def row(resource: str, obj: dict, include: str) -> dict:
    """One Table row for ``obj`` (its JSON form with apiVersion and kind);
    ``include`` is the includeObject parameter: None, Object or
    PartialObjectMetadata (the default)."""
    printer = PRINTERS.get(resource, (None, _default_row))[1] or _default_row
    out = {"cells": printer(obj)}
    if include == "Object":
        out["object"] = obj
    elif include != "None":
        out["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                         "metadata": obj.get("metadata", {})}
    return out


def table(resource: str, objs: list[dict], list_meta: dict, include: str, api_version: str = "v1") -> dict:
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{api_version}", "metadata": list_meta,
            "columnDefinitions": columns(resource),
            "rows": [row(resource, o, include) for o in objs]}
