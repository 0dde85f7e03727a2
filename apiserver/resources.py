"""The kinds the apiserver serves: names, scopes, message types, etcd keys.

A resource is addressed by its plural name ("pods") as in Kubernetes' REST
paths; ``lookup`` also accepts the kind ("Pod"), the singular ("pod") and
kubectl's short names ("po", "deploy", ...). An ``api_pb2.Object`` carries one
kind in its ``kind`` oneof, named by ``Resource.field``.
"""

from __future__ import annotations

from dataclasses import dataclass

from apiserver.pb import (admissionregistration_pb2, api_pb2, apps_pb2, certificates_pb2, coordination_pb2, core_pb2, discovery_pb2,
                          networking_pb2, rbac_pb2, serviceaccount_pb2, storage_pb2)

REGISTRY_PREFIX = "/registry/"
# where kubelets keep their node Leases (core/v1 NamespaceNodeLease)
NAMESPACE_NODE_LEASE = "kube-node-lease"


@dataclass(frozen=True)
class Resource:
    name: str  # plural, as in REST paths and etcd keys: "pods"
    kind: str  # "Pod"
    api_version: str  # "v1", "apps/v1", "coordination.k8s.io/v1"
    field: str  # the api_pb2.Object oneof field: "pod"
    message: type
    namespaced: bool
    # a status subresource: Update keeps the stored status, UpdateStatus
    # changes only the status
    has_status: bool
    # generation is bumped when spec changes
    has_spec: bool
    short_names: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def qualified(self) -> str:
        """How Kubernetes names it in messages: "pods", "deployments.apps"."""
        return f"{self.name}.{self.group}" if self.group else self.name

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def prefix(self, namespace: str = "") -> str:
        """The etcd key prefix of every object of this resource (in ``namespace``)."""
        if self.namespaced and namespace:
            return f"{REGISTRY_PREFIX}{self.name}/{namespace}/"
        return f"{REGISTRY_PREFIX}{self.name}/"

    def key(self, namespace: str, name: str) -> str:
        if self.namespaced:
            return f"{REGISTRY_PREFIX}{self.name}/{namespace}/{name}"
        return f"{REGISTRY_PREFIX}{self.name}/{name}"

    def new(self):
        return self.message()


