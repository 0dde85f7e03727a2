"""A pod's volumes on the node (node/kubelet/volumes.py) and the atomic projection
of ConfigMap and Secret files (node/kubelet/atomic_writer.py), as Kubernetes'
emptyDir/configMap/secret/hostPath plugins and AtomicWriter (atomic_writer_test.go
TestUpdate, TestPathsToRemove). tmpfs mounts need root."""

from __future__ import annotations

import os

import pytest
from kubelet_fixtures import make_pod

from apiserver.pb import core_pb2
from node.kubelet import atomic_writer, volumes
from node.kubelet.volumes import VolumeError, VolumeManager


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: tmpfs mounts")


def read_tree(d):
    """The volume's top-level files as a reader sees them (through the symlinks)."""
    return {name: open(os.path.join(d, name)).read() for name in os.listdir(d)
            if not name.startswith("..") and os.path.isfile(os.path.join(d, name))}


# ---- the atomic writer ----

def test_write_swaps_data_and_keeps_links(tmp_path):
    d = str(tmp_path / "vol")
    t = [1_800_000_000.0]
    assert atomic_writer.write(d, {"a": (b"1", 0o644), "sub/b": (b"2", 0o600)}, clock=lambda: t[0])
    assert os.readlink(os.path.join(d, "a")) == "..data/a"
    first = os.readlink(os.path.join(d, "..data"))
    assert first.startswith("..2027_01_15_")
    assert read_tree(d) == {"a": "1"} and open(os.path.join(d, "sub", "b")).read() == "2"
    assert os.readlink(os.path.join(d, "sub")) == "..data/sub"
    assert os.stat(os.path.join(d, "sub", "b")).st_mode & 0o777 == 0o600
    assert not atomic_writer.write(d, {"a": (b"1", 0o644), "sub/b": (b"2", 0o600)})  # unchanged: nothing
    t[0] += 1
    assert atomic_writer.write(d, {"a": (b"one", 0o644), "c": (b"3", 0o644)}, clock=lambda: t[0])
    assert os.readlink(os.path.join(d, "..data")) != first
    assert not os.path.exists(os.path.join(d, first))       # the old version is gone
    assert not os.path.lexists(os.path.join(d, "sub"))        # so is the key that went away
    assert read_tree(d) == {"a": "one", "c": "3"}


@pytest.mark.parametrize("path", ["/abs", "../up", "a/../b", "..data", "a//b", ""])
def test_paths_must_stay_inside(tmp_path, path):
    with pytest.raises(atomic_writer.PayloadError):
        atomic_writer.write(str(tmp_path), {path: (b"x", 0o644)})


# ---- the volume manager ----

class Objects:
    def __init__(self):
        self.data = {}

    def __call__(self, resource, namespace, name):
        return self.data.get((resource, namespace, name))


@pytest.fixture
def manager(tmp_path):
    need_root()
    objects = Objects()
    m = VolumeManager(str(tmp_path / "kubelet"), objects)
    m.objects = objects
    yield m
    volumes.cleanup(m.root)
    assert volumes.mount_points(m.root) == []


def pod_with(*vols):
    pod = make_pod(("app",))
    for v in vols:
        pod.spec.volumes.add().CopyFrom(v)
    return pod


def test_empty_dirs_on_disk_and_in_memory(manager):
    pod = pod_with(core_pb2.Volume(name="scratch", empty_dir=core_pb2.EmptyDirVolumeSource()),
                   core_pb2.Volume(name="fast", empty_dir=core_pb2.EmptyDirVolumeSource(medium="Memory",
                                                                                        size_limit="8Mi")))
    paths = manager.setup(pod)
    assert paths["scratch"].endswith("/pods/uid-1/volumes/kubernetes.io~empty-dir/scratch")
    assert os.path.isdir(paths["scratch"])
    assert os.path.realpath(paths["fast"]) in volumes.mount_points(paths["fast"])
    st = os.statvfs(paths["fast"])
    assert st.f_blocks * st.f_frsize == 8 << 20
    open(os.path.join(paths["scratch"], "kept"), "w").write("x")
    manager.setup(pod)  # a second sync changes nothing
    assert os.path.exists(os.path.join(paths["scratch"], "kept"))
    manager.teardown("uid-1")
    assert not os.path.exists(manager.pod_dir("uid-1"))
    assert volumes.mount_points(manager.root) == []


