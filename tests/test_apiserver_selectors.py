"""Label and field selectors: Kubernetes' string syntax, its errors, matching,
the meta.v1.LabelSelector message, and the fields each resource exposes.

Matching is checked against a plain model of each operator's meaning over
generated selectors and label sets; printing is checked by parse/print round
trips.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiserver import resources
from apiserver.errors import ApiError
from apiserver.pb import apps_pb2, core_pb2, meta_pb2
from apiserver.selectors import (
    EVERYTHING,
    LabelSelector,
    LabelSelectorError,
    Predicate,
    Requirement,
    label_selector_from_proto,
    make_predicate,
    parse_field_selector,
    parse_label_selector,
)

PODS = resources.lookup("pods")
NODES = resources.lookup("nodes")
EVENTS = resources.lookup("events")
SECRETS = resources.lookup("secrets")
REPLICASETS = resources.lookup("replicasets")
CONFIGMAPS = resources.lookup("configmaps")


# ---- parsing and printing ----

@pytest.mark.parametrize("text,canonical", [
    ("", ""),
    ("   ", ""),
    ("a=b", "a=b"),
    ("a==b", "a=b"),
    ("a = b", "a=b"),
    ("a!=b", "a!=b"),
    ("a", "a"),
    ("!a", "!a"),
    ("! a", "!a"),
    ("a in (y,x)", "a in (x,y)"),
    ("a in (x, y, x)", "a in (x,y)"),
    ("a notin (x)", "a notin (x)"),
    ("a in ()", "a in ()"),
    ("a=", "a="),
    ("z=1,a=2,m", "a=2,m,z=1"),
    ("example.com/tier in (web), !legacy", "example.com/tier in (web),!legacy"),
    ("v>3", "v>3"),
    ("v<10", "v<10"),
    ("in=notin", "in=notin"),
    ("a=b,a=b", "a=b"),
])
def test_parse_prints_canonical_form(text, canonical):
    sel = parse_label_selector(text)
    assert str(sel) == canonical
    assert parse_label_selector(str(sel)) == sel


@pytest.mark.parametrize("text,expected", [
    ("a b", "found 'b', expected: =, !=, ==, in, notin, gt, lt"),
    ("a in b", "found 'b', expected: '('"),
    ("a in (b", "found '', expected: ',', ')' or identifier"),
    ("a in (b c)", "found 'c', expected: ',', ')' or identifier"),
    ("a=(", "found '(', expected: identifier"),
    (",", "found ',', expected: !, identifier, or 'end of string'"),
    ("a=b,", "found '', expected: !, identifier, or 'end of string'"),
    ("a=b c", "found 'c', expected: ',' or 'end of string'"),
    ("!", "found '', expected: identifier"),
    ("!a=b", "found '=', expected: ',' or 'end of string'"),
    ("a=b=c", "found '=', expected: ',' or 'end of string'"),
])
def test_syntax_errors_are_bad_requests_with_kubernetes_wording(text, expected):
    with pytest.raises(ApiError) as e:
        parse_label_selector(text)
    assert e.value.reason == "BadRequest"
    assert e.value.message == f"unable to parse requirement: {expected}"


@pytest.mark.parametrize("text,fragment", [
    ("A B=c", "found 'B'"),
    ("-a=b", 'Invalid value: "-a": name part must consist of alphanumeric'),
    ("a=-b", 'Invalid value: "-b": a valid label must be an empty string'),
    ("a=" + "x" * 64, "must be no more than 63 characters"),
    ("v>x", "for 'gt', 'lt' operators, the value must be an integer"),
    ("v<-1", 'Invalid value: "-1": a valid label must be'),  # values are label values too
    ("a/b/c", "a qualified name must consist of"),
])
def test_bad_keys_and_values_are_bad_requests(text, fragment):
    with pytest.raises(ApiError) as e:
        parse_label_selector(text)
    assert e.value.reason == "BadRequest"
    assert e.value.message.startswith("unable to parse requirement: ")
    assert fragment in e.value.message


# ---- matching ----

LABELS = {"app": "web", "tier": "front", "v": "3", "empty": ""}


@pytest.mark.parametrize("text,expected", [
    ("", True),
    ("app=web", True),
    ("app==web", True),
    ("app=db", False),
    ("app!=db", True),
    ("app!=web", False),
    ("missing!=x", True),       # != matches when the label is absent
    ("app in (db,web)", True),
    ("app in (db)", False),
    ("missing in (x)", False),
    ("app notin (web)", False),
    ("missing notin (x)", True),
    ("app", True),
    ("missing", False),
    ("!missing", True),
    ("!app", False),
    ("empty=", True),
    ("empty", True),
    ("app=", False),
    ("v>2", True),
    ("v>3", False),
    ("v<4", True),
    ("app>1", False),           # a non-integer label is never greater
    ("missing<100", False),
    ("app=web,tier=front", True),
    ("app=web,tier=back", False),
])
def test_matches(text, expected):
    assert parse_label_selector(text).matches(LABELS) is expected


def test_empty_selector_matches_everything_and_knows_it():
    assert EVERYTHING.empty and parse_label_selector("").empty
    assert EVERYTHING.matches({}) and EVERYTHING.matches(LABELS)
    assert not parse_label_selector("a").empty


def test_requires_exact():
    sel = parse_label_selector("app=web,tier in (a,b),x in (only)")
    assert sel.requires_exact("app") == "web"
    assert sel.requires_exact("tier") is None
    assert sel.requires_exact("x") == "only"
    assert sel.requires_exact("nope") is None


def test_from_labels():
    sel = LabelSelector.from_labels({"b": "2", "a": "1"})
    assert str(sel) == "a=1,b=2"
    assert sel.matches({"a": "1", "b": "2", "c": "3"}) and not sel.matches({"a": "1"})
    with pytest.raises(LabelSelectorError):
        LabelSelector.from_labels({"a b": "1"})


# -- generated: round trips and a model of each operator --

_alnum = st.sampled_from("abcxyzABZ0129")
_inner = st.sampled_from("abz09-_.")


@st.composite
def name_parts(draw, max_inner=6):
    first = draw(_alnum)
    middle = draw(st.lists(_inner, max_size=max_inner))
    last = draw(_alnum)
    return first if not middle and draw(st.booleans()) else first + "".join(middle) + last


label_keys = st.one_of(
    st.sampled_from(["app", "tier", "v", "example.com/x", "in", "notin"]),
    name_parts(),
    st.builds(lambda p, n: f"{p}.io/{n}", st.sampled_from(["a", "k8s", "x-y"]), name_parts()))
label_values = st.one_of(st.just(""), st.sampled_from(["web", "1", "3", "10"]), name_parts())
int_values = st.integers(0, 12).map(str)


@st.composite
def requirements(draw):
    key = draw(label_keys)
    op = draw(st.sampled_from(["=", "!=", "in", "notin", "exists", "!", "gt", "lt"]))
    if op in ("=", "!="):
        values = (draw(label_values),)
    elif op in ("in", "notin"):
        values = tuple(sorted(set(draw(st.lists(label_values, min_size=1, max_size=3)))))
    elif op in ("gt", "lt"):
        values = (draw(int_values),)
    else:
        values = ()
    return Requirement(key, op, values)


selectors = st.lists(requirements(), max_size=5).map(LabelSelector.of)
label_sets = st.dictionaries(label_keys, st.one_of(label_values, int_values), max_size=5)


def model_matches(req: Requirement, labels: dict[str, str]) -> bool:
    """Kubernetes' documented meaning of each operator, written out plainly."""
    has = req.key in labels
    value = labels.get(req.key)
    if req.operator in ("=", "in"):
        return has and value in req.values
    if req.operator in ("!=", "notin"):
        return (not has) or value not in req.values
    if req.operator == "exists":
        return has
    if req.operator == "!":
        return not has
    if not has or not value.lstrip("-").isdigit():
        return False
    return int(value) > int(req.values[0]) if req.operator == "gt" else int(value) < int(req.values[0])


