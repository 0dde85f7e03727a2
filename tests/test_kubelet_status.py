"""The pod status the kubelet writes (node/kubelet/status.py), case by case from
Kubernetes' kubelet_pods_test.go (TestPodPhaseWithRestart*, TestConvertToAPIContainerStatuses,
TestGenerateAPIPodStatusWithReasonCache) and status/generate_test.go."""

from __future__ import annotations

import pytest
from kubelet_fixtures import T0, ctr, make_pod, runtime, sandbox

from apiserver.pb import core_pb2
from controllers.podutil import now_rfc3339
from node.kubelet import status as st
from node.kubelet.probes import READINESS, STARTUP, SUCCESS, ProbeResults
from node.kubelet.runtime_status import (CONTAINER_CREATED, CONTAINER_EXITED, CONTAINER_RUNNING,
                                         SANDBOX_NOTREADY)

R, X = CONTAINER_RUNNING, CONTAINER_EXITED
NOW = T0 + 100


def gen(pod, rt, **kw):
    kw.setdefault("runtime_name", "fake")
    kw.setdefault("host_ip", "10.250.0.1")
    kw.setdefault("now", NOW)
    return st.generate_pod_status(pod, rt, **kw)


def conds(s) -> dict:
    return {c.type: (c.status, c.reason, c.message) for c in s.conditions}


def by_name(statuses) -> dict:
    return {c.name: c for c in statuses}


def test_new_pod_is_pending_and_creating():
    pod = make_pod(("app",))
    s = gen(pod, runtime(pod, sandboxes=[]))
    assert s.phase == "Pending"
    cs = s.container_statuses[0]
    assert (cs.state.waiting.reason, cs.image, cs.ready, cs.started, cs.restart_count) == \
        ("ContainerCreating", "busybox", False, False, 0)
    c = conds(s)
    assert c["PodReadyToStartContainers"][0] == "False"
    assert c["Initialized"] == ("True", "", "")
    assert c["ContainersReady"] == ("False", "ContainersNotReady", "containers with unready status: [app]")
    assert c["Ready"] == c["ContainersReady"]
    assert c["PodScheduled"][0] == "True"
    assert s.start_time == now_rfc3339(NOW)
    assert (s.pod_ip, s.host_ip, s.qos_class) == ("", "10.250.0.1", "BestEffort")


def test_init_containers_pending_show_pod_initializing():
    pod = make_pod(("app", "side"), inits=("i1", "i2"))
    s = gen(pod, runtime(pod, containers=[ctr(pod, "i1", R)]))
    assert s.phase == "Pending"
    assert [c.name for c in s.init_container_statuses] == ["i1", "i2"]  # spec order
    assert s.init_container_statuses[0].state.HasField("running")
    assert s.init_container_statuses[1].state.waiting.reason == "PodInitializing"
    assert {c.state.waiting.reason for c in s.container_statuses} == {"PodInitializing"}
    assert conds(s)["Initialized"] == ("False", "ContainersNotInitialized",
                                       "containers with incomplete status: [i1 i2]")


def test_running_pod():
    pod = make_pod(("b", "a"))
    rt = runtime(pod, containers=[ctr(pod, "a", R, cid="aaa"), ctr(pod, "b", R, cid="bbb")])
    s = gen(pod, rt)
    assert s.phase == "Running"
    assert [c.name for c in s.container_statuses] == ["a", "b"]  # sorted by name
    a = s.container_statuses[0]
    assert a.container_id == "fake://aaa"
    assert a.state.running.started_at == now_rfc3339(T0 + 1)
    assert (a.ready, a.started, a.image, a.image_id) == (True, True, "docker.io/library/busybox:latest", "sha256:b0b0")
    assert all(v[0] == "True" for v in conds(s).values())
    assert (s.pod_ip, [p.ip for p in s.pod_ips]) == ("10.244.0.5", ["10.244.0.5"])


