"""Driving runc and conmon: the OCI runtime does the namespaces and cgroups, conmon watches one
container for its whole life.

Why conmon: runc create returns at once and leaves the container's stdio and its exit status to
its parent. Conmon is that parent: it runs `runc create`, copies the container's stdout/stderr
into a CRI-format log file (``<RFC3339Nano> stdout|stderr F|P <line>``), waits for the process,
and writes the exit status to files (``<exit dir>/<id>`` and ``<persist dir>/exit``, 128+signal
for a killed process) and an ``oom`` file when the memory cgroup reported an OOM kill. It runs in
its own session, so the CRI runtime can die and restart while containers keep running: the next
runtime finds the state in runc's root and in those files (see ContainerExit).

Everything here blocks (subprocesses); the servicer calls it from worker threads.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal as _signal
import subprocess
import time
from dataclasses import dataclass

RUNC = shutil.which("runc") or "/usr/sbin/runc"
CONMON = shutil.which("conmon") or "/usr/bin/conmon"
CGROUP_ROOT = "/sys/fs/cgroup"

# conmon's control fifo message asking it to reopen the log file (after the kubelet rotated it)
_REOPEN_LOGS = b"2 0 0\n"


class RuncError(RuntimeError):
    """runc or conmon failed; the message carries runc's own error text."""


def binaries_missing() -> list[str]:
    """The programs this runtime needs that are not installed (``make node-deps`` installs them)."""
    return [b for b in (RUNC, CONMON) if not os.access(b, os.X_OK)]


@dataclass
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    timed_out: bool = False


@dataclass
class ContainerExit:
    """How a container ended, from conmon's files: exit code (128+signal when killed), whether
    the memory cgroup OOM-killed a process of it, and when (the exit file's mtime, ns)."""
    exit_code: int
    oom_killed: bool
    finished_at: int


def _logfmt_msg(line: str) -> str:
    """The msg="..." of runc's text log line (its stderr), unquoted; the line when it has none."""
    start = line.find('msg="')
    if start < 0:
        return line.strip()
    out, i = [], start + 5
    while i < len(line) and line[i] != '"':
        if line[i] == "\\" and i + 1 < len(line):
            i += 1
        out.append(line[i])
        i += 1
    return "".join(out)