def test_config_map_volume_items_modes_and_updates(manager):
    manager.objects.data[("configmaps", "default", "cfg")] = {"a.conf": "A", "b.conf": "B"}
    src = core_pb2.ConfigMapVolumeSource(name="cfg", default_mode=0o640)
    pod = pod_with(core_pb2.Volume(name="all", config_map=src),
                   core_pb2.Volume(name="some", config_map=core_pb2.ConfigMapVolumeSource(
                       name="cfg", items=[core_pb2.KeyToPath(key="b.conf", path="conf/b", mode=0o400)])))
    paths = manager.setup(pod)
    assert read_tree(paths["all"]) == {"a.conf": "A", "b.conf": "B"}
    assert os.stat(os.path.join(paths["all"], "a.conf")).st_mode & 0o777 == 0o640
    assert open(os.path.join(paths["some"], "conf", "b")).read() == "B"
    assert os.stat(os.path.join(paths["some"], "conf", "b")).st_mode & 0o777 == 0o400
    manager.objects.data[("configmaps", "default", "cfg")] = {"a.conf": "A2", "b.conf": "B"}
    manager.setup(pod)
    assert read_tree(paths["all"]) == {"a.conf": "A2", "b.conf": "B"}
    assert not any(volumes.mount_points(paths["all"]))  # configMaps are on disk


def test_missing_config_map_or_key(manager):
    pod = pod_with(core_pb2.Volume(name="c", config_map=core_pb2.ConfigMapVolumeSource(name="nope")))
    with pytest.raises(VolumeError, match='MountVolume.SetUp failed for volume "c" : configmap "nope" not found'):
        manager.setup(pod)
    optional = pod_with(core_pb2.Volume(name="c", config_map=core_pb2.ConfigMapVolumeSource(name="nope", optional=True)))
    assert read_tree(manager.setup(optional)["c"]) == {}
    manager.objects.data[("configmaps", "default", "cm")] = {"x": "1"}
    pod = pod_with(core_pb2.Volume(name="c", config_map=core_pb2.ConfigMapVolumeSource(
        name="cm", items=[core_pb2.KeyToPath(key="y", path="y")])))
    with pytest.raises(VolumeError, match="non-existent config key: y"):
        manager.setup(pod)


def test_secret_volume_is_tmpfs(manager):
    manager.objects.data[("secrets", "default", "s")] = {"token": b"s3cr3t-bytes"}
    pod = pod_with(core_pb2.Volume(name="sec", secret=core_pb2.SecretVolumeSource(secret_name="s")))
    d = manager.setup(pod)["sec"]
    assert os.path.realpath(d) in volumes.mount_points(d)
    assert open(os.path.join(d, "token"), "rb").read() == b"s3cr3t-bytes"
    fs = [line.split() for line in open("/proc/self/mounts")]
    assert any(f[1] == os.path.realpath(d) and f[2] == "tmpfs" for f in fs)


def test_host_path_types(manager, tmp_path):
    made = tmp_path / "made"
    pod = pod_with(core_pb2.Volume(name="h", host_path=core_pb2.HostPathVolumeSource(
        path=str(made), type="DirectoryOrCreate")))
    assert manager.setup(pod)["h"] == str(made) and made.is_dir()
    pod = pod_with(core_pb2.Volume(name="h", host_path=core_pb2.HostPathVolumeSource(
        path=str(tmp_path / "absent"), type="Directory")))
    with pytest.raises(VolumeError, match="is not a directory"):
        manager.setup(pod)
    manager.teardown("uid-1")
    assert made.is_dir()  # the node's own path stays


def test_container_mounts(manager):
    pod = pod_with(core_pb2.Volume(name="data", empty_dir=core_pb2.EmptyDirVolumeSource()))
    c = pod.spec.containers[0]
    c.volume_mounts.add(name="data", mount_path="/data")
    c.volume_mounts.add(name="data", mount_path="/logs", sub_path="logs", read_only=True)
    paths = manager.setup(pod)
    mounts = manager.mounts(c, paths)
    assert [(m.container_path, m.host_path, m.readonly) for m in mounts] == [
        ("/data", paths["data"], False), ("/logs", os.path.join(paths["data"], "logs"), True)]
    assert os.path.isdir(os.path.join(paths["data"], "logs"))
    c.volume_mounts.add(name="undeclared", mount_path="/x")
    with pytest.raises(VolumeError, match='mounts volume "undeclared"'):
        manager.mounts(c, paths)
