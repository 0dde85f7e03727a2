"""The admission webhooks' parts that need no process: rule matching as upstream's
predicates match (k8s.io/apiserver's webhook/predicates/rules), selectors, the
AdmissionReview's checks, the configurations' validation and JSON form (the inline Rule)."""

from __future__ import annotations

import base64
import json

import pytest

from apiserver import manifest, resources
from apiserver.admission import review
from apiserver.admission.matching import CREATE, DELETE, UPDATE, Request, compile_hooks, matches, selectors_match
from apiserver.defaults import apply_defaults
from apiserver.errors import ApiError
from apiserver.pb import admissionregistration_pb2 as ar
from apiserver.pb import core_pb2
from apiserver.rest.protobuf import message_to_dict
from apiserver.validation import validate_create

R = resources.BY_NAME


def _hook(rules, **fields):
    config = ar.ValidatingWebhookConfiguration(metadata={"name": "c"})
    hook = config.webhooks.add(name="h.example.com", **fields)
    for ops, groups, versions, res, *scope in rules:
        rwo = hook.rules.add(operations=ops)
        rwo.rule.api_groups.extend(groups)
        rwo.rule.api_versions.extend(versions)
        rwo.rule.resources.extend(res)
        if scope:
            rwo.rule.scope = scope[0]
    return compile_hooks(config, mutating=False)[0]


def _req(resource="pods", op=CREATE, sub="", namespace="ns", obj=None, old=None):
    return Request(op, R[resource], sub, namespace if R[resource].namespaced else "", "x", obj, old)


@pytest.mark.parametrize("patterns,resource,sub,matched", [
    (["pods"], "pods", "", True),
    (["pods"], "pods", "status", False),
    (["pods/status"], "pods", "status", True),
    (["pods/status"], "pods", "", False),
    (["pods/*"], "pods", "", True),  # upstream: "*" matches the empty subresource too
    (["pods/*"], "pods", "status", True),
    (["*"], "deployments", "", True),
    (["*"], "deployments", "status", False),
    (["*/status"], "deployments", "status", True),
    (["*/*"], "nodes", "status", True),
    (["configmaps"], "pods", "", False),
])
def test_resources(patterns, resource, sub, matched):
    group = R[resource].group
    hook = _hook([(["*"], [group], ["v1"], patterns)])
    assert matches(hook, _req(resource, sub=sub)) is matched


def test_operations_groups_versions_and_scope():
    hook = _hook([(["UPDATE", "DELETE"], [""], ["v1"], ["pods"])])
    assert not matches(hook, _req(op=CREATE)) and matches(hook, _req(op=UPDATE))
    assert matches(hook, _req(op=DELETE))
    assert not matches(_hook([(["*"], ["apps"], ["v1"], ["pods"])]), _req())
    assert matches(_hook([(["*"], ["*"], ["*"], ["*"])]), _req("deployments"))
    # Exact: the version must be named; Equivalent (the default): any version of it
    exact = _hook([(["*"], [""], ["v1beta1"], ["pods"])], match_policy="Exact")
    assert not matches(exact, _req())
    assert matches(_hook([(["*"], [""], ["v1beta1"], ["pods"])], match_policy="Equivalent"), _req())
    # Equivalent: deployments under extensions are apps' deployments
    ext = [(["*"], ["extensions"], ["v1beta1"], ["deployments"])]
    assert matches(_hook(ext, match_policy="Equivalent"), _req("deployments"))
    assert not matches(_hook(ext, match_policy="Exact"), _req("deployments"))
    namespaced = _hook([(["*"], ["*"], ["*"], ["*"], "Namespaced")])
    cluster = _hook([(["*"], ["*"], ["*"], ["*"], "Cluster")])
    assert matches(namespaced, _req("pods")) and not matches(namespaced, _req("namespaces"))
    assert matches(cluster, _req("namespaces")) and matches(cluster, _req("nodes"))
    assert not matches(cluster, _req("configmaps"))


def _pod(labels):
    return core_pb2.Pod(metadata={"name": "p", "labels": labels})


