"""Projecting a set of files into a volume directory so a reader never sees a
mix of old and new contents (Kubernetes' AtomicWriter, pkg/volume/util).

Layout of a projected volume ``dir``:

    dir/..2027_01_15_08_00_00.123456789/   the files of one version
    dir/..data -> ..2027_01_15_...          swapped in one rename(2)
    dir/<name> -> ..data/<name>             one per top-level entry, made once

A new version is written into a fresh timestamped directory, then the
``..data`` symlink is replaced atomically (a symlink made aside and renamed
over it); the old version is removed afterwards. Nothing is rewritten when the
payload is unchanged, so a kubelet can call ``write`` on every sync.
"""

from __future__ import annotations

import os
import shutil
import time

DATA = "..data"
DATA_TMP = "..data_tmp"


class PayloadError(ValueError):
    """A path in the payload would escape the volume or is malformed."""


def check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or ".." in parts or any(p.startswith("..") for p in parts) \
            or "" in parts:
        raise PayloadError(f"invalid path {path!r}: must be relative, without '..' or empty parts")


def _current(dir_: str) -> dict[str, tuple[bytes, int]] | None:
    data = os.path.join(dir_, DATA)
    if not os.path.islink(data):
        return None
    out = {}
    base = os.path.realpath(data)
    for root, _, files in os.walk(base):
        for f in files:
            full = os.path.join(root, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, base)] = (fh.read(), os.stat(full).st_mode & 0o7777)
    return out


def write(dir_: str, payload: dict[str, tuple[bytes, int]], clock=time.time) -> bool:
    """Makes ``dir_`` hold exactly ``payload`` ({relative path: (bytes, mode)});
    True when it changed something."""
    for path in payload:
        check_path(path)
    os.makedirs(dir_, exist_ok=True)
    if _current(dir_) == payload:
        return False
    now = clock()
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime(now)) + f".{int(now * 1e9) % 10**9:09d}"
    version = os.path.join(dir_, stamp)
    os.mkdir(version, 0o755)
    for path, (content, mode) in payload.items():
        full = os.path.join(version, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as fh:
            fh.write(content)
        os.chmod(full, mode)
    old = os.path.realpath(os.path.join(dir_, DATA)) if os.path.islink(os.path.join(dir_, DATA)) else None
    tmp = os.path.join(dir_, DATA_TMP)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(stamp, tmp)
    os.rename(tmp, os.path.join(dir_, DATA))  # the swap readers see at once
    top = {p.split("/", 1)[0] for p in payload}
    for name in top:
        link = os.path.join(dir_, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(DATA, name), link)
    for name in os.listdir(dir_):
        if name.startswith(".."):
            continue
        if name not in top and os.path.islink(os.path.join(dir_, name)):
            os.unlink(os.path.join(dir_, name))  # a key that went away
    if old and os.path.dirname(old) == os.path.realpath(dir_):
        shutil.rmtree(old, ignore_errors=True)
    return True
