"""Kubeconfigs: written for kubectl and the Kubernetes client libraries, and
read by our own clients (apiserver.client.Client, the components, kctl) for
the server's CA and the user's credentials: a client certificate and key, or
a bearer token. Plain ``http://`` servers carry no credentials."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import yaml


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(server: str, name: str = "plane", namespace: str = "default", *, ca: bytes = b"",
               cert: bytes = b"", key: bytes = b"", token: str = "", user: str = "") -> dict:
    """``ca``, ``cert``, ``key``: PEM bytes, embedded (*-data) as kubeadm writes them."""
    cluster = {"server": server}
    if ca:
        cluster["certificate-authority-data"] = _b64(ca)
    creds = {}
    if cert:
        creds["client-certificate-data"] = _b64(cert)
        creds["client-key-data"] = _b64(key)
    if token:
        creds["token"] = token
    user = user or name
    context = {"cluster": name, "namespace": namespace}
    users = []
    if creds:
        context["user"] = user
        users = [{"name": user, "user": creds}]
    return {"apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": cluster}],
            "contexts": [{"name": name, "context": context}],
            "users": users, "preferences": {}}


def write_kubeconfig(path: str, server: str, name: str = "plane", namespace: str = "default", **creds) -> str:
    """Writes (replaces, mode 0600: it may hold a key) the kubeconfig at ``path``; returns ``path``."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(kubeconfig(server, name, namespace, **creds), f, sort_keys=False)
    os.replace(tmp, path)
    return path


def write_for(path: str, server: str, ca_file: str, cert_file: str = "", key_file: str = "", *,
              token: str = "", name: str = "plane", namespace: str = "default") -> str:
    """A kubeconfig embedding the files' PEM."""
    def read(p: str) -> bytes:
        with open(p, "rb") as f:
            return f.read()
    return write_kubeconfig(path, server, name, namespace, ca=read(ca_file),
                            cert=read(cert_file) if cert_file else b"", key=read(key_file) if key_file else b"",
                            token=token)


@dataclass
class Credentials:
    """What a kubeconfig's current context gives a client."""

    server: str  # the URL as written
    address: str  # host:port
    tls: bool
    ca: bytes = b""
    cert: bytes = b""
    key: bytes = b""
    token: str = ""


def _data(entry: dict, field: str, base: str) -> bytes:
    if entry.get(f"{field}-data"):
        return base64.b64decode(entry[f"{field}-data"])
    path = entry.get(field)
    if path:
        with open(path if os.path.isabs(path) else os.path.join(base, path), "rb") as f:
            return f.read()
    return b""


def load(path: str) -> Credentials:
    """The current context's server and credentials; ValueError if the file does not say them."""
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    base = os.path.dirname(os.path.abspath(path))
    current = cfg.get("current-context", "")
    ctx = next((c.get("context") or {} for c in cfg.get("contexts") or [] if c.get("name") == current), None)
    if ctx is None:
        raise ValueError(f"{path}: no context {current!r}")
    cluster = next((c.get("cluster") or {} for c in cfg.get("clusters") or [] if c.get("name") == ctx.get("cluster")),
                   None)
    if cluster is None or not cluster.get("server"):
        raise ValueError(f"{path}: context {current!r} names no cluster with a server")
    user = next((u.get("user") or {} for u in cfg.get("users") or [] if u.get("name") == ctx.get("user")), {})
    url = urlsplit(cluster["server"])
    tls = url.scheme == "https"
    port = url.port or (443 if tls else 80)
    token = user.get("token", "")
    if not token and user.get("tokenFile"):
        with open(user["tokenFile"]) as f:
            token = f.read().strip()
    return Credentials(cluster["server"], f"{url.hostname}:{port}", tls,
                       ca=_data(cluster, "certificate-authority", base),
                       cert=_data(user, "client-certificate", base), key=_data(user, "client-key", base),
                       token=token)
