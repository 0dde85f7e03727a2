"""Kubelets: the real one (pod sync through CRI) and the hollow one (simulated nodes)."""
