"""`python -m controllers.plane`: the whole plane on this machine, what `make run` starts.

etcdlite, the apiserver, the controller-manager, the scheduler and the nodes,
each its own process (output prefixed by its name, restarted if it dies):
real nodes (a network namespace, a CRI runtime and a kubelet each) where the
machine allows them, simulated ones otherwise or when asked; then the example
Deployment is applied and its rollout followed to the end. Ctrl-C or SIGTERM
stops everything, and the real nodes' containers, mounts, cgroups and
namespaces are removed.
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
from apiserver.up import Supervisor, add_security_flags, plane_commands, run

EXAMPLE = Path(__file__).resolve().parent / "kctl" / "examples" / "web.yaml"

TRY_NEXT = """\
[plane] the plane is up. In another shell (the venv's kctl talks to 127.0.0.1:{port}, as the admin of
[plane] {data}/kubeconfig: a client certificate of the plane's CA in {data}/pki):
    export KUBECONFIG={kubeconfig}
    .venv/bin/kctl get nodes
    .venv/bin/kctl get deployments,pods -o wide
    .venv/bin/kctl scale deployment/web --replicas=15
    .venv/bin/kctl set image deployment/web web=busybox:1.35 && .venv/bin/kctl rollout status deployment/web
    .venv/bin/kctl rollout undo deployment/web
    .venv/bin/kctl get pods -w        # and, elsewhere, stop a node: see the README
[plane] kubectl works too (the apiserver serves Kubernetes' REST API on the same port):
    .venv/bin/kubectl get pods -o wide    # (make test fetches kubectl 1.32)
    .venv/bin/kubectl auth can-i delete secrets --all-namespaces
[plane] Ctrl-C stops everything; the state stays in {data}/ for the next `make run`."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m controllers.plane", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="default.plane", help="etcd data and the encryption key")
    p.add_argument("--etcd-port", type=int, default=2379, help="etcd client port (peer port: +1)")
    p.add_argument("--port", type=int, default=6443, help="apiserver port (gRPC and Kubernetes' REST API)")
    p.add_argument("--real-nodes", type=int, default=None,
                   help="real nodes (default 3 where the machine allows them, else 0)")
    p.add_argument("--nodes", type=int, default=None,
                   help="simulated nodes (default 0 beside real nodes, else 4)")
    p.add_argument("--node-monitor-grace-period", type=float, default=20.0,
                   help="seconds without heartbeats before a node is NotReady")
    p.add_argument("--pod-eviction-timeout", type=int, default=30,
                   help="seconds pods stay on an unreachable node (their default toleration)")
    p.add_argument("--no-example", action="store_true", help="do not apply the example Deployment")
    p.add_argument("--cloud", default="", metavar="MIN:MAX",
                   help="nodes from a cloud on this machine instead (python -m cloud, issue 20): a node group "
                        "of MIN..MAX small instances, the cloud-controller-manager and the autoscaler; the "
                        "example's Service becomes a LoadBalancer")
    p.add_argument("--cloud-port", type=int, default=7070, help="the cloud's API port (with --cloud)")
    add_security_flags(p)
    return p


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    cmds = plane_commands(args)
    cmds["apiserver"] += ["--default-not-ready-toleration-seconds", str(args.pod_eviction_timeout),
                          "--default-unreachable-toleration-seconds", str(args.pod_eviction_timeout)]
    server = f"127.0.0.1:{args.port}"
    py = sys.executable
    cmds["controller-manager"] = [py, "-m", "controllers.manager", "--server", server, "--leader-elect",
                                  "--node-monitor-grace-period", str(args.node_monitor_grace_period),
                                  "--storage-dir", os.path.join(os.path.abspath(args.data_dir), "storage"),
                                  "--log-level", "warning"]
    cmds["scheduler"] = [py, "-m", "controllers.scheduler", "--server", server, "--leader-elect",
                         "--log-level", "warning"]
    if args.real is not None:
        cmds.update(args.real.commands(server))
        # pods reach it through the `kubernetes` Service: a listener on the control plane's host
        # on the nodes' fabric, that Service's endpoint
        cmds["apiserver"] += args.real.apiserver_flags()
    if args.cloud:  # after the apiserver: stopped (instances deleted) while it still answers
        from node.plane import RealNodes

        # the cloud's plane (its prefix kept under <data>/cloud): pods reach the apiserver there
        cmds["apiserver"] += RealNodes(os.path.join(args.data_dir, "cloud"), 0).apiserver_flags()
        url = f"http://127.0.0.1:{args.cloud_port}"
        cmds["cloud"] = [py, "-m", "cloud", "--data-dir", os.path.join(args.data_dir, "cloud"), "--server", server,
                         "--port", str(args.cloud_port), "--node-group", f"pool:{args.cloud}:small",
                         "--log-level", "warning"]
        cmds["cloud-controller-manager"] = [py, "-m", "cloud.ccm", "--server", server, "--cloud-url", url,
                                            "--leader-elect", "--log-level", "warning"]
        cmds["cluster-autoscaler"] = [py, "-m", "cloud.autoscaler", "--server", server, "--cloud-url", url,
                                      "--leader-elect", "--scan-interval", "2", "--scale-down-unneeded-time", "60",
                                      "--scale-down-delay-after-add", "60", "--log-level", "info"]
    if args.nodes:
        cmds["kubelets"] = [py, "-m", "node.kubelet.hollow", "--server", server, "--nodes", str(args.nodes),
                            "--start-index", str(args.real_nodes), "--heartbeat-interval", "5",
                            "--log-level", "warning"]
    if args.security is not None:
        # the CA pods' ServiceAccount volumes carry (ConfigMap kube-root-ca.crt in every namespace)
        cmds["controller-manager"] += ["--root-ca-file", str(args.security.pki.ca.cert_path),
                                       *args.security.signing_flags()]
        if "kubelets" in cmds:  # every hollow node with a certificate of its own (TLS bootstrap)
            cmds["kubelets"] += ["--bootstrap-kubeconfig", args.security.bootstrap_kubeconfig,
                                 "--cert-dir", os.path.join(os.path.abspath(args.data_dir), "kubelets")]
        # each component with its own identity (apiserver/auth/policy.py grants what it needs)
        who = {"controller-manager": "controller-manager", "scheduler": "scheduler",
               "dns": "dns", "cloud": "cloud-nodes", "cloud-controller-manager": "cloud-controller-manager",
               "cluster-autoscaler": "cluster-autoscaler"}
        if args.real is not None:
            for node in args.real.nodes:
                who[f"kubelet-{node.index}"] = f"node-{node.name}"
                who[f"proxy-{node.index}"] = "kube-proxy"
                if f"kubelet-{node.index}" in cmds:  # its API on TLS, callers checked by the apiserver
                    cmds[f"kubelet-{node.index}"] += args.security.kubelet_flags(node.name)
        if "cloud" in cmds:  # the instances' kubelets too (one serving certificate for all: 127.0.0.1)
            cmds["cloud"] += [f"--kubelet-arg={a}" for a in args.security.kubelet_flags("cloud-instance")]
            # each instance's kubelet bootstraps a certificate of its own (system:node:<instance>)
            cmds["cloud"] += [f"--kubelet-arg=--bootstrap-kubeconfig={args.security.bootstrap_kubeconfig}"]
        args.envs.update({name: args.security.env(w) for name, w in who.items() if name in cmds})
    return cmds


def choose_nodes(args: argparse.Namespace) -> str:
    """Settle how many real and simulated nodes to run; returns what to say about it."""
    from node.capable import why_not

    said = ""
    if args.cloud:
        reason = why_not()
        if reason:
            raise SystemExit(f"--cloud needs real nodes, which this machine cannot run: {reason}")
        try:
            low, high = (int(x) for x in args.cloud.split(":"))
        except ValueError:
            raise SystemExit(f"--cloud {args.cloud!r}: expected MIN:MAX, e.g. 2:4") from None
        args.real_nodes = 0
        args.nodes = args.nodes or 0
        args.real = None
        return f"nodes from the cloud: a group of {low}..{high} small (1 cpu) instances"
    if args.real_nodes is None or args.real_nodes > 0:
        reason = why_not()
        if reason:
            said = f"no real nodes: {reason}; simulated nodes instead"
            args.real_nodes = 0
        elif args.real_nodes is None:
            args.real_nodes = 3
    if args.nodes is None:
        args.nodes = 0 if args.real_nodes else 4
    args.real = None
    if args.real_nodes:
        from node.plane import RealNodes

        args.real = RealNodes(args.data_dir, args.real_nodes)
    return said


def describe_nodes(args: argparse.Namespace) -> str:
    parts = []
    if args.real_nodes:
        parts.append(f"{args.real_nodes} real nodes (namespaces {args.real.prefix}-n*)")
    if args.nodes:
        parts.append(f"{args.nodes} simulated nodes")
    if args.cloud:
        parts.append(f"the cloud (API on 127.0.0.1:{args.cloud_port}, a node group of {args.cloud} instances), "
                     "its cloud-controller-manager and the autoscaler")
    return " and ".join(parts) or "no nodes"


def admin_env(args: argparse.Namespace) -> dict | None:
    """The environment of our own kctl runs: the admin's kubeconfig."""
    return {**os.environ, "KUBECONFIG": args.security.admin} if args.security else None


def admin_client(args: argparse.Namespace) -> Client:
    return Client(f"127.0.0.1:{args.port}", timeout=5,
                  kubeconfig=args.security.admin if args.security else None)


def kctl(args: argparse.Namespace, *argv: str) -> int:
    return subprocess.call([sys.executable, "-m", "controllers.kctl", "--server", f"127.0.0.1:{args.port}", *argv],
                           env=admin_env(args))


def wait_for_apiserver(args: argparse.Namespace, stopping: threading.Event, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    with admin_client(args) as client:
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
    if args.security is not None:  # what the kubelets' TLS bootstrap waits for
        with admin_client(args) as client:
            args.security.ensure_bootstrap_token(client)
    if not args.no_example:
        print(f"[plane] applying {EXAMPLE.relative_to(Path.cwd()) if EXAMPLE.is_relative_to(Path.cwd()) else EXAMPLE}",
              flush=True)
        if kctl(args, "apply", "-f", str(EXAMPLE)) == 0:
            kctl(args, "rollout", "status", "deployment/web", "--timeout", "180s")
            kctl(args, "get", "deployments,pods", "-o", "wide")
            if args.real is not None:
                show_page(args)
            if args.cloud:
                show_load_balancer(args)
    print(TRY_NEXT.format(port=args.port, data=args.data_dir,
                          kubeconfig=os.path.abspath(os.path.join(args.data_dir, "kubeconfig"))), flush=True)


def show_page(args: argparse.Namespace) -> None:
    """Fetch the example's page from a pod by its IP, from another node's namespace, and print
    the command that does it."""
    with admin_client(args) as client:
        pods = [p for p in client.list("pods", namespace="default", label_selector="app=web").items
                if p.status.pod_ip and p.status.phase == "Running"]
    if not pods:
        return
    pod = pods[0]
    other = next((n for n in args.real.nodes if n.name != pod.spec.node_name), args.real.nodes[0])
    # (no -T: Debian's busybox 1.35 wget crashes when given one)
    command = ["ip", "netns", "exec", other.netns, "busybox", "wget", "-qO-", f"http://{pod.status.pod_ip}/"]
    print(f"[plane] the page of pod {pod.metadata.name} (on {pod.spec.node_name}), fetched by its IP "
          f"from {other.name}:\n    {' '.join(command)}", flush=True)
    got = subprocess.run(command, capture_output=True, text=True, timeout=10)
    print("    " + (got.stdout.strip() or got.stderr.strip()), flush=True)
    # through the Service: cluster DNS gives its clusterIP, kube-proxy picks a pod
    url = "http://web.default.svc.cluster.local/"
    command = [".venv/bin/kctl", "exec", pod.metadata.name, "--", "wget", "-qO-", url]
    print(f"[plane] the Service, from inside pod {pod.metadata.name} (each time another pod may answer):\n"
          f"    {' '.join(command)}", flush=True)
    for _ in range(3):
        got = subprocess.run([sys.executable, "-m", "controllers.kctl", "--server", f"127.0.0.1:{args.port}",
                              "exec", pod.metadata.name, "--", "wget", "-qO-", url],
                             capture_output=True, text=True, timeout=20, env=admin_env(args))
        print("    " + (got.stdout.strip() or got.stderr.strip()), flush=True)


def show_load_balancer(args: argparse.Namespace) -> None:
    """Make the example's Service a LoadBalancer, wait for its address, fetch it from the cloud's
    client namespace (outside the cluster) and print the command that does it."""
    from cloud.client import CloudClient

    with admin_client(args) as client:  # on a secure plane: the admin's certificate
        client.patch("services", "web", {"spec": {"type": "LoadBalancer"}})
        deadline = time.monotonic() + 60
        while not (svc := client.get("services", "web")).status.load_balancer.ingress:
            if time.monotonic() > deadline:
                print("[plane] the Service got no load balancer in 60 s; see the cloud-controller-manager's "
                      "output above", flush=True)
                return
            time.sleep(0.5)
    vip = svc.status.load_balancer.ingress[0].ip
    inet = CloudClient(f"http://127.0.0.1:{args.cloud_port}").metadata()["internet"]
    command = ["ip", "netns", "exec", inet, "busybox", "wget", "-qO-", f"http://{vip}/"]
    print(f"[plane] Service web is a LoadBalancer at {vip}; from a machine outside the cluster:\n"
          f"    {' '.join(command)}", flush=True)
    for _ in range(3):
        got = subprocess.run(command, capture_output=True, text=True, timeout=10)
        print("    " + (got.stdout.strip() or got.stderr.strip()), flush=True)
    print("[plane] more pods than the nodes hold (16 each) bring a node, which goes again after 60 s idle:\n"
          "    .venv/bin/kctl scale deployment/web --replicas=40 && .venv/bin/kctl get nodes -w", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    said = choose_nodes(args)
    if said:
        print(f"[plane] {said}", flush=True)
    if args.real is not None:
        print(f"[plane] making {args.real_nodes} real nodes: their network and the busybox image", flush=True)
        args.real.prepare()
    cmds = commands(args)
    if args.security is None:
        write_kubeconfig(os.path.join(args.data_dir, "kubeconfig"), f"http://127.0.0.1:{args.port}")
    sup = Supervisor(cmds, args.envs)
    how = "TLS and RBAC, each component with its own certificate" if args.security else "plain text, no checks"
    try:
        return run(sup, f"starting etcdlite (127.0.0.1:{args.etcd_port}), "
                        f"the apiserver (127.0.0.1:{args.port}, {how}), "
                        f"the controller-manager, the scheduler and {describe_nodes(args)}; "
                        f"data in {args.data_dir}/", then=lambda: show_example(args, sup))
    finally:
        if args.real is not None:
            print("[plane] removing the real nodes' containers, mounts, cgroups and namespaces", flush=True)
            for problem in args.real.teardown():
                print(f"[plane] could not remove: {problem}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
