"""Field sets and ownership (apiserver/fieldpath.py, apiserver/fieldmanager.py), against
structured-merge-diff's semantics: FieldsV1 as upstream writes it, the sets of applied
configurations, comparisons, merges of associative lists, and a state machine in which
appliers and updaters take turns on one object while a plain model says who owns what."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from apiserver import fieldmanager, fieldpath, manifest, resources
from apiserver.errors import ApiError
from apiserver.fieldmanager import Manager
from apiserver.fieldpath import FIELD, INDEX, KEY, VALUE
from apiserver.rest.convert import to_json

CM = resources.BY_NAME["configmaps"]
DEPLOY = resources.BY_NAME["deployments"]
PODS = resources.BY_NAME["pods"]
POD = PODS.new().DESCRIPTOR


def f(*names):
    return tuple((FIELD, n) for n in names)


# ---- FieldsV1 ----

def test_fields_v1_as_upstream_writes_it():
    """Members without children are {}, members with children carry ".": {},
    keys are sorted JSON without spaces (upstream's serialize.go)."""
    containers = f("spec", "containers")
    item = containers + ((KEY, fieldpath.canonical({"name": "c"})),)
    paths = {f("metadata", "labels", "app"), item, item + f("image"), item + f("name"),
             f("metadata", "finalizers") + ((VALUE, '"x"'),)}
    assert fieldpath.to_fields_v1(paths) == {
        "f:metadata": {"f:finalizers": {'v:"x"': {}}, "f:labels": {"f:app": {}}},
        "f:spec": {"f:containers": {'k:{"name":"c"}': {"f:image": {}, "f:name": {}, ".": {}}}}}


path_elements = st.one_of(
    st.text("abc.:", min_size=1, max_size=3).map(lambda s: (FIELD, s)),
    st.dictionaries(st.sampled_from(["name", "port"]), st.one_of(st.integers(0, 9), st.text("xy", max_size=2)),
                    min_size=1, max_size=2).map(lambda d: (KEY, fieldpath.canonical(d))),
    st.one_of(st.text("xy", max_size=2), st.integers(0, 9)).map(lambda v: (VALUE, fieldpath.canonical(v))),
    st.integers(0, 5).map(lambda i: (INDEX, i)))
path_sets = st.sets(st.lists(path_elements, min_size=1, max_size=4).map(tuple), max_size=12)


@settings(max_examples=100, deadline=None)
@given(path_sets)
def test_fields_v1_round_trip(paths):
    fields = json.loads(json.dumps(fieldpath.to_fields_v1(paths)))
    assert fieldpath.from_fields_v1(fields) == paths


def test_unknown_element_kinds_are_dropped_and_bad_ones_refused():
    # a later version's element kind is ignored, as upstream's readIterV1 does
    assert fieldpath.from_fields_v1({"f:a": {}, "z:new": {}}) == {f("a")}
    with pytest.raises(ValueError):
        fieldpath.from_fields_v1({"f:a": []})


def test_path_text_as_conflicts_print_it():
    item = f("spec", "ports") + ((KEY, fieldpath.canonical({"port": 80, "protocol": "TCP"})),)
    assert fieldpath.path_text(item + f("targetPort")) == '.spec.ports[port=80,protocol="TCP"].targetPort'
    assert fieldpath.path_text(f("metadata", "finalizers") + ((VALUE, '"a"'),)) == '.metadata.finalizers[="a"]'


# ---- the set of an applied configuration ----

def test_field_set_of_a_pod():
    config = {"metadata": {"name": "p", "labels": {"a": "1"}, "finalizers": ["x"]},
              "spec": {"nodeSelector": {"disk": "ssd"}, "tolerations": [{"key": "k"}],
                       "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}],
                                       "resources": {}, "env": None}]}}
    item = f("spec", "containers") + ((KEY, '{"name":"c"}'),)
    port = item + f("ports") + ((KEY, '{"containerPort":80,"protocol":"TCP"}'),)
    assert fieldpath.field_set(config, POD) == {
        f("metadata", "name"), f("metadata", "labels", "a"), f("metadata", "finalizers") + ((VALUE, '"x"'),),
        f("spec", "nodeSelector", "disk"),
        f("spec", "tolerations"),  # atomic: the list itself
        item, item + f("name"), item + f("image"), port, port + f("containerPort")}


