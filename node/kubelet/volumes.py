"""A pod's volumes on the node, laid out as Kubernetes' kubelet lays them out.

``<root>/pods/<pod uid>/volumes/<plugin>/<volume name>``, with the plugins
``kubernetes.io~empty-dir``, ``kubernetes.io~configmap``, ``kubernetes.io~secret``,
``kubernetes.io~projected`` and ``kubernetes.io~downward-api``; subPath binds under
``<root>/pods/<uid>/volume-subpaths``.

- emptyDir: a directory (0777); ``medium: Memory`` mounts a tmpfs there, of
  ``sizeLimit`` bytes when given.
- configMap, secret: files projected by the atomic writer (``..data`` swap), from
  ``items`` (key -> path, mode) or every key, with ``defaultMode`` (0644). A
  missing object or key is an error unless the source is ``optional``. A secret
  volume is a tmpfs of its own and nothing is written before that tmpfs is
  mounted, so a Secret's bytes never reach the node's disk.
- projected: secret, configMap, downwardAPI and serviceAccountToken sources in one tmpfs
  directory (atomic writer); the token from TokenRequest for the pod's ServiceAccount, bound
  to the pod, requested again once 80% of its life has passed (node/kubelet/satoken.py).
- downwardAPI: the pod's name, namespace, uid, labels and annotations as files.
- hostPath: the host's path itself, after upstream's type checks
  (DirectoryOrCreate, Directory, FileOrCreate, File, Socket, CharDevice, BlockDevice).
- persistentVolumeClaim: the claim must be Bound to a PersistentVolume whose
  claimRef names it back; the volume's hostPath or local directory is then bound
  into the containers as it is (so what a pod wrote outlives it), read-only when
  the pod's claim source says so. A claim being deleted starts no new pod.

Errors are VolumeError with upstream's message; the kubelet records
``MountVolume.SetUp failed for volume "<name>" : <message>`` (FailedMount) and
leaves the pod in ContainerCreating until a later sync succeeds. Everything is
read back from the disk and the mount table, so a restarted kubelet picks up
where it stopped. Mounts use mount(2) directly (node/mounts.py): root is needed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

from apiserver.pb import core_pb2
from apiserver.quantity import bytes_of
from node import mounts
from node.kubelet import subpath
from node.kubelet.atomic_writer import RETIRED_GRACE, AtomicWriter, FileProjection, PayloadError
from node.kubelet.env import ContainerConfigError, not_found

log = logging.getLogger(__name__)

EMPTY_DIR = "kubernetes.io~empty-dir"
CONFIG_MAP = "kubernetes.io~configmap"
SECRET = "kubernetes.io~secret"
PROJECTED = "kubernetes.io~projected"
DOWNWARD_API = "kubernetes.io~downward-api"
PLUGINS = {"empty_dir": EMPTY_DIR, "config_map": CONFIG_MAP, "secret": SECRET, "projected": PROJECTED,
           "downward_api": DOWNWARD_API}
# the volumes whose content follows objects (or time, for tokens): re-projected at each sync
PROJECTED_SOURCES = ("config_map", "secret", "projected", "downward_api")
DEFAULT_MODE = 0o644
EMPTY_DIR_MODE = 0o777
FAILED_MOUNT = "FailedMount"

# (kind, namespace, name) -> the ConfigMap, Secret, PersistentVolumeClaim or PersistentVolume
# (namespace "") message, None when it does not exist
Getter = Callable[[str, str, str], "core_pb2.ConfigMap | core_pb2.Secret | None"]

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PROPAGATION = {"": "PROPAGATION_PRIVATE", "None": "PROPAGATION_PRIVATE",
                "HostToContainer": "PROPAGATION_HOST_TO_CONTAINER",
                "Bidirectional": "PROPAGATION_BIDIRECTIONAL"}


@dataclass(frozen=True)
class Mount:
    """One bind the runtime makes for a container (a CRI Mount, field for field;
    ``propagation`` is the CRI enum's name)."""
    container_path: str
    host_path: str
    readonly: bool = False
    propagation: str = "PROPAGATION_PRIVATE"


class VolumeError(Exception):
    """A volume that cannot be set up; ``str(e)`` is upstream's message."""

    reason = FAILED_MOUNT

    def __init__(self, volume: str, message: str):
        super().__init__(message)
        self.volume, self.message = volume, message

    @property
    def event_message(self) -> str:
        return f'MountVolume.SetUp failed for volume "{self.volume}" : {self.message}'


def _has(message, name: str) -> bool:
    try:
        return message.HasField(name)
    except ValueError:   # a field our core.proto does not have yet
        return False


def _safe_name(kind: str, name: str) -> str:
    if not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"{kind} {name!r} cannot name a directory: use letters, digits, '.', '_' and '-'")
    return name


