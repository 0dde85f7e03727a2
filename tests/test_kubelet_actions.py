"""What one pod sync decides (node/kubelet/actions.py), case by case from
Kubernetes' computePodActions and its tests (kuberuntime_manager_test.go
TestComputePodActions / TestComputePodActionsWithInitContainers)."""

from __future__ import annotations

import pytest
from kubelet_fixtures import T0, ctr, make_pod, runtime, sandbox

from apiserver.pb import core_pb2
from node.kubelet import actions, labels
from node.kubelet.probes import FAILURE, LIVENESS, STARTUP, SUCCESS, ProbeResults
from node.kubelet.runtime_status import (CONTAINER_CREATED, CONTAINER_EXITED, CONTAINER_RUNNING,
                                         CONTAINER_UNKNOWN, SANDBOX_NOTREADY, ContainerStatus)

R, X, U = CONTAINER_RUNNING, CONTAINER_EXITED, CONTAINER_UNKNOWN


def plan(pod, rt, results=None):
    a = actions.compute_pod_actions(pod, rt, results)
    return (a.kill_pod, a.create_sandbox, a.attempt, a.next_init_container,
            a.containers_to_start, sorted(k.name for k in a.containers_to_kill.values()))


# ---- sandbox ----

def test_new_pod_gets_a_sandbox_and_all_containers():
    # "Start all containers because there's no sandbox"
    pod = make_pod(("a", "b"))
    assert plan(pod, runtime(pod, sandboxes=[])) == (True, True, 0, None, ["a", "b"], [])


@pytest.mark.parametrize("why,sandboxes", [
    ("dead sandbox", [sandbox(state=SANDBOX_NOTREADY, attempt=2)]),
    ("no IP", [sandbox(ip="", attempt=2)]),
    ("two ready", [sandbox("sb2", attempt=2, created=5), sandbox("sb1", attempt=1)]),
])
def test_changed_sandbox_kills_everything_and_makes_attempt_plus_one(why, sandboxes):
    # "Kill and recreate everything if the pod sandbox is dead, and RestartPolicy == Always"
    pod = make_pod(("a",))
    rt = runtime(pod, sandboxes, [ctr(pod, "a", R)])
    a = actions.compute_pod_actions(pod, rt)
    assert (a.kill_pod, a.create_sandbox, a.attempt, a.containers_to_start) == (True, True, 3, ["a"])
    assert a.sandbox_id == ("sb2" if why == "two ready" else "sb1")


def test_host_network_pod_needs_no_ip():
    pod = make_pod(("a",))
    pod.spec.host_network = True
    assert actions.sandbox_changed(pod, runtime(pod, [sandbox(ip="")])) == (False, 0, "sb1")


def test_dead_sandbox_with_never_policy_and_ran_containers_is_only_killed():
    # "Kill and don't recreate the pod sandbox if RestartPolicy == Never and the containers ran"
    pod = make_pod(("a",), policy="Never")
    rt = runtime(pod, [sandbox(state=SANDBOX_NOTREADY)], [ctr(pod, "a", X, exit_code=1)])
    assert plan(pod, rt) == (True, False, 1, None, [], [])


def test_dead_sandbox_on_failure_skips_succeeded_containers():
    # "Kill and recreate the pod sandbox if RestartPolicy == OnFailure, only the failed containers start"
    pod = make_pod(("a", "b"), policy="OnFailure")
    rt = runtime(pod, [sandbox(state=SANDBOX_NOTREADY)],
                 [ctr(pod, "a", X, exit_code=0), ctr(pod, "b", X, exit_code=2)])
    assert plan(pod, rt) == (True, True, 1, None, ["b"], [])


def test_dead_sandbox_on_failure_all_succeeded_creates_nothing():
    pod = make_pod(("a",), policy="OnFailure")
    rt = runtime(pod, [sandbox(state=SANDBOX_NOTREADY)], [ctr(pod, "a", X, exit_code=0)])
    assert plan(pod, rt) == (True, False, 1, None, [], [])


def test_dead_sandbox_with_init_containers_starts_over_at_the_first():
    pod = make_pod(("a",), inits=("i1", "i2"))
    rt = runtime(pod, [sandbox(state=SANDBOX_NOTREADY)],
                 [ctr(pod, "i1", X), ctr(pod, "i2", X, created=2), ctr(pod, "a", R, created=3)])
    assert plan(pod, rt) == (True, True, 1, "i1", [], [])


# ---- regular containers and restartPolicy ----

@pytest.mark.parametrize("policy,exit_code,restarts", [
    ("Always", 0, True), ("Always", 1, True),
    ("OnFailure", 0, False), ("OnFailure", 1, True),
    ("Never", 0, False), ("Never", 1, False),
])
def test_exited_container_restarts_by_policy(policy, exit_code, restarts):
    # "restart exited containers if RestartPolicy == Always" / "OnFailure" / "Never"
    pod = make_pod(("a", "b"), policy=policy)
    rt = runtime(pod, containers=[ctr(pod, "a", R), ctr(pod, "b", X, exit_code=exit_code)])
    assert plan(pod, rt) == (False, False, 0, None, ["b"] if restarts else [], [])


