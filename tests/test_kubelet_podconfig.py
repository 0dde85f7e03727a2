"""CRI configs from a pod spec (node/kubelet/podconfig.py) and the CRI snapshot
adapter (node/kubelet/cri_status.py), as Kubernetes' generatePodSandboxConfig /
generateContainerConfig / makeEnvironmentVariables (kuberuntime_sandbox_test.go,
kuberuntime_container_linux_test.go TestGenerateContainerConfig, kubelet_pods_test.go
TestMakeEnvironmentVariables) and toKubeContainerStatus."""

from __future__ import annotations

import pytest
from kubelet_fixtures import make_pod

from apiserver.pb import core_pb2
from node.kubelet import cri_status, labels, podconfig
from node.kubelet.env import Environment
from node.pb import cri_pb2

GI = 1024 ** 3


def test_sandbox_config():
    pod = make_pod(("app",))
    pod.metadata.labels["app"] = "web"
    pod.spec.containers[0].ports.add(name="http", container_port=80, protocol="TCP")
    cfg = podconfig.sandbox_config(pod, 2, "/var/log/pods")
    assert (cfg.metadata.name, cfg.metadata.namespace, cfg.metadata.uid, cfg.metadata.attempt) == \
        ("web", "default", "uid-1", 2)
    assert cfg.hostname == "web"
    assert cfg.log_directory == "/var/log/pods/default_web_uid-1"
    assert cfg.labels["io.kubernetes.pod.uid"] == "uid-1" and cfg.labels["app"] == "web"
    assert [(p.container_port, p.protocol) for p in cfg.port_mappings] == [(80, cri_pb2.TCP)]
    assert cfg.linux.security_context.namespace_options.network == cri_pb2.POD
    pod.spec.host_network = True
    assert podconfig.sandbox_config(pod, 0, "/l").linux.security_context.namespace_options.network == cri_pb2.NODE


@pytest.mark.parametrize("milli,shares,quota", [
    (0, 2, 0), (1, 2, 1000), (100, 102, 10000), (1000, 1024, 100000), (2500, 2560, 250000),
])
def test_cpu_shares_and_quota(milli, shares, quota):
    # cm.MilliCPUToShares / milliCPUToQuota
    assert (podconfig.cpu_shares(milli), podconfig.cpu_quota(milli)) == (shares, quota)


@pytest.mark.parametrize("requests,limits,adj", [
    ({}, {}, 1000),                                                     # BestEffort
    ({"cpu": "1", "memory": "1Gi"}, {"cpu": "1", "memory": "1Gi"}, -997),  # Guaranteed
    ({"memory": "1Gi"}, {}, 875),                                       # Burstable: 1000 - 1000*1/8
    ({"memory": "8Gi"}, {}, 3),                                         # floor: above Guaranteed
    ({"cpu": "100m"}, {}, 999),                                         # never BestEffort's 1000
])
def test_oom_score_adj_by_qos(requests, limits, adj):
    pod = make_pod(("app",))
    c = pod.spec.containers[0]
    c.resources.requests.update(requests)
    c.resources.limits.update(limits)
    assert podconfig.oom_score_adj(pod, c, 8 * GI) == adj


def test_linux_resources_from_requests_and_limits():
    pod = make_pod(("app",))
    c = pod.spec.containers[0]
    c.resources.limits.update({"cpu": "500m", "memory": "64Mi"})
    r = podconfig.linux_resources(pod, c, 8 * GI)
    # no cpu request: shares from the limit
    assert (r.cpu_shares, r.cpu_quota, r.cpu_period, r.memory_limit_in_bytes) == (512, 50000, 100000, 64 << 20)


def test_container_config():
    pod = make_pod(("app",))
    c = pod.spec.containers[0]
    c.command[:] = ["sh", "-c"]
    c.args[:] = ["echo $(GREETING)"]
    c.working_dir = "/tmp"
    cfg = podconfig.container_config(pod, c, restart_count=3, image_ref="sha256:abc",
                                     env=Environment(vars=[("GREETING", "hi")]), memory_capacity=8 * GI)
    assert (cfg.metadata.name, cfg.metadata.attempt) == ("app", 3)
    assert (cfg.image.image, cfg.image.user_specified_image) == ("sha256:abc", "busybox")
    assert list(cfg.command) == ["sh", "-c"] and list(cfg.args) == ["echo hi"]
    assert cfg.working_dir == "/tmp"
    assert [(e.key, e.value) for e in cfg.envs] == [("GREETING", b"hi")]
    assert cfg.log_path == "app/3.log"
    assert cfg.labels["io.kubernetes.container.name"] == "app"
    assert cfg.annotations["io.kubernetes.container.restartCount"] == "3"
    assert cfg.annotations["io.kubernetes.container.hash"] == labels.container_hash(c)
    assert cfg.linux.resources.oom_score_adj == 1000


