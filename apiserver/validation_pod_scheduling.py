"""A pod's constraints on other pods, as pkg/apis/core/validation checks them: inter-pod
affinity and anti-affinity terms and topology spread constraints. An affinity term's
matchLabelKeys were merged into its labelSelector on create (``defaults``), as upstream's pod
strategy does before validating."""

from __future__ import annotations

from apiserver.selectors import LabelSelectorError, label_selector_from_proto
from apiserver.syntax import dns1123_label_errors, qualified_name_errors
from apiserver.validation_common import FieldErrors

NOT_POSITIVE_MESSAGE = "must be greater than zero"
WHEN_UNSATISFIABLE = ("DoNotSchedule", "ScheduleAnyway")
NODE_INCLUSION_POLICIES = ("Honor", "Ignore")


def validate_pod_scheduling_constraints(errs: FieldErrors, path: str, spec) -> None:
    """spec.affinity.podAffinity, .podAntiAffinity and spec.topologySpreadConstraints."""
    affinity = spec.affinity
    for field, json_name in (("pod_affinity", "podAffinity"), ("pod_anti_affinity", "podAntiAffinity")):
        if affinity.HasField(field):
            _validate_pod_affinity(errs, f"{path}.affinity.{json_name}", getattr(affinity, field))
    _validate_topology_spread(errs, f"{path}.topologySpreadConstraints", spec.topology_spread_constraints)


def _validate_pod_affinity(errs: FieldErrors, path: str, affinity) -> None:
    p = f"{path}.requiredDuringSchedulingIgnoredDuringExecution"
    for i, term in enumerate(affinity.required_during_scheduling_ignored_during_execution):
        _validate_term(errs, f"{p}[{i}]", term)
    p = f"{path}.preferredDuringSchedulingIgnoredDuringExecution"
    for i, weighted in enumerate(affinity.preferred_during_scheduling_ignored_during_execution):
        if not 1 <= weighted.weight <= 100:
            errs.invalid(f"{p}[{i}].weight", weighted.weight, "must be in the range 1-100")
        _validate_term(errs, f"{p}[{i}].podAffinityTerm", weighted.pod_affinity_term)


def _selector(errs: FieldErrors, path: str, msg, field: str) -> None:
    if not msg.HasField(field):
        return
    try:
        label_selector_from_proto(getattr(msg, field))
    except LabelSelectorError as e:
        for sub, reason, detail in e.causes:
            errs.add(f"{path}.{sub}", reason, detail)


def _label_names(errs: FieldErrors, path: str, keys) -> None:
    for i, key in enumerate(keys):
        errs.each(f"{path}[{i}]", key, qualified_name_errors(key))


def _validate_term(errs: FieldErrors, path: str, term) -> None:
    _selector(errs, f"{path}.labelSelector", term, "label_selector")
    _selector(errs, f"{path}.namespaceSelector", term, "namespace_selector")
    for name in term.namespaces:
        errs.each(f"{path}.namespace", name, dns1123_label_errors(name))
    has_selector = term.HasField("label_selector")
    for field, json_name in (("match_label_keys", "matchLabelKeys"), ("mismatch_label_keys", "mismatchLabelKeys")):
        keys = getattr(term, field)
        if not keys:
            continue
        if not has_selector:
            errs.forbidden(f"{path}.{json_name}", "must not be specified when labelSelector is not set")
        else:
            _label_names(errs, f"{path}.{json_name}", keys)
    if has_selector and term.match_label_keys:
        # the create-time merge appended an `In` expression per key: a key the selector
        # already had is named twice
        where = {key: i for i, key in enumerate(term.match_label_keys)}
        seen = set(term.label_selector.match_labels)
        for expr in term.label_selector.match_expressions:
            if expr.key in where and expr.key in seen:
                errs.invalid(f"{path}[{where[expr.key]}]", expr.key,
                             "exists in both matchLabelKeys and labelSelector")
            seen.add(expr.key)
    mismatch = set(term.mismatch_label_keys)
    for i, key in enumerate(term.match_label_keys):
        if key in mismatch:
            errs.invalid(f"{path}.matchLabelKeys[{i}]", key, "exists in both matchLabelKeys and mismatchLabelKeys")
    if not term.topology_key:
        errs.required(f"{path}.topologyKey", "can not be empty")
    errs.each(f"{path}.topologyKey", term.topology_key, qualified_name_errors(term.topology_key))


def _validate_topology_spread(errs: FieldErrors, path: str, constraints) -> None:
    for i, c in enumerate(constraints):
        p = f"{path}[{i}]"
        if c.max_skew <= 0:
            errs.invalid(f"{p}.maxSkew", c.max_skew, NOT_POSITIVE_MESSAGE)
        if not c.topology_key:
            errs.required(f"{p}.topologyKey", "can not be empty")
        if c.when_unsatisfiable not in WHEN_UNSATISFIABLE:
            errs.not_supported(f"{p}.whenUnsatisfiable", c.when_unsatisfiable, WHEN_UNSATISFIABLE)
        if any(c.topology_key == o.topology_key and c.when_unsatisfiable == o.when_unsatisfiable
               for o in constraints[i + 1:]):
            errs.duplicate(f"{p}.{{topologyKey, whenUnsatisfiable}}",
                           f"{{{c.topology_key}, {c.when_unsatisfiable}}}")
        if c.HasField("min_domains"):
            if c.min_domains <= 0:
                errs.invalid(f"{p}.minDomains", c.min_domains, NOT_POSITIVE_MESSAGE)
            if c.when_unsatisfiable != "DoNotSchedule":
                errs.invalid(f"{p}.minDomains", c.min_domains, "can only use minDomains if "
                             f"whenUnsatisfiable=DoNotSchedule, not {c.when_unsatisfiable}")
        for field, json_name in (("node_affinity_policy", "nodeAffinityPolicy"),
                                 ("node_taints_policy", "nodeTaintsPolicy")):
            if c.HasField(field) and getattr(c, field) not in NODE_INCLUSION_POLICIES:
                errs.not_supported(f"{p}.{json_name}", getattr(c, field), NODE_INCLUSION_POLICIES)
        if c.match_label_keys:
            if not c.HasField("label_selector"):
                errs.forbidden(f"{p}.matchLabelKeys", "must not be specified when labelSelector is not set")
            else:
                in_selector = {*c.label_selector.match_labels, *(e.key for e in c.label_selector.match_expressions)}
                for j, key in enumerate(c.match_label_keys):
                    errs.each(f"{p}.matchLabelKeys[{j}]", key, qualified_name_errors(key))
                    if key in in_selector:
                        errs.invalid(f"{p}.matchLabelKeys[{j}]", key,
                                     "exists in both matchLabelKeys and labelSelector")
        _selector(errs, f"{p}.labelSelector", c, "label_selector")

