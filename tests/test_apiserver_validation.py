"""Defaults, validation and quantities: what kube-apiserver fills in and what
it refuses, with Kubernetes' field paths, reasons and texts.

Every invalid case starts from an object that validates, changes one thing,
and asserts the exact (field, reason) Kubernetes reports for it.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiserver import resources
from apiserver.errors import ApiError
from apiserver.pb import (apps_pb2, coordination_pb2, core_pb2, discovery_pb2, networking_pb2, rbac_pb2,
                          serviceaccount_pb2, storage_pb2)
from apiserver.quantity import bytes_of, format_quantity, milli_cpu, parse_quantity
from apiserver.defaults import apply_defaults
from apiserver.validation import validate_create, validate_update

R = resources.lookup


# ---- fixtures: one valid object of each kind ----

def container(name="c", image="nginx:1.25", **kw) -> core_pb2.Container:
    return core_pb2.Container(name=name, image=image, **kw)


def pod(name="p", ns="default") -> core_pb2.Pod:
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = name, ns
    p.spec.containers.append(container())
    return p


def template_into(spec, labels=None):
    labels = {"app": "web"} if labels is None else labels
    spec.selector.match_labels.update(labels)
    spec.template.metadata.labels.update(labels)
    spec.template.spec.containers.append(container())


def replica_set() -> apps_pb2.ReplicaSet:
    rs = apps_pb2.ReplicaSet()
    rs.metadata.name, rs.metadata.namespace = "rs", "default"
    template_into(rs.spec)
    return rs


def deployment() -> apps_pb2.Deployment:
    d = apps_pb2.Deployment()
    d.metadata.name, d.metadata.namespace = "d", "default"
    template_into(d.spec)
    return d


def service() -> core_pb2.Service:
    s = core_pb2.Service()
    s.metadata.name, s.metadata.namespace = "svc", "default"
    s.spec.ports.add(port=80)
    s.spec.selector["app"] = "web"
    return s


def namespace(name="team-a") -> core_pb2.Namespace:
    ns = core_pb2.Namespace()
    ns.metadata.name = name
    return ns


def node(name="node-1") -> core_pb2.Node:
    n = core_pb2.Node()
    n.metadata.name = name
    n.status.capacity.update({"cpu": "4", "memory": "8Gi", "pods": "110"})
    return n


def config_map() -> core_pb2.ConfigMap:
    cm = core_pb2.ConfigMap(data={"key.name": "v", "KEY_2": "w"})
    cm.metadata.name, cm.metadata.namespace = "cm", "default"
    return cm


def secret() -> core_pb2.Secret:
    s = core_pb2.Secret(data={"password": b"hunter2"})
    s.metadata.name, s.metadata.namespace = "s", "default"
    return s


def event() -> core_pb2.Event:
    e = core_pb2.Event(reason="Scheduled", message="assigned", type="Normal")
    e.metadata.name, e.metadata.namespace = "p.1", "default"
    e.involved_object.kind, e.involved_object.name = "Pod", "p"
    e.involved_object.namespace = "default"
    return e


def endpoints() -> core_pb2.Endpoints:
    ep = core_pb2.Endpoints()
    ep.metadata.name, ep.metadata.namespace = "svc", "default"
    subset = ep.subsets.add()
    subset.addresses.add(ip="10.0.0.1")
    subset.ports.add(port=8080)
    return ep


def lease() -> coordination_pb2.Lease:
    lz = coordination_pb2.Lease()
    lz.metadata.name, lz.metadata.namespace = "node-1", "kube-node-lease"
    lz.spec.holder_identity = "node-1"
    lz.spec.lease_duration_seconds = 40
    return lz


def endpoint_slice() -> discovery_pb2.EndpointSlice:
    eps = discovery_pb2.EndpointSlice(address_type="IPv4")
    eps.metadata.name, eps.metadata.namespace = "svc-abcde", "default"
    eps.metadata.labels["kubernetes.io/service-name"] = "svc"
    ep = eps.endpoints.add(addresses=["10.0.0.1"], node_name="node-1")
    ep.conditions.ready = True
    eps.ports.add(name="http", port=8080, protocol="TCP")
    return eps


def ip_address() -> networking_pb2.IPAddress:
    ip = networking_pb2.IPAddress()
    ip.metadata.name = "10.96.0.10"
    ip.spec.parent_ref.resource, ip.spec.parent_ref.namespace, ip.spec.parent_ref.name = "services", "default", "svc"
    return ip


def persistent_volume() -> core_pb2.PersistentVolume:
    pv = core_pb2.PersistentVolume()
    pv.metadata.name = "pv-1"
    pv.spec.capacity["storage"] = "1Gi"
    pv.spec.access_modes.append("ReadWriteOnce")
    pv.spec.host_path.path = "/srv/volumes/pv-1"
    return pv


def persistent_volume_claim() -> core_pb2.PersistentVolumeClaim:
    pvc = core_pb2.PersistentVolumeClaim()
    pvc.metadata.name, pvc.metadata.namespace = "data", "default"
    pvc.spec.access_modes.append("ReadWriteOnce")
    pvc.spec.resources.requests["storage"] = "1Gi"
    return pvc


def storage_class() -> storage_pb2.StorageClass:
    return storage_pb2.StorageClass(metadata={"name": "standard"}, provisioner="example.com/dirs")


def service_account() -> serviceaccount_pb2.ServiceAccount:
    return serviceaccount_pb2.ServiceAccount(metadata={"name": "robot", "namespace": "default"})


def _rules():
    return [rbac_pb2.PolicyRule(verbs=["get"], api_groups=[""], resources=["pods"])]


def role() -> rbac_pb2.Role:
    return rbac_pb2.Role(metadata={"name": "pod-reader", "namespace": "default"}, rules=_rules())


def cluster_role() -> rbac_pb2.ClusterRole:
    return rbac_pb2.ClusterRole(metadata={"name": "system:pod-reader"}, rules=[
        *_rules(), rbac_pb2.PolicyRule(verbs=["get"], non_resource_urls=["/healthz"])])


def _subjects():
    return [rbac_pb2.Subject(kind="User", api_group="rbac.authorization.k8s.io", name="alice"),
            rbac_pb2.Subject(kind="ServiceAccount", name="robot", namespace="default")]


def role_binding() -> rbac_pb2.RoleBinding:
    return rbac_pb2.RoleBinding(metadata={"name": "read-pods", "namespace": "default"}, subjects=_subjects(),
                                role_ref=rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io", kind="Role",
                                                          name="pod-reader"))


def cluster_role_binding() -> rbac_pb2.ClusterRoleBinding:
    return rbac_pb2.ClusterRoleBinding(metadata={"name": "system:read-pods"}, subjects=_subjects(),
                                       role_ref=rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io",
                                                                 kind="ClusterRole", name="system:pod-reader"))


def certificate_signing_request():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from apiserver.pb import certificates_pb2

    key = ec.generate_private_key(ec.SECP256R1())
    req = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")])).sign(key, hashes.SHA256())
    csr = certificates_pb2.CertificateSigningRequest(metadata={"name": "alice"})
    csr.spec.request = req.public_bytes(serialization.Encoding.PEM)
    csr.spec.signer_name = "kubernetes.io/kube-apiserver-client"
    csr.spec.usages.extend(["digital signature", "client auth"])
    return csr


def _webhook_configuration(kind: str):
    from apiserver.pb import admissionregistration_pb2

    config = getattr(admissionregistration_pb2, kind)(metadata={"name": "policy"})
    hook = config.webhooks.add(name="policy.example.com", side_effects="None",
                               admission_review_versions=["v1"])
    hook.client_config.url = "https://127.0.0.1:9443/validate"
    rule = hook.rules.add(operations=["CREATE", "UPDATE"])
    rule.rule.api_groups.append("")
    rule.rule.api_versions.append("v1")
    rule.rule.resources.extend(["pods", "pods/status"])
    return config


def validating_webhook_configuration():
    return _webhook_configuration("ValidatingWebhookConfiguration")


def mutating_webhook_configuration():
    return _webhook_configuration("MutatingWebhookConfiguration")


FACTORIES = {"pods": pod, "replicasets": replica_set, "deployments": deployment,
             "services": service, "namespaces": namespace, "nodes": node,
             "configmaps": config_map, "secrets": secret, "events": event,
             "endpoints": endpoints, "leases": lease, "endpointslices": endpoint_slice,
             "ipaddresses": ip_address, "persistentvolumes": persistent_volume,
             "persistentvolumeclaims": persistent_volume_claim, "storageclasses": storage_class,
             "serviceaccounts": service_account, "roles": role, "clusterroles": cluster_role,
             "rolebindings": role_binding, "clusterrolebindings": cluster_role_binding,
             "certificatesigningrequests": certificate_signing_request,
             "validatingwebhookconfigurations": validating_webhook_configuration,
             "mutatingwebhookconfigurations": mutating_webhook_configuration}


def defaulted(resource_name: str, msg=None):
    msg = msg if msg is not None else FACTORIES[resource_name]()
    apply_defaults(R(resource_name), msg)
    return msg


def causes_of(resource_name: str, msg, old=None) -> list[tuple[str, str, str]]:
    res = R(resource_name)
    apply_defaults(res, msg, for_create=old is None)
    with pytest.raises(ApiError) as e:
        if old is None:
            validate_create(res, msg)
        else:
            validate_update(res, msg, old)
    assert e.value.reason == "Invalid"
    assert e.value.kind == res.kind
    return e.value.causes


def assert_cause(resource_name, msg, field, reason, detail=None, old=None):
    causes = causes_of(resource_name, msg, old)
    pairs = [(f, r) for f, r, _ in causes]
    assert (field, reason) in pairs, causes
    if detail is not None:
        assert any(f == field and d == detail for f, _, d in causes), causes


def test_every_kind_is_covered():
    assert set(FACTORIES) == {r.name for r in resources.RESOURCES}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_the_valid_objects_validate(name):
    validate_create(R(name), defaulted(name))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_an_unchanged_object_is_a_valid_update(name):
    old = defaulted(name)
    new = type(old)()
    new.CopyFrom(old)
    apply_defaults(R(name), new, for_create=False)
    validate_update(R(name), new, old)


# ======================================================================
# defaults
# ======================================================================

def test_pod_defaults():
    p = pod()
    p.spec.containers[0].ports.add(container_port=80)
    probe = p.spec.containers[0].liveness_probe
    probe.http_get.port = "80"
    apply_defaults(R("pods"), p)
    s = p.spec
    assert s.restart_policy == "Always"
    assert s.termination_grace_period_seconds == 30
    assert s.scheduler_name == "default-scheduler"
    c = s.containers[0]
    assert c.image_pull_policy == "IfNotPresent"
    assert c.ports[0].protocol == "TCP"
    assert (probe.timeout_seconds, probe.period_seconds, probe.success_threshold,
            probe.failure_threshold) == (1, 10, 1, 3)
    assert (probe.http_get.path, probe.http_get.scheme) == ("/", "HTTP")
    assert not c.HasField("readiness_probe")  # defaults never create a probe


def test_pod_defaults_keep_what_is_set():
    p = pod()
    p.spec.restart_policy = "Never"
    p.spec.termination_grace_period_seconds = 0
    p.spec.scheduler_name = "mine"
    p.spec.containers[0].image_pull_policy = "Never"
    p.spec.containers[0].ports.add(container_port=53, protocol="UDP")
    apply_defaults(R("pods"), p)
    assert p.spec.restart_policy == "Never"
    assert p.spec.termination_grace_period_seconds == 0
    assert p.spec.scheduler_name == "mine"
    assert p.spec.containers[0].image_pull_policy == "Never"
    assert p.spec.containers[0].ports[0].protocol == "UDP"


def test_defaults_for_kubelet_fields():
    """What a kubelet relies on being set: the termination message file and
    policy, a DNS policy, file modes of projected volumes, hook handlers'
    HTTP path and scheme; enableServiceLinks only on Pods, not templates."""
    p = pod()
    c = p.spec.containers[0]
    c.lifecycle.pre_stop.http_get.port = "8080"
    c.lifecycle.post_start.exec.command.append("true")
    p.spec.volumes.add(name="cm").config_map.name = "cm"
    p.spec.volumes.add(name="s").secret.secret_name = "s"
    mode_set = p.spec.volumes.add(name="s2").secret
    mode_set.secret_name, mode_set.default_mode = "s", 0
    apply_defaults(R("pods"), p)
    c = p.spec.containers[0]
    assert (c.termination_message_path, c.termination_message_policy) == \
        ("/dev/termination-log", "File")
    assert (c.lifecycle.pre_stop.http_get.path, c.lifecycle.pre_stop.http_get.scheme) == \
        ("/", "HTTP")
    assert p.spec.dns_policy == "ClusterFirst"
    assert p.spec.HasField("security_context")
    assert p.spec.enable_service_links is True
    assert p.spec.volumes[0].config_map.default_mode == 0o644 == 420
    assert p.spec.volumes[1].secret.default_mode == 420
    assert p.spec.volumes[2].secret.default_mode == 0  # set, kept
    validate_create(R("pods"), p)
    d = deployment()
    apply_defaults(R("deployments"), d)
    assert not d.spec.template.spec.HasField("enable_service_links")
    assert d.spec.template.spec.containers[0].termination_message_policy == "File"


def test_defaults_keep_set_kubelet_fields():
    p = pod()
    c = p.spec.containers[0]
    c.termination_message_path = "/tmp/msg"
    c.termination_message_policy = "FallbackToLogsOnError"
    p.spec.dns_policy = "Default"
    p.spec.enable_service_links = False
    apply_defaults(R("pods"), p)
    assert (c.termination_message_path, c.termination_message_policy) == \
        ("/tmp/msg", "FallbackToLogsOnError")
    assert p.spec.dns_policy == "Default" and p.spec.enable_service_links is False


@pytest.mark.parametrize("image,policy", [
    ("nginx", "Always"), ("nginx:latest", "Always"), ("nginx:1.25", "IfNotPresent"),
    ("registry:5000/team/app", "Always"), ("registry:5000/team/app:v2", "IfNotPresent"),
    ("app@sha256:abcd", "IfNotPresent"),
])
def test_image_pull_policy_follows_the_tag(image, policy):
    p = pod()
    p.spec.containers[0].image = image
    p.spec.init_containers.append(container("init", image))
    apply_defaults(R("pods"), p)
    assert p.spec.containers[0].image_pull_policy == policy
    assert p.spec.init_containers[0].image_pull_policy == policy


def test_requests_default_to_limits():
    p = pod()
    p.spec.containers[0].resources.limits.update({"cpu": "1", "memory": "1Gi"})
    p.spec.containers[0].resources.requests["cpu"] = "500m"
    apply_defaults(R("pods"), p)
    assert dict(p.spec.containers[0].resources.requests) == {"cpu": "500m", "memory": "1Gi"}


def test_a_volume_without_a_source_is_an_empty_dir():
    p = pod()
    p.spec.volumes.add(name="scratch")
    apply_defaults(R("pods"), p)
    assert p.spec.volumes[0].HasField("empty_dir")


def _toleration_keys(p):
    return [(t.key, t.operator, t.effect, t.toleration_seconds) for t in p.spec.tolerations]


def test_pods_get_the_default_noexecute_tolerations():
    p = pod()
    apply_defaults(R("pods"), p, not_ready_toleration_seconds=30, unreachable_toleration_seconds=60)
    assert _toleration_keys(p) == [
        ("node.kubernetes.io/not-ready", "Exists", "NoExecute", 30),
        ("node.kubernetes.io/unreachable", "Exists", "NoExecute", 60)]
    apply_defaults(R("pods"), p)  # idempotent: already tolerated
    assert len(p.spec.tolerations) == 2


@pytest.mark.parametrize("toleration,added", [
    (core_pb2.Toleration(operator="Exists"), 0),                       # tolerates everything
    (core_pb2.Toleration(operator="Exists", effect="NoExecute"), 0),
    (core_pb2.Toleration(operator="Exists", effect="NoSchedule"), 2),  # wrong effect
    (core_pb2.Toleration(key="node.kubernetes.io/not-ready", operator="Exists"), 1),
    (core_pb2.Toleration(key="node.kubernetes.io/unreachable", operator="Exists",
                         effect="NoExecute", toleration_seconds=5), 1),
])
def test_default_tolerations_only_when_not_already_tolerated(toleration, added):
    p = pod()
    p.spec.tolerations.append(toleration)
    apply_defaults(R("pods"), p)
    assert len(p.spec.tolerations) == 1 + added
    assert p.spec.tolerations[0] == toleration


def test_updates_do_not_add_tolerations_and_templates_never_get_them():
    p = pod()
    apply_defaults(R("pods"), p, for_create=False)
    assert not p.spec.tolerations
    for name in ("replicasets", "deployments"):
        assert not defaulted(name).spec.template.spec.tolerations


def test_replica_set_and_deployment_defaults():
    rs = defaulted("replicasets")
    assert rs.spec.HasField("replicas") and rs.spec.replicas == 1
    assert rs.spec.template.spec.restart_policy == "Always"
    assert rs.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"
    d = defaulted("deployments")
    assert d.spec.replicas == 1
    assert d.spec.strategy.type == "RollingUpdate"
    assert (d.spec.strategy.rolling_update.max_surge,
            d.spec.strategy.rolling_update.max_unavailable) == ("25%", "25%")
    assert d.spec.revision_history_limit == 10
    assert d.spec.progress_deadline_seconds == 600
    assert d.spec.template.spec.scheduler_name == "default-scheduler"


def test_zero_replicas_is_kept():
    rs = replica_set()
    rs.spec.replicas = 0
    apply_defaults(R("replicasets"), rs)
    assert rs.spec.replicas == 0


def test_recreate_deployments_get_no_rolling_update_parameters():
    d = deployment()
    d.spec.strategy.type = "Recreate"
    apply_defaults(R("deployments"), d)
    assert not d.spec.strategy.HasField("rolling_update")


def test_service_defaults():
    s = service()
    s.spec.ports.add(name="named", port=443, target_port="https")
    s.spec.ports[0].name = "http"
    apply_defaults(R("services"), s)
    assert s.spec.type == "ClusterIP"
    assert s.spec.session_affinity == "None"
    assert [(p.protocol, p.target_port) for p in s.spec.ports] == [("TCP", "80"), ("TCP", "https")]


def test_namespace_defaults_on_create_only():
    ns = defaulted("namespaces")
    assert list(ns.spec.finalizers) == ["kubernetes"]
    assert ns.status.phase == "Active"
    finalizing = namespace()
    apply_defaults(R("namespaces"), finalizing, for_create=False)
    assert not finalizing.spec.finalizers


def test_secret_string_data_is_merged_into_data():
    s = secret()
    s.string_data.update({"user": "ünï", "password": "new"})
    apply_defaults(R("secrets"), s)
    assert s.type == "Opaque"
    assert dict(s.data) == {"user": "ünï".encode(), "password": b"new"}
    assert not s.string_data


def test_node_allocatable_defaults_to_capacity():
    n = defaulted("nodes")
    assert dict(n.status.allocatable) == dict(n.status.capacity)


def test_endpoint_ports_default_to_tcp():
    assert defaulted("endpoints").subsets[0].ports[0].protocol == "TCP"


# ======================================================================
# metadata
# ======================================================================

SUBDOMAIN_DETAIL = (
    'Invalid value: "Foo": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric '
    "characters, '-' or '.', and must start and end with an alphanumeric character (e.g. "
    "'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")


def test_invalid_name_message_is_kubernetes():
    p = pod(name="Foo")
    apply_defaults(R("pods"), p)
    with pytest.raises(ApiError) as e:
        validate_create(R("pods"), p)
    assert e.value.causes == [("metadata.name", "FieldValueInvalid", SUBDOMAIN_DETAIL)]
    assert e.value.message == f'Pod "Foo" is invalid: metadata.name: {SUBDOMAIN_DETAIL}'
    assert e.value.name == "Foo"


@pytest.mark.parametrize("kind,name,ok", [
    ("pods", "a.b-c", True), ("pods", "a" * 253, True), ("pods", "a" * 254, False),
    ("pods", "a_b", False), ("pods", "-a", False),
    ("namespaces", "team-a", True), ("namespaces", "a.b", False), ("namespaces", "a" * 64, False),
    ("services", "web-1", True), ("services", "1web", False), ("services", "a.b", False),
    ("configmaps", "app.config", True), ("nodes", "node-1.example.com", True),
    ("deployments", "Web", False),
])
def test_name_syntax_per_kind(kind, name, ok):
    msg = FACTORIES[kind]()
    msg.metadata.name = name
    if ok:
        validate_create(R(kind), defaulted(kind, msg))
    else:
        assert_cause(kind, msg, "metadata.name", "FieldValueInvalid")


def test_name_is_required():
    p = pod(name="")
    assert_cause("pods", p, "metadata.name", "FieldValueRequired",
                 "Required value: name or generateName is required")


def test_namespace_required_for_namespaced_and_forbidden_for_cluster_kinds():
    assert_cause("pods", pod(ns=""), "metadata.namespace", "FieldValueRequired")
    assert_cause("pods", pod(ns="Bad_NS"), "metadata.namespace", "FieldValueInvalid")
    n = node()
    n.metadata.namespace = "default"
    assert_cause("nodes", n, "metadata.namespace", "FieldValueForbidden",
                 "Forbidden: not allowed on this type")


@pytest.mark.parametrize("labels,ok", [
    ({"app": "web", "example.com/tier": "front", "empty": ""}, True),
    ({"a b": "x"}, False), ({"app": "-x"}, False), ({"app": "x" * 64}, False),
    ({"Example.com/x": "y"}, False),
])
def test_label_syntax(labels, ok):
    p = pod()
    p.metadata.labels.update(labels)
    if ok:
        validate_create(R("pods"), defaulted("pods", p))
    else:
        assert_cause("pods", p, "metadata.labels", "FieldValueInvalid")


def test_annotations():
    p = pod()
    p.metadata.annotations.update({"Example.COM/Note": "anything goes: ' \" \n", "x": ""})
    validate_create(R("pods"), defaulted("pods", p))
    p.metadata.annotations["bad key"] = "v"
    assert_cause("pods", p, "metadata.annotations", "FieldValueInvalid")
    big = pod()
    big.metadata.annotations["big"] = "x" * (256 * 1024)
    assert_cause("pods", big, "metadata.annotations", "FieldValueTooLong",
                 "Too long: must have at most 262144 bytes")


def test_owner_references():
    p = pod()
    p.metadata.owner_references.add(api_version="apps/v1", kind="ReplicaSet", name="rs",
                                     uid="u1", controller=True)
    validate_create(R("pods"), defaulted("pods", p))
    p.metadata.owner_references.add(kind="ReplicaSet", name="rs2", uid="u2", controller=True)
    p.metadata.owner_references.add(api_version="v1")
    causes = [(f, d) for f, _, d in causes_of("pods", p)]
    assert ("metadata.ownerReferences[1].apiVersion",
            'Invalid value: "": version must not be empty') in causes
    assert ("metadata.ownerReferences[2].kind", 'Invalid value: "": kind must not be empty') in causes
    assert ("metadata.ownerReferences[2].name", 'Invalid value: "": name must not be empty') in causes
    assert ("metadata.ownerReferences[2].uid", 'Invalid value: "": uid must not be empty') in causes
    assert any(f == "metadata.ownerReferences" and "Only one reference can have Controller" in d
               for f, d in causes)


@pytest.mark.parametrize("finalizer,ok", [
    ("kubernetes", True), ("foregroundDeletion", True), ("example.com/cleanup", True),
    ("cleanup", False), ("example.com/bad name", False),
])
def test_finalizers(finalizer, ok):
    p = pod()
    p.metadata.finalizers.append(finalizer)
    if ok:
        validate_create(R("pods"), defaulted("pods", p))
    else:
        assert_cause("pods", p, "metadata.finalizers", "FieldValueInvalid")


def test_all_problems_are_reported_at_once():
    p = pod(name="Bad")
    p.spec.containers[0].image = ""
    p.spec.containers.add(name="c", image="x")
    fields = [f for f, _, _ in causes_of("pods", p)]
    assert {"metadata.name", "spec.containers[0].image", "spec.containers[1].name"} <= set(fields)


# ======================================================================
# Pod
# ======================================================================

def test_containers_required():
    p = pod()
    del p.spec.containers[:]
    assert_cause("pods", p, "spec.containers", "FieldValueRequired", "Required value")


@pytest.mark.parametrize("mutate,field,reason", [
    (lambda c: setattr(c, "name", ""), "spec.containers[0].name", "FieldValueRequired"),
    (lambda c: setattr(c, "name", "Web"), "spec.containers[0].name", "FieldValueInvalid"),
    (lambda c: setattr(c, "image", ""), "spec.containers[0].image", "FieldValueRequired"),
    (lambda c: setattr(c, "image", " nginx"), "spec.containers[0].image", "FieldValueInvalid"),
    (lambda c: setattr(c, "image_pull_policy", "Sometimes"), "spec.containers[0].imagePullPolicy",
     "FieldValueNotSupported"),
    (lambda c: c.ports.add(container_port=0), "spec.containers[0].ports[0].containerPort",
     "FieldValueRequired"),
    (lambda c: c.ports.add(container_port=70000), "spec.containers[0].ports[0].containerPort",
     "FieldValueInvalid"),
    (lambda c: c.ports.add(container_port=80, host_port=-1), "spec.containers[0].ports[0].hostPort",
     "FieldValueInvalid"),
    (lambda c: c.ports.add(container_port=80, protocol="ICMP"),
     "spec.containers[0].ports[0].protocol", "FieldValueNotSupported"),
    (lambda c: c.ports.add(container_port=80, name="http--x"), "spec.containers[0].ports[0].name",
     "FieldValueInvalid"),
    (lambda c: c.ports.extend([core_pb2.ContainerPort(container_port=80, name="http"),
                               core_pb2.ContainerPort(container_port=81, name="http")]),
     "spec.containers[0].ports[1].name", "FieldValueDuplicate"),
    (lambda c: c.env.add(name="1BAD"), "spec.containers[0].env[0].name", "FieldValueInvalid"),
    (lambda c: c.env.add(value="x"), "spec.containers[0].env[0].name", "FieldValueRequired"),
    (lambda c: c.env.add(name="A", value="x").value_from.config_map_key_ref.SetInParent(),
     "spec.containers[0].env[0].valueFrom", "FieldValueInvalid"),
    (lambda c: c.resources.requests.update({"cpu": "lots"}),
     "spec.containers[0].resources.requests[cpu]", "FieldValueInvalid"),
    (lambda c: c.resources.limits.update({"memory": "-1Gi"}),
     "spec.containers[0].resources.limits[memory]", "FieldValueInvalid"),
    (lambda c: c.resources.limits.update({"gpus": "1"}),
     "spec.containers[0].resources.limits[gpus]", "FieldValueInvalid"),
    (lambda c: c.volume_mounts.add(name="missing", mount_path="/data"),
     "spec.containers[0].volumeMounts[0].name", "FieldValueNotFound"),
    (lambda c: c.liveness_probe.SetInParent(), "spec.containers[0].livenessProbe",
     "FieldValueRequired"),
    (lambda c: (c.liveness_probe.exec.command.append("true"),
                c.liveness_probe.tcp_socket.SetInParent()),
     "spec.containers[0].livenessProbe.tcpSocket", "FieldValueForbidden"),
    (lambda c: (c.liveness_probe.exec.command.append("true"),
                setattr(c.liveness_probe, "success_threshold", 2)),
     "spec.containers[0].livenessProbe.successThreshold", "FieldValueInvalid"),
    (lambda c: setattr(c.readiness_probe.http_get, "port", "99999"),
     "spec.containers[0].readinessProbe.httpGet.port", "FieldValueInvalid"),
    (lambda c: setattr(c.readiness_probe.tcp_socket, "port", ""),
     "spec.containers[0].readinessProbe.tcpSocket.port", "FieldValueRequired"),
])
def test_container_errors(mutate, field, reason):
    p = pod()
    mutate(p.spec.containers[0])
    assert_cause("pods", p, field, reason)


def test_valid_container_details_pass():
    p = pod()
    c = p.spec.containers[0]
    c.ports.add(container_port=8080, name="http", host_port=80)
    c.env.add(name="MY_VAR.x-1", value="v")
    c.env.add(name="FROM_CM").value_from.config_map_key_ref.MergeFrom(
        core_pb2.ConfigMapKeySelector(name="cm", key="k"))
    c.env.add(name="POD").value_from.field_ref.field_path = "metadata.name"
    c.resources.requests.update({"cpu": "250m", "memory": "64Mi", "example.com/dongle": "1"})
    c.resources.limits.update({"cpu": "1", "memory": "64Mi", "hugepages-2Mi": "100Mi"})
    c.readiness_probe.http_get.port = "http"
    c.liveness_probe.tcp_socket.port = "8080"
    c.startup_probe.exec.command.append("true")
    c.volume_mounts.add(name="data", mount_path="/data")
    p.spec.volumes.add(name="data").empty_dir.size_limit = "1Gi"
    validate_create(R("pods"), defaulted("pods", p))


def test_requests_may_not_exceed_limits():
    p = pod()
    p.spec.containers[0].resources.limits["cpu"] = "1"
    p.spec.containers[0].resources.requests["cpu"] = "1500m"
    assert_cause("pods", p, "spec.containers[0].resources.requests[cpu]", "FieldValueInvalid",
                 'Invalid value: "1500m": must be less than or equal to cpu limit of 1')
    p = pod()
    p.spec.containers[0].resources.limits["memory"] = "1Gi"
    p.spec.containers[0].resources.requests["memory"] = "1073741824"
    validate_create(R("pods"), defaulted("pods", p))  # equal is fine, units differ


def test_container_names_are_unique_across_init_and_app_containers():
    p = pod()
    p.spec.init_containers.append(container("c"))
    assert_cause("pods", p, "spec.containers[0].name", "FieldValueDuplicate", 'Duplicate value: "c"')


@pytest.mark.parametrize("mutate,field,detail", [
    (lambda c: setattr(c.env_from.add(prefix="1X").config_map_ref, "name", "cm"),
     "spec.containers[0].envFrom[0].prefix", None),
    (lambda c: c.env_from.add(prefix="P_"), "spec.containers[0].envFrom",
     'Invalid value: "": must specify one of: `configMapRef` or `secretRef`'),
    (lambda c: (lambda e: (setattr(e.config_map_ref, "name", "a"),
                           setattr(e.secret_ref, "name", "b")))(c.env_from.add()),
     "spec.containers[0].envFrom",
     'Invalid value: "": may not have more than one field specified at a time'),
    (lambda c: c.env_from.add().secret_ref.SetInParent(),
     "spec.containers[0].envFrom[0].secretRef.name", "Required value"),
    (lambda c: setattr(c.env_from.add().config_map_ref, "name", "Bad_Name"),
     "spec.containers[0].envFrom[0].configMapRef.name", None),
    (lambda c: setattr(c, "termination_message_policy", "Maybe"),
     "spec.containers[0].terminationMessagePolicy",
     'Unsupported value: "Maybe": supported values: "File", "FallbackToLogsOnError"'),
    (lambda c: c.lifecycle.pre_stop.SetInParent(), "spec.containers[0].lifecycle.preStop",
     "Required value: must specify a handler type"),
    (lambda c: (c.lifecycle.post_start.exec.command.append("x"),
                setattr(c.lifecycle.post_start.sleep, "seconds", 1)),
     "spec.containers[0].lifecycle.postStart.sleep",
     "Forbidden: may not specify more than 1 handler type"),
    (lambda c: setattr(c.lifecycle.pre_stop.sleep, "seconds", 31),
     "spec.containers[0].lifecycle.preStop.sleep",
     "Invalid value: 31: must be non-negative and less than terminationGracePeriodSeconds (30)"),
    (lambda c: c.lifecycle.post_start.exec.SetInParent(),
     "spec.containers[0].lifecycle.postStart.exec.command", "Required value"),
    (lambda c: c.lifecycle.post_start.http_get.http_headers.add(name="Bad Header", value="v"),
     "spec.containers[0].lifecycle.postStart.httpGet.httpHeaders",
     'Invalid value: "Bad Header": a valid HTTP header must consist of alphanumeric characters '
     "or '-' (e.g. 'X-Header-Name', regex used for validation is '[-A-Za-z0-9]+')"),
    (lambda c: (c.startup_probe.exec.command.append("true"),
                setattr(c.startup_probe, "success_threshold", 3)),
     "spec.containers[0].startupProbe.successThreshold", "Invalid value: 3: must be 1"),
    (lambda c: (c.liveness_probe.exec.command.append("true"),
                setattr(c.liveness_probe, "termination_grace_period_seconds", 0)),
     "spec.containers[0].livenessProbe.terminationGracePeriodSeconds",
     "Invalid value: 0: must be greater than 0"),
    (lambda c: (c.readiness_probe.exec.command.append("true"),
                setattr(c.readiness_probe, "termination_grace_period_seconds", 5)),
     "spec.containers[0].readinessProbe.terminationGracePeriodSeconds",
     "Invalid value: 5: must not be set for readinessProbes"),
    (lambda c: setattr(c, "restart_policy", "Always"), "spec.containers[0].restartPolicy",
     "Forbidden: may not be set for non-init containers"),
    (lambda c: setattr(c.security_context, "run_as_group", -1),
     "spec.containers[0].securityContext.runAsGroup",
     "Invalid value: -1: must be between 0 and 2147483647, inclusive"),
])
def test_container_kubelet_field_errors(mutate, field, detail):
    p = pod()
    mutate(p.spec.containers[0])
    causes = causes_of("pods", p)
    assert field in [f for f, _, _ in causes], causes
    if detail is not None:
        assert (field, detail) in [(f, d) for f, _, d in causes], causes


def test_valid_container_kubelet_fields_pass():
    p = pod()
    c = p.spec.containers[0]
    c.env_from.add(prefix="CM_").config_map_ref.name = "cm"
    ref = c.env_from.add().secret_ref
    ref.name, ref.optional = "s", True
    c.lifecycle.post_start.http_get.port = "8080"
    c.lifecycle.post_start.http_get.http_headers.add(name="X-Hook", value="start")
    c.lifecycle.pre_stop.sleep.seconds = 30  # equal to the grace period is fine
    c.liveness_probe.exec.command.append("true")
    c.liveness_probe.termination_grace_period_seconds = 5
    c.termination_message_policy = "FallbackToLogsOnError"
    c.stdin = c.tty = True
    validate_create(R("pods"), defaulted("pods", p))


def test_sidecars_are_init_containers_with_restart_policy_always():
    p = pod()
    side = p.spec.init_containers.add(name="side", image="busybox", restart_policy="Always")
    side.readiness_probe.exec.command.append("true")
    side.lifecycle.pre_stop.sleep.seconds = 1
    validate_create(R("pods"), defaulted("pods", p))
    side.restart_policy = "OnFailure"
    assert_cause("pods", p, "spec.initContainers[0].restartPolicy", "FieldValueNotSupported",
                 'Unsupported value: "OnFailure": supported values: "Always"')
    side.restart_policy = ""
    assert_cause("pods", p, "spec.initContainers[0].lifecycle", "FieldValueForbidden",
                 "Forbidden: may not be set for init containers without restartPolicy=Always")


def test_init_containers_may_not_have_probes():
    p = pod()
    init = p.spec.init_containers.add(name="init", image="busybox")
    init.readiness_probe.exec.command.append("true")
    assert_cause("pods", p, "spec.initContainers[0].readinessProbe", "FieldValueForbidden")


def test_host_ports_are_unique_per_protocol_and_ip():
    p = pod()
    p.spec.containers[0].ports.add(container_port=80, host_port=8080)
    p.spec.containers.append(container("d"))
    p.spec.containers[1].ports.add(container_port=81, host_port=8080, protocol="UDP")
    validate_create(R("pods"), defaulted("pods", p))
    p.spec.containers[1].ports.add(container_port=82, host_port=8080)
    assert_cause("pods", p, "spec.containers[1].ports[1].hostPort", "FieldValueDuplicate",
                 'Duplicate value: "8080/TCP"')


@pytest.mark.parametrize("policy,ok", [("Always", True), ("OnFailure", True), ("Never", True),
                                       ("Sometimes", False)])
def test_restart_policy(policy, ok):
    p = pod()
    p.spec.restart_policy = policy
    if ok:
        validate_create(R("pods"), defaulted("pods", p))
    else:
        assert_cause("pods", p, "spec.restartPolicy", "FieldValueNotSupported",
                     'Unsupported value: "Sometimes": supported values: "Always", "OnFailure", '
                     '"Never"')


@pytest.mark.parametrize("toleration,field,reason", [
    ({"key": "k", "operator": "Exists", "value": "v"}, "spec.tolerations[0].operator",
     "FieldValueInvalid"),
    ({"operator": "Equal", "value": "v"}, "spec.tolerations[0].operator", "FieldValueInvalid"),
    ({"key": "k", "operator": "Near"}, "spec.tolerations[0].operator", "FieldValueNotSupported"),
    ({"key": "k", "effect": "NoRun"}, "spec.tolerations[0].effect", "FieldValueNotSupported"),
    ({"key": "k", "effect": "NoSchedule", "toleration_seconds": 5}, "spec.tolerations[0].effect",
     "FieldValueInvalid"),
    ({"key": "bad key"}, "spec.tolerations[0].key", "FieldValueInvalid"),
    ({"key": "k", "value": "-bad"}, "spec.tolerations[0].value", "FieldValueInvalid"),
])
def test_toleration_errors(toleration, field, reason):
    p = pod()
    p.spec.tolerations.add(**toleration)
    assert_cause("pods", p, field, reason)


def test_valid_tolerations():
    p = pod()
    p.spec.tolerations.add(operator="Exists")
    p.spec.tolerations.add(key="k", value="v", effect="NoSchedule")
    p.spec.tolerations.add(key="k", operator="Equal", value="v", effect="NoExecute",
                           toleration_seconds=0)
    p.spec.tolerations.add(key="example.com/gpu", operator="Exists")
    validate_create(R("pods"), defaulted("pods", p))


def _required_terms(p):
    return p.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution


REQ = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"


@pytest.mark.parametrize("req,field,reason", [
    ({"key": "zone", "operator": "In"}, f"{REQ}.nodeSelectorTerms[0].matchExpressions[0].values",
     "FieldValueRequired"),
    ({"key": "zone", "operator": "Exists", "values": ["a"]},
     f"{REQ}.nodeSelectorTerms[0].matchExpressions[0].values", "FieldValueForbidden"),
    ({"key": "cpus", "operator": "Gt", "values": ["a"]},
     f"{REQ}.nodeSelectorTerms[0].matchExpressions[0].values[0]", "FieldValueInvalid"),
    ({"key": "cpus", "operator": "Lt", "values": ["1", "2"]},
     f"{REQ}.nodeSelectorTerms[0].matchExpressions[0].values", "FieldValueRequired"),
    ({"key": "zone", "operator": "Near", "values": ["a"]},
     f"{REQ}.nodeSelectorTerms[0].matchExpressions[0].operator", "FieldValueNotSupported"),
    ({"key": "bad key", "operator": "Exists"},
     f"{REQ}.nodeSelectorTerms[0].matchExpressions[0].key", "FieldValueInvalid"),
])
def test_node_affinity_errors(req, field, reason):
    p = pod()
    _required_terms(p).node_selector_terms.add().match_expressions.add(**req)
    assert_cause("pods", p, field, reason)


def test_node_affinity_needs_terms_and_field_rules():
    p = pod()
    _required_terms(p).SetInParent()
    assert_cause("pods", p, f"{REQ}.nodeSelectorTerms", "FieldValueRequired")
    p = pod()
    term = _required_terms(p).node_selector_terms.add()
    term.match_fields.add(key="metadata.labels", operator="In", values=["a"])
    term.match_fields.add(key="metadata.name", operator="In", values=["a", "b"])
    causes = [(f, r) for f, r, _ in causes_of("pods", p)]
    assert (f"{REQ}.nodeSelectorTerms[0].matchFields[0].key", "FieldValueNotSupported") in causes
    assert (f"{REQ}.nodeSelectorTerms[0].matchFields[1].values", "FieldValueRequired") in causes
    p = pod()
    p.spec.affinity.node_affinity.preferred_during_scheduling_ignored_during_execution.add(
        weight=0).preference.match_expressions.add(key="zone", operator="Exists")
    assert_cause("pods", p, "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuring"
                 "Execution[0].weight", "FieldValueInvalid")


def test_valid_node_affinity_and_node_selector():
    p = pod()
    term = _required_terms(p).node_selector_terms.add()
    term.match_expressions.add(key="zone", operator="In", values=["a", "b"])
    term.match_expressions.add(key="cpus", operator="Gt", values=["3"])
    term.match_fields.add(key="metadata.name", operator="NotIn", values=["node-9"])
    p.spec.affinity.node_affinity.preferred_during_scheduling_ignored_during_execution.add(
        weight=10).preference.match_expressions.add(key="ssd", operator="Exists")
    p.spec.node_selector["kubernetes.io/os"] = "linux"
    validate_create(R("pods"), defaulted("pods", p))
    p.spec.node_selector["bad key"] = "x"
    assert_cause("pods", p, "spec.nodeSelector", "FieldValueInvalid")


@pytest.mark.parametrize("mutate,field,reason", [
    (lambda s: s.volumes.add(name="v").host_path.SetInParent(), "spec.volumes[0].hostPath.path",
     "FieldValueRequired"),
    (lambda s: (s.volumes.add(name="v", host_path=core_pb2.HostPathVolumeSource(path="/x"))
                .empty_dir.SetInParent()), "spec.volumes[0].emptyDir", "FieldValueForbidden"),
    (lambda s: s.volumes.extend([core_pb2.Volume(name="v"), core_pb2.Volume(name="v")]),
     "spec.volumes[1].name", "FieldValueDuplicate"),
    (lambda s: s.volumes.add(name="V"), "spec.volumes[0].name", "FieldValueInvalid"),
    (lambda s: s.volumes.add().empty_dir.SetInParent(), "spec.volumes[0].name",
     "FieldValueRequired"),
    (lambda s: s.volumes.add(name="v").secret.SetInParent(), "spec.volumes[0].secret.secretName",
     "FieldValueRequired"),
    (lambda s: s.volumes.add(name="v").config_map.SetInParent(), "spec.volumes[0].configMap.name",
     "FieldValueRequired"),
    (lambda s: s.volumes.add(name="v").persistent_volume_claim.SetInParent(),
     "spec.volumes[0].persistentVolumeClaim.claimName", "FieldValueRequired"),
    (lambda s: setattr(s.volumes.add(name="v").empty_dir, "size_limit", "big"),
     "spec.volumes[0].emptyDir.sizeLimit", "FieldValueInvalid"),
    (lambda s: setattr(s, "active_deadline_seconds", 0), "spec.activeDeadlineSeconds",
     "FieldValueInvalid"),
    (lambda s: setattr(s, "termination_grace_period_seconds", -1),
     "spec.terminationGracePeriodSeconds", "FieldValueInvalid"),
    (lambda s: setattr(s, "node_name", "Node_1"), "spec.nodeName", "FieldValueInvalid"),
    (lambda s: setattr(s, "hostname", "a.b"), "spec.hostname", "FieldValueInvalid"),
])
def test_pod_spec_errors(mutate, field, reason):
    p = pod()
    mutate(p.spec)
    assert_cause("pods", p, field, reason)


MODE_MESSAGE = "must be a number between 0 and 0777 (octal), both inclusive"


@pytest.mark.parametrize("mutate,field,detail", [
    (lambda s: setattr(s.volumes.add(name="v").config_map, "default_mode", 0o1000),
     "spec.volumes[0].configMap.defaultMode", f"Invalid value: 512: {MODE_MESSAGE}"),
    (lambda s: setattr(s.volumes.add(name="v").secret, "default_mode", -1),
     "spec.volumes[0].secret.defaultMode", f"Invalid value: -1: {MODE_MESSAGE}"),
    (lambda s: s.volumes.add(name="v").config_map.items.add(key="k", path="f", mode=0o4755),
     "spec.volumes[0].configMap.items[0].mode", f"Invalid value: 2541: {MODE_MESSAGE}"),
    (lambda s: s.volumes.add(name="v").secret.items.add(key="k", path="/etc/passwd"),
     "spec.volumes[0].secret.items[0].path", 'Invalid value: "/etc/passwd": must be a relative path'),
    (lambda s: s.volumes.add(name="v").config_map.items.add(key="k", path="a/../../b"),
     "spec.volumes[0].configMap.items[0].path", 'Invalid value: "a/../../b": must not contain \'..\''),
    (lambda s: s.volumes.add(name="v").config_map.items.add(key="k", path="..data"),
     "spec.volumes[0].configMap.items[0].path",
     'Invalid value: "..data": must not start with \'..\''),
    (lambda s: s.volumes.add(name="v").config_map.items.add(path="f"),
     "spec.volumes[0].configMap.items[0].key", "Required value"),
    (lambda s: s.volumes.add(name="v").config_map.items.add(key="k"),
     "spec.volumes[0].configMap.items[0].path", "Required value"),
    (lambda s: setattr(s, "dns_policy", "Google"), "spec.dnsPolicy",
     'Unsupported value: "Google": supported values: "ClusterFirst", "ClusterFirstWithHostNet", '
     '"Default", "None"'),
    (lambda s: setattr(s, "dns_policy", "None"), "spec.dnsConfig",
     "Required value: must provide `dnsConfig` when `dnsPolicy` is None"),
    (lambda s: setattr(s.security_context, "run_as_user", -1), "spec.securityContext.runAsUser",
     "Invalid value: -1: must be between 0 and 2147483647, inclusive"),
    (lambda s: s.security_context.supplemental_groups.extend([5, 2 ** 31]),
     "spec.securityContext.supplementalGroups[1]",
     "Invalid value: 2147483648: must be between 0 and 2147483647, inclusive"),
    (lambda s: setattr(s.security_context, "fs_group", -2), "spec.securityContext.fsGroup",
     "Invalid value: -2: must be between 0 and 2147483647, inclusive"),
])
def test_volume_source_and_pod_security_errors(mutate, field, detail):
    p = pod()
    mutate(p.spec)
    for v in p.spec.volumes:  # the names a source needs, so that only the tested error remains
        if v.HasField("config_map"):
            v.config_map.name = "cm"
        if v.HasField("secret"):
            v.secret.secret_name = "s"
    causes = causes_of("pods", p)
    assert (field, detail) in [(f, d) for f, _, d in causes], causes


def test_valid_projected_volumes_and_security_contexts_pass():
    p = pod()
    cm = p.spec.volumes.add(name="cm").config_map
    cm.name, cm.default_mode, cm.optional = "cm", 0o400, True
    cm.items.add(key="k", path="conf/app.yaml", mode=0o600)
    cm.items.add(key="k2", path="./x..y")
    sec = p.spec.volumes.add(name="s").secret
    sec.secret_name, sec.default_mode = "s", 0o777
    sec.items.add(key="tls.crt", path="tls.crt", mode=0)
    p.spec.security_context.run_as_user = 0
    p.spec.security_context.fs_group = 2000
    p.spec.security_context.supplemental_groups.extend([0, 2 ** 31 - 1])
    sc = p.spec.containers[0].security_context
    sc.run_as_user, sc.run_as_group, sc.privileged = 1000, 1000, True
    sc.capabilities.add.append("NET_ADMIN")
    sc.capabilities.drop.append("ALL")
    validate_create(R("pods"), defaulted("pods", p))


def test_mounts_refer_to_volumes_and_paths_are_unique():
    p = pod()
    p.spec.volumes.add(name="data").config_map.name = "cm"
    c = p.spec.containers[0]
    c.volume_mounts.add(name="data", mount_path="/a")
    validate_create(R("pods"), defaulted("pods", p))
    c.volume_mounts.add(name="data", mount_path="/a")
    assert_cause("pods", p, "spec.containers[0].volumeMounts[1].mountPath", "FieldValueInvalid")


# ======================================================================
# ReplicaSet, Deployment
# ======================================================================

@pytest.mark.parametrize("kind", ["replicasets", "deployments"])
def test_workload_selector_rules(kind):
    obj = FACTORIES[kind]()
    obj.spec.ClearField("selector")
    assert_cause(kind, obj, "spec.selector", "FieldValueRequired")
    obj = FACTORIES[kind]()
    obj.spec.selector.Clear()
    obj.spec.selector.SetInParent()
    assert_cause(kind, obj, "spec.selector", "FieldValueInvalid")
    obj = FACTORIES[kind]()
    obj.spec.template.metadata.labels["app"] = "other"
    assert_cause(kind, obj, "spec.template.metadata.labels", "FieldValueInvalid",
                 'Invalid value: map[string]string{"app":"other"}: `selector` does not match '
                 "template `labels`")
    obj = FACTORIES[kind]()
    obj.spec.selector.match_expressions.add(key="app", operator="Is", values=["web"])
    assert_cause(kind, obj, "spec.selector.matchExpressions[0].operator", "FieldValueNotSupported")


@pytest.mark.parametrize("kind", ["replicasets", "deployments"])
def test_workload_expressions_select_templates(kind):
    obj = FACTORIES[kind]()
    obj.spec.selector.match_expressions.add(key="tier", operator="NotIn", values=["db"])
    validate_create(R(kind), defaulted(kind, obj))
    obj.spec.template.metadata.labels["tier"] = "db"
    assert_cause(kind, obj, "spec.template.metadata.labels", "FieldValueInvalid")


@pytest.mark.parametrize("kind", ["replicasets", "deployments"])
def test_workload_numbers_and_template(kind):
    obj = FACTORIES[kind]()
    obj.spec.replicas = -1
    assert_cause(kind, obj, "spec.replicas", "FieldValueInvalid",
                 "Invalid value: -1: must be greater than or equal to 0")
    obj = FACTORIES[kind]()
    obj.spec.min_ready_seconds = -1
    assert_cause(kind, obj, "spec.minReadySeconds", "FieldValueInvalid")
    obj = FACTORIES[kind]()
    obj.spec.template.spec.restart_policy = "OnFailure"
    assert_cause(kind, obj, "spec.template.spec.restartPolicy", "FieldValueNotSupported",
                 'Unsupported value: "OnFailure": supported values: "Always"')
    obj = FACTORIES[kind]()
    obj.spec.template.spec.containers[0].image = ""
    assert_cause(kind, obj, "spec.template.spec.containers[0].image", "FieldValueRequired")
    obj = FACTORIES[kind]()
    obj.spec.template.metadata.labels["bad key"] = "x"
    assert_cause(kind, obj, "spec.template.metadata.labels", "FieldValueInvalid")
    obj = FACTORIES[kind]()
    obj.spec.template.spec.active_deadline_seconds = 10
    assert_cause(kind, obj, "spec.template.spec.activeDeadlineSeconds", "FieldValueForbidden")


@pytest.mark.parametrize("surge,unavailable,field,ok", [
    ("1", "0", None, True), ("0", "1", None, True), ("25%", "0%", None, True),
    ("0", "100%", None, True),
    ("0", "0", "maxUnavailable", False), ("0%", "0", "maxUnavailable", False),
    ("x", "1", "maxSurge", False), ("1", "1.5%", "maxUnavailable", False),
    ("1", "-1", "maxUnavailable", False), ("1", "101%", "maxUnavailable", False),
])
def test_rolling_update_parameters(surge, unavailable, field, ok):
    d = deployment()
    d.spec.strategy.rolling_update.max_surge = surge
    d.spec.strategy.rolling_update.max_unavailable = unavailable
    if ok:
        validate_create(R("deployments"), defaulted("deployments", d))
    else:
        assert_cause("deployments", d, f"spec.strategy.rollingUpdate.{field}", "FieldValueInvalid")


def test_deployment_strategy_and_limits():
    d = deployment()
    d.spec.strategy.type = "BlueGreen"
    assert_cause("deployments", d, "spec.strategy.type", "FieldValueNotSupported")
    d = deployment()
    d.spec.strategy.type = "Recreate"
    d.spec.strategy.rolling_update.max_surge = "1"
    assert_cause("deployments", d, "spec.strategy.rollingUpdate", "FieldValueForbidden")
    d = deployment()
    d.spec.revision_history_limit = -1
    assert_cause("deployments", d, "spec.revisionHistoryLimit", "FieldValueInvalid")
    d = deployment()
    d.spec.min_ready_seconds = 600
    assert_cause("deployments", d, "spec.progressDeadlineSeconds", "FieldValueInvalid",
                 "Invalid value: 600: must be greater than minReadySeconds")
    d = deployment()
    d.spec.strategy.type = "Recreate"
    validate_create(R("deployments"), defaulted("deployments", d))


@pytest.mark.parametrize("kind", ["replicasets", "deployments"])
def test_selectors_are_immutable(kind):
    old = defaulted(kind)
    new = type(old)()
    new.CopyFrom(old)
    new.spec.selector.match_labels["extra"] = "x"
    new.spec.template.metadata.labels["extra"] = "x"
    new.spec.replicas = 5
    assert_cause(kind, new, "spec.selector", "FieldValueInvalid", old=old)
    new = type(old)()
    new.CopyFrom(old)
    new.spec.replicas = 5
    new.spec.template.spec.containers[0].image = "nginx:2"
    validate_update(R(kind), new, old)


# ======================================================================
# Service, Endpoints
# ======================================================================

@pytest.mark.parametrize("mutate,field,reason", [
    (lambda s: s.ports.pop(), "spec.ports", "FieldValueRequired"),
    (lambda s: setattr(s.ports[0], "port", 0), "spec.ports[0].port", "FieldValueInvalid"),
    (lambda s: setattr(s.ports[0], "port", 65536), "spec.ports[0].port", "FieldValueInvalid"),
    (lambda s: setattr(s.ports[0], "protocol", "HTTP"), "spec.ports[0].protocol",
     "FieldValueNotSupported"),
    (lambda s: setattr(s.ports[0], "target_port", "0"), "spec.ports[0].targetPort",
     "FieldValueInvalid"),
    (lambda s: setattr(s.ports[0], "target_port", "not_a_name"), "spec.ports[0].targetPort",
     "FieldValueInvalid"),
    (lambda s: s.ports.add(port=81), "spec.ports[0].name", "FieldValueRequired"),
    (lambda s: (setattr(s.ports[0], "name", "a"), s.ports.add(port=81, name="a")),
     "spec.ports[1].name", "FieldValueDuplicate"),
    (lambda s: (setattr(s.ports[0], "name", "a"), s.ports.add(port=80, name="b")),
     "spec.ports[1]", "FieldValueDuplicate"),
    (lambda s: setattr(s, "type", "Magic"), "spec.type", "FieldValueNotSupported"),
    (lambda s: setattr(s.ports[0], "node_port", 30000), "spec.ports[0].nodePort",
     "FieldValueForbidden"),
    (lambda s: setattr(s, "session_affinity", "Sticky"), "spec.sessionAffinity",
     "FieldValueNotSupported"),
    (lambda s: setattr(s, "cluster_ip", "10.0.0.300"), "spec.clusterIP", "FieldValueInvalid"),
    (lambda s: s.selector.update({"app": "-x"}), "spec.selector", "FieldValueInvalid"),
])
def test_service_errors(mutate, field, reason):
    s = service()
    mutate(s.spec)
    assert_cause("services", s, field, reason)


def test_valid_services():
    s = service()
    s.spec.ports[0].name = "http"
    s.spec.ports.add(name="dns", port=53, protocol="UDP", target_port="dns-udp")
    s.spec.ports.add(name="dns-tcp", port=53, protocol="TCP")
    s.spec.type = "NodePort"
    s.spec.ports[0].node_port = 30080
    s.spec.cluster_ip = "10.96.0.10"
    validate_create(R("services"), defaulted("services", s))
    headless = service()
    headless.spec.cluster_ip = "None"
    validate_create(R("services"), defaulted("services", headless))
    external = service()
    external.spec.type = "ExternalName"
    external.spec.external_name = "db.example.com."
    del external.spec.ports[:]
    validate_create(R("services"), defaulted("services", external))


def test_cluster_ip_is_immutable_once_set():
    old = service()
    apply_defaults(R("services"), old)
    new = service()
    new.spec.cluster_ip = "10.0.0.5"
    validate_update(R("services"), defaulted("services", new), old)  # "" -> allocated
    old.spec.cluster_ip = "10.0.0.5"
    new.spec.cluster_ip = "10.0.0.6"
    assert_cause("services", new, "spec.clusterIP", "FieldValueInvalid",
                 'Invalid value: "10.0.0.6": field is immutable', old=old)


def test_endpoints_errors():
    ep = endpoints()
    ep.subsets[0].addresses.add(ip="not-an-ip")
    ep.subsets[0].ports.add(port=0)
    causes = [(f, r) for f, r, _ in causes_of("endpoints", ep)]
    assert ("subsets[0].addresses[1].ip", "FieldValueInvalid") in causes
    assert ("subsets[0].ports[1].port", "FieldValueInvalid") in causes
    assert ("subsets[0].ports[0].name", "FieldValueRequired") in causes


# ======================================================================
# ConfigMap, Secret
# ======================================================================

@pytest.mark.parametrize("key,ok", [
    ("a", True), ("key.name", True), ("KEY_NAME", True), ("key-name", True), (".hidden", True),
    ("a/b", False), ("a b", False), (".", False), ("..", False), ("..x", False), ("k" * 254, False),
])
def test_config_keys(key, ok):
    for kind in ("configmaps", "secrets"):
        obj = FACTORIES[kind]()
        obj.data[key] = "v" if kind == "configmaps" else b"v"
        if ok:
            validate_create(R(kind), defaulted(kind, obj))
        else:
            assert_cause(kind, obj, f"data[{key}]", "FieldValueInvalid")


def test_data_size_limit():
    cm = config_map()
    cm.data["big"] = "x" * (1024 * 1024)
    assert_cause("configmaps", cm, "data", "FieldValueTooLong")
    cm = config_map()
    cm.binary_data["big"] = b"x" * (1024 * 1024 - 3)
    validate_create(R("configmaps"), defaulted("configmaps", cm))  # "v" + "w" + this = 1 MiB - 1
    s = secret()
    s.data["big"] = b"x" * (1024 * 1024)
    assert_cause("secrets", s, "data", "FieldValueTooLong")


def test_binary_data_keys_may_not_repeat_data_keys():
    cm = config_map()
    cm.binary_data["KEY_2"] = b"\x00"
    assert_cause("configmaps", cm, "binaryData[KEY_2]", "FieldValueInvalid")


@pytest.mark.parametrize("secret_type,data,field", [
    ("kubernetes.io/tls", {"tls.crt": b"c"}, "data[tls.key]"),
    ("kubernetes.io/dockerconfigjson", {}, "data[.dockerconfigjson]"),
    ("kubernetes.io/dockerconfigjson", {".dockerconfigjson": b"{nope"}, "data[.dockerconfigjson]"),
    ("kubernetes.io/basic-auth", {}, "data[username]"),
    ("kubernetes.io/ssh-auth", {}, "data[ssh-privatekey]"),
])
def test_typed_secrets_need_their_keys(secret_type, data, field):
    s = core_pb2.Secret(type=secret_type, data=data)
    s.metadata.name, s.metadata.namespace = "s", "default"
    causes = causes_of("secrets", s)
    assert field in [f for f, _, _ in causes]
    assert all("{nope" not in d for _, _, d in causes)  # secret contents are never echoed


def test_valid_tls_secret():
    s = core_pb2.Secret(type="kubernetes.io/tls", data={"tls.crt": b"c", "tls.key": b"k"})
    s.metadata.name, s.metadata.namespace = "tls", "default"
    validate_create(R("secrets"), defaulted("secrets", s))


@pytest.mark.parametrize("kind", ["configmaps", "secrets"])
def test_immutable_data(kind):
    old = FACTORIES[kind]()
    old.immutable = True
    apply_defaults(R(kind), old)
    same = type(old)()
    same.CopyFrom(old)
    same.metadata.labels["touched"] = "yes"  # metadata may still change
    validate_update(R(kind), same, old)
    changed = type(old)()
    changed.CopyFrom(old)
    changed.data["new"] = "x" if kind == "configmaps" else b"x"
    assert_cause(kind, changed, "data", "FieldValueForbidden", old=old)
    unset = type(old)()
    unset.CopyFrom(old)
    unset.ClearField("immutable")
    assert_cause(kind, unset, "immutable", "FieldValueForbidden", old=old)
    mutable = FACTORIES[kind]()
    apply_defaults(R(kind), mutable)
    grown = type(old)()
    grown.CopyFrom(mutable)
    grown.data["new"] = "x" if kind == "configmaps" else b"x"
    validate_update(R(kind), grown, mutable)


def test_secret_type_is_immutable():
    old = defaulted("secrets")
    new = core_pb2.Secret()
    new.CopyFrom(old)
    new.type = "example.com/other"
    assert_cause("secrets", new, "type", "FieldValueInvalid", old=old)


# ======================================================================
# Namespace, Node, Event, Lease
# ======================================================================

def test_namespace_finalizers():
    ns = namespace()
    ns.spec.finalizers.append("bad finalizer")
    assert_cause("namespaces", ns, "spec.finalizers", "FieldValueInvalid")


def test_node_rules():
    n = node()
    n.spec.taints.add(key="dedicated", value="gpu", effect="NoSchedule")
    n.spec.taints.add(key="dedicated", value="gpu", effect="NoExecute")
    n.spec.pod_cidr = "10.244.1.0/24"
    validate_create(R("nodes"), defaulted("nodes", n))
    n.spec.taints.add(key="dedicated", effect="NoSchedule")
    n.spec.taints.add(key="x", effect="Sometimes")
    n.spec.taints.add(effect="NoSchedule")
    n.spec.pod_cidr = "10.244.1.0/33"
    n.status.capacity["cpu"] = "four"
    causes = [(f, r) for f, r, _ in causes_of("nodes", n)]
    assert ("spec.taints[2]", "FieldValueDuplicate") in causes
    assert ("spec.taints[3].effect", "FieldValueNotSupported") in causes
    assert ("spec.taints[4].key", "FieldValueRequired") in causes
    assert ("spec.podCIDR", "FieldValueInvalid") in causes
    assert ("status.capacity[cpu]", "FieldValueInvalid") in causes


def test_node_pod_cidr_is_set_once():
    old = defaulted("nodes")
    new = core_pb2.Node()
    new.CopyFrom(old)
    new.spec.pod_cidr = "10.244.0.0/24"
    validate_update(R("nodes"), new, old)
    newer = core_pb2.Node()
    newer.CopyFrom(new)
    newer.spec.pod_cidr = "10.244.9.0/24"
    assert_cause("nodes", newer, "spec.podCIDR", "FieldValueForbidden", old=new)


def test_event_rules():
    e = event()
    e.ClearField("involved_object")
    assert_cause("events", e, "involvedObject", "FieldValueRequired")
    e = event()
    e.involved_object.namespace = "elsewhere"
    assert_cause("events", e, "involvedObject.namespace", "FieldValueInvalid",
                 'Invalid value: "elsewhere": does not match event.namespace')
    e = event()
    e.involved_object.kind = ""
    assert_cause("events", e, "involvedObject.kind", "FieldValueRequired")


def test_lease_rules():
    lz = lease()
    lz.spec.lease_duration_seconds = 0
    assert_cause("leases", lz, "spec.leaseDurationSeconds", "FieldValueInvalid",
                 "Invalid value: 0: must be greater than 0")
    lz = lease()
    lz.spec.ClearField("lease_duration_seconds")
    validate_create(R("leases"), lz)
    lz.spec.lease_transitions = -1
    assert_cause("leases", lz, "spec.leaseTransitions", "FieldValueInvalid")


# ======================================================================
# updates
# ======================================================================

@pytest.mark.parametrize("field,json_name,value", [
    ("name", "name", "other"), ("namespace", "namespace", "other"), ("uid", "uid", "u2"),
    ("creation_timestamp", "creationTimestamp", "2030-01-01T00:00:00Z"),
])
def test_immutable_metadata(field, json_name, value):
    old = defaulted("configmaps")
    old.metadata.uid, old.metadata.creation_timestamp = "u1", "2020-01-01T00:00:00Z"
    new = core_pb2.ConfigMap()
    new.CopyFrom(old)
    setattr(new.metadata, field, value)
    assert_cause("configmaps", new, f"metadata.{json_name}", "FieldValueInvalid",
                 f'Invalid value: "{value}": field is immutable', old=old)


def test_empty_uid_and_creation_timestamp_mean_unchanged():
    old = defaulted("configmaps")
    old.metadata.uid, old.metadata.creation_timestamp = "u1", "2020-01-01T00:00:00Z"
    new = defaulted("configmaps")
    validate_update(R("configmaps"), new, old)


def _pod_pair():
    old = pod()
    old.spec.active_deadline_seconds = 100
    apply_defaults(R("pods"), old)
    new = core_pb2.Pod()
    new.CopyFrom(old)
    return old, new


@pytest.mark.parametrize("mutate", [
    lambda s: setattr(s.containers[0], "image", "nginx:2"),
    lambda s: setattr(s, "active_deadline_seconds", 50),
    lambda s: s.tolerations.add(key="extra", operator="Exists"),
    lambda s: setattr(s, "node_name", "node-1"),
])
def test_allowed_pod_updates(mutate):
    old, new = _pod_pair()
    mutate(new.spec)
    validate_update(R("pods"), new, old)


@pytest.mark.parametrize("mutate,field", [
    (lambda s: setattr(s, "restart_policy", "Never"), "spec"),
    (lambda s: s.containers.add(name="d", image="x"), "spec"),
    (lambda s: s.containers[0].command.append("sh"), "spec"),
    (lambda s: s.tolerations.pop(), "spec"),
    (lambda s: s.node_selector.update({"a": "b"}), "spec"),
    (lambda s: setattr(s, "active_deadline_seconds", 200), "spec.activeDeadlineSeconds"),
    (lambda s: s.ClearField("active_deadline_seconds"), "spec.activeDeadlineSeconds"),
])
def test_forbidden_pod_updates(mutate, field):
    old, new = _pod_pair()
    mutate(new.spec)
    causes = causes_of("pods", new, old)
    assert field in [f for f, _, _ in causes], causes


def test_node_name_binds_once():
    old, new = _pod_pair()
    new.spec.node_name = "node-1"
    validate_update(R("pods"), new, old)
    moved = core_pb2.Pod()
    moved.CopyFrom(new)
    moved.spec.node_name = "node-2"
    causes = causes_of("pods", moved, new)
    assert causes[0][:2] == ("spec", "FieldValueForbidden")
    assert causes[0][2].startswith("Forbidden: pod updates may not change fields other than")


def test_status_changes_are_not_spec_changes():
    old, new = _pod_pair()
    new.status.phase = "Running"
    new.metadata.labels["x"] = "y"
    validate_update(R("pods"), new, old)


# ======================================================================
# quantities
# ======================================================================

@pytest.mark.parametrize("text,value", [
    ("0", 0), ("1", 1), ("100m", Fraction(1, 10)), ("1.5", Fraction(3, 2)), (".5", Fraction(1, 2)),
    ("1.", 1), ("+2", 2), ("-2", -2), ("1k", 1000), ("1M", 10 ** 6), ("2G", 2 * 10 ** 9),
    ("1T", 10 ** 12), ("1P", 10 ** 15), ("1E", 10 ** 18), ("1Ki", 1024), ("1.5Gi", 3 * 2 ** 29),
    ("64Mi", 64 * 2 ** 20), ("1Ti", 2 ** 40), ("1Pi", 2 ** 50), ("1Ei", 2 ** 60),
    ("1e3", 1000), ("1E3", 1000), ("12e-2", Fraction(12, 100)), ("5n", Fraction(5, 10 ** 9)),
    ("5u", Fraction(5, 10 ** 6)), ("1e+2", 100),
])
def test_parse_quantity(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "m", "1x", "1KI", "1 Gi", "1e", "--1", "1.2.3", "Gi", "1mi",
                                  "1e99999", " 1", "0x10", "1_000"])
def test_bad_quantities(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_integer_views_round_up():
    assert milli_cpu("100m") == 100
    assert milli_cpu("1") == 1000
    assert milli_cpu("1.5m") == 2
    assert milli_cpu("0.1") == 100
    assert bytes_of("64Mi") == 67108864
    assert bytes_of("1k") == 1000
    assert bytes_of("0.5") == 1
    assert bytes_of("1500m") == 2


@settings(max_examples=300, deadline=None)
@given(st.fractions(max_denominator=10 ** 9).filter(lambda f: (f * 10 ** 9).denominator == 1),
       st.booleans())
def test_format_then_parse_is_identity(value, binary):
    assert parse_quantity(format_quantity(value, binary=binary)) == value


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10 ** 6), st.sampled_from(["", "m", "k", "M", "Ki", "Mi", "Gi", "e3", "e-3"]))
def test_suffixes_scale_exactly(number, suffix):
    scale = {"": 1, "m": Fraction(1, 1000), "k": 1000, "M": 10 ** 6, "Ki": 1024, "Mi": 2 ** 20,
             "Gi": 2 ** 30, "e3": 1000, "e-3": Fraction(1, 1000)}[suffix]
    assert parse_quantity(f"{number}{suffix}") == number * scale


# ======================================================================
# Service type-dependent fields, EndpointSlice, IPAddress
# ======================================================================

def test_service_defaults_follow_the_type():
    s = defaulted("services")
    assert s.spec.internal_traffic_policy == "Cluster" and not s.spec.external_traffic_policy
    s = service()
    s.spec.type = "LoadBalancer"
    s.spec.session_affinity = "ClientIP"
    s = defaulted("services", s)
    assert s.spec.external_traffic_policy == "Cluster" and s.spec.allocate_load_balancer_node_ports
    assert s.spec.session_affinity_config.client_ip.timeout_seconds == 10800


def test_service_type_rules():
    s = service()
    s.spec.type = "ExternalName"
    assert_cause("services", s, "spec.externalName", "FieldValueRequired")
    s = service()
    s.spec.type, s.spec.external_name, s.spec.cluster_ip = "ExternalName", "db.example.com", "10.96.0.5"
    assert_cause("services", s, "spec.clusterIPs", "FieldValueForbidden",
                 "Forbidden: may not be set for ExternalName services")
    s = service()
    s.spec.external_traffic_policy = "Local"
    assert_cause("services", s, "spec.externalTrafficPolicy", "FieldValueInvalid",
                 'Invalid value: "Local": may only be set for externally-accessible services')
    s = service()
    s.spec.external_ips.append("192.0.2.10")
    s.spec.external_traffic_policy = "Local"  # externalIPs make it externally accessible
    validate_create(R("services"), defaulted("services", s))  # valid
    for ip, message in (("10.0.0", "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
                        ("0.0.0.0", "may not be unspecified (0.0.0.0)"),
                        ("127.0.0.5", "may not be in the loopback range (127.0.0.0/8, ::1/128)"),
                        ("169.254.169.254", "may not be in the link-local range (169.254.0.0/16, fe80::/10)"),
                        ("224.0.0.251", "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)")):
        s = service()
        s.spec.external_ips.extend(["192.0.2.10", ip])
        assert_cause("services", s, "spec.externalIPs[1]", "FieldValueInvalid", f'Invalid value: "{ip}": {message}')
    s = service()
    s.spec.session_affinity = "ClientIP"
    s.spec.session_affinity_config.client_ip.timeout_seconds = 90000
    assert_cause("services", s, "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "FieldValueInvalid",
                 "Invalid value: 90000: must be greater than 0 and less than 86400")


def test_node_port_twice_for_one_protocol_is_a_duplicate():
    s = service()
    s.spec.type = "NodePort"
    s.spec.ports[0].name, s.spec.ports[0].node_port = "a", 30080
    s.spec.ports.add(name="b", port=81, node_port=30080)
    assert_cause("services", s, "spec.ports[1].nodePort", "FieldValueDuplicate", "Duplicate value: 30080")
    s.spec.ports[1].protocol = "UDP"
    validate_create(R("services"), defaulted("services", s))


def test_endpoint_slice_rules():
    eps = endpoint_slice()
    eps.address_type = "IPX"
    assert_cause("endpointslices", eps, "addressType", "FieldValueNotSupported")
    eps = endpoint_slice()
    eps.endpoints[0].addresses[0] = "fd00::1"
    assert_cause("endpointslices", eps, "endpoints[0].addresses[0]", "FieldValueInvalid",
                 'Invalid value: "fd00::1": must be a valid IPv4 address')
    eps = endpoint_slice()
    del eps.endpoints[0].addresses[:]
    assert_cause("endpointslices", eps, "endpoints[0].addresses", "FieldValueRequired")
    eps = endpoint_slice()
    eps.ports[0].ClearField("protocol")
    assert_cause("endpointslices", eps, "ports[0].protocol", "FieldValueRequired")
    eps = endpoint_slice()
    eps.ports.add(name="http", port=9090, protocol="TCP")
    assert_cause("endpointslices", eps, "ports[1].name", "FieldValueDuplicate")
    old = defaulted("endpointslices")
    new = endpoint_slice()
    new.address_type = "FQDN"
    new.endpoints[0].addresses[0] = "a.example.com"
    assert_cause("endpointslices", new, "addressType", "FieldValueInvalid", old=old)


def test_ip_address_rules():
    ip = ip_address()
    ip.metadata.name = "10.96.0.300"
    assert_cause("ipaddresses", ip, "metadata.name", "FieldValueInvalid")
    ip = ip_address()
    ip.ClearField("spec")
    assert_cause("ipaddresses", ip, "spec.parentRef", "FieldValueRequired")
    old = defaulted("ipaddresses")
    new = ip_address()
    new.spec.parent_ref.name = "other"
    assert_cause("ipaddresses", new, "spec.parentRef", "FieldValueInvalid", old=old)


# ---- RBAC (pkg/apis/rbac/validation) ----

def test_rbac_rules_and_bindings():
    r = role()
    r.rules[0].ClearField("verbs")
    r.rules.add(verbs=["get"], non_resource_urls=["/healthz"])
    pairs = [(f, why) for f, why, _ in causes_of("roles", r)]
    assert ("rules[0].verbs", "FieldValueRequired") in pairs
    assert ("rules[1].nonResourceURLs", "FieldValueInvalid") in pairs
    b = cluster_role_binding()
    b.role_ref.kind = "Role"
    b.subjects[1].namespace = ""
    b.subjects.add(kind="Robot", name="x")
    pairs = [(f, why) for f, why, _ in causes_of("clusterrolebindings", b)]
    assert pairs == [("roleRef.kind", "FieldValueNotSupported"), ("subjects[1].namespace", "FieldValueRequired"),
                     ("subjects[2].kind", "FieldValueNotSupported")]
    old = defaulted("rolebindings")
    new = role_binding()
    new.role_ref.name = "another"
    assert_cause("rolebindings", new, "roleRef", "FieldValueInvalid", old=old)
    bad_name = role()
    bad_name.metadata.name = "a/b"
    assert_cause("roles", bad_name, "metadata.name", "FieldValueInvalid")