def test_missing_key_field_is_an_error():
    with pytest.raises(ValueError, match='omits key field "name"'):
        fieldpath.field_set({"spec": {"containers": [{"image": "i"}]}}, POD)


# ---- compare and merge ----

pods = st.fixed_dictionaries({}, optional={
    "metadata": st.fixed_dictionaries({}, optional={
        "labels": st.dictionaries(st.sampled_from("abc"), st.sampled_from(["1", "2"]), max_size=3),
        "finalizers": st.lists(st.sampled_from(["x", "y", "z"]), unique=True, max_size=3)}),
    "spec": st.fixed_dictionaries({}, optional={
        "hostname": st.sampled_from(["h1", "h2"]),
        "containers": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "c"])}, optional={
            "image": st.sampled_from(["i1", "i2"]),
            "args": st.lists(st.sampled_from(["-v", "-q"]), max_size=2)}),
            unique_by=lambda c: c["name"], max_size=3)})})


@settings(max_examples=100, deadline=None)
@given(pods, pods)
def test_compare_is_symmetric(a, b):
    ab, ba = fieldpath.compare(a, b, POD), fieldpath.compare(b, a, POD)
    assert ab.added == ba.removed and ab.removed == ba.added and ab.modified == ba.modified
    assert not fieldpath.compare(a, copy.deepcopy(a), POD).changed()


@settings(max_examples=100, deadline=None)
@given(pods, pods)
def test_merge_keeps_what_is_applied_and_what_is_not_named(live, config):
    merged = fieldpath.merge(live, config, POD)
    applied = fieldpath.field_set(config, POD)
    # nothing applied is lost or differs, and merging again changes nothing
    cmp = fieldpath.compare(config, merged, POD)
    assert not (cmp.modified | cmp.removed) & applied
    assert fieldpath.merge(merged, config, POD) == merged
    # a live field the configuration does not name (nor anything above it) is kept
    gone = fieldpath.compare(live, merged, POD).removed
    assert not {p for p in gone if not fieldpath.under(p, applied)}


def test_associative_merge_keeps_order_of_live_and_config():
    live = {"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}
    config = {"spec": {"containers": [{"name": "d"}, {"name": "b", "image": "x"}]}}
    merged = fieldpath.merge(live, config, POD)["spec"]["containers"]
    # upstream's merge walk: live items before the next shared one stay in front
    assert merged == [{"name": "a"}, {"name": "d"}, {"name": "b", "image": "x"}, {"name": "c"}]


# ---- ownership ----

def _cm(data: dict, labels: dict | None = None):
    msg = manifest.from_dict({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "c", "labels": labels or {}}, "data": data})
    msg.metadata.resource_version = "1"
    return msg


def owners(msg) -> dict:
    return {(e.manager, e.operation, e.subresource): e.fields for e in fieldmanager.decode(msg.metadata)}


def test_update_takes_changed_fields_from_others():
    live = fieldmanager.apply(CM, None, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                                         "data": {"a": "1", "b": "2"}}, Manager("app"), force=False)
    new = copy.deepcopy(live)
    new.data["a"] = "9"
    del new.data["b"]
    new.data["c"] = "3"
    fieldmanager.track_update(CM, live, new, Manager("edit"))
    # "a" changed hands, "b" went, "c" is new: app owns nothing, and an entry that owns nothing goes
    assert owners(new) == {("edit", "Update", ""): {f("data", "a"), f("data", "c")}}


