"""pods/<name>/proxy/<path> and services/<name>/proxy/<path>: the request relayed to a pod's IP
(apiserver/rest/proxyrelay.py) from the apiserver's machine on the pods' network
(apiserver/podnetwork.py), as kube-apiserver's pod and service ProxyREST do; what
``kubectl get --raw /api/v1/namespaces/NS/pods/NAME:8080/proxy/`` calls.

Where it goes, as upstream's ResourceLocation decides:
- a pod: ``[scheme:]name[:port]``; no port: the first port any of its containers declares, else
  the scheme's (80, 443); a port that is not a number is looked up as Go's dialer does (the
  system's services database), not among the pod's port names. The pod's first IP must be a
  global unicast address, else BadRequest "address not allowed" (a pod without an IP too).
- a service: ``[scheme:]name[:port]``; a port number names the Service's port of that number
  (ServiceUnavailable "no service port N found for service ..." if none), a port name or no port
  names the Endpoints' port of that name. A ready address of a subset with that port is picked at
  random among those whose targetRef is a pod of the namespace that has that IP; none:
  ServiceUnavailable "no endpoints available for service ...". An unknown Service is NotFound on
  its Endpoints unless a port number made the Service itself be read.

And only where this plane has pods: the IP must lie in its node's podCIDR or be one of the node's
addresses (a host-network pod), else "address not allowed"; a pod of a node with no kubelet
endpoint (hollow nodes: their pods' IPs are not on any network), or an apiserver with no machine
on the pods' network, is ServiceUnavailable with the words of a dial that found no route. A dial
that fails is ServiceUnavailable "error trying to reach service: dial tcp IP:PORT: ..." in Go's
words, as kubectl shows it from kube-apiserver.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import random
import re
import socket
import ssl

from apiserver import errors, resources
from apiserver.errors import ApiError
from apiserver.kubelet import kubelet_port
from apiserver.podnetwork import PodNetwork
from apiserver.rest import proxyrelay, routing
from apiserver.rest.http1 import Request, Response
from apiserver.rest.status import http_error

_GO_INT = re.compile(r"[+-]?[0-9]+")  # what strconv.ParseInt(s, 10, 64) takes


def _unreachable(why: str) -> ApiError:
    return errors.unavailable(f"error trying to reach service: {why}")


def _dial_error(ip: str, port: int, e: BaseException) -> ApiError:
    """A failed dial in the words of Go's net.Dial, which kubectl shows from kube-apiserver."""
    if isinstance(e, TimeoutError):
        return _unreachable(f"dial tcp {ip}:{port}: i/o timeout")
    if isinstance(e, ssl.SSLError):  # connected, then no TLS (https: to a plain server, say)
        return _unreachable(f"tls: {(e.reason or str(e)).lower().replace('_', ' ')}")
    # asyncio words a refused connect its own way: the errno's text is what Go shows
    reason = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e)
    return _unreachable(f"dial tcp {ip}:{port}: connect: {reason[:1].lower()}{reason[1:]}")


def _exchange_error(ip: str, port: int, e: BaseException) -> ApiError:
    """A connection that failed once made, near the words of Go's HTTP client."""
    if isinstance(e, TimeoutError):
        return _unreachable("net/http: timeout awaiting response headers")
    if isinstance(e, asyncio.IncompleteReadError):  # closed before a whole response head
        return _unreachable("EOF")
    if isinstance(e, OSError) and e.errno:
        return _unreachable(f"read tcp {ip}:{port}: read: {os.strerror(e.errno).lower()}")
    return _unreachable(f"net/http: HTTP/1.x transport connection broken: {e}")


def _no_route(ip: str, port: int) -> ApiError:
    return _dial_error(ip, port, OSError(errno.ENETUNREACH, "network is unreachable"))


