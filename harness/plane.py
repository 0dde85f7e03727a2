"""Processes of the control plane: the apiserver and the controllers, on free 127.0.0.1 ports,
cleaned up like etcd members. The tests start them, and so does the plane benchmark
(benchmarks/plane_scale/processes.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from harness.procs import DEFAULT_READY_TIMEOUT, PYTHON, Member, Registry, ServerProcess, _flag_args, free_port


class SecureEtcdlite(Member):
    """An etcdlite member serving TLS on an https:// client URL and requiring client
    certificates of the PKI's etcd CA; probed with the apiserver's etcd client certificate."""

    def __init__(self, tmp_path, pki, name: str = "etcd", registry: Registry | None = None, **flags) -> None:
        self.pki = pki
        super().__init__("etcdlite", name, tmp_path, {**pki.etcd_flags(), **flags}, registry)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def ready_probe(self, rpc_timeout: float) -> str | None:
        import grpc

        from etcdlite.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

        creds = grpc.ssl_channel_credentials(root_certificates=self.pki.etcd_ca.cert_path.read_bytes(),
                                             private_key=self.pki.etcd_client.key.read_bytes(),
                                             certificate_chain=self.pki.etcd_client.cert.read_bytes())
        with grpc.secure_channel(self.endpoint, creds) as ch:
            try:
                rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"\x00probe"), timeout=rpc_timeout)
            except grpc.RpcError as e:
                return f"Range: {e.code().name} {e.details()}"
        return None


class ApiServer(ServerProcess):
    kind = "apiserver"

    def __init__(self, tmp_path, etcd_servers: str, name: str = "apiserver",
                 registry: Registry | None = None, *, ready_timeout: float = DEFAULT_READY_TIMEOUT,
                 pki=None, **flags) -> None:
        """``pki`` (apiserver.auth.pki.PlanePKI): TLS with its certificates, client
        certificates and ServiceAccount tokens authenticate, RBAC authorizes, no
        anonymous requests (``flags`` may say otherwise)."""
        self.port = free_port()
        self.etcd_servers = etcd_servers
        self.pki = pki
        if pki is not None:
            flags = {**pki.apiserver_flags(), "authorization_mode": "Node,RBAC", "anonymous_auth": "false", **flags}
            if etcd_servers.startswith("https://"):
                flags = {**pki.apiserver_etcd_flags(), **flags}
        self.flags = dict(flags)
        super().__init__(name, tmp_path, registry, ready_timeout)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [PYTHON, "-m", "apiserver", "--etcd-servers", self.etcd_servers,
                "--port", str(self.port), *_flag_args(self.flags)]

    @property
    def url(self) -> str:
        return f"{'https' if self.pki else 'http'}://127.0.0.1:{self.port}"

    def kubeconfig(self, path, who: str = "admin", *, token: str = "", namespace: str = "default") -> str:
        """A kubeconfig for this apiserver: as ``who`` (a client certificate of the
        PKI: "admin", "scheduler", "node-n0", ... or "" for none), or with ``token``."""
        from apiserver.rest.kubeconfig import write_for, write_kubeconfig

        if self.pki is None:
            return write_kubeconfig(str(path), self.url, namespace=namespace)
        issued = None
        if who.startswith("node-"):
            issued = self.pki.node(who[5:])
        elif who:
            issued = self.pki.clients[who]
        return write_for(str(path), self.url, str(self.pki.ca.cert_path),
                         str(issued.cert) if issued else "", str(issued.key) if issued else "",
                         token=token, namespace=namespace)

    def client(self, who: str = "admin", *, token: str = "", timeout: float = 30.0):
        """An apiserver.client.Client as ``who`` (see kubeconfig)."""
        from apiserver.client import Client

        if self.pki is None:
            return Client(self.endpoint, timeout=timeout)
        path = self.pki.dir / f"kubeconfig-{who or 'none'}-{abs(hash(token))}"
        return Client(self.endpoint, timeout=timeout, kubeconfig=self.kubeconfig(path, who, token=token))

    def ready_probe(self, rpc_timeout: float) -> str | None:
        import grpc

        from apiserver.client import channel_for
        from apiserver.pb import api_pb2, api_pb2_grpc
        from apiserver.rest.kubeconfig import Credentials

        creds = None
        if self.pki is not None:
            admin = self.pki.clients["admin"]
            creds = Credentials(self.url, self.endpoint, True, ca=self.pki.ca.cert_path.read_bytes(),
                                cert=admin.cert.read_bytes(), key=admin.key.read_bytes())
        with channel_for(self.endpoint, creds) as ch:
            try:
                api_pb2_grpc.ApiServerStub(ch).List(
                    api_pb2.ListRequest(resource="namespaces", limit=1), timeout=rpc_timeout)
            except grpc.RpcError as e:
                return f"List: {e.code().name} {e.details()}"
        return None

    def __repr__(self) -> str:
        return f"<ApiServer {self.endpoint} pid={self.pid} {'running' if self.alive else 'stopped'}>"


def start_apiserver(tmp_path, etcd_servers: str, registry: Registry | None = None, **flags) -> ApiServer:
    return ApiServer(tmp_path, etcd_servers, registry=registry, **flags).start()


class Component(ServerProcess):
    """A control-plane process that serves no port (controller-manager,
    scheduler, kubelets): ready once it runs; ``ready`` may add a check.
    ``extra_args`` end its command line as given (flags a user typed)."""

    def __init__(self, tmp_path, name: str, module: str, server: str,
                 registry: Registry | None = None, ready=None, *, extra_args: Sequence[str] = (),
                 ready_timeout: float = DEFAULT_READY_TIMEOUT, env: dict | None = None, **flags) -> None:
        self.module = self.kind = module
        self.extra_env = dict(env or {})
        self.server = server
        self.flags = dict(flags)
        self.extra_args = list(extra_args)
        self.ready = ready
        super().__init__(name, tmp_path, registry, ready_timeout)

    @property
    def endpoint(self) -> str:
        return self.server

    def argv(self) -> list[str]:
        return [PYTHON, "-m", self.module, "--server", self.server, *_flag_args(self.flags), *self.extra_args]

    def ready_probe(self, rpc_timeout: float) -> str | None:
        if self.ready is None:
            return None
        return None if self.ready() else f"{self.name}: not ready yet"

    def __repr__(self) -> str:
        return f"<{self.module} {self.name} pid={self.pid} {'running' if self.alive else 'stopped'}>"


def start_component(tmp_path, name: str, module: str, server: str, registry: Registry | None = None,
                    ready=None, **flags) -> Component:
    return Component(tmp_path, name, module, server, registry, ready, **flags).start()


def start_control_plane(tmp_path, registry: Registry, pki=None, *, controller_manager_flags: dict | None = None,
                        **apiserver_flags) -> ApiServer:
    """etcdlite, the apiserver, a controller-manager and the scheduler, in `registry`: what nodes
    (real or hollow) need to run a Deployment. Returns the apiserver. With ``pki``: TLS and RBAC,
    each component with its own certificate (its kubeconfig in $KUBECONFIG), and etcd on TLS
    with client certificates of its own CA. ``controller_manager_flags``: more of its flags."""
    if pki is not None:
        etcd = SecureEtcdlite(tmp_path, pki, "etcd", registry).start()
    else:
        etcd = registry.start_etcdlite(tmp_path, name="etcd")
    api = ApiServer(tmp_path, etcd.url, registry=registry, pki=pki, **apiserver_flags).start()
    for name, module, who in (("cm", "controllers.manager", "controller-manager"),
                              ("scheduler", "controllers.scheduler", "scheduler")):
        env = {"KUBECONFIG": api.kubeconfig(tmp_path / f"{name}.kubeconfig", who)} if pki else None
        # as kube-controller-manager's --root-ca-file: the CA pods' ServiceAccount volumes carry
        extra = {"root_ca_file": str(pki.ca.cert_path)} if pki is not None and name == "cm" else {}
        if pki is not None and name == "cm":
            # csrsigning signs kubelets' client certificates (TLS bootstrap) with the cluster CA
            extra.update(cluster_signing_cert_file=str(pki.ca.cert_path), cluster_signing_key_file=str(pki.ca.key_path))
        if name == "cm":
            extra.update(controller_manager_flags or {})
        Component(tmp_path, name, module, api.endpoint, registry, env=env, log_level="warning", **extra).start()
    return api


@contextlib.contextmanager
def apiserver_on_etcdlite(tmp_path_factory, name: str, **flags):
    """A module's plane: one etcdlite member and an apiserver (``flags``) on
    it, both killed on exit. Yields the ApiServer."""
    reg = Registry()
    tmp = tmp_path_factory.mktemp(name)
    try:
        member = reg.start_etcdlite(tmp, name="etcd")
        yield start_apiserver(tmp, member.url, registry=reg, **flags)
    finally:
        reg.cleanup()
