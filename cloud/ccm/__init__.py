"""`python -m cloud.ccm`: the cloud-controller-manager, as k8s.io/cloud-provider's.

Its own process (with --leader-elect only the holder of kube-system/cloud-controller-manager
works), running over shared informers:

- node: a Node registered with the ``node.cloudprovider.kubernetes.io/uninitialized`` taint (a
  kubelet with --cloud-provider=external) is matched to its instance (by providerID, else by name)
  and given what only the cloud knows: spec.providerID, its addresses, the
  ``topology.kubernetes.io/zone``/``region`` and ``node.kubernetes.io/instance-type`` labels;
  then the taint goes, and the scheduler may use the node.
- node lifecycle: every --node-monitor-period, each Node that is not Ready is looked up in the
  cloud: no instance -> the Node is deleted (its pods are then the pod garbage collector's);
  instance stopped -> the ``node.cloudprovider.kubernetes.io/shutdown`` NoSchedule taint, removed
  once the node is Ready again.
- service: a Service of type LoadBalancer gets the ``service.kubernetes.io/load-balancer-cleanup``
  finalizer, a load balancer in the cloud forwarding its ports to their nodePorts on the ready
  nodes (updated as nodes come and go), and status.loadBalancer.ingress; deleted (or no longer
  of that type) -> the load balancer is deleted, then the status and the finalizer go.
- route: each initialized Node with a podCIDR gets a route in the cloud (podCIDR -> its
  instance) and the NetworkUnavailable=False condition; routes of Nodes gone are deleted.

Files: ``common`` (names, Node <-> instance matching, the worker base), ``nodes`` (node and node
lifecycle), ``service``, ``route``, ``__main__`` (the process: flags, informers, leader election).
"""

from cloud.ccm.common import (INSTANCE_TYPE_LABEL, LB_FINALIZER, REGION_LABEL, SHUTDOWN_TAINT, TO_BE_DELETED_TAINT,
                              UNINITIALIZED_TAINT, ZONE_LABEL, find_instance, has_taint, internal_ip, ready_status)
from cloud.ccm.nodes import CloudNodeController, CloudNodeLifecycleController
from cloud.ccm.route import RouteController
from cloud.ccm.service import ServiceController, lb_name, lb_node

__all__ = ["CloudNodeController", "CloudNodeLifecycleController", "RouteController", "ServiceController",
           "find_instance", "has_taint", "internal_ip", "lb_name", "lb_node", "ready_status",
           "INSTANCE_TYPE_LABEL", "LB_FINALIZER", "REGION_LABEL", "SHUTDOWN_TAINT", "TO_BE_DELETED_TAINT",
           "UNINITIALIZED_TAINT", "ZONE_LABEL"]