def _global_unicast(ip: str) -> bool:
    """Go's net.IP.IsGlobalUnicast: not loopback, link-local, multicast, unspecified, broadcast."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not (addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified
                or str(addr) == "255.255.255.255")


def _pod_ips(pod) -> list[str]:
    return [p.ip for p in pod.status.pod_ips] or ([pod.status.pod_ip] if pod.status.pod_ip else [])


def _port_number(port: str, scheme: str) -> int:
    """The TCP port Go's dialer makes of ``port`` ("" when the URL has none: the scheme's)."""
    if not port:
        return 443 if scheme == "https" else 80
    if port.isdigit():
        if int(port) > 65535:
            raise _unreachable(f"dial tcp: address {port}: invalid port")
        return int(port)
    try:
        return socket.getservbyname(port, "tcp")
    except OSError:
        raise _unreachable(f"dial tcp: lookup tcp/{port}: unknown port") from None


class WorkloadProxy:
    """The pods and services proxy subresources; ``network`` None: the apiserver has no machine
    on the pods' network (every dial finds no route)."""

    def __init__(self, registry, network: PodNetwork | None) -> None:
        self.registry = registry
        self.network = network or PodNetwork()
        self._pods = resources.lookup("pods")
        self._services = resources.lookup("services")
        self._endpoints = resources.lookup("endpoints")
        self._nodes = resources.lookup("nodes")

    async def handle(self, req: Request, t: routing.Target) -> Response:
        if req.method not in proxyrelay.METHODS:
            return http_error(405, "the server does not allow this method on the requested resource")
        if t.res.name == "pods":
            scheme, pod, ip, port = await self.pod_location(t.namespace, t.name)
        else:
            scheme, pod, ip, port = await self.service_location(t.namespace, t.name)
        await self._check_on_the_plane(pod, ip, port)
        network = self.network

        async def open_():
            try:
                return await network.open(ip, port, tls=scheme == "https")
            except (OSError, TimeoutError) as e:
                raise _dial_error(ip, port, e) from None

        return await proxyrelay.relay(req, t.path, f"{ip}:{port}", open_, lambda e: _exchange_error(ip, port, e))

    async def pod_location(self, namespace: str, id_: str):
        """(scheme, pod, IP, port) a pods/proxy request goes to."""
        split = proxyrelay.split_scheme_name_port(id_)
        if split is None:
            raise errors.bad_request(f'invalid pod request "{id_}"')
        scheme, name, port = split
        pod = await self.registry.get(self._pods, namespace, name)
        if not port:
            port = next((str(c.ports[0].container_port) for c in pod.spec.containers if c.ports), "")
        ips = _pod_ips(pod)
        if not ips or not _global_unicast(ips[0]):
            raise errors.bad_request("address not allowed")
        return scheme, pod, ips[0], _port_number(port, scheme)

    async def service_location(self, namespace: str, id_: str):
        """(scheme, pod, IP, port) a services/proxy request goes to: one of the Service's ready
        endpoints, upstream's way."""
        split = proxyrelay.split_scheme_name_port(id_)
        if split is None:
            raise errors.bad_request(f'invalid service request "{id_}"')
        scheme, name, port_name = split
        if _GO_INT.fullmatch(port_name):
            svc = await self.registry.get(self._services, namespace, name)
            number = int(port_name)
            found = next((p for p in svc.spec.ports if p.port == number), None)
            if found is None:
                raise errors.unavailable(f'no service port {number} found for service "{name}"')
            port_name = found.name
        eps = await self.registry.get(self._endpoints, namespace, name)
        if not eps.subsets:
            raise errors.unavailable(f'no endpoints available for service "{name}"')
        subsets = list(eps.subsets)
        start = random.randrange(len(subsets))
        for subset in subsets[start:] + subsets[:start]:
            if not subset.addresses:
                continue
            for ep_port in subset.ports:
                if ep_port.name != port_name:
                    continue
                addresses = list(subset.addresses)
                first = random.randrange(len(addresses))
                for addr in addresses[first:] + addresses[:first]:
                    pod = await self._pod_of(namespace, addr)
                    if pod is not None:
                        return scheme, pod, addr.ip, ep_port.port
        raise errors.unavailable(f'no endpoints available for service "{id_}"')

    async def _pod_of(self, namespace: str, addr):
        """The pod an endpoint address is, if it is one of ``namespace`` with that IP (upstream's
        isValidAddress); else None."""
        ref = addr.target_ref
        if not ref.name or ref.namespace != namespace:
            return None
        try:
            pod = await self.registry.get(self._pods, namespace, ref.name)
        except ApiError:
            return None
        return pod if addr.ip in _pod_ips(pod) else None

    async def _check_on_the_plane(self, pod, ip: str, port: int) -> None:
        """Refuse an address that is not where this plane runs the pod."""
        if not pod.spec.node_name:
            raise _no_route(ip, port)
        try:
            node = await self.registry.get(self._nodes, "", pod.spec.node_name)
        except ApiError:
            raise _no_route(ip, port) from None
        if kubelet_port(node) <= 0:  # a hollow node: its pods' IPs are on no network
            raise _no_route(ip, port)
        addr = ipaddress.ip_address(ip)
        try:
            in_cidr = bool(node.spec.pod_cidr) and addr in ipaddress.ip_network(node.spec.pod_cidr, strict=False)
        except ValueError:
            in_cidr = False
        if not in_cidr and ip not in {a.address for a in node.status.addresses}:
            raise errors.bad_request("address not allowed")