@pytest.mark.parametrize("share,pid", [(None, cri_pb2.CONTAINER), (False, cri_pb2.CONTAINER), (True, cri_pb2.POD)])
def test_sandbox_and_containers_say_their_namespaces(share, pid):
    """Each container config carries the pod's namespace options, as the sandbox's: left out, they
    read as POD for all (the enum's zero), and containerd then put every container in the
    sandbox's pid namespace, where pid 1 is the pause process."""
    pod = make_pod(("app",))
    if share is not None:
        pod.spec.share_process_namespace = share
    want = cri_pb2.NamespaceOption(network=cri_pb2.POD, pid=pid, ipc=cri_pb2.POD)
    c = podconfig.container_config(pod, pod.spec.containers[0], restart_count=0, image_ref="",
                                   env=Environment(vars=[]))
    assert c.linux.security_context.namespace_options == want
    assert podconfig.sandbox_config(pod, 0, "/l").linux.security_context.namespace_options == want
    pod.spec.host_network = True
    assert podconfig.namespace_options(pod).network == cri_pb2.NODE


def test_cri_statuses_become_the_snapshot():
    s = cri_pb2.PodSandboxStatus(
        id="sb", state=cri_pb2.SANDBOX_NOTREADY, created_at=5_500_000_000,
        metadata=cri_pb2.PodSandboxMetadata(name="web", uid="u", namespace="default", attempt=1),
        network=cri_pb2.PodSandboxNetworkStatus(ip="10.244.0.5", additional_ips=[cri_pb2.PodIP(ip="fd00::5")]))
    sb = cri_status.sandbox_from_cri(s)
    assert (sb.id, sb.state, sb.attempt, sb.created_at, sb.ip, sb.additional_ips) == \
        ("sb", "SANDBOX_NOTREADY", 1, 5.5, "10.244.0.5", ["fd00::5"])
    c = cri_pb2.ContainerStatus(
        id="c", metadata=cri_pb2.ContainerMetadata(name="app", attempt=2), state=cri_pb2.CONTAINER_EXITED,
        created_at=1_000_000_000, started_at=2_000_000_000, finished_at=3_250_000_000, exit_code=137,
        reason="OOMKilled", image=cri_pb2.ImageSpec(image="docker.io/library/busybox:latest"),
        image_ref="sha256:b0", annotations={"io.kubernetes.container.restartCount": "2"})
    cs = cri_status.container_from_cri(c)
    assert (cs.name, cs.state, cs.attempt, cs.started_at, cs.finished_at, cs.exit_code, cs.reason,
            cs.image, cs.image_ref, cs.restart_count) == \
        ("app", "CONTAINER_EXITED", 2, 2.0, 3.25, 137, "OOMKilled",
         "docker.io/library/busybox:latest", "sha256:b0", 2)


@pytest.mark.parametrize("resources,root,parent", [
    ({}, "/kp3fa2-n0", "/kp3fa2-n0/kubepods/besteffort/poduid-1"),
    ({"requests": {"memory": "1Gi"}}, "kp3fa2-n0/", "/kp3fa2-n0/kubepods/burstable/poduid-1"),
    ({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}, "/",
     "/kubepods/poduid-1"),
])
def test_sandbox_cgroup_parent_under_cgroup_root(resources, root, parent):
    """With --cgroup-root the sandbox names its pod cgroup as the kubelet's cgroupfs driver does
    (containerd puts the pod's cgroups there); without, the runtime chooses."""
    pod = make_pod(("app",))
    c = pod.spec.containers[0]
    for kind, values in resources.items():
        getattr(c.resources, kind).update(values)
    assert podconfig.sandbox_config(pod, 0, "/l", root).linux.cgroup_parent == parent
    assert podconfig.sandbox_config(pod, 0, "/l").linux.cgroup_parent == ""
