"""What the cloud-controller-manager's controllers share: the names Kubernetes gives its taints,
labels and finalizer, how a Node is matched to its instance, and a small worker base (a queue,
its workers, periodic loops, stop)."""

from __future__ import annotations

import logging
import threading

from cloud.provider import instance_id_of
from controllers.podutil import get_condition
from controllers.workqueue import RateLimitingQueue, start_workers

log = logging.getLogger("cloud.ccm")

UNINITIALIZED_TAINT = "node.cloudprovider.kubernetes.io/uninitialized"
SHUTDOWN_TAINT = "node.cloudprovider.kubernetes.io/shutdown"
LB_FINALIZER = "service.kubernetes.io/load-balancer-cleanup"
EXCLUDE_LB_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
CONTROLLERS = ("cloud-node", "cloud-node-lifecycle", "service", "route")


def ready_status(node) -> str:
    cond = get_condition(node.status.conditions, "Ready")
    return cond.status if cond is not None else ""


def has_taint(node, key: str) -> bool:
    return any(t.key == key for t in node.spec.taints)


def internal_ip(node) -> str:
    return next((a.address for a in node.status.addresses if a.type == "InternalIP"), "")


def find_instance(instances: list[dict], node) -> dict | None:
    """The node's instance: by providerID when it has one, else by name (the instance's hostname)."""
    wanted = instance_id_of(node.spec.provider_id)
    for inst in instances:
        if (inst["id"] == wanted) if wanted else (inst["name"] == node.metadata.name):
            return inst
    return None


class Worker:
    """A queue, its workers (``sync(key)``), loops run ``every`` period, and ``stop()``."""

    name = "worker"

    def __init__(self, workers: int = 1) -> None:
        self.queue = RateLimitingQueue(name=self.name)
        self._workers = workers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self):
        self._threads += start_workers(self.queue, self.sync, self._workers, self.name, log)
        return self

    def every(self, period: float, fn) -> None:
        def loop() -> None:
            while not self._stop.wait(period):
                try:
                    fn()
                except Exception:
                    log.exception("%s", self.name)
        t = threading.Thread(target=loop, name=f"{self.name}-loop", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.queue.shut_down()
        for t in self._threads:
            t.join(timeout)

    def sync(self, key) -> None:
        raise NotImplementedError


