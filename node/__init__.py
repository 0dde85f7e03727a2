"""The data plane: kubelets (real ones on a CRI runtime, and hollow ones for scale), the CRI runtime."""