def test_readiness_and_startup_probes_gate_ready():
    probe = core_pb2.Probe(exec=core_pb2.ExecAction(command=["true"]))
    pod = make_pod(("app",), readiness_probe=probe, startup_probe=probe)
    rt = runtime(pod, containers=[ctr(pod, "app", R, cid="c1")])
    results = ProbeResults()
    s = gen(pod, rt, probe_results=results)
    assert (s.container_statuses[0].started, s.container_statuses[0].ready) == (False, False)
    results.set(STARTUP, "c1", SUCCESS)
    s = gen(pod, rt, probe_results=results)
    assert (s.container_statuses[0].started, s.container_statuses[0].ready) == (True, False)
    assert conds(s)["Ready"][0] == "False"
    results.set(READINESS, "c1", SUCCESS)
    s = gen(pod, rt, probe_results=results)
    assert (s.container_statuses[0].started, s.container_statuses[0].ready) == (True, True)
    assert conds(s)["Ready"][0] == "True"


def test_restarted_container_has_last_state_and_restart_count():
    pod = make_pod(("app",))
    rt = runtime(pod, containers=[ctr(pod, "app", X, exit_code=137, created=1, restart=0),
                                  ctr(pod, "app", R, created=30, restart=1)])
    cs = gen(pod, rt).container_statuses[0]
    assert cs.restart_count == 1
    assert cs.state.HasField("running")
    t = cs.last_state.terminated
    assert (t.exit_code, t.reason, t.started_at, t.finished_at) == \
        (137, "Error", now_rfc3339(T0 + 1), now_rfc3339(T0 + 6))


def test_crash_loop_back_off_waiting_with_last_state():
    # TestGenerateAPIPodStatusWithReasonCache: a cached start failure becomes the waiting reason
    pod = make_pod(("app",))
    rt = runtime(pod, containers=[ctr(pod, "app", X, exit_code=1, restart=3)])
    reasons = st.ReasonCache()
    msg = "back-off 40s restarting failed container=app pod=web_default(uid-1)"
    reasons.update("uid-1", "app", st.CRASH_LOOP_BACK_OFF, msg)
    s = gen(pod, rt, reasons=reasons)
    cs = s.container_statuses[0]
    assert (cs.state.waiting.reason, cs.state.waiting.message) == ("CrashLoopBackOff", msg)
    assert (cs.last_state.terminated.exit_code, cs.last_state.terminated.reason) == (1, "Error")
    assert cs.restart_count == 3
    assert s.phase == "Running"  # restarting containers keep the pod Running
    reasons.remove("uid-1", "app")
    cs = gen(pod, rt, reasons=reasons).container_statuses[0]
    assert cs.state.terminated.exit_code == 1  # no cached reason: the real state shows


@pytest.mark.parametrize("reason", [st.ERR_IMAGE_PULL, st.IMAGE_PULL_BACK_OFF,
                                    st.CREATE_CONTAINER_CONFIG_ERROR, st.CREATE_CONTAINER_ERROR,
                                    st.RUN_CONTAINER_ERROR])
def test_start_failures_before_the_first_run(reason):
    pod = make_pod(("app", "ok"))
    reasons = st.ReasonCache()
    reasons.update("uid-1", "app", reason, "why it failed")
    s = gen(pod, runtime(pod, containers=[ctr(pod, "ok", R)]), reasons=reasons)
    cs = by_name(s.container_statuses)["app"]
    assert (cs.state.waiting.reason, cs.state.waiting.message) == (reason, "why it failed")
    assert not cs.last_state.HasField("terminated")
    assert s.phase == "Pending"


@pytest.mark.parametrize("policy,codes,phase,ready_reason", [
    ("Never", (0, 0), "Succeeded", "PodCompleted"),     # "all containers succeeded"
    ("Never", (0, 1), "Failed", "PodFailed"),           # "all terminated, one failed"
    ("OnFailure", (0, 0), "Succeeded", "PodCompleted"),
    ("OnFailure", (0, 1), "Running", "ContainersNotReady"),  # the failed one restarts
    ("Always", (0, 0), "Running", "ContainersNotReady"),
])
def test_phase_when_all_containers_exited(policy, codes, phase, ready_reason):
    # TestPodPhaseWithRestartNever / OnFailure / Always
    pod = make_pod(("a", "b"), policy=policy)
    rt = runtime(pod, containers=[ctr(pod, "a", X, exit_code=codes[0]), ctr(pod, "b", X, exit_code=codes[1])])
    s = gen(pod, rt)
    assert s.phase == phase
    assert conds(s)["ContainersReady"][:2] == ("False", ready_reason)
    assert conds(s)["Ready"][:2] == ("False", ready_reason)
    if phase == "Succeeded":
        assert conds(s)["Initialized"] == ("True", "PodCompleted", "")


