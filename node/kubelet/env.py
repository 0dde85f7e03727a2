"""A container's environment, as Kubernetes' kubelet makes it (makeEnvironmentVariables).

Order of resolution, as upstream:
1. ``envFrom`` sources in order: every key of the ConfigMap's ``data`` or the
   Secret's ``data``, with the source's ``prefix``; a key that is not a valid
   variable name is skipped and reported in one Warning event
   (InvalidEnvironmentVariableNames) per source. A missing source is an error
   unless it is ``optional``.
2. ``env`` in order, each overriding what came before: a non-empty ``value`` is
   ``$(VAR)``-expanded against the variables resolved so far (envFrom ones
   included); else ``valueFrom`` is read: ``fieldRef`` (the downward API),
   ``resourceFieldRef``, ``configMapKeyRef``, ``secretKeyRef``. An optional key
   reference whose object or key is missing leaves the variable out.

Errors carry upstream's texts (``configmap "x" not found``, ``couldn't find key
k in ConfigMap ns/x``, ...) and the reason CreateContainerConfigError: the
kubelet keeps such a container waiting with that reason and message and tries
again on its next sync. ConfigMaps and Secrets come from ``get(kind, namespace,
name)`` (``kind`` is "ConfigMap" or "Secret"; None when absent), which the
kubelet backs with its informers; each is read at most once per call.

Service links (the ``<SVC>_SERVICE_HOST`` variables) are not made: this cluster
has no Service environment yet.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from apiserver.pb import core_pb2
from apiserver.quantity import parse_quantity
from node.kubelet.expansion import expand, mapping_for

REASON = "CreateContainerConfigError"
INVALID_NAMES_REASON = "InvalidEnvironmentVariableNames"

# (kind, namespace, name) -> the ConfigMap or Secret message, None when it does not exist
Getter = Callable[[str, str, str], "core_pb2.ConfigMap | core_pb2.Secret | None"]

_ENV_VAR_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


class ContainerConfigError(Exception):
    """The container's configuration cannot be made; ``str(e)`` is upstream's message."""

    reason = REASON

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Event:
    """An event the kubelet records on the pod (type, reason, message as upstream's)."""
    type: str
    reason: str
    message: str


@dataclass
class Environment:
    """The resolved variables in a stable order, and the events to record."""
    vars: list[tuple[str, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def as_dict(self) -> dict[str, str]:
        return dict(self.vars)

    def as_bytes(self) -> list[tuple[str, bytes]]:
        """Values as bytes for CRI: a Secret's non-UTF-8 bytes come back exactly."""
        return [(k, v.encode("utf-8", "surrogateescape")) for k, v in self.vars]


def is_env_var_name(name: str) -> bool:
    """Kubernetes' IsEnvVarName: the name pattern, and not ".", ".." or "..x"."""
    return bool(_ENV_VAR_NAME.fullmatch(name)) and name not in (".", "..") and not name.startswith("..")


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _has(message, name: str) -> bool:
    """Whether ``message`` has the field ``name`` set (False when our proto lacks the field)."""
    try:
        return message.HasField(name)
    except ValueError:
        return False


def _optional(ref) -> bool:
    return _has(ref, "optional") and ref.optional


class _Objects:
    """ConfigMaps and Secrets read through ``get``, each once per environment."""

    def __init__(self, get: Getter | None, namespace: str):
        self._get, self._namespace = get, namespace
        self._seen: dict[tuple[str, str], object] = {}

    def fetch(self, kind: str, name: str):
        """The object, or None when it does not exist; other failures are config errors."""
        key = (kind, name)
        if key not in self._seen:
            if self._get is None:
                raise ContainerConfigError(f"couldn't get {kind[0].lower() + kind[1:]} "
                                           f"{self._namespace}/{name}, no kubeClient defined")
            try:
                self._seen[key] = self._get(kind, self._namespace, name)
            except ContainerConfigError:
                raise
            except Exception as exc:  # the getter's own failure (apiserver unreachable, ...)
                raise ContainerConfigError(str(exc)) from exc
        return self._seen[key]


def not_found(kind: str, name: str) -> str:
    """Upstream's text for a missing object, as its watch-based managers say it."""
    return f'{kind.lower()} "{name}" not found'


# ---- the downward API ----

def _go_quote(s: str) -> str:
    """Go's %q for the label and annotation listings (printable runes kept as is)."""
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                        "\t": "\\t", "\v": "\\v"}[ch])
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def format_map(m: Mapping[str, str]) -> str:
    """Kubernetes' fieldpath.FormatMap: ``k="v"`` lines, sorted by key."""
    return "\n".join(f"{k}={_go_quote(m[k])}" for k in sorted(m))


_SUBSCRIPT = re.compile(r"(?P<path>[^\[]+)\['(?P<key>.*)'\]")
_DOWNWARD_FIELDS = {"metadata.annotations", "metadata.labels", "metadata.name", "metadata.namespace",
                    "metadata.uid", "spec.nodeName", "spec.restartPolicy", "spec.serviceAccountName",
                    "spec.schedulerName", "status.phase", "status.hostIP", "status.hostIPs",
                    "status.podIP", "status.podIPs"}


def _convert_field_label(api_version: str, path: str) -> str:
    """Upstream's ConvertDownwardAPIFieldLabel: the internal path, or an error."""
    if (api_version or "v1") != "v1":
        raise ContainerConfigError(f"unsupported pod version: {api_version}")
    m = _SUBSCRIPT.fullmatch(path)
    if m:
        if m["path"] in ("metadata.annotations", "metadata.labels"):
            return path
        raise ContainerConfigError(f"field label does not support subscript: {path}")
    if path == "spec.host":
        return "spec.nodeName"
    if path not in _DOWNWARD_FIELDS:
        raise ContainerConfigError(f"field label not supported: {path}")
    return path


def _family(ip: str) -> int | None:
    try:
        return ipaddress.ip_address(ip).version
    except ValueError:
        return None


def sort_pod_ips(pod_ips: Sequence[str], host_ips: Sequence[str]) -> list[str]:
    """At most one pod IP per family, the node's primary family (IPv4 when the
    node has no address) first; malformed entries dropped (upstream's sortPodIPs)."""
    primary = (_family(host_ips[0]) if host_ips else None) or 4
    secondary = 6 if primary == 4 else 4
    ips = []
    for family in (primary, secondary):
        ips.extend([ip for ip in pod_ips if _family(ip) == family][:1])
    return ips


def field_value(pod: core_pb2.Pod, api_version: str, path: str, *,
                pod_ips: Sequence[str] = (), host_ips: Sequence[str] = ()) -> str:
    """A ``fieldRef``'s value (upstream's podFieldSelectorRuntimeValue)."""
    path = _convert_field_label(api_version, path)
    ips = sort_pod_ips(pod_ips, host_ips)
    simple = {"spec.nodeName": pod.spec.node_name,
              "spec.serviceAccountName": pod.spec.service_account_name,
              "status.hostIP": host_ips[0] if host_ips else "",
              "status.hostIPs": ",".join(host_ips),
              "status.podIP": ips[0] if ips else "",
              "status.podIPs": ",".join(ips)}
    if path in simple:
        return simple[path]
    m = _SUBSCRIPT.fullmatch(path)
    if m:
        source = pod.metadata.annotations if m["path"] == "metadata.annotations" else pod.metadata.labels
        return dict(source).get(m["key"], "")
    meta = {"metadata.annotations": lambda: format_map(dict(pod.metadata.annotations)),
            "metadata.labels": lambda: format_map(dict(pod.metadata.labels)),
            "metadata.name": lambda: pod.metadata.name,
            "metadata.namespace": lambda: pod.metadata.namespace,
            "metadata.uid": lambda: pod.metadata.uid}
    if path in meta:
        return meta[path]()
    raise ContainerConfigError(f"unsupported fieldPath: {path}")


def resource_value(resource: str, divisor: str, container: core_pb2.Container,
                   node_allocatable: Mapping[str, str] | None = None) -> str:
    """A ``resourceFieldRef``'s value: the container's limit or request, divided
    by ``divisor`` (default 1) and rounded up; a missing cpu or memory limit is
    the node's allocatable amount (upstream's defaultPodLimitsForDownwardAPI)."""
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise ContainerConfigError(f"unsupported container resource : {resource}")
    amounts = dict(getattr(container.resources, kind))
    if kind == "limits" and name not in amounts and node_allocatable and name in node_allocatable:
        amounts[name] = node_allocatable[name]
    try:
        amount = parse_quantity(amounts.get(name, "0"))
        div = parse_quantity(divisor) if divisor else Fraction(1)
    except ValueError as exc:
        raise ContainerConfigError(str(exc)) from exc
    if name == "cpu":   # compared in millicores, each side rounded up first as Kubernetes does
        num, den = math.ceil(amount * 1000), math.ceil(div * 1000)
    else:
        num, den = math.ceil(amount), math.ceil(div)
    if den == 0:
        raise ContainerConfigError(f"invalid divisor {divisor!r} for {resource}")
    return str(math.ceil(Fraction(num, den)))


def _resource_field(pod: core_pb2.Pod, container: core_pb2.Container, ref,
                    node_allocatable: Mapping[str, str] | None) -> str:
    target = container
    if ref.container_name:
        named = [c for c in list(pod.spec.containers) + list(pod.spec.init_containers)
                 if c.name == ref.container_name]
        if not named:
            raise ContainerConfigError(f"container {ref.container_name} not found")
        target = named[0]
    divisor = getattr(ref, "divisor", "")
    return resource_value(ref.resource, divisor if isinstance(divisor, str) else "", target, node_allocatable)


# ---- the environment ----

def _source_data(kind: str, obj) -> list[tuple[str, str]]:
    if kind == "ConfigMap":
        return [(k, v) for k, v in obj.data.items()]
    return [(k, _text(v)) for k, v in obj.data.items()]


def _env_from(container: core_pb2.Container, objects: _Objects, namespace: str,
              env: dict[str, str], events: list[Event]) -> None:
    for source in getattr(container, "env_from", ()):
        if _has(source, "config_map_ref"):
            kind, ref, word = "ConfigMap", source.config_map_ref, "configMap"
        elif _has(source, "secret_ref"):
            kind, ref, word = "Secret", source.secret_ref, "secret"
        else:
            continue
        obj = objects.fetch(kind, ref.name)
        if obj is None:
            if _optional(ref):
                continue
            raise ContainerConfigError(not_found(kind, ref.name))
        invalid = []
        for key, value in sorted(_source_data(kind, obj)):
            name = source.prefix + key
            if not is_env_var_name(name):
                invalid.append(name)
                continue
            env[name] = value
        if invalid:
            events.append(Event("Warning", INVALID_NAMES_REASON,
                                f"Keys [{', '.join(sorted(invalid))}] from the EnvFrom {word} "
                                f"{namespace}/{ref.name} were skipped since they are considered "
                                f"invalid environment variable names."))


def _key_ref(objects: _Objects, kind: str, namespace: str, ref) -> str | None:
    """The referenced key's value; None when optional and absent."""
    obj = objects.fetch(kind, ref.name)
    if obj is None:
        if _optional(ref):
            return None
        raise ContainerConfigError(not_found(kind, ref.name))
    data = obj.data
    if ref.key not in data:
        if _optional(ref):
            return None
        raise ContainerConfigError(f"couldn't find key {ref.key} in {kind} {namespace}/{ref.name}")
    return _text(data[ref.key])


def environment(pod: core_pb2.Pod, container: core_pb2.Container, get: Getter | None = None, *,
                pod_ips: Sequence[str] = (), host_ips: Sequence[str] = (),
                node_allocatable: Mapping[str, str] | None = None) -> Environment:
    """The container's environment; raises ContainerConfigError when it cannot be made.

    ``pod_ips`` are the sandbox's addresses (the first of the node's family is
    status.podIP), ``host_ips`` the node's; ``node_allocatable`` fills missing
    limits for resourceFieldRef."""
    namespace = pod.metadata.namespace
    objects = _Objects(get, namespace)
    env: dict[str, str] = {}
    result = Environment()
    _env_from(container, objects, namespace, env, result.events)
    lookup = mapping_for(env)   # sees each variable as soon as it is set
    for var in container.env:
        if var.value:
            value: str | None = expand(var.value, lookup)
        elif _has(var, "value_from"):
            src = var.value_from
            if _has(src, "field_ref"):
                value = field_value(pod, src.field_ref.api_version, src.field_ref.field_path,
                                    pod_ips=pod_ips, host_ips=host_ips)
            elif _has(src, "resource_field_ref"):
                value = _resource_field(pod, container, src.resource_field_ref, node_allocatable)
            elif _has(src, "config_map_key_ref"):
                value = _key_ref(objects, "ConfigMap", namespace, src.config_map_key_ref)
            elif _has(src, "secret_key_ref"):
                value = _key_ref(objects, "Secret", namespace, src.secret_key_ref)
            else:
                value = ""
            if value is None:
                continue
        else:
            value = ""
        env[var.name] = value
    result.vars = list(env.items())
    return result


def expand_command_and_args(container: core_pb2.Container,
                            env: Iterable[tuple[str, str]] | Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The container's command and args with ``$(VAR)`` expanded against its
    final environment (upstream's ExpandContainerCommandAndArgs)."""
    values = dict(env.items() if isinstance(env, Mapping) else env)
    lookup = mapping_for(values)
    return ([expand(c, lookup) for c in container.command],
            [expand(a, lookup) for a in container.args])
