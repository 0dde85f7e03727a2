"""The apiserver's two APIs side by side, idle: the plane benchmark's probe calls (create, get,
update and delete a ConfigMap; list a page of 100 pods) over gRPC (apiserver.client) and over
Kubernetes' REST API (HTTP/1.1 keep-alive, JSON, as kubectl and client-go call it), one call at
a time, the two APIs taking turns each round so both see the same machine.

    python -m benchmarks.rest_probe [--rounds N] [--out benchmarks/rest_results.md]
    python -m benchmarks.rest_probe --security   # beside them, a second apiserver with TLS, a
                                                 # client certificate and RBAC (a user with `edit`
                                                 # in the namespace): benchmarks/security_results.md

Under load, the plane benchmark's probe (benchmarks/plane_scale/observers.py) takes the same
turns during the 3,000-pod rollout: plane_results.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from harness.plane import start_apiserver
from harness.procs import Registry

from apiserver.client import Client
from apiserver.pb import core_pb2

NAMESPACE = "bench-probe"
OPS = ("get", "list", "create", "update", "delete")
REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


class Rest:
    def __init__(self, port: int, ssl_context=None) -> None:
        if ssl_context is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        else:
            self.conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=ssl_context)

    def call(self, method: str, path: str, body=None, content_type: str = "application/json"):
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = json.loads(resp.read())
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {payload.get('message')}")
        return payload


def setup(client: Client) -> None:
    ns = core_pb2.Namespace()
    ns.metadata.name = NAMESPACE
    client.create(ns)
    for i in range(100):
        pod = core_pb2.Pod()
        pod.metadata.name, pod.metadata.namespace = f"pod-{i}", NAMESPACE
        pod.metadata.labels["app"] = "probe"
        pod.spec.containers.add(name="c", image="busybox:1")
        client.create(pod)


def round_grpc(client: Client, i: int, samples: dict) -> None:
    name = f"grpc-{i}"
    cm = core_pb2.ConfigMap()
    cm.metadata.name, cm.metadata.namespace = name, NAMESPACE
    cm.data["n"] = str(i)
    changed = core_pb2.ConfigMap()
    changed.CopyFrom(cm)
    changed.data["n"] = f"{i}-updated"
    for op, call in (("create", lambda: client.create(cm)),
                     ("get", lambda: client.get("configmaps", name, NAMESPACE)),
                     ("update", lambda: client.update(changed)),
                     ("list", lambda: client.list("pods", NAMESPACE, limit=100)),
                     ("delete", lambda: client.delete("configmaps", name, NAMESPACE))):
        t = time.perf_counter()
        call()
        samples[op].append(time.perf_counter() - t)


def round_rest(rest: Rest, i: int, samples: dict) -> None:
    name = f"rest-{i}"
    base = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": str(i)}}
    changed = {**cm, "data": {"n": f"{i}-updated"}}
    for op, call in (("create", lambda: rest.call("POST", base, cm)),
                     ("get", lambda: rest.call("GET", f"{base}/{name}")),
                     ("update", lambda: rest.call("PUT", f"{base}/{name}", changed)),
                     ("list", lambda: rest.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?limit=100")),
                     ("delete", lambda: rest.call("DELETE", f"{base}/{name}"))):
        t = time.perf_counter()
        call()
        samples[op].append(time.perf_counter() - t)


def secure_apiserver(tmp: str, reg: Registry, etcd_url: str):
    """An apiserver with TLS and Node,RBAC on the same etcd, and a user ``bench``
    (a client certificate) with the ClusterRole edit in the probe's namespace:
    each of its calls is authenticated and authorized by RBAC's rules (the admin's
    system:masters would skip them). Returns (ApiServer, Client, Rest)."""
    import ssl

    from harness.plane import ApiServer

    from apiserver.auth.pki import plane_pki
    from apiserver.pb import rbac_pb2

    pki = plane_pki(Path(tmp) / "pki")
    api = ApiServer(tmp, etcd_url, name="apiserver-secure", registry=reg, pki=pki, log_level="warning").start()
    with api.client("admin") as admin:
        admin.create(rbac_pb2.RoleBinding(
            metadata={"name": "bench-edit", "namespace": NAMESPACE},
            role_ref=rbac_pb2.RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="edit"),
            subjects=[rbac_pb2.Subject(kind="User", api_group="rbac.authorization.k8s.io", name="bench")]))
    pki.clients["bench"] = pki.ca.issue("bench", "bench")
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    ctx.load_cert_chain(str(pki.clients["bench"].cert), str(pki.clients["bench"].key))
    client = api.client("bench")
    deadline = time.monotonic() + 30
    while True:  # until the apiserver's cache has the binding
        try:
            client.list("pods", NAMESPACE, limit=1)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return api, client, Rest(api.port, ctx)


def report(samples: dict, rounds: int, took: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# The apiserver's gRPC and REST APIs side by side (idle)", "",
        "- command: `python -m benchmarks.rest_probe`",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC; took {took:.1f} s; {rounds} rounds",
        f"- machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; load average at the end (1/5/15 min): {load}",
        f"- git commit: {commit}",
        "- one etcdlite member and one apiserver; one client at a time, the APIs taking turns each "
        "round; REST is HTTP/1.1 keep-alive with JSON bodies (kubectl's and client-go's way), gRPC "
        "is apiserver.client; list is one page of 100 pods", "",
        "p50 / p99 in ms:", "",
        "| API | " + " | ".join(OPS) + " |",
        "|---|" + "---|" * len(OPS)]
    if len(samples) > 2:
        lines[0] = "# The apiserver without and with TLS + RBAC (idle)"
        lines[2] = "- command: `python -m benchmarks.rest_probe --security`"
        lines[6] += ("; beside it a second apiserver on the same etcd with TLS, client certificates and "
                     "`--authorization-mode=Node,RBAC`, called as a user with `edit` in the namespace "
                     "(RBAC evaluates every call); the four take turns each round")
    for api in samples:
        cells = [f"{percentile(samples[api][op], 50) * 1e3:.2f} / {percentile(samples[api][op], 99) * 1e3:.2f}"
                 for op in OPS]
        lines.append(f"| {api} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rest_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--out", default="")
    p.add_argument("--security", action="store_true",
                   help="also probe an apiserver with TLS and RBAC (default --out: benchmarks/security_results.md)")
    args = p.parse_args(argv)
    args.out = args.out or str(REPO / "benchmarks" / ("security_results.md" if args.security else "rest_results.md"))
    reg = Registry()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rest-probe-") as tmp:
        try:
            member = reg.start_etcdlite(tmp, name="etcd")
            api = start_apiserver(tmp, member.url, registry=reg, log_level="warning")
            client = Client(api.endpoint, timeout=30)
            setup(client)
            rest = Rest(api.port)
            samples = {"gRPC": {op: [] for op in OPS}, "REST": {op: [] for op in OPS}}
            secure = None
            if args.security:
                secure = secure_apiserver(tmp, reg, member.url)
                samples = {name: {op: [] for op in OPS} for name in
                           ("gRPC", "gRPC, TLS + RBAC", "REST", "REST, TLS + RBAC")}
            for i in range(args.rounds):
                round_grpc(client, i, samples["gRPC"])
                round_rest(rest, i, samples["REST"])
                if secure is not None:
                    round_grpc(secure[1], i + args.rounds, samples["gRPC, TLS + RBAC"])
                    round_rest(secure[2], i + args.rounds, samples["REST, TLS + RBAC"])
            client.close()
            if secure is not None:
                secure[1].close()
        finally:
            reg.cleanup()
    text = report(samples, args.rounds, time.monotonic() - started)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
