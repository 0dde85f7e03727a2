"""nodes/<name>/proxy/<path>: the request relayed to that node's kubelet and its answer streamed
back (apiserver/rest/proxyrelay.py), as kube-apiserver's node ProxyREST does; what
``kubectl get --raw /api/v1/nodes/N/proxy/stats/summary`` calls.

The caller was authorized for nodes/proxy with the request's verb by the gate; the kubelet then
authorizes the apiserver itself (its kubelet client certificate, system:kubelet-api-admin).

The name may be ``<node>``, ``<node>:<port>`` or ``<scheme>:<node>:<port>`` (upstream's
SplitSchemeNamePort). Upstream sends a port other than the kubelet's to that port over plain HTTP,
but only on an address it may proxy to, never loopback; every kubelet of this plane listens on
loopback, so such a port is refused as upstream refuses loopback ("address not allowed"), and only
the kubelet's own port is served.
"""

from __future__ import annotations

from apiserver import errors, resources
from apiserver.errors import ApiError
from apiserver.kubelet import KubeletClients, kubelet_port, kubelet_unreachable, no_kubelet_endpoint
from apiserver.rest import proxyrelay, routing
from apiserver.rest.http1 import Request, Response
from apiserver.rest.status import http_error


def split_node_id(node_id: str) -> tuple[str, str]:
    """(node name, port or "") of a proxy request's name; BadRequest as upstream words it."""
    split = proxyrelay.split_scheme_name_port(node_id)
    if split is None:
        raise errors.bad_request(f'invalid node request "{node_id}"')
    return split[1], split[2]


class NodeProxy:
    """``kubelets`` None: no kubelets are dialled (every request is ServiceUnavailable)."""

    def __init__(self, registry, kubelets: KubeletClients | None) -> None:
        self.registry = registry
        self.kubelets = kubelets
        self._nodes = resources.lookup("nodes")

    async def handle(self, req: Request, t: routing.Target) -> Response:
        if req.method not in proxyrelay.METHODS:
            return http_error(405, "the server does not allow this method on the requested resource")
        name, port_asked = split_node_id(t.name)
        node = await self.registry.get(self._nodes, "", name)
        port = kubelet_port(node)
        if port <= 0 or self.kubelets is None:
            raise no_kubelet_endpoint(name, "API")
        if port_asked and port_asked != str(port):
            raise errors.bad_request("address not allowed")
        kubelets, host = self.kubelets, self.kubelets.kubelet_host

        def unreachable(e: BaseException) -> ApiError:  # upstream's words first: clients look for them
            return kubelet_unreachable(name, f"{host}:{port}", str(e) or type(e).__name__,
                                       prefix="error trying to reach service: ")

        async def open_():
            try:
                return await kubelets.open_http(host, port)
            except (OSError, TimeoutError) as e:
                raise unreachable(e) from None

        return await proxyrelay.relay(req, t.path, f"{host}:{port}", open_, unreachable)