def test_all_exited_and_none_to_restart_kills_the_pod():
    # "Kill pod and do not restart ok containers if RestartPolicy == OnFailure"
    pod = make_pod(("a", "b"), policy="OnFailure")
    rt = runtime(pod, containers=[ctr(pod, "a", X), ctr(pod, "b", X)])
    assert plan(pod, rt) == (True, False, 0, None, [], [])


def test_running_containers_are_kept():
    # "everying is good; do nothing"
    pod = make_pod(("a", "b"))
    rt = runtime(pod, containers=[ctr(pod, "a", R), ctr(pod, "b", R)])
    assert plan(pod, rt) == (False, False, 0, None, [], [])


def test_missing_container_is_started():
    pod = make_pod(("a", "b"))
    rt = runtime(pod, containers=[ctr(pod, "a", R)])
    assert plan(pod, rt) == (False, False, 0, None, ["b"], [])


@pytest.mark.parametrize("state", [CONTAINER_UNKNOWN, CONTAINER_CREATED])
def test_unknown_or_created_container_is_restarted_even_with_never(state):
    pod = make_pod(("a",), policy="Never")
    cs = ctr(pod, "a", state)
    a = actions.compute_pod_actions(pod, runtime(pod, containers=[cs]))
    assert a.containers_to_start == ["a"]
    if state == CONTAINER_UNKNOWN:  # "Kill and recreate the container if the container is in unknown state"
        assert a.containers_to_kill[cs.id].reason == actions.REASON_UNKNOWN
        assert 'in "CONTAINER_UNKNOWN" state' in a.containers_to_kill[cs.id].message
    else:
        assert a.containers_to_kill == {}


def test_the_newest_container_of_a_name_decides():
    pod = make_pod(("a",), policy="OnFailure")
    old_fail = ctr(pod, "a", X, exit_code=1, created=1, restart=0)
    new_ok = ctr(pod, "a", X, exit_code=0, created=9, restart=1)
    rt = runtime(pod, containers=[old_fail, new_ok])
    assert rt.find("a") is new_ok
    assert plan(pod, rt)[4] == []  # the last run succeeded: OnFailure does not restart


def test_spec_change_kills_and_restarts_even_with_never():
    # "Kill and recreate the container if the container's spec changed"
    pod = make_pod(("a", "b"), policy="Never")
    cs = ctr(pod, "a", R, hash_="deadbeef")
    a = actions.compute_pod_actions(pod, runtime(pod, containers=[cs, ctr(pod, "b", R)]))
    assert a.containers_to_start == ["a"]
    assert a.containers_to_kill[cs.id].message == "Container a definition changed, will be restarted"
    assert not a.kill_pod


def test_image_change_is_a_spec_change_but_command_change_is_not():
    pod = make_pod(("a",))
    before = labels.container_hash(pod.spec.containers[0])
    pod.spec.containers[0].command[:] = ["sh"]
    assert labels.container_hash(pod.spec.containers[0]) == before
    pod.spec.containers[0].image = "busybox:1.36"
    assert labels.container_hash(pod.spec.containers[0]) != before


@pytest.mark.parametrize("kind,reason,policy,restart", [
    (LIVENESS, actions.REASON_LIVENESS, "Always", True),
    (LIVENESS, actions.REASON_LIVENESS, "Never", False),
    (STARTUP, actions.REASON_STARTUP, "OnFailure", True),
])
def test_probe_failure_kills_and_restarts_by_policy(kind, reason, policy, restart):
    # "Kill and recreate the container if the liveness check has failed"
    pod = make_pod(("a", "b"), policy=policy)
    cs = ctr(pod, "a", R)
    results = ProbeResults()
    results.set(kind, cs.id, FAILURE)
    a = actions.compute_pod_actions(pod, runtime(pod, containers=[cs, ctr(pod, "b", R)]), results)
    info = a.containers_to_kill[cs.id]
    assert info.reason == reason
    assert info.message.startswith(f"Container a failed {kind} probe")
    assert info.message.endswith(", will be restarted") == restart
    assert a.containers_to_start == (["a"] if restart else [])
    assert not a.kill_pod  # b keeps running


def test_liveness_success_keeps_the_container():
    pod = make_pod(("a",))
    cs = ctr(pod, "a", R)
    results = ProbeResults()
    results.set(LIVENESS, cs.id, SUCCESS)
    assert plan(pod, runtime(pod, containers=[cs]), results) == (False, False, 0, None, [], [])


def test_only_container_failing_liveness_with_never_kills_the_pod():
    pod = make_pod(("a",), policy="Never")
    cs = ctr(pod, "a", R)
    results = ProbeResults()
    results.set(LIVENESS, cs.id, FAILURE)
    assert plan(pod, runtime(pod, containers=[cs]), results)[0] is True


def test_deleted_pod_is_only_killed():
    pod = make_pod(("a",), deleting=True)
    a = actions.compute_pod_actions(pod, runtime(pod, containers=[ctr(pod, "a", X, exit_code=1)]))
    assert (a.kill_pod, a.create_sandbox, a.containers_to_start) == (True, False, [])
    a = actions.compute_pod_actions(pod, runtime(pod, sandboxes=[]))
    assert (a.kill_pod, a.create_sandbox) == (True, False)


