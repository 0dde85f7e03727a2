"""Kubernetes JSON form of objects and JSON merge patch.

Round trips run over generated messages of every kind (built field by field
from the protobuf descriptors, so a new field is covered without touching this
file); merge patch is checked against RFC 7386's own examples and its laws.
"""

from __future__ import annotations

import base64
import copy
import json

import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from apiserver import resources
from apiserver.errors import ApiError
from apiserver.manifest import apply_merge_patch, from_dict, merge_patch, to_dict
from apiserver.pb import apps_pb2, core_pb2


def a_pod() -> core_pb2.Pod:
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = "web-0", "default"
    p.metadata.labels["app"] = "web"
    c = p.spec.containers.add(name="web", image="nginx:1.25")
    c.ports.add(container_port=80, protocol="TCP")
    c.resources.requests["cpu"] = "100m"
    p.spec.termination_grace_period_seconds = 30
    p.spec.volumes.add(name="scratch").empty_dir.SetInParent()
    p.status.pod_ip = "10.0.0.7"
    p.status.host_ip = "192.168.0.2"
    return p


# ---- to_dict ----

def test_to_dict_shape():
    d = to_dict(a_pod())
    assert list(d)[:2] == ["apiVersion", "kind"]
    assert (d["apiVersion"], d["kind"]) == ("v1", "Pod")
    assert d["metadata"] == {"name": "web-0", "namespace": "default", "labels": {"app": "web"}}
    assert d["spec"]["containers"] == [{"name": "web", "image": "nginx:1.25",
                                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                        "resources": {"requests": {"cpu": "100m"}}}]
    assert d["spec"]["terminationGracePeriodSeconds"] == 30   # int64 as a JSON number
    assert d["spec"]["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    assert d["status"] == {"podIP": "10.0.0.7", "hostIP": "192.168.0.2"}
    json.dumps(d)  # plain JSON values only


@pytest.mark.parametrize("kind", [r.kind for r in resources.RESOURCES])
def test_api_version_of_each_kind(kind):
    res = resources.BY_KIND[kind]
    d = to_dict(res.new())
    assert d == {"apiVersion": res.api_version, "kind": kind}


def test_optional_zero_values_are_shown_and_plain_zero_values_are_not():
    rs = apps_pb2.ReplicaSet()
    rs.spec.replicas = 0
    rs.spec.min_ready_seconds = 0
    d = to_dict(rs)
    assert d["spec"] == {"replicas": 0}


def test_secret_data_is_base64():
    s = core_pb2.Secret(data={"k": b"\x00hello\xff"}, type="Opaque")
    d = to_dict(s)
    assert d["data"] == {"k": base64.b64encode(b"\x00hello\xff").decode()}
    assert from_dict(d) == s


# ---- from_dict ----

def test_from_dict_reads_a_manifest():
    d = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{
                    "name": "web", "image": "nginx",
                    "resources": {"limits": {"cpu": 1, "memory": "128Mi"},
                                  "requests": {"cpu": 0.5}},
                    "livenessProbe": {"httpGet": {"path": "/", "port": 8080}},
                    "readinessProbe": {"tcpSocket": {"port": "http"}},
                }]},
            },
        },
    }
    dep = from_dict(d)
    assert isinstance(dep, apps_pb2.Deployment)
    assert dep.spec.replicas == 3
    assert dep.spec.strategy.rolling_update.max_surge == "1"
    c = dep.spec.template.spec.containers[0]
    assert dict(c.resources.limits) == {"cpu": "1", "memory": "128Mi"}
    assert dict(c.resources.requests) == {"cpu": "0.5"}
    assert c.liveness_probe.http_get.port == "8080"
    assert c.readiness_probe.tcp_socket.port == "http"


