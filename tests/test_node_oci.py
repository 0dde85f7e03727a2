"""The OCI spec a CRI container becomes: Kubernetes' command/args rules, the environment order,
users from the rootfs, containerd's defaults (capabilities, mounts, masked paths), limits from
LinuxContainerResources with oom_score_adj clamped, the pod's netns and cgroup path."""

from __future__ import annotations

import pytest

from node.pb import cri_pb2
from node.runtime import oci

SANDBOX = oci.SandboxFiles(netns_path="/run/netns/kp0000-n0-0123456789", hostname="web-0",
                           hosts="/state/sb/hosts", resolv_conf="/state/sb/resolv.conf",
                           hostname_file="/state/sb/hostname")


def _spec(tmp_path, config: cri_pb2.ContainerConfig, image: dict | None = None, sandbox_config=None):
    paths = oci.ContainerPaths(rootfs=str(tmp_path), cgroups_path="/kp0000-n0/sb/ctr")
    return oci.build_spec(config, sandbox_config or cri_pb2.PodSandboxConfig(), image or {}, SANDBOX, paths)


def _config(**kw) -> cri_pb2.ContainerConfig:
    return cri_pb2.ContainerConfig(metadata=cri_pb2.ContainerMetadata(name="c"), **kw)


@pytest.mark.parametrize("command,args,image,want", [
    ([], [], {"Entrypoint": ["/ep"], "Cmd": ["a", "b"]}, ["/ep", "a", "b"]),
    ([], ["x"], {"Entrypoint": ["/ep"], "Cmd": ["a"]}, ["/ep", "x"]),        # args replace Cmd
    (["/cmd"], [], {"Entrypoint": ["/ep"], "Cmd": ["a"]}, ["/cmd"]),         # command drops Cmd too
    (["/cmd"], ["y"], {"Entrypoint": ["/ep"], "Cmd": ["a"]}, ["/cmd", "y"]),
    ([], [], {"Cmd": ["sh"]}, ["sh"]),
])
def test_process_args_follow_kubernetes_rules(command, args, image, want):
    assert oci.process_args(command, args, image) == want


def test_no_command_anywhere_is_a_spec_error(tmp_path):
    with pytest.raises(oci.SpecError, match="no command"):
        _spec(tmp_path, _config(), {})


def test_env_image_first_container_overrides_in_place_and_path_defaults(tmp_path):
    kv = cri_pb2.KeyValue
    spec = _spec(tmp_path, _config(command=["sh"], envs=[kv(key="B", value=b"2"), kv(key="C", value=b"3")]),
                 {"Env": ["A=1", "B=image"]})
    env = spec["process"]["env"]
    assert env[:4] == ["PATH=" + oci.DEFAULT_PATH.split("=", 1)[1], "A=1", "B=2", "C=3"]
    assert "HOSTNAME=web-0" in env
    image_path = _spec(tmp_path, _config(command=["sh"]), {"Env": ["PATH=/bin"]})["process"]["env"]
    assert image_path[0] == "PATH=/bin"


def test_user_from_image_names_and_security_context(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\nwww:x:34:\nextra:x:50:www\n")
    by_name = _spec(tmp_path, _config(command=["sh"]), {"User": "www"})["process"]["user"]
    assert by_name == {"uid": 33, "gid": 34, "additionalGids": [50]}
    numeric = _spec(tmp_path, _config(command=["sh"]), {"User": "1000:2000"})["process"]["user"]
    assert numeric == {"uid": 1000, "gid": 2000}
    sc = cri_pb2.LinuxContainerSecurityContext(run_as_user=cri_pb2.Int64Value(value=33),
                                               run_as_group=cri_pb2.Int64Value(value=7),
                                               supplemental_groups=[8])
    ctx = _spec(tmp_path, _config(command=["sh"], linux=cri_pb2.LinuxContainerConfig(security_context=sc)),
                {"User": "root"})["process"]["user"]
    assert ctx == {"uid": 33, "gid": 7, "additionalGids": [50, 8]}
    with pytest.raises(oci.SpecError, match="unable to find user nobody"):
        _spec(tmp_path, _config(command=["sh"]), {"User": "nobody"})


def test_capabilities_default_add_drop_all_and_privileged():
    caps = oci.capabilities(None)["bounding"]
    assert caps == list(oci.DEFAULT_CAPABILITIES) and "CAP_SYS_ADMIN" not in caps
    sc = cri_pb2.LinuxContainerSecurityContext(
        capabilities=cri_pb2.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["CAP_KILL"]))
    caps = oci.capabilities(sc)["effective"]
    assert "CAP_NET_ADMIN" in caps and "CAP_KILL" not in caps
    only = cri_pb2.LinuxContainerSecurityContext(
        capabilities=cri_pb2.Capability(add_capabilities=["NET_BIND_SERVICE"], drop_capabilities=["ALL"]))
    assert oci.capabilities(only)["permitted"] == ["CAP_NET_BIND_SERVICE"]
    priv = oci.capabilities(cri_pb2.LinuxContainerSecurityContext(privileged=True))["bounding"]
    assert "CAP_SYS_ADMIN" in priv and len(priv) == len(oci.ALL_CAPABILITIES)


