"""Which webhooks a request goes to: upstream's rules (operations, apiGroups,
apiVersions, resources with "*" and "res/sub" forms, scope), matchPolicy,
namespaceSelector and objectSelector (k8s.io/apiserver's webhook predicates).

A configuration is compiled once per content (its selectors parsed) and shared
by every request until the configuration changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apiserver.resources import Resource
from apiserver.selectors import EVERYTHING, LabelSelector, LabelSelectorError, label_selector_from_proto

CREATE, UPDATE, DELETE, CONNECT = "CREATE", "UPDATE", "DELETE", "CONNECT"

# group-resources that upstream serves under another group too, for matchPolicy Equivalent
# (a rule naming the other group matches a request to the one served here)
EQUIVALENT_GROUPS = {("apps", "deployments"): {"extensions"}, ("apps", "replicasets"): {"extensions"},
                     ("", "events"): {"events.k8s.io"}}


@dataclass
class Request:
    """One request's admission attributes (upstream's admission.Attributes)."""
    operation: str  # CREATE, UPDATE, DELETE
    res: Resource
    subresource: str  # "", "status", "approval"
    namespace: str
    name: str
    obj: object  # the typed message written (None for DELETE)
    old: object  # the stored one (None for CREATE)
    dry_run: bool = False
    options: dict = field(default_factory=dict)  # CreateOptions/UpdateOptions/DeleteOptions fields

    @property
    def version(self) -> str:
        return self.res.api_version.rpartition("/")[2]


def _selector(sel) -> LabelSelector:
    try:
        return label_selector_from_proto(sel)
    except LabelSelectorError:
        # validation refuses these; one stored some other way matches nothing
        return _NOTHING


class _Nothing(LabelSelector):
    @property
    def empty(self) -> bool:
        return False

    def matches(self, labels) -> bool:
        return False


_NOTHING = _Nothing()


@dataclass(frozen=True)
class Hook:
    """One webhook of a configuration, ready to match."""
    config: str  # the configuration's name
    spec: object  # the ValidatingWebhook / MutatingWebhook message (read-only)
    mutating: bool
    namespace_selector: LabelSelector
    object_selector: LabelSelector

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def fails_closed(self) -> bool:
        return self.spec.failure_policy != "Ignore"

    @property
    def timeout(self) -> float:
        return float(self.spec.timeout_seconds if self.spec.HasField("timeout_seconds") else 10)


def compile_hooks(config, *, mutating: bool) -> tuple[Hook, ...]:
    return tuple(Hook(config.metadata.name, hook, mutating,
                      _selector(hook.namespace_selector) if hook.HasField("namespace_selector") else EVERYTHING,
                      _selector(hook.object_selector) if hook.HasField("object_selector") else EVERYTHING)
                 for hook in config.webhooks)


def _resource_matches(patterns, res: str, sub: str) -> bool:
    for pattern in patterns:
        p_res, _, p_sub = pattern.partition("/")
        if p_res in ("*", res) and p_sub in ("*", sub):
            return True
    return False


def _scope_matches(scope: str, req: Request) -> bool:
    if scope in ("", "*"):
        return True
    namespaced = req.res.namespaced  # a Namespace is cluster-scoped
    return namespaced if scope == "Namespaced" else not namespaced


def rule_matches(rwo, req: Request, *, equivalent: bool) -> bool:
    ops = rwo.operations
    if "*" not in ops and req.operation not in ops:
        return False
    rule = rwo.rule
    if not _scope_matches(rule.scope, req):
        return False
    if not _resource_matches(rule.resources, req.res.name, req.subresource):
        return False
    group = req.res.group
    groups = rule.api_groups
    if "*" not in groups and group not in groups:
        if not equivalent or not EQUIVALENT_GROUPS.get((group, req.res.name), set()) & set(groups):
            return False
        return True  # another group's version of it: any of its versions is equivalent
    versions = rule.api_versions
    # one version is served per resource: under Equivalent every version of it names it
    return equivalent or "*" in versions or req.version in versions


def _labels(msg) -> dict | None:
    return None if msg is None else msg.metadata.labels


def selectors_match(hook: Hook, req: Request, namespace_labels) -> bool:
    """objectSelector against the new or the old object (either may match; a missing one
    never does), then namespaceSelector against the object's namespace, or the Namespace
    itself; other cluster-scoped objects are never skipped by it. ``namespace_labels``:
    a function of a namespace's name giving its labels."""
    if not hook.object_selector.empty:
        if not any(labels is not None and hook.object_selector.matches(labels)
                   for labels in (_labels(req.obj), _labels(req.old))):
            return False
    if hook.namespace_selector.empty:
        return True
    if req.res.name == "namespaces":
        labels = _labels(req.obj if req.obj is not None else req.old) or {}
    elif not req.res.namespaced:
        return True
    else:
        labels = namespace_labels(req.namespace)
    return hook.namespace_selector.matches(labels)


def matches(hook: Hook, req: Request) -> bool:
    """The rules only (selectors need the namespace: ``selectors_match``)."""
    equivalent = hook.spec.match_policy != "Exact"
    return any(rule_matches(rwo, req, equivalent=equivalent) for rwo in hook.spec.rules)
