"""The cloud of issue 20 for tests and benchmarks: a control plane (etcdlite, apiserver,
controller-manager, scheduler) with quick node-health flags, ``python -m cloud`` with node
groups, the cloud-controller-manager and the autoscaler, all in one Registry; on exit the cloud
is stopped with SIGTERM (it deletes its instances) and whatever its prefix still names on the
machine is removed (namespaces, containers, mounts), pass or fail."""

from __future__ import annotations

import contextlib
from pathlib import Path

from apiserver.client import Client
from cloud.client import CloudClient
from harness.plane import ApiServer, SecureEtcdlite, start_component
from harness.procs import DEFAULT_READY_TIMEOUT, PYTHON, Registry, ServerProcess, free_port
from node import network


class CloudProcess(ServerProcess):
    """``python -m cloud`` on a free port of 127.0.0.1, ready once /v1/metadata answers."""

    kind = "cloud"

    def __init__(self, tmp_path, server: str, registry: Registry | None = None, *,
                 node_groups: tuple[str, ...] = (), kubelet_args: tuple[str, ...] = (),
                 proxy_args: tuple[str, ...] = (), ready_timeout: float = DEFAULT_READY_TIMEOUT,
                 env: dict | None = None) -> None:
        """``env``: the instances' kubelets and kube-proxies inherit it (a secure plane's
        $KUBECONFIG, the system:cloud-nodes identity)."""
        self.port = free_port()
        self.extra_env = dict(env or {})
        self.server = server
        self.prefix = network.new_prefix()
        self.data_dir = Path(tmp_path) / "cloud"
        self.node_groups, self.kubelet_args, self.proxy_args = node_groups, kubelet_args, proxy_args
        super().__init__("cloud", tmp_path, registry, ready_timeout)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [PYTHON, "-m", "cloud", "--data-dir", str(self.data_dir), "--server", self.server,
                "--port", str(self.port), "--prefix", self.prefix, "--log-level", "info"]
        for g in self.node_groups:
            argv += ["--node-group", g]
        argv += [f"--kubelet-arg={a}" for a in self.kubelet_args]
        argv += [f"--proxy-arg={a}" for a in self.proxy_args]
        return argv

    def ready_probe(self, rpc_timeout: float) -> str | None:
        CloudClient(self.endpoint, timeout=rpc_timeout).metadata()
        return None

    def sweep(self) -> list[str]:
        """What a cloud killed before its own cleanup left: containers, mounts, namespaces."""
        from node.runtime.cleanup import cleanup as runtime_cleanup

        problems = runtime_cleanup(self.prefix)  # every node runtime of the prefix
        nodes = self.data_dir / "nodes"
        if nodes.is_dir():
            from node.kubelet.volumes import cleanup as volumes_cleanup

            for d in nodes.iterdir():
                if (d / "kubelet").is_dir():
                    volumes_cleanup(str(d / "kubelet"))
        network.cleanup(self.prefix)
        return problems


class CloudPlane:
    def __init__(self, api, cloud: CloudProcess, ccm, autoscaler, reg: Registry) -> None:
        self.api, self.cloud_proc, self.ccm, self.autoscaler, self.reg = api, cloud, ccm, autoscaler, reg
        self.client = api.client(timeout=20)  # the admin's on a secure plane
        self.cloud = CloudClient(cloud.endpoint)
        meta = self.cloud.metadata()
        self.internet, self.router = meta["internet"], meta["router"]
        # the apiserver's audit log (a secure plane's), None on an insecure one
        self.audit_log = Path(api.flags["audit_log_path"]) if "audit_log_path" in api.flags else None


