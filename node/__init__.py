"""The data plane: real nodes on one machine (kubelet, CRI runtime, pod network)."""
