"""Image layers: applying a layer tar onto a directory, and writing reproducible layers.

A layer is a tar (usually gzip-compressed) of the files it adds or changes, plus OCI
whiteouts for what it removes from the layers below: ``.wh.<name>`` deletes ``<name>``,
``.wh..wh..opq`` in a directory hides everything the lower layers put there. Applying the
layers of an image in order gives its root filesystem. Every path a layer names, and every
symlink met on the way, is resolved inside the target directory: a layer cannot write
outside it, whatever its ``..`` and symlinks say.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_MAX_SYMLINK_HOPS = 40
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class LayerError(Exception):
    """A layer that cannot be applied: corrupt, unsupported compression, wrong diff_id."""


class _HashingReader(io.RawIOBase):
    """Reads through `raw`, hashing what passes (the layer's uncompressed bytes: its diff_id)."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.raw.read(len(b))
        self.sha.update(data)
        b[:len(data)] = data
        return len(data)

    def drain(self) -> str:
        """Hash the rest (the tar's end padding) and answer the digest of all of it."""
        while data := self.raw.read(1 << 20):
            self.sha.update(data)
        return "sha256:" + self.sha.hexdigest()


def _open_uncompressed(f):
    head = f.read(4)
    f.seek(0)
    if head[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=f, mode="rb")
    if head == _ZSTD_MAGIC:
        raise LayerError("zstd-compressed layers are not supported: re-export the image with gzip layers")
    return f


def resolve_in_root(root: str, path: str, follow_last: bool = False) -> str:
    """The host path of `path` inside the tree at `root`, following symlinks (each as if
    `root` were /) in every component but the last (and the last too if `follow_last`)."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(root, *done, part)
        if (todo or follow_last) and os.path.islink(host):
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise LayerError(f"too many levels of symbolic links in {path!r}")
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


class _Applier:
    def __init__(self, root: str) -> None:
        self.root = root
        self.added: set[str] = set()  # paths this layer wrote: its own whiteouts spare them
        self.dir_times: list[tuple[str, int]] = []
        self.is_root = os.geteuid() == 0

    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = posixpath.normpath("/" + m.name).lstrip("/")
        if not rel:  # the layer's "./": the root directory's own metadata
            self._metadata(self.root, m)
            return
        parent_rel, base = posixpath.split(rel)
        parent = resolve_in_root(self.root, parent_rel, follow_last=True)
        if base == OPAQUE_WHITEOUT:
            self._opaque(parent, parent_rel)
            return
        if base.startswith(WHITEOUT_PREFIX):
            victim = posixpath.join(parent_rel, base[len(WHITEOUT_PREFIX):])
            if victim not in self.added:
                _remove(os.path.join(parent, base[len(WHITEOUT_PREFIX):]))
            return
        os.makedirs(parent, exist_ok=True)
        path = os.path.join(parent, base)
        if not (m.isdir() and os.path.isdir(path) and not os.path.islink(path)):
            _remove(path)
        if m.isdir():
            os.makedirs(path, exist_ok=True)
        elif m.isreg():
            src = tar.extractfile(m)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        elif m.issym():
            os.symlink(m.linkname, path)
        elif m.islnk():
            target = resolve_in_root(self.root, posixpath.normpath("/" + m.linkname))
            if not os.path.lexists(target):
                raise LayerError(f"hard link {rel} -> {m.linkname}: no such file in the layers so far")
            os.link(target, path, follow_symlinks=False)
        elif m.ischr() or m.isblk() or m.isfifo():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
            try:
                os.mknod(path, kind | (m.mode & 0o7777), os.makedev(m.devmajor, m.devminor))
            except PermissionError:
                return  # device nodes need root; the runtime gives containers their /dev
        else:
            raise LayerError(f"{rel}: unsupported tar entry type {m.type!r}")
        self.added.add(rel)
        if not m.islnk():
            self._metadata(path, m)

    def _metadata(self, path: str, m: tarfile.TarInfo) -> None:
        if self.is_root:
            os.lchown(path, m.uid, m.gid)
        for key, value in m.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                try:
                    os.setxattr(path, key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape"),
                                follow_symlinks=False)
                except OSError:
                    pass  # an xattr this filesystem refuses (security.* without root)
        if m.issym():
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
            return
        os.chmod(path, m.mode & 0o7777)  # after chown, which clears setuid bits
        if m.isdir():
            self.dir_times.append((path, int(m.mtime)))  # set last: children change it
        else:
            os.utime(path, (m.mtime, m.mtime))

    def _opaque(self, parent: str, parent_rel: str) -> None:
        if not os.path.isdir(parent):
            return
        for name in os.listdir(parent):
            if posixpath.join(parent_rel, name) not in self.added:
                _remove(os.path.join(parent, name))

    def finish(self) -> None:
        for path, mtime in reversed(self.dir_times):
            if os.path.isdir(path):
                os.utime(path, (mtime, mtime))


def apply_layer(blob_path: str, root: str, diff_id: str | None = None) -> str:
    """Apply the layer in `blob_path` (tar, or tar+gzip) onto `root`; returns its diff_id
    (sha256 of the uncompressed tar) and raises LayerError if `diff_id` is given and differs."""
    with open(blob_path, "rb") as f:
        reader = _HashingReader(_open_uncompressed(f))
        applier = _Applier(root)
        try:
            with tarfile.open(fileobj=io.BufferedReader(reader, 1 << 20), mode="r|") as tar:
                for member in tar:
                    applier.entry(tar, member)
                actual = reader.drain()
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as e:
            raise LayerError(f"layer {os.path.basename(blob_path)}: {e}") from e
        applier.finish()
    if diff_id is not None and actual != diff_id:
        raise LayerError(f"layer {os.path.basename(blob_path)} unpacks to {actual}, "
                         f"the image config says {diff_id}: the image is corrupt, import it again")
    return actual


@dataclass(frozen=True)
class LayerEntry:
    """One file of a layer being written: ``kind`` is dir, file, symlink or hardlink;
    ``data`` a regular file's bytes, ``link`` a link's target."""

    path: str
    kind: str
    mode: int = 0o755
    data: bytes = b""
    link: str = ""
    uid: int = 0
    gid: int = 0


_KINDS = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE}


def write_layer(entries: Iterable[LayerEntry], mtime: int) -> tuple[bytes, str]:
    """A gzip-compressed layer tar of `entries`, byte-for-byte reproducible (fixed mtime, no
    user names, gzip without a timestamp); returns (compressed bytes, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.path.strip("/") + ("/" if e.kind == "dir" else ""))
            info.type = _KINDS[e.kind]
            info.mode, info.uid, info.gid, info.mtime = e.mode, e.uid, e.gid, mtime
            info.uname = info.gname = ""
            info.linkname = e.link
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    uncompressed = raw.getvalue()
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0) as gz:
        gz.write(uncompressed)
    return packed.getvalue(), "sha256:" + hashlib.sha256(uncompressed).hexdigest()
