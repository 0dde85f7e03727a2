"""The REST front as the apiserver serves it: the HTTP/1.1 server with the
REST API behind it, ready to take the connections grpclite hands over."""

from __future__ import annotations

from apiserver.registry import Registry
from apiserver.rest.api import RestApi
from apiserver.rest.http1 import Http1Server
from apiserver.rest.status import http_error


def front(registry: Registry, kubelets=None, gate=None, pod_network=None) -> Http1Server:
    """``kubelets`` (apiserver.kubelet.KubeletClients): where pods/log, exec, attach and
    portforward go; None serves none of them. ``gate``: authentication and authorization
    (apiserver/auth/gate.py), None: everyone may do anything. ``pod_network``
    (apiserver.podnetwork.PodNetwork): where pods/ and services/NAME/proxy dial pods from; None:
    nowhere."""
    return Http1Server(RestApi(registry, kubelets, gate, pod_network).handle, http_error)
