"""Authorization: what a request asks (``Attributes``) and whether RBAC's
roles allow it, as kube-apiserver's RBAC authorizer decides.

A request is allowed when some ClusterRoleBinding whose subjects include the
user (by name, a group, or as a ServiceAccount) points at a ClusterRole with a
rule that matches it, or, in a namespace, some RoleBinding there does (to a
Role there or a ClusterRole). A ClusterRole with an aggregationRule holds, as
well as its own rules, those of every ClusterRole its selectors match (how
admin, edit and view grow; upstream a controller copies them in, here they
are also read live). Roles and bindings come from the apiserver's watch
caches: a change applies as soon as the cache has it.
"""

from __future__ import annotations

from dataclasses import dataclass

from apiserver import errors, resources
from apiserver.auth.authn import MASTERS, SA_PREFIX, User
from apiserver.errors import ApiError
from apiserver.selectors import LabelSelectorError, label_selector_from_proto

RBAC_GROUP = "rbac.authorization.k8s.io"


@dataclass(frozen=True)
class Attributes:
    user: User
    verb: str
    namespace: str = ""
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    path: str = ""
    resource_request: bool = True


def forbidden_message(a: Attributes) -> str:
    """kube-apiserver's words (endpoints/handlers/responsewriters.forbiddenMessage)."""
    if not a.resource_request:
        return f'User "{a.user.name}" cannot {a.verb} path "{a.path}"'
    res = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    where = f'in the namespace "{a.namespace}"' if a.namespace else "at the cluster scope"
    return f'User "{a.user.name}" cannot {a.verb} resource "{res}" in API group "{a.api_group}" {where}'


def forbidden(a: Attributes, reason: str = "") -> ApiError:
    msg = forbidden_message(a) + (f": {reason}" if reason else "")
    if not a.resource_request:
        return ApiError("Forbidden", f"forbidden: {msg}")
    qualified = f"{a.resource}.{a.api_group}" if a.api_group else a.resource
    return errors.forbidden(qualified, a.name, msg)


# ---- rule matching (pkg/apis/rbac/v1/evaluation_helpers) ----

def _verb(rule, verb: str) -> bool:
    return "*" in rule.verbs or verb in rule.verbs


def _group(rule, group: str) -> bool:
    return "*" in rule.api_groups or group in rule.api_groups


def _resource(rule, resource: str, sub: str) -> bool:
    combined = f"{resource}/{sub}" if sub else resource
    for r in rule.resources:
        if r == "*" or r == combined:
            return True
        if sub and r == f"*/{sub}":
            return True
    return False


def _name(rule, name: str) -> bool:
    return not rule.resource_names or name in rule.resource_names


def _url(rule, path: str) -> bool:
    for u in rule.non_resource_urls:
        if u == "*" or u == path or (u.endswith("*") and path.startswith(u[:-1])):
            return True
    return False


def rule_allows(rule, a: Attributes) -> bool:
    if a.resource_request:
        return (_verb(rule, a.verb) and _group(rule, a.api_group) and _resource(rule, a.resource, a.subresource)
                and _name(rule, a.name))
    return _verb(rule, a.verb) and _url(rule, a.path)


def subject_matches(subject, user: User, binding_namespace: str) -> bool:
    if subject.kind == "User":
        return subject.name == user.name
    if subject.kind == "Group":
        return subject.name in user.groups
    if subject.kind == "ServiceAccount":
        ns = subject.namespace or binding_namespace
        return user.name == f"{SA_PREFIX}{ns}:{subject.name}"
    return False