@settings(max_examples=300, deadline=None)
@given(selectors)
def test_print_then_parse_is_identity(sel):
    assert parse_label_selector(str(sel)) == sel


@settings(max_examples=300, deadline=None)
@given(selectors, label_sets)
def test_matching_follows_the_model(sel, labels):
    assert sel.matches(labels) == all(model_matches(r, labels) for r in sel.requirements)
    # and the printed form selects the same objects
    assert parse_label_selector(str(sel)).matches(labels) == sel.matches(labels)


@settings(max_examples=200, deadline=None)
@given(label_sets)
def test_from_labels_selects_exactly_its_superset(labels):
    sel = LabelSelector.from_labels(labels)
    assert sel.matches(labels)
    for key in labels:
        smaller = {k: v for k, v in labels.items() if k != key}
        assert not sel.matches(smaller)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab=!,() inotx<>-", max_size=12))
def test_any_text_parses_or_is_a_bad_request(text):
    try:
        sel = parse_label_selector(text)
    except ApiError as e:
        assert e.reason == "BadRequest"
        assert e.message.startswith("unable to parse requirement: ")
    else:
        assert parse_label_selector(str(sel)) == sel


# ---- the meta.v1.LabelSelector message ----

def test_proto_selector_match_labels_and_expressions():
    sel = label_selector_from_proto(meta_pb2.LabelSelector(
        match_labels={"app": "web"},
        match_expressions=[
            meta_pb2.LabelSelectorRequirement(key="tier", operator="In", values=["b", "a"]),
            meta_pb2.LabelSelectorRequirement(key="env", operator="NotIn", values=["prod"]),
            meta_pb2.LabelSelectorRequirement(key="x", operator="Exists"),
            meta_pb2.LabelSelectorRequirement(key="old", operator="DoesNotExist"),
        ]))
    assert str(sel) == "app=web,env notin (prod),!old,tier in (a,b),x"
    assert sel.matches({"app": "web", "tier": "a", "x": ""})
    assert not sel.matches({"app": "web", "tier": "a", "x": "", "old": "1"})
    assert not sel.matches({"app": "web", "tier": "a", "x": "", "env": "prod"})


