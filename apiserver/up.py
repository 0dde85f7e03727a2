"""`python -m apiserver.up`: the embedded default plane, what `make run` starts.

One etcdlite member (data in <data-dir>/etcd) and the apiserver in front of
it (Secrets encrypted with <data-dir>/encryption.key, made on first start),
each its own process, output prefixed by its name. A process that dies is
restarted; Ctrl-C or SIGTERM stops both.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

from apiserver.encryption import generate_key_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m apiserver.up", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="default.plane", help="etcd data and the encryption key")
    p.add_argument("--etcd-port", type=int, default=2379, help="etcd client port (peer port: +1)")
    p.add_argument("--port", type=int, default=6443, help="apiserver gRPC port")
    return p


class Supervisor:
    """Runs named commands, relays their output, restarts those that die."""

    def __init__(self, commands: dict[str, list[str]]) -> None:
        self.commands = commands
        self.procs: dict[str, subprocess.Popen] = {}
        self.stopping = threading.Event()

    def start(self, name: str) -> None:
        proc = subprocess.Popen(self.commands[name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True)
        self.procs[name] = proc
        threading.Thread(target=self._relay, args=(name, proc), daemon=True).start()

    def _relay(self, name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            print(f"[{name}] {line}", end="", flush=True)

    def supervise(self) -> None:
        while not self.stopping.wait(0.5):
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is not None and not self.stopping.is_set():
                    print(f"[plane] {name} exited with {code}; restarting in 1 s", flush=True)
                    time.sleep(1)
                    self.start(name)

    def stop(self) -> None:
        """Stops the processes in reverse start order, each before the next,
        so clients go while their servers still answer (a leader releases its
        lease, nothing reconnects to a server already gone)."""
        self.stopping.set()
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def plane_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    key_file = os.path.join(args.data_dir, "encryption.key")
    if not os.path.exists(key_file):
        generate_key_file(key_file)
    etcd_url = f"http://127.0.0.1:{args.etcd_port}"
    return {
        "etcdlite": [sys.executable, "-m", "etcdlite", "--data-dir", os.path.join(args.data_dir, "etcd"),
                     "--listen-client-urls", etcd_url,
                     "--listen-peer-urls", f"http://127.0.0.1:{args.etcd_port + 1}",
                     "--log-level", "warn"],
        "apiserver": [sys.executable, "-m", "apiserver", "--etcd-servers", etcd_url,
                      "--port", str(args.port), "--encryption-key-file", key_file],
    }


def run(sup: Supervisor, banner: str, then=None) -> int:
    """Starts every command, runs ``then()`` (if given) in a thread, and
    supervises until Ctrl-C or SIGTERM; then stops everything."""
    signal.signal(signal.SIGTERM, lambda *_: sup.stopping.set())
    print(f"[plane] {banner}", flush=True)
    for name in sup.commands:
        sup.start(name)
    if then is not None:
        threading.Thread(target=then, daemon=True).start()
    try:
        sup.supervise()
    except KeyboardInterrupt:
        pass
    finally:
        print("[plane] stopping", flush=True)
        sup.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.makedirs(args.data_dir, exist_ok=True)
    return run(Supervisor(plane_commands(args)),
               f"starting etcdlite (127.0.0.1:{args.etcd_port}) and the apiserver "
               f"(127.0.0.1:{args.port}); data in {args.data_dir}/; Ctrl-C stops")


if __name__ == "__main__":
    sys.exit(main())