def test_exit_reasons_from_the_runtime_or_by_code():
    pod = make_pod(("a", "b", "c"), policy="Never")
    rt = runtime(pod, containers=[ctr(pod, "a", X, exit_code=0), ctr(pod, "b", X, exit_code=2),
                                  ctr(pod, "c", X, exit_code=137, reason="OOMKilled")])
    got = {c.name: c.state.terminated.reason for c in gen(pod, rt).container_statuses}
    assert got == {"a": "Completed", "b": "Error", "c": "OOMKilled"}


def test_failed_init_container_with_never_fails_the_pod():
    pod = make_pod(("app",), inits=("i1",), policy="Never")
    s = gen(pod, runtime(pod, containers=[ctr(pod, "i1", X, exit_code=1)]))
    assert s.phase == "Failed"
    assert s.init_container_statuses[0].state.terminated.exit_code == 1
    assert s.container_statuses[0].state.waiting.reason == "PodInitializing"


def test_failed_init_container_with_always_is_pending_in_crash_loop():
    pod = make_pod(("app",), inits=("i1",), policy="Always")
    reasons = st.ReasonCache()
    reasons.update("uid-1", "i1", st.CRASH_LOOP_BACK_OFF, "back-off 10s ...")
    s = gen(pod, runtime(pod, containers=[ctr(pod, "i1", X, exit_code=1)]), reasons=reasons)
    assert s.phase == "Pending"
    i1 = s.init_container_statuses[0]
    assert (i1.state.waiting.reason, i1.last_state.terminated.exit_code) == ("CrashLoopBackOff", 1)
    assert conds(s)["Initialized"][:2] == ("False", "ContainersNotInitialized")


def test_succeeded_init_containers_are_ready_and_initialize_the_pod():
    pod = make_pod(("app",), inits=("i1",))
    reasons = st.ReasonCache()
    reasons.update("uid-1", "i1", st.CRASH_LOOP_BACK_OFF, "stale")  # never shown: it succeeded
    s = gen(pod, runtime(pod, containers=[ctr(pod, "i1", X), ctr(pod, "app", R, created=9)]),
            reasons=reasons)
    i1 = s.init_container_statuses[0]
    assert (i1.ready, i1.state.terminated.reason) == (True, "Completed")
    assert conds(s)["Initialized"] == ("True", "", "")
    assert s.phase == "Running"


def test_created_container_waits_without_reason():
    pod = make_pod(("app",))
    cs = gen(pod, runtime(pod, containers=[ctr(pod, "app", CONTAINER_CREATED)])).container_statuses[0]
    assert cs.state.HasField("waiting") and cs.state.waiting.reason == ""


def test_vanished_running_container_counts_as_a_restart():
    # kubernetes#84327: a container the runtime lost shows as stopped, not creating
    pod = make_pod(("app",))
    pod.status.container_statuses.add(name="app", restart_count=2).state.running.started_at = "2027-01-01T00:00:00Z"
    cs = gen(pod, runtime(pod, containers=[])).container_statuses[0]
    assert cs.state.waiting.reason == "ContainerCreating"
    assert (cs.last_state.terminated.reason, cs.last_state.terminated.exit_code) == ("ContainerStatusUnknown", 137)
    assert cs.restart_count == 3


def test_terminal_phase_sticks_and_keeps_its_ip():
    pod = make_pod(("app",), policy="Never")
    pod.status.phase = "Succeeded"
    pod.status.pod_ip = "10.244.0.9"
    pod.status.pod_ips.add(ip="10.244.0.9")
    s = gen(pod, runtime(pod, sandboxes=[sandbox(state=SANDBOX_NOTREADY, ip="")], containers=[]))
    assert (s.phase, s.pod_ip) == ("Succeeded", "10.244.0.9")


