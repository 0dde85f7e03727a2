"""Validation for each kind, as kube-apiserver's strategies do (defaults are in
``defaults``). ``validate_create`` and ``validate_update`` check what pkg/apis/*/validation checks, collecting every
problem as Kubernetes' field errors (field path, reason, detail) and raising one
errors.invalid(kind, name, causes).

Not here: uid, creationTimestamp, resourceVersion, generation, generateName
and status semantics (the registry's), whether referenced objects exist, and
which strings are valid names, keys or addresses (``syntax``'s rules, used here).

Per kind group: ``validation_pod`` (pods and templates), ``validation_network``
(EndpointSlice, IPAddress), ``validation_storage``, ``validation_rbac``; what they share
(field errors, value checks) is ``validation_common``.
"""

from __future__ import annotations

import ipaddress
import json

from apiserver import validation_network as _net
from apiserver import validation_rbac as _rbac
from apiserver import validation_storage as _storage
from apiserver import validation_certificates as _certs
from apiserver import validation_admission as _admission
from apiserver.resources import BY_NAME as _BY_NAME, Resource
from apiserver.selectors import LabelSelectorError, label_selector_from_proto, quote
from apiserver.syntax import (
    cidr_errors,
    config_key_errors,
    dns1035_label_errors,
    dns1123_label_errors,
    dns1123_subdomain_errors,
    ip_errors,
    is_integer,
    label_value_errors,
    percent_errors,
    qualified_name_errors,
)
from apiserver.validation_common import (
    NON_NEGATIVE_MESSAGE,
    FieldErrors,
    _enum,
    _labels,
    _non_negative,
    _port,
    _port_number_or_name,
    _Raw,
)
from apiserver.validation_pod import (
    PROTOCOLS,
    TAINT_EFFECTS,
    _quantity,
    _validate_pod,
    _validate_pod_spec,
    _validate_pod_update,
)

# ======================================================================
# metadata
# ======================================================================

TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024
STANDARD_FINALIZERS = ("kubernetes", "orphan", "foregroundDeletion")


def _name_errors(resource: Resource):
    if resource.name == "namespaces":
        return dns1123_label_errors
    if resource.name == "services":
        return dns1035_label_errors
    if resource.group in ("rbac.authorization.k8s.io", "certificates.k8s.io"):
        # certificates: upstream does not care what a request is called; the storage key and
        # the REST path still need a path segment
        return _rbac.path_segment_errors
    return dns1123_subdomain_errors


def _validate_meta(errs: FieldErrors, resource: Resource, meta) -> None:
    if not meta.name:
        errs.required("metadata.name", "name or generateName is required")
    else:
        errs.each("metadata.name", meta.name, _name_errors(resource)(meta.name))
    if resource.namespaced:
        if not meta.namespace:
            errs.required("metadata.namespace")
        else:
            errs.each("metadata.namespace", meta.namespace, dns1123_label_errors(meta.namespace))
    elif meta.namespace:
        errs.forbidden("metadata.namespace", "not allowed on this type")
    _validate_labels_and_annotations(errs, "metadata", meta)
    _validate_owner_references(errs, meta.owner_references)
    _validate_finalizers(errs, "metadata.finalizers", meta.finalizers)


def _validate_labels_and_annotations(errs: FieldErrors, path: str, meta) -> None:
    _labels(errs, f"{path}.labels", meta.labels)
    size = 0
    for key in sorted(meta.annotations):
        errs.each(f"{path}.annotations", key, qualified_name_errors(key.lower()))
        size += len(key) + len(meta.annotations[key])
    if size > TOTAL_ANNOTATION_SIZE_LIMIT:
        errs.too_long(f"{path}.annotations", TOTAL_ANNOTATION_SIZE_LIMIT)


def _validate_owner_references(errs: FieldErrors, refs) -> None:
    controllers = []
    for i, ref in enumerate(refs):
        path = f"metadata.ownerReferences[{i}]"
        for field, json_name, what in (("api_version", "apiVersion", "version"),
                                       ("kind", "kind", "kind"), ("name", "name", "name"),
                                       ("uid", "uid", "uid")):
            if not getattr(ref, field):
                errs.invalid(f"{path}.{json_name}", "", f"{what} must not be empty")
        if ref.controller:
            controllers.append(ref.name)
    if len(controllers) > 1:
        errs.invalid("metadata.ownerReferences", ", ".join(controllers),
                     "Only one reference can have Controller set to true")


