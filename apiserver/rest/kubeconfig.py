"""Kubeconfigs: written for kubectl and the Kubernetes client libraries, and
read by our own clients (apiserver.client.Client, the components, kctl) for
the server's CA and the user's credentials: a client certificate and key, or
a bearer token. Plain ``http://`` servers carry no credentials."""

from __future__ import annotations

import base64
import os
import re
import ssl
import tempfile
import threading
from collections.abc import Callable
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


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----\n?", re.S)


def pem_blocks(data: bytes, private_key: bool) -> bytes:
    """Of a PEM file, the private key's block (``private_key``) or the others: a kubelet's
    kubelet-client-current.pem holds both and its kubeconfig names it as certificate and key."""
    blocks = [m for m in _PEM_BLOCK.finditer(data)]
    if not blocks:
        return data
    return b"".join(m.group(0) for m in blocks if m.group(1).endswith(b"PRIVATE KEY") == private_key)


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
    cert = _data(user, "client-certificate", base)
    # one file for both (a kubelet's kubelet-client-current.pem) is read once: a link moved
    # between two reads would pair one certificate with another's key
    same = user.get("client-certificate") and user.get("client-certificate") == user.get("client-key")
    key = cert if same else _data(user, "client-key", base)
    return Credentials(cluster["server"], f"{url.hostname}:{port}", tls,
                       ca=_data(cluster, "certificate-authority", base),
                       cert=pem_blocks(cert, False), key=pem_blocks(key, True), token=token)


def ssl_context(creds: Credentials, *, check_hostname: bool = True) -> ssl.SSLContext:
    """A client context for REST calls with ``creds``: their CA, their client certificate."""
    ctx = ssl.create_default_context(cadata=creds.ca.decode() if creds.ca else None)
    ctx.check_hostname = check_hostname
    ctx.set_alpn_protocols(["http/1.1"])
    if creds.cert and creds.key:
        # ssl loads a key pair from files only: a private 0700 directory, gone right after
        with tempfile.TemporaryDirectory(prefix="client-tls-") as d:
            cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
            for path, data in ((cert, creds.cert), (key, creds.key)):
                with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                    f.write(data)
            ctx.load_cert_chain(cert, key)
    return ctx


class ReloadingTLS:
    """The credentials ``load()`` gives now and an SSLContext for them, made again only when
    they change: a kubelet's REST calls follow its rotated client certificate."""

    def __init__(self, load: Callable[[], Credentials | None], *, check_hostname: bool = True) -> None:
        self._load = load
        self._check_hostname = check_hostname
        self._lock = threading.Lock()
        self._seen: tuple | None = None
        self._ctx: ssl.SSLContext | None = None

    def current(self) -> tuple[Credentials | None, ssl.SSLContext | None]:
        """(credentials, their context; None for plain HTTP)."""
        creds = self._load()
        seen = (creds.ca, creds.cert, creds.key) if creds is not None and creds.tls else None
        with self._lock:
            if seen != self._seen:
                self._ctx = ssl_context(creds, check_hostname=self._check_hostname) if seen is not None else None
                self._seen = seen
            return creds, self._ctx
