"""Defaults for each kind: what Kubernetes' defaulting (pkg/apis/*/v1/defaults.go)
and the DefaultTolerationSeconds admission plugin fill in before validation."""

from __future__ import annotations

from apiserver.pb import core_pb2
from apiserver.resources import Resource

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
DEFAULT_SCHEDULER = "default-scheduler"
NAMESPACE_FINALIZER = "kubernetes"
# the StorageObjectInUseProtection admission plugin's: a claim a pod uses, or a
# volume a claim is bound to, is not removed until that use ends
PVC_PROTECTION_FINALIZER = "kubernetes.io/pvc-protection"
PV_PROTECTION_FINALIZER = "kubernetes.io/pv-protection"
VOLUME_SOURCES = ("host_path", "empty_dir", "secret", "persistent_volume_claim", "config_map", "downward_api",
                  "projected")
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# the mode of files projected from a ConfigMap or Secret unless the volume says
# otherwise: 0644
DEFAULT_VOLUME_FILE_MODE = 0o644


def volume_sources(volume) -> list[str]:
    """The source fields a Volume sets (exactly one when valid)."""
    return [f for f in VOLUME_SOURCES if volume.HasField(f)]


def apply_defaults(resource: Resource, msg, *, not_ready_toleration_seconds: int = 300,
                   unreachable_toleration_seconds: int = 300, for_create: bool = True) -> None:
    """Fills defaulted fields of ``msg`` (a typed message of ``resource``) in
    place. ``for_create=False`` (an update) skips what Kubernetes does only on
    create: the default NoExecute tolerations of Pods and a Namespace's
    "kubernetes" finalizer and Active phase."""
    name = resource.name
    if name == "pods":
        _default_pod_spec(msg.spec)
        # SetDefaults_Pod, not SetDefaults_PodSpec: templates keep it unset
        if not msg.spec.HasField("enable_service_links"):
            msg.spec.enable_service_links = True
        if for_create:
            _default_tolerations(msg.spec, not_ready_toleration_seconds,
                                 unreachable_toleration_seconds)
            _merge_match_label_keys(msg)
    elif name == "replicasets":
        if not msg.spec.HasField("replicas"):
            msg.spec.replicas = 1
        _default_pod_spec(msg.spec.template.spec)
    elif name == "deployments":
        _default_deployment(msg.spec)
    elif name == "services":
        _default_service(msg.spec)
    elif name == "endpoints":
        for subset in msg.subsets:
            for port in subset.ports:
                port.protocol = port.protocol or "TCP"
    elif name == "namespaces":
        if for_create:
            if not msg.spec.finalizers:
                msg.spec.finalizers.append(NAMESPACE_FINALIZER)
            msg.status.phase = msg.status.phase or "Active"
    elif name == "secrets":
        msg.type = msg.type or "Opaque"
        for key, value in msg.string_data.items():
            msg.data[key] = value.encode("utf-8")
        msg.ClearField("string_data")
    elif name == "nodes" and not msg.status.allocatable:
        msg.status.allocatable.update(msg.status.capacity)
    elif name == "persistentvolumes":
        msg.spec.persistent_volume_reclaim_policy = msg.spec.persistent_volume_reclaim_policy or "Retain"
        msg.spec.volume_mode = msg.spec.volume_mode or "Filesystem"
        msg.status.phase = msg.status.phase or "Pending"
        if for_create and PV_PROTECTION_FINALIZER not in msg.metadata.finalizers:
            msg.metadata.finalizers.append(PV_PROTECTION_FINALIZER)
    elif name == "persistentvolumeclaims":
        msg.spec.volume_mode = msg.spec.volume_mode or "Filesystem"
        msg.status.phase = msg.status.phase or "Pending"
        if for_create and PVC_PROTECTION_FINALIZER not in msg.metadata.finalizers:
            msg.metadata.finalizers.append(PVC_PROTECTION_FINALIZER)
    elif name == "storageclasses":
        msg.reclaim_policy = msg.reclaim_policy or "Delete"
        msg.volume_binding_mode = msg.volume_binding_mode or "Immediate"
    elif name in ("validatingwebhookconfigurations", "mutatingwebhookconfigurations"):
        for hook in msg.webhooks:
            _default_webhook(hook, mutating=name == "mutatingwebhookconfigurations")


