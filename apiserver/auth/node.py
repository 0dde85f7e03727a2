"""The Node authorizer (--authorization-mode=Node): a kubelet, authenticated
as system:node:<name> in group system:nodes, may get a Secret, ConfigMap or
PersistentVolumeClaim only when a pod bound to its node uses it (a volume, an
env or envFrom source, an image pull secret), and may not list or watch them
at all. Everything else it asks is left to RBAC (the system:node role, which
grants none of these three). Upstream keeps a graph of pods, nodes and what
they use; here the apiserver's pod cache is searched, in the one namespace."""

from __future__ import annotations

from apiserver import errors
from apiserver.auth.authn import User
from apiserver.auth.rbac import Attributes

NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
GUARDED = {"secrets", "configmaps", "persistentvolumeclaims"}
NODE_LEASES = "kube-node-lease"


def node_of(user: User) -> str | None:
    """The node a kubelet's identity names, or None when ``user`` is no node."""
    if NODES_GROUP in user.groups and user.name.startswith(NODE_PREFIX):
        return user.name[len(NODE_PREFIX):] or None
    return None


def references(pod) -> set[tuple[str, str]]:
    """(resource, name) of every Secret, ConfigMap and claim ``pod`` uses."""
    out: set[tuple[str, str]] = set()
    spec = pod.spec
    for v in spec.volumes:
        if v.HasField("secret") and v.secret.secret_name:
            out.add(("secrets", v.secret.secret_name))
        if v.HasField("config_map") and v.config_map.name:
            out.add(("configmaps", v.config_map.name))
        if v.HasField("persistent_volume_claim") and v.persistent_volume_claim.claim_name:
            out.add(("persistentvolumeclaims", v.persistent_volume_claim.claim_name))
        for projection in (v.projected.sources if v.HasField("projected") else ()):
            if projection.HasField("secret") and projection.secret.name:
                out.add(("secrets", projection.secret.name))
            if projection.HasField("config_map") and projection.config_map.name:
                out.add(("configmaps", projection.config_map.name))
    for c in (*spec.init_containers, *spec.containers):
        for env in c.env:
            src = env.value_from
            if src.HasField("secret_key_ref") and src.secret_key_ref.name:
                out.add(("secrets", src.secret_key_ref.name))
            if src.HasField("config_map_key_ref") and src.config_map_key_ref.name:
                out.add(("configmaps", src.config_map_key_ref.name))
        for env_from in c.env_from:
            if env_from.HasField("secret_ref") and env_from.secret_ref.name:
                out.add(("secrets", env_from.secret_ref.name))
            if env_from.HasField("config_map_ref") and env_from.config_map_ref.name:
                out.add(("configmaps", env_from.config_map_ref.name))
    for ref in getattr(spec, "image_pull_secrets", ()):
        if ref.name:
            out.add(("secrets", ref.name))
    return out


class NodeAuthorizer:
    def __init__(self, caches: dict) -> None:
        self.pods = caches["pods"]

    def allowed(self, a: Attributes) -> bool:
        node = node_of(a.user)
        if node is None or not a.resource_request or a.api_group or a.resource not in GUARDED:
            return False
        if a.verb != "get" or not a.name or a.subresource:
            return False
        pods, _ = self.pods.list(a.namespace)
        want = (a.resource, a.name)
        return any(p.spec.node_name == node and want in references(p) for p in pods)


class NodeRestriction:
    """What kube-apiserver's NodeRestriction admission plugin refuses a kubelet,
    for what the request's attributes (and the pod cache) tell: changing another
    node's Node or Lease, or a pod not bound to its node. Applied after
    authorization, to node identities only; the simulated kubelets, many nodes
    under one identity, run as a name outside system:node:* (pki.COMPONENTS)."""

    WRITES = {"update", "patch", "delete"}

    def __init__(self, caches: dict) -> None:
        self.pods = caches["pods"]

    def check(self, a: Attributes) -> None:
        node = node_of(a.user)
        if node is None or not a.resource_request or a.verb not in self.WRITES or not a.name:
            return
        if a.resource == "nodes" and not a.api_group and a.name != node:
            raise errors.forbidden("nodes", a.name, f'node "{node}" is not allowed to modify node "{a.name}"')
        if a.resource == "leases" and a.api_group == "coordination.k8s.io" and a.namespace == NODE_LEASES \
                and a.name != node:
            raise errors.forbidden("leases.coordination.k8s.io", a.name,
                                   "can only access node lease with the same name as the requesting node")
        if a.resource == "pods" and not a.api_group:
            pod = self.pods.get(a.namespace, a.name)
            if pod is not None and pod.spec.node_name != node:
                what = "update pod status" if a.subresource == "status" else f"{a.verb} pods"
                raise errors.forbidden("pods", a.name,
                                       f"node \"{node}\" can only {what} for pods with spec.nodeName set to itself")
