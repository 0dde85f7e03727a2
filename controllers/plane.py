"""`python -m controllers.plane`: the whole control plane on this machine, what `make run` starts.

etcdlite, the apiserver, the controller-manager, the scheduler and a few
simulated nodes, each its own process (output prefixed by its name,
restarted if it dies); then the example Deployment is applied and its
rollout followed to the end. Ctrl-C or SIGTERM stops everything.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.rest.kubeconfig import write_kubeconfig
from apiserver.up import Supervisor, plane_commands, run

EXAMPLE = Path(__file__).resolve().parent / "kctl" / "examples" / "web.yaml"

TRY_NEXT = """\
[plane] the plane is up. In another shell (the venv's kctl talks to 127.0.0.1:{port}):
    .venv/bin/kctl get nodes
    .venv/bin/kctl get deployments,pods -o wide
    .venv/bin/kctl scale deployment/web --replicas=15
    .venv/bin/kctl set image deployment/web nginx=nginx:1.27 && .venv/bin/kctl rollout status deployment/web
    .venv/bin/kctl rollout undo deployment/web
    .venv/bin/kctl get pods -w        # and, elsewhere, stop a node: see the README
[plane] kubectl works too (the apiserver serves Kubernetes' REST API on the same port):
    kubectl --kubeconfig {data}/kubeconfig get pods -o wide
[plane] Ctrl-C stops everything; the state stays in {data}/ for the next `make run`."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m controllers.plane", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="default.plane", help="etcd data and the encryption key")
    p.add_argument("--etcd-port", type=int, default=2379, help="etcd client port (peer port: +1)")
    p.add_argument("--port", type=int, default=6443, help="apiserver port (gRPC and Kubernetes' REST API)")
    p.add_argument("--nodes", type=int, default=4, help="simulated nodes")
    p.add_argument("--node-monitor-grace-period", type=float, default=20.0,
                   help="seconds without heartbeats before a node is NotReady")
    p.add_argument("--pod-eviction-timeout", type=int, default=30,
                   help="seconds pods stay on an unreachable node (their default toleration)")
    p.add_argument("--no-example", action="store_true", help="do not apply the example Deployment")
    return p


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    cmds = plane_commands(args)
    cmds["apiserver"] += ["--default-not-ready-toleration-seconds", str(args.pod_eviction_timeout),
                          "--default-unreachable-toleration-seconds", str(args.pod_eviction_timeout)]
    server = f"127.0.0.1:{args.port}"
    py = sys.executable
    cmds["controller-manager"] = [py, "-m", "controllers.manager", "--server", server, "--leader-elect",
                                  "--node-monitor-grace-period", str(args.node_monitor_grace_period),
                                  "--log-level", "warning"]
    cmds["scheduler"] = [py, "-m", "controllers.scheduler", "--server", server, "--leader-elect",
                         "--log-level", "warning"]
    cmds["kubelets"] = [py, "-m", "node.kubelet.hollow", "--server", server, "--nodes", str(args.nodes),
                        "--heartbeat-interval", "5", "--log-level", "warning"]
    return cmds


def kctl(args: argparse.Namespace, *argv: str) -> int:
    return subprocess.call([sys.executable, "-m", "controllers.kctl", "--server", f"127.0.0.1:{args.port}", *argv])


def wait_for_apiserver(args: argparse.Namespace, stopping: threading.Event, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    with Client(f"127.0.0.1:{args.port}", timeout=5) as client:
        while not stopping.is_set() and time.monotonic() < deadline:
            try:
                client.list("namespaces", limit=1)
                return True
            except ApiError:
                time.sleep(0.5)
    return False


def show_example(args: argparse.Namespace, sup: Supervisor) -> None:
    if not wait_for_apiserver(args, sup.stopping):
        if not sup.stopping.is_set():
            print("[plane] the apiserver did not come up in 120 s; see its output above", flush=True)
        return
    if not args.no_example:
        print(f"[plane] applying {EXAMPLE.relative_to(Path.cwd()) if EXAMPLE.is_relative_to(Path.cwd()) else EXAMPLE}",
              flush=True)
        if kctl(args, "apply", "-f", str(EXAMPLE)) == 0:
            kctl(args, "rollout", "status", "deployment/web", "--timeout", "180s")
            kctl(args, "get", "deployments,pods", "-o", "wide")
    print(TRY_NEXT.format(port=args.port, data=args.data_dir), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    write_kubeconfig(os.path.join(args.data_dir, "kubeconfig"), f"http://127.0.0.1:{args.port}")
    sup = Supervisor(commands(args))
    return run(sup, f"starting etcdlite (127.0.0.1:{args.etcd_port}), the apiserver (127.0.0.1:{args.port}), "
                    f"the controller-manager, the scheduler and {args.nodes} simulated nodes; "
                    f"data in {args.data_dir}/", then=lambda: show_example(args, sup))


if __name__ == "__main__":
    sys.exit(main())