def volume_source(volume: core_pb2.Volume) -> str | None:
    for source in ("empty_dir", "config_map", "secret", "host_path", "persistent_volume_claim", "projected",
                   "downward_api"):
        if _has(volume, source):
            return source
    return None


# ---- payloads (upstream's MakePayload for configMap and secret volumes) ----

def _modes(source) -> int:
    return source.default_mode if _has(source, "default_mode") else DEFAULT_MODE


def _optional(source) -> bool:
    return _has(source, "optional") and source.optional


def config_map_payload(source: core_pb2.ConfigMapVolumeSource, cm: core_pb2.ConfigMap) -> dict[str, FileProjection]:
    data = {k: v.encode() for k, v in cm.data.items()}
    data.update({k: bytes(v) for k, v in cm.binary_data.items() if k not in data})
    return _keys_payload(source, data, "configmap references non-existent config key")


def secret_payload(source: core_pb2.SecretVolumeSource, secret: core_pb2.Secret) -> dict[str, FileProjection]:
    return _keys_payload(source, {k: bytes(v) for k, v in secret.data.items()},
                         "references non-existent secret key")


def _keys_payload(source, data: dict[str, bytes], missing: str) -> dict[str, FileProjection]:
    """Every key as a file, or only ``source.items`` (key -> path, mode); a missing key is an
    error (upstream's text, ``missing``) unless the source is optional."""
    default = _modes(source)
    if not source.items:
        return {k: FileProjection(v, default) for k, v in data.items()}
    payload = {}
    for item in source.items:
        if item.key not in data:
            if _optional(source):
                continue
            raise PayloadError(f"{missing}: {item.key}")
        payload[item.path or item.key] = FileProjection(data[item.key], item.mode if _has(item, "mode") else default)
    return payload


def _quoted_map(values) -> bytes:
    """labels or annotations as the downward API writes them: key="value" lines, sorted."""
    return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(values.items())).encode()


def field_value(pod: core_pb2.Pod, field_path: str) -> bytes:
    """A downwardAPI volume file's content (upstream's ExtractFieldPathAsString)."""
    meta = pod.metadata
    simple = {"metadata.name": meta.name, "metadata.namespace": meta.namespace, "metadata.uid": meta.uid}
    if field_path in simple:
        return simple[field_path].encode()
    if field_path == "metadata.labels":
        return _quoted_map(meta.labels)
    if field_path == "metadata.annotations":
        return _quoted_map(meta.annotations)
    for prefix, values in (("metadata.labels", meta.labels), ("metadata.annotations", meta.annotations)):
        if field_path.startswith(prefix + "['") and field_path.endswith("']"):
            return values.get(field_path[len(prefix) + 2:-2], "").encode()
    raise PayloadError(f"unsupported fieldPath: {field_path}")


def downward_payload(pod: core_pb2.Pod, items, default: int) -> dict[str, FileProjection]:
    return {item.path: FileProjection(field_value(pod, item.field_ref.field_path),
                                      item.mode if _has(item, "mode") else default) for item in items}


# ---- hostPath (upstream's checkType) ----

def _go_error(op: str, path: str, exc: OSError) -> str:
    text = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"{op} {path}: {text[:1].lower()}{text[1:]}"


_FILE_TYPES = [(stat.S_ISSOCK, "Socket"), (stat.S_ISBLK, "BlockDevice"), (stat.S_ISCHR, "CharDevice"),
               (stat.S_ISDIR, "Directory"), (stat.S_ISREG, "File")]
_EXPECTED = {"Directory": "directory", "File": "file", "Socket": "socket file",
             "CharDevice": "character device", "BlockDevice": "block device"}


def _file_type(path: str) -> str:
    mode = os.stat(path).st_mode
    for test, name in _FILE_TYPES:
        if test(mode):
            return name
    raise ValueError("only recognise file, directory, socket, block device and character device")


