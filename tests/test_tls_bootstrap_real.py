"""Issue 23: a real kubelet (node/kubelet/real.py) with nothing but a bootstrap token
(--bootstrap-kubeconfig) gets its own client certificate through an auto-approved
CertificateSigningRequest, registers its Node under system:node:<name>, and with that
identity the Node authorizer lets it read the Secret its pod mounts: the pod runs.
With certificates of 20 s it renews its own before the first expires and goes on.
Needs root, runc, conmon, busybox-static (skipped without)."""

from __future__ import annotations

import contextlib
import datetime
import os
import time

import pytest
from cryptography import x509

from apiserver.auth import bootstrap as tokens
from apiserver.auth import pki as pkis
from apiserver.pb import core_pb2
from apiserver.rest import kubeconfig as kubeconfigs
from harness.etcd_client import wait_until as poll
from harness.nodes import need_runtime, real_nodes, running_pod
from harness.plane import start_control_plane
from harness.procs import Registry
from tests.test_tls_bootstrap import _ready

pytestmark = pytest.mark.process

NS = "tls-bootstrap-real"
TIMEOUT = 60.0


@contextlib.contextmanager
def bootstrapped_node(tmp_path, **controller_manager_flags):
    """A secure plane and one real kubelet with nothing but a bootstrap token; yields
    (admin client, pki, token, node, its kubeconfig path, its cert dir)."""
    need_runtime()
    reg = Registry()
    pki = pkis.plane_pki(tmp_path / "pki")
    try:
        api = start_control_plane(tmp_path, reg, pki=pki, enable_bootstrap_token_auth=True,
                                  controller_manager_flags=controller_manager_flags)
        with contextlib.closing(api.client("admin")) as admin:
            token = tokens.new_token()
            admin.create(tokens.token_secret(token))
            boot = api.kubeconfig(tmp_path / "bootstrap-kubelet.conf", "", token=token)
            conf = str(tmp_path / "kubelet.conf")
            certs = tmp_path / "certs"
            args = ("--bootstrap-kubeconfig", boot, "--kubeconfig", conf, "--cert-dir", str(certs))
            with real_nodes(tmp_path, api.endpoint, 1, kubelet_args=args, kubeconfig=lambda name: conf) as nodes:
                node = nodes.layout.nodes[0]
                poll(lambda: _ready(admin, node.name), TIMEOUT, what="the bootstrapped node Ready")
                yield admin, pki, token, node, conf, certs
    finally:
        reg.cleanup()


def run_pod_with_secret(admin, name: str) -> None:
    """A pod mounting a Secret runs: the kubelet could read the Secret with its identity."""
    with contextlib.suppress(Exception):
        admin.create(core_pb2.Namespace(metadata={"name": NS}))
    admin.create(core_pb2.Secret(metadata={"name": f"{name}-secret", "namespace": NS}, data={"k": b"v"}))
    pod = core_pb2.Pod(metadata={"name": name, "namespace": NS})
    pod.spec.termination_grace_period_seconds = 1
    pod.spec.automount_service_account_token = False
    pod.spec.containers.add(name="c", image="busybox", command=["sh", "-c", "cat /s/k; sleep 3600"])
    pod.spec.containers[0].volume_mounts.add(name="s", mount_path="/s")
    pod.spec.volumes.add(name="s").secret.secret_name = f"{name}-secret"
    admin.create(pod)
    poll(lambda: running_pod(admin, name, NS), TIMEOUT, what=f"the pod {name} mounting its Secret running")
    admin.delete("pods", name, NS, grace_period_seconds=0)


def test_a_real_kubelet_bootstraps_and_runs_a_pod_with_its_secret(tmp_path):
    with bootstrapped_node(tmp_path) as (admin, pki, token, node, conf, certs):
        creds = kubeconfigs.load(conf)
        cert = x509.load_pem_x509_certificate(creds.cert)
        cert.verify_directly_issued_by(pki.ca.cert)
        assert cert.subject.rfc4514_string() == f"CN=system:node:{node.name},O=system:nodes"
        assert not creds.token  # the bootstrap token is not kept in the node's kubeconfig
        [csr] = admin.list("certificatesigningrequests").items
        assert csr.spec.username == f"system:bootstrap:{token.partition('.')[0]}"
        assert [c.type for c in csr.status.conditions] == ["Approved"]
        run_pod_with_secret(admin, "reader")


def test_a_real_kubelet_rotates_its_certificate_and_goes_on(tmp_path):
    with bootstrapped_node(tmp_path, cluster_signing_duration=20) as (admin, pki, token, node, conf, certs):
        link = certs / "kubelet-client-current.pem"
        first_file = os.readlink(link)
        first = x509.load_pem_x509_certificate(kubeconfigs.load(conf).cert)
        poll(lambda: os.readlink(link) != first_file, 30, what="the client certificate rotated")
        assert datetime.datetime.now(datetime.timezone.utc) < first.not_valid_after_utc
        renewals = [c for c in admin.list("certificatesigningrequests").items
                    if c.spec.username == f"system:node:{node.name}"]
        assert renewals and all(c.status.conditions[0].reason == "AutoApproved" for c in renewals)
        wait = (first.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        time.sleep(max(0.0, wait) + 1.0)  # the first certificate's expiry itself is what is waited for
        run_pod_with_secret(admin, "after-expiry")
        assert _ready(admin, node.name)
