"""The kubelet's container environment and $(VAR) expansion, table-tested with
Kubernetes' own cases (expand_test.go; TestMakeEnvironmentVariables without its
Service-link rows, which this cluster does not make)."""

from __future__ import annotations

import pytest

from apiserver.pb import core_pb2, meta_pb2
from node.kubelet import env as envmod
from node.kubelet.env import ContainerConfigError, environment, expand_command_and_args
from node.kubelet.expansion import expand, mapping_for

HAS_ENV_FROM = "env_from" in core_pb2.Container.DESCRIPTOR.fields_by_name
HAS_RESOURCE_FIELD_REF = "resource_field_ref" in core_pb2.EnvVarSource.DESCRIPTOR.fields_by_name
needs_env_from = pytest.mark.skipif(not HAS_ENV_FROM,
                                    reason="core.proto has no Container.env_from yet (branch kinds adds it)")

# ---- expansion (expand_test.go) ----

CONTEXT = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}
EXPANSION_CASES = [
    ("whole string", "$(VAR_A)", "A"),
    ("repeat", "$(VAR_A)-$(VAR_A)", "A-A"),
    ("beginning", "$(VAR_A)-1", "A-1"),
    ("middle", "___$(VAR_B)___", "___B___"),
    ("end", "___$(VAR_C)", "___C"),
    ("compound", "$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
    ("escape & expand", "$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
    ("compound escape", "$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
    ("mixed in escapes", "f000-$$VAR_A", "f000-$VAR_A"),
    ("backslash escape ignored", "foo\\$(VAR_C)bar", "foo\\Cbar"),
    ("backslash escape ignored 2", "foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
    ("lots of backslashes", "foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
    ("nested var references", "$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
    ("nested var references second type", "$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
    ("value is a reference", "$(VAR_REF)", "$(VAR_A)"),
    ("value is a reference x 2", "%%$(VAR_REF)--$(VAR_REF)%%", "%%$(VAR_A)--$(VAR_A)%%"),
    ("empty var", "foo$(VAR_EMPTY)bar", "foobar"),
    ("unterminated expression", "foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
    ("expression without operator", "f00__(VAR_A)__", "f00__(VAR_A)__"),
    ("shell special vars pass through", "$?_boo_$!", "$?_boo_$!"),
    ("bare operators are ignored", "$VAR_A", "$VAR_A"),
    ("undefined vars are passed through", "$(VAR_DNE)", "$(VAR_DNE)"),
    ("multiple (even) operators, var undefined", "$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
    ("multiple (even) operators, var defined", "$$$$$$(VAR_A)", "$$$(VAR_A)"),
    ("multiple (odd) operators, var undefined", "$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
    ("multiple (odd) operators, var defined", "$$$$$$$(VAR_A)", "$$$A"),
    ("missing open expression", "$VAR_A)", "$VAR_A)"),
    ("shell syntax ignored", "${VAR_A}", "${VAR_A}"),
    ("trailing incomplete expression not consumed", "$(VAR_B)_______$(A", "B_______$(A"),
    ("trailing incomplete expression, no content", "$(VAR_C)_______$(", "C_______$("),
    ("operator at end of input string is preserved", "$(VAR_A)foobarzab$", "Afoobarzab$"),
    ("shell escaped incomplete expr", "foo-\\$(VAR_A", "foo-\\$(VAR_A"),
    ("lots of $( in middle", "--$($($($($--", "--$($($($($--"),
    ("lots of $( in beginning", "$($($($($--foo$(", "$($($($($--foo$("),
    ("lots of $( at end", "foo0--$($($($(", "foo0--$($($($("),
    ("escaped operators in variable names are not escaped", "$(foo$$var)", "$(foo$$var)"),
    ("newline not expanded", "\n", "\n"),
]


@pytest.mark.parametrize("name,text,want", EXPANSION_CASES, ids=[c[0] for c in EXPANSION_CASES])
def test_expansion_cases(name, text, want):
    assert expand(text, mapping_for(CONTEXT)) == want
    # the same through two contexts (TestMappingDual)
    dual = mapping_for({"VAR_A": "A", "VAR_EMPTY": ""}, {"VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)"})
    assert expand(text, dual) == want


def test_map_reference_resolves_in_declaration_order():
    declared = {"FOO": "bar", "ZOO": "$(FOO)-1", "BLU": "$(ZOO)-2"}
    lookup = mapping_for(declared)
    for name in ("FOO", "ZOO", "BLU"):
        declared[name] = expand(declared[name], lookup)
    assert declared == {"FOO": "bar", "ZOO": "bar-1", "BLU": "bar-1-2"}


# ---- the environment ----

def _pod(ns="test1", **spec) -> core_pb2.Pod:
    return core_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name="dapi-test-pod-name", namespace=ns, uid="uid-1234",
                                     labels={"app": "web", "tier": "x\"y"},
                                     annotations={"note": "hello"}),
        spec=core_pb2.PodSpec(service_account_name="special", node_name="node-name", **spec))


def _field(name, path, api_version="v1"):
    return core_pb2.EnvVar(name=name, value_from=core_pb2.EnvVarSource(
        field_ref=core_pb2.ObjectFieldSelector(api_version=api_version, field_path=path)))


def _key_ref(field, name, obj, key, optional):
    var = core_pb2.EnvVar(name=name)
    sel = getattr(var.value_from, field)   # the selector's message type differs across core.proto versions
    sel.name, sel.key = obj, key
    if optional is not None:
        sel.optional = optional
    return var


def _cm_key(name, cm, key, optional=None):
    return _key_ref("config_map_key_ref", name, cm, key, optional)


def _secret_key(name, secret, key, optional=None):
    return _key_ref("secret_key_ref", name, secret, key, optional)


class Store:
    """get(kind, namespace, name) over a dict, counting reads."""

    def __init__(self, *objects):
        self.objects = {(type(o).__name__, o.metadata.namespace, o.metadata.name): o for o in objects}
        self.reads: list[tuple[str, str, str]] = []

    def __call__(self, kind, namespace, name):
        self.reads.append((kind, namespace, name))
        return self.objects.get((kind, namespace, name))


def _cm(name, ns="test1", **data):
    return core_pb2.ConfigMap(metadata=meta_pb2.ObjectMeta(name=name, namespace=ns), data=data)


def _secret(name, ns="test1", **data):
    return core_pb2.Secret(metadata=meta_pb2.ObjectMeta(name=name, namespace=ns),
                           data={k: v.encode() if isinstance(v, str) else v for k, v in data.items()})


def test_downward_api_fields():
    c = core_pb2.Container(name="c", env=[
        _field("POD_NAME", "metadata.name"), _field("POD_NAMESPACE", "metadata.namespace"),
        _field("POD_UID", "metadata.uid"), _field("POD_NODE_NAME", "spec.nodeName"),
        _field("POD_SERVICE_ACCOUNT_NAME", "spec.serviceAccountName"),
        _field("POD_IP", "status.podIP"), _field("POD_IPS", "status.podIPs"),
        _field("HOST_IP", "status.hostIP"), _field("HOST_IPS", "status.hostIPs"),
        _field("APP", "metadata.labels['app']"), _field("MISSING", "metadata.labels['nope']"),
        _field("NOTE", "metadata.annotations['note']"), _field("LABELS", "metadata.labels"),
        _field("DEFAULTED_VERSION", "metadata.name", api_version="")])
    got = environment(_pod("downward-api"), c, None, pod_ips=["1.2.3.4", "fd00::6"],
                      host_ips=["10.250.0.1", "fd00::1"]).as_dict()
    assert got == {"POD_NAME": "dapi-test-pod-name", "POD_NAMESPACE": "downward-api", "POD_UID": "uid-1234",
                   "POD_NODE_NAME": "node-name", "POD_SERVICE_ACCOUNT_NAME": "special",
                   "POD_IP": "1.2.3.4", "POD_IPS": "1.2.3.4,fd00::6",
                   "HOST_IP": "10.250.0.1", "HOST_IPS": "10.250.0.1,fd00::1",
                   "APP": "web", "MISSING": "", "NOTE": "hello",
                   "LABELS": 'app="web"\ntier="x\\"y"', "DEFAULTED_VERSION": "dapi-test-pod-name"}


@pytest.mark.parametrize("pod_ips,want_ip,want_ips", [
    (["fd00::6", "1.2.3.4"], "1.2.3.4", "1.2.3.4,fd00::6"),            # reverse order: the node's family first
    (["1.2.3.4", "192.168.1.1.", "fd00::6"], "1.2.3.4", "1.2.3.4,fd00::6"),  # one per family, bad ones dropped
    ([], "", ""),
])
def test_pod_ips_sorted_by_node_family(pod_ips, want_ip, want_ips):
    c = core_pb2.Container(name="c", env=[_field("POD_IP", "status.podIP"), _field("POD_IPS", "status.podIPs")])
    got = environment(_pod(), c, pod_ips=pod_ips, host_ips=["10.250.0.1"]).as_dict()
    assert got == {"POD_IP": want_ip, "POD_IPS": want_ips}


@pytest.mark.parametrize("path,api_version,message", [
    ("spec.restartPolicy", "v1", "unsupported fieldPath: spec.restartPolicy"),
    ("status.nope", "v1", "field label not supported: status.nope"),
    ("spec.nodeName['x']", "v1", "field label does not support subscript: spec.nodeName['x']"),
    ("metadata.name", "v2", "unsupported pod version: v2"),
])
def test_downward_api_errors(path, api_version, message):
    c = core_pb2.Container(name="c", env=[_field("X", path, api_version)])
    with pytest.raises(ContainerConfigError) as e:
        environment(_pod(), c)
    assert str(e.value) == message and e.value.reason == "CreateContainerConfigError"


def test_env_expansion():
    """Upstream's "env expansion" row: values see the variables declared before them only."""
    c = core_pb2.Container(name="c", env=[
        core_pb2.EnvVar(name="TEST_LITERAL", value="test-test-test"),
        _field("POD_NAME", "metadata.name"),
        core_pb2.EnvVar(name="OUT_OF_ORDER_TEST", value="$(OUT_OF_ORDER_TARGET)"),
        core_pb2.EnvVar(name="OUT_OF_ORDER_TARGET", value="FOO"),
        core_pb2.EnvVar(name="EMPTY_VAR"),
        core_pb2.EnvVar(name="EMPTY_TEST", value="foo-$(EMPTY_VAR)"),
        core_pb2.EnvVar(name="POD_NAME_TEST2", value="test2-$(POD_NAME)"),
        core_pb2.EnvVar(name="POD_NAME_TEST3", value="$(POD_NAME_TEST2)-3"),
        core_pb2.EnvVar(name="LITERAL_TEST", value="literal-$(TEST_LITERAL)"),
        core_pb2.EnvVar(name="TEST_UNDEFINED", value="$(UNDEFINED_VAR)"),
    ])
    got = environment(_pod(), c)
    assert got.vars == [
        ("TEST_LITERAL", "test-test-test"), ("POD_NAME", "dapi-test-pod-name"),
        ("OUT_OF_ORDER_TEST", "$(OUT_OF_ORDER_TARGET)"), ("OUT_OF_ORDER_TARGET", "FOO"),
        ("EMPTY_VAR", ""), ("EMPTY_TEST", "foo-"), ("POD_NAME_TEST2", "test2-dapi-test-pod-name"),
        ("POD_NAME_TEST3", "test2-dapi-test-pod-name-3"), ("LITERAL_TEST", "literal-test-test-test"),
        ("TEST_UNDEFINED", "$(UNDEFINED_VAR)")]
    assert got.events == []


def test_key_refs_read_configmaps_and_secrets_once():
    store = Store(_cm("cfg", level="debug", color="blue"), _secret("creds", password="s3cr\xe9t"))
    c = core_pb2.Container(name="c", env=[
        _cm_key("LEVEL", "cfg", "level"), _cm_key("COLOR", "cfg", "color"),
        _secret_key("PASSWORD", "creds", "password"),
        core_pb2.EnvVar(name="URL", value="http://$(PASSWORD)@host/$(LEVEL)")])
    got = environment(_pod(), c, store).as_dict()
    assert got == {"LEVEL": "debug", "COLOR": "blue", "PASSWORD": "s3cr\xe9t",
                   "URL": "http://s3cr\xe9t@host/debug"}
    assert sorted(store.reads) == [("ConfigMap", "test1", "cfg"), ("Secret", "test1", "creds")]


def test_secret_bytes_survive_exactly():
    raw = b"\xff\x00bin"
    c = core_pb2.Container(name="c", env=[_secret_key("RAW", "s", "raw")])
    got = environment(_pod(), c, Store(_secret("s", raw=raw)))
    assert dict(got.as_bytes())["RAW"] == raw


@pytest.mark.parametrize("var,message", [
    (_cm_key("X", "missing-config-map", "key"), 'configmap "missing-config-map" not found'),
    (_cm_key("X", "missing-config-map", "key", optional=False), 'configmap "missing-config-map" not found'),
    (_cm_key("X", "cfg", "nokey"), "couldn't find key nokey in ConfigMap test1/cfg"),
    (_secret_key("X", "missing-secret", "key"), 'secret "missing-secret" not found'),
    (_secret_key("X", "creds", "nokey"), "couldn't find key nokey in Secret test1/creds"),
])
def test_missing_required_sources_are_config_errors(var, message):
    c = core_pb2.Container(name="c", env=[var])
    with pytest.raises(ContainerConfigError) as e:
        environment(_pod(), c, Store(_cm("cfg", a="b"), _secret("creds", a="b")))
    assert str(e.value) == message and e.value.reason == "CreateContainerConfigError"


@pytest.mark.parametrize("var", [
    _cm_key("POD_NAME", "missing-config-map", "key", optional=True),   # configmapkeyref_missing_optional
    _cm_key("POD_NAME", "cfg", "key", optional=True),                  # configmapkeyref_missing_key_optional
    _secret_key("POD_NAME", "missing-secret", "key", optional=True),   # secretkeyref_missing_optional
    _secret_key("POD_NAME", "creds", "key", optional=True),            # secretkeyref_missing_key_optional
])
def test_optional_missing_sources_leave_the_variable_out(var):
    c = core_pb2.Container(name="c", env=[var, core_pb2.EnvVar(name="KEPT", value="$(POD_NAME)")])
    got = environment(_pod(), c, Store(_cm("cfg", a="b"), _secret("creds", a="b")))
    assert got.vars == [("KEPT", "$(POD_NAME)")]


def test_a_failing_getter_is_a_config_error():
    def broken(kind, ns, name):
        raise ConnectionError("apiserver unreachable at 127.0.0.1:1")
    with pytest.raises(ContainerConfigError, match="apiserver unreachable"):
        environment(_pod(), core_pb2.Container(name="c", env=[_cm_key("X", "cfg", "k")]), broken)
    with pytest.raises(ContainerConfigError, match="couldn't get configMap test1/cfg, no kubeClient defined"):
        environment(_pod(), core_pb2.Container(name="c", env=[_cm_key("X", "cfg", "k")]), None)


def test_command_and_args_expand_against_the_final_environment():
    c = core_pb2.Container(name="c", command=["/bin/$(SHELL_NAME)", "-c"],
                           args=["echo $(GREETING) $$(GREETING) $(UNSET)"],
                           env=[core_pb2.EnvVar(name="SHELL_NAME", value="sh"),
                                core_pb2.EnvVar(name="GREETING", value="hi")])
    env = environment(_pod(), c)
    assert expand_command_and_args(c, env.vars) == (["/bin/sh", "-c"], ["echo hi $(GREETING) $(UNSET)"])


def test_env_var_names():
    for good in ("A", "my.env-name", "MY_ENV.NAME", "MyEnvName1", "_x", "-x", ".x"):
        assert envmod.is_env_var_name(good), good
    for bad in ("", "1badkey", "2alsobad", "a=b", "a b", ".", "..", "..x", "é"):
        assert not envmod.is_env_var_name(bad), bad


@pytest.mark.parametrize("resource,divisor,limits,requests,allocatable,want", [
    ("limits.cpu", "", {"cpu": "250m"}, {}, None, "1"),            # cores, rounded up
    ("limits.cpu", "1m", {"cpu": "250m"}, {}, None, "250"),
    ("requests.cpu", "1m", {}, {"cpu": "1.5"}, None, "1500"),
    ("limits.memory", "", {"memory": "64Mi"}, {}, None, str(64 * 2**20)),
    ("limits.memory", "1Mi", {"memory": "64Mi"}, {}, None, "64"),
    ("limits.memory", "1Gi", {"memory": "1500Mi"}, {}, None, "2"),
    ("limits.memory", "1Mi", {}, {}, {"memory": "2Gi"}, "2048"),    # no limit: the node's allocatable
    ("requests.memory", "", {}, {}, {"memory": "2Gi"}, "0"),
])
def test_resource_field_values(resource, divisor, limits, requests, allocatable, want):
    c = core_pb2.Container(name="c", resources=core_pb2.ResourceRequirements(limits=limits, requests=requests))
    assert envmod.resource_value(resource, divisor, c, allocatable) == want


def test_resource_field_unknown_resource():
    with pytest.raises(ContainerConfigError, match="unsupported container resource : limits.gpu"):
        envmod.resource_value("limits.gpu", "", core_pb2.Container(name="c"))


# ---- envFrom ----

def _env_from(prefix="", cm=None, secret=None, optional=None):
    source = core_pb2.EnvFromSource(prefix=prefix)
    ref = source.config_map_ref if cm else source.secret_ref
    ref.name = cm or secret
    if optional is not None:
        ref.optional = optional
    return source


@needs_env_from
def test_env_from_configmap_with_prefix_and_overrides():
    """Upstream's "configmap" row: env overrides envFrom, and sees its variables."""
    c = core_pb2.Container(name="c", env_from=[_env_from(cm="test-config-map"), _env_from("p_", cm="test-config-map")],
                           env=[core_pb2.EnvVar(name="TEST_LITERAL", value="test-test-test"),
                                core_pb2.EnvVar(name="EXPANSION_TEST", value="$(REPLACE_ME)"),
                                core_pb2.EnvVar(name="DUPE_TEST", value="ENV_VAR")])
    store = Store(_cm("test-config-map", REPLACE_ME="FROM_CONFIG_MAP", DUPE_TEST="CONFIG_MAP"))
    got = environment(_pod(), c, store)
    assert got.as_dict() == {"TEST_LITERAL": "test-test-test", "REPLACE_ME": "FROM_CONFIG_MAP",
                             "EXPANSION_TEST": "FROM_CONFIG_MAP", "DUPE_TEST": "ENV_VAR",
                             "p_REPLACE_ME": "FROM_CONFIG_MAP", "p_DUPE_TEST": "CONFIG_MAP"}
    assert got.events == [] and len(store.reads) == 1


@needs_env_from
def test_env_from_secret_with_prefix():
    c = core_pb2.Container(name="c", env_from=[_env_from(secret="test-secret"), _env_from("p_", secret="test-secret")],
                           env=[core_pb2.EnvVar(name="EXPANSION_TEST", value="$(REPLACE_ME)"),
                                core_pb2.EnvVar(name="DUPE_TEST", value="ENV_VAR")])
    got = environment(_pod(), c, Store(_secret("test-secret", REPLACE_ME="FROM_SECRET", DUPE_TEST="SECRET")))
    assert got.as_dict() == {"REPLACE_ME": "FROM_SECRET", "EXPANSION_TEST": "FROM_SECRET", "DUPE_TEST": "ENV_VAR",
                             "p_REPLACE_ME": "FROM_SECRET", "p_DUPE_TEST": "SECRET"}


@needs_env_from
@pytest.mark.parametrize("source,message", [
    (lambda: _env_from(cm="test-config-map"), 'configmap "test-config-map" not found'),
    (lambda: _env_from(secret="test-secret"), 'secret "test-secret" not found'),
])
def test_env_from_missing_is_an_error(source, message):
    with pytest.raises(ContainerConfigError) as e:
        environment(_pod(), core_pb2.Container(name="c", env_from=[source()]), Store())
    assert str(e.value) == message


@needs_env_from
def test_env_from_missing_optional_is_skipped():
    c = core_pb2.Container(name="c", env_from=[_env_from(cm="missing-config-map", optional=True),
                                               _env_from(secret="missing-secret", optional=True)])
    assert environment(_pod("test"), c, Store()).vars == []


@needs_env_from
def test_env_from_invalid_keys_skipped_with_event():
    """Upstream's configmap_invalid_keys / secret_invalid_keys rows and event texts."""
    c = core_pb2.Container(name="c", env_from=[_env_from(cm="test-config-map"), _env_from(secret="test-secret")])
    store = Store(_cm("test-config-map", "test", **{"1234": "abc", "1z": "abc", "key": "value"}),
                  _secret("test-secret", "test", **{"1234.name": "abc", "ok": "v"}))
    got = environment(_pod("test"), c, store)
    assert got.as_dict() == {"key": "value", "ok": "v"}
    assert [(e.type, e.reason, e.message) for e in got.events] == [
        ("Warning", "InvalidEnvironmentVariableNames",
         "Keys [1234, 1z] from the EnvFrom configMap test/test-config-map were skipped since they are "
         "considered invalid environment variable names."),
        ("Warning", "InvalidEnvironmentVariableNames",
         "Keys [1234.name] from the EnvFrom secret test/test-secret were skipped since they are "
         "considered invalid environment variable names.")]


@needs_env_from
def test_env_from_prefix_makes_keys_valid():
    c = core_pb2.Container(name="c", env_from=[_env_from("p_", cm="test-config-map")])
    got = environment(_pod("test"), c, Store(_cm("test-config-map", "test", **{"1234": "abc"})))
    assert got.as_dict() == {"p_1234": "abc"} and got.events == []
