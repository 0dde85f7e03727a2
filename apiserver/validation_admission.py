"""Validation of ValidatingWebhookConfigurations and MutatingWebhookConfigurations, as
pkg/apis/admissionregistration/validation (v1's rules: sideEffects None or NoneOnDryRun,
admissionReviewVersions naming v1 or v1beta1, timeouts of 1-30 s, exactly one of url or
service, unique webhook names) with its messages."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from apiserver.selectors import LabelSelectorError, label_selector_from_proto
from apiserver.syntax import dns1035_label_errors, dns1123_label_errors, dns1123_subdomain_errors
from apiserver.validation_common import FieldErrors, _Raw

FAILURE_POLICIES = ("Fail", "Ignore")
MATCH_POLICIES = ("Equivalent", "Exact")
# v1 accepts only these (Some and Unknown were v1beta1's)
SIDE_EFFECTS = ("None", "NoneOnDryRun")
OPERATIONS = ("*", "CONNECT", "CREATE", "DELETE", "UPDATE")
SCOPES = ("*", "Cluster", "Namespaced")
REINVOCATION_POLICIES = ("IfNeeded", "Never")
REVIEW_VERSIONS = ("v1", "v1beta1")


def _strings(values) -> _Raw:
    return _Raw("[]string{" + ", ".join(json.dumps(v) for v in values) + "}")


def _fully_qualified(errs: FieldErrors, path: str, name: str) -> None:
    if not name:
        errs.required(path)
        return
    problems = dns1123_subdomain_errors(name)
    errs.each(path, name, problems)
    if not problems and len(name.split(".")) < 3:
        errs.invalid(path, name, "should be a domain with at least three segments separated by dots")


def _resources(errs: FieldErrors, path: str, names) -> None:
    if not names:
        errs.required(path)
    wildcard_sub: set[str] = set()  # "x/*"
    wildcard_res: set[str] = set()  # "*/x"
    single = plain = False
    for i, name in enumerate(names):
        if not name:
            errs.required(f"{path}[{i}]")
            continue
        if name == "*":
            single = True
        res, slash, sub = name.partition("/")
        if not slash:
            plain = plain or name != "*"
            continue
        if res in wildcard_sub:
            errs.invalid(f"{path}[{i}]", name, f"if '{res}/*' is present, must not specify {name}")
        if sub in wildcard_res:
            errs.invalid(f"{path}[{i}]", name, f"if '*/{sub}' is present, must not specify {name}")
        if sub == "*":
            wildcard_sub.add(res)
        if res == "*":
            wildcard_res.add(sub)
    if len(names) > 1 and "*/*" in names:
        errs.invalid(path, _strings(names), "if '*/*' is present, must not specify other resources")
    if single and plain:
        errs.invalid(path, _strings(names), "if '*' is present, must not specify other resources without subresources")


def _rule(errs: FieldErrors, path: str, rwo) -> None:
    ops = list(rwo.operations)
    if not ops:
        errs.required(f"{path}.operations")
    if len(ops) > 1 and "*" in ops:
        errs.invalid(f"{path}.operations", _strings(ops), "if '*' is present, must not specify other operations")
    for i, op in enumerate(ops):
        if op not in OPERATIONS:
            errs.not_supported(f"{path}.operations[{i}]", op, OPERATIONS)
    rule = rwo.rule
    if not rule.api_groups:
        errs.required(f"{path}.apiGroups")
    if len(rule.api_groups) > 1 and "*" in rule.api_groups:
        errs.invalid(f"{path}.apiGroups", _strings(rule.api_groups), "if '*' is present, must not specify other API groups")
    if not rule.api_versions:
        errs.required(f"{path}.apiVersions")
    if len(rule.api_versions) > 1 and "*" in rule.api_versions:
        errs.invalid(f"{path}.apiVersions", _strings(rule.api_versions),
                     "if '*' is present, must not specify other API versions")
    for i, version in enumerate(rule.api_versions):
        if not version:
            errs.required(f"{path}.apiVersions[{i}]")
    _resources(errs, f"{path}.resources", list(rule.resources))
    if rule.HasField("scope") and rule.scope not in SCOPES:
        errs.not_supported(f"{path}.scope", rule.scope, SCOPES)


def _url(errs: FieldErrors, path: str, url: str) -> None:
    """k8s.io/apiserver's ValidateWebhookURL (forceHttps)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError as e:
        errs.invalid(path, url, f"url must be a valid URL: {e}")
        return
    if parts.scheme != "https":
        errs.invalid(path, url, "'https' is the only allowed URL scheme")
    if not parts.hostname:
        errs.invalid(path, url, "host must be specified")
    if parts.username is not None or parts.password is not None:
        errs.invalid(path, url, "user information is not permitted in the URL")
    if parts.fragment or url.endswith("#"):
        errs.invalid(path, url, "fragments are not permitted in the URL")
    if parts.query or "?" in url:
        errs.invalid(path, url, "query parameters are not permitted in the URL")