def test_conflict_message_lists_fields_by_manager():
    live = _cm({"a": "1", "b": "1"})
    fieldmanager.track_update(CM, _cm({}), live, Manager("one"))
    with pytest.raises(ApiError) as e:
        fieldmanager.apply(CM, live, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                                      "data": {"a": "2", "b": "2"}}, Manager("two"), force=False)
    assert e.value.reason == "Conflict" and e.value.http_code == 409
    assert e.value.message == ('Apply failed with 2 conflicts: conflicts with "one" using v1:\n'
                               "- .data.a\n- .data.b")
    assert e.value.causes == [(".data.a", "FieldManagerConflict", 'conflict with "one" using v1'),
                              (".data.b", "FieldManagerConflict", 'conflict with "one" using v1')]


def test_status_and_server_fields_are_nobodys():
    pod = PODS.new()
    pod.metadata.name, pod.metadata.uid, pod.metadata.creation_timestamp = "p", "u", "2026-01-01T00:00:00Z"
    pod.spec.containers.add(name="c", image="i")
    pod.status.phase = "Running"
    fieldmanager.track_update(PODS, None, pod, Manager("maker"))
    # as Go's JSON has them: "containers" is there (null) in the empty Pod, so the list itself
    # was not added; a new container comes with "resources": {} (a value struct)
    item = f("spec", "containers") + ((KEY, '{"name":"c"}'),)
    assert owners(pod)[("maker", "Update", "")] == {item, item + f("name"), item + f("image"), item + f("resources")}
    later = copy.deepcopy(pod)
    later.status.phase = "Succeeded"
    fieldmanager.track_update(PODS, pod, later, Manager("kubelet", "status"))
    assert owners(later)[("kubelet", "Update", "status")] == {f("status", "phase")}


def test_manager_names():
    assert fieldmanager.manager_from_user_agent("kubectl/v1.32.3 (linux/amd64) kubernetes/32cc146") == "kubectl"
    assert fieldmanager.manager_from_user_agent("x" * 300) == "x" * 128
    with pytest.raises(ApiError) as e:
        fieldmanager.check_manager("", apply=True)
    assert e.value.message == ('PatchOptions.meta.k8s.io "" is invalid: fieldManager: '
                               "Required value: is required for apply patch")


KEYS = st.sampled_from("abc")
VALUES = st.sampled_from("xy")
MANAGERS = st.sampled_from(["m1", "m2", "m3"])


class Ownership(RuleBasedStateMachine):
    """Appliers and updaters on one ConfigMap's data; the model is upstream's rules
    written for a flat map: an apply owns exactly what it applied, may not change
    what others own unless forced (then takes it), and removes what it applied before
    and no longer does unless someone else owns it; an update owns what it changed and
    takes it from the others."""

    def __init__(self):
        super().__init__()
        self.obj = None
        self.data: dict = {}
        self.owned: dict = {}  # (manager, operation) -> set of keys

    def _others(self, who) -> set:
        return set().union(*(keys for k, keys in self.owned.items() if k != who))

    @rule(manager=MANAGERS, config=st.dictionaries(KEYS, VALUES, max_size=3), force=st.booleans())
    def apply(self, manager, config, force):
        me = (manager, "Apply")
        changed = {k for k, v in config.items() if self.data.get(k) != v}
        conflicting = changed & self._others(me)
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": config}
        try:
            new = fieldmanager.apply(CM, self.obj, body, Manager(manager), force=force)
        except ApiError as e:
            assert conflicting and not force, e.message
            return
        assert not conflicting or force
        last = self.owned.get(me, set())
        self.data.update(config)
        for who in self.owned:
            if who != me:
                self.owned[who] -= changed
        self.owned[me] = set(config)
        for k in last - set(config):
            if k not in self._others(me):
                self.data.pop(k, None)
        self.owned = {k: v for k, v in self.owned.items() if v}
        self.obj = new

    @rule(manager=MANAGERS, changes=st.dictionaries(KEYS, st.one_of(st.none(), VALUES), max_size=3))
    def update(self, manager, changes):
        if self.obj is None:
            return
        new = copy.deepcopy(self.obj)
        data = dict(self.data)
        for k, v in changes.items():
            if v is None:
                data.pop(k, None)
            else:
                data[k] = v
        new.data.clear()
        new.data.update(data)
        fieldmanager.track_update(CM, self.obj, new, Manager(manager))
        changed = {k for k in data if self.data.get(k) != data[k]}
        removed = set(self.data) - set(data)
        for who in self.owned:
            self.owned[who] -= changed | removed
        me = (manager, "Update")
        self.owned[me] = self.owned.get(me, set()) | changed
        self.owned = {k: v for k, v in self.owned.items() if v}
        self.data = data
        self.obj = new

    @invariant()
    def agrees_with_the_model(self):
        if self.obj is None:
            return
        assert dict(self.obj.data) == self.data
        entries = fieldmanager.decode(self.obj.metadata)
        assert all(p[0] == (FIELD, "data") and len(p) <= 2 for e in entries for p in e.fields)
        # the keys each owns; an updater that created the map also owns the map (f:data ".")
        got = {(e.manager, e.operation): {p[1][1] for p in e.fields if len(p) == 2} for e in entries}
        assert {k: v for k, v in got.items() if v} == self.owned


