"""The CRI runtime's share of pod startup on this machine: RunPodSandbox, CreateContainer and
StartContainer latencies through the CRI client, for busybox pods on 3 real nodes (one
``python -m node.runtime`` each), `--parallel` pods at a time; the runtime processes' CPU per
pod started; StopPodSandbox + RemovePodSandbox per pod. Needs root, runc, conmon, busybox-static.

    python -m benchmarks.cri_runtime [--pods 100] [--parallel 10] [--out benchmarks/cri_runtime_results.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.output import emit
from node import network
from node.cri.client import CriClient
from node.network import fabric
from node.pb import cri_pb2
from node.runtime.cleanup import cleanup
from node.runtime.images import ImageStore, build_busybox

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODES = 3


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pod(client: CriClient, k: int, log_root: str, times: dict) -> str:
    cfg = cri_pb2.PodSandboxConfig(
        metadata=cri_pb2.PodSandboxMetadata(name=f"bench-{k}", namespace="default", uid=f"uid-{k}"),
        hostname=f"bench-{k}", log_directory=os.path.join(log_root, f"default_bench-{k}_uid-{k}"))
    t0 = time.perf_counter()
    sid = client.run_pod_sandbox(cfg)
    t1 = time.perf_counter()
    cc = cri_pb2.ContainerConfig(metadata=cri_pb2.ContainerMetadata(name="c"),
                                 image=cri_pb2.ImageSpec(image="busybox"),
                                 command=["sleep", "3600"], log_path="c/0.log")
    cid = client.create_container(sid, cc, cfg)
    t2 = time.perf_counter()
    client.start_container(cid)
    t3 = time.perf_counter()
    times["RunPodSandbox"].append(t1 - t0)
    times["CreateContainer"].append(t2 - t1)
    times["StartContainer"].append(t3 - t2)
    times["pod: sandbox -> container started"].append(t3 - t0)
    return sid


def _tree_cpu(procs, prefixes) -> float:
    """The runtimes' CPU with their children (conmon, runc, ip), containers left out."""
    from benchmarks.plane_scale.realnodes import tree_cpu_seconds
    return sum(tree_cpu_seconds(p.pid, prefixes) or 0.0 for p in procs)


def run(pods: int, parallel: int) -> tuple[dict[str, list[float]], float, float, float]:
    plane = network.new_prefix()
    fab = fabric.Fabric(plane)
    base = tempfile.mkdtemp(prefix=f"{plane}-cri-")
    times: dict[str, list[float]] = {k: [] for k in (
        "RunPodSandbox", "CreateContainer", "StartContainer", "pod: sandbox -> container started",
        "StopPodSandbox + RemovePodSandbox")}
    procs, clients, nets = [], [], []
    try:
        fab.create()
        images = os.path.join(base, "images")
        build_busybox(ImageStore(images))
        for i in range(NODES):
            net = fab.add_node(i)
            nets.append(net)
            sock = os.path.join(base, f"n{i}.sock")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "node.runtime", "--listen", f"unix://{sock}", "--root",
                 os.path.join(base, f"root{i}"), "--prefix", net.name, "--image-store", images,
                 "--log-level", "warning"], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO)))
            c = CriClient(f"unix://{sock}", timeout=120)
            c.wait_ready(30)
            c.update_runtime_config(net.pod_cidr)
            clients.append(c)
        prefixes = tuple(n.name for n in nets)
        cpu0 = sum(_cpu_seconds(p.pid) for p in procs)
        tree0 = _tree_cpu(procs, prefixes)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(parallel) as ex:
            sids = list(ex.map(lambda k: (k % NODES, _pod(clients[k % NODES], k, os.path.join(base, "logs"),
                                                            times)), range(pods)))
        wall = time.perf_counter() - t0
        cpu = sum(_cpu_seconds(p.pid) for p in procs) - cpu0
        tree = _tree_cpu(procs, prefixes) - tree0

        def teardown(item):
            i, sid = item
            t = time.perf_counter()
            clients[i].stop_pod_sandbox(sid)
            clients[i].remove_pod_sandbox(sid)
            times["StopPodSandbox + RemovePodSandbox"].append(time.perf_counter() - t)
        down0 = sum(_cpu_seconds(p.pid) for p in procs), _tree_cpu(procs, prefixes)
        with ThreadPoolExecutor(parallel) as ex:
            list(ex.map(teardown, sids))
        down = (sum(_cpu_seconds(p.pid) for p in procs) - down0[0],
                _tree_cpu(procs, prefixes) - down0[1])
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        for c in clients:
            c.close()
        for i, net in enumerate(nets):
            cleanup(net.name, os.path.join(base, f"root{i}"))
        network.cleanup(plane)
        shutil.rmtree(base, ignore_errors=True)
    return times, cpu, tree, wall, down


def report(times: dict[str, list[float]], cpu: float, tree: float, wall: float, pods: int,
           parallel: int, down: tuple[float, float]) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=REPO).stdout.strip()
    except OSError:
        commit = "?"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# CRI runtime: pod start and removal through CRI (node/runtime)", "",
        f"- command: `python -m benchmarks.cri_runtime --pods {pods} --parallel {parallel}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; git commit: {commit}",
        f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, Python "
        f"{platform.python_version()}; load average at end (1/5/15 min): {load}",
        f"- {pods} busybox pods (one sandbox + one `sleep` container) over {NODES} nodes, "
        f"{parallel} at a time; runc {_version(['runc', '--version'])}, conmon {_version(['conmon', '--version'])}",
        f"- all {pods} pods started in {wall:.1f} s ({pods / wall:.1f} pods/s)",
        f"- runtime processes' CPU per pod started (user + system, runc and conmon not included): "
        f"{cpu / pods * 1e3:.1f} ms",
        f"- with their children (conmon, runc, ip; containers left out): {tree / pods * 1e3:.1f} ms",
        f"- CPU per pod stopped and removed: runtime processes {down[0] / pods * 1e3:.1f} ms, with "
        f"their children {down[1] / pods * 1e3:.1f} ms", "",
        "| call | p50 ms | p99 ms | max ms |", "|---|---|---|---|"]
    for k, xs in times.items():
        lines.append(f"| {k} | {statistics.median(xs) * 1e3:.1f} | {_pct(xs, 0.99) * 1e3:.1f} | "
                     f"{max(xs) * 1e3:.1f} |")
    return "\n".join(lines) + "\n"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True).stdout.split()
        return out[2] if len(out) > 2 else "?"
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (namespaces, cgroups, mounts)", file=sys.stderr)
        return 2
    times, cpu, tree, wall, down = run(args.pods, args.parallel)
    text = report(times, cpu, tree, wall, args.pods, args.parallel, down)
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
