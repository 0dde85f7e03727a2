"""`python -m apiserver.up`: the embedded default plane, what `make run` starts.

One etcdlite member (data in <data-dir>/etcd) and the apiserver in front of
it (Secrets encrypted with <data-dir>/encryption.key, made on first start),
each its own process, output prefixed by its name. A process that dies is
restarted; Ctrl-C or SIGTERM stops both.

The apiserver serves TLS with RBAC (unless --insecure): <data-dir>/pki holds
the CA, its certificate, a client certificate for every component and the
ServiceAccount key (apiserver/auth/pki.py), and etcd's own CA: etcdlite serves
TLS and takes only the apiserver's etcd client certificate; <data-dir>/kubeconfig is the
admin's (kubectl, kctl: export KUBECONFIG=<data-dir>/kubeconfig), and each
component runs with a kubeconfig of its own identity in $KUBECONFIG.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from apiserver.encryption import generate_key_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m apiserver.up", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="default.plane", help="etcd data and the encryption key")
    p.add_argument("--etcd-port", type=int, default=2379, help="etcd client port (peer port: +1)")
    p.add_argument("--port", type=int, default=6443, help="apiserver gRPC port")
    add_security_flags(p)
    return p


def add_security_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure", action="store_true",
                   help="serve plain text to anyone, everything allowed (the plane before issue 23)")


class Supervisor:
    """Runs named commands, relays their output, restarts those that die.
    ``envs``: variables a command gets besides ours (its KUBECONFIG)."""

    def __init__(self, commands: dict[str, list[str]], envs: dict[str, dict[str, str]] | None = None) -> None:
        self.commands = commands
        self.envs = envs or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()

    def start(self, name: str) -> None:
        env = {**os.environ, **self.envs[name]} if name in self.envs else None
        proc = subprocess.Popen(self.commands[name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, env=env)
        self.procs[name] = proc
        threading.Thread(target=self._relay, args=(name, proc), daemon=True).start()

    def _relay(self, name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            print(f"[{name}] {line}", end="", flush=True)

    def supervise(self) -> None:
        while not self.stopping.wait(0.5):
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is not None and not self.stopping.is_set():
                    print(f"[plane] {name} exited with {code}; restarting in 1 s", flush=True)
                    time.sleep(1)
                    self.start(name)

    def stop(self) -> None:
        """Stops the processes in reverse start order, each before the next,
        so clients go while their servers still answer (a leader releases its
        lease, nothing reconnects to a server already gone)."""
        self.stopping.set()
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Security:
    """The plane's PKI and kubeconfigs (None with --insecure)."""

    def __init__(self, data_dir: str, port: int) -> None:
        from apiserver.auth.pki import plane_pki

        self.pki = plane_pki(os.path.join(data_dir, "pki"))
        self.server = f"https://127.0.0.1:{port}"
        self.admin = self.kubeconfig(os.path.join(data_dir, "kubeconfig"), "admin")
        # kubelets (hollow and the cloud's) join with this bootstrap token and get a
        # certificate each (node.kubelet.bootstrap); kept, so a restarted plane's nodes rejoin
        from apiserver.auth.bootstrap import new_token
        from apiserver.rest.kubeconfig import write_for

        token_file = self.pki.dir / "bootstrap-token"
        if not token_file.exists():
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new_token())
        self.bootstrap_token = token_file.read_text().strip()
        self.bootstrap_kubeconfig = write_for(str(self.pki.dir / "bootstrap-kubelet.conf"), self.server,
                                              str(self.pki.ca.cert_path), token=self.bootstrap_token)

    def ensure_bootstrap_token(self, client) -> None:
        """Writes the bootstrap token's Secret (kube-system/bootstrap-token-<id>, no expiry: the
        autoscaler may add an instance any time) unless it is there."""
        from apiserver.auth.bootstrap import token_secret
        from apiserver.errors import ApiError

        try:
            client.create(token_secret(self.bootstrap_token, ttl_seconds=0, description="make run's kubelets"))
        except ApiError as e:
            if e.reason != "AlreadyExists":
                raise

    def signing_flags(self) -> list[str]:
        """The controller-manager's csrsigning: kubelets' certificates signed by the cluster CA."""
        return _flags({"cluster_signing_cert_file": str(self.pki.ca.cert_path),
                       "cluster_signing_key_file": str(self.pki.ca.key_path)})

    def kubeconfig(self, path: str, who: str) -> str:
        """A kubeconfig for ``who``: a PKI client ("admin", "scheduler", ...) or "node-<name>"."""
        from apiserver.rest.kubeconfig import write_for

        issued = self.pki.node(who[5:]) if who.startswith("node-") else self.pki.clients[who]
        return write_for(path, self.server, str(self.pki.ca.cert_path), str(issued.cert), str(issued.key))

    def env(self, who: str) -> dict[str, str]:
        """$KUBECONFIG for a component running as ``who``."""
        path = os.path.join(self.pki.dir, f"{who}.kubeconfig")
        return {"KUBECONFIG": self.kubeconfig(path, who)}

    def apiserver_flags(self) -> list[str]:
        return _flags({**self.pki.apiserver_flags(), "authorization_mode": "Node,RBAC", "anonymous_auth": "false",
                       "enable_bootstrap_token_auth": True, **self.pki.kubelet_client_flags()})

    def kubelet_flags(self, node_name: str) -> list[str]:
        """A real kubelet's API on TLS, callers checked by the apiserver (TokenReview,
        SubjectAccessReview), as kubeadm configures kubelets."""
        serving = self.pki.kubelet_serving(node_name)
        return _flags({"tls_cert_file": str(serving.cert), "tls_private_key_file": str(serving.key),
                       "client_ca_file": str(self.pki.ca.cert_path), "authentication_token_webhook": True,
                       "authorization_mode": "Webhook", "anonymous_auth": "false"})