def _validate_finalizers(errs: FieldErrors, path: str, finalizers) -> None:
    seen = set()
    for name in finalizers:
        problems = qualified_name_errors(name)
        errs.each(path, name, problems)
        if not problems and "/" not in name and name not in STANDARD_FINALIZERS:
            errs.invalid(path, name, "name is neither a standard finalizer name nor is it fully "
                         "qualified")
        if name in seen:
            errs.duplicate(path, name)
        seen.add(name)


def _validate_meta_update(errs: FieldErrors, new, old) -> None:
    """Immutable metadata. An empty uid or creationTimestamp in ``new`` is
    not a change: the registry carries them over from ``old``, as Kubernetes'
    BeforeUpdate does."""
    for field, json_name in (("name", "name"), ("namespace", "namespace"), ("uid", "uid"),
                             ("creation_timestamp", "creationTimestamp")):
        value, before = getattr(new, field), getattr(old, field)
        if field in ("uid", "creation_timestamp") and not value:
            continue
        if value != before:
            errs.invalid(f"metadata.{json_name}", value, "field is immutable")


# ======================================================================
# ReplicaSet, Deployment
# ======================================================================

def _validate_workload(errs: FieldErrors, kind: str, spec) -> None:
    """What ReplicaSet and Deployment specs share: replicas, selector, template."""
    if spec.HasField("replicas"):
        _non_negative(errs, "spec.replicas", spec.replicas)
    _non_negative(errs, "spec.minReadySeconds", spec.min_ready_seconds)
    selector = None
    if not spec.HasField("selector"):
        errs.required("spec.selector")
    else:
        try:
            selector = label_selector_from_proto(spec.selector)
        except LabelSelectorError as e:
            for field, reason, detail in e.causes:
                errs.add(f"spec.selector.{field}", reason, detail)
        else:
            if selector.empty:
                errs.invalid("spec.selector", _shown_selector(spec.selector),
                             f"empty selector is invalid for {kind.lower()}")
                selector = None
    template = spec.template
    _validate_labels_and_annotations(errs, "spec.template.metadata", template.metadata)
    if selector is not None and not selector.matches(template.metadata.labels):
        errs.invalid("spec.template.metadata.labels", _go_map(template.metadata.labels),
                     "`selector` does not match template `labels`")
    _validate_pod_spec(errs, "spec.template.spec", template.spec, template=True)


def _go_map(m) -> _Raw:
    return _Raw("map[string]string{" + ", ".join(f"{quote(k)}:{quote(m[k])}" for k in sorted(m)) + "}")


def _shown_selector(selector) -> _Raw:
    try:
        text = str(label_selector_from_proto(selector))
    except LabelSelectorError:
        text = "?"
    return _Raw(f"LabelSelector{{{text}}}")


def _validate_replica_set(errs: FieldErrors, rs) -> None:
    _validate_workload(errs, "ReplicaSet", rs.spec)


def _int_or_percent(errs: FieldErrors, path: str, value: str):
    """An IntOrString count: returns (number, is_percent), or None after an error."""
    if is_integer(value):
        number = int(value)
        if number < 0:
            errs.invalid(path, value, NON_NEGATIVE_MESSAGE)
            return None
        return number, False
    problems = percent_errors(value)
    if problems:
        errs.each(path, value, problems)
        return None
    return int(value[:-1]), True


def _validate_deployment(errs: FieldErrors, d) -> None:
    spec = d.spec
    _validate_workload(errs, "Deployment", spec)
    if spec.HasField("revision_history_limit"):
        _non_negative(errs, "spec.revisionHistoryLimit", spec.revision_history_limit)
    if spec.HasField("progress_deadline_seconds"):
        _non_negative(errs, "spec.progressDeadlineSeconds", spec.progress_deadline_seconds)
        if spec.progress_deadline_seconds <= spec.min_ready_seconds:
            errs.invalid("spec.progressDeadlineSeconds", spec.progress_deadline_seconds,
                         "must be greater than minReadySeconds")
    strategy = spec.strategy
    if strategy.type == "Recreate":
        if strategy.HasField("rolling_update") and strategy.rolling_update.ByteSize():
            errs.forbidden("spec.strategy.rollingUpdate",
                           "may not be specified when strategy `type` is 'Recreate'")
    elif strategy.type == "RollingUpdate":
        p = "spec.strategy.rollingUpdate"
        ru = strategy.rolling_update
        unavailable = _int_or_percent(errs, f"{p}.maxUnavailable", ru.max_unavailable)
        surge = _int_or_percent(errs, f"{p}.maxSurge", ru.max_surge)
        if unavailable and unavailable[1] and unavailable[0] > 100:
            errs.invalid(f"{p}.maxUnavailable", ru.max_unavailable, "must not be greater than 100%")
        if unavailable and surge and unavailable[0] == 0 and surge[0] == 0:
            errs.invalid(f"{p}.maxUnavailable", ru.max_unavailable,
                         "may not be 0 when `maxSurge` is 0")
    else:
        _enum(errs, "spec.strategy.type", strategy.type, ("Recreate", "RollingUpdate"))


