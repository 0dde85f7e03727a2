"""Pods and pod templates, as pkg/apis/core/validation checks them: the spec, volumes,
containers, probes, lifecycle hooks, scheduling constraints, and what may change on update."""

from __future__ import annotations

import re

from apiserver.defaults import volume_sources
from apiserver.pb import core_pb2
from apiserver.quantity import parse_quantity
from apiserver.syntax import (
    config_key_errors,
    dns1123_label_errors,
    dns1123_subdomain_errors,
    env_var_name_errors,
    is_integer,
    label_value_errors,
    port_name_errors,
    qualified_name_errors,
)
from apiserver.validation_common import (
    FILE_MODE_MESSAGE,
    ID_RANGE_MESSAGE,
    NON_NEGATIVE_MESSAGE,
    _HTTP_HEADER_NAME_MESSAGE,
    FieldErrors,
    _enum,
    _labels,
    _non_negative,
    _port,
    _port_number_or_name,
)
from apiserver.validation_pod_scheduling import validate_pod_scheduling_constraints

# ======================================================================
# Pod
# ======================================================================

RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
TERMINATION_MESSAGE_POLICIES = ("File", "FallbackToLogsOnError")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
PROTOCOLS = ("SCTP", "TCP", "UDP")
TAINT_EFFECTS = ("NoExecute", "NoSchedule", "PreferNoSchedule")
STANDARD_CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_VOLUME_SOURCE_JSON = {"host_path": "hostPath", "empty_dir": "emptyDir", "secret": "secret",
                       "persistent_volume_claim": "persistentVolumeClaim",
                       "config_map": "configMap", "downward_api": "downwardAPI", "projected": "projected"}
# what a downwardAPI volume file may name (upstream's validVolumeDownwardAPIFieldPathExpressions)
DOWNWARD_VOLUME_FIELDS = ("metadata.annotations", "metadata.labels", "metadata.name", "metadata.namespace",
                          "metadata.uid")


def _validate_pod_spec(errs: FieldErrors, path: str, spec, *, template: bool) -> None:
    """A PodSpec at ``path`` ("spec" or "spec.template.spec")."""
    volumes = _validate_volumes(errs, f"{path}.volumes", spec.volumes)
    if not spec.containers:
        errs.required(f"{path}.containers")
    names: set[str] = set()
    grace = (spec.termination_grace_period_seconds
             if spec.HasField("termination_grace_period_seconds") else None)
    _validate_containers(errs, f"{path}.initContainers", spec.init_containers, volumes, names,
                         init=True, grace=grace)
    _validate_containers(errs, f"{path}.containers", spec.containers, volumes, names, init=False,
                         grace=grace)
    _enum(errs, f"{path}.dnsPolicy", spec.dns_policy, DNS_POLICIES)
    if spec.dns_policy == "None":  # we carry no dnsConfig
        errs.required(f"{path}.dnsConfig", "must provide `dnsConfig` when `dnsPolicy` is None")
    if spec.HasField("security_context"):
        _validate_pod_security_context(errs, f"{path}.securityContext", spec.security_context)
    _validate_host_ports(errs, f"{path}.containers", spec.containers)
    if template:
        if spec.restart_policy != "Always":
            errs.not_supported(f"{path}.restartPolicy", spec.restart_policy, ["Always"])
        if spec.HasField("active_deadline_seconds"):
            errs.forbidden(f"{path}.activeDeadlineSeconds",
                           "activeDeadlineSeconds in a pod template is not supported")
    else:
        _enum(errs, f"{path}.restartPolicy", spec.restart_policy, RESTART_POLICIES)
    if spec.HasField("active_deadline_seconds") and not 1 <= spec.active_deadline_seconds <= 2 ** 31 - 1:
        errs.invalid(f"{path}.activeDeadlineSeconds", spec.active_deadline_seconds,
                     "must be between 1 and 2147483647, inclusive")
    if spec.HasField("termination_grace_period_seconds"):
        _non_negative(errs, f"{path}.terminationGracePeriodSeconds",
                      spec.termination_grace_period_seconds)
    _labels(errs, f"{path}.nodeSelector", spec.node_selector)
    for field, json_name, check in (
            ("node_name", "nodeName", dns1123_subdomain_errors),
            ("service_account_name", "serviceAccountName", dns1123_subdomain_errors),
            ("scheduler_name", "schedulerName", dns1123_subdomain_errors),
            ("hostname", "hostname", dns1123_label_errors),
            ("subdomain", "subdomain", dns1123_label_errors)):
        value = getattr(spec, field)
        if value:
            errs.each(f"{path}.{json_name}", value, check(value))
    _validate_tolerations(errs, f"{path}.tolerations", spec.tolerations)
    if spec.affinity.HasField("node_affinity"):
        _validate_node_affinity(errs, f"{path}.affinity.nodeAffinity", spec.affinity.node_affinity)
    validate_pod_scheduling_constraints(errs, path, spec)