def _default_webhook(hook, *, mutating: bool) -> None:
    """admissionregistration/v1's SetDefaults_*Webhook, Rule and ServiceReference."""
    for field, value in (("failure_policy", "Fail"), ("match_policy", "Equivalent"), ("timeout_seconds", 10)):
        if not hook.HasField(field):
            setattr(hook, field, value)
    if mutating and not hook.HasField("reinvocation_policy"):
        hook.reinvocation_policy = "Never"
    hook.namespace_selector.SetInParent()
    hook.object_selector.SetInParent()
    for rwo in hook.rules:
        if not rwo.rule.HasField("scope"):
            rwo.rule.scope = "*"
    service = hook.client_config.service
    if hook.client_config.HasField("service") and not service.HasField("port"):
        service.port = 443


def _default_pod_spec(spec: core_pb2.PodSpec) -> None:
    spec.dns_policy = spec.dns_policy or "ClusterFirst"
    spec.restart_policy = spec.restart_policy or "Always"
    spec.security_context.SetInParent()  # an empty PodSecurityContext, as upstream
    if not spec.HasField("termination_grace_period_seconds"):
        spec.termination_grace_period_seconds = 30
    spec.scheduler_name = spec.scheduler_name or DEFAULT_SCHEDULER
    for container in (*spec.init_containers, *spec.containers):
        _default_container(container)
    for volume in spec.volumes:
        if not volume_sources(volume):
            volume.empty_dir.SetInParent()
        for source in ("config_map", "secret", "downward_api", "projected"):
            if volume.HasField(source) and not getattr(volume, source).HasField("default_mode"):
                getattr(volume, source).default_mode = DEFAULT_VOLUME_FILE_MODE
        for item in volume.downward_api.items:
            item.field_ref.api_version = item.field_ref.api_version or "v1"
        for projection in volume.projected.sources:
            for item in projection.downward_api.items:
                item.field_ref.api_version = item.field_ref.api_version or "v1"
            token = projection.service_account_token
            if projection.HasField("service_account_token") and not token.HasField("expiration_seconds"):
                token.expiration_seconds = 3600


def _default_container(c: core_pb2.Container) -> None:
    if not c.image_pull_policy:
        c.image_pull_policy = "Always" if _image_tag(c.image) in ("", "latest") else "IfNotPresent"
    c.termination_message_path = c.termination_message_path or TERMINATION_MESSAGE_PATH
    c.termination_message_policy = c.termination_message_policy or "File"
    for port in c.ports:
        port.protocol = port.protocol or "TCP"
    for env in c.env:
        if env.value_from.HasField("field_ref"):
            env.value_from.field_ref.api_version = env.value_from.field_ref.api_version or "v1"
    # a limit without a request requests the limit (SetDefaults_Pod)
    for resource_name, limit in c.resources.limits.items():
        if resource_name not in c.resources.requests:
            c.resources.requests[resource_name] = limit
    for field in ("liveness_probe", "readiness_probe", "startup_probe"):
        if c.HasField(field):
            _default_probe(getattr(c, field))
    for hook in ("post_start", "pre_stop"):
        if c.lifecycle.HasField(hook) and getattr(c.lifecycle, hook).HasField("http_get"):
            _default_http_get(getattr(c.lifecycle, hook).http_get)