def test_condition_times_carry_over_until_the_status_changes():
    pod = make_pod(("app",))
    rt = runtime(pod, containers=[ctr(pod, "app", R)])
    first = gen(pod, rt, now=NOW)
    pod.status.CopyFrom(first)
    again = gen(pod, rt, now=NOW + 50)
    assert [c.last_transition_time for c in again.conditions] == [c.last_transition_time for c in first.conditions]
    assert again.start_time == first.start_time
    assert not st.status_differs(first, again)
    pod.status.CopyFrom(again)
    gone = gen(pod, runtime(pod, containers=[ctr(pod, "app", X, exit_code=1)]), now=NOW + 60)
    times = {c.type: c.last_transition_time for c in gone.conditions}
    assert times["Ready"] == now_rfc3339(NOW + 60)
    assert times["PodScheduled"] == now_rfc3339(NOW)
    assert st.status_differs(again, gone)


def test_hollow_report_is_a_runtime_snapshot_of_running_containers():
    # what the hollow kubelet can hand to generate_pod_status: a ready sandbox and running containers
    pod = make_pod(("a", "b"))
    rt = runtime(pod, [sandbox(ip="10.128.0.7")],
                 [ctr(pod, "a", R, cid="uid-1-a"), ctr(pod, "b", R, cid="uid-1-b")])
    s = gen(pod, rt, runtime_name="hollow", host_ip="172.16.0.1")
    assert (s.phase, s.pod_ip, s.host_ip) == ("Running", "10.128.0.7", "172.16.0.1")
    assert [c.container_id for c in s.container_statuses] == ["hollow://uid-1-a", "hollow://uid-1-b"]
    assert {c.type for c in s.conditions} == set(st.POD_CONDITIONS)


@pytest.mark.parametrize("resources,qos", [
    ({}, "BestEffort"),
    ({"requests": {"cpu": "100m"}}, "Burstable"),
    ({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}, "Guaranteed"),
    ({"limits": {"cpu": "1", "memory": "1Gi"}}, "Guaranteed"),
])
def test_qos_class(resources, qos):
    spec = core_pb2.PodSpec(containers=[core_pb2.Container(
        name="a", resources=core_pb2.ResourceRequirements(**resources))])
    assert st.qos_class(spec) == qos


def test_get_phase_init_running_is_pending():
    pod = make_pod(("app",), inits=("i1",))
    running = core_pb2.ContainerStatus(name="i1")
    running.state.running.started_at = "x"
    assert st.get_phase(pod, [running]) == "Pending"
    assert st.get_phase(pod, []) == "Pending"


def test_all_running_snapshot_is_what_a_hollow_node_reports():
    pod = make_pod(("web", "log"), inits=("setup",))
    pod.status.container_statuses.add(name="web", restart_count=2).state.running.started_at = now_rfc3339(T0)
    s = gen(pod, st.all_running_snapshot(pod, "10.128.0.7", NOW), runtime_name="hollow", host_ip="172.16.0.1")
    assert (s.phase, s.pod_ip, s.host_ip) == ("Running", "10.128.0.7", "172.16.0.1")
    assert all(c[0] == "True" for c in conds(s).values())
    web = by_name(s.container_statuses)["web"]
    assert (web.restart_count, web.state.running.started_at, web.container_id) == \
        (2, now_rfc3339(T0), "hollow://uid-1-web")
    assert by_name(s.container_statuses)["log"].state.running.started_at == now_rfc3339(NOW)
    assert s.init_container_statuses[0].state.terminated.reason == "Completed"
    # a second report changes nothing: the hollow kubelet writes once
    pod.status.CopyFrom(s)
    again = gen(pod, st.all_running_snapshot(pod, "10.128.0.7", NOW + 30), runtime_name="hollow",
                host_ip="172.16.0.1", now=NOW + 30)
    assert not st.status_differs(s, again)