RESOURCES: tuple[Resource, ...] = (
    Resource("namespaces", "Namespace", "v1", "namespace", core_pb2.Namespace,
             namespaced=False, has_status=True, has_spec=True, short_names=("ns",)),
    Resource("nodes", "Node", "v1", "node", core_pb2.Node,
             namespaced=False, has_status=True, has_spec=True, short_names=("no",)),
    Resource("pods", "Pod", "v1", "pod", core_pb2.Pod,
             namespaced=True, has_status=True, has_spec=True, short_names=("po",)),
    Resource("services", "Service", "v1", "service", core_pb2.Service,
             namespaced=True, has_status=True, has_spec=True, short_names=("svc",)),
    Resource("endpoints", "Endpoints", "v1", "endpoints", core_pb2.Endpoints,
             namespaced=True, has_status=False, has_spec=False, short_names=("ep",)),
    Resource("configmaps", "ConfigMap", "v1", "config_map", core_pb2.ConfigMap,
             namespaced=True, has_status=False, has_spec=False, short_names=("cm",)),
    Resource("secrets", "Secret", "v1", "secret", core_pb2.Secret,
             namespaced=True, has_status=False, has_spec=False),
    Resource("events", "Event", "v1", "event", core_pb2.Event,
             namespaced=True, has_status=False, has_spec=False, short_names=("ev",)),
    Resource("replicasets", "ReplicaSet", "apps/v1", "replica_set", apps_pb2.ReplicaSet,
             namespaced=True, has_status=True, has_spec=True, short_names=("rs",)),
    Resource("deployments", "Deployment", "apps/v1", "deployment", apps_pb2.Deployment,
             namespaced=True, has_status=True, has_spec=True, short_names=("deploy",)),
    Resource("leases", "Lease", "coordination.k8s.io/v1", "lease", coordination_pb2.Lease,
             namespaced=True, has_status=False, has_spec=True),
    Resource("endpointslices", "EndpointSlice", "discovery.k8s.io/v1", "endpoint_slice",
             discovery_pb2.EndpointSlice, namespaced=True, has_status=False, has_spec=False),
    # one per allocated Service IP, named by the address (apiserver/service_alloc.py)
    Resource("ipaddresses", "IPAddress", "networking.k8s.io/v1", "ip_address", networking_pb2.IPAddress,
             namespaced=False, has_status=False, has_spec=True, short_names=("ip",)),
    # persistent storage: volumes, claims on them, classes that make them (controllers/persistentvolume)
    Resource("persistentvolumes", "PersistentVolume", "v1", "persistent_volume", core_pb2.PersistentVolume,
             namespaced=False, has_status=True, has_spec=True, short_names=("pv",)),
    Resource("persistentvolumeclaims", "PersistentVolumeClaim", "v1", "persistent_volume_claim",
             core_pb2.PersistentVolumeClaim, namespaced=True, has_status=True, has_spec=True,
             short_names=("pvc",)),
    Resource("storageclasses", "StorageClass", "storage.k8s.io/v1", "storage_class", storage_pb2.StorageClass,
             namespaced=False, has_status=False, has_spec=False, short_names=("sc",)),
    # issue 23: identities and RBAC (apiserver/auth/)
    Resource("serviceaccounts", "ServiceAccount", "v1", "service_account", serviceaccount_pb2.ServiceAccount,
             namespaced=True, has_status=False, has_spec=False, short_names=("sa",)),
    Resource("roles", "Role", "rbac.authorization.k8s.io/v1", "role", rbac_pb2.Role,
             namespaced=True, has_status=False, has_spec=False),
    Resource("clusterroles", "ClusterRole", "rbac.authorization.k8s.io/v1", "cluster_role", rbac_pb2.ClusterRole,
             namespaced=False, has_status=False, has_spec=False),
    Resource("rolebindings", "RoleBinding", "rbac.authorization.k8s.io/v1", "role_binding", rbac_pb2.RoleBinding,
             namespaced=True, has_status=False, has_spec=False),
    Resource("clusterrolebindings", "ClusterRoleBinding", "rbac.authorization.k8s.io/v1", "cluster_role_binding",
             rbac_pb2.ClusterRoleBinding, namespaced=False, has_status=False, has_spec=False),
    # kubelet TLS bootstrap: a node asks for its client certificate (controllers/certificates.py)
    Resource("certificatesigningrequests", "CertificateSigningRequest", "certificates.k8s.io/v1",
             "certificate_signing_request", certificates_pb2.CertificateSigningRequest,
             namespaced=False, has_status=True, has_spec=True, short_names=("csr",)),
    # dynamic admission: the webhooks the apiserver calls before it stores a write (apiserver/admission/)
    Resource("validatingwebhookconfigurations", "ValidatingWebhookConfiguration", "admissionregistration.k8s.io/v1",
             "validating_webhook_configuration", admissionregistration_pb2.ValidatingWebhookConfiguration,
             namespaced=False, has_status=False, has_spec=False),
    Resource("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", "admissionregistration.k8s.io/v1",
             "mutating_webhook_configuration", admissionregistration_pb2.MutatingWebhookConfiguration,
             namespaced=False, has_status=False, has_spec=False),
)

BY_NAME = {r.name: r for r in RESOURCES}
BY_KIND = {r.kind: r for r in RESOURCES}
BY_FIELD = {r.field: r for r in RESOURCES}
BY_MESSAGE = {r.message: r for r in RESOURCES}
_ALIASES = {alias: r for r in RESOURCES
            for alias in (r.name, r.kind, r.kind.lower(), r.singular, *r.short_names)}


def lookup(name: str) -> Resource | None:
    """The resource called ``name`` (plural, kind, singular or short name), or None."""
    return _ALIASES.get(name) or _ALIASES.get(name.lower())


def of(message) -> Resource:
    """The resource of a typed message (a core_pb2.Pod, ...)."""
    return BY_MESSAGE[type(message)]


def wrap(message) -> api_pb2.Object:
    """A typed message as an api_pb2.Object (copied)."""
    obj = api_pb2.Object()
    getattr(obj, of(message).field).CopyFrom(message)
    return obj


def unwrap(obj: api_pb2.Object):
    """(resource, typed message) of an Object, or (None, None) when it carries no kind."""
    field = obj.WhichOneof("kind")
    if field is None:
        return None, None
    return BY_FIELD[field], getattr(obj, field)
