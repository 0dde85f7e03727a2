"""The data plane: kubelets, the CRI runtime and pod networking that make nodes real."""
