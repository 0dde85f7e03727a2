"""The data plane: real nodes (kubelet, CRI runtime, pod network) on this machine."""
