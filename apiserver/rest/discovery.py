"""Discovery: what kubectl reads before anything else (``/version``,
``/api``, ``/apis``, ``/api/v1``, ``/apis/<group>/<version>``), in both
forms kubectl 1.32 understands: the legacy lists (APIVersions, APIGroupList,
APIResourceList) and the aggregated one (apidiscovery.k8s.io/v2
APIGroupDiscoveryList, asked for with an Accept parameter; kubectl reads
``/api`` and ``/apis`` once and knows every resource).

Verbs, short names, categories and subresources follow kube-apiserver 1.32
for the kinds served.
"""

from __future__ import annotations

import hashlib
import platform

from apiserver import resources
from apiserver.resources import Resource

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
# kube-apiserver's "all" category (kubectl get all)
ALL_CATEGORY = {"pods", "services", "replicasets", "deployments"}
SCALABLE = {"deployments", "replicasets"}
AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
# the Kubernetes release whose API this one follows (reported by /version)
KUBE_VERSION = (1, 32, 0)


def version() -> dict:
    major, minor, patch = KUBE_VERSION
    return {"major": str(major), "minor": str(minor), "gitVersion": f"v{major}.{minor}.{patch}-apiserver.py",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "",
            "compiler": "python", "platform": f"{platform.system().lower()}/{platform.machine()}"}


def verbs(res: Resource) -> list[str]:
    if res.name == "namespaces":  # no deletecollection for namespaces
        return [v for v in VERBS if v != "deletecollection"]
    return list(VERBS)


def subresources(res: Resource) -> list[tuple[str, str, str, list[str]]]:
    """(name, group, kind, verbs) of each subresource served."""
    subs = []
    if res.has_status:
        subs.append(("status", res.group, res.kind, ["get", "patch", "update"]))
    if res.name in SCALABLE:
        subs.append(("scale", "autoscaling", "Scale", ["get", "patch", "update"]))
    if res.name == "certificatesigningrequests":
        subs.append(("approval", res.group, res.kind, ["get", "patch", "update"]))
    if res.name == "pods":
        # as kube-apiserver lists them (served through the node's kubelet: apiserver/rest/streams.py)
        subs += [("attach", "", "PodAttachOptions", ["create", "get"]),
                 ("binding", "", "Binding", ["create"]),
                 ("eviction", "policy", "Eviction", ["create"]),
                 ("exec", "", "PodExecOptions", ["create", "get"]),
                 ("log", "", "Pod", ["get"]),
                 ("portforward", "", "PodPortForwardOptions", ["create", "get"]),
                 # relayed to the pod (apiserver/rest/podproxy.py), as the services' below
                 ("proxy", "", "PodProxyOptions", ["create", "delete", "get", "patch", "update"])]
    if res.name == "services":
        subs.append(("proxy", "", "ServiceProxyOptions", ["create", "delete", "get", "patch", "update"]))
    if res.name == "nodes":  # relayed to the node's kubelet (apiserver/rest/nodeproxy.py)
        subs.append(("proxy", "", "NodeProxyOptions", ["create", "delete", "get", "patch", "update"]))
    return subs


def _storage_hash(res: Resource) -> str:
    return hashlib.sha256(f"{res.api_version}/{res.kind}".encode()).digest()[:8].hex()


def group_versions() -> dict[str, list[Resource]]:
    """api_version ("v1", "apps/v1") -> its resources, in serving order."""
    out: dict[str, list[Resource]] = {}
    for res in resources.RESOURCES:
        out.setdefault(res.api_version, []).append(res)
    return out


def api_versions() -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}


def _group(name: str) -> dict:
    version = next(gv.rpartition("/")[2] for gv in (*group_versions(), *UNSTORED) if gv.rpartition("/")[0] == name)
    gv = f"{name}/{version}"
    return {"name": name, "versions": [{"groupVersion": gv, "version": version}],
            "preferredVersion": {"groupVersion": gv, "version": version}}


# served but never stored (apiserver/rest/authapi.py): api_version -> (name, kind, namespaced, verbs)
UNSTORED = {"authentication.k8s.io/v1": [("selfsubjectreviews", "SelfSubjectReview", False, ["create"]),
                                         ("tokenreviews", "TokenReview", False, ["create"])],
            "authorization.k8s.io/v1": [("localsubjectaccessreviews", "LocalSubjectAccessReview", True, ["create"]),
                                        ("selfsubjectaccessreviews", "SelfSubjectAccessReview", False, ["create"]),
                                        ("selfsubjectrulesreviews", "SelfSubjectRulesReview", False, ["create"]),
                                        ("subjectaccessreviews", "SubjectAccessReview", False, ["create"])],
            # the resource metrics (apiserver/rest/metricsapi.py), as metrics-server lists them
            "metrics.k8s.io/v1beta1": [("nodes", "NodeMetrics", False, ["get", "list"]),
                                       ("pods", "PodMetrics", True, ["get", "list"])]}