def _runc_error(stderr: bytes | str, log_path: str | None = None) -> str:
    """runc's last error message: from its json log when there is one, else its stderr."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    msgs = []
    if log_path:
        try:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if rec.get("level") in ("error", "fatal"):
                        msgs.append(rec.get("msg", ""))
        except OSError:
            pass
    if msgs:
        return msgs[-1]
    lines = [_logfmt_msg(line) for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Runc:
    """runc with its state under `root` (``/run/<node prefix>``, runc's --root), so that one
    node's containers are apart from every other runc user on the machine."""

    def __init__(self, root: str, binary: str = RUNC):
        self.root = root
        self.binary = binary
        os.makedirs(root, mode=0o700, exist_ok=True)

    def argv(self, *args: str) -> list[str]:
        return [self.binary, f"--root={self.root}", *args]

    def run(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(self.argv(*args), stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuncError(f"runc {args[0]} took longer than {timeout}s") from None
        if check and proc.returncode != 0:
            raise RuncError(f"runc {args[0]} failed: {_runc_error(proc.stderr)}")
        return proc

    def state(self, cid: str) -> dict | None:
        """runc's view (status "created", "running", "paused", "stopped", pid), or None when
        runc does not know the container."""
        proc = self.run("state", cid, check=False)
        if proc.returncode != 0:
            return None
        try:
            return json.loads(proc.stdout)
        except ValueError:
            return None

    def list(self) -> list[dict]:
        proc = self.run("list", "--format=json", check=False)
        if proc.returncode != 0:
            return []
        try:
            return json.loads(proc.stdout) or []
        except ValueError:
            return []

    def start(self, cid: str, pid: int = 0, timeout: float = 30) -> None:
        """``runc start``, done in-process where runc left its exec fifo (runc 1.x): a created
        container's init (runc init, `pid`) waits to open ``<root>/<id>/exec.fifo`` for writing;
        opening it for reading lets the init write one byte and exec the container's process;
        removing the fifo is what makes runc call the container running. That is all ``runc
        start`` does, and a runc process per pod start is ~6 ms of CPU. Without the fifo (not
        created, already started, or a runc that works otherwise) ``runc start`` itself runs and
        says why."""
        fifo = os.path.join(self.root, cid, "exec.fifo")
        try:
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            self.run("start", cid)
            return
        try:
            data = _read_exec_fifo(fd, pid, timeout)
        finally:
            os.close(fd)
        if not data:
            raise RuncError(f"runc start {cid} failed: container process is already dead")
        try:
            os.unlink(fifo)
        except FileNotFoundError:
            pass

    def kill(self, cid: str, sig: str = "SIGTERM", all_processes: bool = False) -> bool:
        """Send `sig` to the container's init (all its processes with all_processes); False when
        it was not running any more."""
        args = ["kill"] + (["--all"] if all_processes else []) + [cid, sig]
        proc = self.run(*args, check=False)
        if proc.returncode == 0:
            return True
        err = _runc_error(proc.stderr)
        if "not running" in err or "does not exist" in err or "stopped" in err:
            return False
        raise RuncError(f"runc kill {cid} {sig} failed: {err}")

    def delete(self, cid: str, force: bool = True) -> None:
        """Remove runc's state and the container's cgroup; a container runc does not know is
        already deleted."""
        proc = self.run("delete", *(["--force"] if force else []), cid, check=False)
        if proc.returncode != 0:
            err = _runc_error(proc.stderr)
            if "does not exist" not in err and "not exist" not in err:
                raise RuncError(f"runc delete {cid} failed: {err}")

    def update(self, cid: str, resources: dict) -> None:
        proc = subprocess.run(self.argv("update", "--resources=-", cid), input=json.dumps(resources).encode(),
                              capture_output=True, timeout=30)
        if proc.returncode != 0:
            raise RuncError(f"runc update {cid} failed: {_runc_error(proc.stderr)}")

    def exec(self, cid: str, argv: list[str], timeout: float | None, pid_file: str) -> ExecResult:
        """Run `argv` in the container (its process settings: env, cwd, user, capabilities) and
        collect its output. On timeout the process is killed (by the pid runc wrote) and the
        result says timed_out. A command runc cannot start gives exit code 126/127 and runc's
        message on stderr, as a shell would."""
        try:
            os.unlink(pid_file)
        except FileNotFoundError:
            pass
        proc = subprocess.Popen(self.argv("exec", f"--pid-file={pid_file}", cid, *argv),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout if timeout and timeout > 0 else None)
            code = proc.returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            # kill the command, not runc: runc exec reaps it and exits (a killed runc would leave
            # the command's zombie to the machine's init, holding the container's pid namespace)
            if not _kill_pid_file(pid_file):
                proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            # what a timed-out command wrote is dropped (a background child may hold the pipes)
            proc.stdout.close()
            proc.stderr.close()
            out, err, code, timed_out = b"", b"", -1, True
        finally:
            try:
                os.unlink(pid_file)
            except FileNotFoundError:
                pass
        if not timed_out and code != 0 and not out and err.startswith(b"time=") and b"exec failed" in err:
            # runc itself failed to start the process (not found, not executable): its log line
            msg = _logfmt_msg(err.decode(errors="replace"))
            code = 127 if "not found" in msg or "no such file" in msg else 126
            err = msg.encode() + b"\n"
        return ExecResult(out, err, code, timed_out)


def _read_exec_fifo(fd: int, pid: int, timeout: float) -> bytes:
    """What the init writes to the exec fifo, up to its end (the init's exec closes it). While
    nothing comes, the init is looked at every 100 ms (as runc does): a dead one never writes."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    data = b""
    while True:
        # A reader opened before any writer gets no POLLHUP until a writer came and went.
        if poller.poll(100):
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                return data
            data += chunk
            continue
        if pid > 0 and not pid_alive(pid):
            try:
                return data + os.read(fd, 4096)
            except BlockingIOError:
                return data
        if time.monotonic() > deadline:
            raise RuncError(f"runc start: the container's init (pid {pid}) did not take the "
                            f"start signal in {timeout}s")


def _kill_pid_file(pid_file: str) -> bool:
    """SIGKILL the process whose pid runc wrote; False when there is none (yet)."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    for p in [pid] + descendants(pid):
        try:
            os.kill(p, _signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc's children lists), parents before children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


@dataclass
class Conmon:
    """A running conmon (our child while this runtime lives; init's after a restart)."""
    pid: int
    proc: subprocess.Popen | None = None

    def reap(self) -> bool:
        """Collect the exited conmon so it leaves no zombie; True once it has exited."""
        if self.proc is not None:
            return self.proc.poll() is not None
        return not pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def create(runc: Runc, cid: str, bundle: str, log_path: str, exit_dir: str, persist_dir: str,
           name: str = "", timeout: float = 30, terminal: bool = False, stdin: bool = False,
           stdin_once: bool = False) -> tuple[int, Conmon]:
    """`runc create` the bundle's container under a new conmon; returns (the container's init
    pid, conmon). The container is created, not started (runc start runs its process). conmon
    reports the pid, or runc's failure, on the sync pipe it is given (_OCI_SYNCPIPE)."""
    for d in (exit_dir, persist_dir, os.path.dirname(log_path) or "."):
        os.makedirs(d, exist_ok=True)
    runc_log = os.path.join(bundle, "runc.log")
    args = [
        CONMON, "--sync", "--syslog",
        "-c", cid, "-u", cid, "-n", name or cid,
        "-r", runc.binary, "--runtime-arg", f"--root={runc.root}",
        "--runtime-arg", f"--log={runc_log}", "--runtime-arg", "--log-format=json",
        "-b", bundle, "-p", os.path.join(bundle, "pidfile"),
        "-l", f"k8s-file:{log_path}",
        "--exit-dir", exit_dir, "--persist-dir", persist_dir,
        "--full-attach", "--log-level", "info",
    ] + (["-t"] if terminal else [])  # a tty: conmon holds the pty (the spec must say terminal)
    if stdin:  # conmon holds the container's stdin, written through its attach socket
        args += ["-i"] + ([] if stdin_once else ["--leave-stdin-open"])
    r, w = os.pipe()
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "_OCI_SYNCPIPE": str(w)}
        proc = subprocess.Popen(args, pass_fds=(w,), env=env, cwd=bundle, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(w)
        w = -1
        data = _read_sync(r, timeout)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    conmon = Conmon(proc.pid, proc)
    try:
        msg = json.loads(data) if data else {}
    except ValueError:
        msg = {}
    pid = msg.get("pid", -1)
    if not isinstance(pid, int) or pid <= 0:
        if proc.poll() is None and not data:
            proc.kill()
        proc.wait(5)
        detail = _runc_error(msg.get("message", ""), runc_log) or "conmon exited without reporting a pid"
        raise RuncError(f"failed to create container {cid}: {detail}")
    return pid, conmon


def _read_sync(fd: int, timeout: float) -> bytes:
    """conmon's first JSON line on the sync pipe ({"pid": N} or {"pid": -1, "message": ...});
    b"" when conmon closed it or the timeout passed."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            return b""
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def memory_cgroup(cgroups_path: str) -> str:
    return os.path.join(CGROUP_ROOT, "memory", cgroups_path.lstrip("/"))


def oom_kills(cgroups_path: str) -> int:
    """The memory cgroup's OOM kill count (v1 memory.oom_control "oom_kill"); 0 when gone."""
    try:
        with open(os.path.join(memory_cgroup(cgroups_path), "memory.oom_control")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def read_exit(persist_dir: str, cgroups_path: str | None = None) -> ContainerExit | None:
    """The container's end as conmon recorded it, or None while it runs. OOM: conmon's oom file,
    or the cgroup's own count (conmon may miss the event when the process dies at once)."""
    path = os.path.join(persist_dir, "exit")
    try:
        with open(path) as f:
            text = f.read().strip()
        mtime = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None
    try:
        code = int(text)
    except ValueError:
        code = -1
    oom = os.path.exists(os.path.join(persist_dir, "oom")) or \
        (cgroups_path is not None and oom_kills(cgroups_path) > 0)
    return ContainerExit(code, oom, mtime)


def reopen_log(bundle: str) -> bool:
    """Ask the container's conmon to reopen its log file (after rotation); False when no conmon
    listens any more."""
    try:
        fd = os.open(os.path.join(bundle, "ctl"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        os.write(fd, _REOPEN_LOGS)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
