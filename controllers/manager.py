"""`python -m controllers.manager`: the controller-manager.

Runs, over one set of shared informers, the ReplicaSet, Deployment, garbage
collector, namespace, node lifecycle, endpoints, EndpointSlice and EndpointSlice mirroring
controllers, the pod garbage collector's orphan sweep, the PersistentVolume binder, the
pvc/pv-protection controllers, (with --storage-dir) the directory provisioner and the
certificate controllers (csrapproving, csrcleaner, with --cluster-signing-* csrsigning), as
kube-controller-manager does. With --leader-elect only the holder of the
kube-system/kube-controller-manager Lease runs them.
"""

from __future__ import annotations

import argparse
import sys

from apiserver.client import Client
from controllers.certificates import (DEFAULT_DURATION, CSRApprovingController, CSRCleanerController,
                                     CSRSigningController)
from controllers.component import add_common_flags, run_component, setup_logging
from controllers.deployment import DeploymentController
from controllers.endpoints import EndpointsController
from controllers.endpointslice import EndpointSliceController
from controllers.endpointslicemirroring import EndpointSliceMirroringController
from controllers.events import EventRecorder
from controllers.gc import GarbageCollector, NamespaceController
from controllers.informer import SharedInformerFactory
from controllers.nodelifecycle import NodeLifecycleController
from controllers.persistentvolume import PersistentVolumeController
from controllers.podgc import PodGCController
from controllers.provisioner import DirectoryProvisioner
from controllers.pvprotection import PVCProtectionController, PVProtectionController
from controllers.replicaset import ReplicaSetController
from controllers.rootca import RootCAPublisher
from controllers.serviceaccounts import ServiceAccountsController

CONTROLLERS = ("replicaset", "deployment", "garbagecollector", "namespace", "nodelifecycle", "endpoints",
               "endpointslice", "endpointslicemirroring", "podgc", "persistentvolume-binder", "pvc-protection",
               "pv-protection", "directory-provisioner", "serviceaccount",
               "root-ca-cert-publisher", "csrapproving", "csrsigning", "csrcleaner")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m controllers.manager", description=__doc__.split("\n\n")[0])
    p.add_argument("--controllers", default="*",
                   help=f"comma-separated, '*' for all: {','.join(CONTROLLERS)}; '-name' leaves one out")
    p.add_argument("--concurrent-syncs", type=int, default=4,
                   help="worker threads of the ReplicaSet and Deployment controllers")
    p.add_argument("--node-monitor-grace-period", type=float, default=40.0,
                   help="seconds without a node heartbeat before it is NotReady (Unknown)")
    p.add_argument("--node-monitor-period", type=float, default=5.0,
                   help="how often node health is checked, in seconds")
    p.add_argument("--disable-pod-eviction", action="store_true",
                   help="taint unreachable nodes but never evict their pods")
    p.add_argument("--storage-dir", default="",
                   help="the storage area the directory provisioner makes volumes in (a directory every "
                        "node can reach); unset: no provisioner, no default StorageClass")
    p.add_argument("--pod-gc-period", type=float, default=20.0,
                   help="seconds between sweeps for pods bound to nodes that no longer exist")
    p.add_argument("--root-ca-file", default="",
                   help="the cluster's CA (PEM), published as ConfigMap kube-root-ca.crt in every namespace "
                        "for pods' ServiceAccount volumes; unset: not published")
    p.add_argument("--cluster-signing-cert-file", default="",
                   help="PEM CA certificate csrsigning signs approved CertificateSigningRequests with "
                        "(kubelet client certificates); unset: csrsigning does not run")
    p.add_argument("--cluster-signing-key-file", default="", help="PEM key of --cluster-signing-cert-file")
    p.add_argument("--cluster-signing-duration", type=float, default=DEFAULT_DURATION,
                   help="longest validity of a signed certificate, in seconds (default a year); a request's "
                        "spec.expirationSeconds may ask for less")
    add_common_flags(p, lease_name="kube-controller-manager")
    args = p.parse_args(argv)
    if bool(args.cluster_signing_cert_file) != bool(args.cluster_signing_key_file):
        p.error("--cluster-signing-cert-file and --cluster-signing-key-file go together")
    args.enabled = enabled_controllers(args.controllers)
    return args


