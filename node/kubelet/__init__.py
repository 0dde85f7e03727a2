"""Kubelets: the real one syncs pods through CRI; the hollow one simulates hundreds of nodes."""
