"""The CRI proto is wire-compatible with kubernetes/cri-api's runtime.v1: pin the names and
field numbers that kubelets, containerd and crictl put on the wire."""

from __future__ import annotations

from node.pb import cri_pb2


def _number(message, field: str) -> int:
    return message.DESCRIPTOR.fields_by_name[field].number


def test_package_and_services():
    assert cri_pb2.DESCRIPTOR.package == "runtime.v1"
    services = cri_pb2.DESCRIPTOR.services_by_name
    assert set(services) == {"RuntimeService", "ImageService"}
    runtime = services["RuntimeService"].methods_by_name
    for name in ("Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus",
                 "ListPodSandbox", "CreateContainer", "StartContainer", "StopContainer",
                 "RemoveContainer", "ListContainers", "ContainerStatus", "UpdateContainerResources",
                 "ReopenContainerLog", "ExecSync", "Exec", "Attach", "PortForward", "ContainerStats",
                 "ListContainerStats", "PodSandboxStats", "ListPodSandboxStats", "UpdateRuntimeConfig",
                 "Status", "CheckpointContainer", "GetContainerEvents", "ListMetricDescriptors",
                 "ListPodSandboxMetrics", "RuntimeConfig"):
        assert name in runtime, name
    assert runtime["ExecSync"].full_name == "runtime.v1.RuntimeService.ExecSync"
    assert runtime["GetContainerEvents"].server_streaming
    images = services["ImageService"].methods_by_name
    assert set(images) == {"ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"}


def test_field_numbers_match_upstream():
    # Numbers that are not in declaration order upstream, where a hand-written copy slips.
    assert _number(cri_pb2.ImageSpec, "user_specified_image") == 18
    assert _number(cri_pb2.ImageSpec, "runtime_handler") == 19
    assert _number(cri_pb2.ImageSpec, "image_ref") == 20
    assert _number(cri_pb2.LinuxSandboxSecurityContext, "run_as_group") == 8
    assert _number(cri_pb2.LinuxSandboxSecurityContext, "supplemental_groups_policy") == 11
    assert _number(cri_pb2.LinuxContainerSecurityContext, "run_as_group") == 12
    assert _number(cri_pb2.LinuxContainerSecurityContext, "supplemental_groups_policy") == 17
    assert _number(cri_pb2.Namespace, "options") == 2
    assert _number(cri_pb2.ContainerConfig, "CDI_devices") == 17
    assert _number(cri_pb2.ContainerConfig, "stop_signal") == 18
    assert _number(cri_pb2.ContainerStatus, "image_id") == 17
    assert _number(cri_pb2.ContainerStatus, "stop_signal") == 19
    assert _number(cri_pb2.Container, "image_id") == 10
    assert _number(cri_pb2.Mount, "uidMappings") == 6
    assert _number(cri_pb2.Mount, "mount_options") == 11
    assert _number(cri_pb2.PodSandboxStatusResponse, "containers_statuses") == 3
    assert _number(cri_pb2.ContainerStats, "io") == 6
    assert _number(cri_pb2.MemoryUsage, "psi") == 8
    assert cri_pb2.Signal.Value("SIGNAL_SIGTERM") == 23
    assert cri_pb2.Signal.Value("SIGNAL_SIGRTMAX") == 65
    assert cri_pb2.ContainerState.Value("CONTAINER_UNKNOWN") == 3
    assert cri_pb2.CgroupDriver.Value("CGROUPFS") == 1


def test_bytes_from_the_wire_decode_as_upstream_meant():
    # A ContainerStatus as containerd would encode it: id=1 "c1", state=3 RUNNING(1),
    # exit_code=7 137, reason=10 "OOMKilled".
    wire = b"\x0a\x02c1" + b"\x18\x01" + b"\x38\x89\x01" + b"\x52\x09OOMKilled"
    status = cri_pb2.ContainerStatus.FromString(wire)
    assert (status.id, status.state, status.exit_code, status.reason) == (
        "c1", cri_pb2.CONTAINER_RUNNING, 137, "OOMKilled")
