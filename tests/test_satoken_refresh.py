"""The kubelet renews a pod's ServiceAccount token on the token's own schedule (upstream's token
manager: once 80% of its life has passed, at most a day after it was issued), not only when
something makes the pod sync: node/kubelet/satoken.py's TokenRefresher writes the pod's token
volume again when the first token is due. Tokens here live about a second (a requester stands in
for the apiserver's TokenRequest), so the schedule shows in a few seconds of real time."""

from __future__ import annotations

import os
import threading
import time

import pytest

from apiserver.pb import core_pb2
from node.kubelet import volumes
from node.kubelet.satoken import MAX_AGE, TokenManager, TokenRefresher

LIFE = 1.0  # seconds each token lives here
ARGS = ("ns", "default", "web", "uid-1", "", 3607)


class Issuer:
    """TokenRequest's stand-in: token <n>, valid LIFE seconds from now; when it was asked."""

    def __init__(self, life: float = LIFE) -> None:
        self.life = life
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, ns, account, pod, uid, audience, seconds):
        with self.lock:
            self.times.append(time.time())
            return f"token-{len(self.times)}", time.time() + self.life


def wait_until(check, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_refresh_time_is_80_percent_of_the_life_or_a_day():
    assert TokenManager.refresh_at(1000.0, 1000.0 + 3607) == pytest.approx(1000.0 + 0.8 * 3607)
    assert TokenManager.refresh_at(0.0, 7 * 24 * 3600) == MAX_AGE  # a week-long token: renewed after a day


def test_tokens_are_renewed_when_due_without_a_sync():
    issuer = Issuer()
    tokens = TokenManager(issuer)
    written = []

    def refresh(uid):  # what the kubelet's does: the pod's token volume written again
        assert uid == "uid-1"
        written.append(tokens.token(*ARGS))

    refresher = TokenRefresher(tokens, refresh).start()
    try:
        assert tokens.token(*ARGS) == "token-1"  # the pod's first sync
        wait_until(lambda: len(issuer.times) >= 4, "three renewals")
    finally:
        refresher.stop()
    assert written[:3] == ["token-2", "token-3", "token-4"]
    gaps = [b - a for a, b in zip(issuer.times, issuer.times[1:])]
    # each at 80% of the last one's life: not before, and not much after
    assert all(0.8 * LIFE - 0.02 <= g <= 0.8 * LIFE + 0.4 for g in gaps), gaps


def test_a_refresh_that_fails_is_tried_again_later_not_in_a_loop():
    issuer = Issuer(life=0.25)
    tokens = TokenManager(issuer)
    tries = []

    def refuse(uid):
        tries.append(time.monotonic())
        raise RuntimeError('failed to fetch token: serviceaccounts "default" not found')

    refresher = TokenRefresher(tokens, refuse, retry_after=0.3).start()
    try:
        tokens.token(*ARGS)
        wait_until(lambda: len(tries) >= 3, "three tries")
    finally:
        refresher.stop()
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert all(g >= 0.28 for g in gaps), gaps
    # forgotten (the pod gone): nothing due any more
    tokens.forget("uid-1")
    assert tokens.due() == set() and tokens.refresh_times() == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="a projected volume is a tmpfs mount: run as root")
def test_the_pods_token_file_is_rewritten_on_schedule(tmp_path):
    """The real volume: Volumes.refresh_tokens writes the kube-api-access volume again with the
    new token (atomic writer), called by the refresher alone."""
    root = str(tmp_path / "kubelet")
    issuer = Issuer()
    tokens = TokenManager(issuer)
    store = {("ConfigMap", "ns", "kube-root-ca.crt"): core_pb2.ConfigMap(data={"ca.crt": "PEM"})}
    vols = volumes.Volumes(root, lambda kind, ns, name: store.get((kind, ns, name)), tokens=tokens)
    pod = core_pb2.Pod(metadata={"name": "web", "namespace": "ns", "uid": "uid-1"})
    pod.spec.service_account_name = "default"
    pod.spec.volumes.add(name="kube-api-access-x", projected=core_pb2.ProjectedVolumeSource(sources=[
        core_pb2.VolumeProjection(service_account_token=core_pb2.ServiceAccountTokenProjection(
            path="token", expiration_seconds=3607)),
        core_pb2.VolumeProjection(config_map=core_pb2.ConfigMapProjection(
            name="kube-root-ca.crt", items=[core_pb2.KeyToPath(key="ca.crt", path="ca.crt")]))]))
    token_file = os.path.join(vols.volume_dir("uid-1", volumes.PROJECTED, "kube-api-access-x"), "token")
    refresher = TokenRefresher(tokens, lambda uid: vols.refresh_tokens(pod))
    try:
        vols.setup(pod)
        assert open(token_file).read() == "token-1"
        refresher.start()
        wait_until(lambda: open(token_file).read() == "token-3", "the token file renewed twice")
        assert len(issuer.times) == 3
    finally:
        refresher.stop()
        vols.teardown("uid-1")
        volumes.cleanup(root)
    assert not os.path.exists(os.path.join(root, "pods", "uid-1"))
    assert tokens.refresh_times() == {}
