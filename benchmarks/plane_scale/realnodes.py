"""The benchmark's "real nodes" run: pod startup latency on real nodes.

etcdlite, the apiserver, the controller-manager and the scheduler as for the
simulated run, and N real nodes (harness.nodes: the fabric, a CRI runtime on
runc + conmon and a kubelet per node). Once the nodes are Ready it creates a
Deployment of P busybox httpd pods with an httpGet readiness probe (the image
is in the local store: no pull), waits for all of them to be Ready, then
scales it to 0 and waits for all of them to be gone. That burst (all pods created at
once) is the saturation phase of Kubernetes' density test; its latency phase follows:
L more pods created one by one at a steady rate (5 a second, as clusterloader2's
Uniform5qps), while the saturation pods run, their startup measured the same way. The
SLO (p99 <= 5 s) is stated for that phase's pods.

Pod startup latency is measured as Kubernetes' SLI does (from the pod's
creation to the moment a watch sees it Running, and Ready), per pod, with
p50/p90/p99/max. The creation is the moment the pod watch first sees the pod
(ms resolution; the watch's delivery delay is in both ends); the figure from
the pod's creationTimestamp is reported too, but that timestamp has whole
seconds (as Kubernetes'), so it is later than the truth by up to 1 s.

CPU per pod started: the CPU seconds of each kubelet and each runtime during
the rollout, the runtime with its children (conmon, runc: those it reaped are
in its cutime/cstime, the live ones read from /proc; the containers' own
processes, in the pods' cgroups, are left out, but for what an exited one
used, which conmon's cutime takes in: nothing much for httpd, and only in the
scale-down), divided by the pods started.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from apiserver.client import Client
from apiserver.pb import apps_pb2, core_pb2
from benchmarks.plane_scale import APP, NAMESPACE, log
from benchmarks.plane_scale.measure import CLK_TCK, latency_summary
from benchmarks.plane_scale.observers import PodTracker
from benchmarks.plane_scale.processes import READY_TIMEOUT, Plane, Profiler
from benchmarks.targets import machine_busy_seconds, machine_cpu_seconds

IMAGE = "busybox"
PROBE_PERIOD = 2  # the readiness probe's periodSeconds (as the example Deployment's)
# sh stays pid 1 so that SIGTERM ends the pod at once (httpd as pid 1 would ignore it and wait
# for the grace period's SIGKILL): the deletion's time is then the kubelet's and the runtime's
HTTPD = ("trap 'exit 0' TERM; mkdir -p /www && echo \"hello from `hostname`\" > /www/index.html && "
         "httpd -f -p 80 -h /www & wait")


LATENCY_APP = APP + "-latency"
# pid 1 a shell that ends at SIGTERM, as HTTPD's; the SLO's pods only have to start
SLEEPER = "trap 'exit 0' TERM; sleep 3600 & wait"


def latency_pod(i: int) -> core_pb2.Pod:
    """One pod of the latency phase: busybox, no probe (the SLO counts to Running)."""
    pod = core_pb2.Pod()
    pod.metadata.name, pod.metadata.namespace = f"{LATENCY_APP}-{i}", NAMESPACE
    pod.metadata.labels["app"] = LATENCY_APP
    c = pod.spec.containers.add(name="sleep", image=IMAGE, command=["sh", "-c", SLEEPER],
                                image_pull_policy="IfNotPresent")
    c.resources.requests["cpu"], c.resources.requests["memory"] = "10m", "16Mi"
    c.resources.limits["memory"] = "32Mi"
    pod.spec.termination_grace_period_seconds = 5
    return pod


def real_deployment(replicas: int) -> apps_pb2.Deployment:
    """busybox httpd pods with an httpGet readiness probe, small requests so that the node's
    capacity never limits: what `make run`'s example runs."""
    d = apps_pb2.Deployment()
    d.metadata.name, d.metadata.namespace = APP, NAMESPACE
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = APP
    d.spec.template.metadata.labels["app"] = APP
    c = d.spec.template.spec.containers.add(name="web", image=IMAGE, command=["sh", "-c", HTTPD],
                                            image_pull_policy="IfNotPresent")
    c.ports.add(container_port=80)
    c.readiness_probe.http_get.path = "/"
    c.readiness_probe.http_get.port = "80"
    c.readiness_probe.period_seconds = PROBE_PERIOD
    c.resources.requests["cpu"], c.resources.requests["memory"] = "10m", "16Mi"
    c.resources.limits["memory"] = "32Mi"
    d.spec.template.spec.termination_grace_period_seconds = 5
    return d


