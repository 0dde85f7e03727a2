"""The kubelet side of CRI: a typed client of runtime.v1 runtimes (client.py)."""