def test_empty_proto_selector_is_everything():
    assert label_selector_from_proto(meta_pb2.LabelSelector()).empty


@pytest.mark.parametrize("expr,path,reason", [
    ({"key": "a", "operator": "Equals", "values": ["x"]}, "matchExpressions[0].operator",
     "FieldValueNotSupported"),
    ({"key": "a", "operator": "In"}, "matchExpressions[0].values", "FieldValueRequired"),
    ({"key": "a", "operator": "NotIn"}, "matchExpressions[0].values", "FieldValueRequired"),
    ({"key": "a", "operator": "Exists", "values": ["x"]}, "matchExpressions[0].values",
     "FieldValueForbidden"),
    ({"key": "a b", "operator": "Exists"}, "matchExpressions[0].key", "FieldValueInvalid"),
    ({"key": "a", "operator": "In", "values": ["-x"]}, "matchExpressions[0].values[0]",
     "FieldValueInvalid"),
])
def test_bad_proto_expressions(expr, path, reason):
    with pytest.raises(LabelSelectorError) as e:
        label_selector_from_proto(meta_pb2.LabelSelector(
            match_expressions=[meta_pb2.LabelSelectorRequirement(**expr)]))
    assert (path, reason) in [(f, r) for f, r, _ in e.value.causes]


def test_bad_proto_match_labels():
    with pytest.raises(LabelSelectorError) as e:
        label_selector_from_proto(meta_pb2.LabelSelector(match_labels={"ok": "-bad"}))
    assert [f for f, _, _ in e.value.causes] == ["matchLabels"]


def test_unsupported_operator_message_lists_the_supported_ones():
    with pytest.raises(LabelSelectorError) as e:
        label_selector_from_proto(meta_pb2.LabelSelector(
            match_expressions=[meta_pb2.LabelSelectorRequirement(key="a", operator="Gt",
                                                                 values=["1"])]))
    assert e.value.causes[0][2] == ('Unsupported value: "Gt": supported values: "In", "NotIn", '
                                    '"Exists", "DoesNotExist"')


# ---- field selectors ----

def pod(name="p", ns="default", node="", phase="", **labels):
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = name, ns
    p.metadata.labels.update(labels)
    p.spec.node_name = node
    p.status.phase = phase
    return p


@pytest.mark.parametrize("text,expected", [
    ("", True),
    ("metadata.name=p", True),
    ("metadata.name==p", True),
    ("metadata.name!=p", False),
    ("metadata.namespace=default", True),
    ("spec.nodeName=n1", True),
    ("spec.nodeName=", False),
    ("spec.nodeName!=", True),
    ("status.phase=Running", True),
    ("status.phase!=Running", False),
    ("spec.nodeName=n1,status.phase=Pending", False),
    ("spec.nodeName=n1, status.phase=Running", True),   # field names are trimmed
    ("spec.nodeName=n1 ,status.phase=Running", False),  # values are not
    ("spec.nodeName=n1,,", True),                       # empty terms are skipped
    ("spec.restartPolicy=", True),
    ("spec.schedulerName=", True),
    ("status.podIP=", True),
])
def test_pod_field_selectors(text, expected):
    assert parse_field_selector(text, PODS).matches(pod(node="n1", phase="Running")) is expected


