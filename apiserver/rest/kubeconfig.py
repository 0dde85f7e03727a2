"""A kubeconfig for kubectl and the Kubernetes client libraries, pointing at
an apiserver's REST API (plain HTTP on its port: there are no credentials
until the apiserver authenticates)."""

from __future__ import annotations

import os

import yaml


def kubeconfig(server: str, name: str = "plane", namespace: str = "default") -> dict:
    return {"apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": server}}],
            "contexts": [{"name": name, "context": {"cluster": name, "namespace": namespace}}],
            "users": [], "preferences": {}}


def write_kubeconfig(path: str, server: str, name: str = "plane", namespace: str = "default") -> str:
    """Writes (replaces) the kubeconfig at ``path``; returns ``path``."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(kubeconfig(server, name, namespace), f, sort_keys=False)
    os.replace(tmp, path)
    return path
