"""Projects a set of files into a directory so that readers never see a half-done update.

The layout is Kubernetes' (pkg/volume/util/atomic_writer.go), which programs
watching ConfigMap volumes rely on::

    <dir>/..2026_12_06_23_10_00.123456789/   the real files (a timestamped dir, 0755)
    <dir>/..data -> ..2026_12_06_23_10_00.123456789
    <dir>/<first path element> -> ..data/<first path element>   (user-visible)

An update writes a complete new timestamped directory, points a new symlink
``..data_tmp`` at it and renames that over ``..data`` (rename is atomic), then
removes user-visible links that are gone. Nothing is rewritten when the content
and modes are unchanged.

One departure from upstream: the previous timestamped directory is not removed
at once but ``retired_grace`` seconds later (by a later ``write``, which the
kubelet calls on every sync). A reader's open() resolves ``..data`` to the old
directory's name and then looks its file up in it; removing the directory
between the two steps made such a reader see ENOENT (measured: ~0.5% of
back-to-back updates with a reader looping). Upstream's behaviour is
``retired_grace=0``.
Names starting with ``..`` are the writer's; payload paths may not use them.
The writer is not thread-safe: callers serialise writes to one directory.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass

DATA_DIR = "..data"
NEW_DATA_DIR = "..data_tmp"
MAX_FILE_NAME = 255
MAX_PATH = 4096
RETIRED_GRACE = 2.0   # seconds a replaced version stays for readers already on their way into it


@dataclass(frozen=True)
class FileProjection:
    data: bytes
    mode: int = 0o644


class PayloadError(ValueError):
    """A payload path the writer refuses (absolute, with '..', too long)."""


def validate_path(path: str) -> None:
    """Upstream's validatePath, with its messages."""
    if path == "":
        raise PayloadError(f'invalid path: must not be empty: "{path}"')
    if os.path.isabs(path):
        raise PayloadError(f"invalid path: must be relative path: {path}")
    if len(path) > MAX_PATH:
        raise PayloadError(f"invalid path: must be less than or equal to {MAX_PATH} characters")
    items = path.split("/")
    for item in items:
        if item == "..":
            raise PayloadError(f"invalid path: must not contain '..': {path}")
        if len(item) > MAX_FILE_NAME:
            raise PayloadError(f"invalid path: filenames must be less than or equal to {MAX_FILE_NAME} characters")
    if items[0].startswith("..") and len(items[0]) > 2:
        raise PayloadError(f"invalid path: must not start with '..': {path}")


def clean_payload(payload: dict[str, FileProjection]) -> dict[str, FileProjection]:
    out = {}
    for path, projection in payload.items():
        validate_path(path)
        out[os.path.normpath(path)] = projection
    return out


class AtomicWriter:
    def __init__(self, target_dir: str, *, retired_grace: float = RETIRED_GRACE):
        if not os.path.isdir(target_dir):
            raise FileNotFoundError(f"atomic writer target {target_dir} does not exist")
        self.target_dir = target_dir
        self.retired_grace = retired_grace

    def current_dir(self) -> str | None:
        """The timestamped directory ``..data`` points at, None before the first write."""
        try:
            return os.readlink(os.path.join(self.target_dir, DATA_DIR))
        except FileNotFoundError:
            return None

    def write(self, payload: dict[str, FileProjection]) -> bool:
        """Project ``payload`` (relative path -> content and mode); True when the
        directory changed, False when it already held exactly this payload."""
        payload = clean_payload(payload)
        old_ts = self.current_dir()
        old_ts_path = os.path.join(self.target_dir, old_ts) if old_ts else None
        stale: set[str] = set()
        if old_ts_path is not None:
            stale = self._paths_to_remove(payload, old_ts_path)
            if not stale and not self._differs(payload, old_ts_path):
                self._prune_retired(old_ts)
                return False
        ts_path = tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime()),
                                   dir=self.target_dir)
        try:
            os.chmod(ts_path, 0o755)
            self._write_payload(payload, ts_path)
            self._create_user_visible(payload)
            new_link = os.path.join(self.target_dir, NEW_DATA_DIR)
            if os.path.lexists(new_link):
                os.unlink(new_link)   # left by a write that died half-way
            os.symlink(os.path.basename(ts_path), new_link)
            os.rename(new_link, os.path.join(self.target_dir, DATA_DIR))
        except BaseException:
            shutil.rmtree(ts_path, ignore_errors=True)
            raise
        for path in stale:
            if "/" not in path:   # only the top-level links live outside the data dir
                try:
                    os.unlink(os.path.join(self.target_dir, path))
                except FileNotFoundError:
                    pass
        if old_ts_path is not None:
            os.utime(old_ts_path)   # its mtime now says when it was retired
        self._prune_retired(os.path.basename(ts_path))
        return True

    def _prune_retired(self, current: str | None) -> None:
        """Remove the replaced versions retired more than ``retired_grace`` seconds ago."""
        now = time.time()
        for entry in os.scandir(self.target_dir):
            if (entry.name.startswith("..") and entry.name not in (DATA_DIR, NEW_DATA_DIR, current)
                    and entry.is_dir(follow_symlinks=False)
                    and now - entry.stat(follow_symlinks=False).st_mtime >= self.retired_grace):
                shutil.rmtree(entry.path, ignore_errors=True)

    @staticmethod
    def _differs(payload: dict[str, FileProjection], old_ts_path: str) -> bool:
        for path, projection in payload.items():
            full = os.path.join(old_ts_path, path)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                return True
            if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != projection.mode:
                return True
            if st.st_size != len(projection.data):
                return True
            with open(full, "rb") as f:
                if f.read() != projection.data:
                    return True
        return False

    @staticmethod
    def _paths_to_remove(payload: dict[str, FileProjection], old_ts_path: str) -> set[str]:
        """Paths of the current version that the new payload no longer has
        (directories that still hold a payload file are kept)."""
        current = set()
        for dirpath, dirnames, filenames in os.walk(old_ts_path):
            rel = os.path.relpath(dirpath, old_ts_path)
            for name in dirnames + filenames:
                current.add(name if rel == "." else os.path.join(rel, name))
        wanted = set()
        for path in payload:
            while path:
                wanted.add(path)
                path = os.path.dirname(path)
        return current - wanted

    @staticmethod
    def _write_payload(payload: dict[str, FileProjection], ts_path: str) -> None:
        for path, projection in payload.items():
            full = os.path.join(ts_path, path)
            os.makedirs(os.path.dirname(full), mode=0o755, exist_ok=True)
            fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         projection.mode)
            try:
                view = memoryview(projection.data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, projection.mode)   # the mode as asked, whatever the umask
            finally:
                os.close(fd)

    def _create_user_visible(self, payload: dict[str, FileProjection]) -> None:
        for path in payload:
            first = path.split("/", 1)[0]
            link = os.path.join(self.target_dir, first)
            if not os.path.lexists(link):
                os.symlink(os.path.join(DATA_DIR, first), link)