class RBACAuthorizer:
    """``caches``: resource name -> the apiserver's WatchCache (roles, clusterroles, rolebindings,
    clusterrolebindings)."""

    def __init__(self, caches: dict) -> None:
        self.roles = caches["roles"]
        self.cluster_roles = caches["clusterroles"]
        self.bindings = caches["rolebindings"]
        self.cluster_bindings = caches["clusterrolebindings"]

    def cluster_role_rules(self, name: str, _seen: set | None = None) -> list:
        """The role's rules and, through its aggregationRule, those of every
        ClusterRole its selectors match, and theirs in turn (edit takes view's)."""
        seen = _seen if _seen is not None else set()
        if name in seen:
            return []
        seen.add(name)
        role = self.cluster_roles.get("", name)
        if role is None:
            return []
        rules = list(role.rules)
        if role.HasField("aggregation_rule"):
            selectors = []
            for s in role.aggregation_rule.cluster_role_selectors:
                try:
                    selectors.append(label_selector_from_proto(s))
                except LabelSelectorError:
                    continue
            if selectors:
                items, _ = self.cluster_roles.list()
                for other in items:
                    if any(sel.matches(other.metadata.labels) for sel in selectors):
                        rules.extend(self.cluster_role_rules(other.metadata.name, seen))
        return rules

    def _ref_rules(self, ref, namespace: str) -> list:
        if ref.kind == "ClusterRole":
            return self.cluster_role_rules(ref.name)
        if ref.kind == "Role" and namespace:
            role = self.roles.get(namespace, ref.name)
            return list(role.rules) if role is not None else []
        return []

    def grants(self, user: User, namespace: str):
        """(what grants it, in upstream's words; its rules) for every binding of
        ``user`` at the cluster scope and in ``namespace``."""
        items, _ = self.cluster_bindings.list()
        for b in items:
            for s in b.subjects:
                if subject_matches(s, user, ""):
                    yield (f'ClusterRoleBinding "{b.metadata.name}" of {b.role_ref.kind} "{b.role_ref.name}" '
                           f"to {describe_subject(s, '')}"), self._ref_rules(b.role_ref, "")
                    break
        if namespace:
            items, _ = self.bindings.list(namespace)
            for b in items:
                for s in b.subjects:
                    if subject_matches(s, user, namespace):
                        yield (f'RoleBinding "{b.metadata.name}/{namespace}" of {b.role_ref.kind} '
                               f'"{b.role_ref.name}" to {describe_subject(s, namespace)}'), \
                            self._ref_rules(b.role_ref, namespace)
                        break

    def rules_for(self, user: User, namespace: str) -> list:
        """Every rule granted to ``user`` at the cluster scope and in ``namespace``."""
        return [r for _, rules in self.grants(user, namespace) for r in rules]

    def decide(self, a: Attributes) -> tuple[bool, str]:
        """(allowed, why): the first binding whose role allows ``a``, as upstream's
        SubjectAccessReview reason ("RBAC: allowed by ..."); no reason for a refusal
        or for system:masters (upstream's privileged-group authorizer answers those)."""
        if MASTERS in a.user.groups:
            return True, ""
        for source, rules in self.grants(a.user, a.namespace):
            if any(rule_allows(rule, a) for rule in rules):
                return True, f"RBAC: allowed by {source}"
        return False, ""

    def allowed(self, a: Attributes) -> bool:
        return self.decide(a)[0]


def describe_subject(s, binding_namespace: str) -> str:
    if s.kind == "ServiceAccount":
        return f'ServiceAccount "{s.name}/{s.namespace or binding_namespace}"'
    return f'{s.kind} "{s.name}"'


def decide(authorizer, a: Attributes) -> tuple[bool, str]:
    """(allowed, reason) of ``authorizer`` (one, or a Union tried in order)."""
    for z in getattr(authorizer, "authorizers", [authorizer]):
        if hasattr(z, "decide"):
            ok, reason = z.decide(a)
        else:
            ok, reason = z.allowed(a), ""
        if ok:
            return True, reason
    return False, ""


class AlwaysAllow:
    def allowed(self, a: Attributes) -> bool:
        return True


class Union:
    """--authorization-mode=A,B: the first that allows wins."""

    def __init__(self, authorizers: list) -> None:
        self.authorizers = authorizers

    def allowed(self, a: Attributes) -> bool:
        return any(z.allowed(a) for z in self.authorizers)


def resource_group(name: str) -> str:
    res = resources.BY_NAME.get(name)
    return res.group if res is not None else ""