def _validate_selector_update(errs: FieldErrors, new, old) -> None:
    if new.spec.selector != old.spec.selector:
        errs.invalid("spec.selector", _shown_selector(new.spec.selector), "field is immutable")


# ======================================================================
# Service, Endpoints
# ======================================================================

SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")
SESSION_AFFINITIES = ("ClientIP", "None")
TRAFFIC_POLICIES = ("Cluster", "Local")
MAX_CLIENT_IP_TIMEOUT = 86400



def _special_ip_errors(text: str) -> list[str]:
    """Kubernetes' ValidateNonSpecialIP (an external IP): addresses a node uses for itself."""
    ip = ipaddress.ip_address(text)
    if ip.is_unspecified:
        return [f"may not be unspecified ({text})"]
    if ip.is_loopback:
        return ["may not be in the loopback range (127.0.0.0/8, ::1/128)"]
    if ip.is_link_local:
        return ["may not be in the link-local range (169.254.0.0/16, fe80::/10)"]
    if ip in ipaddress.ip_network("224.0.0.0/24") or ip in ipaddress.ip_network("ff02::/16"):
        return ["may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"]
    return []

def _validate_service(errs: FieldErrors, svc) -> None:
    spec = svc.spec
    _enum(errs, "spec.type", spec.type, SERVICE_TYPES)
    if spec.type != "ExternalName" and not spec.ports:
        errs.required("spec.ports")
    names: set[str] = set()
    claims: set[tuple[int, str]] = set()
    for i, port in enumerate(spec.ports):
        p = f"spec.ports[{i}]"
        if not port.name:
            if len(spec.ports) > 1:
                errs.required(f"{p}.name")
        else:
            errs.each(f"{p}.name", port.name, dns1123_label_errors(port.name))
            if port.name in names:
                errs.duplicate(f"{p}.name", port.name)
            names.add(port.name)
        _port(errs, f"{p}.port", port.port)
        _enum(errs, f"{p}.protocol", port.protocol, PROTOCOLS)
        _port_number_or_name(errs, f"{p}.targetPort", port.target_port)
        if port.node_port:
            _port(errs, f"{p}.nodePort", port.node_port)
            if spec.type == "ClusterIP":
                errs.forbidden(f"{p}.nodePort", "may not be used when `type` is 'ClusterIP'")
        claim = (port.port, port.protocol)
        if claim in claims:
            errs.duplicate(p, f"{port.port}/{port.protocol}")
        claims.add(claim)
    node_ports: set[tuple[int, str]] = set()
    for i, port in enumerate(spec.ports):
        if port.node_port:
            if (port.node_port, port.protocol) in node_ports:
                errs.duplicate(f"spec.ports[{i}].nodePort", port.node_port)
            node_ports.add((port.node_port, port.protocol))
    _enum(errs, "spec.sessionAffinity", spec.session_affinity, SESSION_AFFINITIES, required=False)
    _labels(errs, "spec.selector", spec.selector)
    if spec.cluster_ip and spec.cluster_ip != "None":
        errs.each("spec.clusterIP", spec.cluster_ip, ip_errors(spec.cluster_ip))
    for i, ip in enumerate(spec.cluster_ips):
        if ip != "None":
            errs.each(f"spec.clusterIPs[{i}]", ip, ip_errors(ip))
    if spec.type == "ExternalName":
        if spec.cluster_ip or spec.cluster_ips:
            errs.forbidden("spec.clusterIPs", "may not be set for ExternalName services")
        if spec.HasField("ip_family_policy"):
            errs.forbidden("spec.ipFamilyPolicy", "may not be set for ExternalName services")
        if spec.ip_families:
            errs.forbidden("spec.ipFamilies", "may not be set for ExternalName services")
        name = spec.external_name.removesuffix(".")
        if not name:
            errs.required("spec.externalName")
        else:
            errs.each("spec.externalName", name, dns1123_subdomain_errors(name))
    elif spec.type in ("NodePort", "LoadBalancer") and spec.cluster_ip == "None":
        errs.invalid("spec.clusterIPs[0]", "None", f"may not be set to 'None' for {spec.type} services")
    for i, ip in enumerate(spec.external_ips):
        errs.each(f"spec.externalIPs[{i}]", ip, ip_errors(ip) or _special_ip_errors(ip))
    if spec.external_traffic_policy:
        _enum(errs, "spec.externalTrafficPolicy", spec.external_traffic_policy, TRAFFIC_POLICIES)
        if spec.type not in ("NodePort", "LoadBalancer") and not spec.external_ips:
            errs.invalid("spec.externalTrafficPolicy", spec.external_traffic_policy,
                         "may only be set for externally-accessible services")
    if spec.HasField("internal_traffic_policy"):
        _enum(errs, "spec.internalTrafficPolicy", spec.internal_traffic_policy, TRAFFIC_POLICIES)
    if spec.health_check_node_port and not (
            spec.type == "LoadBalancer" and spec.external_traffic_policy == "Local"):
        errs.invalid("spec.healthCheckNodePort", spec.health_check_node_port,
                     "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'")
    timeout = spec.session_affinity_config.client_ip.timeout_seconds
    if spec.session_affinity == "ClientIP" and not 0 < timeout <= MAX_CLIENT_IP_TIMEOUT:
        errs.invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds", timeout,
                     f"must be greater than 0 and less than {MAX_CLIENT_IP_TIMEOUT}")
    elif spec.session_affinity != "ClientIP" and spec.HasField("session_affinity_config"):
        errs.invalid("spec.sessionAffinityConfig", _Raw("{}") if not timeout else timeout,
                     "must not be set when session affinity is None")