def check_host_path(path: str, path_type: str) -> None:
    """Upstream's hostPath SetUp: no '..', then the type check (creating for *OrCreate)."""
    if ".." in path.split("/"):
        raise ValueError(f"invalid HostPath `{path}`: must not contain '..'")
    if path_type == "":
        return
    if path_type == "DirectoryOrCreate" and not os.path.exists(path):
        try:
            os.makedirs(path, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise ValueError(_go_error("mkdir", path, exc)) from exc
        return
    if path_type == "FileOrCreate" and not os.path.exists(path):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_RDONLY | os.O_CLOEXEC, 0o644))
        except OSError as exc:
            raise ValueError(_go_error("open", path, exc)) from exc
        return
    expected = {"DirectoryOrCreate": "Directory", "FileOrCreate": "File"}.get(path_type, path_type)
    if expected not in _EXPECTED:
        raise ValueError(f"{path_type} is an invalid volume type")
    if not os.path.exists(path):
        raise ValueError(f"hostPath {path} doesn't exist")
    try:
        actual = _file_type(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"hostPath type check failed, {path} is not a {_EXPECTED[expected]}, "
                         f"unable to determine its type: {exc}") from exc
    if actual != expected:
        raise ValueError(f"hostPath type check failed: {path} is not a {_EXPECTED[expected]}, it's a {actual}")


# ---- the manager ----

# ---- persistentVolumeClaim (upstream's desired-state populator checks) ----

def claim_volume_path(get: Getter, namespace: str, claim_name: str) -> str:
    """The directory of the PersistentVolume bound to the claim; ValueError with upstream's
    message when the claim cannot be used (yet)."""
    what = f"error processing PVC {namespace}/{claim_name}"
    claim = get("PersistentVolumeClaim", namespace, claim_name)
    if claim is None:
        raise ValueError(f"{what}: failed to fetch PVC from API server: "
                         f'persistentvolumeclaims "{claim_name}" not found')
    if claim.metadata.deletion_timestamp:
        raise ValueError(f"{what}: can't start pod because PVC {namespace}/{claim_name} is being deleted")
    pv_name = claim.spec.volume_name
    if claim.status.phase != "Bound" or not pv_name:
        raise ValueError(f'{what}: PVC {namespace}/{claim_name} has non-bound phase ("{claim.status.phase}") '
                         f'or empty pvc.Spec.VolumeName ("{pv_name}")')
    pv = get("PersistentVolume", "", pv_name)
    if pv is None:
        raise ValueError(f'{what}: failed to fetch PV {pv_name} from API server: persistentvolumes "{pv_name}" '
                         "not found")
    ref = pv.spec.claim_ref
    if not ref.name:
        raise ValueError(f"{what}: found PV object {pv_name} but it has a nil or empty ClaimRef")
    if ref.uid != claim.metadata.uid:
        raise ValueError(f'{what}: found PV object {pv_name} but its ClaimRef.UID ("{ref.uid}") does not point '
                         f'to claim.UID ("{claim.metadata.uid}")')
    if pv.spec.HasField("host_path"):
        check_host_path(pv.spec.host_path.path, pv.spec.host_path.type)
        return pv.spec.host_path.path
    if pv.spec.HasField("local"):
        path = pv.spec.local.path
        if not os.path.isdir(path):
            raise ValueError(f'path "{path}" does not exist')
        return path
    raise ValueError(f"PersistentVolume {pv_name}: its source is not supported by this kubelet (hostPath, local are)")


