"""python -m controllers.scheduler --server 127.0.0.1:6443 [--leader-elect]

Runs the scheduler until SIGTERM/SIGINT; with --leader-elect only the holder
of the kube-system/kube-scheduler Lease schedules (controllers/component.py).
"""

from __future__ import annotations

import argparse
import sys

from apiserver.client import Client
from controllers.component import add_common_flags, run_component, setup_logging
from controllers.scheduler.scheduler import DEFAULT_SCHEDULER_NAME, Scheduler


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m controllers.scheduler", description=__doc__.split("\n")[0])
    p.add_argument("--scheduler-name", default=DEFAULT_SCHEDULER_NAME,
                   help="schedule the pods whose spec.schedulerName is this")
    p.add_argument("--initial-backoff", type=float, default=1.0, help="seconds, after a first failed attempt")
    p.add_argument("--max-backoff", type=float, default=10.0, help="seconds, the most a pod waits out")
    p.add_argument("--max-unschedulable-seconds", type=float, default=30.0,
                   help="an unschedulable pod is tried again after this even if nothing changed")
    p.add_argument("--bind-workers", type=int, default=8, help="threads binding pods concurrently")
    add_common_flags(p, lease_name="kube-scheduler")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args)
    client = Client(args.server)
    scheduler = Scheduler(client, scheduler_name=args.scheduler_name,
                          initial_backoff=args.initial_backoff, max_backoff=args.max_backoff,
                          max_unschedulable_seconds=args.max_unschedulable_seconds,
                          bind_workers=args.bind_workers)
    return run_component("controllers.scheduler", client, args, scheduler.start, scheduler.stop)


if __name__ == "__main__":
    sys.exit(main())
