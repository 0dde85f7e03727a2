"""Objects to the JSON the REST API answers with: manifest.to_dict, with
IntOrString values that are numbers written as JSON numbers, as Kubernetes
writes them (our protos keep IntOrString as text, so ``targetPort: 80`` would
come back as "80", and ``kubectl apply`` would see a change that is not one).
Only the paths where IntOrString fields live are visited (a whole-object walk
cost as much as the conversion itself).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timezone

from google.protobuf.descriptor import FieldDescriptor

from apiserver import errors, manifest

_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_HANDLERS = ("httpGet", "tcpSocket")


def _number(d: dict | None, key: str) -> None:
    if d is not None:
        v = d.get(key)
        if isinstance(v, str) and v.isdigit() and v.isascii():
            d[key] = int(v)


def _fix_pod_spec(spec: dict | None) -> None:
    if not spec:
        return
    for c in (*spec.get("containers", ()), *spec.get("initContainers", ())):
        for probe in _PROBES:
            p = c.get(probe)
            if p:
                for h in _HANDLERS:
                    _number(p.get(h), "port")
        for hook in (c.get("lifecycle") or {}).values():
            for h in _HANDLERS:
                _number(hook.get(h), "port")


# Fields Kubernetes writes even when empty (no omitempty in k8s.io/api), by message name;
# clients check them (the official Python client refuses a ContainerStatus without imageID).
# From the kinds' OpenAPI "required" lists.
REQUIRED = {
    "ContainerStatus": ("name", "image", "imageID", "ready", "restartCount"),
    "Container": ("name",), "ContainerPort": ("containerPort",), "ServicePort": ("port",),
    "EnvVar": ("name",), "Volume": ("name",), "VolumeMount": ("name", "mountPath"),
    "PodCondition": ("type", "status"), "NodeCondition": ("type", "status"),
    "DeploymentCondition": ("type", "status"), "ReplicaSetCondition": ("type", "status"),
    "NamespaceCondition": ("type", "status"), "OwnerReference": ("apiVersion", "kind", "name", "uid"),
    "NodeSystemInfo": ("machineID", "systemUUID", "bootID", "kernelVersion", "osImage",
                       "containerRuntimeVersion", "kubeletVersion", "kubeProxyVersion",
                       "operatingSystem", "architecture"),
    "NodeAddress": ("type", "address"), "LabelSelectorRequirement": ("key", "operator"),
    "NodeSelectorRequirement": ("key", "operator"), "NodeSelector": ("nodeSelectorTerms",),
    "Taint": ("key", "effect"), "Event": ("metadata", "involvedObject"),
    "EndpointAddress": ("ip",), "EndpointPort": ("port",), "ContainerStateTerminated": ("exitCode",),
    "DeploymentSpec": ("selector", "template"), "ReplicaSetSpec": ("selector",),
    "PodSpec": ("containers",), "ReplicaSetStatus": ("replicas",), "KeyToPath": ("key", "path"),
    "ConfigMapKeySelector": ("key",), "SecretKeySelector": ("key",), "ObjectFieldSelector": ("fieldPath",),
    "ResourceFieldSelector": ("resource",), "HTTPGetAction": ("port",), "TCPSocketAction": ("port",),
    "GRPCAction": ("port",), "HTTPHeader": ("name", "value"), "PodIP": ("ip",), "HostIP": ("ip",),
    "DaemonEndpoint": ("Port",), "HostPathVolumeSource": ("path",),
    "PersistentVolumeClaimVolumeSource": ("claimName",), "Sysctl": ("name", "value"),
    "PodReadinessGate": ("conditionType",), "VolumeDevice": ("name", "devicePath"),
    "PreferredSchedulingTerm": ("weight", "preference"), "WeightedPodAffinityTerm": ("weight", "podAffinityTerm"),
    "PodAffinityTerm": ("topologyKey",), "AttachedVolume": ("name", "devicePath"),
    "TopologySpreadConstraint": ("maxSkew", "topologyKey", "whenUnsatisfiable"),
}


def _zero(field: FieldDescriptor):
    if field.is_repeated:
        return {} if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry else []
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return {}
    if field.type == FieldDescriptor.TYPE_BOOL:
        return False
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return ""
    return 0


@functools.cache
def _plan(desc) -> tuple[tuple, tuple]:
    """(required fields to fill, message fields to descend into) of a message type."""
    required = tuple(f for f in desc.fields if f.json_name in REQUIRED.get(desc.name, ()))
    children = []
    for f in desc.fields:
        if f.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        target = f.message_type
        if target.GetOptions().map_entry:
            value = target.fields_by_name["value"]
            if value.type != FieldDescriptor.TYPE_MESSAGE:
                continue
            target = value.message_type
        if _reaches_required(target):
            children.append(f)
    return required, tuple(children)


@functools.cache
def _reaches_required(desc, _seen: frozenset = frozenset()) -> bool:
    if desc.name in REQUIRED:
        return True
    seen = _seen | {desc.full_name}
    for f in desc.fields:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            target = f.message_type
            if target.GetOptions().map_entry:
                value = target.fields_by_name["value"]
                if value.type != FieldDescriptor.TYPE_MESSAGE:
                    continue
                target = value.message_type
            if target.full_name not in seen and _reaches_required(target, seen):
                return True
    return False


def _fill_required(msg, out: dict) -> None:
    required, children = _plan(msg.DESCRIPTOR)
    for f in required:
        if f.json_name not in out:
            out[f.json_name] = _zero(f)
    for f in children:
        sub = out.get(f.json_name)
        if sub is None:
            continue
        value = getattr(msg, f.name)
        if f.message_type.GetOptions().map_entry:
            for k, v in sub.items():
                _fill_required(value[k], v)
        elif f.is_repeated:
            for item, d in zip(value, sub):
                _fill_required(item, d)
        else:
            _fill_required(value, sub)


def to_json(msg) -> dict:
    """The object as Kubernetes JSON (apiVersion and kind first)."""
    out = manifest.to_dict(msg)
    _fill_required(msg, out)
    kind, spec = out["kind"], out.get("spec")
    if not spec:
        return out
    if kind == "Pod":
        _fix_pod_spec(spec)
    elif kind in ("Deployment", "ReplicaSet"):
        _fix_pod_spec((spec.get("template") or {}).get("spec"))
        rolling = (spec.get("strategy") or {}).get("rollingUpdate")
        _number(rolling, "maxSurge")
        _number(rolling, "maxUnavailable")
    elif kind == "Service":
        for port in spec.get("ports", ()):
            _number(port, "targetPort")
    return out


class ItemCache:
    """The JSON bytes of list items (without apiVersion and kind), by object
    and resourceVersion: a resourceVersion names one content of one object,
    so an entry never goes stale, and a list that returns the same objects
    again (informers relisting, kubectl get) costs no conversion. The last
    ``capacity`` entries are kept."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._items: dict[tuple, bytes] = {}

    def item(self, msg) -> bytes:
        meta = msg.metadata
        key = (type(msg), meta.namespace, meta.name, meta.resource_version)
        data = self._items.get(key)
        if data is None:
            obj = to_json(msg)
            obj.pop("apiVersion", None)
            obj.pop("kind", None)
            data = json.dumps(obj, separators=(",", ":")).encode()
            if meta.resource_version:
                self._items[key] = data
                if len(self._items) > self.capacity:
                    del self._items[next(iter(self._items))]
        return data


# metav1.Time fields (second precision) and MicroTime ones, by JSON name
TIME_FIELDS = frozenset({"creationTimestamp", "deletionTimestamp", "lastTransitionTime", "lastProbeTime",
                         "lastHeartbeatTime", "startedAt", "finishedAt", "startTime", "lastUpdateTime",
                         "firstTimestamp", "lastTimestamp", "lastScaleTime", "time"})
MICRO_TIME_FIELDS = frozenset({"acquireTime", "renewTime", "eventTime"})


def _normalized_time(value: str, key: str, micro: bool) -> str:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise errors.bad_request(f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00": cannot parse '
                                 f'"{value}" (field {key})') from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def normalize_times(value) -> None:
    """Times in a request body written as Kubernetes stores them: RFC 3339 in UTC,
    seconds (Time) or microseconds (MicroTime). Clients may send any RFC 3339 form (the
    Python client writes "+00:00"); kube-apiserver parses and re-encodes them, so an
    unchanged creationTimestamp stays unchanged."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, v in node.items():
                if isinstance(v, str) and v and (key in TIME_FIELDS or key in MICRO_TIME_FIELDS):
                    node[key] = _normalized_time(v, key, key in MICRO_TIME_FIELDS)
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, (dict, list)))
