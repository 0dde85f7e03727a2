"""A pod's volumes on the node, and the CRI mounts its containers get.

As Kubernetes' volume plugins, each volume is a directory under the pod's
``<root>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>``:

- emptyDir: an empty directory that lives as long as the pod (container
  restarts keep it); ``medium: Memory`` is a tmpfs of ``sizeLimit``.
- configMap, secret: files projected with the atomic writer (``..data`` swap),
  refreshed on every sync so a changed object reaches running containers;
  items pick and rename keys, with modes; a secret volume is always a tmpfs,
  so its bytes never touch the node's disk.
- hostPath: the node's path itself (type Directory/File must exist;
  DirectoryOrCreate is made).

A volume that cannot be set up (a missing ConfigMap or Secret that is not
optional) raises VolumeError: the pod stays ContainerCreating with a
FailedMount event, as Kubernetes'. ``teardown(uid)`` unmounts and removes a
pod's volumes; ``cleanup(root)`` unmounts everything under a kubelet's root.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil

from apiserver.pb import core_pb2
from apiserver.quantity import bytes_of
from node.kubelet import atomic_writer
from node.pb import cri_pb2

DEFAULT_MODE = 0o644
PLUGIN_DIRS = {"empty_dir": "kubernetes.io~empty-dir", "config_map": "kubernetes.io~configmap",
               "secret": "kubernetes.io~secret", "host_path": "kubernetes.io~host-path"}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2


class VolumeError(Exception):
    """A volume could not be set up; the message is Kubernetes' FailedMount text."""


# ---- mounts ----

def mount_points(under: str) -> list[str]:
    """Mount points at or below ``under``, deepest first."""
    under = os.path.realpath(under).rstrip("/")
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split(" ")[4].replace("\\040", " ")
            if mp == under or mp.startswith(under + "/"):
                out.append(mp)
    return sorted(out, key=lambda p: p.count("/"), reverse=True)


def mount_tmpfs(path: str, size: int = 0) -> None:
    if os.path.realpath(path) in mount_points(path):
        return
    os.makedirs(path, exist_ok=True)
    opts = "mode=0755" + (f",size={size}" if size else "")
    if _libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode()) != 0:
        err = ctypes.get_errno()
        raise VolumeError(f"mount tmpfs on {path}: {os.strerror(err)}")