def _validate_service_update(errs: FieldErrors, new, old) -> None:
    if "ExternalName" in (new.spec.type, old.spec.type):
        return
    if old.spec.cluster_ips and list(new.spec.cluster_ips[:1]) != list(old.spec.cluster_ips[:1]):
        shown = _Raw("[]string{" + ", ".join(json.dumps(ip) for ip in new.spec.cluster_ips) + "}")
        if not new.spec.cluster_ips:
            errs.invalid("spec.clusterIPs[0]", shown, "primary clusterIP can not be unset")
        else:
            errs.invalid("spec.clusterIPs[0]", shown, "may not change once set")
    elif old.spec.cluster_ip and new.spec.cluster_ip != old.spec.cluster_ip:
        errs.invalid("spec.clusterIP", new.spec.cluster_ip, "field is immutable")


def _validate_endpoints(errs: FieldErrors, ep) -> None:
    for i, subset in enumerate(ep.subsets):
        p = f"subsets[{i}]"
        for field, json_name in (("addresses", "addresses"),
                                 ("not_ready_addresses", "notReadyAddresses")):
            for j, addr in enumerate(getattr(subset, field)):
                errs.each(f"{p}.{json_name}[{j}].ip", addr.ip, ip_errors(addr.ip))
        for j, port in enumerate(subset.ports):
            pp = f"{p}.ports[{j}]"
            if port.name:
                errs.each(f"{pp}.name", port.name, dns1123_label_errors(port.name))
            elif len(subset.ports) > 1:
                errs.required(f"{pp}.name")
            _port(errs, f"{pp}.port", port.port)
            _enum(errs, f"{pp}.protocol", port.protocol, PROTOCOLS)


# ======================================================================
# ConfigMap, Secret
# ======================================================================

MAX_DATA_SIZE = 1024 * 1024  # a ConfigMap's or Secret's values, as Kubernetes' MaxSecretSize
_SECRET_REQUIRED_KEYS = {
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/dockercfg": (".dockercfg",),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
}