def _flags(flags: dict) -> list[str]:
    """{"cert_file": "x", "client_cert_auth": True} -> ["--cert-file", "x", "--client-cert-auth"]."""
    out = []
    for key, value in flags.items():
        out.append(f"--{key.replace('_', '-')}")
        if value is not True:
            out.append(str(value))
    return out


def plane_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """The commands; ``args.security`` (a Security, or None with --insecure) and
    ``args.envs`` (each command's $KUBECONFIG) are set for the caller."""
    key_file = os.path.join(args.data_dir, "encryption.key")
    if not os.path.exists(key_file):
        generate_key_file(key_file)
    etcd_url = f"http://127.0.0.1:{args.etcd_port}"
    args.security = None if getattr(args, "insecure", False) else Security(args.data_dir, args.port)
    args.envs = {}
    secure = args.security.apiserver_flags() if args.security else []
    etcd_tls = []
    if args.security:  # etcd on TLS, open only to the apiserver's certificate (of etcd's own CA)
        etcd_url = f"https://127.0.0.1:{args.etcd_port}"
        etcd_tls = _flags(args.security.pki.etcd_flags())
        secure += _flags(args.security.pki.apiserver_etcd_flags())
    return {
        "etcdlite": [sys.executable, "-m", "etcdlite", "--data-dir", os.path.join(args.data_dir, "etcd"),
                     "--listen-client-urls", etcd_url,
                     "--listen-peer-urls", f"http://127.0.0.1:{args.etcd_port + 1}",
                     "--log-level", "warn", *etcd_tls],
        "apiserver": [sys.executable, "-m", "apiserver", "--etcd-servers", etcd_url,
                      "--port", str(args.port), "--encryption-key-file", key_file, *secure],
    }


def run(sup: Supervisor, banner: str, then=None) -> int:
    """Starts every command, runs ``then()`` (if given) in a thread, and
    supervises until Ctrl-C or SIGTERM; then stops everything."""
    signal.signal(signal.SIGTERM, lambda *_: sup.stopping.set())
    print(f"[plane] {banner}", flush=True)
    for name in sup.commands:
        sup.start(name)
    if then is not None:
        threading.Thread(target=then, daemon=True).start()
    try:
        sup.supervise()
    except KeyboardInterrupt:
        pass
    finally:
        print("[plane] stopping", flush=True)
        sup.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    cmds = plane_commands(args)
    how = f"TLS and RBAC; export KUBECONFIG={args.security.admin}" if args.security else "plain text, no checks"
    return run(Supervisor(cmds, args.envs),
               f"starting etcdlite (127.0.0.1:{args.etcd_port}) and the apiserver "
               f"(127.0.0.1:{args.port}, {how}); data in {args.data_dir}/; Ctrl-C stops")


if __name__ == "__main__":
    sys.exit(main())
