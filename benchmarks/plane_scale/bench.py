"""The benchmark's run: the plane up and its nodes Ready, then the phases
(idle, rollout, steady, scale-down), each ending with a snapshot; a clear
message saying what is stuck when nothing moves; the command line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from apiserver.client import Client
from apiserver.errors import ApiError
from apiserver.pb import apps_pb2, core_pb2
from benchmarks.plane_scale import APP, NAMESPACE, PHASES, PROBE_NAMESPACE, log
from benchmarks.plane_scale.measure import (
    Snapshot,
    latency_summary,
    rollout_figures,
    snapshot,
    timeline,
    usage,
    writes_by_resource,
)
from benchmarks.plane_scale.observers import (
    PROBE_OPS,
    PodTracker,
    Probe,
    running_and_ready,
)
from benchmarks.plane_scale.processes import Plane, Profiler
from benchmarks.plane_scale.report import git_commit, machine, markdown, to_json
from harness.procs import REPO


class Stalled(RuntimeError):
    pass


def bench_deployment(replicas: int, cpu: str, memory: str) -> apps_pb2.Deployment:
    d = apps_pb2.Deployment()
    d.metadata.name, d.metadata.namespace = APP, NAMESPACE
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = APP
    d.spec.template.metadata.labels["app"] = APP
    c = d.spec.template.spec.containers.add(name="app", image="registry.k8s.io/pause:3.9")
    c.resources.requests["cpu"], c.resources.requests["memory"] = cpu, memory
    return d


def ready_node_count(client: Client) -> tuple[int, int]:
    nodes = client.list("nodes").items
    ready = sum(any(c.type == "Ready" and c.status == "True" for c in n.status.conditions) for n in nodes)
    return ready, len(nodes)


def deployment_done(d, replicas: int) -> bool:
    s = d.status
    return (s.observed_generation >= d.metadata.generation and s.replicas == replicas
            and s.updated_replicas == replicas and s.available_replicas == replicas)


def available_condition(d) -> bool:
    return any(c.type == "Available" and c.status == "True" for c in d.status.conditions)


def events_by_reason(client: Client) -> dict[str, dict[str, int]]:
    """The Events in the Deployment's namespace, by "component reason": how
    many Event objects and the sum of their counts."""
    out: dict[str, dict[str, int]] = {}
    for e in client.list_all("events", NAMESPACE).items:
        row = out.setdefault(f"{e.source.component or e.reporting_component} {e.reason}", {"objects": 0, "count": 0})
        row["objects"] += 1
        row["count"] += max(1, e.count)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["objects"]))


def diagnose(client: Client, plane: Plane) -> str:
    """What is stuck, in a few lines: dead processes, nodes, pods by state, scheduling failures."""
    lines = []
    for p in plane.dead():
        lines.append(f"process {p.name} DIED (rc={p.proc.returncode}); last lines of its log:\n{p.log_tail(15)}")
    try:
        ready, total = ready_node_count(client)
        lines.append(f"nodes: {ready} Ready of {total}")
        pods = client.list_all("pods", NAMESPACE).items
        unbound = [p for p in pods if not p.spec.node_name]
        starting = [p for p in pods if p.spec.node_name and not running_and_ready(p)]
        terminating = [p for p in pods if p.metadata.deletion_timestamp]
        lines.append(f"pods: {len(pods)}: {len(unbound)} Pending without a node, {len(starting)} bound "
                     f"but not Running+Ready, {len(terminating)} terminating")
        events = [e for e in client.list_all("events", NAMESPACE).items if e.reason == "FailedScheduling"]
        if events:
            messages = Counter(e.message for e in events).most_common(3)
            lines.append(f"FailedScheduling events: {len(events)}: "
                         + "; ".join(f"{n} x {m!r}" for m, n in messages))
        elif unbound:
            lines.append("no FailedScheduling events: the scheduler has not tried them (is it running?)")
        for rs in client.list("replicasets", NAMESPACE).items:
            lines.append(f"replicaset {rs.metadata.name}: spec {rs.spec.replicas}, status replicas "
                         f"{rs.status.replicas} ready {rs.status.ready_replicas}")
    except ApiError as e:
        lines.append(f"the apiserver does not answer: {e.reason} {e}")
    return "\n".join(lines)


def wait_for(what: str, done, progress, args, deadline: float, plane: Plane,
             stall: float | None, explain) -> float:
    """Polls ``done()`` until true and returns when it became so, printing
    ``progress()`` every few seconds. Raises Stalled, saying what is stuck and
    ``explain()``, when a component of ``plane`` died, progress() has not changed
    for ``stall`` seconds, or ``deadline`` (monotonic) passed."""
    stall = stall or args.stall_timeout
    start = last_change = time.monotonic()
    last, last_print = None, 0.0
    while not done():
        now = time.monotonic()
        state = progress()
        if state != last:
            last, last_change = state, now
        if now - last_print >= args.progress_every:
            log(f"{state}, {now - start:.1f} s")
            last_print = now
        dead = plane.dead()
        if dead or now - last_change > stall or now > deadline:
            why = (f"{', '.join(p.name for p in dead)} died" if dead else
                   f"no progress for {now - last_change:.0f} s" if now - last_change > stall else
                   f"the overall timeout of {args.timeout:.0f} s passed")
            raise Stalled(f"{what}: stuck at {state} ({why}).\n{explain()}")
        time.sleep(0.25)
    return time.monotonic()


class Benchmark:
    """One run: the plane up, N nodes Ready, then the phases of PHASES, each
    ending with a Snapshot; ``results()`` puts the figures together."""

    def __init__(self, args, workdir: Path) -> None:
        self.args = args
        self.plane = Plane(workdir, args)
        self.client: Client | None = None
        self.probe: Probe | None = None
        self.tracker: PodTracker | None = None
        self.snaps: dict[str, Snapshot] = {}
        self.profiler = Profiler(args.profile)
        self.figures: dict = {}
        self.deadline = time.monotonic() + args.timeout

    def run(self) -> dict:
        try:
            self.start()
            self.idle()
            self.rollout()
            self.steady()
            self.scale_down()
            return self.results()
        finally:
            self.stop()

    def start(self) -> None:
        self.plane.start()
        self.client = c = Client(self.plane.server, timeout=60)
        t = time.monotonic()
        n = self.args.nodes
        self.wait(f"{n} nodes Ready", lambda: ready_node_count(c)[0] >= n,
                  lambda: "nodes Ready {}/{}".format(*ready_node_count(c)), stall=120)
        self.figures["nodes_ready_s"] = round(time.monotonic() - t, 1)
        log(f"{n} nodes Ready after {self.figures['nodes_ready_s']} s")
        for name in (NAMESPACE, PROBE_NAMESPACE):
            ns = core_pb2.Namespace()
            ns.metadata.name = name
            c.create(ns)
        self.probe = Probe(self.plane.server)
        self.tracker = PodTracker(c)
        self.probe.wait_started()

    def snapshot(self, name: str) -> None:
        self.snaps[name] = snapshot(self.plane, self.probe.proc.pid)

    def idle(self) -> None:
        self.snapshot("start")
        log(f"idle: probing the apiserver for {self.args.idle_seconds:.0f} s")
        time.sleep(self.args.idle_seconds)
        self.snapshot("idle")

    def rollout(self) -> None:
        R, tracker, c = self.args.replicas, self.tracker, self.client
        self.probe.set_phase("rollout")
        self.profiler.start(self.plane, "rollout")
        self.t0 = time.monotonic()
        c.create(bench_deployment(R, self.args.pod_cpu, self.args.pod_memory))
        available_at = None

        def progress() -> str:
            n = tracker.counts()
            return f"created {n['live']}/{R}, bound {n['bound']}/{R}, running {n['ready']}/{R}"

        def done() -> bool:
            nonlocal available_at
            if tracker.counts()["ready"] < R:
                return False
            d = c.get("deployments", APP, NAMESPACE)
            if available_at is None and available_condition(d):
                available_at = time.monotonic()
            return deployment_done(d, R)

        t_done = self.wait(f"rollout of {R} replicas", done, progress)
        self.snapshot("rollout")
        self.profiler.stop()
        self.figures["rollout"] = {
            "deployment_available_s": round(t_done - self.t0, 2),
            "available_condition_s": round(available_at - self.t0, 2) if available_at else None,
            **rollout_figures(tracker.times(), self.t0, R)}
        log(f"rollout done: {json.dumps(self.figures['rollout'])}")

    def steady(self) -> None:
        self.probe.set_phase("steady")
        log(f"steady state with {self.args.replicas} pods: probing for {self.args.idle_seconds:.0f} s")
        time.sleep(self.args.idle_seconds)
        self.snapshot("steady")

    def scale_down(self) -> None:
        R, tracker = self.args.replicas, self.tracker
        self.probe.set_phase("scale-down")
        self.profiler.start(self.plane, "scale-down")
        self.t1 = t1 = time.monotonic()
        self.client.patch("deployments", APP, {"spec": {"replicas": 0}}, NAMESPACE)

        def progress() -> str:
            n = tracker.counts()
            return f"pods left {n['live']}/{R}, marked for deletion {n['terminating']}"

        self.t_gone = self.wait("scale-down to 0", lambda: tracker.counts()["live"] == 0, progress)
        self.snapshot("scale-down")
        self.profiler.stop()
        self.figures["events"] = events_by_reason(self.client)
        marked = [t.terminating for t in tracker.times() if t.terminating is not None and t.terminating >= t1]
        gone = self.t_gone - t1
        self.figures["scale_down"] = {
            "pods_gone_s": round(gone, 2),
            "pods_all_terminating_s": round(max(marked) - t1, 2) if len(marked) >= R else None,
            "pods_deleted_per_s": round(R / gone, 1) if gone > 0 else None}
        log(f"scale-down done: {json.dumps(self.figures['scale_down'])}")

    def results(self) -> dict:
        probed = self.probe.finish()
        self.probe = None
        latency = {phase: {op: latency_summary(probed["samples"].get(phase, {}).get(op, []))
                           for op in PROBE_OPS} for phase in PHASES}
        rest_latency = {phase: {op: latency_summary(probed.get("rest_samples", {}).get(phase, {}).get(op, []))
                                for op in PROBE_OPS} for phase in PHASES}
        usage_by_phase = {}
        for before, phase in zip(("start", *PHASES), PHASES):
            a, b = self.snaps[before], self.snaps[phase]
            usage_by_phase[phase] = {**usage(a, b), "etcd_writes_by_resource": writes_by_resource(
                self.plane.procs["etcd"].endpoint, a.revision, b.revision)}
        return {**self.figures, "latency": latency, "rest_latency": rest_latency,
                "usage": usage_by_phase,
                "probe_errors": {"count": probed.get("error_count", 0), "first": probed.get("errors", [])},
                "watch_relists": self.tracker.relists,
                "timeline": {"columns": ["s", "created", "bound", "running_ready", "terminating", "deleted"],
                             "scale_down_at_s": round(self.t1 - self.t0, 1),
                             "from_create": timeline(self.tracker.times(), self.t0, self.t_gone)}}

    def wait(self, what: str, done, progress, stall: float | None = None) -> float:
        return wait_for(what, done, progress, self.args, self.deadline, self.plane,
                        stall, lambda: diagnose(self.client, self.plane))

    def stop(self) -> None:
        self.profiler.stop()
        if self.tracker is not None:
            self.tracker.stop()
        if self.probe is not None:
            self.probe.stop_event.set()
            self.probe.proc.kill()
        if self.client is not None:
            self.client.close()
        self.plane.stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.plane_scale",
        description="The whole control plane at scale: N simulated nodes, a Deployment of R replicas rolled out "
                    "and scaled to 0; writes plane_results.md and plane_results.json.")
    p.add_argument("--nodes", type=int, help="simulated nodes (default 100; --quick: 20)")
    p.add_argument("--replicas", type=int, help="the Deployment's replicas (default 3,000; --quick: 300)")
    p.add_argument("--quick", action="store_true", help="20 nodes, 300 replicas")
    p.add_argument("--kubelet-procs", type=int, default=1, help="processes the simulated nodes are split over")
    p.add_argument("--node-cpu", default="4")
    p.add_argument("--node-memory", default="8Gi")
    p.add_argument("--pod-cpu", default="50m")
    p.add_argument("--pod-memory", default="64Mi")
    p.add_argument("--ready-delay", type=float, default=0.5, help="seconds from bound to Running (kubelets)")
    p.add_argument("--manager-args", default="",
                   help="more flags for the controller-manager, e.g. '--concurrent-syncs 8'")
    p.add_argument("--scheduler-args", default="", help="more flags for the scheduler, e.g. '--bind-workers 16'")
    p.add_argument("--kubelet-args", default="", help="more flags for the simulated nodes")
    p.add_argument("--idle-seconds", type=float,
                   help="seconds of probing alone, at idle and at steady state (default 15; --quick: 5)")
    p.add_argument("--timeout", type=float, default=3600, help="overall limit in seconds")
    p.add_argument("--stall-timeout", type=float, default=180, help="fail when nothing moves for this long")
    p.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks",
                   help="directory for plane_results.md and plane_results.json")
    p.add_argument("--profile", type=Path, help="record every plane process with py-spy during the rollout "
                   "and the scale-down into this directory (collapsed stacks; skews the figures a little)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data and logs)")
    real = p.add_argument_group("real nodes", "after the simulated run: pod startup latency on real nodes "
                                "(runs where node.capable.why_not() is None, as root)")
    real.add_argument("--real-nodes", type=int, default=3, help="real nodes (0: no real-nodes run)")
    real.add_argument("--real-pods", type=int, default=100, help="pods of the real nodes' Deployment")
    real.add_argument("--real-latency-pods", type=int, default=100,
                      help="pods of the latency phase, after the Deployment is Ready (0: none)")
    real.add_argument("--real-latency-qps", type=float, default=5.0,
                      help="their creation rate (clusterloader2's density test: 5 a second)")
    real.add_argument("--real-idle-seconds", type=float, default=10.0,
                      help="seconds with no pods first, for the nodes' background CPU")
    real.add_argument("--real-kubelet-args", default="", help="more flags for the real kubelets, e.g. '--workers 8'")
    p.add_argument("--only", choices=("scale", "real"),
                   help="run one part; the other part's figures are kept from the results file in --out")
    return p


def run_part(args, workdir: Path, run):
    """run() -> its figures; an exit code when it stalled or was interrupted. The work dir
    goes afterwards unless --keep."""
    try:
        return run()
    except Stalled as e:
        log(f"STALLED: {e}\n(--keep keeps the processes' logs in the work dir)")
        return 2
    except KeyboardInterrupt:
        log("interrupted; everything stopped")
        return 130
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def real_part(args, meta: dict):
    """The real-nodes run's figures, with their own header; {"skipped": why} when this machine
    cannot run real nodes or --real-nodes is 0; an exit code when it failed."""
    from benchmarks.plane_scale.realnodes import RealNodesRun
    from node import capable

    head = {k: meta[k] for k in ("command", "date", "machine", "git_commit")}
    head["date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    head["loadavg_at_start"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    why = "--real-nodes 0" if args.real_nodes <= 0 else capable.why_not()
    if why:
        log(f"real nodes: skipped ({why})")
        return {"meta": head, "skipped": why}
    workdir = Path(tempfile.mkdtemp(prefix="plane-real-"))
    log(f"real nodes: {args.real_nodes} nodes, {args.real_pods} pods; work dir {workdir}")
    t = time.monotonic()
    figures = run_part(args, workdir, lambda: RealNodesRun(args, workdir).run())
    if isinstance(figures, int):
        return figures
    head["total_s"] = round(time.monotonic() - t, 1)
    return {"meta": head, **figures}


def interrupted(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.nodes = args.nodes or (20 if args.quick else 100)
    args.replicas = args.replicas if args.replicas is not None else (300 if args.quick else 3000)
    args.idle_seconds = args.idle_seconds if args.idle_seconds is not None else (5.0 if args.quick else 15.0)
    args.kubelet_procs = max(1, min(args.kubelet_procs, args.nodes))
    signal.signal(signal.SIGTERM, interrupted)
    meta = {"command": " ".join(["python -m benchmarks.plane_scale",
                                 *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
            "loadavg_at_start": " / ".join(f"{x:.2f}" for x in os.getloadavg()), "git_commit": git_commit(),
            **{k: getattr(args, k) for k in ("nodes", "replicas", "kubelet_procs", "node_cpu", "node_memory",
                                             "pod_cpu", "pod_memory", "ready_delay", "idle_seconds",
                                             "manager_args", "scheduler_args", "kubelet_args")}}
    try:
        previous = json.loads((args.out / "plane_results.json").read_text())
    except (OSError, ValueError):
        previous = {}
    result = {k: v for k, v in previous.items() if k != "real_nodes"} if args.only == "real" else {}
    if args.only != "real":
        workdir = Path(tempfile.mkdtemp(prefix="plane-scale-"))
        log(f"{args.nodes} nodes, {args.replicas} replicas; work dir {workdir}")
        t_start = time.monotonic()
        rc = run_part(args, workdir, lambda: Benchmark(args, workdir).run())
        if isinstance(rc, int):
            return rc
        meta["total_s"] = round(time.monotonic() - t_start, 1)
        result = {"meta": meta, **rc}
    if args.only != "scale":
        real = real_part(args, meta)
        if isinstance(real, int):
            return real
        result["real_nodes"] = real
    elif "real_nodes" in previous:
        result["real_nodes"] = previous["real_nodes"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plane_results.json").write_text(to_json(result))
    (args.out / "plane_results.md").write_text(markdown(result))
    log(f"wrote {args.out / 'plane_results.md'} and plane_results.json")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