class Volumes:
    """The volumes of the pods on one node, under the kubelet's ``root``."""

    def __init__(self, root: str, get: Getter, *, retired_grace: float = RETIRED_GRACE, tokens=None):
        """``tokens``: a node.kubelet.satoken.TokenManager for projected serviceAccountToken
        sources (None: such a volume fails to mount, saying so)."""
        self.root = os.path.abspath(root)
        self.get = get
        self.tokens = tokens
        self.retired_grace = retired_grace   # see atomic_writer: how long a replaced version stays
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # (pod uid, volume name) -> the claimed volume's directory, found at set-up
        self._claimed: dict[tuple[str, str], str] = {}

    # paths

    def pods_dir(self) -> str:
        return os.path.join(self.root, "pods")

    def pod_dir(self, pod_uid: str) -> str:
        return os.path.join(self.pods_dir(), _safe_name("pod uid", pod_uid))

    def volume_dir(self, pod_uid: str, plugin: str, name: str) -> str:
        return os.path.join(self.pod_dir(pod_uid), "volumes", plugin, _safe_name("volume name", name))

    def host_path(self, pod: core_pb2.Pod, volume: core_pb2.Volume) -> str | None:
        """Where the volume's content lives on the node (None for unsupported sources)."""
        source = volume_source(volume)
        if source == "host_path":
            return volume.host_path.path
        if source == "persistent_volume_claim":
            return self._claimed.get((pod.metadata.uid, volume.name))
        if source in PLUGINS:
            return self.volume_dir(pod.metadata.uid, PLUGINS[source], volume.name)
        return None

    def pod_uids_on_disk(self) -> list[str]:
        """The pods that have a directory here (to find orphans after a restart)."""
        try:
            return sorted(os.listdir(self.pods_dir()))
        except FileNotFoundError:
            return []

    def _lock(self, pod_uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(pod_uid, threading.Lock())

    # set-up

    def setup(self, pod: core_pb2.Pod) -> None:
        """Make every volume of the pod ready (idempotent: a sync calls it each time).
        Tries them all, then raises the first VolumeError."""
        self._each(pod, lambda source: True)

    def update(self, pod: core_pb2.Pod) -> list[str]:
        """Re-project the configMap and secret volumes from the objects as they are
        now; returns the names of the volumes whose content changed."""
        return self._each(pod, lambda source: source in PROJECTED_SOURCES)

    def refresh_tokens(self, pod: core_pb2.Pod) -> list[str]:
        """Write again the projected volumes carrying a ServiceAccount token that are set up (the
        token manager gives a new token to those due): the token refresher's call, outside the
        pod's syncs. A volume not made yet, or torn down, is left to the pod's sync. Raises
        VolumeError."""
        uid = pod.metadata.uid
        changed = []
        with self._lock(uid):
            for volume in pod.spec.volumes:
                if volume_source(volume) != "projected" or \
                        not any(_has(p, "service_account_token") for p in volume.projected.sources):
                    continue
                if not os.path.isdir(self.volume_dir(uid, PROJECTED, volume.name)):
                    continue
                if self._setup_volume(pod, volume, "projected"):
                    changed.append(volume.name)
        return changed

    def _each(self, pod: core_pb2.Pod, wanted: Callable[[str | None], bool]) -> list[str]:
        errors: list[VolumeError] = []
        changed: list[str] = []
        with self._lock(pod.metadata.uid):
            for volume in pod.spec.volumes:
                source = volume_source(volume)
                if not wanted(source):
                    continue
                try:
                    if self._setup_volume(pod, volume, source):
                        changed.append(volume.name)
                except VolumeError as exc:
                    errors.append(exc)
                except (OSError, ValueError) as exc:
                    errors.append(VolumeError(volume.name, str(exc)))
        for exc in errors:
            log.warning("pod %s/%s: %s", pod.metadata.namespace, pod.metadata.name, exc.event_message)
        if errors:
            raise errors[0]
        return changed

    def _setup_volume(self, pod: core_pb2.Pod, volume: core_pb2.Volume, source: str | None) -> bool:
        uid = pod.metadata.uid
        if source == "empty_dir":
            medium = volume.empty_dir.medium
            if medium not in ("", "Memory"):
                raise VolumeError(volume.name, f'unknown storage medium "{medium}"')
            size = bytes_of(volume.empty_dir.size_limit) if volume.empty_dir.size_limit else None
            self._empty_dir(self.volume_dir(uid, EMPTY_DIR, volume.name), memory=medium == "Memory", size=size)
            return False
        if source == "host_path":
            check_host_path(volume.host_path.path, volume.host_path.type)
            return False
        if source == "persistent_volume_claim":
            try:
                path = claim_volume_path(self.get, pod.metadata.namespace, volume.persistent_volume_claim.claim_name)
            except (OSError, ValueError):
                raise
            except Exception as exc:   # the getter's own failure: the volume waits for a later sync
                raise VolumeError(volume.name, str(exc)) from exc
            with self._locks_guard:
                self._claimed[(uid, volume.name)] = path
            return False
        if source == "config_map":
            src = volume.config_map
            obj = self._fetch(volume.name, "ConfigMap", pod.metadata.namespace, src.name, _optional(src))
            payload = config_map_payload(src, obj) if obj is not None else {}
            target = self.volume_dir(uid, CONFIG_MAP, volume.name)
            self._empty_dir(target, memory=False, size=None)
            return self._write(volume.name, target, payload)
        if source == "secret":
            src = volume.secret
            obj = self._fetch(volume.name, "Secret", pod.metadata.namespace, src.secret_name, _optional(src))
            payload = secret_payload(src, obj) if obj is not None else {}
            target = self.volume_dir(uid, SECRET, volume.name)
            self._empty_dir(target, memory=True, size=None)
            if mounts.fs_type(target) != "tmpfs":   # never let a Secret's bytes reach a disk
                raise VolumeError(volume.name, f"secret volume {target} is not on tmpfs; refusing to write it")
            return self._write(volume.name, target, payload)
        if source == "downward_api":
            src = volume.downward_api
            payload = downward_payload(pod, src.items, _modes(src))
            target = self.volume_dir(uid, DOWNWARD_API, volume.name)
            self._empty_dir(target, memory=False, size=None)
            return self._write(volume.name, target, payload)
        if source == "projected":
            payload = self._projected_payload(pod, volume)
            target = self.volume_dir(uid, PROJECTED, volume.name)
            self._empty_dir(target, memory=True, size=None)
            if mounts.fs_type(target) != "tmpfs":   # tokens and Secrets never reach a disk
                raise VolumeError(volume.name, f"projected volume {target} is not on tmpfs; refusing to write it")
            return self._write(volume.name, target, payload)
        raise VolumeError(volume.name, f"volume {volume.name!r}: its source ({source or 'none'}) "
                                       "is not supported by this kubelet (emptyDir, configMap, secret, hostPath, "
                                       "persistentVolumeClaim, projected, downwardAPI are)")

    def _projected_payload(self, pod: core_pb2.Pod, volume: core_pb2.Volume) -> dict[str, FileProjection]:
        """upstream's projected collectData: each source's files, one directory."""
        default = _modes(volume.projected)
        namespace = pod.metadata.namespace
        payload: dict[str, FileProjection] = {}
        for projection in volume.projected.sources:
            try:
                if _has(projection, "secret"):
                    src = projection.secret
                    obj = self._fetch(volume.name, "Secret", namespace, src.name, _optional(src))
                    if obj is not None:
                        payload.update(secret_payload(core_pb2.SecretVolumeSource(
                            secret_name=src.name, items=src.items, default_mode=default,
                            optional=_optional(src)), obj))
                elif _has(projection, "config_map"):
                    src = projection.config_map
                    obj = self._fetch(volume.name, "ConfigMap", namespace, src.name, _optional(src))
                    if obj is not None:
                        payload.update(config_map_payload(core_pb2.ConfigMapVolumeSource(
                            name=src.name, items=src.items, default_mode=default, optional=_optional(src)), obj))
                elif _has(projection, "downward_api"):
                    payload.update(downward_payload(pod, projection.downward_api.items, default))
                elif _has(projection, "service_account_token"):
                    payload[projection.service_account_token.path] = FileProjection(
                        self._token(pod, projection.service_account_token).encode(), default)
            except PayloadError as exc:
                raise VolumeError(volume.name, str(exc)) from exc
        return payload

    def _token(self, pod: core_pb2.Pod, source) -> str:
        account = pod.spec.service_account_name or "default"
        if self.tokens is None:
            raise PayloadError("this kubelet cannot request ServiceAccount tokens (no token manager)")
        expiration = source.expiration_seconds if _has(source, "expiration_seconds") else 3600
        try:
            return self.tokens.token(pod.metadata.namespace, account, pod.metadata.name, pod.metadata.uid,
                                     source.audience, expiration)
        except Exception as exc:   # the apiserver's refusal or absence: a later sync tries again
            raise PayloadError(f"failed to fetch token: {exc}") from exc

    def _fetch(self, volume: str, kind: str, namespace: str, name: str, optional: bool):
        try:
            obj = self.get(kind, namespace, name)
        except Exception as exc:   # the getter's own failure: the volume waits for a later sync
            raise VolumeError(volume, str(exc)) from exc
        if obj is None and not optional:
            raise VolumeError(volume, not_found(kind, name))
        return obj

    def _write(self, volume: str, target: str, payload: dict[str, FileProjection]) -> bool:
        try:
            return AtomicWriter(target, retired_grace=self.retired_grace).write(payload)
        except PayloadError as exc:
            raise VolumeError(volume, str(exc)) from exc

    @staticmethod
    def _empty_dir(path: str, *, memory: bool, size: int | None) -> None:
        os.makedirs(path, mode=0o750, exist_ok=True)
        if memory and mounts.fs_type(path) != "tmpfs":
            mounts.mount_tmpfs(path, size=size, mode=EMPTY_DIR_MODE)
        if stat.S_IMODE(os.lstat(path).st_mode) != EMPTY_DIR_MODE:
            os.chmod(path, EMPTY_DIR_MODE)

    # containers

    def mounts_for(self, pod: core_pb2.Pod, container: core_pb2.Container) -> list[Mount]:
        """The container's mounts in ``volumeMounts`` order; subPaths bound safely.
        Raises ContainerConfigError (the container waits in CreateContainerConfigError)."""
        volumes = {v.name: v for v in pod.spec.volumes}
        result = []
        for index, vm in enumerate(container.volume_mounts):
            volume = volumes.get(vm.name)
            host = self.host_path(pod, volume) if volume is not None else None
            if host is None:
                raise ContainerConfigError(f'cannot find volume "{vm.name}" to mount into container "{container.name}"')
            source = volume_source(volume)
            readonly = (vm.read_only or source in PROJECTED_SOURCES
                        or (source == "persistent_volume_claim" and volume.persistent_volume_claim.read_only))
            mode = getattr(vm, "mount_propagation", "") or ""
            if mode not in _PROPAGATION:
                raise ContainerConfigError(f'invalid MountPropagation mode: "{mode}"')
            if vm.sub_path:
                host = self._subpath(pod, container, index, vm, host)
            result.append(Mount(vm.mount_path, host, readonly, _PROPAGATION[mode]))
        return result

    def _subpath(self, pod, container, index: int, vm, base: str) -> str:
        sub = vm.sub_path
        if os.path.isabs(sub):
            raise ContainerConfigError(f"error SubPath `{sub}` must not be an absolute path")
        if ".." in sub.split("/"):
            raise ContainerConfigError(f"unable to provision SubPath `{sub}`: must not contain '..'")
        with self._lock(pod.metadata.uid):
            full = os.path.join(base, sub)
            if not os.path.lexists(full):
                try:
                    subpath.safe_make_dir(base, sub, stat.S_IMODE(os.stat(base).st_mode))
                except (OSError, subpath.SubPathError) as exc:
                    log.warning("subPath %r of volume %r for container %r: %s", sub, vm.name, container.name, exc)
                    raise ContainerConfigError(f'failed to create subPath directory for volumeMount "{vm.name}" '
                                               f'of container "{container.name}"') from exc
            target = os.path.join(self.pod_dir(pod.metadata.uid), "volume-subpaths", _safe_name("volume name", vm.name),
                                  _safe_name("container name", container.name), str(index))
            try:
                return subpath.bind_subpath(base, sub, target)
            except (OSError, subpath.SubPathError) as exc:
                log.warning("subPath %r of volume %r for container %r: %s", sub, vm.name, container.name, exc)
                raise ContainerConfigError(f'failed to prepare subPath for volumeMount "{vm.name}" '
                                           f'of container "{container.name}"') from exc

    # tear-down

    def teardown(self, pod_uid: str) -> None:
        """Unmount (detached) and remove everything of the pod; gone already is fine."""
        pod_dir = self.pod_dir(pod_uid)
        with self._lock(pod_uid):
            _remove_pod_dir(pod_dir)
        if self.tokens is not None:
            self.tokens.forget(pod_uid)
        with self._locks_guard:
            self._locks.pop(pod_uid, None)
            for key in [k for k in self._claimed if k[0] == pod_uid]:
                del self._claimed[key]


def _remove_pod_dir(pod_dir: str) -> None:
    if not os.path.lexists(pod_dir):
        return
    mounts.unmount_all_under(pod_dir)
    # a mount left under the directory would let rmtree reach into it (a subPath bind of a
    # hostPath, say): unmount_all_under raised if one stayed, and rmtree never crosses into one
    device = os.lstat(pod_dir).st_dev

    def refuse_other_devices(path: str) -> None:
        if os.lstat(path).st_dev != device:
            raise OSError(errno.EXDEV, f"{path} is on another filesystem; not removing it", path)

    for dirpath, dirnames, _ in os.walk(pod_dir):
        for name in dirnames:
            refuse_other_devices(os.path.join(dirpath, name))
    shutil.rmtree(pod_dir)


def cleanup(root: str) -> None:
    """Unmount and remove every pod's directory under the kubelet ``root`` (plane stop,
    test teardown); what is already gone is fine."""
    pods = os.path.join(os.path.abspath(root), "pods")
    if not os.path.lexists(pods):
        return
    mounts.unmount_all_under(pods)
    for uid in os.listdir(pods):
        _remove_pod_dir(os.path.join(pods, uid))