def _unique_label_name(errs: FieldErrors, path: str, name: str, names: set[str]) -> None:
    """A volume's or container's name: required, a DNS-1123 label, unique among ``names``
    (which it joins)."""
    if not name:
        errs.required(path)
        return
    errs.each(path, name, dns1123_label_errors(name))
    if name in names:
        errs.duplicate(path, name)
    names.add(name)


def _validate_volumes(errs: FieldErrors, path: str, volumes) -> set[str]:
    names: set[str] = set()
    for i, v in enumerate(volumes):
        p = f"{path}[{i}]"
        _unique_label_name(errs, f"{p}.name", v.name, names)
        sources = volume_sources(v)
        if not sources:
            errs.required(p, "must specify a volume type")
        elif len(sources) > 1:
            errs.forbidden(f"{p}.{_VOLUME_SOURCE_JSON[sources[1]]}",
                           "may not specify more than 1 volume type")
        if v.HasField("host_path") and not v.host_path.path:
            errs.required(f"{p}.hostPath.path")
        if v.HasField("secret"):
            if not v.secret.secret_name:
                errs.required(f"{p}.secret.secretName")
            _validate_projected_files(errs, f"{p}.secret", v.secret)
        if v.HasField("config_map"):
            if not v.config_map.name:
                errs.required(f"{p}.configMap.name")
            _validate_projected_files(errs, f"{p}.configMap", v.config_map)
        if v.HasField("persistent_volume_claim") and not v.persistent_volume_claim.claim_name:
            errs.required(f"{p}.persistentVolumeClaim.claimName")
        if v.HasField("empty_dir") and v.empty_dir.size_limit:
            _quantity(errs, f"{p}.emptyDir.sizeLimit", v.empty_dir.size_limit)
        if v.HasField("downward_api"):
            if v.downward_api.HasField("default_mode"):
                _file_mode(errs, f"{p}.downwardAPI.defaultMode", v.downward_api.default_mode)
            _validate_downward_files(errs, f"{p}.downwardAPI", v.downward_api.items)
        if v.HasField("projected"):
            _validate_projected(errs, f"{p}.projected", v.projected)
    return names


def _validate_downward_files(errs: FieldErrors, path: str, items, seen: set[str] | None = None) -> None:
    for i, item in enumerate(items):
        p = f"{path}.items[{i}]"
        if not item.path:
            errs.required(f"{p}.path")
        _local_non_reserved_path(errs, f"{p}.path", item.path)
        if seen is not None and item.path:
            if item.path in seen:
                errs.invalid(f"{p}.path", item.path, "conflicting duplicate paths")
            seen.add(item.path)
        if item.HasField("mode"):
            _file_mode(errs, f"{p}.mode", item.mode)
        if not item.HasField("field_ref"):
            errs.required(p, "one of fieldRef and resourceFieldRef is required")
            continue
        field = item.field_ref.field_path
        base = field.split("[", 1)[0] if field.endswith("]") else field
        if not field:
            errs.required(f"{p}.fieldRef.fieldPath")
        elif base not in DOWNWARD_VOLUME_FIELDS or (base != field and base not in ("metadata.annotations",
                                                                                   "metadata.labels")):
            errs.not_supported(f"{p}.fieldRef.fieldPath", field, list(DOWNWARD_VOLUME_FIELDS))