def _validate_config_map(errs: FieldErrors, cm) -> None:
    size = 0
    for key in sorted(cm.data):
        errs.each(f"data[{key}]", key, config_key_errors(key))
        size += len(cm.data[key].encode("utf-8"))
    for key in sorted(cm.binary_data):
        errs.each(f"binaryData[{key}]", key, config_key_errors(key))
        if key in cm.data:
            errs.invalid(f"binaryData[{key}]", key, "duplicate of key present in data")
        size += len(cm.binary_data[key])
    if size > MAX_DATA_SIZE:
        errs.too_long("data", MAX_DATA_SIZE)


def _validate_secret(errs: FieldErrors, secret) -> None:
    size = 0
    for key in sorted(secret.data):
        errs.each(f"data[{key}]", key, config_key_errors(key))
        size += len(secret.data[key])
    for key in sorted(secret.string_data):
        errs.each(f"stringData[{key}]", key, config_key_errors(key))
    if size > MAX_DATA_SIZE:
        errs.too_long("data", MAX_DATA_SIZE)
    for key in _SECRET_REQUIRED_KEYS.get(secret.type, ()):
        if key not in secret.data:
            errs.required(f"data[{key}]")
    if secret.type == "kubernetes.io/dockerconfigjson" and ".dockerconfigjson" in secret.data:
        try:
            json.loads(secret.data[".dockerconfigjson"])
        except ValueError as e:
            errs.invalid("data[.dockerconfigjson]", "<secret contents redacted>", str(e))
        except RecursionError:  # nested past what json.loads holds
            errs.invalid("data[.dockerconfigjson]", "<secret contents redacted>", "exceeded max depth")
    if secret.type == "kubernetes.io/basic-auth" and \
            "username" not in secret.data and "password" not in secret.data:
        errs.required("data[username]")
    if secret.type == "kubernetes.io/service-account-token" and \
            not secret.metadata.annotations.get("kubernetes.io/service-account.name"):
        errs.required("metadata.annotations[kubernetes.io/service-account.name]")


def _validate_immutable_data(errs: FieldErrors, new, old, data_fields) -> None:
    """A ConfigMap or Secret marked immutable keeps its data and the mark."""
    if not (old.HasField("immutable") and old.immutable):
        return
    message = "field is immutable when `immutable` is set"
    if not (new.HasField("immutable") and new.immutable):
        errs.forbidden("immutable", message)
    for field, json_name in data_fields:
        if dict(getattr(new, field)) != dict(getattr(old, field)):
            errs.forbidden(json_name, message)


def _validate_config_map_update(errs: FieldErrors, new, old) -> None:
    _validate_immutable_data(errs, new, old, (("data", "data"), ("binary_data", "binaryData")))


def _validate_secret_update(errs: FieldErrors, new, old) -> None:
    if new.type != old.type:
        errs.invalid("type", new.type, "field is immutable")
    _validate_immutable_data(errs, new, old, (("data", "data"),))


# ======================================================================
# Namespace, Node, Event, Lease
# ======================================================================

def _validate_namespace(errs: FieldErrors, ns) -> None:
    for name in ns.spec.finalizers:
        errs.each("spec.finalizers", name, qualified_name_errors(name))


def _validate_node(errs: FieldErrors, node) -> None:
    seen: set[tuple[str, str]] = set()
    for i, taint in enumerate(node.spec.taints):
        p = f"spec.taints[{i}]"
        if not taint.key:
            errs.required(f"{p}.key")
        else:
            errs.each(f"{p}.key", taint.key, qualified_name_errors(taint.key))
        errs.each(f"{p}.value", taint.value, label_value_errors(taint.value))
        _enum(errs, f"{p}.effect", taint.effect, TAINT_EFFECTS)
        if (taint.key, taint.effect) in seen:
            errs.duplicate(p, f"{taint.key}:{taint.effect}")
        seen.add((taint.key, taint.effect))
    if node.spec.pod_cidr:
        errs.each("spec.podCIDR", node.spec.pod_cidr, cidr_errors(node.spec.pod_cidr))
    for field, json_name in (("capacity", "capacity"), ("allocatable", "allocatable")):
        values = getattr(node.status, field)
        for name in sorted(values):
            _quantity(errs, f"status.{json_name}[{name}]", values[name])


def _validate_node_update(errs: FieldErrors, new, old) -> None:
    for field, json_name in (("pod_cidr", "podCIDR"), ("provider_id", "providerID")):
        before = getattr(old.spec, field)
        if before and getattr(new.spec, field) != before:
            errs.forbidden(f"spec.{json_name}", f"node updates may not change {json_name} "
                           'except from "" to valid')


