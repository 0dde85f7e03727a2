"""A FUSE filesystem that forgets what was not synced when the power goes,
as LazyFS does: for power-loss tests of servers that must fsync.

`UnsyncedCacheFS` passes a directory (the backing directory) through, with
one difference: file data written (write, truncate) stays in this process'
memory, the "page cache", until the file is synced (fsync or fdatasync);
only then does it reach the backing file. Reads see the cached data, as a
real page cache shows it. Directory operations (create, mkdir, rename,
unlink, link) reach the backing directory at once, as LazyFS passes them
through: after a power loss a file renamed into place before its data was
synced is there, and empty or old, which is what an unsynced rename risks
on a real disk.

`drop <dir>` on the control socket is the power loss of the machine whose
files are under that directory (relative to the mount): every unsynced
write to them is forgotten. `tear <dir> <seed>` is a power loss that tears
them instead, as a disk can: each unsynced page is lost, kept, or kept in
part (its first sectors), independently of the others. The processes using them must be dead by then
(SIGKILL): a process that lives on keeps what the kernel handed it.

Run it as `python -m harness.powerloss_fs BACKING MOUNT CONTROL` (root and
/dev/fuse; libfuse2 and the `fusepy` package), or from tests through
`PowerLossMount`, which mounts it, talks to it and unmounts it.
Only regular files and directories; no symlinks, xattrs or locks beyond
what the kernel does by itself (flock works, locally).
"""

from __future__ import annotations

import errno
import os
import random
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

PAGE = 4096
# a disk writes a sector whole or not at all: the unit a torn page is kept in
SECTOR = 512


class _Unsynced:
    """One file's writes since its last sync: whole pages of its content as
    written, its size, and how much of the backing file is still its content
    (a truncation cuts the backing data off, in memory too)."""

    __slots__ = ("base_valid", "first_written", "pages", "size")

    def __init__(self, size: int) -> None:
        self.pages: dict[int, bytearray] = {}
        self.first_written: dict[int, int] = {}  # page -> where in it the first written byte is
        self.size = size
        self.base_valid = size

    def dirty_bytes(self) -> int:
        return len(self.pages) * PAGE


def _load_operations():
    """fusepy's classes (imported late: the module's docstring and
    PowerLossMount must load without fusepy, to skip with a reason)."""
    from fuse import FUSE, FuseOSError, Operations

    return FUSE, FuseOSError, Operations


