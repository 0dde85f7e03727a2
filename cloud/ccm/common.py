"""What the cloud-controller-manager's controllers share: the names Kubernetes gives its taints,
labels and finalizer, and how a Node is matched to its instance (the controllers are
controllers.base.Controller's, as the controller-manager's)."""

from __future__ import annotations

import logging

from cloud.provider import instance_id_of
from controllers.podutil import get_condition

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