def test_selectors():
    on = ar.ValidatingWebhook(name="h.example.com")
    on.object_selector.match_labels["team"] = "a"
    on.namespace_selector.match_expressions.add(key="env", operator="In", values=["prod"])
    config = ar.ValidatingWebhookConfiguration(metadata={"name": "c"})
    config.webhooks.add().CopyFrom(on)
    config.webhooks[0].rules.add(operations=["*"]).rule.resources.append("*")
    hook = compile_hooks(config, mutating=False)[0]
    labels = {"ns": {"env": "prod"}, "dev": {"env": "dev"}}.get
    assert selectors_match(hook, _req(obj=_pod({"team": "a"})), lambda n: labels(n) or {})
    # either the new or the old object may match; a missing one never does
    assert selectors_match(hook, _req(op=UPDATE, obj=_pod({}), old=_pod({"team": "a"})), lambda n: labels(n))
    assert not selectors_match(hook, _req(op=DELETE, obj=None, old=_pod({})), lambda n: labels(n))
    assert not selectors_match(hook, _req(obj=_pod({"team": "a"}), namespace="dev"), lambda n: labels(n))
    # a Namespace is matched on its own labels; other cluster-scoped kinds never skip it
    ns = core_pb2.Namespace(metadata={"name": "n", "labels": {"team": "a", "env": "prod"}})
    assert selectors_match(hook, _req("namespaces", obj=ns), lambda n: {})
    node = core_pb2.Node(metadata={"name": "n", "labels": {"team": "a"}})
    assert selectors_match(hook, _req("nodes", obj=node), lambda n: {})


def test_the_review_response_is_checked():
    sent = review.build(_req(obj=_pod({"a": "b"})), None)
    uid = sent["request"]["uid"]

    def answer(**response):
        return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": {"uid": uid, **response}}).encode()

    assert review.parse(answer(allowed=True, warnings=["w"]), uid, mutating=False)["warnings"] == ["w"]
    with pytest.raises(review.InvalidResponse, match=r'expected response.uid="'):
        review.parse(answer(allowed=True, uid="other"), uid, mutating=False)
    with pytest.raises(review.InvalidResponse, match="expected webhook response of admission.k8s.io/v1, "
                                                     "Kind=AdmissionReview, got admission.k8s.io/v1beta1"):
        review.parse(json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                                 "response": {"uid": uid}}).encode(), uid, mutating=False)
    patch = base64.b64encode(b'[{"op":"add","path":"/x","value":1}]').decode()
    with pytest.raises(review.InvalidResponse, match="webhook returned response.patch but not response.patchType"):
        review.parse(answer(allowed=True, patch=patch), uid, mutating=True)
    with pytest.raises(review.InvalidResponse, match='invalid response.patchType of "MergePatch"'):
        review.parse(answer(allowed=True, patch=patch, patchType="MergePatch"), uid, mutating=True)
    got = review.parse(answer(allowed=True, patch=patch, patchType="JSONPatch"), uid, mutating=True)
    assert got["patch"] == [{"op": "add", "path": "/x", "value": 1}]


