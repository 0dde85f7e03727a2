"""Container restart back-off (node/kubelet/backoff.py): Kubernetes'
flowcontrol.Backoff with the kubelet's numbers (10 s doubling to 300 s, reset
after 600 s without failure) and the CrashLoopBackOff gate of doBackOff."""

from __future__ import annotations

import pytest
from kubelet_fixtures import T0, ctr, make_pod, runtime

from node.kubelet import backoff as bo
from node.kubelet.podsync import PodSyncer  # (at import: it loads libc through ldconfig, a process)
from node.kubelet.runtime_status import CONTAINER_EXITED, CONTAINER_RUNNING


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_delays_double_from_10s_to_the_300s_cap():
    # flowcontrol TestSlowBackoff, with the kubelet's 10 s / 300 s
    clock = Clock()
    b = bo.Backoff(clock=clock)
    seen = []
    for _ in range(8):
        b.next("k", clock.t)
        seen.append(b.get("k"))
        clock.t += 1
    assert seen == [10, 20, 40, 80, 160, 300, 300, 300]


def test_in_back_off_until_the_delay_passed_since_the_event():
    clock = Clock()
    b = bo.Backoff(clock=clock)
    assert not b.is_in_back_off_since("k", clock.t)  # unknown key: never in back-off
    b.next("k", clock.t)
    event = clock.t
    clock.t += 9.9
    assert b.is_in_back_off_since("k", event)
    clock.t += 0.2
    assert not b.is_in_back_off_since("k", event)


def test_stable_for_twice_the_cap_starts_over():
    # TestBackoffReset: a failure 600 s after the last update counts as a first one
    clock = Clock()
    b = bo.Backoff(clock=clock)
    for _ in range(5):
        b.next("k", clock.t)
    assert b.get("k") == 160
    clock.t += 601
    assert not b.is_in_back_off_since("k", clock.t)
    b.next("k", clock.t)
    assert b.get("k") == 10


def test_gc_and_reset_forget_keys():
    clock = Clock()
    b = bo.Backoff(clock=clock)
    b.next("old", clock.t)
    clock.t += 700
    b.next("new", clock.t)
    b.gc()
    assert (b.get("old"), b.get("new"), len(b)) == (0, 10, 1)
    b.reset("new")
    assert len(b) == 0


@pytest.mark.parametrize("seconds,text", [(10, "10s"), (40, "40s"), (80, "1m20s"), (300, "5m0s")])
def test_durations_print_as_go_prints_them(seconds, text):
    assert bo._fmt(seconds) == text


def test_crash_loop_gate_lets_the_first_restart_through_then_waits():
    clock = Clock()
    b = bo.Backoff(clock=clock)
    pod = make_pod(("app",))
    first = ctr(pod, "app", CONTAINER_EXITED, exit_code=1, created=1)
    clock.t = first.finished_at + 0.1
    # the first exit: restart at once, and remember it
    assert bo.container_back_off(b, pod, pod.spec.containers[0], runtime(pod, containers=[first])) is None
    second = ctr(pod, "app", CONTAINER_EXITED, exit_code=1, created=20, restart=1)
    clock.t = second.finished_at + 1
    msg = bo.container_back_off(b, pod, pod.spec.containers[0], runtime(pod, containers=[first, second]))
    assert msg == "back-off 10s restarting failed container=app pod=web_default(uid-1)"
    assert bo.back_off_left(b, pod, pod.spec.containers[0], runtime(pod, containers=[first, second])) == \
        pytest.approx(9.0)
    clock.t = second.finished_at + 10.5
    assert bo.container_back_off(b, pod, pod.spec.containers[0], runtime(pod, containers=[first, second])) is None
    third = ctr(pod, "app", CONTAINER_EXITED, exit_code=1, created=40, restart=2)
    clock.t = third.finished_at + 1
    msg = bo.container_back_off(b, pod, pod.spec.containers[0], runtime(pod, containers=[third]))
    assert msg.startswith("back-off 20s restarting failed container=app")


def test_never_exited_container_is_not_gated():
    b = bo.Backoff(clock=Clock())
    pod = make_pod(("app",))
    assert bo.container_back_off(b, pod, pod.spec.containers[0], runtime(pod)) is None
    running = runtime(pod, containers=[ctr(pod, "app", CONTAINER_RUNNING)])
    assert bo.container_back_off(b, pod, pod.spec.containers[0], running) is None
    assert len(b) == 0


def test_a_changed_container_has_its_own_key():
    pod = make_pod(("app",))
    key = bo.container_key(pod, pod.spec.containers[0])
    assert key.startswith("web_default_uid-1_app_")
    pod.spec.containers[0].image = "busybox:1.36"
    assert bo.container_key(pod, pod.spec.containers[0]) != key


def test_a_sync_that_meets_a_back_off_says_when_it_ends():
    """PodSyncer.sync's result carries the back-off's remaining time, which the kubelet requeues
    the pod after (it was lost in a merge: every crash-looping pod's sync then raised)."""
    clock = Clock()
    b = bo.Backoff(clock=clock)
    pod = make_pod(("app",))
    first = ctr(pod, "app", CONTAINER_EXITED, exit_code=1, created=1)
    clock.t = first.finished_at + 0.1
    assert bo.container_back_off(b, pod, pod.spec.containers[0], runtime(pod, containers=[first])) is None
    second = ctr(pod, "app", CONTAINER_EXITED, exit_code=1, created=20, restart=1)
    clock.t = second.finished_at + 4
    syncer = PodSyncer(runtime=None, images=None, log_root="/nonexistent", backoff=b)
    try:
        result = syncer.sync(pod, runtime(pod, containers=[second]))  # nothing reaches the runtime
    finally:
        syncer.close()
    assert result.failed == {"app": "CrashLoopBackOff"} and result.started == []
    assert result.retry_after == pytest.approx(6.0)
