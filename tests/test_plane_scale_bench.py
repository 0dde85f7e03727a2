"""The control-plane scale benchmark, end to end in a tiny configuration:
every component its own process, a Deployment of 12 replicas on 3 nodes,
scaled to 0; the results files are written and hold consistent figures. And
its real-nodes part alone (2 real nodes, 4 pods) where real nodes can run."""

from __future__ import annotations

import json
import subprocess

import pytest

from harness.procs import PYTHON, REPO
from node import capable

pytestmark = pytest.mark.process

NODES, REPLICAS = 3, 12


def test_the_benchmark_runs_end_to_end_and_writes_its_results(tmp_path):
    out = subprocess.run(
        [PYTHON, "-m", "benchmarks.plane_scale", "--nodes", str(NODES), "--replicas", str(REPLICAS),
         "--idle-seconds", "2", "--progress-every", "2", "--stall-timeout", "60", "--timeout", "150",
         "--real-nodes", "0", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr[-3000:]

    result = json.loads((tmp_path / "plane_results.json").read_text())
    assert result["real_nodes"]["skipped"] == "--real-nodes 0"
    meta, rollout, down = result["meta"], result["rollout"], result["scale_down"]
    assert (meta["nodes"], meta["replicas"]) == (NODES, REPLICAS)
    assert meta["git_commit"] and meta["machine"]
    # the milestones come in their order
    assert 0 < rollout["pods_created_s"] <= rollout["pods_running_ready_s"] <= rollout["deployment_available_s"]
    assert rollout["pods_bound_s"] <= rollout["pods_running_ready_s"]
    assert rollout["scheduler_pods_per_s"] > 0
    assert 0 < down["pods_all_terminating_s"] <= down["pods_gone_s"]
    # every pod went through every state, as the timeline shows at its end
    last = result["timeline"]["from_create"][-1]
    assert last[1:] == [REPLICAS] * 5, last
    # the probe client saw every phase, without errors
    assert result["probe_errors"]["count"] == 0
    for phase, ops in result["latency"].items():
        assert sum(s["n"] for s in ops.values()) >= 1, phase
        for op, s in ops.items():
            assert s["n"] == 0 or 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"], (phase, op, s)
    # and its rounds over the REST API beside the gRPC ones
    for phase, ops in result["rest_latency"].items():
        assert sum(s["n"] for s in ops.values()) >= 1, phase
        for op, s in ops.items():
            assert s["n"] == 0 or 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"], (phase, op, s)
    # each pod is created, bound and set Running (3 writes), then marked and deleted (2)
    writes = result["usage"]
    assert 3 * REPLICAS <= writes["rollout"]["etcd_writes_by_resource"]["pods"] < 4 * REPLICAS
    assert 2 * REPLICAS <= writes["scale-down"]["etcd_writes_by_resource"]["pods"] < 3 * REPLICAS
    for phase in writes.values():
        assert phase["cpu_s"]["apiserver"] > 0 and phase["etcd_revisions"] > 0

    md = (tmp_path / "plane_results.md").read_text()
    assert f"a Deployment of {REPLICAS} replicas" in md
    assert "scheduler throughput" in md and "| rollout |" in md and "| rollout | REST |" in md


def test_the_real_nodes_part_alone_measures_startup_and_keeps_the_other_figures(tmp_path):
    reason = capable.why_not()
    if reason:
        pytest.skip(f"real nodes cannot run here: {reason}")
    (tmp_path / "plane_results.json").write_text(json.dumps({"kept": "the simulated run's figures"}))
    pods = 4
    out = subprocess.run(
        [PYTHON, "-m", "benchmarks.plane_scale", "--only", "real", "--real-nodes", "2", "--real-pods", str(pods),
         "--real-idle-seconds", "1", "--real-latency-pods", "3", "--real-latency-qps", "10",
         "--progress-every", "2", "--stall-timeout", "60", "--timeout", "150", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "left behind" not in out.stderr

    result = json.loads((tmp_path / "plane_results.json").read_text())
    assert result["kept"] == "the simulated run's figures"
    real = result["real_nodes"]
    assert (real["nodes"], real["pods"]) == (2, pods)
    bound, running, ready = real["to_bound_s"], real["to_running_s"], real["to_ready_s"]
    assert bound["n"] == running["n"] == ready["n"] == pods
    for q in (bound, running, ready):
        assert 0 < q["p50_s"] <= q["p90_s"] <= q["p99_s"] <= q["max_s"], q
    # each pod is bound before it runs, and runs before it is Ready
    assert bound["max_s"] <= running["max_s"] <= ready["max_s"]
    assert 0 < real["all_ready_s"] and 0 < real["pods_gone_s"]
    rollout = real["rollout"]
    assert rollout["kubelet_ms_per_pod"] > 0 and rollout["runtime_ms_per_pod"] > rollout["runtime_own_ms_per_pod"] > 0
    assert set(rollout["cpu_s"]) >= {"runtime-0", "runtime-1", "kubelet-0", "kubelet-1", "apiserver"}
    latency = real["latency_phase"]
    assert (latency["pods"], latency["qps"], latency["to_running_s"]["n"]) == (3, 10.0, 3)
    assert 0 < latency["to_bound_s"]["max_s"] <= latency["to_running_s"]["max_s"]
    md = (tmp_path / "plane_results.md").read_text()
    assert md.startswith("# Real nodes: pod startup latency") and "| to Running | to Ready |" in md
    assert "Latency phase (as Kubernetes' density test): 3 more pods" in md