def _validate_projected(errs: FieldErrors, path: str, src) -> None:
    """upstream's validateProjectedVolumeSource: one kind per source, paths unique across them,
    token paths given and lifetimes of at least 10 minutes."""
    if src.HasField("default_mode"):
        _file_mode(errs, f"{path}.defaultMode", src.default_mode)
    seen: set[str] = set()

    def unique(p: str, target: str) -> None:
        if target in seen:
            errs.invalid(p, target, "conflicting duplicate paths")
        seen.add(target)

    for i, source in enumerate(src.sources):
        p = f"{path}.sources[{i}]"
        kinds = [f for f in ("secret", "downward_api", "config_map", "service_account_token") if source.HasField(f)]
        if not kinds:
            errs.required(p, "must specify exactly one volume projection type")
        elif len(kinds) > 1:
            errs.forbidden(p, "may not specify more than 1 volume type per source")
        for field, json_name in (("secret", "secret"), ("config_map", "configMap")):
            if source.HasField(field):
                ref = getattr(source, field)
                if not ref.name:
                    errs.required(f"{p}.{json_name}.name")
                for j, item in enumerate(ref.items):
                    ip = f"{p}.{json_name}.items[{j}]"
                    if not item.key:
                        errs.required(f"{ip}.key")
                    if not item.path:
                        errs.required(f"{ip}.path")
                    _local_non_reserved_path(errs, f"{ip}.path", item.path)
                    if item.HasField("mode"):
                        _file_mode(errs, f"{ip}.mode", item.mode)
                    if item.path:
                        unique(f"{ip}.path", item.path)
        if source.HasField("downward_api"):
            _validate_downward_files(errs, f"{p}.downwardAPI", source.downward_api.items, seen)
        if source.HasField("service_account_token"):
            t, tp = source.service_account_token, f"{p}.serviceAccountToken"
            if t.HasField("expiration_seconds"):
                if t.expiration_seconds < 600:
                    errs.invalid(f"{tp}.expirationSeconds", t.expiration_seconds,
                                 "may not specify a duration less than 10 minutes")
                elif t.expiration_seconds > 2 ** 32:
                    errs.invalid(f"{tp}.expirationSeconds", t.expiration_seconds,
                                 "may not specify a duration larger than 2^32 seconds")
            if not t.path:
                errs.required(f"{tp}.path")
            else:
                _local_non_reserved_path(errs, f"{tp}.path", t.path)
                unique(f"{tp}.path", t.path)


def _file_mode(errs: FieldErrors, path: str, mode: int) -> None:
    if not 0 <= mode <= 0o777:
        errs.invalid(path, mode, FILE_MODE_MESSAGE)


def _validate_projected_files(errs: FieldErrors, path: str, source) -> None:
    """A ConfigMap or Secret volume's defaultMode and items (key, path, mode)."""
    if source.HasField("default_mode"):
        _file_mode(errs, f"{path}.defaultMode", source.default_mode)
    for i, item in enumerate(source.items):
        p = f"{path}.items[{i}]"
        if not item.key:
            errs.required(f"{p}.key")
        if not item.path:
            errs.required(f"{p}.path")
        _local_non_reserved_path(errs, f"{p}.path", item.path)
        if item.HasField("mode"):
            _file_mode(errs, f"{p}.mode", item.mode)


def _local_non_reserved_path(errs: FieldErrors, path: str, target: str) -> None:
    """A path a volume plugin writes under its directory: relative, no ".."
    element, not starting with ".." (a file name like "..data" is the atomic
    writer's)."""
    if target.startswith("/"):
        errs.invalid(path, target, "must be a relative path")
    if ".." in target.split("/"):
        errs.invalid(path, target, "must not contain '..'")
    elif target.startswith(".."):
        errs.invalid(path, target, "must not start with '..'")


def _id(errs: FieldErrors, path: str, value: int) -> None:
    """A user or group id (IsValidUserID / IsValidGroupID)."""
    if not 0 <= value <= 2 ** 31 - 1:
        errs.invalid(path, value, ID_RANGE_MESSAGE)


def _validate_pod_security_context(errs: FieldErrors, path: str, sc) -> None:
    for field, json_name in (("run_as_user", "runAsUser"), ("run_as_group", "runAsGroup"),
                             ("fs_group", "fsGroup")):
        if sc.HasField(field):
            _id(errs, f"{path}.{json_name}", getattr(sc, field))
    for i, gid in enumerate(sc.supplemental_groups):
        _id(errs, f"{path}.supplementalGroups[{i}]", gid)


