"""Node provisioning latency: from "pods unschedulable" to a new node Ready and to the pods
Running. A cloud plane (harness.cloud: control plane, ``python -m cloud`` with one node group
of "small" 1-cpu instances, min 1, the cloud-controller-manager, the autoscaler scanning every
second), then per run: a Deployment of 5 pods requesting 300m cpu each (3 fit the one node),
and the moments, polled every 50 ms through the apiserver and the cloud's API:

- unschedulable: the first pod has PodScheduled=False/Unschedulable (t=0);
- scale-up: the group's target size grew (the autoscaler's decision);
- registered: the new Node exists (its kubelet and runtime started and registered it);
- initialized: the cloud-controller-manager removed its uninitialized taint;
- ready: the Node is Ready and initialized;
- running: every pod is Running and Ready.

Then the Deployment is deleted and the run waits for the scale-down back to 1 node. Needs root.

    python -m benchmarks.cloud_autoscale [--runs 3] [--out benchmarks/cloud_autoscale_results.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLL = 0.05
STEPS = ("scale-up", "registered", "initialized", "ready", "running")


def one_run(plane, index: int) -> dict[str, float]:
    from tests.test_cloud import UNINITIALIZED, deployment, ready, running_pods
    from controllers.podutil import get_condition

    c, cloud = plane.client, plane.cloud
    before = {n.metadata.name for n in c.list("nodes").items}
    target0 = cloud.node_group("pool")["targetSize"]
    name = f"load{index}"
    c.create(deployment(name, 5, "300m"))
    t: dict[str, float] = {}
    deadline = time.monotonic() + 180
    while "running" not in t:
        if time.monotonic() > deadline:
            raise SystemExit(f"run {index}: not done after 180 s: {t}")
        now = time.monotonic()
        if "unschedulable" not in t:
            for p in c.list("pods", "default", label_selector=f"app={name}").items:
                cond = get_condition(p.status.conditions, "PodScheduled")
                if cond is not None and cond.reason == "Unschedulable":
                    t["unschedulable"] = now
                    break
        if "scale-up" not in t and cloud.node_group("pool")["targetSize"] > target0:
            t["scale-up"] = now
        new = [n for n in c.list("nodes").items if n.metadata.name not in before]
        if new:
            n = new[0]
            t.setdefault("registered", now)
            if not any(x.key == UNINITIALIZED for x in n.spec.taints):
                t.setdefault("initialized", now)
                if ready(n):
                    t.setdefault("ready", now)
        if "ready" in t and running_pods(c, name, 5):
            t["running"] = now
        time.sleep(POLL)
    c.delete("deployments", name)
    end = time.monotonic() + 120
    while len(c.list("nodes").items) > 1 or cloud.node_group("pool")["targetSize"] > 1:
        if time.monotonic() > end:
            raise SystemExit(f"run {index}: no scale-down to 1 node after 120 s")
        time.sleep(0.2)
    return {k: t[k] - t["unschedulable"] for k in STEPS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default="benchmarks/cloud_autoscale_results.md")
    args = p.parse_args(argv)
    from harness.cloud import cloud_plane
    from harness.etcd_client import wait_until
    from tests.test_cloud import initialized

    results = []
    with tempfile.TemporaryDirectory(prefix="cloudbench") as tmp:
        with cloud_plane(tmp, node_groups=("pool:1:3:small",), kubelet_args=("--heartbeat-interval=1",),
                         cm_flags={"node_monitor_grace_period": 4, "node_monitor_period": 1, "pod_gc_period": 1},
                         ccm_flags={"node_monitor_period": 1, "route_reconciliation_period": 2},
                         autoscaler_flags={"scan_interval": 1, "scale_down_unneeded_time": 1,
                                           "scale_down_delay_after_add": 0}) as plane:
            wait_until(lambda: len(initialized(plane.client)) == 1, 120, 0.2, what="the first node")
            for i in range(args.runs):
                r = one_run(plane, i)
                print(f"run {i}: " + ", ".join(f"{k} {v:.2f}s" for k, v in r.items()), flush=True)
                results.append(r)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Node provisioning: pods unschedulable -> new node Ready -> pods Running",
        "",
        f"- command: `python -m benchmarks.cloud_autoscale --runs {args.runs}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; git commit: {commit}",
        f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}; "
        f"load average at end (1/5/15 min): {load}",
        "- plane: harness.cloud (etcdlite, apiserver, controller-manager, scheduler, `python -m cloud` with node "
        "group pool 1..3 x small (1 cpu), cloud-controller-manager, autoscaler --scan-interval 1); per run a "
        "Deployment of 5 busybox httpd pods at 300m cpu (3 fit the first node)",
        "- seconds after the first pod was marked Unschedulable (polled every 50 ms)",
        "",
        "| run | " + " | ".join(STEPS) + " |",
        "|---|" + "---|" * len(STEPS),
    ]
    for i, r in enumerate(results):
        lines.append(f"| {i} | " + " | ".join(f"{r[k]:.2f}" for k in STEPS) + " |")
    lines.append("| median | " + " | ".join(f"{statistics.median(r[k] for r in results):.2f}" for k in STEPS) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
