"""The default RBAC policy the apiserver writes when RBAC is on, as
kube-apiserver's bootstrap policy (plugin/pkg/auth/authorizer/rbac/bootstrappolicy)
for the kinds served here: cluster-admin, the aggregated admin/edit/view,
discovery for everyone, and a role per component bound to the identity its
certificate carries (apiserver/auth/pki.COMPONENTS).

Roles and bindings carrying rbac.authorization.kubernetes.io/autoupdate=true
are set back to these rules at every start (upstream reconciles the same
way); set it to "false" to keep your changes.
"""

from __future__ import annotations

import logging

from apiserver import resources
from apiserver.errors import ApiError
from apiserver.pb import rbac_pb2

log = logging.getLogger("apiserver.auth")

RBAC = "rbac.authorization.k8s.io"
AUTOUPDATE = "rbac.authorization.kubernetes.io/autoupdate"
AGG = "rbac.authorization.k8s.io/aggregate-to-"
READ = ["get", "list", "watch"]
WRITE = ["create", "delete", "deletecollection", "patch", "update"]
ALL = ["*"]
CERTS = "certificates.k8s.io"
KUBELET_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
KUBELET_SERVING_SIGNER = "kubernetes.io/kubelet-serving"
KUBE_APISERVER_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client"
# the group `kubeadm token create` puts its bootstrap tokens in (apiserver/auth/bootstrap.py)
BOOTSTRAP_GROUP = "system:bootstrappers:kubeadm:default-node-token"


def rule(verbs, groups, res, names=()) -> rbac_pb2.PolicyRule:
    return rbac_pb2.PolicyRule(verbs=list(verbs), api_groups=list(groups), resources=list(res),
                               resource_names=list(names))


def url_rule(verbs, urls) -> rbac_pb2.PolicyRule:
    return rbac_pb2.PolicyRule(verbs=list(verbs), non_resource_urls=list(urls))


def _role(name: str, rules=(), labels=None, aggregate_to: str = "") -> rbac_pb2.ClusterRole:
    role = rbac_pb2.ClusterRole(rules=list(rules))
    role.metadata.name = name
    role.metadata.labels["kubernetes.io/bootstrapping"] = "rbac-defaults"
    role.metadata.labels.update(labels or {})
    role.metadata.annotations[AUTOUPDATE] = "true"
    if aggregate_to:
        role.aggregation_rule.cluster_role_selectors.add().match_labels[AGG + aggregate_to] = "true"
    return role


def _binding(name: str, role: str, subjects) -> rbac_pb2.ClusterRoleBinding:
    b = rbac_pb2.ClusterRoleBinding(role_ref=rbac_pb2.RoleRef(api_group=RBAC, kind="ClusterRole", name=role))
    b.metadata.name = name
    b.metadata.labels["kubernetes.io/bootstrapping"] = "rbac-defaults"
    b.metadata.annotations[AUTOUPDATE] = "true"
    for kind, subject in subjects:
        b.subjects.add(kind=kind, name=subject, api_group=RBAC)
    return b


CORE_VIEW = ["configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status", "pods",
             "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "services",
             "services/status", "pods/log", "pods/status", "bindings", "events", "limitranges",
             "namespaces/status", "resourcequotas", "resourcequotas/status", "replicationcontrollers/status"]
APPS = ["daemonsets", "deployments", "deployments/scale", "replicasets", "replicasets/scale", "statefulsets",
        "statefulsets/scale"]


def cluster_roles() -> list[rbac_pb2.ClusterRole]:
    """The default ClusterRoles, admin/edit/view with their aggregated rules filled in
    (as upstream's aggregation controller would: `kubectl describe clusterrole view` shows them)."""
    roles = _cluster_roles()
    by_name = {r.metadata.name: r for r in roles}

    def aggregated(role, seen) -> list:
        rules = list(role.rules)
        if role.HasField("aggregation_rule"):
            want = dict(role.aggregation_rule.cluster_role_selectors[0].match_labels)
            for other in roles:
                if other.metadata.name not in seen and all(other.metadata.labels.get(k) == v
                                                           for k, v in want.items()):
                    seen.add(other.metadata.name)
                    rules += [r for r in aggregated(other, seen) if r not in rules]
        return rules

    for name in ("view", "edit", "admin"):
        role = by_name[name]
        filled = aggregated(role, {name})
        del role.rules[:]
        role.rules.extend(filled)
    return roles