def _config_json(**hook):
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "m"},
            "webhooks": [{"name": "m.example.com", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                          "clientConfig": {"url": "https://127.0.0.1:1/m"},
                          "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                     "resources": ["pods"]}], **hook}]}


def _causes(d):
    msg = manifest.from_dict(d)
    apply_defaults(R["mutatingwebhookconfigurations"], msg)
    with pytest.raises(ApiError) as e:
        validate_create(R["mutatingwebhookconfigurations"], msg)
    return {(f, m) for f, _, m in e.value.causes}


def test_validation_messages():
    assert _causes(_config_json(sideEffects="Some", reinvocationPolicy="Always")) == {
        ("webhooks[0].sideEffects", 'Unsupported value: "Some": supported values: "None", "NoneOnDryRun"'),
        ("webhooks[0].reinvocationPolicy", 'Unsupported value: "Always": supported values: "IfNeeded", "Never"')}
    assert _causes(_config_json(clientConfig={})) == {
        ("webhooks[0].clientConfig", "Required value: exactly one of url or service is required")}
    assert _causes(_config_json(clientConfig={"url": "https://u@h.example.com/x#f"})) == {
        ("webhooks[0].clientConfig.url", 'Invalid value: "https://u@h.example.com/x#f": user information is not '
                                         "permitted in the URL"),
        ("webhooks[0].clientConfig.url", 'Invalid value: "https://u@h.example.com/x#f": fragments are not '
                                         "permitted in the URL")}
    assert _causes(_config_json(clientConfig={"service": {"name": "", "namespace": "default", "port": 0}})) == {
        ("webhooks[0].clientConfig.service.name", "Required value: service name is required"),
        ("webhooks[0].clientConfig.service.port", "Invalid value: 0: port is not valid: must be between 1 and "
                                                  "65535, inclusive")}
    two = _config_json()
    two["webhooks"].append(dict(two["webhooks"][0]))
    assert _causes(two) == {("webhooks[1].name", 'Duplicate value: "m.example.com"')}
    wild = _config_json(rules=[{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"],
                                "resources": ["*/*", "pods"], "scope": "Everywhere"}])
    assert _causes(wild) == {
        ("webhooks[0].rules[0].resources", 'Invalid value: []string{"*/*", "pods"}: if \'*/*\' is present, must '
                                           "not specify other resources"),
        ("webhooks[0].rules[0].scope", 'Unsupported value: "Everywhere": supported values: "*", "Cluster", '
                                       '"Namespaced"')}
    assert _causes(_config_json(matchConditions=[{"name": "c", "expression": "true"}])) == {
        ("webhooks[0].matchConditions", "Forbidden: match conditions (CEL) are not supported by this apiserver")}


def test_the_rule_is_inline_in_json_and_a_field_on_the_wire():
    d = _config_json()
    msg = manifest.from_dict(d)
    assert list(msg.webhooks[0].rules[0].rule.resources) == ["pods"]
    assert manifest.to_dict(msg) == d
    # protobuf bodies (k8s.io/api's wire form) read back into the same JSON
    assert message_to_dict(msg.DESCRIPTOR, msg.SerializeToString())["webhooks"] == d["webhooks"]
    with pytest.raises(ApiError, match='unknown field "webhooks\\[0\\].rules\\[0\\].rule"'):
        manifest.from_dict(_config_json(rules=[{"operations": ["CREATE"], "rule": {}}]))


def test_a_webhooks_own_code_survives_the_grpc_status():
    import grpc

    err = ApiError("", 'admission webhook "h.example.com" denied the request: no', code=403)
    assert (err.http_code, err.grpc_code) == (403, grpc.StatusCode.PERMISSION_DENIED)
    back = ApiError.from_status(err.to_status())
    assert (back.reason, back.http_code, back.message) == ("", 403, err.message)
    teapot = ApiError("Teapot", "short and stout", code=418)
    assert (teapot.reason, teapot.http_code, teapot.grpc_code) == ("Teapot", 418, grpc.StatusCode.FAILED_PRECONDITION)
    assert ApiError("Nonsense", "x").reason == "InternalError"  # without a code, as before


def test_strategic_merge_merges_webhooks_by_name():
    from apiserver.rest.patch import strategic_merge

    doc = _config_json()
    doc["webhooks"].append({**doc["webhooks"][0], "name": "n.example.com"})
    merged = strategic_merge(doc, {"webhooks": [{"name": "n.example.com", "timeoutSeconds": 5}]})
    assert [(w["name"], w.get("timeoutSeconds")) for w in merged["webhooks"]] == [
        ("m.example.com", None), ("n.example.com", 5)]


def test_user_info():
    from apiserver.auth.authn import User

    req = _req(obj=_pod({}))
    alice = User("alice", ("devs", "system:authenticated"), uid="u-1", extra=(("scopes", ("a", "b")),))
    assert review.build(req, alice)["request"]["userInfo"] == {
        "username": "alice", "uid": "u-1", "groups": ["devs", "system:authenticated"], "extra": {"scopes": ["a", "b"]}}
    # no requester: anyone on an open apiserver, the apiserver itself on one that authenticates
    assert review.build(req, None)["request"]["userInfo"] == {"username": "system:anonymous",
                                                              "groups": ["system:unauthenticated"]}
    assert review.build(req, None, secured=True)["request"]["userInfo"] == {
        "username": "system:apiserver", "groups": ["system:masters", "system:authenticated"]}