# ---- CPU of a process tree ---------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(k) for k in f.read().split()]
        except (OSError, ValueError):
            pass
    return out


def _in_pod_cgroup(pid: int, prefixes: tuple[str, ...]) -> bool:
    """A container's process: its cpu cgroup is under one of the nodes' prefixes."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "cpu" in controllers.split(","):
                    return any(path.startswith(f"/{p}/") for p in prefixes)
    except (OSError, ValueError):
        pass
    return False


def tree_cpu_seconds(pid: int, skip_prefixes: tuple[str, ...] = ()) -> float | None:
    """CPU seconds of a process, the children it reaped (cutime + cstime), and its live
    descendants (with what they reaped), leaving out processes in the pods' cgroups. A process
    is counted once whether it is alive (here) or reaped (in its parent's cutime), so the
    difference of two readings is what the tree used in between."""
    fields = _stat(pid)
    if fields is None:
        return None
    total = sum(int(x) for x in fields[11:15])
    todo = _children(pid)
    while todo:
        p = todo.pop()
        if skip_prefixes and _in_pod_cgroup(p, skip_prefixes):
            continue  # a container's process: its CPU is the pod's, not the runtime's
        f = _stat(p)
        if f is None:
            continue
        total += sum(int(x) for x in f[11:15])
        todo += _children(p)
    return total / CLK_TCK


# ---- the run -----------------------------------------------------------------------------

def quantiles_s(values: list[float]) -> dict:
    """p50/p90/p99/max in seconds (latency_summary's ms / 1000), and n."""
    s = latency_summary(values)
    return {"n": s["n"], **{k.replace("_ms", "_s"): (None if v is None else round(v / 1e3, 3))
                            for k, v in s.items() if k != "n"}}


class RealNodesRun:
    """One run on real nodes; ``run()`` returns the figures (a dict for the results files)."""

    def __init__(self, args, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.plane = Plane(workdir, args)
        self.layout = None
        self.client: Client | None = None
        self.tracker: PodTracker | None = None
        self.profiler = Profiler(args.profile)
        self.deadline = time.monotonic() + args.timeout

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.stop()

    def _start(self) -> None:
        from harness.nodes import KubeletProcess, RuntimeProcess
        from node.plane import RealNodes

        self.plane.start(hollow=False)
        n = self.args.real_nodes
        log(f"laying out {n} real nodes (fabric, namespaces, the busybox image)")
        self.layout = RealNodes(self.workdir, n)
        self.layout.prepare()
        for node in self.layout.nodes:
            p = RuntimeProcess(self.layout, node, self.plane.registry, ready_timeout=READY_TIMEOUT)
            self.plane.procs[p.name] = p.start()
        kubelet_args = tuple(self.args.real_kubelet_args.split())
        for node in self.layout.nodes:
            p = KubeletProcess(self.layout, node, self.plane.server, self.plane.registry, kubelet_args,
                               ready_timeout=READY_TIMEOUT)
            self.plane.procs[p.name] = p.start()
        self.pull_image()
        self.client = c = Client(self.plane.server, timeout=60)
        t = time.monotonic()
        self.wait(f"{n} real nodes Ready", lambda: ready_nodes(c) >= n, lambda: f"nodes Ready {ready_nodes(c)}/{n}")
        log(f"{n} real nodes Ready after {time.monotonic() - t:.1f} s")
        ns = core_pb2.Namespace()
        ns.metadata.name = NAMESPACE
        c.create(ns)
        self.tracker = PodTracker(c)

    def pull_image(self) -> None:
        """The image unpacked in the nodes' store before the pods come (the nodes share it), so
        that no pod's start includes it: the SLI leaves image pulls out."""
        from node.cri.client import CriClient

        with CriClient(self.layout.nodes[0].cri_socket, timeout=120) as cri:
            cri.images.pull_image(IMAGE)

    def cpu(self) -> dict[str, float]:
        """CPU seconds of each plane process (kubelets and runtimes with their children), and
        "machine": the whole machine's busy seconds (colleagues' work included)."""
        prefixes = tuple(node.prefix for node in self.layout.nodes)
        out = {}
        for name, pid in self.plane.pids().items():
            v = tree_cpu_seconds(pid, prefixes) if name.startswith(("runtime-", "kubelet-")) else \
                tree_cpu_seconds(pid)
            if v is not None:
                out[name] = v
            if name.startswith("runtime-") and (f := _stat(pid)) is not None:
                out["self:" + name] = (int(f[11]) + int(f[12])) / CLK_TCK  # its own Python, no children
        out["machine"] = machine_busy_seconds(machine_cpu_seconds())
        return out

    def _run(self) -> dict:
        self._start()
        P, c, tracker = self.args.real_pods, self.client, self.tracker
        idle_s = self.args.real_idle_seconds
        a = self.cpu()
        t_idle = time.monotonic()
        log(f"idle: {idle_s:.0f} s with no pods (the nodes' background CPU)")
        time.sleep(idle_s)
        b = self.cpu()
        idle = {k: round((b[k] - a.get(k, 0)) / (time.monotonic() - t_idle), 4) for k in b
                if k != "machine" and not k.startswith("self:")}

        log(f"creating a Deployment of {P} busybox httpd pods on {len(self.layout.nodes)} real nodes")
        self.wall_offset = time.time() - time.monotonic()
        self.profiler.start(self.plane, "real-rollout")
        cpu0 = self.cpu()
        t0 = time.monotonic()
        c.create(real_deployment(P))

        def progress() -> str:
            n = tracker.counts()
            return f"created {n['live']}/{P}, bound {n['bound']}/{P}, Running+Ready {n['ready']}/{P}"

        t_ready = self.wait(f"{P} pods Ready", lambda: tracker.counts()["ready"] >= P, progress)
        cpu1 = self.cpu()
        self.profiler.stop()
        rollout_wall = t_ready - t0
        times = [t for t in tracker.times() if t.deleted is None]
        startup = self.startup(times)
        log(f"all {P} pods Ready after {rollout_wall:.1f} s: to Running p50 "
            f"{startup['to_running_s']['p50_s']} s p99 {startup['to_running_s']['p99_s']} s; "
            f"to Ready p50 {startup['to_ready_s']['p50_s']} s p99 {startup['to_ready_s']['p99_s']} s")

        latency = self.latency_phase() if self.args.real_latency_pods > 0 else None

        t1 = time.monotonic()
        c.patch("deployments", APP, {"spec": {"replicas": 0}}, NAMESPACE)

        def progress_down() -> str:
            n = tracker.counts()
            return f"pods left {n['live']}/{P}, marked for deletion {n['terminating']}"

        t_gone = self.wait("scale-down to 0", lambda: tracker.counts()["live"] == 0, progress_down)
        cpu2 = self.cpu()
        log(f"all {P} pods gone {t_gone - t1:.1f} s after the scale to 0")

        def per(name_prefix: str, x: dict, y: dict) -> float:
            return sum(y[k] - x.get(k, 0) for k in y if k.startswith(name_prefix))

        def cpu_block(x: dict, y: dict) -> dict:
            procs = {k: round(y[k] - x.get(k, 0), 2) for k in y if k != "machine" and not k.startswith("self:")}
            own = per("self:runtime-", x, y)
            return {"cpu_s": procs,
                    "runtimes_own_cpu_s": round(own, 2),
                    "runtime_own_ms_per_pod": round(own / P * 1e3, 1),
                    "other_processes_cpu_s": round(max(0.0, y["machine"] - x["machine"] - sum(procs.values())), 2),
                    "kubelets_cpu_s": round(per("kubelet-", x, y), 2),
                    "runtimes_cpu_s": round(per("runtime-", x, y), 2),
                    "kubelet_ms_per_pod": round(per("kubelet-", x, y) / P * 1e3, 1),
                    "runtime_ms_per_pod": round(per("runtime-", x, y) / P * 1e3, 1)}

        return {"nodes": len(self.layout.nodes), "pods": P, "probe_period_s": PROBE_PERIOD,
                "kubelet_args": self.args.real_kubelet_args,
                "all_ready_s": round(rollout_wall, 2),
                **startup,
                **({"latency_phase": latency} if latency else {}),
                "pods_gone_s": round(t_gone - t1, 2),
                "idle_cores": idle,
                "rollout": {"wall_s": round(rollout_wall, 2), **cpu_block(cpu0, cpu1)},
                "scale_down": {"wall_s": round(t_gone - t1, 2), **cpu_block(cpu1, cpu2)}}

    def latency_phase(self) -> dict:
        """Kubernetes' density test's latency phase: pods created one at a time at
        --real-latency-qps beside the saturation pods, each one's startup measured; then
        they are deleted (not timed)."""
        from benchmarks.plane_scale.observers import PodTracker

        L, qps, c = self.args.real_latency_pods, self.args.real_latency_qps, self.client
        log(f"latency phase: {L} pods created at {qps:g} a second")
        tracker = PodTracker(c, LATENCY_APP)
        try:
            t0 = time.monotonic()
            for i in range(L):
                pause = t0 + i / qps - time.monotonic()
                if pause > 0:
                    time.sleep(pause)  # the creation rate itself, not a wait for a condition
                c.create(latency_pod(i))
            self.wait(f"{L} latency pods Running", lambda: tracker.counts()["ready"] >= L,
                      lambda: "latency pods Running {ready}/{L}, bound {bound}".format(L=L, **tracker.counts()))
            figures = {"pods": L, "qps": qps, **self.startup(tracker.times())}
            log(f"latency phase: to Running p50 {figures['to_running_s']['p50_s']} s "
                f"p99 {figures['to_running_s']['p99_s']} s")
            for i in range(L):
                c.delete("pods", f"{LATENCY_APP}-{i}", NAMESPACE)
            self.wait("latency pods gone", lambda: tracker.counts()["live"] == 0,
                      lambda: "latency pods left {live}".format(**tracker.counts()))
            return figures
        finally:
            tracker.stop()

    def startup(self, times) -> dict:
        bound = [t.bound - t.seen for t in times if t.bound is not None]
        running = [t.running - t.seen for t in times if t.running is not None]
        ready = [t.ready - t.seen for t in times if t.ready is not None]
        off = self.wall_offset
        ts_running = [t.running - (t.created_wall - off) for t in times
                      if t.running is not None and t.created_wall is not None]
        ts_ready = [t.ready - (t.created_wall - off) for t in times
                    if t.ready is not None and t.created_wall is not None]
        return {"to_bound_s": quantiles_s(bound), "to_running_s": quantiles_s(running), "to_ready_s": quantiles_s(ready),
                "from_creation_timestamp": {"to_running_s": quantiles_s(ts_running),
                                            "to_ready_s": quantiles_s(ts_ready)}}

    def wait(self, what: str, done, progress, stall: float | None = None) -> float:
        from benchmarks.plane_scale.bench import wait_for

        def tails() -> str:
            return "\n".join(f"{p.name}:\n{p.log_tail(15)}" for p in self.plane.dead())
        return wait_for(what, done, progress, self.args, self.deadline, self.plane, stall, tails)

    def stop(self) -> None:
        self.profiler.stop()
        if self.tracker is not None:
            self.tracker.stop()
        if self.client is not None:
            self.client.close()
        self.plane.stop()
        if self.layout is not None:
            problems = self.layout.teardown()
            if problems:
                log(f"real nodes of {self.layout.prefix} left behind: {problems}")


def ready_nodes(client: Client) -> int:
    return sum(any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
               for n in client.list("nodes").items)
