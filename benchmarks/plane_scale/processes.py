"""The plane's processes for the benchmark: etcdlite, the apiserver, the
controller-manager, the scheduler and the simulated nodes, each on free
127.0.0.1 ports with its log in the work dir; and py-spy recording them."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
from pathlib import Path

from apiserver.client import Client
from apiserver.errors import ApiError
from benchmarks.plane_scale import log
from harness.procs import PYTHON, Registry, ServerProcess, free_port


def flags(**kw) -> list[str]:
    """{"log_level": "warning"} -> ["--log-level", "warning"]."""
    return [arg for k, v in kw.items() for arg in (f"--{k.replace('_', '-')}", str(v))]


class PlaneProcess(ServerProcess):
    """``python -m <module> <argv>``, ready when ``probe(rpc_timeout)`` is None."""

    def __init__(self, tmp, name: str, module: str, argv: list[str], registry: Registry, probe=None) -> None:
        self.module, self.args, self.probe = module, argv, probe
        self.kind = module
        super().__init__(name, tmp, registry, ready_timeout=120)

    @property
    def endpoint(self) -> str:
        return self.name

    def argv(self) -> list[str]:
        return [PYTHON, "-m", self.module, *self.args]

    def ready_probe(self, rpc_timeout: float) -> str | None:
        return self.probe(rpc_timeout) if self.probe else None


def apiserver_serves(server: str):
    def probe(rpc_timeout: float) -> str | None:
        with Client(server, timeout=rpc_timeout) as c:
            try:
                c.list("namespaces", limit=1)
            except ApiError as e:
                return f"List: {e.reason} {e}"
        return None
    return probe


class Plane:
    """The plane's processes, in start order; ``stop()`` ends them in reverse."""

    def __init__(self, workdir: Path, args) -> None:
        self.workdir, self.args = workdir, args
        self.registry = Registry()
        self.procs: dict[str, ServerProcess] = {}
        self.api_port = free_port()
        self.server = f"127.0.0.1:{self.api_port}"

    def start(self) -> None:
        a = self.args
        log("starting etcdlite")
        self.procs["etcd"] = self.registry.start_etcdlite(self.workdir, name="etcd", log_level="warn",
                                                          ready_timeout=120)
        log("starting the apiserver")
        self._start("apiserver", "apiserver", flags(etcd_servers=self.procs["etcd"].url, port=self.api_port,
                                                    log_level="warning"), apiserver_serves(self.server))
        common = flags(server=self.server, log_level="warning")
        log("starting the controller-manager, the scheduler and the simulated nodes")
        self._start("controller-manager", "controllers.manager", common + shlex.split(a.manager_args))
        self._start("scheduler", "controllers.scheduler", common + shlex.split(a.scheduler_args))
        first = 0
        for i in range(a.kubelet_procs):
            count = a.nodes // a.kubelet_procs + (1 if i < a.nodes % a.kubelet_procs else 0)
            node_flags = flags(nodes=count, start_index=first, cpu=a.node_cpu, memory=a.node_memory,
                               ready_delay=a.ready_delay)
            self._start("kubelets" if a.kubelet_procs == 1 else f"kubelets-{i}", "controllers.kubelet",
                        common + node_flags + shlex.split(a.kubelet_args))
            first += count

    def _start(self, name: str, module: str, argv: list[str], probe=None) -> None:
        self.procs[name] = PlaneProcess(self.workdir, name, module, argv, self.registry, probe).start()

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items() if p.alive}

    def dead(self) -> list[ServerProcess]:
        return [p for p in self.procs.values() if not p.alive]

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            try:
                p.terminate(timeout=5)
            except (OSError, RuntimeError) as e:  # killed below anyway
                log(f"stopping {p.name}: {e}")
        self.registry.cleanup()


class Profiler:
    """py-spy recording every plane process (collapsed stacks, one file per
    process and phase) while a phase runs, with --nonblocking so the
    processes are never paused."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.spies: list[subprocess.Popen] = []
        self.py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")

    def start(self, plane: Plane, phase: str) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, pid in plane.pids().items():
            out = self.directory / f"{name}-{phase}.txt"
            self.spies.append(subprocess.Popen(
                [self.py_spy, "record", "--pid", str(pid), "--nonblocking", "--rate", "50", "--nolineno",
                 "--format", "raw", "--output", str(out)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for spy in self.spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for spy in self.spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        self.spies = []
