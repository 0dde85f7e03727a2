"""`python -m cloud.ccm`: the cloud-controller-manager process (see cloud.ccm)."""

from __future__ import annotations

import argparse
import sys

from apiserver.client import Client
from cloud.ccm.common import CONTROLLERS
from cloud.ccm.nodes import CloudNodeController, CloudNodeLifecycleController
from cloud.ccm.route import RouteController
from cloud.ccm.service import ServiceController
from cloud.client import CloudClient
from controllers.component import add_common_flags, run_component, setup_logging
from controllers.events import EventRecorder
from controllers.informer import SharedInformerFactory


class CloudControllerManager:
    def __init__(self, client: Client, args: argparse.Namespace) -> None:
        self.client, self.args = client, args
        self.cloud = CloudClient(args.cloud_url)
        self.informers = SharedInformerFactory(client)
        self.recorder = EventRecorder(client, "cloud-controller-manager")
        self.controllers: list = []

    def start(self) -> None:
        a, c, f, r = self.args, self.client, self.informers, self.recorder
        make = {
            "cloud-node": lambda: CloudNodeController(c, self.cloud, f, r),
            "cloud-node-lifecycle": lambda: CloudNodeLifecycleController(c, self.cloud, f, r, a.node_monitor_period),
            "service": lambda: ServiceController(c, self.cloud, f, r),
            "route": lambda: RouteController(c, self.cloud, f, a.route_reconciliation_period),
        }
        self.controllers = [make[n]() for n in a.enabled]
        self.informers.start()
        self.informers.wait_for_cache_sync(60)
        for ctl in self.controllers:
            ctl.start()

    def stop(self) -> None:
        for ctl in reversed(self.controllers):
            ctl.stop()
        self.controllers = []
        self.informers.stop()
        self.recorder.stop()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cloud.ccm", description="The cloud-controller-manager.")
    p.add_argument("--cloud-url", required=True, help="the cloud's API, e.g. http://127.0.0.1:7070")
    p.add_argument("--controllers", default="*", help=f"comma-separated or '*': {','.join(CONTROLLERS)}")
    p.add_argument("--node-monitor-period", type=float, default=5.0,
                   help="seconds between looks at not-Ready nodes' instances")
    p.add_argument("--route-reconciliation-period", type=float, default=10.0)
    add_common_flags(p, lease_name="cloud-controller-manager")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.controllers.split(",") if n.strip()]
    unknown = [n for n in names if n != "*" and n not in CONTROLLERS]
    if unknown:
        p.error(f"unknown controllers {unknown}; known: {', '.join(CONTROLLERS)}")
    args.enabled = list(CONTROLLERS) if "*" in names else [n for n in CONTROLLERS if n in names]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args)
    client = Client(args.server)
    ccm = CloudControllerManager(client, args)
    return run_component("cloud.ccm", client, args, ccm.start, ccm.stop)


if __name__ == "__main__":
    sys.exit(main())