TestOwnership = Ownership.TestCase
TestOwnership.settings = settings(max_examples=60, stateful_step_count=10, deadline=None)


def test_apply_through_the_main_resource_ignores_status():
    config = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
              "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"phase": "Running"}}
    pod = fieldmanager.apply(PODS, None, config, Manager("tool"), force=False)
    assert not pod.status.phase
    status = fieldmanager.apply(PODS, pod, config, Manager("kubelet", "status"), force=False)
    assert status.status.phase == "Running"
    assert owners(status)[("kubelet", "Apply", "status")] == {f("status", "phase")}


def test_a_resource_version_in_the_configuration_is_a_precondition():
    live = _cm({"a": "1"})
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "7"},
              "data": {"a": "2"}}
    with pytest.raises(ApiError) as e:
        fieldmanager.apply(CM, live, config, Manager("tool"), force=True)
    assert e.value.reason == "Conflict" and "the object has been modified" in e.value.message
    config["metadata"]["resourceVersion"] = "1"
    assert fieldmanager.apply(CM, live, config, Manager("tool"), force=True).data["a"] == "2"


def test_managed_fields_in_a_protobuf_body():
    """k8s.io/apimachinery's numbers: ObjectMeta.managedFields=17; ManagedFieldsEntry{manager=1,
    operation=2, apiVersion=3, time=4 Time{seconds=1}, fieldsType=6, fieldsV1=7 FieldsV1{Raw=1}}."""
    from apiserver.rest import protobuf
    from tests.test_rest_units import _int, _len

    entry = (_len(1, b"kubectl-create") + _len(2, b"Update") + _len(3, b"v1") + _len(4, _int(1, 1767225600))
             + _len(6, b"FieldsV1") + _len(7, _len(1, b'{"f:data":{".":{},"f:a":{}}}')))
    raw = _len(1, _len(1, b"c") + _len(17, entry)) + _len(2, _len(1, b"a") + _len(2, b"b"))
    body = b"k8s\x00" + _len(1, _len(1, b"v1") + _len(2, b"ConfigMap")) + _len(2, raw)
    d = protobuf.decode(body)
    assert d["metadata"]["managedFields"] == [{
        "manager": "kubectl-create", "operation": "Update", "apiVersion": "v1", "time": "2026-01-01T00:00:00Z",
        "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {".": {}, "f:a": {}}}}]
    msg = manifest.from_dict(d)
    assert owners(msg) == {("kubectl-create", "Update", ""): {f("data"), f("data", "a")}}


def test_more_than_ten_updaters_fold_the_oldest_into_ancient_changes():
    live = _cm({})
    for i in range(12):
        new = copy.deepcopy(live)
        new.data[f"k{i}"] = "v"
        fieldmanager.track_update(CM, live, new, Manager(f"m{i:02}"))
        for e in new.metadata.managed_fields:  # one second apart, as a slower clock would give
            if e.manager == f"m{i:02}":
                e.time = f"2026-01-01T00:00:{i:02}Z"
        live = new
    got = owners(live)
    assert len(got) == 10 and ("ancient-changes", "Update", "") in got
    # the three oldest (m00, m01, m02) are one entry now; the newest nine keep theirs
    assert got[("ancient-changes", "Update", "")] == {f("data"), f("data", "k0"), f("data", "k1"), f("data", "k2")}
    assert ("m03", "Update", "") in got and ("m00", "Update", "") not in got


NAMES = st.sampled_from("abc")
containers = st.lists(st.fixed_dictionaries({"name": NAMES}, optional={
    "image": st.sampled_from(["i1", "i2"]), "args": st.lists(st.sampled_from(["-v", "-q"]), min_size=1, max_size=2)}),
    unique_by=lambda c: c["name"], max_size=3)


class ContainerOwnership(RuleBasedStateMachine):
    """Two appliers and an updater on one Pod's containers (an associative list keyed by
    name): whatever they do, every item keeps its key, an applier owns exactly what it
    just applied, what an apply sets is there afterwards, and nobody owns a field the
    object does not have."""

    def __init__(self):
        super().__init__()
        self.pod = None
        self.applied: dict = {}  # manager -> the set its entry must hold

    def _read_back(self):
        entries = {e.manager: e.fields for e in fieldmanager.decode(self.pod.metadata)}
        self.applied = {m: entries.get(m, set()) for m in self.applied}

    @rule(manager=st.sampled_from(["a1", "a2"]), items=containers, force=st.booleans())
    def apply(self, manager, items, force):
        config = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": items}}
        try:
            self.pod = fieldmanager.apply(PODS, self.pod, config, Manager(manager), force=force)
        except ApiError as e:
            assert e.reason == "Conflict" and not force
            return
        self._read_back()
        self.applied[manager] = fieldpath.field_set(config, POD) - {f("metadata", "name")}
        live = {c["name"]: c for c in to_json(self.pod)["spec"].get("containers", [])}
        for c in items:
            for k, v in c.items():
                assert live[c["name"]][k] == v

    @rule(name=NAMES, image=st.sampled_from(["", "i1", "i3"]), remove=st.booleans())
    def update(self, name, image, remove):
        if self.pod is None:
            return
        new = copy.deepcopy(self.pod)
        items = [c for c in new.spec.containers if c.name == name]
        if remove and items:
            new.spec.containers.remove(items[0])
        elif items:
            items[0].image = image
        else:
            new.spec.containers.add(name=name, image=image)
        fieldmanager.track_update(PODS, self.pod, new, Manager("editor"))
        self.pod = new
        self._read_back()

    @invariant()
    def consistent(self):
        if self.pod is None:
            return
        obj = to_json(self.pod)
        assert all(c.get("name") for c in obj["spec"].get("containers", []))
        # every path the object has, as Go's JSON shows it
        present = fieldpath.compare({"metadata": {}, "spec": {}}, obj, POD).added
        entries = fieldmanager.decode(self.pod.metadata)
        for e in entries:
            assert e.fields <= present, (e.manager, e.fields - present)
            if e.operation == "Apply":
                assert e.fields == self.applied.get(e.manager, set()), e.manager


TestContainerOwnership = ContainerOwnership.TestCase
TestContainerOwnership.settings = settings(max_examples=60, stateful_step_count=10, deadline=None)


def test_an_item_kept_for_another_owner_keeps_its_key():
    """An applier lets go of a container whose image an updater changed since: the item
    stays (the updater owns part of it), with its name, without what only the applier set."""
    config = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
              "spec": {"containers": [{"name": "a", "image": "i1", "args": ["-v"]}]}}
    pod = fieldmanager.apply(PODS, None, config, Manager("applier"), force=False)
    edited = copy.deepcopy(pod)
    edited.spec.containers[0].image = "i2"
    fieldmanager.track_update(PODS, pod, edited, Manager("editor"))
    config["spec"]["containers"] = []
    after = fieldmanager.apply(PODS, edited, config, Manager("applier"), force=False)
    assert to_json(after)["spec"]["containers"] == [{"name": "a", "image": "i2"}]