def test_resources_limits_and_oom_score_adj_clamped(tmp_path):
    res = cri_pb2.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_shares=512, cpu_quota=50000,
                                          cpu_period=100000, oom_score_adj=-997)
    spec = _spec(tmp_path, _config(command=["sh"], linux=cri_pb2.LinuxContainerConfig(resources=res)))
    r = spec["linux"]["resources"]
    assert r["memory"] == {"limit": 64 << 20}
    assert r["cpu"] == {"shares": 512, "quota": 50000, "period": 100000}
    assert r["devices"] == [{"allow": False, "access": "rwm"}]
    assert spec["process"]["oomScoreAdj"] == 0  # negative scores are not ours to give
    res.oom_score_adj = 999
    assert oci.oom_score_adj(res) == 999
    assert "memory" not in oci.resources(cri_pb2.LinuxContainerResources())
    assert "pids" not in r
    assert oci.resources(res, pids_limit=100)["pids"] == {"limit": 100}
    res.unified["pids.max"] = "50"
    assert oci.resources(res, pids_limit=100)["pids"] == {"limit": 50}


def test_namespaces_cgroup_hostname_masked_paths(tmp_path):
    spec = _spec(tmp_path, _config(command=["sh"]))
    ns = {n["type"]: n.get("path") for n in spec["linux"]["namespaces"]}
    assert ns == {"pid": None, "ipc": None, "uts": None, "mount": None,
                  "network": "/run/netns/kp0000-n0-0123456789"}
    assert spec["linux"]["cgroupsPath"] == "/kp0000-n0/sb/ctr"
    assert spec["hostname"] == "web-0"
    assert "/proc/kcore" in spec["linux"]["maskedPaths"] and "/proc/sys" in spec["linux"]["readonlyPaths"]
    assert spec["ociVersion"] == "1.0.2" and spec["root"] == {"path": str(tmp_path), "readonly": False}
    priv = _spec(tmp_path, _config(command=["sh"], linux=cri_pb2.LinuxContainerConfig(
        security_context=cri_pb2.LinuxContainerSecurityContext(privileged=True))))
    assert "maskedPaths" not in priv["linux"] and priv["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    nnp = cri_pb2.LinuxContainerSecurityContext(no_new_privs=True)
    assert _spec(tmp_path, _config(command=["sh"], linux=cri_pb2.LinuxContainerConfig(
        security_context=nnp)))["process"]["noNewPrivileges"] is True


def test_mounts_defaults_sandbox_files_and_cri_binds(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    hosts = tmp_path / "kubelet-hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    cfg = _config(command=["sh"], mounts=[
        cri_pb2.Mount(container_path="/data", host_path=str(vol), readonly=True,
                      propagation=cri_pb2.PROPAGATION_HOST_TO_CONTAINER),
        cri_pb2.Mount(container_path="/etc/hosts", host_path=str(hosts))])
    ms = _spec(tmp_path, cfg)["mounts"]
    by_dest = {m["destination"]: m for m in ms}
    for dest in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/etc/resolv.conf", "/etc/hostname"):
        assert dest in by_dest, dest
    assert "ro" in by_dest["/sys"]["options"]
    assert by_dest["/data"]["options"] == ["rbind", "rslave", "ro"]
    # the kubelet's /etc/hosts replaces the sandbox's, and appears once
    assert [m["source"] for m in ms if m["destination"] == "/etc/hosts"] == [str(hosts)]
    assert by_dest["/etc/resolv.conf"]["source"] == "/state/sb/resolv.conf"
    missing = _config(command=["sh"], mounts=[cri_pb2.Mount(container_path="/x", host_path=str(tmp_path / "nope"))])
    with pytest.raises(oci.SpecError, match="does not exist"):
        _spec(tmp_path, missing)


def test_stop_signal_from_cri_image_or_default():
    assert oci.stop_signal(_config(), {}) == "SIGTERM"
    assert oci.stop_signal(_config(), {"StopSignal": "SIGQUIT"}) == "SIGQUIT"
    assert oci.stop_signal(_config(), {"StopSignal": "9"}) == "SIGKILL"
    assert oci.stop_signal(_config(), {"StopSignal": "winch"}) == "SIGWINCH"
    assert oci.stop_signal(_config(stop_signal=cri_pb2.SIGNAL_SIGINT), {"StopSignal": "SIGQUIT"}) == "SIGINT"
    with pytest.raises(oci.SpecError):
        oci.stop_signal(_config(), {"StopSignal": "SIGNOPE"})


def test_sysctls_and_readonly_rootfs(tmp_path):
    sb = cri_pb2.PodSandboxConfig(linux=cri_pb2.LinuxPodSandboxConfig(sysctls={"net.ipv4.ip_unprivileged_port_start": "0"}))
    sc = cri_pb2.LinuxContainerSecurityContext(readonly_rootfs=True)
    spec = _spec(tmp_path, _config(command=["sh"], linux=cri_pb2.LinuxContainerConfig(security_context=sc)),
                 sandbox_config=sb)
    assert spec["linux"]["sysctl"] == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert spec["root"]["readonly"] is True