@contextlib.contextmanager
def cloud_plane(tmp_path, *, node_groups: tuple[str, ...], kubelet_args: tuple[str, ...] = (),
                cm_flags: dict | None = None, ccm_flags: dict | None = None,
                autoscaler_flags: dict | None = None, autoscaler: bool = True, secure: bool = False):
    """``secure``: as `make run` has it (controllers/plane.py): etcd and the apiserver on TLS,
    Node,RBAC, no anonymous requests, every component under its own certificate (the
    cloud-controller-manager, the autoscaler, the instances' kube-proxies as system:cloud-nodes;
    each instance's kubelet bootstraps its own, system:node:<instance>, with a bootstrap token,
    its API on TLS checked through the apiserver); an audit log in <tmp>/audit.log (a refusal
    there names who was refused what)."""
    reg = Registry()
    tmp = Path(tmp_path)
    cloud = ccm = scaler = None
    try:
        pki = None
        api_flags: dict = {}
        kubelet_args = tuple(kubelet_args)
        if secure:
            from apiserver.auth.pki import plane_pki

            pki = plane_pki(tmp / "pki")
            etcd = SecureEtcdlite(tmp, pki, "etcd", reg).start()
            api_flags = {**pki.kubelet_client_flags(), "audit_log_path": str(tmp / "audit.log"),
                         "enable_bootstrap_token_auth": True}
            serving = pki.kubelet_serving("cloud-instance")
            kubelet_args += (f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
                             f"--client-ca-file={pki.ca.cert_path}", "--authentication-token-webhook",
                             "--authorization-mode=Webhook", "--anonymous-auth=false")
        else:
            etcd = reg.start_etcdlite(tmp, name="etcd")
        api = ApiServer(tmp, etcd.url, registry=reg, pki=pki, **api_flags).launch()
        token = ""
        if secure:  # the instances' kubelets join as make run's do (TLS bootstrap)
            from apiserver.auth.bootstrap import new_token

            token = new_token()
            kubelet_args += (f"--bootstrap-kubeconfig="
                             f"{api.kubeconfig(tmp / 'bootstrap-kubelet.conf', '', token=token)}",)

        def env(who: str) -> dict | None:
            return {"KUBECONFIG": api.kubeconfig(tmp / f"{who}.kubeconfig", who)} if secure else None

        # The cloud makes its network, image and first instances while the control plane starts
        # (their kubelets wait for the apiserver as they would on a cloud).
        cloud = CloudProcess(tmp, api.endpoint, reg, node_groups=node_groups, kubelet_args=kubelet_args,
                             env=env("cloud-nodes")).launch()
        api.wait_ready()
        cm_extra = {}
        if secure:
            from apiserver.auth.bootstrap import token_secret

            with contextlib.closing(api.client()) as admin:  # what the kubelets' bootstrap waits for
                admin.create(token_secret(token, ttl_seconds=0, description="the cloud's kubelets"))
            cm_extra = {"root_ca_file": str(pki.ca.cert_path), "cluster_signing_cert_file": str(pki.ca.cert_path),
                        "cluster_signing_key_file": str(pki.ca.key_path)}
        start_component(tmp, "cm", "controllers.manager", api.endpoint, reg, log_level="warning",
                        env=env("controller-manager"), **cm_extra, **(cm_flags or {}))
        start_component(tmp, "scheduler", "controllers.scheduler", api.endpoint, reg, log_level="warning",
                        env=env("scheduler"))
        cloud.wait_ready()
        ccm = start_component(tmp, "ccm", "cloud.ccm", api.endpoint, reg, cloud_url=cloud.endpoint,
                              leader_elect=True, log_level="info", env=env("cloud-controller-manager"),
                              **(ccm_flags or {}))
        scaler = start_component(tmp, "autoscaler", "cloud.autoscaler", api.endpoint, reg,
                                 cloud_url=cloud.endpoint, leader_elect=True, log_level="info",
                                 env=env("cluster-autoscaler"), **(autoscaler_flags or {})) if autoscaler else None
        plane = CloudPlane(api, cloud, ccm, scaler, reg)
        try:
            yield plane
        finally:
            plane.client.close()
    finally:
        problems: list[str] = []
        for controller in (scaler, ccm):  # before the cloud they call, which goes first of the rest
            if controller is not None:
                controller.terminate()
        if cloud is not None:
            cloud.terminate(timeout=60)  # SIGTERM: the cloud deletes its instances itself
        reg.cleanup()
        if cloud is not None:
            problems = cloud.sweep()
        if problems:
            raise RuntimeError(f"the cloud {cloud.prefix} left behind: {problems}")