def unmount_all(under: str) -> None:
    for mp in mount_points(under):
        if _libc.umount2(mp.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (2, 22):
            raise OSError(ctypes.get_errno(), f"umount {mp}: {os.strerror(ctypes.get_errno())}")


def cleanup(root: str) -> None:
    """Unmounts every volume under a kubelet's ``root`` (tests, plane stop)."""
    if os.path.isdir(root):
        unmount_all(root)


# ---- the manager ----

def _source(volume: core_pb2.Volume) -> str:
    for f in PLUGIN_DIRS:
        if volume.HasField(f):
            return f
    return "empty_dir"  # the apiserver defaults a source-less volume to emptyDir


def _projection(data: dict[str, bytes], items, default_mode: int, kind: str, ref: str,
                optional: bool) -> dict[str, tuple[bytes, int]]:
    if not items:
        return {k: (v, default_mode) for k, v in data.items()}
    out = {}
    for item in items:
        if item.key not in data:
            if optional:
                continue
            raise VolumeError(f'configmap references non-existent config key: {item.key}' if kind == "ConfigMap"
                              else f'references non-existent secret key: {item.key}')
        out[item.path or item.key] = (data[item.key], item.mode if item.HasField("mode") else default_mode)
    return out


class VolumeManager:
    """``lookup(resource, namespace, name) -> data | None`` reads ConfigMaps and
    Secrets (as podconfig's)."""

    def __init__(self, root: str, lookup=None) -> None:
        self.root, self.lookup = root, lookup

    def pod_dir(self, uid: str) -> str:
        return os.path.join(self.root, "pods", uid)

    def volume_dir(self, uid: str, volume: core_pb2.Volume) -> str:
        return os.path.join(self.pod_dir(uid), "volumes", PLUGIN_DIRS[_source(volume)], volume.name)

    def setup(self, pod: core_pb2.Pod) -> dict[str, str]:
        """Makes (or refreshes) every volume of the pod; {volume name: host path}."""
        uid, ns = pod.metadata.uid, pod.metadata.namespace
        paths = {}
        for v in pod.spec.volumes:
            kind = _source(v)
            if kind == "host_path":
                paths[v.name] = self._host_path(v)
                continue
            d = self.volume_dir(uid, v)
            if kind == "empty_dir":
                if v.empty_dir.medium == "Memory":
                    mount_tmpfs(d, bytes_of(v.empty_dir.size_limit) if v.empty_dir.size_limit else 0)
                else:
                    os.makedirs(d, exist_ok=True)
            elif kind == "config_map":
                src = v.config_map
                optional = src.HasField("optional") and src.optional
                data = self._data("configmaps", ns, src.name)
                if data is None and not optional:
                    raise VolumeError(f'MountVolume.SetUp failed for volume "{v.name}" : '
                                      f'configmap "{src.name}" not found')
                mode = src.default_mode if src.HasField("default_mode") else DEFAULT_MODE
                atomic_writer.write(d, self._checked(v, _projection(data or {}, src.items, mode, "ConfigMap",
                                                                    src.name, optional)))
            elif kind == "secret":
                src = v.secret
                optional = src.HasField("optional") and src.optional
                data = self._data("secrets", ns, src.secret_name)
                if data is None and not optional:
                    raise VolumeError(f'MountVolume.SetUp failed for volume "{v.name}" : '
                                      f'secret "{src.secret_name}" not found')
                mount_tmpfs(d)  # secrets live in memory only
                mode = src.default_mode if src.HasField("default_mode") else DEFAULT_MODE
                atomic_writer.write(d, self._checked(v, _projection(data or {}, src.items, mode, "Secret",
                                                                    src.secret_name, optional)))
            else:
                raise VolumeError(f'volume "{v.name}": {kind} volumes are not supported by this kubelet '
                                  f'(use emptyDir, configMap, secret or hostPath)')
            paths[v.name] = d
        return paths

    def _checked(self, v, payload):
        try:
            for path in payload:
                atomic_writer.check_path(path)
        except atomic_writer.PayloadError as e:
            raise VolumeError(f'MountVolume.SetUp failed for volume "{v.name}" : {e}') from None
        return payload

    def _data(self, resource: str, namespace: str, name: str) -> dict[str, bytes] | None:
        data = self.lookup(resource, namespace, name) if self.lookup is not None else None
        if data is None:
            return None
        return {k: (v if isinstance(v, bytes) else str(v).encode()) for k, v in data.items()}

    @staticmethod
    def _host_path(v: core_pb2.Volume) -> str:
        path, kind = v.host_path.path, v.host_path.type
        if kind == "DirectoryOrCreate":
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif kind == "FileOrCreate" and not os.path.exists(path):
            open(path, "a").close()
        elif kind == "Directory" and not os.path.isdir(path):
            raise VolumeError(f'MountVolume.SetUp failed for volume "{v.name}" : hostPath type check failed: '
                              f'{path} is not a directory')
        elif kind == "File" and not os.path.isfile(path):
            raise VolumeError(f'MountVolume.SetUp failed for volume "{v.name}" : hostPath type check failed: '
                              f'{path} is not a file')
        return path

    def mounts(self, container: core_pb2.Container, paths: dict[str, str]) -> list[cri_pb2.Mount]:
        """The container's volumeMounts as CRI bind mounts (subPath made on demand)."""
        out = []
        for m in container.volume_mounts:
            if m.name not in paths:
                raise VolumeError(f'container "{container.name}" mounts volume "{m.name}", '
                                  f"which the pod does not declare")
            host = paths[m.name]
            if m.sub_path:
                atomic_writer.check_path(m.sub_path)
                host = os.path.join(host, m.sub_path)
                if not os.path.exists(host):
                    os.makedirs(host, exist_ok=True)
            out.append(cri_pb2.Mount(container_path=m.mount_path, host_path=host, readonly=m.read_only))
        return out

    def teardown(self, uid: str) -> None:
        """Unmounts and removes the pod's volumes (hostPaths are the node's: untouched)."""
        d = self.pod_dir(uid)
        if os.path.isdir(d):
            unmount_all(d)
            shutil.rmtree(d, ignore_errors=True)