def _cluster_roles() -> list[rbac_pb2.ClusterRole]:
    return [
        _role("cluster-admin", [rule(ALL, ["*"], ["*"]), url_rule(ALL, ["*"])]),
        _role("admin", aggregate_to="admin"),
        _role("edit", labels={AGG + "admin": "true"}, aggregate_to="edit"),
        _role("view", labels={AGG + "edit": "true"}, aggregate_to="view"),
        _role("system:aggregate-to-admin", [
            rule(WRITE + READ, [RBAC], ["rolebindings", "roles"]),
            rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews"]),
        ], labels={AGG + "admin": "true"}),
        _role("system:aggregate-to-edit", [
            rule(WRITE, [""], ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy",
                               "pods/eviction"]),
            rule(["create"], [""], ["pods/attach", "pods/exec", "pods/portforward", "pods/eviction",
                                    "serviceaccounts/token"]),
            rule(READ, [""], ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets",
                              "services/proxy"]),
            rule(["impersonate"], [""], ["serviceaccounts"]),
            rule(WRITE, [""], ["configmaps", "endpoints", "persistentvolumeclaims", "replicationcontrollers",
                               "replicationcontrollers/scale", "secrets", "serviceaccounts", "services",
                               "services/proxy"]),
            rule(WRITE, ["apps"], APPS),
            rule(WRITE, ["discovery.k8s.io"], ["endpointslices"]),
            rule(WRITE, ["coordination.k8s.io"], ["leases"]),
        ], labels={AGG + "edit": "true"}),
        _role("system:aggregate-to-view", [
            rule(READ, [""], CORE_VIEW),
            rule(READ, [""], ["namespaces"]),
            rule(READ, ["apps"], APPS),
            rule(READ, ["discovery.k8s.io"], ["endpointslices"]),
            rule(READ, ["coordination.k8s.io"], ["leases"]),
        ], labels={AGG + "view": "true"}),
        # metrics-server's manifests' role (apiserver/rest/metricsapi.py serves its API here)
        _role("system:aggregated-metrics-reader", [rule(READ, ["metrics.k8s.io"], ["pods", "nodes"])],
              labels={AGG + "view": "true", AGG + "edit": "true", AGG + "admin": "true"}),
        _role("system:discovery", [url_rule(["get"], ["/api", "/api/*", "/apis", "/apis/*", "/healthz",
                                                      "/livez", "/openapi", "/openapi/*", "/readyz",
                                                      "/version", "/version/"])]),
        _role("system:public-info-viewer", [url_rule(["get"], ["/healthz", "/livez", "/readyz", "/version",
                                                               "/version/"])]),
        _role("system:basic-user", [rule(["create"], ["authorization.k8s.io"],
                                         ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                                    rule(["create"], ["authentication.k8s.io"], ["selfsubjectreviews"])]),
        # what a server delegating its authentication and authorization to the apiserver asks
        _role("system:auth-delegator", [rule(["create"], ["authentication.k8s.io"], ["tokenreviews"]),
                                        rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews"])]),
        # everything of a kubelet's API (the apiserver's kubelet client: logs, exec, port-forward)
        _role("system:kubelet-api-admin", [
            rule(["get", "list", "watch"], [""], ["nodes"]),
            rule(["proxy"], [""], ["nodes"]),
            rule(ALL, [""], ["nodes/proxy", "nodes/metrics", "nodes/stats", "nodes/log"]),
        ]),
        # the controllers run under one identity here (upstream: a ServiceAccount each, with
        # --use-service-account-credentials): read everything (informers, the garbage
        # collector), write what the controllers own, delete and patch owners' dependents
        _role("system:kube-controller-manager", [
            rule(READ, ["*"], ["*"]),
            rule(["delete", "patch", "update"], ["*"], ["*"]),
            rule(ALL, [""], ["pods", "pods/status", "endpoints", "events", "serviceaccounts", "configmaps", "nodes",
                             "nodes/status", "namespaces", "namespaces/status", "namespaces/finalize"]),
            rule(ALL, ["apps"], ["replicasets", "replicasets/status", "deployments", "deployments/status"]),
            rule(ALL, ["discovery.k8s.io"], ["endpointslices"]),
            rule(ALL, ["coordination.k8s.io"], ["leases"]),
            rule(ALL, ["events.k8s.io"], ["events"]),
            # the PersistentVolume binder, protection and the directory provisioner
            rule(ALL, [""], ["persistentvolumes", "persistentvolumes/status", "persistentvolumeclaims",
                             "persistentvolumeclaims/status"]),
            rule(ALL, ["storage.k8s.io"], ["storageclasses"]),
            # csrapproving, csrsigning, csrcleaner (controllers/certificates.py), as upstream's
            # system:controller:certificate-controller
            rule(["create"], ["authorization.k8s.io"], ["subjectaccessreviews"]),
            rule(["approve"], [CERTS], ["signers"], [KUBELET_CLIENT_SIGNER]),
            rule(["sign"], [CERTS], ["signers"], [KUBE_APISERVER_CLIENT_SIGNER, KUBELET_CLIENT_SIGNER,
                                                  KUBELET_SERVING_SIGNER]),
        ]),
        _role("system:kube-scheduler", [
            rule(READ, [""], ["nodes", "pods", "namespaces", "services", "persistentvolumeclaims",
                              "persistentvolumes", "replicationcontrollers"]),
            rule(READ, ["apps"], ["replicasets", "statefulsets"]),
            rule(READ, ["storage.k8s.io"], ["storageclasses", "csinodes", "csidrivers", "csistoragecapacities"]),
            rule(["patch", "update"], [""], ["pods", "pods/status"]),
            rule(["patch", "update"], [""], ["persistentvolumeclaims", "persistentvolumes"]),
            rule(["create"], [""], ["pods/binding", "bindings"]),
            rule(["delete"], [""], ["pods"]),
            rule(["create", "patch", "update"], ["", "events.k8s.io"], ["events"]),
            rule(["create", "get", "list", "watch", "update"], ["coordination.k8s.io"], ["leases"]),
        ]),
        # upstream binds system:node to nobody and lets the Node authorizer decide all of a
        # kubelet's requests; here the group system:nodes gets this role, and the Node
        # authorizer (apiserver/auth/node.py) only the Secrets, ConfigMaps and claims, which
        # this role does not grant
        _role("system:node", [
            rule(["create", "get", "list", "watch", "patch", "update", "delete"], [""], ["nodes"]),
            rule(["patch", "update"], [""], ["nodes/status"]),
            rule(["get", "list", "watch", "create", "delete"], [""], ["pods"]),
            rule(["patch", "update"], [""], ["pods/status"]),
            rule(["create"], [""], ["pods/eviction", "serviceaccounts/token"]),
            rule(["create", "patch", "update"], ["", "events.k8s.io"], ["events"]),
            rule(["get", "list", "watch"], [""], ["services", "endpoints", "persistentvolumes"]),
            # the kubelet's own API checks who calls it (--authentication-token-webhook,
            # --authorization-mode=Webhook): these creates change nothing
            rule(["create"], ["authentication.k8s.io"], ["tokenreviews"]),
            rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews", "subjectaccessreviews"]),
            rule(["get", "list", "watch"], ["discovery.k8s.io"], ["endpointslices"]),
            rule(["create", "delete", "get", "patch", "update", "list", "watch"], ["coordination.k8s.io"],
                 ["leases"]),
            # a kubelet renews its client certificate with a CSR of its own
            rule(["create", "get", "list", "watch"], [CERTS], ["certificatesigningrequests"]),
        ]),
        # TLS bootstrap (kubelet --bootstrap-kubeconfig): a bootstrap token may ask for a
        # certificate; the two below let csrapproving approve a node client certificate asked
        # for by a bootstrapper (nodeclient) or by a node renewing its own (selfnodeclient)
        _role("system:node-bootstrapper", [
            rule(["create", "get", "list", "watch"], [CERTS], ["certificatesigningrequests"]),
        ]),
        _role("system:certificates.k8s.io:certificatesigningrequests:nodeclient", [
            rule(["create"], [CERTS], ["certificatesigningrequests/nodeclient"]),
        ]),
        _role("system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", [
            rule(["create"], [CERTS], ["certificatesigningrequests/selfnodeclient"]),
        ]),
        _role("system:node-proxier", [
            rule(["list", "watch"], [""], ["endpoints", "services"]),
            rule(["get", "list", "watch"], [""], ["nodes"]),
            rule(["list", "watch"], ["discovery.k8s.io"], ["endpointslices"]),
            rule(["create", "patch", "update"], ["", "events.k8s.io"], ["events"]),
        ]),
        # the cloud-controller-manager (cloud/ccm): Node addresses, providerIDs and deletion,
        # LoadBalancer Services' status, pod routes (the Node's NetworkUnavailable condition)
        _role("system:cloud-controller-manager", [
            rule(["get", "list", "watch", "update", "patch", "delete"], [""], ["nodes"]),
            rule(["patch", "update"], [""], ["nodes/status"]),
            rule(["get", "list", "watch", "update", "patch"], [""], ["services"]),
            rule(["patch", "update"], [""], ["services/status"]),
            rule(["list", "watch"], ["discovery.k8s.io"], ["endpointslices"]),
            rule(["create", "patch", "update"], ["", "events.k8s.io"], ["events"]),
            rule(["create", "get", "list", "watch", "update"], ["coordination.k8s.io"], ["leases"]),
        ]),
        # the cluster-autoscaler (cloud/autoscaler.py): reads what decides a node group's size,
        # drains and deletes the nodes it removes
        _role("system:cluster-autoscaler", [
            rule(READ, [""], ["nodes", "pods", "services", "namespaces", "replicationcontrollers",
                              "persistentvolumeclaims", "persistentvolumes"]),
            rule(READ, ["apps"], ["replicasets", "deployments", "statefulsets", "daemonsets"]),
            rule(READ, ["storage.k8s.io"], ["storageclasses", "csinodes"]),
            rule(READ, ["policy"], ["poddisruptionbudgets"]),
            rule(["update", "patch", "delete"], [""], ["nodes"]),
            rule(["delete"], [""], ["pods"]),
            rule(["create"], [""], ["pods/eviction"]),
            rule(["create", "patch", "update"], ["", "events.k8s.io"], ["events"]),
            rule(["create", "get", "list", "watch", "update"], ["coordination.k8s.io"], ["leases"]),
        ]),
        # kubelets run with the shared cloud-nodes certificate (one identity for every instance,
        # so the Node authorizer cannot tell them apart): system:node's rules plus reading what
        # pods use, in every namespace. make run's instances bootstrap certificates of their own
        # (node.kubelet.bootstrap) and do without it
        _role("system:cloud-nodes", [
            rule(["get"], [""], ["secrets", "configmaps", "persistentvolumeclaims"]),
        ]),
        _role("system:coredns", [
            rule(["list", "watch"], [""], ["endpoints", "services", "pods", "namespaces"]),
            rule(["list", "watch"], ["discovery.k8s.io"], ["endpointslices"]),
        ]),
    ]


def cluster_role_bindings() -> list[rbac_pb2.ClusterRoleBinding]:
    return [
        _binding("cluster-admin", "cluster-admin", [("Group", "system:masters")]),
        _binding("system:discovery", "system:discovery", [("Group", "system:authenticated")]),
        _binding("system:public-info-viewer", "system:public-info-viewer",
                 [("Group", "system:authenticated"), ("Group", "system:unauthenticated")]),
        _binding("system:basic-user", "system:basic-user", [("Group", "system:authenticated")]),
        _binding("system:kube-controller-manager", "system:kube-controller-manager",
                 [("User", "system:kube-controller-manager")]),
        _binding("system:kube-scheduler", "system:kube-scheduler", [("User", "system:kube-scheduler")]),
        _binding("system:node", "system:node", [("Group", "system:nodes")]),
        _binding("system:node-proxier", "system:node-proxier", [("User", "system:kube-proxy")]),
        _binding("system:coredns", "system:coredns", [("User", "system:coredns")]),
        _binding("system:cloud-controller-manager", "system:cloud-controller-manager",
                 [("User", "system:cloud-controller-manager")]),
        _binding("system:cluster-autoscaler", "system:cluster-autoscaler", [("User", "system:cluster-autoscaler")]),
        _binding("system:cloud-nodes", "system:cloud-nodes", [("User", "system:cloud-nodes")]),
        # the apiserver's kubelet client certificate (pki.COMPONENTS): logs, exec, port-forward
        _binding("system:kube-apiserver-kubelet-client", "system:kubelet-api-admin",
                 [("User", "kube-apiserver-kubelet-client")]),
        # as `kubeadm init` binds them for the tokens `kubeadm token create` makes
        _binding("kubeadm:kubelet-bootstrap", "system:node-bootstrapper", [("Group", BOOTSTRAP_GROUP)]),
        _binding("kubeadm:node-autoapprove-bootstrap",
                 "system:certificates.k8s.io:certificatesigningrequests:nodeclient", [("Group", BOOTSTRAP_GROUP)]),
        _binding("kubeadm:node-autoapprove-certificate-rotation",
                 "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", [("Group", "system:nodes")]),
    ]


def roles() -> list[rbac_pb2.Role]:
    """Roles in kube-system: what a component may do there alone. The cluster DNS
    server registers its own Service and Endpoints (kube-system/kube-dns)."""
    role = rbac_pb2.Role(rules=[rule(["get", "create", "update", "patch"], [""], ["services", "endpoints"])])
    role.metadata.name, role.metadata.namespace = "system:coredns-registration", "kube-system"
    role.metadata.labels["kubernetes.io/bootstrapping"] = "rbac-defaults"
    role.metadata.annotations[AUTOUPDATE] = "true"
    return [role]


def role_bindings() -> list[rbac_pb2.RoleBinding]:
    b = rbac_pb2.RoleBinding(role_ref=rbac_pb2.RoleRef(api_group=RBAC, kind="Role",
                                                       name="system:coredns-registration"))
    b.metadata.name, b.metadata.namespace = "system:coredns-registration", "kube-system"
    b.metadata.labels["kubernetes.io/bootstrapping"] = "rbac-defaults"
    b.metadata.annotations[AUTOUPDATE] = "true"
    b.subjects.add(kind="User", name="system:coredns", api_group=RBAC)
    return [b]


async def ensure_default_policy(registry) -> None:
    """Creates the default roles and bindings that are missing, and sets back
    those marked autoupdate=true that differ."""
    pairs = [(resources.BY_NAME["clusterroles"], r) for r in cluster_roles()] + \
            [(resources.BY_NAME["clusterrolebindings"], b) for b in cluster_role_bindings()] + \
            [(resources.BY_NAME["roles"], r) for r in roles()] + \
            [(resources.BY_NAME["rolebindings"], b) for b in role_bindings()]
    for res, want in pairs:
        try:
            await registry.create(res, want)
            continue
        except ApiError as e:
            if e.reason != "AlreadyExists":
                raise
        have = await registry.get(res, want.metadata.namespace, want.metadata.name)
        if have.metadata.annotations.get(AUTOUPDATE) != "true":
            continue
        same = (list(have.rules) == list(want.rules)
                and (res.name == "roles" or have.aggregation_rule == want.aggregation_rule)) \
            if res.name in ("clusterroles", "roles") else \
            (list(have.subjects) == list(want.subjects) and have.role_ref == want.role_ref)
        if not same:
            want.metadata.resource_version = have.metadata.resource_version
            want.metadata.uid = have.metadata.uid
            log.info("setting %s %s back to the default policy", res.kind, want.metadata.name)
            await registry.update(res, want)