def test_unscheduled_pods_are_selected_by_an_empty_node_name():
    sel = parse_field_selector("spec.nodeName=", PODS)
    assert sel.matches(pod()) and not sel.matches(pod(node="n"))
    assert sel.requires_exact("spec.nodeName") == ""


@pytest.mark.parametrize("resource,field", [
    (NODES, "spec.unschedulable"), (EVENTS, "involvedObject.kind"),
    (EVENTS, "involvedObject.namespace"), (EVENTS, "involvedObject.name"),
    (EVENTS, "involvedObject.uid"), (EVENTS, "reason"), (EVENTS, "type"), (EVENTS, "source"),
    (SECRETS, "type"), (REPLICASETS, "status.replicas"), (CONFIGMAPS, "metadata.name"),
    (NODES, "metadata.name"),
])
def test_supported_fields(resource, field):
    assert not parse_field_selector(f"{field}=x", resource).empty


@pytest.mark.parametrize("resource,field", [
    (PODS, "spec.foo"), (CONFIGMAPS, "data"), (NODES, "spec.nodeName"),
    (SECRETS, "status.phase"), (PODS, "type"),
])
def test_unsupported_fields_are_bad_requests(resource, field):
    with pytest.raises(ApiError) as e:
        parse_field_selector(f"{field}=x", resource)
    assert e.value.reason == "BadRequest"
    assert e.value.message == f"field label not supported: {field}"


@pytest.mark.parametrize("text", ["abc", "metadata.name", "metadata.name=a=b"])
def test_field_selector_syntax_errors(text):
    with pytest.raises(ApiError) as e:
        parse_field_selector(text, PODS)
    assert e.value.reason == "BadRequest"


def test_field_values_of_other_kinds():
    node = core_pb2.Node()
    node.spec.unschedulable = True
    assert parse_field_selector("spec.unschedulable=true", NODES).matches(node)
    assert not parse_field_selector("spec.unschedulable=false", NODES).matches(node)
    ev = core_pb2.Event(reason="Killing", type="Normal")
    ev.involved_object.kind, ev.involved_object.name = "Pod", "p1"
    ev.source.component = "kubelet"
    sel = parse_field_selector("involvedObject.kind=Pod,involvedObject.name=p1,reason=Killing,"
                               "source=kubelet,type=Normal", EVENTS)
    assert sel.matches(ev)
    assert parse_field_selector("type=Opaque", SECRETS).matches(core_pb2.Secret(type="Opaque"))
    rs = apps_pb2.ReplicaSet()
    rs.status.replicas = 0
    assert parse_field_selector("status.replicas=0", REPLICASETS).matches(rs)
    rs.status.replicas = 2
    assert parse_field_selector("status.replicas!=0", REPLICASETS).matches(rs)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab,=\\ !x", max_size=10))
def test_escaped_field_values_round_trip(value):
    escaped = "".join("\\" + c if c in ",=\\" else c for c in value)
    sel = parse_field_selector(f"spec.nodeName={escaped}", PODS)
    assert sel.requires_exact("spec.nodeName") == value
    assert parse_field_selector(str(sel), PODS) == sel
    assert sel.matches(pod(node=value))


# ---- predicates ----

def test_predicate_combines_labels_and_fields():
    p = make_predicate(PODS, "app=web", "spec.nodeName=n1")
    assert not p.everything
    assert p.matches(pod(node="n1", app="web"))
    assert not p.matches(pod(node="n2", app="web"))
    assert not p.matches(pod(node="n1", app="db"))


def test_predicate_without_selectors_is_everything():
    for p in (make_predicate(PODS, "", ""), make_predicate(PODS, None, None), Predicate()):
        assert p.everything
        assert p.matches(pod())


def test_make_predicate_reports_bad_selectors():
    with pytest.raises(ApiError) as e:
        make_predicate(PODS, "a in", "")
    assert e.value.reason == "BadRequest"
    with pytest.raises(ApiError) as e:
        make_predicate(PODS, "", "spec.bogus=1")
    assert e.value.message == "field label not supported: spec.bogus"
