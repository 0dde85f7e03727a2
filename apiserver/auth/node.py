"""The Node authorizer (--authorization-mode=Node): a kubelet, authenticated
as system:node:<name> in group system:nodes, may get a Secret, ConfigMap or
PersistentVolumeClaim (and update a claim's status) only when a pod bound to its
node uses it (a volume, an env or envFrom source, an image pull secret), and may
not list or watch them at all. Everything else it asks is left to RBAC (the
system:node role, which grants none of these three) and to NodeRestriction
(noderestriction.py). Upstream keeps a graph of pods, nodes and what they use;
here the apiserver's pod cache is searched, in the one namespace."""

from __future__ import annotations

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
        if not a.name:
            return False
        # a claim's status (its capacity once resized) is the kubelet's to write, as its Secrets are to read
        claim_status = a.resource == "persistentvolumeclaims" and a.subresource == "status"
        if not (claim_status and a.verb in ("update", "patch")) and (a.verb != "get" or a.subresource):
            return False
        pods, _ = self.pods.list(a.namespace)
        want = (a.resource, a.name)
        return any(p.spec.node_name == node and want in references(p) for p in pods)