def _validate_event(errs: FieldErrors, ev) -> None:
    involved = ev.involved_object
    if not involved.ByteSize():
        errs.required("involvedObject")
    elif not involved.kind:
        errs.required("involvedObject.kind")
    if involved.namespace and involved.namespace != ev.metadata.namespace:
        errs.invalid("involvedObject.namespace", involved.namespace,
                     "does not match event.namespace")


def _validate_lease(errs: FieldErrors, lease) -> None:
    spec = lease.spec
    if spec.HasField("lease_duration_seconds") and spec.lease_duration_seconds <= 0:
        errs.invalid("spec.leaseDurationSeconds", spec.lease_duration_seconds,
                     "must be greater than 0")
    if spec.HasField("lease_transitions"):
        _non_negative(errs, "spec.leaseTransitions", spec.lease_transitions)


# ======================================================================
# entry points
# ======================================================================


_VALIDATE = {
    "namespaces": _validate_namespace,
    "nodes": _validate_node,
    "pods": _validate_pod,
    "services": _validate_service,
    "endpoints": _validate_endpoints,
    "configmaps": _validate_config_map,
    "secrets": _validate_secret,
    "events": _validate_event,
    "replicasets": _validate_replica_set,
    "deployments": _validate_deployment,
    "leases": _validate_lease,
    "endpointslices": _net.validate_endpoint_slice,
    "ipaddresses": _net.validate_ip_address,
    "persistentvolumes": _storage.validate_persistent_volume,
    "persistentvolumeclaims": _storage.validate_persistent_volume_claim,
    "storageclasses": _storage.validate_storage_class,
    "serviceaccounts": _rbac.validate_service_account,
    "roles": _rbac.validate_role,
    "clusterroles": _rbac.validate_cluster_role,
    "rolebindings": _rbac.validate_role_binding,
    "clusterrolebindings": _rbac.validate_cluster_role_binding,
    "certificatesigningrequests": _certs.validate_csr,
    "validatingwebhookconfigurations": _admission.validate_validating,
    "mutatingwebhookconfigurations": _admission.validate_mutating,
}
_VALIDATE_UPDATE = {
    "nodes": _validate_node_update,
    "pods": _validate_pod_update,
    "services": _validate_service_update,
    "configmaps": _validate_config_map_update,
    "secrets": _validate_secret_update,
    "replicasets": _validate_selector_update,
    "deployments": _validate_selector_update,
    "endpointslices": _net.validate_endpoint_slice_update,
    "ipaddresses": _net.validate_ip_address_update,
    "persistentvolumes": _storage.validate_persistent_volume_update,
    "persistentvolumeclaims": _storage.validate_persistent_volume_claim_update,
    "storageclasses": _storage.validate_storage_class_update,
    "rolebindings": _rbac.validate_binding_update,
    "clusterrolebindings": _rbac.validate_binding_update,
    "certificatesigningrequests": _certs.csr_update,
}


def validate_create(resource: Resource, msg) -> None:
    """Raises errors.invalid(kind, name, causes) listing every problem of a
    new object (after apply_defaults)."""
    errs = FieldErrors()
    _validate_meta(errs, resource, msg.metadata)
    _VALIDATE[resource.name](errs, msg)
    errs.raise_if_any(resource.kind, msg.metadata.name)


def validate_update(resource: Resource, new, old) -> None:
    """Raises errors.invalid(kind, name, causes) when ``new`` is not a valid
    object or changes what may not change since ``old``."""
    errs = FieldErrors()
    _validate_meta(errs, resource, new.metadata)
    _validate_meta_update(errs, new.metadata, old.metadata)
    _VALIDATE[resource.name](errs, new)
    check = _VALIDATE_UPDATE.get(resource.name)
    if check is not None:
        check(errs, new, old)
    errs.raise_if_any(resource.kind, new.metadata.name)


def validate_csr_update(new, old, subresource: str) -> None:
    """A CertificateSigningRequest's status or approval subresource update (the registry
    knows which; an update of the object goes through validate_update)."""
    errs = FieldErrors()
    _validate_meta(errs, BY_CSR, new.metadata)
    _certs.validate_csr(errs, new, old)
    _certs.csr_update(errs, new, old, subresource=subresource)
    errs.raise_if_any(BY_CSR.kind, new.metadata.name)


BY_CSR = _BY_NAME["certificatesigningrequests"]