def _validate_security_context(errs: FieldErrors, path: str, sc) -> None:
    for field, json_name in (("run_as_user", "runAsUser"), ("run_as_group", "runAsGroup")):
        if sc.HasField(field):
            _id(errs, f"{path}.{json_name}", getattr(sc, field))


def _quantity(errs: FieldErrors, path: str, text: str):
    try:
        value = parse_quantity(text)
    except ValueError:
        errs.invalid(path, text, "must match the regex "
                     "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
        return None
    if value < 0:
        errs.invalid(path, text, NON_NEGATIVE_MESSAGE)
        return None
    return value


def _validate_containers(errs: FieldErrors, path: str, containers, volumes: set[str],
                         names: set[str], *, init: bool, grace: int | None = None) -> None:
    """``grace`` is the pod's terminationGracePeriodSeconds (a preStop sleep
    must fit in it)."""
    for i, c in enumerate(containers):
        p = f"{path}[{i}]"
        _unique_label_name(errs, f"{p}.name", c.name, names)
        if not c.image:
            errs.required(f"{p}.image")
        elif c.image != c.image.strip():
            errs.invalid(f"{p}.image", c.image, "must not have leading or trailing whitespace")
        _enum(errs, f"{p}.imagePullPolicy", c.image_pull_policy, PULL_POLICIES)
        _enum(errs, f"{p}.terminationMessagePolicy", c.termination_message_policy,
              TERMINATION_MESSAGE_POLICIES)
        _validate_container_ports(errs, f"{p}.ports", c.ports)
        _validate_env_from(errs, f"{p}.envFrom", c.env_from)
        _validate_env(errs, f"{p}.env", c.env)
        if c.HasField("security_context"):
            _validate_security_context(errs, f"{p}.securityContext", c.security_context)
        _validate_resources(errs, f"{p}.resources", c.resources)
        mount_paths: set[str] = set()
        for j, m in enumerate(c.volume_mounts):
            mp = f"{p}.volumeMounts[{j}]"
            if not m.name:
                errs.required(f"{mp}.name")
            elif m.name not in volumes:
                errs.not_found(f"{mp}.name", m.name)
            if not m.mount_path:
                errs.required(f"{mp}.mountPath")
            elif m.mount_path in mount_paths:
                errs.invalid(f"{mp}.mountPath", m.mount_path, "must be unique")
            mount_paths.add(m.mount_path)
        # an init container with restartPolicy Always is a sidecar: it runs
        # beside the app containers and may have probes and hooks as they do
        sidecar = init and c.restart_policy == "Always"
        if c.restart_policy and not init:
            errs.forbidden(f"{p}.restartPolicy", "may not be set for non-init containers")
        elif c.restart_policy and not sidecar:
            errs.not_supported(f"{p}.restartPolicy", c.restart_policy, ["Always"])
        for field, json_name in (("lifecycle", "lifecycle"),
                                 ("liveness_probe", "livenessProbe"),
                                 ("readiness_probe", "readinessProbe"),
                                 ("startup_probe", "startupProbe")):
            if not c.HasField(field):
                continue
            if init and not sidecar:
                errs.forbidden(f"{p}.{json_name}",
                               "may not be set for init containers without restartPolicy=Always")
            elif field == "lifecycle":
                _validate_lifecycle(errs, f"{p}.lifecycle", c.lifecycle, grace)
            else:
                _validate_probe(errs, f"{p}.{json_name}", getattr(c, field),
                                must_succeed_once=field != "readiness_probe")


def _validate_container_ports(errs: FieldErrors, path: str, ports) -> None:
    names: set[str] = set()
    for i, port in enumerate(ports):
        p = f"{path}[{i}]"
        if port.name:
            errs.each(f"{p}.name", port.name, port_name_errors(port.name))
            if port.name in names:
                errs.duplicate(f"{p}.name", port.name)
            names.add(port.name)
        if port.container_port == 0:
            errs.required(f"{p}.containerPort")
        else:
            _port(errs, f"{p}.containerPort", port.container_port)
        _port(errs, f"{p}.hostPort", port.host_port, allow_zero=True)
        _enum(errs, f"{p}.protocol", port.protocol, PROTOCOLS)


def _validate_host_ports(errs: FieldErrors, path: str, containers) -> None:
    """No two ports of a pod may claim one (hostPort, protocol, hostIP)."""
    claimed: set[tuple[int, str, str]] = set()
    for i, c in enumerate(containers):
        for j, port in enumerate(c.ports):
            if port.host_port == 0:
                continue
            claim = (port.host_port, port.protocol, port.host_ip)
            if claim in claimed:
                errs.duplicate(f"{path}[{i}].ports[{j}].hostPort",
                               f"{port.host_port}/{port.protocol}")
            claimed.add(claim)


def _validate_env(errs: FieldErrors, path: str, env) -> None:
    for i, var in enumerate(env):
        p = f"{path}[{i}]"
        if not var.name:
            errs.required(f"{p}.name")
        else:
            errs.each(f"{p}.name", var.name, env_var_name_errors(var.name))
        if not var.HasField("value_from"):
            continue
        source = var.value_from
        if var.value:
            errs.invalid(f"{p}.valueFrom", "", "may not be specified when `value` is not empty")
        kinds = [f for f in ("field_ref", "config_map_key_ref", "secret_key_ref")
                 if source.HasField(f)]
        if not kinds:
            errs.invalid(f"{p}.valueFrom", "", "must specify one of: `fieldRef`, "
                         "`configMapKeyRef` or `secretKeyRef`")
        elif len(kinds) > 1:
            errs.invalid(f"{p}.valueFrom", "", "may not have more than one field specified at "
                         "a time")
        if source.HasField("field_ref") and not source.field_ref.field_path:
            errs.required(f"{p}.valueFrom.fieldRef.fieldPath")
        for field, json_name in (("config_map_key_ref", "configMapKeyRef"),
                                 ("secret_key_ref", "secretKeyRef")):
            if source.HasField(field):
                ref = getattr(source, field)
                if not ref.key:
                    errs.required(f"{p}.valueFrom.{json_name}.key")
                else:
                    errs.each(f"{p}.valueFrom.{json_name}.key", ref.key, config_key_errors(ref.key))
                if not ref.name:
                    errs.required(f"{p}.valueFrom.{json_name}.name")


def _validate_env_from(errs: FieldErrors, path: str, env_from) -> None:
    for i, source in enumerate(env_from):
        p = f"{path}[{i}]"
        if source.prefix:
            errs.each(f"{p}.prefix", source.prefix, env_var_name_errors(source.prefix))
        refs = [(f, j) for f, j in (("config_map_ref", "configMapRef"), ("secret_ref", "secretRef"))
                if source.HasField(f)]
        for field, json_name in refs:
            name = getattr(source, field).name
            if not name:
                errs.required(f"{p}.{json_name}.name")
            else:
                errs.each(f"{p}.{json_name}.name", name, dns1123_subdomain_errors(name))
        # upstream reports these two at the list, not the item
        if not refs:
            errs.invalid(path, "", "must specify one of: `configMapRef` or `secretRef`")
        elif len(refs) > 1:
            errs.invalid(path, "", "may not have more than one field specified at a time")


def _validate_resources(errs: FieldErrors, path: str, resources) -> None:
    limits = {}
    for which, values in (("limits", resources.limits), ("requests", resources.requests)):
        for name in sorted(values):
            p = f"{path}.{which}[{name}]"
            problems = qualified_name_errors(name)
            errs.each(p, name, problems)
            if not problems and "/" not in name and name not in STANDARD_CONTAINER_RESOURCES \
                    and not name.startswith("hugepages-"):
                errs.invalid(p, name, "must be a standard resource for containers")
            value = _quantity(errs, p, values[name])
            if which == "limits" and value is not None:
                limits[name] = value
            elif which == "requests" and value is not None and name in limits \
                    and value > limits[name]:
                errs.invalid(p, values[name], f"must be less than or equal to {name} limit of "
                             f"{resources.limits[name]}")


_HANDLER_JSON = {"exec": "exec", "http_get": "httpGet", "tcp_socket": "tcpSocket", "sleep": "sleep"}


def _validate_handler(errs: FieldErrors, path: str, handler, kinds, grace: int | None) -> None:
    """A probe's or a lifecycle hook's handler: exactly one of ``kinds``; a
    second is refused at its own path, as upstream does."""
    count = 0
    for kind in kinds:
        if not handler.HasField(kind):
            continue
        p = f"{path}.{_HANDLER_JSON[kind]}"
        if count:
            errs.forbidden(p, "may not specify more than 1 handler type")
            continue
        count += 1
        if kind == "exec" and not handler.exec.command:
            errs.required(f"{p}.command")
        elif kind == "http_get":
            action = handler.http_get
            if not action.path:
                errs.required(f"{p}.path")
            _port_number_or_name(errs, f"{p}.port", action.port)
            _enum(errs, f"{p}.scheme", action.scheme, ("HTTP", "HTTPS"), required=False)
            for header in action.http_headers:
                if not re.fullmatch(r"[-A-Za-z0-9]+", header.name):
                    errs.invalid(f"{p}.httpHeaders", header.name, _HTTP_HEADER_NAME_MESSAGE)
        elif kind == "tcp_socket":
            _port_number_or_name(errs, f"{p}.port", handler.tcp_socket.port)
        elif kind == "sleep" and grace is not None \
                and not 0 <= handler.sleep.seconds <= grace:
            errs.invalid(p, handler.sleep.seconds, "must be non-negative and less than "
                         f"terminationGracePeriodSeconds ({grace})")
    if not count:
        errs.required(path, "must specify a handler type")


def _validate_lifecycle(errs: FieldErrors, path: str, lifecycle, grace: int | None) -> None:
    for hook, json_name in (("post_start", "postStart"), ("pre_stop", "preStop")):
        if lifecycle.HasField(hook):
            _validate_handler(errs, f"{path}.{json_name}", getattr(lifecycle, hook),
                              ("exec", "http_get", "tcp_socket", "sleep"), grace)


def _validate_probe(errs: FieldErrors, path: str, probe, *, must_succeed_once: bool) -> None:
    _validate_handler(errs, path, probe, ("exec", "http_get", "tcp_socket"), None)
    if probe.HasField("termination_grace_period_seconds"):
        value = probe.termination_grace_period_seconds
        if value <= 0:
            errs.invalid(f"{path}.terminationGracePeriodSeconds", value, "must be greater than 0")
        if not must_succeed_once:  # a readiness probe never kills
            errs.invalid(f"{path}.terminationGracePeriodSeconds", value,
                         "must not be set for readinessProbes")
    for field, json_name in (("initial_delay_seconds", "initialDelaySeconds"),
                             ("timeout_seconds", "timeoutSeconds"),
                             ("period_seconds", "periodSeconds"),
                             ("success_threshold", "successThreshold"),
                             ("failure_threshold", "failureThreshold")):
        _non_negative(errs, f"{path}.{json_name}", getattr(probe, field))
    if must_succeed_once and probe.success_threshold not in (0, 1):
        errs.invalid(f"{path}.successThreshold", probe.success_threshold, "must be 1")


def _validate_tolerations(errs: FieldErrors, path: str, tolerations) -> None:
    for i, t in enumerate(tolerations):
        p = f"{path}[{i}]"
        if t.key:
            errs.each(f"{p}.key", t.key, qualified_name_errors(t.key))
        elif t.operator != "Exists":
            errs.invalid(f"{p}.operator", t.operator, "operator must be Exists when `key` is "
                         'empty, which means "match all values and all keys"')
        if t.HasField("toleration_seconds") and t.effect != "NoExecute":
            errs.invalid(f"{p}.effect", t.effect, "effect must be 'NoExecute' when "
                         "`tolerationSeconds` is set")
        if t.operator in ("", "Equal"):
            errs.each(f"{p}.value", t.value, label_value_errors(t.value))
        elif t.operator == "Exists":
            if t.value:
                errs.invalid(f"{p}.operator", t.value, "value must be empty when `operator` is "
                             "'Exists'")
        else:
            errs.not_supported(f"{p}.operator", t.operator, ["Equal", "Exists"])
        _enum(errs, f"{p}.effect", t.effect, TAINT_EFFECTS, required=False)


NODE_SELECTOR_OPERATORS = ("DoesNotExist", "Exists", "Gt", "In", "Lt", "NotIn")


def _validate_node_affinity(errs: FieldErrors, path: str, affinity) -> None:
    if affinity.HasField("required_during_scheduling_ignored_during_execution"):
        p = f"{path}.requiredDuringSchedulingIgnoredDuringExecution"
        terms = affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
        if not terms:
            errs.required(f"{p}.nodeSelectorTerms", "must have at least one node selector term")
        for i, term in enumerate(terms):
            _validate_node_selector_term(errs, f"{p}.nodeSelectorTerms[{i}]", term)
    for i, pref in enumerate(affinity.preferred_during_scheduling_ignored_during_execution):
        p = f"{path}.preferredDuringSchedulingIgnoredDuringExecution[{i}]"
        if not 1 <= pref.weight <= 100:
            errs.invalid(f"{p}.weight", pref.weight, "must be in the range 1-100")
        _validate_node_selector_term(errs, f"{p}.preference", pref.preference)


def _validate_node_selector_term(errs: FieldErrors, path: str, term) -> None:
    for j, req in enumerate(term.match_expressions):
        p = f"{path}.matchExpressions[{j}]"
        errs.each(f"{p}.key", req.key, qualified_name_errors(req.key))
        op, values = req.operator, list(req.values)
        if op in ("In", "NotIn"):
            if not values:
                errs.required(f"{p}.values", "must be specified when `operator` is 'In' or 'NotIn'")
            for k, v in enumerate(values):
                errs.each(f"{p}.values[{k}]", v, label_value_errors(v))
        elif op in ("Exists", "DoesNotExist"):
            if values:
                errs.forbidden(f"{p}.values", "may not be specified when `operator` is 'Exists' or "
                               "'DoesNotExist'")
        elif op in ("Gt", "Lt"):
            if len(values) != 1:
                errs.required(f"{p}.values", "must be specified single value when `operator` is "
                              "'Lt' or 'Gt'")
            elif not is_integer(values[0]):
                errs.invalid(f"{p}.values[0]", values[0], "must be an integer")
        else:
            errs.not_supported(f"{p}.operator", op, NODE_SELECTOR_OPERATORS)
    for j, req in enumerate(term.match_fields):
        p = f"{path}.matchFields[{j}]"
        if req.key != "metadata.name":
            errs.not_supported(f"{p}.key", req.key, ["metadata.name"])
        if req.operator not in ("In", "NotIn"):
            errs.not_supported(f"{p}.operator", req.operator, ["In", "NotIn"])
        elif len(req.values) != 1:
            errs.required(f"{p}.values", "must be only one value when `operator` is 'In' or "
                          "'NotIn' for node field selector")


def _validate_pod(errs: FieldErrors, pod) -> None:
    _validate_pod_spec(errs, "spec", pod.spec, template=False)


# fields a pod update may change (our binding: spec.nodeName from "" once)
_POD_UPDATE_FORBIDDEN = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only "
    "additions to existing tolerations),`spec.nodeName` (only from empty, once)")


