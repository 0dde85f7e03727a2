"""Issue 23: a real kubelet (node/kubelet/real.py) with nothing but a bootstrap token
(--bootstrap-kubeconfig) gets its own client certificate through an auto-approved
CertificateSigningRequest, registers its Node under system:node:<name>, and with that
identity the Node authorizer lets it read the Secret its pod mounts: the pod runs.
Needs root, runc, conmon, busybox-static (skipped without)."""

from __future__ import annotations

import contextlib

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

pytestmark = pytest.mark.process

NS = "tls-bootstrap-real"
TIMEOUT = 60.0



def test_a_real_kubelet_bootstraps_and_runs_a_pod_with_its_secret(tmp_path):
    need_runtime()
    reg = Registry()
    pki = pkis.plane_pki(tmp_path / "pki")
    try:
        api = start_control_plane(tmp_path, reg, pki=pki, enable_bootstrap_token_auth=True)
        with contextlib.closing(api.client("admin")) as admin:
            token = tokens.new_token()
            admin.create(tokens.token_secret(token))
            boot = api.kubeconfig(tmp_path / "bootstrap-kubelet.conf", "", token=token)
            conf = str(tmp_path / "kubelet.conf")
            args = ("--bootstrap-kubeconfig", boot, "--kubeconfig", conf, "--cert-dir", str(tmp_path / "certs"))
            with real_nodes(tmp_path, api.endpoint, 1, kubelet_args=args, kubeconfig=lambda name: conf) as nodes:
                node = nodes.layout.nodes[0]
                creds = kubeconfigs.load(conf)
                cert = x509.load_pem_x509_certificate(creds.cert)
                cert.verify_directly_issued_by(pki.ca.cert)
                assert cert.subject.rfc4514_string() == f"CN=system:node:{node.name},O=system:nodes"
                assert not creds.token  # the bootstrap token is not kept in the node's kubeconfig
                [csr] = admin.list("certificatesigningrequests").items
                assert csr.spec.username == f"system:bootstrap:{token.partition('.')[0]}"
                assert [c.type for c in csr.status.conditions] == ["Approved"]
                poll(lambda: any(c.type == "Ready" and c.status == "True"
                                 for c in admin.get("nodes", node.name, "").status.conditions),
                     TIMEOUT, what="the bootstrapped node Ready")
                admin.create(core_pb2.Namespace(metadata={"name": NS}))
                admin.create(core_pb2.Secret(metadata={"name": "mine", "namespace": NS}, data={"k": b"v"}))
                pod = core_pb2.Pod(metadata={"name": "reader", "namespace": NS})
                pod.spec.termination_grace_period_seconds = 1
                pod.spec.automount_service_account_token = False
                pod.spec.containers.add(name="c", image="busybox", command=["sh", "-c", "cat /s/k; sleep 3600"])
                pod.spec.containers[0].volume_mounts.add(name="s", mount_path="/s")
                pod.spec.volumes.add(name="s").secret.secret_name = "mine"
                admin.create(pod)
                poll(lambda: running_pod(admin, "reader", NS), TIMEOUT, what="the pod mounting its Secret running")
                admin.delete("pods", "reader", NS, grace_period_seconds=0)
    finally:
        reg.cleanup()
