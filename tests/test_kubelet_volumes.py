"""The kubelet's volumes on a real directory tree and real tmpfs mounts under tmp_path.

Mounts are made with mount(2) through ctypes (no process is spawned, so no
``process`` marker); the ``kubelet_root`` fixture unmounts and removes
everything under tmp_path whether the test passed or not. Needs root.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import sys
import threading
import time

import pytest

from apiserver.pb import core_pb2, meta_pb2
from node import mounts
from node.kubelet import volumes
from node.kubelet.env import ContainerConfigError
from node.kubelet.volumes import Mount, VolumeError, Volumes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="volumes mount tmpfs and bind subPaths: run as root")

HAS_MODES = "mode" in core_pb2.KeyToPath.DESCRIPTOR.fields_by_name
HAS_DEFAULT_MODE = "default_mode" in core_pb2.ConfigMapVolumeSource.DESCRIPTOR.fields_by_name
HAS_OPTIONAL = "optional" in core_pb2.ConfigMapVolumeSource.DESCRIPTOR.fields_by_name
UID = "0b5c6d1e-1111-4222-8333-944455556666"
TS_DIR = re.compile(r"\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\w+")


@pytest.fixture
def kubelet_root(tmp_path):
    root = tmp_path / "kubelet"
    root.mkdir()
    try:
        yield str(root)
    finally:
        volumes.cleanup(str(root))
        mounts.unmount_all_under(str(tmp_path))
        assert mounts.mounts_under(str(tmp_path)) == []


class Store:
    def __init__(self, *objects):
        self.objects = {}
        for o in objects:
            self.put(o)

    def put(self, o):
        self.objects[(type(o).__name__, o.metadata.namespace, o.metadata.name)] = o

    def delete(self, kind, name, ns="default"):
        self.objects.pop((kind, ns, name), None)

    def __call__(self, kind, namespace, name):
        return self.objects.get((kind, namespace, name))


def _cm(name, data=None, binary=None, ns="default"):
    return core_pb2.ConfigMap(metadata=meta_pb2.ObjectMeta(name=name, namespace=ns), data=data or {},
                              binary_data=binary or {})


def _secret(name, data, ns="default"):
    return core_pb2.Secret(metadata=meta_pb2.ObjectMeta(name=name, namespace=ns), data=data)


def _pod(*vols, containers=(), uid=UID) -> core_pb2.Pod:
    return core_pb2.Pod(metadata=meta_pb2.ObjectMeta(name="web", namespace="default", uid=uid),
                        spec=core_pb2.PodSpec(volumes=list(vols), containers=list(containers)))


def _mountinfo_types(path: str) -> list[str]:
    """Filesystem types mounted exactly at path, read straight from /proc/self/mountinfo."""
    real = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == real:
                found.append(fields[fields.index("-") + 1])
    return found


def _super_options(path: str) -> list[str]:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == real:
                return fields[-1].split(",")
    return []


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---- emptyDir ----

def test_empty_dir_on_disk_and_in_memory(kubelet_root):
    vols = Volumes(kubelet_root, Store())
    pod = _pod(core_pb2.Volume(name="scratch", empty_dir=core_pb2.EmptyDirVolumeSource()),
               core_pb2.Volume(name="fast", empty_dir=core_pb2.EmptyDirVolumeSource(medium="Memory", size_limit="8Mi")))
    vols.setup(pod)
    scratch = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~empty-dir", "scratch")
    fast = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~empty-dir", "fast")
    assert os.path.isdir(scratch) and _mode(scratch) == 0o777 and _mountinfo_types(scratch) == []
    assert _mountinfo_types(fast) == ["tmpfs"] and _mode(fast) == 0o777
    st = os.statvfs(fast)
    assert st.f_blocks * st.f_frsize == 8 * 2**20
    vols.setup(pod)   # a second sync mounts nothing more
    assert _mountinfo_types(fast) == ["tmpfs"]


def test_empty_dir_unknown_medium(kubelet_root):
    pod = _pod(core_pb2.Volume(name="huge", empty_dir=core_pb2.EmptyDirVolumeSource(medium="HugePages")))
    with pytest.raises(VolumeError) as e:
        Volumes(kubelet_root, Store()).setup(pod)
    assert e.value.event_message == 'MountVolume.SetUp failed for volume "huge" : unknown storage medium "HugePages"'


# ---- configMap ----

def test_config_map_layout_and_modes(kubelet_root):
    store = Store(_cm("app", {"app.conf": "level=debug\n", "other": "x"}, {"blob": b"\x00\xff"}))
    pod = _pod(core_pb2.Volume(name="all", config_map=core_pb2.ConfigMapVolumeSource(name="app")),
               core_pb2.Volume(name="some", config_map=core_pb2.ConfigMapVolumeSource(
                   name="app", items=[core_pb2.KeyToPath(key="app.conf", path="etc/app/app.conf")])))
    Volumes(kubelet_root, store).setup(pod)
    base = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~configmap")
    every = os.path.join(base, "all")
    assert sorted(os.listdir(every)) == sorted(["..data", "app.conf", "other", "blob", os.readlink(f"{every}/..data")])
    ts = os.readlink(f"{every}/..data")
    assert TS_DIR.fullmatch(ts) and _mode(f"{every}/{ts}") == 0o755
    assert os.readlink(f"{every}/app.conf") == "..data/app.conf"
    assert open(f"{every}/app.conf").read() == "level=debug\n"
    assert open(f"{every}/blob", "rb").read() == b"\x00\xff"
    assert _mode(f"{every}/{ts}/app.conf") == 0o644
    some = os.path.join(base, "some")
    assert os.readlink(f"{some}/etc") == "..data/etc"
    assert open(f"{some}/etc/app/app.conf").read() == "level=debug\n"
    assert not os.path.lexists(f"{some}/other")


@pytest.mark.skipif(not (HAS_MODES and HAS_DEFAULT_MODE),
                    reason="core.proto lacks KeyToPath.mode/defaultMode yet (branch kinds)")
def test_config_map_item_mode_and_default_mode(kubelet_root):
    store = Store(_cm("app", {"a": "1", "b": "2"}))
    source = core_pb2.ConfigMapVolumeSource(name="app", default_mode=0o400,
                                            items=[core_pb2.KeyToPath(key="a", path="a"),
                                                   core_pb2.KeyToPath(key="b", path="run.sh", mode=0o755)])
    Volumes(kubelet_root, store).setup(_pod(core_pb2.Volume(name="cfg", config_map=source)))
    d = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~configmap", "cfg")
    assert _mode(f"{d}/a") == 0o400 and _mode(f"{d}/run.sh") == 0o755


@pytest.mark.parametrize("source,message", [
    (core_pb2.ConfigMapVolumeSource(name="nope"), 'configmap "nope" not found'),
    (core_pb2.ConfigMapVolumeSource(name="app", items=[core_pb2.KeyToPath(key="missing", path="m")]),
     "configmap references non-existent config key: missing"),
    (core_pb2.ConfigMapVolumeSource(name="app", items=[core_pb2.KeyToPath(key="a", path="../escape")]),
     "invalid path: must not contain '..': ../escape"),
])
def test_config_map_errors(kubelet_root, source, message):
    vols = Volumes(kubelet_root, Store(_cm("app", {"a": "1"})))
    pod = _pod(core_pb2.Volume(name="cfg", config_map=source),
               core_pb2.Volume(name="scratch", empty_dir=core_pb2.EmptyDirVolumeSource()))
    with pytest.raises(VolumeError) as e:
        vols.setup(pod)
    assert str(e.value) == message and e.value.volume == "cfg" and e.value.reason == "FailedMount"
    assert e.value.event_message == f'MountVolume.SetUp failed for volume "cfg" : {message}'
    # the other volumes were still set up
    assert os.path.isdir(os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~empty-dir", "scratch"))


@pytest.mark.skipif(not HAS_OPTIONAL, reason="core.proto lacks ConfigMapVolumeSource.optional yet (branch kinds)")
def test_optional_config_map_missing_is_an_empty_volume(kubelet_root):
    source = core_pb2.ConfigMapVolumeSource(name="nope", optional=True,
                                            items=[core_pb2.KeyToPath(key="a", path="a")])
    Volumes(kubelet_root, Store()).setup(_pod(core_pb2.Volume(name="cfg", config_map=source)))
    d = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~configmap", "cfg")
    assert sorted(os.listdir(d)) == sorted(["..data", os.readlink(f"{d}/..data")])


def test_update_swaps_data_only_when_content_changes(kubelet_root):
    store = Store(_cm("app", {"a": "1", "b": "2"}))
    vols = Volumes(kubelet_root, store)
    pod = _pod(core_pb2.Volume(name="cfg", config_map=core_pb2.ConfigMapVolumeSource(name="app")),
               core_pb2.Volume(name="scratch", empty_dir=core_pb2.EmptyDirVolumeSource()))
    vols.setup(pod)
    d = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~configmap", "cfg")
    first = os.readlink(f"{d}/..data")
    assert vols.update(pod) == [] and os.readlink(f"{d}/..data") == first
    store.put(_cm("app", {"a": "1", "c": "3"}))
    assert vols.update(pod) == ["cfg"]
    second = os.readlink(f"{d}/..data")
    assert second != first and open(f"{d}/{first}/b").read() == "2"   # kept for readers on their way in
    assert sorted(os.listdir(d)) == sorted(["..data", first, second, "a", "c"])   # b's link is gone
    # a sync after the grace (0 here) removes the replaced version, as upstream does at once
    assert Volumes(kubelet_root, store, retired_grace=0).update(pod) == []
    assert sorted(os.listdir(d)) == sorted(["..data", second, "a", "c"])
    assert open(f"{d}/c").read() == "3"
    store.delete("ConfigMap", "app")
    with pytest.raises(VolumeError, match='configmap "app" not found'):
        vols.update(pod)
    assert open(f"{d}/c").read() == "3"   # a vanished object leaves the last content in place


def test_update_is_atomic_for_a_reader(kubelet_root):
    """A reader looping over the file through its path sees only whole versions, never
    a missing or partial file, while updates swap ..data underneath it."""
    versions = [("v%d-" % i + "x" * (i * 997 % 5000)).encode() for i in range(24)]
    store = Store(_cm("app", {"data": versions[0].decode()}))
    vols = Volumes(kubelet_root, store)
    pod = _pod(core_pb2.Volume(name="cfg", config_map=core_pb2.ConfigMapVolumeSource(name="app")))
    vols.setup(pod)
    path = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~configmap", "cfg", "data")
    known = set(versions)
    stop = threading.Event()
    bad: list[object] = []
    seen: set[bytes] = set()
    reads = [0]

    def reader():
        while not stop.is_set():
            try:
                with open(path, "rb") as f:
                    content = f.read()
            except OSError as exc:
                bad.append(exc)
                continue
            reads[0] += 1
            if content not in known:
                bad.append(content[:40])
            seen.add(content)

    thread = threading.Thread(target=reader, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)   # the writer waits less for the GIL between its syscalls
    thread.start()
    try:
        for rounds in range(10):
            for v in versions[1:] + versions[:1]:
                store.put(_cm("app", {"data": v.decode()}))
                assert vols.update(pod) == ["cfg"]
    finally:
        stop.set()
        thread.join(timeout=10)
        sys.setswitchinterval(interval)
    assert bad == [], f"reader saw {len(bad)} bad reads, first: {bad[:3]}"
    assert reads[0] > 200 and len(seen) > 5, (reads[0], len(seen))


# ---- secret ----

def test_secret_is_on_tmpfs_and_never_on_disk(kubelet_root, tmp_path):
    secret_bytes = b"hunter2-" + os.urandom(12).hex().encode()
    config_marker = b"config-marker-" + os.urandom(8).hex().encode()
    store = Store(_secret("creds", {"password": secret_bytes}), _cm("app", {"marker": config_marker.decode()}))
    vols = Volumes(kubelet_root, store)
    pod = _pod(core_pb2.Volume(name="creds", secret=core_pb2.SecretVolumeSource(secret_name="creds")),
               core_pb2.Volume(name="cfg", config_map=core_pb2.ConfigMapVolumeSource(name="app")))
    vols.setup(pod)
    sdir = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~secret", "creds")
    assert _mountinfo_types(sdir) == ["tmpfs"]
    if tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2]) >= (6, 4):
        assert "noswap" in _super_options(sdir)   # its pages never reach a swap device either
    assert open(f"{sdir}/password", "rb").read() == secret_bytes
    assert _mode(f"{sdir}/{os.readlink(sdir + '/..data')}/password") == 0o644
    store.put(_secret("creds", {"password": secret_bytes + b"-v2"}))
    assert vols.update(pod) == ["creds"]
    # the disk under the kubelet root, without its submounts: a non-recursive bind shows
    # what a tmpfs hides, so a secret written before its tmpfs was mounted would show here
    scan = tmp_path / "scan"
    scan.mkdir()
    mounts.bind(kubelet_root, str(scan))
    try:
        contents = []
        for dirpath, _, filenames in os.walk(scan):
            for name in filenames:
                p = os.path.join(dirpath, name)
                try:
                    if os.path.isfile(p) and not os.path.islink(p):
                        with open(p, "rb") as fh:
                            contents.append(fh.read())
                except FileNotFoundError:
                    pass  # removed while the walk went on
        assert any(config_marker in c for c in contents), "the scan must see the configMap's disk files"
        assert not any(secret_bytes in c for c in contents)
    finally:
        mounts.unmount(str(scan))


def test_missing_secret_and_key(kubelet_root):
    vols = Volumes(kubelet_root, Store(_secret("creds", {"a": b"1"})))
    with pytest.raises(VolumeError, match='^secret "nope" not found$'):
        vols.setup(_pod(core_pb2.Volume(name="s", secret=core_pb2.SecretVolumeSource(secret_name="nope"))))
    with pytest.raises(VolumeError, match="^references non-existent secret key: b$"):
        vols.setup(_pod(core_pb2.Volume(name="s", secret=core_pb2.SecretVolumeSource(
            secret_name="creds", items=[core_pb2.KeyToPath(key="b", path="b")]))))


# ---- hostPath ----

@pytest.fixture
def host(tmp_path):
    h = tmp_path / "host"
    h.mkdir()
    (h / "dir").mkdir()
    (h / "file").write_text("f")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(h / "sock"))
    try:
        yield str(h)
    finally:
        sock.close()


@pytest.mark.parametrize("rel,path_type,message", [
    ("dir", "Directory", None),
    ("file", "File", None),
    ("sock", "Socket", None),
    ("/dev/null", "CharDevice", None),
    ("missing", "", None),
    ("missing", "Directory", "hostPath {p} doesn't exist"),
    ("file", "Directory", "hostPath type check failed: {p} is not a directory, it's a File"),
    ("dir", "File", "hostPath type check failed: {p} is not a file, it's a Directory"),
    ("dir", "Socket", "hostPath type check failed: {p} is not a socket file, it's a Directory"),
    ("file", "CharDevice", "hostPath type check failed: {p} is not a character device, it's a File"),
    ("/dev/null", "BlockDevice", "hostPath type check failed: {p} is not a block device, it's a CharDevice"),
    ("file", "DirectoryOrCreate", "hostPath type check failed: {p} is not a directory, it's a File"),
    ("dir", "FileOrCreate", "hostPath type check failed: {p} is not a file, it's a Directory"),
    ("missing/file", "FileOrCreate", "open {p}: no such file or directory"),
    ("dir", "Nope", "Nope is an invalid volume type"),
    ("dir/../file", "", "invalid HostPath `{p}`: must not contain '..'"),
])
def test_host_path_types(kubelet_root, host, rel, path_type, message):
    path = rel if rel.startswith("/") else f"{host}/{rel}"
    pod = _pod(core_pb2.Volume(name="h", host_path=core_pb2.HostPathVolumeSource(path=path, type=path_type)))
    vols = Volumes(kubelet_root, Store())
    if message is None:
        vols.setup(pod)
    else:
        with pytest.raises(VolumeError) as e:
            vols.setup(pod)
        assert str(e.value) == message.format(p=path)


def test_host_path_or_create(kubelet_root, host):
    vols = Volumes(kubelet_root, Store())
    vols.setup(_pod(core_pb2.Volume(name="d", host_path=core_pb2.HostPathVolumeSource(
        path=f"{host}/new/deep", type="DirectoryOrCreate")),
        core_pb2.Volume(name="f", host_path=core_pb2.HostPathVolumeSource(path=f"{host}/new.txt",
                                                                          type="FileOrCreate"))))
    assert os.path.isdir(f"{host}/new/deep") and _mode(f"{host}/new/deep") == 0o755 & ~_umask()
    assert os.path.isfile(f"{host}/new.txt") and os.path.getsize(f"{host}/new.txt") == 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- container mounts ----

def _container(*vms) -> core_pb2.Container:
    return core_pb2.Container(name="app", volume_mounts=list(vms))


def test_mounts_for_plain_volumes(kubelet_root, host):
    store = Store(_cm("app", {"a": "1"}), _secret("creds", {"p": b"x"}))
    c = _container(core_pb2.VolumeMount(name="scratch", mount_path="/scratch"),
                   core_pb2.VolumeMount(name="cfg", mount_path="/etc/app"),
                   core_pb2.VolumeMount(name="creds", mount_path="/secrets"),
                   core_pb2.VolumeMount(name="h", mount_path="/host", read_only=True))
    pod = _pod(core_pb2.Volume(name="scratch", empty_dir=core_pb2.EmptyDirVolumeSource()),
               core_pb2.Volume(name="cfg", config_map=core_pb2.ConfigMapVolumeSource(name="app")),
               core_pb2.Volume(name="creds", secret=core_pb2.SecretVolumeSource(secret_name="creds")),
               core_pb2.Volume(name="h", host_path=core_pb2.HostPathVolumeSource(path=f"{host}/dir")),
               containers=[c])
    vols = Volumes(kubelet_root, store)
    vols.setup(pod)
    v = os.path.join(kubelet_root, "pods", UID, "volumes")
    assert vols.mounts_for(pod, c) == [
        Mount("/scratch", f"{v}/kubernetes.io~empty-dir/scratch", False, "PROPAGATION_PRIVATE"),
        Mount("/etc/app", f"{v}/kubernetes.io~configmap/cfg", True, "PROPAGATION_PRIVATE"),
        Mount("/secrets", f"{v}/kubernetes.io~secret/creds", True, "PROPAGATION_PRIVATE"),
        Mount("/host", f"{host}/dir", True, "PROPAGATION_PRIVATE")]
    with pytest.raises(ContainerConfigError) as e:
        vols.mounts_for(pod, _container(core_pb2.VolumeMount(name="nope", mount_path="/x")))
    assert str(e.value) == 'cannot find volume "nope" to mount into container "app"'
    assert e.value.reason == "CreateContainerConfigError"


def test_sub_paths_are_bound_and_cannot_escape(kubelet_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    store = Store(_cm("app", {"app.conf": "conf"}))
    pod = _pod(core_pb2.Volume(name="scratch", empty_dir=core_pb2.EmptyDirVolumeSource()),
               core_pb2.Volume(name="cfg", config_map=core_pb2.ConfigMapVolumeSource(name="app")))
    vols = Volumes(kubelet_root, store)
    vols.setup(pod)
    scratch = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~empty-dir", "scratch")
    os.symlink(str(outside), f"{scratch}/evil")          # what a container could plant
    os.mkdir(f"{scratch}/real")
    os.symlink("real", f"{scratch}/inside")              # a link that stays inside is fine

    ok = _container(core_pb2.VolumeMount(name="scratch", mount_path="/data", sub_path="logs/app"),
                    core_pb2.VolumeMount(name="cfg", mount_path="/etc/app.conf", sub_path="app.conf"),
                    core_pb2.VolumeMount(name="scratch", mount_path="/in", sub_path="inside"))
    got = vols.mounts_for(pod, ok)
    subpaths = os.path.join(kubelet_root, "pods", UID, "volume-subpaths")
    assert [m.host_path for m in got] == [f"{subpaths}/scratch/app/0", f"{subpaths}/cfg/app/1",
                                          f"{subpaths}/scratch/app/2"]
    assert os.path.isdir(f"{scratch}/logs/app") and _mode(f"{scratch}/logs/app") == 0o777
    assert _mountinfo_types(got[0].host_path) and open(got[1].host_path).read() == "conf"
    assert os.path.samefile(got[2].host_path, f"{scratch}/real")
    assert got[1].readonly and not got[0].readonly
    assert vols.mounts_for(pod, ok) == got               # a second call reuses the binds
    assert len(_mountinfo_types(got[0].host_path)) == 1

    for sub, message in [("evil", 'failed to prepare subPath for volumeMount "scratch" of container "app"'),
                         ("evil/secret.txt", 'failed to prepare subPath for volumeMount "scratch" of container "app"'),
                         ("evil/newdir",
                          'failed to create subPath directory for volumeMount "scratch" of container "app"'),
                         ("../x", "unable to provision SubPath `../x`: must not contain '..'"),
                         ("/etc", "error SubPath `/etc` must not be an absolute path")]:
        bad = _container(core_pb2.VolumeMount(name="scratch", mount_path="/x", sub_path=sub))
        with pytest.raises(ContainerConfigError) as e:
            vols.mounts_for(pod, bad)
        assert str(e.value) == message, sub
    assert not (outside / "newdir").exists()
    assert mounts.mounts_under(str(outside)) == []

    vols.teardown(UID)
    assert mounts.mounts_under(kubelet_root) == []
    assert (outside / "secret.txt").read_text() == "host secret"


# ---- tear-down ----

def test_teardown_unmounts_and_removes_everything(kubelet_root, host):
    store = Store(_secret("creds", {"p": b"x"}), _cm("app", {"a": "1"}))
    pod = _pod(core_pb2.Volume(name="creds", secret=core_pb2.SecretVolumeSource(secret_name="creds")),
               core_pb2.Volume(name="mem", empty_dir=core_pb2.EmptyDirVolumeSource(medium="Memory")),
               core_pb2.Volume(name="cfg", config_map=core_pb2.ConfigMapVolumeSource(name="app")),
               core_pb2.Volume(name="h", host_path=core_pb2.HostPathVolumeSource(path=f"{host}/dir")))
    c = _container(core_pb2.VolumeMount(name="h", mount_path="/h", sub_path="sub"))
    vols = Volumes(kubelet_root, store)
    vols.setup(pod)
    vols.mounts_for(pod, c)
    with open(f"{host}/dir/sub/keep", "w") as f:
        f.write("host data")
    assert len(mounts.mounts_under(kubelet_root)) == 3
    assert vols.pod_uids_on_disk() == [UID]
    # a kubelet restarted in between knows nothing but the disk and the mount table
    Volumes(kubelet_root, store).teardown(UID)
    assert mounts.mounts_under(kubelet_root) == []
    assert not os.path.exists(os.path.join(kubelet_root, "pods", UID))
    assert open(f"{host}/dir/sub/keep").read() == "host data"   # hostPath content is the host's
    vols.teardown(UID)   # gone already: fine


def test_restarted_kubelet_sets_up_idempotently(kubelet_root):
    store = Store(_secret("creds", {"p": b"x"}))
    pod = _pod(core_pb2.Volume(name="creds", secret=core_pb2.SecretVolumeSource(secret_name="creds")))
    Volumes(kubelet_root, store).setup(pod)
    d = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~secret", "creds")
    before = os.readlink(f"{d}/..data")
    again = Volumes(kubelet_root, store)
    again.setup(pod)
    assert _mountinfo_types(d) == ["tmpfs"] and os.readlink(f"{d}/..data") == before


def test_unsupported_source_and_bad_uid(kubelet_root):
    claim = core_pb2.PersistentVolumeClaimVolumeSource(claim_name="c")
    pod = _pod(core_pb2.Volume(name="claim", persistent_volume_claim=claim))
    with pytest.raises(VolumeError, match="failed to fetch PVC from API server"):
        Volumes(kubelet_root, Store()).setup(pod)
    with pytest.raises(VolumeError, match="cannot name a directory"):
        Volumes(kubelet_root, Store()).setup(_pod(core_pb2.Volume(name="x", empty_dir=core_pb2.EmptyDirVolumeSource()),
                                                 uid="../../etc"))
    with pytest.raises(ValueError):
        Volumes(kubelet_root, Store()).teardown("..")


def _claim(name, *, phase="Bound", volume="pv-1", uid="claim-uid", deleting=False):
    c = core_pb2.PersistentVolumeClaim(metadata=meta_pb2.ObjectMeta(name=name, namespace="default", uid=uid))
    c.status.phase, c.spec.volume_name = phase, volume
    if deleting:
        c.metadata.deletion_timestamp = "2026-12-07T00:00:00Z"
    return c


def _volume(name, path, *, claim_uid="claim-uid", local=False):
    v = core_pb2.PersistentVolume(metadata=meta_pb2.ObjectMeta(name=name))
    v.spec.claim_ref.name, v.spec.claim_ref.namespace, v.spec.claim_ref.uid = "data", "default", claim_uid
    if local:
        v.spec.local.path = path
    else:
        v.spec.host_path.path, v.spec.host_path.type = path, "Directory"
    return v


def test_a_claim_mounts_its_bound_volumes_directory_read_only_when_asked(kubelet_root, tmp_path):
    disk = tmp_path / "storage" / "pvc-1"
    disk.mkdir(parents=True)
    store = Store(_claim("data"), _volume("pv-1", str(disk)))
    src = core_pb2.PersistentVolumeClaimVolumeSource(claim_name="data")
    pod = _pod(core_pb2.Volume(name="data", persistent_volume_claim=src),
               core_pb2.Volume(name="ro", persistent_volume_claim=core_pb2.PersistentVolumeClaimVolumeSource(
                   claim_name="data", read_only=True)))
    vols = Volumes(kubelet_root, store)
    vols.setup(pod)
    c = _container(core_pb2.VolumeMount(name="data", mount_path="/data"),
                   core_pb2.VolumeMount(name="ro", mount_path="/ro"),
                   core_pb2.VolumeMount(name="data", mount_path="/data-ro", read_only=True))
    assert vols.mounts_for(pod, c) == [Mount("/data", str(disk), False), Mount("/ro", str(disk), True),
                                       Mount("/data-ro", str(disk), True)]
    vols.teardown(UID)
    assert disk.is_dir(), "the claim's data outlives the pod"
    local = tmp_path / "storage" / "nodes" / "n0" / "pvc-2"
    local.mkdir(parents=True)
    store.put(_volume("pv-1", str(local), local=True))
    vols.setup(pod)
    assert vols.mounts_for(pod, _container(core_pb2.VolumeMount(name="data", mount_path="/d")))[0].host_path == str(local)


@pytest.mark.parametrize("claim, volume, message", [
    (_claim("data", phase="Pending", volume=""), None,
     'error processing PVC default/data: PVC default/data has non-bound phase ("Pending") or empty '
     'pvc.Spec.VolumeName ("")'),
    (_claim("data", deleting=True), None,
     "error processing PVC default/data: can't start pod because PVC default/data is being deleted"),
    (_claim("data"), None,
     'error processing PVC default/data: failed to fetch PV pv-1 from API server: persistentvolumes "pv-1" not found'),
    (_claim("data"), _volume("pv-1", "/nonexistent", claim_uid="other"),
     'error processing PVC default/data: found PV object pv-1 but its ClaimRef.UID ("other") does not point to '
     'claim.UID ("claim-uid")'),
    (_claim("data"), _volume("pv-1", "/nonexistent-dir-of-a-test", local=True),
     'path "/nonexistent-dir-of-a-test" does not exist'),
])
def test_a_claim_that_cannot_be_used_yet_fails_with_upstreams_message(kubelet_root, claim, volume, message):
    store = Store(*(o for o in (claim, volume) if o is not None))
    pod = _pod(core_pb2.Volume(name="data", persistent_volume_claim=core_pb2.PersistentVolumeClaimVolumeSource(
        claim_name="data")))
    with pytest.raises(VolumeError) as e:
        Volumes(kubelet_root, store).setup(pod)
    assert e.value.message == message
    assert e.value.event_message == f'MountVolume.SetUp failed for volume "data" : {message}'


def test_cleanup_removes_every_pod(kubelet_root):
    store = Store(_secret("creds", {"p": b"x"}))
    for uid in ("pod-a", "pod-b"):
        Volumes(kubelet_root, store).setup(_pod(core_pb2.Volume(name="creds", secret=core_pb2.SecretVolumeSource(
            secret_name="creds")), uid=uid))
    assert len(mounts.mounts_under(kubelet_root)) == 2
    t0 = time.monotonic()
    volumes.cleanup(kubelet_root)
    assert time.monotonic() - t0 < 5
    assert mounts.mounts_under(kubelet_root) == [] and os.listdir(os.path.join(kubelet_root, "pods")) == []
    volumes.cleanup(kubelet_root)


def test_open_refuses_a_symlink_swapped_in_after_the_check(tmp_path):
    """The last line of defence: a path checked while it was a directory, then
    replaced by a symlink, is refused when it is opened for the bind."""
    from node.kubelet import subpath
    base = tmp_path / "vol"
    (base / "a").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    fd = os.open(str(base), os.O_PATH | os.O_DIRECTORY)
    try:
        os.close(subpath._open_components(fd, "a"))
        os.rmdir(base / "a")
        os.symlink(str(tmp_path / "outside"), base / "a")
        with pytest.raises((subpath.SubPathError, OSError)):
            subpath._open_components(fd, "a")
        with pytest.raises((subpath.SubPathError, OSError)):
            subpath._open_components(fd, "a/x")
    finally:
        os.close(fd)


@pytest.mark.skipif("optional" not in core_pb2.SecretVolumeSource.DESCRIPTOR.fields_by_name
                    or not HAS_MODES, reason="core.proto lacks SecretVolumeSource.optional/KeyToPath.mode yet")
def test_secret_items_modes_and_optional(kubelet_root):
    store = Store(_secret("creds", {"tls.key": b"KEY", "tls.crt": b"CRT"}))
    present = core_pb2.SecretVolumeSource(secret_name="creds", default_mode=0o440, optional=True,
                                          items=[core_pb2.KeyToPath(key="tls.key", path="private/key", mode=0o400),
                                                 core_pb2.KeyToPath(key="tls.crt", path="cert"),
                                                 core_pb2.KeyToPath(key="absent", path="absent")])
    missing = core_pb2.SecretVolumeSource(secret_name="nope", optional=True)
    Volumes(kubelet_root, store).setup(_pod(core_pb2.Volume(name="tls", secret=present),
                                            core_pb2.Volume(name="none", secret=missing)))
    base = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~secret")
    assert _mode(f"{base}/tls/private/key") == 0o400 and _mode(f"{base}/tls/cert") == 0o440
    assert open(f"{base}/tls/private/key", "rb").read() == b"KEY"
    assert not os.path.lexists(f"{base}/tls/absent")          # optional: a missing key is left out
    assert _mountinfo_types(f"{base}/none") == ["tmpfs"]
    assert sorted(os.listdir(f"{base}/none")) == sorted(["..data", os.readlink(f"{base}/none/..data")])


# ---- projected and downwardAPI ----

def test_projected_volume_has_token_config_map_secret_and_downward_files_on_tmpfs(kubelet_root):
    """What the ServiceAccount admission's kube-api-access volume needs, plus a secret source:
    one tmpfs directory; the token comes from the token manager (here with a requester standing
    in for the apiserver's TokenRequest) and is written again once 80% of its life has passed."""
    from node.kubelet.satoken import TokenManager

    now = [1000.0]
    asked = []

    def request(ns, account, pod, uid, audience, seconds):
        asked.append((ns, account, pod, uid, audience, seconds))
        return f"token-{len(asked)}", now[0] + seconds

    store = Store(_cm("kube-root-ca.crt", {"ca.crt": "PEM"}), _secret("creds", {"pw": b"s3"}))
    vols = Volumes(kubelet_root, store, tokens=TokenManager(request, clock=lambda: now[0]))
    proj = core_pb2.ProjectedVolumeSource(default_mode=0o640, sources=[
        core_pb2.VolumeProjection(service_account_token=core_pb2.ServiceAccountTokenProjection(
            path="token", expiration_seconds=3607)),
        core_pb2.VolumeProjection(config_map=core_pb2.ConfigMapProjection(
            name="kube-root-ca.crt", items=[core_pb2.KeyToPath(key="ca.crt", path="ca.crt")])),
        core_pb2.VolumeProjection(secret=core_pb2.SecretProjection(name="creds")),
        core_pb2.VolumeProjection(downward_api=core_pb2.DownwardAPIProjection(items=[
            core_pb2.DownwardAPIVolumeFile(path="namespace", field_ref=core_pb2.ObjectFieldSelector(
                field_path="metadata.namespace"))]))])
    pod = _pod(core_pb2.Volume(name="kube-api-access-abcde", projected=proj),
               core_pb2.Volume(name="info", downward_api=core_pb2.DownwardAPIVolumeSource(items=[
                   core_pb2.DownwardAPIVolumeFile(path="labels", field_ref=core_pb2.ObjectFieldSelector(
                       field_path="metadata.labels")),
                   core_pb2.DownwardAPIVolumeFile(path="app", field_ref=core_pb2.ObjectFieldSelector(
                       field_path="metadata.labels['app']"))])),
               containers=[core_pb2.Container(name="c", volume_mounts=[
                   core_pb2.VolumeMount(name="kube-api-access-abcde", mount_path="/sa"),
                   core_pb2.VolumeMount(name="info", mount_path="/info")])])
    pod.metadata.labels.update({"app": "web", "tier": "a b"})
    vols.setup(pod)
    pdir = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~projected", "kube-api-access-abcde")
    assert _mountinfo_types(pdir) == ["tmpfs"]
    assert sorted(os.listdir(pdir)) == sorted(["..data", os.readlink(f"{pdir}/..data"),
                                               "ca.crt", "namespace", "pw", "token"])
    files = {n: open(f"{pdir}/{n}").read() for n in ("token", "ca.crt", "namespace", "pw")}
    assert files == {"token": "token-1", "ca.crt": "PEM", "namespace": "default", "pw": "s3"}
    assert _mode(f"{pdir}/{os.readlink(pdir + '/..data')}/token") == 0o640
    assert asked == [("default", "default", "web", UID, "", 3607)]
    ddir = os.path.join(kubelet_root, "pods", UID, "volumes", "kubernetes.io~downward-api", "info")
    assert open(f"{ddir}/labels").read() == 'app="web"\ntier="a b"'
    assert open(f"{ddir}/app").read() == "web"
    assert [m.readonly for m in vols.mounts_for(pod, pod.spec.containers[0])] == [True, True]

    now[0] += 0.5 * 3607
    assert vols.update(pod) == []   # the token is still young: nothing asked, nothing written
    now[0] += 0.31 * 3607
    assert vols.update(pod) == ["kube-api-access-abcde"]
    assert open(f"{pdir}/token").read() == "token-2" and len(asked) == 2

    # without a token manager, or when the apiserver refuses, the volume waits with a reason
    with pytest.raises(VolumeError, match="cannot request ServiceAccount tokens"):
        Volumes(kubelet_root, store).setup(_pod(core_pb2.Volume(name="t", projected=proj), uid="other-pod"))

    def refuse(*args):
        raise RuntimeError('serviceaccounts "default" not found')

    with pytest.raises(VolumeError, match='failed to fetch token: serviceaccounts "default" not found'):
        Volumes(kubelet_root, store, tokens=TokenManager(refuse)).setup(
            _pod(core_pb2.Volume(name="t", projected=proj), uid="third-pod"))
