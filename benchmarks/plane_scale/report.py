"""plane_results.md: the run's header (command, date, machine, commit) and
its figures as tables."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess

from benchmarks.plane_scale import PHASES
from benchmarks.plane_scale.observers import PROBE_OPS, PROBE_PAUSE
from harness.procs import REPO

OBSERVERS = ("benchmark (watch)", "probe client")  # the benchmark's own processes, not the plane's


def git_commit() -> str:
    try:
        def git(*argv: str) -> str:
            return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip()

        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return head + (" (with uncommitted changes in the tree)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return (f"{os.cpu_count()} cores {model}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        v = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    elif isinstance(v, int):
        v = f"{v:,}"
    return f"{v}{unit}"


def to_json(result: dict) -> str:
    """Indented JSON with each list of numbers (a timeline row) on one line."""
    text = json.dumps(result, indent=2)
    return re.sub(r"\[\s+([-\d.,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text) + "\n"


def plane_cpu(usage: dict) -> float:
    """CPU seconds of etcd, the apiserver, the controller-manager, the scheduler and the kubelets."""
    return sum(v for name, v in usage["cpu_s"].items() if name not in OBSERVERS)


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def markdown(result: dict) -> str:
    """The simulated run's section (when the results have one), then the real nodes'."""
    out = markdown_scale(result) if "rollout" in result else ""
    if "real_nodes" in result:
        out += ("\n" if out else "") + markdown_real(result["real_nodes"])
    return out


def markdown_real(r: dict) -> str:
    """The real-nodes run: pod startup latency, CPU per pod, deletion."""
    m = r["meta"]
    out = ["# Real nodes: pod startup latency", "", f"- command: `{m['command']}`",
           f"- date: {m['date']}" + (f"; took {m['total_s']} s" if "total_s" in m else ""),
           f"- machine: {m['machine']}; load average at start (1/5/15 min): {m['loadavg_at_start']}",
           f"- git commit: {m['git_commit']}"]
    if "skipped" in r:
        return "\n".join(out + ["", f"Skipped: {r['skipped']}."]) + "\n"
    n, ro, sd = r["pods"], r["rollout"], r["scale_down"]
    out += [(f"- {r['nodes']} real nodes (a CRI runtime on runc + conmon and a kubelet each"
             + (f", kubelet flags `{r['kubelet_args']}`" if r.get("kubelet_args") else "") + "); "
             f"a Deployment of {n} busybox httpd pods with an httpGet readiness probe every "
             f"{r['probe_period_s']} s; the image is in the node's store (no pull)"),
            "", ("Pod startup latency, per pod, from its creation (the moment the benchmark's pod watch first "
                 "saw it) to the watch seeing it Running, and Ready (all created at once: the density test's "
                 "saturation phase; Kubernetes' SLO, p99 <= 5 s to Running, is stated for the latency phase below). "
                 "p50 / p90 / p99 / max in seconds:"), ""]
    q = ("p50_s", "p90_s", "p99_s", "max_s")
    ts = r["from_creation_timestamp"]
    out += table(["from", "to Running", "to Ready"], [
        ["pod first seen by the watch", *(" / ".join(fmt(r[k][x]) for x in q) for k in ("to_running_s", "to_ready_s"))],
        ["its creationTimestamp (whole seconds: up to 1 s early)",
         *(" / ".join(fmt(ts[k][x]) for x in q) for k in ("to_running_s", "to_ready_s"))]])
    if "to_bound_s" in r:
        out += ["", "Of that, from creation to bound (the scheduler): " + " / ".join(fmt(r["to_bound_s"][x]) for x in q)
                + " s; the rest is the kubelet's queue and the pod's start."]
    if "latency_phase" in r:
        lp = r["latency_phase"]
        out += ["", (f"Latency phase (as Kubernetes' density test): {lp['pods']} more pods created one by one at "
                     f"{lp['qps']:g} a second while the {n} run; per pod, from first seen to Running, and to "
                     f"bound; p50 / p90 / p99 / max in seconds:"), ""]
        out += table(["to Running", "to bound"], [
            [" / ".join(fmt(lp["to_running_s"][x]) for x in q), " / ".join(fmt(lp["to_bound_s"][x]) for x in q)]])
    cores = "; ".join(f"{k} {v:.3f}" for k, v in r["idle_cores"].items() if k.startswith(("kubelet", "runtime")))
    out += ["", "", *table(["figure", "value"], [
        [f"all {n} pods Ready, from the Deployment's create", fmt(r["all_ready_s"], " s")],
        [f"scale to 0: all {n} pods gone", fmt(r["pods_gone_s"], " s")],
        ["CPU per pod started: kubelet / runtime (with conmon, runc)",
         f"{fmt(ro['kubelet_ms_per_pod'])} / {fmt(ro['runtime_ms_per_pod'])} ms "
         f"({fmt(ro['kubelets_cpu_s'])} / {fmt(ro['runtimes_cpu_s'])} s in {fmt(ro['wall_s'])} s)"],
        ["of the runtime's: its own Python process / its children (conmon, runc, ip, unshare)",
         f"{fmt(ro.get('runtime_own_ms_per_pod'))} / "
         f"{fmt(round(ro['runtime_ms_per_pod'] - ro['runtime_own_ms_per_pod'], 1) if 'runtime_own_ms_per_pod' in ro else None)} ms"],
        ["CPU per pod deleted: kubelet / runtime (the runtime's share counts what each container used in its whole life: conmon, its child, reaps it then)",
         f"{fmt(sd['kubelet_ms_per_pod'])} / {fmt(sd['runtime_ms_per_pod'])} ms "
         f"({fmt(sd['kubelets_cpu_s'])} / {fmt(sd['runtimes_cpu_s'])} s in {fmt(sd['wall_s'])} s)"],
        ["idle, no pods (cores)", cores],
        ["the rest of the machine during the rollout (other processes)",
         f"{ro.get('other_processes_cpu_s', 0) / max(ro['wall_s'], 1e-9):.2f} cores of {os.cpu_count()}"]])]
    names = list(ro["cpu_s"])
    out += ["", "CPU seconds of each process:", ""]
    out += table(["phase", "wall s", *names], [
        [phase, fmt(u["wall_s"]), *(fmt(u["cpu_s"].get(k)) for k in names)]
        for phase, u in (("rollout", ro), ("scale-down", sd))])
    return "\n".join(out) + "\n"


def markdown_scale(result: dict) -> str:
    m, ro, sd, use = result["meta"], result["rollout"], result["scale_down"], result["usage"]
    n = m["replicas"]
    cpu_up, cpu_down = plane_cpu(use["rollout"]), plane_cpu(use["scale-down"])
    other_cores = use["rollout"]["other_processes_cpu_s"] / max(use["rollout"]["wall_s"], 1e-9)
    per_pod = f"{use['rollout']['etcd_revisions'] / n:.1f} / {use['scale-down']['etcd_revisions'] / n:.1f}"
    out = [f"# Control plane at scale: {m['nodes']} simulated nodes, a Deployment of {n:,} replicas", "",
           f"- command: `{m['command']}`",
           f"- date: {m['date']}; took {m['total_s']} s",
           f"- machine: {m['machine']}; load average at start (1/5/15 min): {m['loadavg_at_start']}",
           f"- git commit: {m['git_commit']}",
           (f"- pods request {m['pod_cpu']} cpu / {m['pod_memory']}; nodes have {m['node_cpu']} cpu / "
            f"{m['node_memory']}; the simulated kubelets run in {m['kubelet_procs']} process(es) and report a "
            f"pod Running {m['ready_delay']} s after they see it bound; all nodes were Ready "
            f"{result['nodes_ready_s']} s after they started"),
           "", "Times from the Deployment's create (or its scale to 0), as a pod watch saw them:", ""]
    out += table(["figure", "value"], [
        [f"all {n:,} pods created (ReplicaSet controller)", fmt(ro.get("pods_created_s"), " s")],
        [f"all {n:,} pods bound (scheduler)", fmt(ro.get("pods_bound_s"), " s")],
        [f"all {n:,} pods Running and Ready (kubelets)", fmt(ro.get("pods_running_ready_s"), " s")],
        [f"Deployment reports {n:,} available (rollout complete)", fmt(ro.get("deployment_available_s"), " s")],
        ["Deployment condition Available=True", fmt(ro.get("available_condition_s"), " s")],
        ["pod creation rate, first to last", fmt(ro.get("pod_creation_per_s"), " pods/s")],
        ["scheduler throughput, first to last bound", fmt(ro.get("scheduler_pods_per_s"), " pods/s")],
        ["scheduler throughput, best 5 s", fmt(ro.get("scheduler_peak_pods_per_s_5s"), " pods/s")],
        ["pods becoming Ready, first to last", fmt(ro.get("pods_ready_per_s"), " pods/s")],
        ["scale to 0: all pods marked for deletion", fmt(sd.get("pods_all_terminating_s"), " s")],
        ["scale to 0: all pods gone",
         f"{fmt(sd.get('pods_gone_s'), ' s')} ({fmt(sd.get('pods_deleted_per_s'), ' pods/s')})"],
        ["etcd revisions: rollout / scale-down",
         f"{fmt(use['rollout']['etcd_revisions'])} / {fmt(use['scale-down']['etcd_revisions'])} ({per_pod} per pod)"],
        ["CPU of the plane's processes: rollout / scale-down",
         f"{fmt(cpu_up)} / {fmt(cpu_down)} s ({cpu_up / n * 1e3:.0f} / {cpu_down / n * 1e3:.0f} ms per pod)"],
        ["the rest of the machine during the rollout (other processes)",
         f"{other_cores:.2f} cores of {os.cpu_count()}"],
        ["probe errors / pod watch relists", f"{result['probe_errors']['count']} / {result['watch_relists']}"],
    ])
    apis = [("gRPC", result["latency"])] + ([("REST", result["rest_latency"])] if result.get("rest_latency") else [])
    out += ["", (f"Apiserver call latency seen by a probe client (its own process, one call at a time, "
                 f"{PROBE_PAUSE * 1000:.0f} ms apart): create, get, update and delete a ConfigMap; list one "
                 "page of 100 pods of the Deployment's namespace"
                 + ("; a round over the gRPC API (apiserver.client), then a round over Kubernetes' REST API "
                    "(HTTP/1.1 keep-alive, JSON, as kubectl and client-go call it), in turns on the same port"
                    if len(apis) > 1 else "") + ". p50 / p90 / p99 / max in ms (calls):"), ""]
    quantiles = ("p50_ms", "p90_ms", "p99_ms", "max_ms")
    out += table(["phase", *(["API"] if len(apis) > 1 else []), *PROBE_OPS], [
        [phase, *([api] if len(apis) > 1 else []),
         *(" / ".join(fmt(s[q]) for q in quantiles) + f" ({s['n']})"
           for s in (lat[phase][op] for op in PROBE_OPS))] for phase in PHASES for api, lat in apis])
    if len(apis) > 1:
        out += ["", "The same side by side: p50 / p99 in ms, each cell gRPC · REST:", ""]
        out += table(["phase", *PROBE_OPS], [
            [phase, *(f"{fmt(g['p50_ms'])} / {fmt(g['p99_ms'])} · {fmt(r['p50_ms'])} / {fmt(r['p99_ms'])}"
                      for g, r in ((result["latency"][phase][op], result["rest_latency"][phase][op])
                                   for op in PROBE_OPS))] for phase in PHASES])
    names = list(use["rollout"]["cpu_s"])
    out += ["", ("CPU seconds of each process per phase (in parentheses: cores, CPU seconds / wall seconds); "
                 "other: the rest of the machine, colleagues' work included:"), ""]
    out += table(["phase", "wall s", *names, "other", "etcd revisions"], [
        [phase, fmt(u["wall_s"]),
         *(f"{fmt(u['cpu_s'].get(name))} ({u['cpu_s'].get(name, 0) / max(u['wall_s'], 1e-9):.2f})" for name in names),
         fmt(u["other_processes_cpu_s"]), fmt(u["etcd_revisions"])]
        for phase, u in ((ph, use[ph]) for ph in PHASES)])
    writes = {ph: use[ph].get("etcd_writes_by_resource", {}) for ph in PHASES}
    resources = sorted({r for w in writes.values() for r in w},
                       key=lambda r: -sum(w.get(r, 0) for w in writes.values()))
    if resources:
        out += ["", "etcd writes (puts and deletes) by resource, read back from etcd's history:", ""]
        out += table(["resource", *PHASES], [[r, *(fmt(writes[ph].get(r, 0)) for ph in PHASES)] for r in resources])
    if result.get("events"):
        out += ["", "Events in the namespace at the end, by source and reason: Event objects (sum of their counts): "
                + ", ".join(f"{k} {v['objects']:,} ({v['count']:,})" for k, v in result["events"].items())]
    if result["probe_errors"]["first"]:
        out += ["", "Probe errors (first): " + "; ".join(result["probe_errors"]["first"][:5])]
    return "\n".join(out) + "\n"
