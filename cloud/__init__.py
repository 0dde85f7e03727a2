"""The cloud the cluster runs on, and the cluster's parts that talk to it.

A cloud is not part of a node (``node/`` is what runs on one machine) nor of the control plane
(``controllers/`` only reads and writes API objects): it is the infrastructure underneath, which
a cluster reaches through a provider's API. Hence a package of its own, with the same split as
Kubernetes' k8s.io/cloud-provider and cluster-autoscaler:

- ``provider``: the cloud itself, on this machine: instances (each a real node of ``node.plane``:
  a network namespace on the plane's fabric with its CRI runtime, kubelet and kube-proxy), node
  groups that keep a target count of instances, and a route table (podCIDR -> instance,
  programmed into every instance's namespace as a VPC router would);
- ``loadbalancer``: virtual IPs in a router namespace forwarding with nftables to a Service's
  NodePort on the nodes it is given;
- ``server``/``__main__``: that cloud's HTTP/JSON API on 127.0.0.1 (``python -m cloud``);
- ``client``: the API as the cluster's components use it;
- ``ccm/``: the cloud-controller-manager (``python -m cloud.ccm``): node, node lifecycle,
  service (LoadBalancer) and route controllers, leader-elected;
- ``autoscaler``: node provisioning in the spirit of cluster-autoscaler (``python -m
  cloud.autoscaler``): unschedulable pods -> a node group grows; idle nodes are drained and removed.
"""
