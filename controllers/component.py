"""What every control-plane process shares: its flags for the apiserver
address, logging and leader election, and running until SIGTERM/SIGINT.

With --leader-elect several copies may run and only the holder of the
component's Lease (kube-system/<name>) works; one that loses the lease stops
working and exits with status 1, as kube-controller-manager and
kube-scheduler do, to start over as a candidate.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import uuid
from typing import Callable

from apiserver.client import DEFAULT_SERVER, Client


def add_common_flags(p: argparse.ArgumentParser, lease_name: str) -> None:
    p.add_argument("--server", default=os.environ.get("KCTL_SERVER", DEFAULT_SERVER),
                   help="the apiserver's host:port")
    p.add_argument("--leader-elect", action="store_true", help="work only while holding the lease")
    p.add_argument("--leader-elect-lease-name", default=lease_name)
    p.add_argument("--leader-elect-namespace", default="kube-system")
    p.add_argument("--leader-elect-identity", default="", help="default: hostname_uuid")
    p.add_argument("--leader-elect-lease-duration", type=float, default=15.0)
    p.add_argument("--leader-elect-renew-deadline", type=float, default=10.0)
    p.add_argument("--leader-elect-retry-period", type=float, default=2.0)
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))


def setup_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_component(name: str, client: Client, args: argparse.Namespace,
                  start: Callable[[], object], stop: Callable[[], object]) -> int:
    """Runs ``start()`` (at once, or when the lease is won) until a signal;
    then ``stop()``. Returns the exit status."""
    done = threading.Event()
    lost = threading.Event()

    def on_signal(signum, frame) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    elector = None
    if args.leader_elect:
        from controllers.leaderelection import LeaderElector

        def stopped_leading() -> None:
            stop()  # before the lease is released or lost to another
            if not done.is_set():
                lost.set()
                done.set()

        elector = LeaderElector(
            client, args.leader_elect_lease_name, args.leader_elect_namespace,
            identity=args.leader_elect_identity or f"{socket.gethostname()}_{uuid.uuid4()}",
            lease_duration=args.leader_elect_lease_duration,
            renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period,
            on_started_leading=start, on_stopped_leading=stopped_leading)
        elector.start()
    else:
        start()
    while not done.wait(1.0):  # a timed wait lets the signal handlers run
        pass
    if elector is not None:
        elector.stop()  # stops the component if leading, then releases the lease
    stop()
    client.close()
    if lost.is_set():
        logging.getLogger(name).error("leader election lost")
        return 1
    return 0
