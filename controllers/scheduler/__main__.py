"""python -m controllers.scheduler --server 127.0.0.1:6443 [--leader-elect]

Runs the scheduler until SIGTERM/SIGINT. With --leader-elect, several
schedulers may run and only the holder of the kube-system/kube-scheduler
Lease schedules; one that loses the lease exits (status 1), as kube-scheduler
does, to start over as a candidate.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import uuid

from apiserver.client import DEFAULT_SERVER, Client
from controllers.scheduler.scheduler import DEFAULT_SCHEDULER_NAME, Scheduler


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m controllers.scheduler", description=__doc__.split("\n")[0])
    p.add_argument("--server", default=DEFAULT_SERVER, help="the apiserver's host:port")
    p.add_argument("--scheduler-name", default=DEFAULT_SCHEDULER_NAME,
                   help="schedule the pods whose spec.schedulerName is this")
    p.add_argument("--initial-backoff", type=float, default=1.0, help="seconds, after a first failed attempt")
    p.add_argument("--max-backoff", type=float, default=10.0, help="seconds, the most a pod waits out")
    p.add_argument("--max-unschedulable-seconds", type=float, default=30.0,
                   help="an unschedulable pod is tried again after this even if nothing changed")
    p.add_argument("--bind-workers", type=int, default=4, help="threads binding pods concurrently")
    p.add_argument("--leader-elect", action="store_true", help="schedule only while holding the lease")
    p.add_argument("--leader-elect-lease-name", default="kube-scheduler")
    p.add_argument("--leader-elect-namespace", default="kube-system")
    p.add_argument("--leader-elect-identity", default="", help="default: hostname_uuid")
    p.add_argument("--leader-elect-lease-duration", type=float, default=15.0)
    p.add_argument("--leader-elect-renew-deadline", type=float, default=10.0)
    p.add_argument("--leader-elect-retry-period", type=float, default=2.0)
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = Client(args.server)
    scheduler = Scheduler(client, scheduler_name=args.scheduler_name,
                          initial_backoff=args.initial_backoff, max_backoff=args.max_backoff,
                          max_unschedulable_seconds=args.max_unschedulable_seconds,
                          bind_workers=args.bind_workers)
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
            scheduler.stop()  # before the lease is released or lost to another
            if not done.is_set():
                lost.set()
                done.set()

        elector = LeaderElector(
            client, args.leader_elect_lease_name, args.leader_elect_namespace,
            identity=args.leader_elect_identity or f"{socket.gethostname()}_{uuid.uuid4()}",
            lease_duration=args.leader_elect_lease_duration,
            renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period,
            on_started_leading=scheduler.start, on_stopped_leading=stopped_leading)
        elector.start()
    else:
        scheduler.start()
    while not done.wait(1.0):  # a timed wait lets the signal handlers run
        pass
    if elector is not None:
        elector.stop()  # stops the scheduler if leading, then releases the lease
    scheduler.stop()
    client.close()
    if lost.is_set():
        logging.getLogger("controllers.scheduler").error("leader election lost")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