def build_fs(backing: str):
    _, FuseOSError, Operations = _load_operations()

    class UnsyncedCacheFS(Operations):
        use_ns = True

        def __init__(self, root: str) -> None:
            self.root = os.path.realpath(root)
            self._mutex = threading.RLock()
            self.unsynced: dict[tuple[int, int], _Unsynced] = {}  # (dev, inode) -> writes since its sync

        # -- helpers ----------------------------------------------------------------

        def _full(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        def __call__(self, op, *args):
            try:
                return getattr(self, op)(*args)
            except OSError as err:
                raise FuseOSError(err.errno or errno.EIO) from None

        @staticmethod
        def _key(st) -> tuple[int, int]:
            return st.st_dev, st.st_ino

        def _base_page(self, fd: int, entry: _Unsynced, page: int) -> bytearray:
            data = bytearray(os.pread(fd, PAGE, page * PAGE))
            valid = entry.base_valid - page * PAGE  # backing bytes past a truncation are gone
            if valid < len(data):
                del data[max(valid, 0):]
            data.extend(b"\0" * (PAGE - len(data)))
            return data

        def _sync(self, fd: int) -> None:
            """Write the file's cached pages to the backing file, then fsync it."""
            with self._mutex:
                entry = self.unsynced.pop(self._key(os.fstat(fd)), None)
                if entry is not None:
                    if entry.base_valid < os.fstat(fd).st_size:
                        os.ftruncate(fd, entry.base_valid)
                    for page, data in sorted(entry.pages.items()):
                        start = page * PAGE
                        if start >= entry.size:
                            continue
                        os.pwrite(fd, bytes(data[: entry.size - start]), start)
                    os.ftruncate(fd, entry.size)
            os.fsync(fd)

        def drop(self, rel: str) -> tuple[int, int]:
            """Forget every unsynced write to the files under `rel`: (files, bytes)."""
            top = self._full(rel)
            keys = set()
            for dirpath, _, filenames in os.walk(top):
                for name in filenames:
                    try:
                        keys.add(self._key(os.lstat(os.path.join(dirpath, name))))
                    except FileNotFoundError:
                        pass
            files = size = 0
            with self._mutex:
                for key in keys:
                    entry = self.unsynced.pop(key, None)
                    if entry is not None:
                        files += 1
                        size += entry.dirty_bytes()
            return files, size

        def tear(self, rel: str, seed: int) -> dict:
            """A power loss that tears what was not synced under `rel`, as a
            disk may leave it: each unsynced page of a file is, on its own,
            lost, kept, or kept in part (its first sectors: a disk writes a
            sector whole or not at all), so a write may survive in part and
            writes to different pages survive independently (a header page
            kept and a record's page lost, or the reverse); the first page
            written is always torn, after its first written sector. What is kept
            reaches the backing file; the rest is forgotten. A file's size
            grows to the end of what was kept of it. Counts of pages by
            outcome, and files touched."""
            top = self._full(rel)
            paths = []
            for dirpath, _, filenames in os.walk(top):
                paths += [os.path.join(dirpath, name) for name in filenames]
            rng = random.Random(seed)
            counts = {"files": 0, "lost": 0, "kept": 0, "torn": 0}
            with self._mutex:
                for path in sorted(paths):
                    try:
                        key = self._key(os.lstat(path))
                    except FileNotFoundError:
                        continue
                    entry = self.unsynced.pop(key, None)
                    if entry is None:
                        continue
                    counts["files"] += 1
                    fd = os.open(path, os.O_RDWR)
                    try:
                        size = os.fstat(fd).st_size
                        first = True
                        for page, data in sorted(entry.pages.items()):
                            start = page * PAGE
                            if start >= entry.size:
                                continue
                            if first and page in entry.first_written:
                                # the first page written is torn where the writes begin (its
                                # first written sector kept, the rest not), so that every
                                # tear tears something
                                outcome = "torn"
                                keep = (entry.first_written[page] // SECTOR + 1) * SECTOR
                            else:
                                outcome = rng.choice(("lost", "kept", "torn"))
                                keep = PAGE if outcome == "kept" else SECTOR * rng.randint(1, PAGE // SECTOR - 1)
                            first = False
                            counts[outcome] += 1
                            if outcome == "lost":
                                continue
                            keep = min(keep, entry.size - start)
                            os.pwrite(fd, bytes(data[:keep]), start)
                            size = max(size, start + keep)
                        if os.fstat(fd).st_size < size:
                            os.ftruncate(fd, size)
                    finally:
                        os.close(fd)
            return counts

        def unsynced_bytes(self, rel: str = "") -> int:
            """Bytes of unsynced pages, of every file or of those under `rel`."""
            if not rel:
                with self._mutex:
                    return sum(e.dirty_bytes() for e in self.unsynced.values())
            top = self._full(rel)
            paths = [top] if os.path.isfile(top) else [
                os.path.join(d, name) for d, _, names in os.walk(top) for name in names]
            keys = set()
            for path in paths:
                try:
                    keys.add(self._key(os.lstat(path)))
                except FileNotFoundError:
                    pass
            with self._mutex:
                return sum(self.unsynced[k].dirty_bytes() for k in keys if k in self.unsynced)

        # -- metadata ---------------------------------------------------------------

        def getattr(self, path, fh=None):
            st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
            attrs = {key: getattr(st, key) for key in (
                "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_blocks")}
            attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            if stat.S_ISREG(st.st_mode):
                with self._mutex:
                    entry = self.unsynced.get(self._key(st))
                    if entry is not None:
                        attrs["st_size"] = entry.size
            return attrs

        def access(self, path, amode):
            if not os.access(self._full(path), amode):
                raise FuseOSError(errno.EACCES)
            return 0

        def readdir(self, path, fh):
            return [".", ".."] + os.listdir(self._full(path))

        def mkdir(self, path, mode):
            return os.mkdir(self._full(path), mode)

        def rmdir(self, path):
            return os.rmdir(self._full(path))

        def chmod(self, path, mode):
            return os.chmod(self._full(path), mode)

        def chown(self, path, uid, gid):
            return os.chown(self._full(path), uid, gid)

        def utimens(self, path, times=None):
            return os.utime(self._full(path), ns=times) if times else os.utime(self._full(path))

        def statfs(self, path):
            sv = os.statvfs(self._full(path))
            return {key: getattr(sv, key) for key in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                "f_files", "f_flag", "f_frsize", "f_namemax")}

        def rename(self, old, new):
            with self._mutex:
                try:
                    replaced = os.lstat(self._full(new))
                except FileNotFoundError:
                    replaced = None
                os.rename(self._full(old), self._full(new))
                if replaced is not None and replaced.st_nlink <= 1:
                    self.unsynced.pop(self._key(replaced), None)

        def link(self, target, source):
            return os.link(self._full(source), self._full(target))

        def unlink(self, path):
            with self._mutex:
                st = os.lstat(self._full(path))
                os.unlink(self._full(path))
                if st.st_nlink <= 1:
                    self.unsynced.pop(self._key(st), None)

        # -- files -----------------------------------------------------------------

        def open(self, path, flags):
            # read-write whatever was asked: a write may need to read the rest of its page
            return os.open(self._full(path), os.O_RDWR)

        def create(self, path, mode, fi=None):
            fd = os.open(self._full(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)
            with self._mutex:
                self.unsynced.pop(self._key(os.fstat(fd)), None)  # a reused inode number
            return fd

        def read(self, path, size, offset, fh):
            with self._mutex:
                entry = self.unsynced.get(self._key(os.fstat(fh)))
                if entry is None:
                    return os.pread(fh, size, offset)
                end = min(offset + size, entry.size)
                out = bytearray()
                pos = offset
                while pos < end:
                    page, at = divmod(pos, PAGE)
                    data = entry.pages.get(page)
                    if data is None:
                        data = self._base_page(fh, entry, page)
                    take = min(PAGE - at, end - pos)
                    out += data[at:at + take]
                    pos += take
                return bytes(out)

        def write(self, path, data, offset, fh):
            with self._mutex:
                st = os.fstat(fh)
                key = self._key(st)
                entry = self.unsynced.get(key)
                if entry is None:
                    entry = self.unsynced[key] = _Unsynced(st.st_size)
                pos, view = offset, memoryview(data)
                while view:
                    page, at = divmod(pos, PAGE)
                    buf = entry.pages.get(page)
                    if buf is None:
                        buf = entry.pages[page] = self._base_page(fh, entry, page)
                    take = min(PAGE - at, len(view))
                    buf[at:at + take] = view[:take]
                    entry.first_written[page] = min(at, entry.first_written.get(page, PAGE))
                    view = view[take:]
                    pos += take
                entry.size = max(entry.size, offset + len(data))
            return len(data)

        def truncate(self, path, length, fh=None):
            fd = fh if fh is not None else os.open(self._full(path), os.O_RDONLY)
            try:
                with self._mutex:
                    st = os.fstat(fd)
                    key = self._key(st)
                    entry = self.unsynced.get(key)
                    if entry is None:
                        entry = self.unsynced[key] = _Unsynced(st.st_size)
                    if length < entry.size:
                        last = length // PAGE
                        for page in [p for p in entry.pages if p > last or (p == last and length % PAGE == 0)]:
                            del entry.pages[page]
                        if length % PAGE and last in entry.pages:
                            entry.pages[last][length % PAGE:] = b"\0" * (PAGE - length % PAGE)
                        entry.base_valid = min(entry.base_valid, length)
                    entry.size = length
            finally:
                if fh is None:
                    os.close(fd)

        def flush(self, path, fh):
            return 0  # close(2) is not a sync

        def release(self, path, fh):
            with self._mutex:
                st = os.fstat(fh)
                if st.st_nlink == 0:
                    self.unsynced.pop(self._key(st), None)
            os.close(fh)

        def fsync(self, path, datasync, fh):
            self._sync(fh)

        def fsyncdir(self, path, datasync, fh):
            fd = os.open(self._full(path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    return UnsyncedCacheFS(backing)


def _serve_control(fs, control: str) -> None:
    """One command a line: `drop DIR` -> `dropped FILES BYTES`; `tear DIR SEED` ->
    `torn files=N lost=N kept=N torn=N` (pages); `unsynced [PATH]` -> `BYTES`."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(control)
    server.listen(4)

    def serve(conn: socket.socket) -> None:
        with conn, conn.makefile("rw") as f:
            for line in f:
                cmd, _, arg = line.strip().partition(" ")
                if cmd == "drop":
                    files, size = fs.drop(arg)
                    f.write(f"dropped {files} {size}\n")
                elif cmd == "tear":
                    where, _, seed = arg.rpartition(" ")
                    counts = fs.tear(where, int(seed))
                    f.write("torn " + " ".join(f"{k}={v}" for k, v in counts.items()) + "\n")
                elif cmd == "unsynced":
                    f.write(f"{fs.unsynced_bytes(arg)}\n")
                else:
                    f.write(f"error unknown command {cmd!r}\n")
                f.flush()

    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m harness.powerloss_fs BACKING MOUNT CONTROL_SOCKET", file=sys.stderr)
        return 2
    backing, mount, control = argv
    FUSE, _, _ = _load_operations()
    fs = build_fs(backing)
    threading.Thread(target=_serve_control, args=(fs, control), daemon=True).start()
    # no attribute or entry caching in the kernel: sizes change when the power goes
    FUSE(fs, mount, foreground=True, nothreads=False, fsname="powerloss",
         attr_timeout=0, entry_timeout=0, negative_timeout=0, big_writes=True)
    return 0


# --- the test side ----------------------------------------------------------------------


def unavailable_reason() -> str | None:
    """Why a PowerLossMount cannot run here, or None."""
    if os.geteuid() != 0:
        return "mounting a FUSE filesystem needs root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import fuse  # noqa: F401
    except ImportError:
        return "the fusepy package is missing: pip install -e '.[test]'"
    except OSError:
        return "libfuse2 is missing: apt-get install libfuse2"
    return None


class PowerLossMount:
    """The filesystem above, mounted at `<tmp>/mnt` over `<tmp>/backing` by a
    child process; `drop(rel)` is a power loss for the files under `rel`.
    `close()` unmounts it and ends the child (also when the test fails)."""

    def __init__(self, tmp_path, ready_timeout: float = 20.0) -> None:
        tmp = Path(tmp_path)
        self.backing = tmp / "backing"
        self.path = tmp / "mnt"
        self.control = str(tmp / "powerloss.sock")
        self.backing.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self._log = open(tmp / "powerloss.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.powerloss_fs", str(self.backing), str(self.path), self.control],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while not (os.path.ismount(self.path) and os.path.exists(self.control)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the power-loss filesystem did not mount at {self.path}: "
                                   f"{(tmp / 'powerloss.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def _ask(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect(self.control)
            s.sendall(line.encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return answer.decode().strip()

    def drop(self, rel: str) -> tuple[int, int]:
        """The power goes for the files under `rel` (relative to the mount):
        (files that lost writes, bytes of whole pages lost)."""
        answer = self._ask(f"drop {rel}").split()
        if answer[:1] != ["dropped"]:
            raise RuntimeError(f"power-loss filesystem: {answer}")
        return int(answer[1]), int(answer[2])

    def tear(self, rel: str, seed: int) -> dict:
        """The power goes for the files under `rel`, tearing what was not
        synced (see UnsyncedCacheFS.tear): {"files", "lost", "kept", "torn"}
        (the last three count pages)."""
        answer = self._ask(f"tear {rel} {seed}").split()
        if answer[:1] != ["torn"]:
            raise RuntimeError(f"power-loss filesystem: {answer}")
        return {k: int(v) for k, v in (item.split("=") for item in answer[1:])}

    def unsynced_bytes(self, rel: str = "") -> int:
        """Bytes of unsynced pages: of every file, or of the file or files under `rel`."""
        return int(self._ask(f"unsynced {rel}".strip()))

    def close(self) -> None:
        if os.path.ismount(self.path):
            subprocess.run(["umount", str(self.path)], capture_output=True)
            if os.path.ismount(self.path):
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        if self.proc.poll() is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
