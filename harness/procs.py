"""Process helpers for tests and benchmarks: start etcdlite / real etcd members, run etcdctl.

Everything started here is registered twice: in the registry the caller passes
(the ``procs`` fixture's), and in a module-wide list that the autouse fixture in
tests/conftest.py (and, as a last resort, ``atexit``) sweeps, so no member outlives its
test even when the test fails half-way.

Usage::

    m = Member.start_real_etcd(tmp_path, name="ref")      # or procs.start_real_etcd(...)
    m = Member.start_etcdlite(tmp_path, name="lite", log_level="info")
    rc, out, err = run_etcdctl(m, "put", "k", "v")
    m.kill(); m.restart(); m.terminate()
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]  # harness/procs.py -> the repository
_venv_python = REPO / ".venv" / "bin" / "python"
PYTHON = str(_venv_python) if _venv_python.exists() else sys.executable

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = shutil.which("etcdctl") or "/usr/bin/etcdctl"

MISSING_HINT = (
    "run `make test`, which installs Debian's etcd-server and etcd-client "
    "(the reference binaries the differential tests compare against)"
)

DEFAULT_READY_TIMEOUT = 30.0


# ---------------------------------------------------------------------------
# ports

_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def _worker_share() -> tuple[int, int]:
    """(i, n) for pytest-xdist's worker ``gw<i>`` of n; (0, 1) outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        return int(worker[2:]) % count, count
    return 0, 1


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1, never the same twice per process.

    (The OS could still give the port to someone else before the server binds it;
    remembering what we handed out at least avoids collisions between our own
    members.) Under pytest-xdist, worker i of n takes only ports p with (p // 2) % n == i,
    so two workers never hand out the same port either (p // 2: Linux hands even ports to
    bind(0) and keeps odd ones for connect()).
    """
    share, shares = _worker_share()
    for _ in range(200 * shares):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if (port // 2) % shares != share:
            continue
        with _ports_lock:
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port
    raise RuntimeError("could not find a free port")


# ---------------------------------------------------------------------------
# binaries


def have_binary(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def require_binary(path: str, what: str) -> None:
    """pytest.skip (with a hint to run `make test`) if a reference binary is missing."""
    if not have_binary(path):
        import pytest

        pytest.skip(f"{what} not found at {path}: {MISSING_HINT}")


# ---------------------------------------------------------------------------
# registry

_ALL: list["Member"] = []
_ALL_LOCK = threading.Lock()


class Registry:
    """Members started through it; ``cleanup()`` kills every one still running."""

    def __init__(self) -> None:
        self.members: list[Member] = []

    def add(self, member: "Member") -> "Member":
        if member not in self.members:
            self.members.append(member)
            member.registries.append(self)
        return member

    def start_etcdlite(self, tmp_path, name: str = "etcdlite0", **kw) -> "Member":
        return Member.start_etcdlite(tmp_path, name=name, registry=self, **kw)

    def start_real_etcd(self, tmp_path, name: str = "etcd0", **kw) -> "Member":
        return Member.start_real_etcd(tmp_path, name=name, registry=self, **kw)

    def cleanup(self) -> None:
        errors = []
        for m in reversed(self.members):
            try:
                m.kill()
            except Exception as e:  # keep going: everything must die
                errors.append(f"{m!r}: {e}")
        if errors:
            raise RuntimeError("cleanup problems: " + "; ".join(errors))

    def __iter__(self):
        return iter(list(self.members))

    def __len__(self) -> int:
        return len(self.members)


def all_members() -> list["Member"]:
    with _ALL_LOCK:
        return list(_ALL)


def kill_all(members: Iterable["Member"] | None = None) -> None:
    """Kill the given members (default: every member this process ever started)."""
    for m in list(members if members is not None else all_members()):
        try:
            m.kill()
        except Exception:
            pass


atexit.register(kill_all)


# ---------------------------------------------------------------------------
# readiness


class MemberNotReady(RuntimeError):
    pass


def _grpc_ready_check(endpoint: str, rpc_timeout: float) -> str | None:
    """Return None when the member serves Status (with a leader) and a
    linearizable Range; otherwise a short reason string."""
    import grpc

    from etcdlite.pb.etcdserverpb import rpc_pb2, rpc_pb2_grpc

    with grpc.insecure_channel(endpoint) as ch:
        try:
            st = rpc_pb2_grpc.MaintenanceStub(ch).Status(
                rpc_pb2.StatusRequest(), timeout=rpc_timeout
            )
        except grpc.RpcError as e:
            return f"Status: {e.code().name} {e.details()}"
        if not st.leader:
            return "Status: no leader yet"
        try:
            rpc_pb2_grpc.KVStub(ch).Range(
                rpc_pb2.RangeRequest(key=b"\x00tests-readiness-probe"), timeout=rpc_timeout
            )
        except grpc.RpcError as e:
            # with auth enabled an anonymous Range is refused, after its read
            # barrier (etcd and etcdlite alike): the member serves
            if e.details() not in _AUTH_REFUSALS:
                return f"Range: {e.code().name} {e.details()}"
    return None


_AUTH_REFUSALS = ("etcdserver: user name is empty", "etcdserver: permission denied")


# ---------------------------------------------------------------------------
# members


def _flag_args(flags: dict) -> list[str]:
    """{'log_level': 'info', 'debug': True, 'x': None} -> ['--log-level', 'info', '--debug']."""
    out: list[str] = []
    for key, value in flags.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value)]
    return out


class ServerProcess:
    """A server process of ours or the reference's: launched with its log in
    tmp_path, in its own process group, registered for cleanup. Subclasses give
    ``argv()`` and ``ready_probe()``."""

    kind = "server"

    def __init__(self, name: str, tmp_path, registry: Registry | None = None,
                 ready_timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        self.name = name
        self.tmp_path = Path(tmp_path)
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        self.log_path = self.tmp_path / f"{name}.log"
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.registries: list[Registry] = []
        if registry is not None:
            registry.add(self)
        with _ALL_LOCK:
            _ALL.append(self)

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready_probe(self, rpc_timeout: float) -> str | None:
        """None when the server serves; otherwise why not (a short text)."""
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # -- lifecycle ----------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "ServerProcess":
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def launch(self) -> "ServerProcess":
        """Start the process without waiting for it to serve."""
        if self.alive:
            raise RuntimeError(f"{self!r} is already running")
        self.starts += 1
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for k in list(env):
            if k.startswith("ETCD_") or k.startswith("ETCDCTL_"):
                del env[k]  # real etcd reads ETCD_* as flags
        env.update(getattr(self, "extra_env", None) or {})  # a component's KUBECONFIG, ...
        with open(self.log_path, "ab") as log:
            log.write(
                f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')}: "
                f"{' '.join(self.argv())}\n".encode()
            )
            log.flush()
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
                env=env,
                start_new_session=True,  # own process group: we can kill its children too
            )
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        delay = 0.05
        reason = "not polled yet"
        while True:
            if self.proc is None or self.proc.poll() is not None:
                rc = None if self.proc is None else self.proc.returncode
                raise MemberNotReady(
                    f"{self.kind} {self.name!r} exited with rc={rc} before becoming "
                    f"ready.\n--- last lines of {self.log_path}:\n{self.log_tail()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise MemberNotReady(
                    f"{self.kind} {self.name!r} ({self.endpoint}) not ready after "
                    f"{timeout:.0f}s (last probe: {reason}).\n--- last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            try:
                reason = self.ready_probe(rpc_timeout=max(0.2, min(2.0, left)))
            except ImportError:
                raise
            except Exception as e:  # e.g. channel errors while the port is not bound yet
                reason = f"{type(e).__name__}: {e}"
            if reason is None:
                return
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.3)

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # the group we created with start_new_session
        except (ProcessLookupError, PermissionError):
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL and reap (idempotent)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{self!r} did not die after SIGKILL")

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def restart(self, kill: bool = False, ready_timeout: float | None = None) -> "ServerProcess":
        """Stop (SIGTERM, or SIGKILL if ``kill``) if running, then start again with the
        same flags, data dir and ports."""
        if self.alive:
            self.kill() if kill else self.terminate()
        if ready_timeout is not None:
            self.ready_timeout = ready_timeout
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError as e:
            return f"<no log: {e}>"
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class Member(ServerProcess):
    """One server process (etcdlite or the real etcd) on free 127.0.0.1 ports."""

    def __init__(
        self,
        kind: str,
        name: str,
        tmp_path,
        extra_flags: dict | None = None,
        registry: Registry | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> None:
        assert kind in ("etcdlite", "etcd"), kind
        self.kind = kind
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = Path(tmp_path) / f"{name}.data"
        self.extra_flags = dict(extra_flags or {})
        # NAME=PEER_URL,... of the whole cluster; None: this member alone
        self.initial_cluster: str | None = None
        super().__init__(name, tmp_path, registry, ready_timeout)

    def ready_probe(self, rpc_timeout: float) -> str | None:
        return _grpc_ready_check(self.endpoint, rpc_timeout)

    # -- constructors -------------------------------------------------------

    @classmethod
    def start_etcdlite(
        cls,
        tmp_path,
        name: str = "etcdlite0",
        *,
        registry: Registry | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        **extra_flags,
    ) -> "Member":
        m = cls("etcdlite", name, tmp_path, extra_flags, registry, ready_timeout)
        m.start()
        return m

    @classmethod
    def start_real_etcd(
        cls,
        tmp_path,
        name: str = "etcd0",
        *,
        registry: Registry | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        **extra_flags,
    ) -> "Member":
        require_binary(ETCD_BIN, "etcd (the real etcd 3.4 server)")
        m = cls("etcd", name, tmp_path, extra_flags, registry, ready_timeout)
        m.start()
        return m

    # -- addresses ----------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    # "https" for peer TLS (etcdlite's --peer-cert-file & co.)
    peer_scheme = "http"

    @property
    def peer_url(self) -> str:
        return f"{self.peer_scheme}://127.0.0.1:{self.peer_port}"

    def __repr__(self) -> str:
        state = "running" if self.alive else "stopped"
        return f"<Member {self.kind} {self.name} {self.endpoint} pid={self.pid} {state}>"

    # -- command line -------------------------------------------------------

    def argv(self) -> list[str]:
        common = [
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
        ]
        if self.kind == "etcdlite":
            return [PYTHON, "-m", "etcdlite", *common, *_flag_args(self.extra_flags)]
        flags = {"logger": "zap", "log_level": "error"}
        flags.update(self.extra_flags)
        return [ETCD_BIN, *common, *_flag_args(flags)]


def start_etcdlite(tmp_path, name: str = "etcdlite0", **kw) -> Member:
    return Member.start_etcdlite(tmp_path, name=name, **kw)


def start_real_etcd(tmp_path, name: str = "etcd0", **kw) -> Member:
    return Member.start_real_etcd(tmp_path, name=name, **kw)


# ---------------------------------------------------------------------------
# etcdctl

ETCDCTL_TIMEOUT_RC = 124


def _endpoints_arg(endpoints) -> str:
    if isinstance(endpoints, Member):
        return endpoints.endpoint
    if isinstance(endpoints, str):
        return endpoints
    return ",".join(e.endpoint if isinstance(e, Member) else str(e) for e in endpoints)


def etcdctl_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


def etcdctl_argv(endpoints, args: Sequence[str]) -> list[str]:
    return [ETCDCTL_BIN, f"--endpoints={_endpoints_arg(endpoints)}", *map(str, args)]


def run_etcdctl(
    endpoints, *args, stdin: str | bytes | None = None, timeout: float = 20.0, cwd=None
) -> tuple[int, str, str]:
    """Run etcdctl (API 3) against ``endpoints`` (a Member, "host:port", or a list).

    Returns (rc, stdout, stderr). On timeout the process is killed and rc is 124
    with a note appended to stderr (no exception, so transcripts show it)."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    argv = etcdctl_argv(endpoints, args)
    try:
        p = subprocess.run(
            argv,
            input=data if data is not None else b"",
            capture_output=True,
            timeout=timeout,
            env=etcdctl_env(),
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        err = (e.stderr or b"").decode("utf-8", "replace")
        return ETCDCTL_TIMEOUT_RC, out, err + f"\n[etcdctl timed out after {timeout:g}s]\n"
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


class BackgroundEtcdctl:
    """A long-running etcdctl (e.g. ``watch``) whose stdout is collected by a thread.

    ``wait_for(predicate, timeout)`` polls the collected output; ``stop()`` kills it.
    """

    def __init__(self, endpoints, *args) -> None:
        self.argv = etcdctl_argv(endpoints, args)
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=etcdctl_env(),
            start_new_session=True,
        )
        _BACKGROUND.append(self)
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, buf: bytearray) -> None:
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(1)
            if not chunk:
                return
            with self._lock:
                buf += chunk

    @property
    def stdout(self) -> str:
        with self._lock:
            return self._out.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        with self._lock:
            return self._err.decode("utf-8", "replace")

    def wait_for(self, predicate, timeout: float) -> bool:
        """Poll until predicate(stdout) is true (True), the process exited with
        nothing more to read, or the deadline passed (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.stdout):
                return True
            if self.proc.poll() is not None:
                for t in self._threads:
                    t.join(timeout=2)
                return bool(predicate(self.stdout))
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        finally:
            for t in self._threads:
                t.join(timeout=2)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


_BACKGROUND: list[BackgroundEtcdctl] = []


def stop_background(procs: Iterable[BackgroundEtcdctl] | None = None) -> None:
    for b in list(procs if procs is not None else _BACKGROUND):
        try:
            b.stop()
        except Exception:
            pass


atexit.register(stop_background)


def start_module_member(tmp_path_factory, name: str, **flags) -> tuple[Registry, Member]:
    """(registry, member) for a module-scoped fixture: etcdlite, or the real
    etcd when ETCDLITE_TEST_TARGET=etcd, on free ports; registry.cleanup()
    kills it."""
    reg = Registry()
    tmp = tmp_path_factory.mktemp(name)
    if os.environ.get("ETCDLITE_TEST_TARGET") == "etcd":
        return reg, reg.start_real_etcd(tmp, name=name, **flags)
    return reg, reg.start_etcdlite(tmp, name=name, **flags)


def start_cluster(kind: str, tmp_path, size: int, registry: Registry | None = None,
                  name: str = "m", before_launch=None, **flags) -> list[Member]:
    """`size` members of `kind` ("etcdlite" or "etcd") forming one cluster on
    free 127.0.0.1 ports, started together; returns once every member
    serves. `before_launch`, if given, is called with the members (ports
    chosen, not started yet), e.g. to put proxies between them."""
    members = [Member(kind, f"{name}{i}", tmp_path, flags, registry) for i in range(size)]
    cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for m in members:
        m.initial_cluster = cluster
    try:
        if before_launch is not None:
            before_launch(members)
        for m in members:
            m.launch()
        for m in members:
            m.wait_ready()
    except BaseException:
        kill_all(members)
        raise
    return members


def start_etcdlite_cluster(tmp_path, size: int, registry: Registry | None = None,
                           name: str = "m", before_launch=None, **flags) -> list[Member]:
    """start_cluster for etcdlite, with a fresh peer secret shared by all."""
    secret = Path(tmp_path) / "peer.secret"
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    secret.write_text(f"secret-{os.getpid()}-{time.monotonic_ns()}")
    flags.setdefault("peer_secret_file", str(secret))
    return start_cluster("etcdlite", tmp_path, size, registry, name, before_launch, **flags)