# groups whose server names no singular (metrics-server's GetSingularName is "")
NO_SINGULAR = {"metrics.k8s.io/v1beta1"}


def _singular(api_version: str, kind: str) -> str:
    return "" if api_version in NO_SINGULAR else kind.lower()


def groups() -> list[str]:
    return [gv.rpartition("/")[0] for gv in (*group_versions(), *UNSTORED) if "/" in gv]


def api_group_list() -> dict:
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(g) for g in groups()]}


def api_group(name: str) -> dict | None:
    if name not in groups():
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name)}


def resource_list(api_version: str) -> dict | None:
    served = group_versions().get(api_version)
    if served is None and api_version not in UNSTORED:
        return None
    items = [{"name": name, "singularName": _singular(api_version, kind), "namespaced": namespaced, "kind": kind,
              "verbs": verbs_}
             for name, kind, namespaced, verbs_ in UNSTORED.get(api_version, [])]
    served = served or []
    for res in served:
        entry = {"name": res.name, "singularName": res.singular, "namespaced": res.namespaced,
                 "kind": res.kind, "verbs": verbs(res)}
        if res.short_names:
            entry["shortNames"] = list(res.short_names)
        if res.name in ALL_CATEGORY:
            entry["categories"] = ["all"]
        entry["storageVersionHash"] = _storage_hash(res)
        items.append(entry)
        for sub, group, kind, sub_verbs in subresources(res):
            item = {"name": f"{res.name}/{sub}", "singularName": "", "namespaced": res.namespaced,
                    "kind": kind, "verbs": sub_verbs}
            if group != res.group:
                item["group"], item["version"] = group, "v1"
            items.append(item)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version,
            "resources": items}


def _discovery_resource(res: Resource) -> dict:
    group, version = (res.api_version.split("/") if "/" in res.api_version else ("", res.api_version))
    entry = {"resource": res.name,
             "responseKind": {"group": group, "version": version, "kind": res.kind},
             "scope": "Namespaced" if res.namespaced else "Cluster",
             "singularResource": res.singular, "verbs": verbs(res)}
    if res.short_names:
        entry["shortNames"] = list(res.short_names)
    if res.name in ALL_CATEGORY:
        entry["categories"] = ["all"]
    subs = [{"subresource": sub, "responseKind": {"group": g, "version": "v1", "kind": kind},
             "verbs": sub_verbs} for sub, g, kind, sub_verbs in subresources(res)]
    if subs:
        entry["subresources"] = subs
    return entry


def aggregated(legacy: bool, api_version: str = "apidiscovery.k8s.io/v2") -> dict:
    """The APIGroupDiscoveryList of ``/api`` (legacy=True: the core group)
    or of ``/apis`` (every named group)."""
    items = []
    for gv, served in group_versions().items():
        group, _, version = gv.rpartition("/")
        if legacy != (group == ""):
            continue
        items.append({"metadata": {"name": group, "creationTimestamp": None},
                      "versions": [{"version": version or gv,
                                    "resources": [_discovery_resource(r) for r in served],
                                    "freshness": "Current"}]})
    if not legacy:
        for gv, unstored in UNSTORED.items():
            group, _, version = gv.rpartition("/")
            resources_ = [{"resource": name, "responseKind": {"group": group, "version": version, "kind": kind},
                           "scope": "Namespaced" if namespaced else "Cluster", "singularResource": _singular(gv, kind),
                           "verbs": verbs_} for name, kind, namespaced, verbs_ in unstored]
            items.append({"metadata": {"name": group, "creationTimestamp": None},
                          "versions": [{"version": version, "resources": resources_, "freshness": "Current"}]})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": api_version, "metadata": {},
            "items": items}


def wants_aggregated(accept: str) -> str:
    """The aggregated discovery content type ``accept`` asks for, or ""."""
    for part in accept.split(","):
        params = {k.strip(): v.strip() for k, _, v in
                  (p.partition("=") for p in part.split(";")[1:])}
        if params.get("g") == "apidiscovery.k8s.io" and params.get("as") == "APIGroupDiscoveryList":
            if params.get("v") == "v2":
                return AGGREGATED_V2
            if params.get("v") == "v2beta1":
                return AGGREGATED_V2BETA1
    return ""
