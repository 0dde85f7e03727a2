"""The node's image store: OCI image layouts on disk, and root filesystems unpacked from them.

One store directory is one OCI image layout (``oci-layout``, ``index.json``,
``blobs/sha256/``), so the layout tools and ``ctr images import`` read what it exports.
Each ``index.json`` entry is one name of an image, annotated as containerd names images
(``io.containerd.image.name`` = the normalized reference). An image's id is the digest of
its config, as in containerd's CRI; its repo digests are ``name@<manifest digest>``.

Images come in by ``build_busybox`` (a one-layer image from Debian's busybox-static) or
``add_oci_layout`` (a layout directory or tar, as ``ctr images export`` and ``skopeo``
write them); there is no registry client: the data plane runs without network.
``rootfs(image)`` unpacks the layers once per image id into ``rootfs/<id>``, which the
runtime uses as the read-only lower directory of each container's overlay.

Several runtimes (the nodes of one plane) may share a store: changes take a file lock,
``index.json`` is replaced atomically, blobs never change once written.

    python -m node.runtime.images build-busybox --store DIR
    python -m node.runtime.images import --store DIR image.tar [--name REF]
    python -m node.runtime.images list --store DIR
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass

from node.runtime.layers import LayerEntry, LayerError, apply_layer, write_layer
from node.runtime.reference import InvalidReference, Reference, normalize, parse

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
ANNOTATION_NAME = "io.containerd.image.name"  # the full reference, as containerd names images
ANNOTATION_REF = "org.opencontainers.image.ref.name"  # OCI's: the tag
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
log = logging.getLogger("node.runtime.images")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
         "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_platform() -> tuple[str, str]:
    """(os, architecture) as OCI spells them for this machine."""
    machine = platform.machine()
    return "linux", _ARCH.get(machine, machine)


class ImageError(Exception):
    """An image that cannot be added, read or unpacked; the message says which and why."""


@dataclass(frozen=True)
class Image:
    id: str  # "sha256:<hex>", the config's digest
    target: str  # digest of what the names point at: a manifest, or an index of manifests
    manifest: str  # digest of this platform's manifest (== target unless target is an index)
    repo_tags: tuple[str, ...]  # normalized references with a tag
    repo_digests: tuple[str, ...]  # name@target
    size: int  # bytes of the image's blobs (manifest, config, compressed layers)
    layers: tuple[str, ...]  # layer blob digests, lowest first
    diff_ids: tuple[str, ...]  # digests of the uncompressed layers, from the config


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ImageError(f"unsupported or malformed digest {digest!r} (sha256 only)")
    return hexpart


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


class ImageStore:
    """An OCI image layout at `root` (created if absent), with unpacked root filesystems."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.blobs = os.path.join(self.root, "blobs", "sha256")
        self.rootfs_dir = os.path.join(self.root, "rootfs")
        self.locks = os.path.join(self.root, "locks")
        for d in (self.blobs, self.rootfs_dir, self.locks):
            os.makedirs(d, exist_ok=True)
        layout = os.path.join(self.root, "oci-layout")
        if not os.path.exists(layout):
            self._write_atomic(layout, _dumps({"imageLayoutVersion": "1.0.0"}))
        if not os.path.exists(self._index_path):
            with self._lock():
                if not os.path.exists(self._index_path):
                    self._write_index([])
        self._parsed: dict[str, dict] = {}  # digest -> parsed JSON blob (blobs never change)

    # ---- files and locks ----

    @property
    def _index_path(self) -> str:
        return os.path.join(self.root, "index.json")

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs, _hex(digest))

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @contextlib.contextmanager
    def _lock(self, name: str = "store"):
        fd = os.open(os.path.join(self.locks, name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _entries(self) -> list[dict]:
        with open(self._index_path, "rb") as f:
            return json.load(f).get("manifests", [])

    def _write_index(self, entries: list[dict]) -> None:
        entries = sorted(entries, key=lambda e: (e.get("annotations", {}).get(ANNOTATION_NAME, ""), e["digest"]))
        self._write_atomic(self._index_path, json.dumps(
            {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": entries}, indent=1).encode())

    def _json_blob(self, digest: str) -> dict:
        parsed = self._parsed.get(digest)
        if parsed is None:
            try:
                with open(self.blob_path(digest), "rb") as f:
                    parsed = json.load(f)
            except FileNotFoundError:
                raise ImageError(f"blob {digest} is missing from the store {self.root}: "
                                 "remove the image and add it again") from None
            self._parsed[digest] = parsed
        return parsed

    def put_blob(self, data: bytes) -> tuple[str, int]:
        """Store `data` as a blob; returns (digest, size)."""
        digest = _digest(data)
        path = self.blob_path(digest)
        if not os.path.exists(path):
            self._write_atomic(path, data)
        return digest, len(data)

    def _copy_blob(self, src, digest: str, size: int | None) -> None:
        """Copy the stream `src` into the blob `digest`, checking digest and size."""
        path = self.blob_path(digest)
        if os.path.exists(path):
            return
        tmp = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        sha, n = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    sha.update(chunk)
                    n += len(chunk)
                    out.write(chunk)
            if "sha256:" + sha.hexdigest() != digest or (size is not None and n != size):
                raise ImageError(f"blob {digest}: content does not match its descriptor "
                                 f"(sha256:{sha.hexdigest()}, {n} bytes): the layout is corrupt")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    # ---- reading images ----

    def _platform_manifest(self, target: dict, read_json) -> dict:
        """The manifest descriptor for this machine: `target` itself, or its index's entry."""
        if target.get("mediaType") not in INDEX_TYPES:
            return target
        index = read_json(target["digest"])
        want_os, want_arch = host_platform()
        candidates = [m for m in index.get("manifests", []) if m.get("mediaType") in MANIFEST_TYPES]
        for m in candidates:
            p = m.get("platform", {})
            if p.get("os") == want_os and p.get("architecture") == want_arch:
                return m
        if len(candidates) == 1 and "platform" not in candidates[0]:
            return candidates[0]
        raise ImageError(f"image index {target['digest']} has no manifest for {want_os}/{want_arch}")

    def _image(self, target: dict, names: list[str]) -> Image:
        mdesc = self._platform_manifest(target, self._json_blob)
        manifest = self._json_blob(mdesc["digest"])
        config_desc = manifest["config"]
        config = self._json_blob(config_desc["digest"])
        size = target.get("size", 0) + config_desc.get("size", 0) + sum(l.get("size", 0) for l in manifest["layers"])
        if mdesc is not target:
            size += mdesc.get("size", 0)
        refs = [normalize(n) for n in names]
        return Image(
            id=config_desc["digest"], target=target["digest"], manifest=mdesc["digest"],
            repo_tags=tuple(sorted({str(r) for r in refs if r.tag})),
            repo_digests=tuple(sorted({f"{r.name}@{target['digest']}" for r in refs})),
            size=size, layers=tuple(l["digest"] for l in manifest["layers"]),
            diff_ids=tuple(config.get("rootfs", {}).get("diff_ids", [])))

    def list(self) -> list[Image]:
        """Every image, once each (by what its names point at), ordered by first name."""
        by_target: dict[str, tuple[dict, list[str]]] = {}
        for e in self._entries():
            name = e.get("annotations", {}).get(ANNOTATION_NAME)
            if name:
                by_target.setdefault(e["digest"], (e, []))[1].append(name)
        images = []
        for e, names in by_target.values():
            try:
                images.append(self._image(e, names))
            except (ImageError, KeyError, TypeError, ValueError) as err:
                # one broken image must not hide the others from the kubelet
                log.warning("image %s (%s) is unreadable, skipped: %s", e["digest"], ", ".join(names), err)
        # two targets (an index and its platform manifest) may be one image: merge by id
        merged: dict[str, Image] = {}
        for img in images:
            old = merged.get(img.id)
            if old is None:
                merged[img.id] = img
            else:
                merged[img.id] = Image(old.id, old.target, old.manifest,
                                       tuple(sorted(set(old.repo_tags) | set(img.repo_tags))),
                                       tuple(sorted(set(old.repo_digests) | set(img.repo_digests))),
                                       old.size, old.layers, old.diff_ids)
        return sorted(merged.values(), key=lambda i: (i.repo_tags or i.repo_digests or (i.id,))[0])

    def resolve(self, ref: str) -> Image | None:
        """The image `ref` names, as containerd's CRI resolves it: a reference (``busybox``,
        ``docker.io/library/busybox:latest``, ``name@sha256:<manifest digest>``), else an
        image id (``sha256:<hex>`` or the bare hex) or a unique prefix of one."""
        images = self.list()
        try:
            r = normalize(ref)
        except InvalidReference:
            r = None
        if r is not None:
            wanted = str(r)
            for img in images:
                if wanted in img.repo_tags or wanted in img.repo_digests:
                    return img
        hexpart = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
        if hexpart and all(c in "0123456789abcdef" for c in hexpart):
            found = [img for img in images if img.id[len("sha256:"):].startswith(hexpart)]
            if len(found) == 1:
                return found[0]
        return None

    def image_config(self, image: Image) -> dict:
        """The whole OCI image config (architecture, os, config, rootfs, history)."""
        return self._json_blob(image.id)

    def config(self, image: Image) -> dict:
        """What a container starts from: Env, Cmd, Entrypoint, WorkingDir, User, ..."""
        return self.image_config(image).get("config") or {}

    # ---- root filesystems ----

    def rootfs_path(self, image: Image) -> str:
        return os.path.join(self.rootfs_dir, _hex(image.id))

    def rootfs(self, image: Image) -> str:
        """The image's root filesystem, unpacked on first use and shared by every container
        of the image afterwards. Treat it as read-only (the overlay's lower directory)."""
        path = self.rootfs_path(image)
        if os.path.isdir(path):
            return path
        with self._lock("unpack-" + _hex(image.id)):
            if os.path.isdir(path):
                return path
            if len(image.diff_ids) != len(image.layers):
                raise ImageError(f"image {image.id}: {len(image.layers)} layers but "
                                 f"{len(image.diff_ids)} diff_ids in its config")
            tmp = os.path.join(self.rootfs_dir, f".unpack-{_hex(image.id)}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            os.mkdir(tmp, 0o755)
            try:
                for layer, diff_id in zip(image.layers, image.diff_ids):
                    apply_layer(self.blob_path(layer), tmp, diff_id)
                os.rename(tmp, path)
            except (LayerError, FileNotFoundError) as e:
                shutil.rmtree(tmp, ignore_errors=True)
                raise ImageError(f"cannot unpack image {image.id}: {e}") from e
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return path

    # ---- adding, naming, removing ----

    def _entry(self, target: dict, ref: Reference) -> dict:
        annotations = {ANNOTATION_NAME: str(ref)}
        if ref.tag:
            annotations[ANNOTATION_REF] = ref.tag
        return {"mediaType": target["mediaType"], "digest": target["digest"], "size": target["size"],
                "annotations": annotations}

    def _set_names(self, target: dict, names: list[str]) -> None:
        """Point each name at `target` (a name moves, as a docker tag does). Under the lock."""
        refs = [normalize(n) for n in names]
        wanted = {str(r) for r in refs}
        kept = [e for e in self._entries() if e.get("annotations", {}).get(ANNOTATION_NAME) not in wanted]
        self._write_index(kept + [self._entry(target, r) for r in refs])

    def add_image(self, manifest: bytes, names: list[str]) -> Image:
        """Name a manifest whose config and layers are already blobs here."""
        with self._lock():
            digest = self._name_manifest(manifest, names)
        return self._resolve_target(digest)

    def _name_manifest(self, manifest: bytes, names: list[str]) -> str:
        """Under the lock: store the manifest, point `names` at it; returns its digest."""
        doc = json.loads(manifest)
        for d in [doc["config"], *doc["layers"]]:
            if not os.path.exists(self.blob_path(d["digest"])):
                raise ImageError(f"manifest refers to blob {d['digest']}, which the store lacks")
        digest, size = self.put_blob(manifest)
        self._set_names({"mediaType": doc.get("mediaType", MEDIA_OCI_MANIFEST), "digest": digest,
                         "size": size}, names)
        return digest

    def create_image(self, layers: list[tuple[bytes, str]], config: dict, names: list[str]) -> Image:
        """An image of `layers` ((gzip tar, diff_id) each, lowest first, as write_layer
        makes them) and the OCI image `config` (its rootfs, os and architecture filled in)."""
        os_name, arch = host_platform()
        config = {"architecture": arch, "os": os_name, **config,
                  "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}
        with self._lock():  # a concurrent remove collects blobs no name uses yet
            layer_descs = []
            for data, _ in layers:
                digest, size = self.put_blob(data)
                layer_descs.append({"mediaType": MEDIA_OCI_LAYER_GZIP, "digest": digest, "size": size})
            config_digest, config_size = self.put_blob(_dumps(config))
            manifest = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
                        "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config_digest, "size": config_size},
                        "layers": layer_descs}
            digest = self._name_manifest(_dumps(manifest), names)
        return self._resolve_target(digest)

    def _resolve_target(self, digest: str) -> Image:
        for img in self.list():
            if img.target == digest or img.manifest == digest:
                return img
        raise ImageError(f"no image with target {digest} after adding it")  # a racing remove

    def tag(self, image: Image, ref: str) -> Image:
        """Give `image` one more name (taken from whichever image had it)."""
        with self._lock():
            target = next((e for e in self._entries() if e["digest"] == image.target), None)
            if target is None:
                raise ImageError(f"image {image.id} is no longer in the store")
            self._set_names(target, [ref])
        return self._resolve_target(image.target)

    def add_oci_layout(self, path: str, name: str | None = None) -> list[Image]:
        """Import the images of an OCI layout (a directory, or a tar such as
        ``ctr images export`` writes). Names come from each entry's annotations
        (containerd's full name, else an OCI ref.name that is a full reference); `name`
        names the one image that has none of its own."""
        with _LayoutSource(path) as src:
            entries = src.json("index.json").get("manifests", [])
            named: list[tuple[dict, str]] = []
            unnamed = []
            for e in entries:
                ann = e.get("annotations", {})
                full = ann.get(ANNOTATION_NAME)
                if not full and ann.get(ANNOTATION_REF):
                    with contextlib.suppress(InvalidReference):
                        if "/" in ann[ANNOTATION_REF] or ":" in ann[ANNOTATION_REF] or "@" in ann[ANNOTATION_REF]:
                            full = str(parse(ann[ANNOTATION_REF]))
                (named.append((e, full)) if full else unnamed.append(e))
            if unnamed:
                if name is None or len(unnamed) > 1:
                    raise ImageError(f"{path}: {len(unnamed)} image(s) without a name of their own: "
                                     "give a name (--name REF) and import one image at a time")
                named.append((unnamed[0], name))
            if not named:
                raise ImageError(f"{path}: index.json lists no images")
            with self._lock():
                for e, _ in named:
                    self._import_target(src, e)
                for e, n in named:
                    target = {"mediaType": e["mediaType"], "digest": e["digest"], "size": e["size"]}
                    self._set_names(target, [n])
        return [self.resolve(n) for _, n in named]

    def _import_target(self, src: _LayoutSource, target: dict) -> None:
        def read_json(digest: str) -> dict:
            return json.loads(src.blob_bytes(digest))

        blobs = [target]
        mdesc = self._platform_manifest(target, read_json)
        if mdesc is not target:
            blobs.append(mdesc)
        manifest = read_json(mdesc["digest"])
        blobs += [manifest["config"], *manifest["layers"]]
        for d in blobs:
            with src.blob(d["digest"]) as f:
                self._copy_blob(f, d["digest"], d.get("size"))

    def export(self, refs: list[str], out: str) -> None:
        """Write the images `refs` name as an OCI layout tar, one index entry per name."""
        entries, blobs = [], []
        for ref in refs:
            img = self.resolve(ref)
            if img is None:
                raise ImageError(f"no image {ref!r} in the store {self.root}")
            stored = {e["digest"]: e for e in self._entries()}[img.target]
            try:
                names = [normalize(ref)]
            except InvalidReference:
                names = [normalize(t) for t in img.repo_tags]
            entries += [self._entry(stored, r) for r in names]
            blobs += [img.target, img.manifest, img.id, *img.layers]
        with tarfile.open(out, "w") as tar:
            def add(name: str, data: bytes | None = None, path: str | None = None) -> None:
                info = tarfile.TarInfo(name)
                info.mtime, info.mode = 0, 0o644
                if path is not None:
                    info.size = os.path.getsize(path)
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            add("oci-layout", _dumps({"imageLayoutVersion": "1.0.0"}))
            add("index.json", _dumps({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": entries}))
            for d in dict.fromkeys(blobs):
                add(f"blobs/sha256/{_hex(d)}", path=self.blob_path(d))

    def remove(self, ref: str) -> Image | None:
        """Remove the image `ref` names, with all of its names (as CRI RemoveImage does),
        its blobs no other image uses, and its unpacked rootfs unless a mount still uses
        it. Returns the image removed, None if there was none."""
        with self._lock():
            img = self.resolve(ref)
            if img is None:
                self._remove_name(ref)  # an unreadable image can still lose its name
                return None
            targets = {img.target}
            keep = []
            for e in self._entries():
                if e["digest"] in targets or self._entry_image_id(e) == img.id:
                    continue
                keep.append(e)
            self._write_index(keep)
            self._collect_garbage()
        return img

    def _remove_name(self, ref: str) -> None:
        """Under the lock: drop the index entry named `ref`, if any, and what it alone used."""
        try:
            name = str(normalize(ref))
        except InvalidReference:
            return
        entries = self._entries()
        keep = [e for e in entries if e.get("annotations", {}).get(ANNOTATION_NAME) != name]
        if len(keep) != len(entries):
            self._write_index(keep)
            self._collect_garbage()

    def _entry_image_id(self, entry: dict) -> str | None:
        try:
            mdesc = self._platform_manifest(entry, self._json_blob)
            return self._json_blob(mdesc["digest"])["config"]["digest"]
        except (ImageError, KeyError):
            return None

    def _collect_garbage(self) -> None:
        """Delete blobs and rootfs dirs no named image uses. Under the lock."""
        live_blobs, live_ids = set(), set()
        for img in self.list():
            live_blobs.update([img.target, img.manifest, img.id, *img.layers])
            live_ids.add(_hex(img.id))
        live = {_hex(d) for d in live_blobs}
        for name in os.listdir(self.blobs):
            if name not in live and ".tmp-" not in name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.blobs, name))
        self._parsed = {d: v for d, v in self._parsed.items() if _hex(d) in live}
        mounted = _mount_options_text()
        for name in os.listdir(self.rootfs_dir):
            path = os.path.join(self.rootfs_dir, name)
            if name in live_ids or name.startswith(".") or path in mounted:
                continue
            shutil.rmtree(path, ignore_errors=True)

    def usage(self) -> tuple[int, int]:
        """(bytes, inodes) the store uses on disk, hard links counted once."""
        seen: set[tuple[int, int]] = set()
        used = 0
        for dirpath, dirnames, filenames in os.walk(self.root):
            for n in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, n))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    used += st.st_blocks * 512
        return used, len(seen)


def _mount_options_text() -> str:
    """This mount namespace's mount table (overlay lowerdirs included), for in-use checks."""
    try:
        with open("/proc/self/mountinfo") as f:
            return f.read()
    except OSError:
        return ""


class _LayoutSource:
    """Files of an OCI layout in a directory or a tar, by their layout path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if os.path.isdir(path):
            return
        try:
            self.tar = tarfile.open(path, "r:*")
        except (tarfile.TarError, OSError) as e:
            raise ImageError(f"{path}: neither an OCI layout directory nor a readable tar ({e})") from e
        for m in self.tar.getmembers():
            self.members[os.path.normpath(m.name).lstrip("/")] = m

    def open(self, rel: str):
        if self.tar is None:
            try:
                return open(os.path.join(self.path, rel), "rb")
            except FileNotFoundError:
                raise ImageError(f"{self.path}: no {rel} (is it an OCI image layout?)") from None
        m = self.members.get(rel)
        if m is None or not m.isreg():
            raise ImageError(f"{self.path}: no {rel} in the archive (is it an OCI image layout?)")
        return self.tar.extractfile(m)

    def json(self, rel: str) -> dict:
        with self.open(rel) as f:
            return json.load(f)

    def blob(self, digest: str):
        return self.open(f"blobs/sha256/{_hex(digest)}")

    def blob_bytes(self, digest: str) -> bytes:
        with self.blob(digest) as f:
            data = f.read()
        if _digest(data) != digest:
            raise ImageError(f"{self.path}: blob {digest} does not match its digest")
        return data

    def __enter__(self) -> _LayoutSource:
        return self

    def __exit__(self, *exc) -> None:
        if self.tar is not None:
            self.tar.close()


# ---- busybox from busybox-static ----

BUSYBOX_BIN = "/usr/bin/busybox"
BUSYBOX_REF = "docker.io/library/busybox:latest"


def build_busybox(store: ImageStore, busybox: str = BUSYBOX_BIN, ref: str = BUSYBOX_REF) -> Image:
    """A one-layer image of a static busybox: bin/busybox, a hard link for each applet at
    the path ``busybox --list-full`` gives, /etc/passwd and /etc/group (root, nobody), /tmp,
    /root; config Cmd ["sh"] and the usual PATH. The same binary gives the same image id."""
    if not os.path.isfile(busybox):
        raise ImageError(f"{busybox} not found: install Debian's busybox-static (make node-deps)")
    with open(busybox, "rb") as f:
        binary = f.read()
    try:
        applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                                 check=True, timeout=30).stdout.split()
        banner = subprocess.run([busybox, "--help"], capture_output=True, text=True,
                                timeout=30).stdout.splitlines()[:1]
    except (subprocess.SubprocessError, OSError) as e:
        raise ImageError(f"{busybox} --list-full failed ({e}): is it busybox?") from e
    if "bin/sh" not in applets:
        raise ImageError(f"{busybox} has no sh applet: use busybox-static's /usr/bin/busybox")
    mtime = int(os.stat(busybox).st_mtime)
    dirs = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "proc": 0o555, "root": 0o700,
            "sbin": 0o755, "sys": 0o555, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755,
            "usr/sbin": 0o755, "var": 0o755}
    for applet in applets:
        parent = os.path.dirname(applet)
        while parent and parent not in dirs:
            dirs[parent] = 0o755
            parent = os.path.dirname(parent)
    entries = [LayerEntry(d, "dir", mode) for d, mode in sorted(dirs.items())]
    entries.append(LayerEntry("bin/busybox", "file", 0o755, binary))
    entries += [LayerEntry(a, "hardlink", 0o755, link="bin/busybox")
                for a in sorted(set(applets)) if a != "bin/busybox"]
    entries.append(LayerEntry("etc/passwd", "file", 0o644,
                              b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"))
    entries.append(LayerEntry("etc/group", "file", 0o644, b"root:x:0:\nnobody:x:65534:\n"))
    layer = write_layer(entries, mtime)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
    version = banner[0].split(" multi-call")[0].strip() if banner else "BusyBox"
    config = {
        "created": created,
        "config": {"Env": [DEFAULT_PATH_ENV], "Cmd": ["sh"]},
        "history": [{"created": created, "created_by": f"node.runtime.images build_busybox: "
                     f"{version} from {busybox} and its applet links"}],
    }
    return store.create_image([layer], config, [ref])


# ---- command line ----

def _print_images(images: list[Image]) -> None:
    print(f"{'IMAGE':<50} {'IMAGE ID':<14} {'SIZE':>10}")
    for img in images:
        for name in img.repo_tags or img.repo_digests or ("<none>",):
            print(f"{name:<50} {img.id[7:19]:<14} {img.size:>10}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m node.runtime.images", description="The node's image store.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("build-busybox", "build busybox:latest from busybox-static"),
                        ("import", "import an OCI layout (directory or tar)"),
                        ("export", "export images as an OCI layout tar"),
                        ("list", "list the images"), ("remove", "remove images"),
                        ("rootfs", "unpack an image, print its rootfs directory")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--store", required=True, help="the image store directory")
        if name == "build-busybox":
            p.add_argument("--busybox", default=BUSYBOX_BIN)
            p.add_argument("--ref", default=BUSYBOX_REF)
        elif name == "import":
            p.add_argument("path")
            p.add_argument("--name", help="name for an image the layout does not name")
        elif name == "export":
            p.add_argument("refs", nargs="+")
            p.add_argument("-o", "--output", required=True)
        elif name in ("remove", "rootfs"):
            p.add_argument("refs", nargs="+")
    args = ap.parse_args(argv)
    store = ImageStore(args.store)
    try:
        if args.cmd == "build-busybox":
            _print_images([build_busybox(store, args.busybox, args.ref)])
        elif args.cmd == "import":
            _print_images(store.add_oci_layout(args.path, args.name))
        elif args.cmd == "export":
            store.export(args.refs, args.output)
        elif args.cmd == "list":
            _print_images(store.list())
        else:
            for ref in args.refs:
                img = store.resolve(ref)
                if img is None:
                    print(f"no image {ref!r} in {store.root}", file=sys.stderr)
                    return 1
                print(store.rootfs(img) if args.cmd == "rootfs" else f"removed {store.remove(ref).id}")
    except (ImageError, InvalidReference) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