def enabled_controllers(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    enabled = set(CONTROLLERS) if "*" in names else set()
    for name in names:
        if name == "*":
            continue
        bare = name.lstrip("-")
        if bare not in CONTROLLERS:
            raise SystemExit(f"unknown controller {bare!r}; known: {', '.join(CONTROLLERS)}")
        if name.startswith("-"):
            enabled.discard(bare)
        else:
            enabled.add(bare)
    return [n for n in CONTROLLERS if n in enabled]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _reviews(server: str):
    """SubjectAccessReviews for csrapproving with the controller-manager's own credentials
    (REST over TLS); None for a plain-HTTP apiserver, which authorizes everyone."""
    from apiserver.client import credentials_for
    from node.kubelet.auth import ApiReviews

    creds = credentials_for(server)
    return ApiReviews(lambda: creds) if creds is not None and creds.tls else None


class ControllerManager:
    def __init__(self, client: Client, args: argparse.Namespace) -> None:
        self.client = client
        self.args = args
        self.informers = SharedInformerFactory(client)
        self.recorder = EventRecorder(client, "controller-manager")
        self.controllers: list = []

    def _build(self) -> list:
        a, c, f = self.args, self.client, self.informers
        make = {
            "replicaset": lambda: ReplicaSetController(c, f, workers=a.concurrent_syncs, recorder=self.recorder),
            "deployment": lambda: DeploymentController(c, f, workers=a.concurrent_syncs, recorder=self.recorder),
            "garbagecollector": lambda: GarbageCollector(c, f),
            "namespace": lambda: NamespaceController(c, f),
            "nodelifecycle": lambda: NodeLifecycleController(
                c, f, node_monitor_grace_period=a.node_monitor_grace_period,
                monitor_period=a.node_monitor_period, pod_eviction=not a.disable_pod_eviction,
                recorder=self.recorder),
            "endpoints": lambda: EndpointsController(c, f),
            "endpointslice": lambda: EndpointSliceController(c, f),
            "endpointslicemirroring": lambda: EndpointSliceMirroringController(c, f),
            "podgc": lambda: PodGCController(c, f, period=a.pod_gc_period),
            "persistentvolume-binder": lambda: PersistentVolumeController(c, f),
            "pvc-protection": lambda: PVCProtectionController(c, f),
            "pv-protection": lambda: PVProtectionController(c, f),
            "directory-provisioner": lambda: DirectoryProvisioner(c, f, a.storage_dir),
            "serviceaccount": lambda: ServiceAccountsController(c, f),
            "root-ca-cert-publisher": lambda: RootCAPublisher(c, f, _read(a.root_ca_file)),
            "csrapproving": lambda: CSRApprovingController(c, f, _reviews(a.server)),
            "csrsigning": lambda: CSRSigningController(c, f, _read_bytes(a.cluster_signing_cert_file),
                                                       _read_bytes(a.cluster_signing_key_file),
                                                       duration=a.cluster_signing_duration),
            "csrcleaner": lambda: CSRCleanerController(c, f),
        }
        enabled = [n for n in a.enabled if (n != "directory-provisioner" or a.storage_dir)
                   and (n != "root-ca-cert-publisher" or a.root_ca_file)
                   and (n != "csrsigning" or a.cluster_signing_cert_file)]
        return [make[name]() for name in enabled]

    def start(self) -> None:
        self.controllers = self._build()
        self.informers.start()
        for controller in self.controllers:
            controller.start()

    def stop(self) -> None:
        for controller in reversed(self.controllers):
            controller.stop()
        self.informers.stop()
        self.recorder.stop()


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(args)
    client = Client(args.server)
    manager = ControllerManager(client, args)
    return run_component("controllers.manager", client, args, manager.start, manager.stop)


if __name__ == "__main__":
    sys.exit(main())