def _service(errs: FieldErrors, path: str, svc) -> None:
    """k8s.io/apiserver's ValidateWebhookService."""
    if not svc.name:
        errs.required(f"{path}.name", "service name is required")
    else:
        errs.each(f"{path}.name", svc.name, dns1035_label_errors(svc.name))
    if not svc.namespace:
        errs.required(f"{path}.namespace", "service namespace is required")
    else:
        errs.each(f"{path}.namespace", svc.namespace, dns1123_label_errors(svc.namespace))
    if svc.HasField("port") and not 1 <= svc.port <= 65535:
        errs.invalid(f"{path}.port", svc.port, "port is not valid: must be between 1 and 65535, inclusive")
    if not svc.HasField("path"):
        return
    p = svc.path
    if p == "/":
        return
    if not p.startswith("/"):
        errs.invalid(f"{path}.path", p, "must start with a '/'")
    for step in p[1:].split("/"):
        if not step:
            errs.invalid(f"{path}.path", p, "segment[?]: may not be empty")
            break
        bad = dns1123_subdomain_errors(step)
        if bad:
            errs.invalid(f"{path}.path", p, f"segment[?]: {bad[0]}")
            break


def _selector(errs: FieldErrors, path: str, selector) -> None:
    try:
        label_selector_from_proto(selector)
    except LabelSelectorError as e:
        for sub, reason, detail in e.causes:
            errs.add(f"{path}.{sub}", reason, detail)


def _review_versions(errs: FieldErrors, path: str, versions) -> None:
    if not versions:
        errs.required(path, f"must specify one of {', '.join(REVIEW_VERSIONS)}")
        return
    seen = set()
    for i, v in enumerate(versions):
        if v in seen:
            errs.invalid(f"{path}[{i}]", v, "duplicate version")
            continue
        seen.add(v)
        errs.each(f"{path}[{i}]", v, dns1035_label_errors(v))
    if not seen & set(REVIEW_VERSIONS):
        errs.invalid(path, _strings(versions), f"must include at least one of {', '.join(REVIEW_VERSIONS)}")


def _webhook(errs: FieldErrors, path: str, hook, *, mutating: bool) -> None:
    _fully_qualified(errs, f"{path}.name", hook.name)
    for i, rwo in enumerate(hook.rules):
        _rule(errs, f"{path}.rules[{i}]", rwo)
    if hook.HasField("failure_policy") and hook.failure_policy not in FAILURE_POLICIES:
        errs.not_supported(f"{path}.failurePolicy", hook.failure_policy, FAILURE_POLICIES)
    if hook.HasField("match_policy") and hook.match_policy not in MATCH_POLICIES:
        errs.not_supported(f"{path}.matchPolicy", hook.match_policy, MATCH_POLICIES)
    if not hook.HasField("side_effects"):
        errs.required(f"{path}.sideEffects", f"must specify one of {', '.join(SIDE_EFFECTS)}")
    elif hook.side_effects not in SIDE_EFFECTS:
        errs.not_supported(f"{path}.sideEffects", hook.side_effects, SIDE_EFFECTS)
    if hook.HasField("timeout_seconds") and not 1 <= hook.timeout_seconds <= 30:
        errs.invalid(f"{path}.timeoutSeconds", hook.timeout_seconds, "the timeout value must be between 1 and 30 seconds")
    _selector(errs, f"{path}.namespaceSelector", hook.namespace_selector)
    _selector(errs, f"{path}.objectSelector", hook.object_selector)
    if mutating and hook.HasField("reinvocation_policy") and hook.reinvocation_policy not in REINVOCATION_POLICIES:
        errs.not_supported(f"{path}.reinvocationPolicy", hook.reinvocation_policy, REINVOCATION_POLICIES)
    cc = hook.client_config
    has_url, has_service = cc.HasField("url"), cc.HasField("service")
    if has_url == has_service:
        errs.required(f"{path}.clientConfig", "exactly one of url or service is required")
    elif has_url:
        _url(errs, f"{path}.clientConfig.url", cc.url)
    else:
        _service(errs, f"{path}.clientConfig.service", cc.service)
    if hook.match_conditions:
        # CEL is not evaluated here: a condition that could not be honoured is refused
        errs.forbidden(f"{path}.matchConditions", "match conditions (CEL) are not supported by this apiserver")


def _configuration(errs: FieldErrors, config, *, mutating: bool) -> None:
    names: set[str] = set()
    for i, hook in enumerate(config.webhooks):
        path = f"webhooks[{i}]"
        _webhook(errs, path, hook, mutating=mutating)
        _review_versions(errs, f"{path}.admissionReviewVersions", list(hook.admission_review_versions))
        if hook.name:
            if hook.name in names:
                errs.duplicate(f"{path}.name", hook.name)
            names.add(hook.name)


def validate_validating(errs: FieldErrors, config) -> None:
    _configuration(errs, config, mutating=False)


def validate_mutating(errs: FieldErrors, config) -> None:
    _configuration(errs, config, mutating=True)