KUBELET_POD_YAML = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  dnsPolicy: ClusterFirst
  enableServiceLinks: false
  shareProcessNamespace: true
  securityContext: {runAsUser: 0, runAsGroup: 1000, fsGroup: 2000, supplementalGroups: [4, 5]}
  initContainers:
  - name: proxy
    image: busybox
    restartPolicy: Always
    readinessProbe: {tcpSocket: {port: 15001}, terminationGracePeriodSeconds: 3}
  containers:
  - name: web
    image: nginx:1.25
    stdin: true
    tty: true
    envFrom:
    - {prefix: CM_, configMapRef: {name: settings, optional: true}}
    - secretRef: {name: creds}
    env:
    - name: USER
      valueFrom: {secretKeyRef: {name: creds, key: user, optional: false}}
    lifecycle:
      postStart: {httpGet: {path: /warm, port: 8080, httpHeaders: [{name: X-Hook, value: "1"}]}}
      preStop: {sleep: {seconds: 5}}
    livenessProbe:
      exec: {command: ["true"]}
      initialDelaySeconds: 2
      timeoutSeconds: 1
      periodSeconds: 10
      successThreshold: 1
      failureThreshold: 3
      terminationGracePeriodSeconds: 7
    terminationMessagePath: /dev/termination-log
    terminationMessagePolicy: FallbackToLogsOnError
    securityContext:
      runAsUser: 1000
      runAsNonRoot: true
      privileged: false
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
  volumes:
  - name: conf
    configMap:
      name: settings
      defaultMode: 420
      optional: true
      items: [{key: app.yaml, path: conf/app.yaml, mode: 256}]
  - name: tls
    secret: {secretName: tls, defaultMode: 256, items: [{key: tls.crt, path: tls.crt}]}
  - name: cache
    emptyDir: {medium: Memory, sizeLimit: 64Mi}