# ---- init containers ----

def test_init_containers_run_in_order():
    # "initialization in progress; do nothing" / "next init container"
    pod = make_pod(("a",), inits=("i1", "i2"))
    rt = runtime(pod, containers=[])
    assert plan(pod, rt)[3] == "i1"
    rt = runtime(pod, containers=[ctr(pod, "i1", R)])
    assert plan(pod, rt) == (False, False, 0, None, [], [])  # i1 still runs: wait
    rt = runtime(pod, containers=[ctr(pod, "i1", X)])
    assert plan(pod, rt)[3] == "i2"
    rt = runtime(pod, containers=[ctr(pod, "i1", X), ctr(pod, "i2", X, created=2)])
    assert plan(pod, rt) == (False, False, 0, None, ["a"], [])


@pytest.mark.parametrize("policy,expect", [
    ("Always", (False, False, 0, "i1", [], [])),     # "an init container failed; restart it"
    ("OnFailure", (False, False, 0, "i1", [], [])),
    ("Never", (True, False, 0, None, [], [])),        # "init container failed; kill pod"
])
def test_failed_init_container_by_policy(policy, expect):
    pod = make_pod(("a",), inits=("i1", "i2"), policy=policy)
    rt = runtime(pod, containers=[ctr(pod, "i1", X, exit_code=3)])
    assert plan(pod, rt) == expect


def test_init_container_in_unknown_state_is_killed_then_restarted():
    pod = make_pod(("a",), inits=("i1",))
    cs = ctr(pod, "i1", U)
    a = actions.compute_pod_actions(pod, runtime(pod, containers=[cs]))
    assert a.next_init_container == "i1"
    assert a.containers_to_kill[cs.id].reason == actions.REASON_UNKNOWN


def test_running_regular_container_means_initialized():
    # a restarted kubelet whose init containers were removed: no init reruns
    pod = make_pod(("a", "b"), inits=("i1",))
    rt = runtime(pod, containers=[ctr(pod, "a", R)])
    assert plan(pod, rt) == (False, False, 0, None, ["b"], [])


def test_find_next_init_container_reports_the_last_failure():
    pod = make_pod(("a",), inits=("i1", "i2"))
    failed = ctr(pod, "i2", X, exit_code=1, created=3)
    last, nxt, done = actions.find_next_init_container(pod, runtime(pod, containers=[ctr(pod, "i1", X), failed]))
    assert (last, nxt.name, done) == (failed, "i2", False)


# ---- restart count, grace, clean-up ----

def test_next_restart_count_follows_the_annotation():
    pod = make_pod(("a",))
    assert actions.next_restart_count("a", runtime(pod)) == 0
    rt = runtime(pod, containers=[ctr(pod, "a", X, restart=0), ctr(pod, "a", X, restart=4, created=9)])
    assert actions.next_restart_count("a", rt) == 5
    foreign = ContainerStatus(id="x", name="a", state=X, created_at=T0, annotations={})
    assert foreign.restart_count == 0


@pytest.mark.parametrize("deletion,termination,expect", [
    (None, 30, 30), (5, 30, 5), (0, 30, 2), (None, 0, 2),
])
def test_kill_grace_period(deletion, termination, expect):
    pod = core_pb2.Pod()
    pod.spec.termination_grace_period_seconds = termination
    if deletion is not None:
        pod.metadata.deletion_grace_period_seconds = deletion
    assert actions.kill_grace_period(pod) == expect


def test_containers_to_remove_keeps_the_newest_exited_of_each_name():
    pod = make_pod(("a",), inits=("i1",))
    rt = runtime(pod, containers=[ctr(pod, "i1", X, created=1), ctr(pod, "i1", X, created=2, restart=1),
                                  ctr(pod, "a", X, created=3), ctr(pod, "a", X, created=4, restart=1),
                                  ctr(pod, "a", X, created=5, restart=2), ctr(pod, "a", R, created=6, restart=3)])
    assert sorted(actions.containers_to_remove(rt)) == ["a-0-3", "a-1-4", "i1-0-1"]
    assert actions.containers_to_remove(rt, names=["i1"]) == ["i1-0-1"]


def test_labels_name_the_pod_as_kubernetes_does():
    pod = make_pod(("a",))
    pod.metadata.labels["app"] = "web"
    assert labels.sandbox_labels(pod) == {"app": "web", "io.kubernetes.pod.name": "web",
                                          "io.kubernetes.pod.namespace": "default",
                                          "io.kubernetes.pod.uid": "uid-1"}
    ann = labels.container_annotations(pod, pod.spec.containers[0], 3)
    assert ann["io.kubernetes.container.restartCount"] == "3"
    assert ann["io.kubernetes.pod.terminationGracePeriod"] == "30"
    assert ann["io.kubernetes.container.type"] == "container"
    assert labels.pod_of(labels.container_labels(pod, pod.spec.containers[0])) == ("default", "web", "uid-1")
