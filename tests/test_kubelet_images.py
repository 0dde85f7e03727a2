"""Image pulls before container creation (node/kubelet/images.py), as Kubernetes'
image manager (image_manager_test.go TestParallelPuller/TestSerializedPuller cases):
pull policies, ErrImagePull, ImagePullBackOff and ErrImageNeverPull."""

from __future__ import annotations

import pytest
from kubelet_fixtures import T0, make_pod

from node.kubelet import images
from node.kubelet.backoff import Backoff


class FakeRuntime:
    """CRI ImageStatus / PullImage stand-ins: ``store`` holds what is present."""

    def __init__(self, store=(), pullable=()):
        self.store = {i: f"sha256:{abs(hash(i)):x}" for i in store}
        self.pullable = set(pullable)
        self.pulls = []

    def image_ref(self, image):
        return self.store.get(image, "")

    def pull(self, image):
        self.pulls.append(image)
        if image not in self.pullable:
            raise RuntimeError(f'pull access denied for "{image}": not in the local image store')
        self.store[image] = f"sha256:{abs(hash(image)):x}"
        return self.store[image]


class Clock:
    t = T0

    def __call__(self):
        return self.t


def pod_with(image, policy):
    pod = make_pod(("app",))
    pod.spec.containers[0].image = image
    pod.spec.containers[0].image_pull_policy = policy
    return pod


@pytest.mark.parametrize("policy,present,pullable,reason,pulled", [
    ("IfNotPresent", True, False, "", False),        # present: no pull
    ("IfNotPresent", False, True, "", True),
    ("IfNotPresent", False, False, "ErrImagePull", True),
    ("Always", True, True, "", True),                 # pulled even when present
    ("Never", True, False, "", False),
    ("Never", False, True, "ErrImageNeverPull", False),
])
def test_pull_policy(policy, present, pullable, reason, pulled):
    img = "busybox:latest"
    rt = FakeRuntime(store=[img] if present else [], pullable=[img] if pullable else [])
    result = images.ImagePuller(rt.image_ref, rt.pull).ensure(*_pod_and_container("busybox", policy))
    assert result.reason == reason
    assert bool(rt.pulls) == pulled
    assert bool(result.image_ref) == (reason == "")
    if reason == "ErrImageNeverPull":
        assert result.message == 'Container image "busybox:latest" is not present with pull policy of Never'


def test_failed_pull_backs_off_then_retries():
    clock = Clock()
    rt = FakeRuntime()
    puller = images.ImagePuller(rt.image_ref, rt.pull, Backoff(clock=clock))
    pod = pod_with("nosuch/image:1", "IfNotPresent")
    c = pod.spec.containers[0]
    first = puller.ensure(pod, c)
    assert first.reason == "ErrImagePull" and "not in the local image store" in first.message
    clock.t += 5
    second = puller.ensure(pod, c)
    assert (second.reason, second.message) == ("ImagePullBackOff", 'Back-off pulling image "nosuch/image:1"')
    assert len(rt.pulls) == 1  # the runtime is not asked during the back-off
    clock.t += 6
    assert puller.ensure(pod, c).reason == "ErrImagePull"  # 10 s passed: tried again, failed again
    clock.t += 15
    assert puller.ensure(pod, c).reason == "ImagePullBackOff"  # now 20 s
    rt.pullable.add("nosuch/image:1")
    clock.t += 6
    assert puller.ensure(pod, c).image_ref.startswith("sha256:")
    assert len(rt.pulls) == 3


@pytest.mark.parametrize("image,expect", [
    ("busybox", "busybox:latest"), ("busybox:1.36", "busybox:1.36"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("busybox@sha256:abcd", "busybox@sha256:abcd"),
])
def test_default_tag(image, expect):
    assert images.with_default_tag(image) == expect


def test_inspect_error_is_its_own_reason():
    def broken(image):
        raise RuntimeError("runtime down")
    result = images.ImagePuller(broken, broken).ensure(*_pod_and_container("busybox", "IfNotPresent"))
    assert (result.reason, result.message) == ("ErrImageInspect", 'Failed to inspect image "busybox:latest": runtime down')


def _pod_and_container(image, policy):
    pod = pod_with(image, policy)
    return pod, pod.spec.containers[0]
