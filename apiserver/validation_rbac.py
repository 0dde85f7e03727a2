"""Validation of ServiceAccounts and the RBAC kinds, as pkg/apis/rbac/validation
(rules need verbs; a Role's rules no nonResourceURLs; a binding's roleRef names
a Role or ClusterRole and never changes; subjects are Users, Groups or
ServiceAccounts) and pkg/apis/core/validation for ServiceAccounts."""

from __future__ import annotations

from apiserver.syntax import dns1123_subdomain_errors
from apiserver.validation_common import FieldErrors

RBAC_GROUP = "rbac.authorization.k8s.io"


def path_segment_errors(name: str) -> list[str]:
    """RBAC names ("system:kube-scheduler") are path segments, not DNS names."""
    if name in (".", ".."):
        return [f'may not be \'{name}\'']
    for bad in ("/", "%"):
        if bad in name:
            return [f"may not contain '{bad}'"]
    return []


def _rules(errs: FieldErrors, rules, *, cluster: bool) -> None:
    for i, rule in enumerate(rules):
        path = f"rules[{i}]"
        if not rule.verbs:
            errs.required(f"{path}.verbs", "verbs must contain at least one value")
        if rule.non_resource_urls and not cluster:
            errs.invalid(f"{path}.nonResourceURLs", list(rule.non_resource_urls),
                         "namespaced rules cannot apply to non-resource URLs")
        if rule.non_resource_urls and (rule.api_groups or rule.resources or rule.resource_names):
            errs.invalid(f"{path}.nonResourceURLs", list(rule.non_resource_urls),
                         "rules cannot apply to both regular resources and non-resource URLs")
        if not rule.non_resource_urls:
            if not rule.api_groups:
                errs.required(f"{path}.apiGroups", "resource rules must supply at least one api group")
            if not rule.resources:
                errs.required(f"{path}.resources", "resource rules must supply at least one resource")


def validate_role(errs: FieldErrors, role) -> None:
    _rules(errs, role.rules, cluster=False)


def validate_cluster_role(errs: FieldErrors, role) -> None:
    _rules(errs, role.rules, cluster=True)


def _binding(errs: FieldErrors, binding, *, cluster: bool) -> None:
    ref = binding.role_ref
    if ref.api_group != RBAC_GROUP:
        errs.not_supported("roleRef.apiGroup", ref.api_group, [RBAC_GROUP])
    kinds = ["ClusterRole"] if cluster else ["Role", "ClusterRole"]
    if ref.kind not in kinds:
        errs.not_supported("roleRef.kind", ref.kind, kinds)
    if not ref.name:
        errs.required("roleRef.name")
    else:
        errs.each("roleRef.name", ref.name, path_segment_errors(ref.name))
    for i, s in enumerate(binding.subjects):
        path = f"subjects[{i}]"
        if not s.name:
            errs.required(f"{path}.name")
        if s.kind == "ServiceAccount":
            if s.api_group:
                errs.not_supported(f"{path}.apiGroup", s.api_group, [""])
            if cluster and not s.namespace:
                errs.required(f"{path}.namespace")
            elif s.namespace:
                errs.each(f"{path}.namespace", s.namespace, dns1123_subdomain_errors(s.namespace))
        elif s.kind in ("User", "Group"):
            if s.api_group != RBAC_GROUP:
                errs.not_supported(f"{path}.apiGroup", s.api_group, [RBAC_GROUP])
        else:
            errs.not_supported(f"{path}.kind", s.kind, ["ServiceAccount", "User", "Group"])


def validate_role_binding(errs: FieldErrors, binding) -> None:
    _binding(errs, binding, cluster=False)


def validate_cluster_role_binding(errs: FieldErrors, binding) -> None:
    _binding(errs, binding, cluster=True)


def validate_binding_update(errs: FieldErrors, new, old) -> None:
    if new.role_ref != old.role_ref:
        errs.invalid("roleRef", new.role_ref.name, "cannot change roleRef")


def validate_service_account(errs: FieldErrors, sa) -> None:
    for i, ref in enumerate(sa.image_pull_secrets):
        if not ref.name:
            errs.required(f"imagePullSecrets[{i}].name")