def _image_tag(image: str) -> str:
    """The tag of an image reference ("" when none; a digest counts as a tag)."""
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def _default_probe(p: core_pb2.Probe) -> None:
    p.timeout_seconds = p.timeout_seconds or 1
    p.period_seconds = p.period_seconds or 10
    p.success_threshold = p.success_threshold or 1
    p.failure_threshold = p.failure_threshold or 3
    if p.HasField("http_get"):
        _default_http_get(p.http_get)


def _default_http_get(action: core_pb2.HTTPGetAction) -> None:
    action.path = action.path or "/"
    action.scheme = action.scheme or "HTTP"


def _tolerates(tolerations, taint_key: str, effect: str) -> bool:
    for t in tolerations:
        if t.effect and t.effect != effect:
            continue
        if not t.key and t.operator == "Exists":
            return True
        if t.key == taint_key:
            return True
    return False


def _default_tolerations(spec: core_pb2.PodSpec, not_ready: int, unreachable: int) -> None:
    """The DefaultTolerationSeconds admission plugin: a pod tolerates a node
    becoming not-ready or unreachable for a while before it is evicted."""
    for key, seconds in ((NOT_READY_TAINT, not_ready), (UNREACHABLE_TAINT, unreachable)):
        if not _tolerates(spec.tolerations, key, "NoExecute"):
            spec.tolerations.add(key=key, operator="Exists", effect="NoExecute",
                                 toleration_seconds=seconds)


def _default_deployment(spec) -> None:
    if not spec.HasField("replicas"):
        spec.replicas = 1
    strategy = spec.strategy
    strategy.type = strategy.type or "RollingUpdate"
    if strategy.type == "RollingUpdate":
        ru = strategy.rolling_update
        ru.max_unavailable = ru.max_unavailable or "25%"
        ru.max_surge = ru.max_surge or "25%"
    if not spec.HasField("revision_history_limit"):
        spec.revision_history_limit = 10
    if not spec.HasField("progress_deadline_seconds"):
        spec.progress_deadline_seconds = 600
    _default_pod_spec(spec.template.spec)


def _default_service(spec: core_pb2.ServiceSpec) -> None:
    spec.type = spec.type or "ClusterIP"
    spec.session_affinity = spec.session_affinity or "None"
    if spec.session_affinity == "ClientIP" and not spec.session_affinity_config.client_ip.HasField(
            "timeout_seconds"):
        spec.session_affinity_config.client_ip.timeout_seconds = 10800  # 3 hours, as upstream
    if spec.type in ("NodePort", "LoadBalancer") and not spec.external_traffic_policy:
        spec.external_traffic_policy = "Cluster"
    if spec.type != "ExternalName" and not spec.HasField("internal_traffic_policy"):
        spec.internal_traffic_policy = "Cluster"
    if spec.type == "LoadBalancer" and not spec.HasField("allocate_load_balancer_node_ports"):
        spec.allocate_load_balancer_node_ports = True
    for port in spec.ports:
        port.protocol = port.protocol or "TCP"
        if not port.target_port:
            port.target_port = str(port.port)


def _merge_match_label_keys(pod) -> None:
    """On create: each affinity term's matchLabelKeys become `In` and its mismatchLabelKeys
    `NotIn` expressions of its labelSelector, with the value of the pod's own label (keys the
    pod lacks are skipped; a term without a selector matches nothing and stays so)."""
    affinity = pod.spec.affinity
    labels = pod.metadata.labels
    for field in ("pod_affinity", "pod_anti_affinity"):
        if not affinity.HasField(field):
            continue
        group = getattr(affinity, field)
        terms = [*group.required_during_scheduling_ignored_during_execution,
                 *(w.pod_affinity_term for w in group.preferred_during_scheduling_ignored_during_execution)]
        for term in terms:
            if not term.HasField("label_selector"):
                continue
            for keys, operator in ((term.match_label_keys, "In"), (term.mismatch_label_keys, "NotIn")):
                for key in keys:
                    if key in labels:
                        term.label_selector.match_expressions.add(key=key, operator=operator, values=[labels[key]])