status:
  hostIP: 192.168.0.2
  hostIPs: [{ip: 192.168.0.2}]
  conditions: [{type: Ready, status: "True", lastProbeTime: null, observedGeneration: 1}]
  initContainerStatuses:
  - name: proxy
    ready: true
    started: true
    image: docker.io/library/busybox:latest
    imageID: docker.io/library/busybox@sha256:abc
    containerID: runc://1234
    state: {running: {startedAt: "2026-01-01T00:00:00Z"}}
  containerStatuses:
  - name: web
    restartCount: 1
    lastState:
      terminated: {exitCode: 137, signal: 9, reason: Error, containerID: runc://0042}
"""


def test_kubelet_fields_round_trip_with_kubernetes_json_names():
    """A manifest in upstream's spelling (YAML, as kctl reads it) decodes into
    the snake_case fields a kubelet reads and prints back unchanged."""
    import yaml

    d = yaml.safe_load(KUBELET_POD_YAML)
    p = from_dict(d)
    side, web = p.spec.init_containers[0], p.spec.containers[0]
    assert side.restart_policy == "Always"
    assert side.readiness_probe.termination_grace_period_seconds == 3
    assert [e.prefix for e in web.env_from] == ["CM_", ""]
    assert web.env_from[0].config_map_ref.name == "settings" and web.env_from[0].config_map_ref.optional
    assert web.env_from[1].secret_ref.name == "creds"
    assert not web.env_from[1].secret_ref.HasField("optional")
    assert web.env[0].value_from.secret_key_ref.HasField("optional")
    assert web.lifecycle.post_start.http_get.port == "8080"
    assert web.lifecycle.post_start.http_get.http_headers[0].name == "X-Hook"
    assert web.lifecycle.pre_stop.sleep.seconds == 5
    assert web.liveness_probe.termination_grace_period_seconds == 7
    assert (web.termination_message_path, web.termination_message_policy) == \
        ("/dev/termination-log", "FallbackToLogsOnError")
    assert web.stdin and web.tty
    sc = web.security_context
    assert (sc.run_as_user, sc.run_as_non_root, sc.read_only_root_filesystem) == (1000, True, True)
    assert sc.HasField("privileged") and not sc.privileged  # an explicit false is kept
    assert list(sc.capabilities.drop) == ["ALL"]
    assert p.spec.security_context.run_as_user == 0 and p.spec.security_context.HasField("run_as_user")
    assert list(p.spec.security_context.supplemental_groups) == [4, 5]
    assert p.spec.share_process_namespace and not p.spec.enable_service_links
    conf, tls = p.spec.volumes[0], p.spec.volumes[1]
    assert (conf.config_map.name, conf.config_map.default_mode, conf.config_map.optional) == \
        ("settings", 0o644, True)
    assert conf.config_map.items[0].mode == 0o400
    assert tls.secret.default_mode == 256 and not tls.secret.items[0].HasField("mode")
    assert p.spec.volumes[2].empty_dir.size_limit == "64Mi"
    st_ = p.status
    assert st_.host_ips[0].ip == "192.168.0.2"
    assert st_.conditions[0].observed_generation == 1
    init = st_.init_container_statuses[0]
    assert (init.image_id, init.container_id, init.started) == \
        ("docker.io/library/busybox@sha256:abc", "runc://1234", True)
    term = st_.container_statuses[0].last_state.terminated
    assert (term.exit_code, term.signal, term.container_id) == (137, 9, "runc://0042")
    expected = copy.deepcopy(d)
    del expected["status"]["conditions"][0]["lastProbeTime"]  # null is absent
    # IntOrString ports come back as their text (see the module docstring)
    expected["spec"]["initContainers"][0]["readinessProbe"]["tcpSocket"]["port"] = "15001"
    expected["spec"]["containers"][0]["lifecycle"]["postStart"]["httpGet"]["port"] = "8080"
    got = to_dict(p)
    assert got == expected
    assert from_dict(json.loads(json.dumps(got))) == p


def test_node_daemon_endpoints_and_images_use_kubernetes_json_names():
    n = from_dict({"kind": "Node", "metadata": {"name": "n1"}, "status": {
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "images": [{"names": ["docker.io/library/busybox:latest"], "sizeBytes": 4261550}],
        "nodeInfo": {"machineID": "m", "systemUUID": "u", "bootID": "b", "kernelVersion": "6.1",
                     "osImage": "Debian", "containerRuntimeVersion": "runc://1.1",
                     "kubeletVersion": "v1.31", "operatingSystem": "linux",
                     "architecture": "amd64"},
        "conditions": [{"type": "Ready", "status": "True",
                        "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}})
    s = n.status
    assert s.daemon_endpoints.kubelet_endpoint.port == 10250
    assert (s.images[0].size_bytes, s.node_info.system_uuid, s.node_info.boot_id) == \
        (4261550, "u", "b")
    out = to_dict(n)["status"]
    assert out["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    assert out["nodeInfo"]["systemUUID"] == "u" and out["images"][0]["sizeBytes"] == 4261550
    assert "port" in _bad_request({"kind": "Node", "status": {
        "daemonEndpoints": {"kubeletEndpoint": {"port": 10250}}}})


def test_field_numbers_are_upstreams():
    """A few numbers that differed from k8s.io/api/core/v1's before and that
    a protobuf client would depend on; flattened inline structs are 100*N+M."""
    def number(msg, name):
        return msg.DESCRIPTOR.fields_by_name[name].number

    assert number(core_pb2.Container, "startup_probe") == 22
    assert number(core_pb2.Container, "lifecycle") == 12
    assert number(core_pb2.Container, "env_from") == 19
    assert number(core_pb2.Container, "restart_policy") == 24
    assert [number(core_pb2.Probe, f) for f in (
        "initial_delay_seconds", "timeout_seconds", "period_seconds", "success_threshold",
        "failure_threshold", "termination_grace_period_seconds")] == [2, 3, 4, 5, 6, 7]
    assert number(core_pb2.Probe, "exec") == 101
    assert number(core_pb2.Volume, "config_map") == 219
    assert number(core_pb2.NodeSystemInfo, "kernel_version") == 4
    assert number(core_pb2.ContainerStatus, "image_id") == 7
    assert number(core_pb2.PodStatus, "init_container_statuses") == 10
    assert number(core_pb2.PodCondition, "last_transition_time") == 4
    assert number(apps_pb2.DeploymentCondition, "last_update_time") == 6


def test_service_target_port_number():
    svc = from_dict({"kind": "Service", "spec": {"ports": [{"port": 80, "targetPort": 8080}]}})
    assert svc.spec.ports[0].target_port == "8080"
    assert to_dict(svc)["spec"]["ports"][0] == {"port": 80, "targetPort": "8080"}


@pytest.mark.parametrize("value,expected", [(30, 30), ("30", 30), (30.0, 30), ("-5", -5),
                                            ("+7", 7)])
def test_integers_accept_numbers_and_decimal_strings(value, expected):
    p = from_dict({"kind": "Pod", "spec": {"terminationGracePeriodSeconds": value}})
    assert p.spec.termination_grace_period_seconds == expected


def test_missing_api_version_is_accepted_and_nulls_are_absent():
    p = from_dict({"kind": "Pod", "metadata": {"name": "p", "labels": None},
                   "spec": {"nodeName": None, "containers": [{"name": "c", "image": None}]}})
    assert p.metadata.name == "p" and not p.metadata.labels
    assert p.spec.containers[0].image == ""


def test_empty_object_marks_a_choice():
    p = from_dict({"kind": "Pod", "spec": {"volumes": [{"name": "v", "emptyDir": {}}]}})
    assert p.spec.volumes[0].HasField("empty_dir")
    assert not p.spec.volumes[0].HasField("host_path")


def _bad_request(d) -> str:
    with pytest.raises(ApiError) as e:
        from_dict(d)
    assert e.value.reason == "BadRequest"
    return e.value.message


def test_unknown_fields_are_listed_with_their_paths():
    msg = _bad_request({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "nmae": "x"},
                        "spec": {"foo": 1, "containers": [{"name": "c"}, {"imgae": "x"}]},
                        "extra": True})
    assert msg == ('Pod in version "v1" cannot be handled as a Pod: strict decoding error: '
                   'unknown field "metadata.nmae", unknown field "spec.foo", '
                   'unknown field "spec.containers[1].imgae", unknown field "extra"')


def test_proto_field_names_are_not_json_names():
    msg = _bad_request({"kind": "Pod", "spec": {"node_name": "n"}})
    assert 'unknown field "spec.node_name"' in msg


@pytest.mark.parametrize("d,fragment", [
    ({"kind": "Pod", "spec": {"containers": {}}},
     "cannot unmarshal object into Go struct field spec.containers of type array"),
    ({"kind": "Pod", "spec": "x"}, "cannot unmarshal string into Go struct field spec of type object"),
    ({"kind": "Pod", "metadata": {"labels": {"a": 1}}},
     "cannot unmarshal number into Go struct field metadata.labels.a of type string"),
    ({"kind": "Pod", "metadata": {"labels": ["a"]}}, "of type map"),
    ({"kind": "Pod", "metadata": {"name": 5}}, "metadata.name of type string"),
    ({"kind": "Pod", "spec": {"hostNetwork": "true"}}, "spec.hostNetwork of type bool"),
    ({"kind": "Pod", "spec": {"terminationGracePeriodSeconds": 1.5}}, "of type int64"),
    ({"kind": "Pod", "spec": {"terminationGracePeriodSeconds": True}}, "of type int64"),
    ({"kind": "Pod", "spec": {"terminationGracePeriodSeconds": "ten"}}, "of type int64"),
    ({"kind": "Pod", "spec": {"priority": 2 ** 31}}, "number 2147483648"),
    ({"kind": "Pod", "spec": {"containers": [None]}}, "spec.containers[0] of type object"),
    ({"kind": "Secret", "data": {"k": "not base64!"}}, "illegal base64 data in data.k"),
    ({"kind": "Secret", "data": {"k": 5}}, "data.k of type []byte"),
])
def test_wrong_types_are_bad_requests(d, fragment):
    assert fragment in _bad_request(d)


@pytest.mark.parametrize("d,expected", [
    ({"apiVersion": "v1"}, "Object 'Kind' is missing in the object"),
    ({"kind": "Widget"}, 'no kind "Widget" is registered for version "v1"'),
    ({"kind": "Pod", "apiVersion": "apps/v1"}, 'no kind "Pod" is registered for version "apps/v1"'),
    ({"kind": "Deployment", "apiVersion": "v1"},
     'no kind "Deployment" is registered for version "v1"'),
    ({"kind": 5}, 'no kind "5" is registered for version "v1"'),
])
def test_kind_and_api_version(d, expected):
    assert _bad_request(d) == expected


def test_from_dict_needs_an_object():
    assert "not a JSON object" in _bad_request(["Pod"])


# -- generated round trips over every kind --

_SCALARS = {
    FieldDescriptor.TYPE_STRING: st.text(max_size=6),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_INT32: st.integers(-2 ** 31, 2 ** 31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-2 ** 63, 2 ** 63 - 1),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=6),
}


def _fill(draw, msg, depth):
    if msg.DESCRIPTOR.full_name == "meta.v1.FieldsV1":  # JSON text, shown as that JSON
        fields = draw(st.dictionaries(st.text(max_size=4).map("f:".__add__), st.just({}), max_size=2))
        msg.raw = json.dumps(fields, separators=(",", ":"), ensure_ascii=False) if fields else ""
        return
    for field in msg.DESCRIPTOR.fields:
        if draw(st.integers(0, 3)) != 0:  # about a quarter of the fields are set
            continue
        is_map = field.type == FieldDescriptor.TYPE_MESSAGE and \
            field.message_type.GetOptions().map_entry
        if is_map:
            value_type = field.message_type.fields_by_name["value"].type
            getattr(msg, field.name).update(draw(st.dictionaries(
                st.text(max_size=4), _SCALARS[value_type], max_size=3)))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 8:
                continue
            if field.is_repeated:
                for _ in range(draw(st.integers(0, 2))):
                    _fill(draw, getattr(msg, field.name).add(), depth + 1)
            else:
                sub = getattr(msg, field.name)
                sub.SetInParent()
                _fill(draw, sub, depth + 1)
        elif field.is_repeated:
            getattr(msg, field.name).extend(draw(st.lists(_SCALARS[field.type], max_size=3)))
        else:
            setattr(msg, field.name, draw(_SCALARS[field.type]))


@st.composite
def objects(draw):
    res = draw(st.sampled_from(resources.RESOURCES))
    msg = res.new()
    _fill(draw, msg, 0)
    return msg


@settings(max_examples=300, deadline=None)
@given(objects())
def test_json_round_trip(msg):
    d = to_dict(msg)
    assert list(d)[:2] == ["apiVersion", "kind"]
    text = json.dumps(d)
    assert from_dict(json.loads(text)) == msg


@settings(max_examples=100, deadline=None)
@given(objects())
def test_empty_patch_changes_nothing(msg):
    assert apply_merge_patch(msg, "{}") == msg


# ---- merge patch ----

# RFC 7386, Appendix A
RFC_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize("target,patch,expected", RFC_EXAMPLES)
def test_rfc7386_examples(target, patch, expected):
    assert merge_patch(target, patch) == expected


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from("abc"))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from("abcd"), inner, max_size=3)),
    max_leaves=12)
json_objects = st.dictionaries(st.sampled_from("abcd"), json_values, max_size=4)


def _without_nulls(v):
    if isinstance(v, dict):
        return {k: _without_nulls(x) for k, x in v.items() if x is not None}
    return v


@settings(max_examples=500, deadline=None)
@given(json_values, json_values)
def test_merge_patch_is_idempotent_and_pure(target, patch):
    t0, p0 = copy.deepcopy(target), copy.deepcopy(patch)
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once
    assert (target, patch) == (t0, p0)  # inputs untouched


@settings(max_examples=500, deadline=None)
@given(json_values, json_objects)
def test_merge_patch_result_obeys_the_patch(target, patch):
    result = merge_patch(target, patch)
    for key, value in patch.items():
        if value is None:
            assert key not in result
        elif not isinstance(value, dict):
            assert result[key] == value
    if isinstance(target, dict):
        for key in target.keys() - patch.keys():
            assert result[key] == target[key]


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_a_null_free_patch_on_nothing_is_itself(patch):
    clean = _without_nulls(patch)
    assert merge_patch({}, clean) == clean


@settings(max_examples=300, deadline=None)
@given(json_objects)
def test_empty_patch_is_identity_on_objects(target):
    assert merge_patch(target, {}) == target


# ---- apply_merge_patch ----

def test_patch_labels_and_fields():
    p = a_pod()
    new = apply_merge_patch(p, json.dumps({"metadata": {"labels": {"app": None, "tier": "db"}},
                                           "spec": {"nodeName": "node-1"}}))
    assert dict(new.metadata.labels) == {"tier": "db"}
    assert new.spec.node_name == "node-1"
    assert new.spec.containers == p.spec.containers
    assert p.spec.node_name == "" and dict(p.metadata.labels) == {"app": "web"}  # original kept


def test_lists_are_replaced_whole():
    p = a_pod()
    new = apply_merge_patch(p, '{"spec": {"containers": [{"name": "other", "image": "busybox"}]}}')
    assert [c.name for c in new.spec.containers] == ["other"]
    assert not new.spec.containers[0].ports


def test_patch_may_repeat_kind_and_api_version_and_accepts_bytes():
    p = a_pod()
    new = apply_merge_patch(p, b'{"apiVersion": "v1", "kind": "Pod", "spec": {"hostname": "h"}}')
    assert new.spec.hostname == "h"


def test_patch_clears_a_field_with_null():
    p = a_pod()
    new = apply_merge_patch(p, '{"status": null, "spec": {"terminationGracePeriodSeconds": null}}')
    assert not new.HasField("status")
    assert not new.spec.HasField("termination_grace_period_seconds")


@pytest.mark.parametrize("patch,fragment", [
    ("{not json", "error decoding patch"),
    ("", "error decoding patch"),
    (b"\xff", "error decoding patch"),
    ("[]", "a merge patch must be a JSON object, not array"),
    ("null", "a merge patch must be a JSON object, not null"),
    ('"x"', "a merge patch must be a JSON object, not string"),
    ('{"kind": "Service"}', "the kind in the patch"),
    ('{"apiVersion": "apps/v1"}', "the API version in the patch"),
    ('{"kind": null}', "the kind in the patch"),
    ('{"spec": {"bogus": 1}}', 'unknown field "spec.bogus"'),
    ('{"spec": {"containers": 3}}', "spec.containers of type array"),
])
def test_bad_patches(patch, fragment):
    with pytest.raises(ApiError) as e:
        apply_merge_patch(a_pod(), patch)
    assert e.value.reason == "BadRequest"
    assert fragment in e.value.message
