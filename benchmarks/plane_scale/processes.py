"""The plane's processes for the benchmark: etcdlite, the apiserver, the
controller-manager, the scheduler and the simulated nodes, each on free
127.0.0.1 ports with its log in the work dir (started as the tests start them,
with harness.plane, plus the flags given on the benchmark's command line);
and py-spy recording them."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
from pathlib import Path

from benchmarks.plane_scale import log
from harness.plane import ApiServer, start_component
from harness.procs import PYTHON, Registry, ServerProcess

READY_TIMEOUT = 120.0  # seconds each process may take to start on a loaded machine


class Plane:
    """The plane's processes, in start order; ``stop()`` ends them in reverse."""

    def __init__(self, workdir: Path, args) -> None:
        self.workdir, self.args = workdir, args
        self.registry = Registry()
        self.procs: dict[str, ServerProcess] = {}
        self.server: str | None = None  # the apiserver's address, once start() has started it

    def start(self, hollow: bool = True) -> None:
        """``hollow``: start the simulated nodes too (the real-nodes run starts its own nodes)."""
        a = self.args
        log("starting etcdlite")
        self.procs["etcd"] = self.registry.start_etcdlite(self.workdir, name="etcd", log_level="warn",
                                                          ready_timeout=READY_TIMEOUT)
        log("starting the apiserver")
        api = ApiServer(self.workdir, self.procs["etcd"].url, registry=self.registry,
                        ready_timeout=READY_TIMEOUT, log_level="warning")
        self.procs["apiserver"] = api.start()
        self.server = api.endpoint
        log("starting the controller-manager, the scheduler" + (" and the simulated nodes" if hollow else ""))
        self._start("controller-manager", "controllers.manager", a.manager_args)
        self._start("scheduler", "controllers.scheduler", a.scheduler_args)
        if not hollow:
            return
        first = 0
        for i in range(a.kubelet_procs):
            count = a.nodes // a.kubelet_procs + (1 if i < a.nodes % a.kubelet_procs else 0)
            self._start("kubelets" if a.kubelet_procs == 1 else f"kubelets-{i}", "node.kubelet.hollow",
                        a.kubelet_args, nodes=count, start_index=first, cpu=a.node_cpu, memory=a.node_memory,
                        ready_delay=a.ready_delay)
            first += count

    def _start(self, name: str, module: str, user_args: str, **flags) -> None:
        """``user_args``: the flags given on the benchmark's command line for this process."""
        self.procs[name] = start_component(self.workdir, name, module, self.server, self.registry,
                                           log_level="warning", extra_args=shlex.split(user_args),
                                           ready_timeout=READY_TIMEOUT, **flags)

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
