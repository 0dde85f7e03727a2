"""The NodeRestriction admission plugin: what a kubelet (system:node:<name>) may
write, so that a stolen kubelet credential reaches no further than its node.
Upstream's rules (plugin/pkg/admission/noderestriction, 1.31+) and messages:

- pods: create only mirror pods (annotation kubernetes.io/config.mirror) bound to
  itself, owned by its Node (one controller reference, the Node's uid, no
  blockOwnerDeletion), naming no service account, Secret, ConfigMap or claim;
  update no pod (only pods/status of its own pods), delete and evict only its own;
- nodes: create, update and delete only its own; register with no label in the
  node-restriction.kubernetes.io/ namespace nor a kubernetes.io or k8s.io label
  the kubelet does not own, change none of those, nor its taints or
  ownerReferences, once registered;
- leases: only in kube-node-lease, only the one named after itself;
- persistentvolumeclaims: only pvc/status, and there only capacity and conditions;
- serviceaccounts/token: only tokens bound to a pod of its own (with the pod's uid);
- certificatesigningrequests for the kubelet signers: only with CN system:node:<itself>.

Two moments, as upstream's attributes and objects: ``check`` sees a request's
attributes before anything is read (the pod cache answers for deletes and
evictions, as upstream's lister); ``admit_create``/``admit_update`` see the
object to be stored (and the stored one) inside the registry's write, so a
refusal writes nothing. The simulated kubelets, many nodes under one identity,
run as a name outside system:node:* (pki.COMPONENTS) and are not restricted.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

from apiserver import errors
from apiserver.auth.node import NODE_LEASES, NODE_PREFIX, NODES_GROUP, node_of, references
from apiserver.auth.rbac import Attributes

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
RESTRICTION_LABELS = "node-restriction.kubernetes.io"
KUBELET_SIGNERS = ("kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving")
# pkg/kubelet/apis: the kubernetes.io/k8s.io labels a kubelet sets on its Node itself
KUBELET_LABELS = frozenset({
    "kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch", "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch", "beta.kubernetes.io/instance-type", "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/region"})
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
WRITES = {"create", "update", "patch", "delete"}
# pod subresources that are connections, not writes (upstream's plugin sees no Connect)
CONNECT = {"exec", "attach", "portforward", "proxy", "log"}
LEASES = "leases.coordination.k8s.io"
CSRS = "certificatesigningrequests.certificates.k8s.io"


def _in_namespace(key: str, namespace: str) -> bool:
    prefix = key.partition("/")[0] if "/" in key else ""
    return prefix == namespace or prefix.endswith("." + namespace)


def forbidden_labels(modified: set[str]) -> list[str]:
    """Of the label keys a kubelet changed (or registered with), those it may not."""
    out = []
    for key in modified:
        if _in_namespace(key, RESTRICTION_LABELS):
            out.append(key)
        elif (_in_namespace(key, "kubernetes.io") or _in_namespace(key, "k8s.io")) and not (
                key in KUBELET_LABELS or any(_in_namespace(key, ns) for ns in KUBELET_LABEL_NAMESPACES)):
            out.append(key)
    return sorted(out)


def _modified_labels(new: dict, old: dict) -> set[str]:
    return {k for k in set(new) | set(old) if new.get(k) != old.get(k)}


class NodeRestriction:
    def __init__(self, caches: dict) -> None:
        self.pods = caches["pods"]
        self.nodes = caches["nodes"]

    # ---- from the attributes --------------------------------------------

    def check(self, a: Attributes) -> None:
        """Refuses (ApiError Forbidden) what the attributes alone tell is not the node's."""
        if not a.resource_request or a.verb not in WRITES:
            return
        node = node_of(a.user)
        if node is None:
            if NODES_GROUP in a.user.groups and a.user.name == NODE_PREFIX:
                what = f"{a.resource}.{a.api_group}" if a.api_group else a.resource
                raise errors.forbidden(what, a.name, f'could not determine node from user "{a.user.name}"')
            return
        if a.api_group == "coordination.k8s.io" and a.resource == "leases":
            self._check_lease(node, a)
        if a.api_group:
            return
        if a.resource == "pods":
            self._check_pod(node, a)
        elif a.resource == "nodes" and a.name and a.name != node:
            raise errors.forbidden("nodes", a.name, f'node "{node}" is not allowed to modify node "{a.name}"')
        elif a.resource == "persistentvolumeclaims" and a.subresource != "status":
            raise errors.forbidden("persistentvolumeclaims", a.name, "may only update PVC status")

    def _check_lease(self, node: str, a: Attributes) -> None:
        if a.namespace != NODE_LEASES:
            raise errors.forbidden(LEASES, a.name, f'can only access leases in the "{NODE_LEASES}" system namespace')
        if a.name and a.name != node:
            raise errors.forbidden(LEASES, a.name, "can only access node lease with the same name as the "
                                                   "requesting node")

    def _check_pod(self, node: str, a: Attributes) -> None:
        sub = a.subresource
        if sub in CONNECT:
            return
        if sub not in ("", "status", "eviction"):
            raise errors.forbidden("pods", a.name, f"unexpected pod subresource \"{sub}\", only 'status' and "
                                                   "'eviction' are allowed")
        if sub == "status":
            return  # judged against the stored pod (admit_update)
        if sub == "eviction":
            pod = self.pods.get(a.namespace, a.name) if a.name else None
            if pod is not None and pod.spec.node_name != node:
                raise errors.forbidden("pods", a.name,
                                       f"node {node} can only evict pods with spec.nodeName set to itself")
            return
        if a.verb in ("update", "patch"):
            raise errors.forbidden("pods", a.name, f'unexpected operation "UPDATE", node "{node}" can only create '
                                                   "and delete mirror pods")
        if a.verb == "delete" and a.name:
            pod = self.pods.get(a.namespace, a.name)
            if pod is not None and pod.spec.node_name != node:
                raise errors.forbidden("pods", a.name,
                                       f'node "{node}" can only delete pods with spec.nodeName set to itself')

    # ---- from the objects -----------------------------------------------

    def admit_create(self, user, resource: str, obj) -> None:
        """Refuses creating ``obj`` (defaulted, not stored yet) as ``user``."""
        node = node_of(user)
        if node is None:
            return
        name = obj.metadata.name
        if resource == "pods":
            self._admit_pod_create(node, obj)
        elif resource == "nodes":
            if name != node:
                raise errors.forbidden("nodes", name, f'node "{node}" is not allowed to modify node "{name}"')
            bad = forbidden_labels(set(obj.metadata.labels))
            if bad:
                raise errors.forbidden("nodes", name, f'node "{node}" is not allowed to set the following labels: '
                                                      + ", ".join(bad))
        elif resource == "leases" and name != node:
            raise errors.forbidden(LEASES, name, "can only access node lease with the same name as the "
                                                 "requesting node")
        elif resource == "certificatesigningrequests" and obj.spec.signer_name in KUBELET_SIGNERS:
            try:
                req = x509.load_pem_x509_csr(bytes(obj.spec.request))
                cns = req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            except ValueError as e:
                raise errors.forbidden(CSRS, name, f"unable to parse csr: {e}") from None
            if not cns or cns[0].value != f"system:node:{node}":
                raise errors.forbidden(CSRS, name, f"can only create a node CSR with CN=system:node:{node}")

    def _admit_pod_create(self, node: str, pod) -> None:
        name = pod.metadata.name
        if MIRROR_ANNOTATION not in pod.metadata.annotations:
            raise errors.forbidden("pods", name, f'pod does not have "{MIRROR_ANNOTATION}" annotation, node '
                                                 f'"{node}" can only create mirror pods')
        if pod.spec.node_name != node:
            raise errors.forbidden("pods", name, f'node "{node}" can only create pods with spec.nodeName set to '
                                                 "itself")
        owners = pod.metadata.owner_references
        if len(owners) > 1:
            raise errors.forbidden("pods", name, f'node "{node}" can only create pods with a single owner '
                                                 "reference set to itself")
        owner = owners[0] if owners else None
        if owner is None or owner.api_version != "v1" or owner.kind != "Node" or owner.name != node:
            raise errors.forbidden("pods", name, f'node "{node}" can only create pods with an owner reference '
                                                 "set to itself")
        if not owner.controller:
            raise errors.forbidden("pods", name, f'node "{node}" can only create pods with a controller owner '
                                                 "reference set to itself")
        if owner.block_owner_deletion:
            raise errors.forbidden("pods", name, f'node "{node}" must not set blockOwnerDeletion on an owner '
                                                 "reference")
        current = self.nodes.get("", node)
        if current is None:
            raise errors.not_found("nodes", node)
        if owner.uid != current.metadata.uid:
            raise errors.forbidden("pods", name, f"node {node} UID mismatch: expected {owner.uid} got "
                                                 f"{current.metadata.uid}")
        if pod.spec.service_account_name:
            raise errors.forbidden("pods", name, f'node "{node}" can not create pods that reference a service '
                                                 "account")
        used = {kind for kind, _ in references(pod)}
        for kind in ("secrets", "configmaps", "persistentvolumeclaims"):
            if kind in used:
                raise errors.forbidden("pods", name, f'node "{node}" can not create pods that reference {kind}')

    def admit_update(self, user, resource: str, subresource: str, new, old) -> None:
        """Refuses storing ``new`` over ``old`` as ``user`` (``new`` as the registry would store it)."""
        node = node_of(user)
        if node is None:
            return
        name = old.metadata.name
        if resource == "pods" and subresource == "status":
            if old.spec.node_name != node:
                raise errors.forbidden("pods", name, f'node "{node}" can only update pod status for pods with '
                                                     "spec.nodeName set to itself")
            if dict(new.metadata.labels) != dict(old.metadata.labels):
                raise errors.forbidden("pods", name, f'node "{node}" cannot update labels through pod status')
        elif resource == "nodes":
            if list(new.spec.taints) != list(old.spec.taints):
                raise errors.forbidden("nodes", name, f'node "{node}" is not allowed to modify taints')
            if list(new.metadata.owner_references) != list(old.metadata.owner_references):
                raise errors.forbidden("nodes", name, f'node "{node}" is not allowed to modify ownerReferences')
            bad = forbidden_labels(_modified_labels(dict(new.metadata.labels), dict(old.metadata.labels)))
            if bad:
                raise errors.forbidden("nodes", name, "is not allowed to modify labels: " + ", ".join(bad))
        elif resource == "persistentvolumeclaims":
            changed = _pvc_changes(new, old)
            if changed:
                raise errors.forbidden("persistentvolumeclaims", name,
                                       f'node "{node}" is not allowed to update fields other than '
                                       f"status.capacity and status.conditions: {', '.join(changed)}")

    def admit_token_request(self, user, namespace: str, account: str, ref: dict) -> None:
        """A node's TokenRequest for ``account`` must be bound (``ref``, its boundObjectRef)
        to a pod scheduled on that node."""
        node = node_of(user)
        if node is None:
            return
        if ref.get("apiVersion") != "v1" or ref.get("kind") != "Pod" or not ref.get("name"):
            raise errors.forbidden("serviceaccounts", account, "node requested token not bound to a pod")
        if not ref.get("uid"):
            raise errors.forbidden("serviceaccounts", account, "node requested token with a pod binding without a uid")
        pod = self.pods.get(namespace, ref["name"])
        if pod is None:
            raise errors.not_found("pods", ref["name"])
        if ref["uid"] != pod.metadata.uid:
            raise errors.forbidden("serviceaccounts", account, f"the UID in the bound object reference ({ref['uid']}) does not match "
                                           "the UID in record. The object might have been deleted and then "
                                           "recreated")
        if pod.spec.node_name != node:
            raise errors.forbidden("serviceaccounts", account, "node requested token bound to a pod scheduled on a different node")


def _pvc_changes(new, old) -> list[str]:
    """The fields of a claim that differ, but for status.capacity and status.conditions."""
    a, b = type(old)(), type(new)()
    a.CopyFrom(old)
    b.CopyFrom(new)
    for m in (a, b):
        m.metadata.resource_version = ""
        del m.metadata.managed_fields[:]
        m.status.capacity.clear()
        del m.status.conditions[:]
    out = []
    for part in ("metadata", "spec", "status"):
        x, y = getattr(a, part), getattr(b, part)
        for field in {f.name for f, _ in x.ListFields()} | {f.name for f, _ in y.ListFields()}:
            if getattr(x, field) != getattr(y, field):
                out.append(f"{part}.{field}")
    return sorted(out)