def _validate_pod_update(errs: FieldErrors, new, old) -> None:
    allowed = core_pb2.PodSpec()
    allowed.CopyFrom(old.spec)
    for mine, theirs in ((allowed.containers, new.spec.containers),
                         (allowed.init_containers, new.spec.init_containers)):
        for c, n in zip(mine, theirs):
            c.image = n.image
    if new.spec.HasField("active_deadline_seconds"):
        allowed.active_deadline_seconds = new.spec.active_deadline_seconds
        if old.spec.HasField("active_deadline_seconds") and \
                new.spec.active_deadline_seconds > old.spec.active_deadline_seconds:
            errs.invalid("spec.activeDeadlineSeconds", new.spec.active_deadline_seconds,
                         "must be less than or equal to previous value")
    elif old.spec.HasField("active_deadline_seconds"):
        errs.invalid("spec.activeDeadlineSeconds", None,
                     "must not update from a positive integer to nil value")
        allowed.ClearField("active_deadline_seconds")
    if all(t in new.spec.tolerations for t in old.spec.tolerations):
        del allowed.tolerations[:]
        allowed.tolerations.extend(new.spec.tolerations)
    if not old.spec.node_name:
        allowed.node_name = new.spec.node_name
    if allowed != new.spec:
        errs.forbidden("spec", _POD_UPDATE_FORBIDDEN)


