"""metrics.k8s.io/v1beta1, the resource metrics API (``kubectl top``), served by the apiserver
itself as metrics-server serves it behind kube-apiserver's aggregator: NodeMetrics and
PodMetrics, get and list, from each real node's kubelet (/metrics/resource, scraped with the
apiserver's kubelet client certificate: apiserver/resourcemetrics/).

The caller was authorized by the gate as upstream's RequestInfo reads these paths (resource
``nodes`` or ``pods`` in group metrics.k8s.io, verb get or list: the
system:aggregated-metrics-reader ClusterRole of apiserver/auth/policy.py grants them, aggregated
to view, edit and admin).

As metrics-server answers: lists hold only what has metrics (a hollow node, with no kubelet
endpoint, never has; a node or pod read once not yet), sorted by name; a GET of an existing node
or pod without metrics is NotFound ``nodemetrics.metrics.k8s.io "N" not found`` /
``podmetrics.metrics.k8s.io "NS/N" not found``, of one that does not exist its lister's NotFound;
labelSelector selects nodes or pods by their labels, fieldSelector by metadata.name and
metadata.namespace only (others: ``field label not supported``); no watch. CPU is written in
nanocores ("123456n", canonical as Kubernetes' quantities print), memory in bytes (binary
suffixes: "12345Ki"), ``window`` as Go prints a duration, Tables with metrics-server's columns.
"""

from __future__ import annotations

from datetime import datetime, timezone
from fractions import Fraction

from apiserver import errors, resources
from apiserver.errors import ApiError
from apiserver.kubelet import KubeletClients, kubelet_port
from apiserver.quantity import format_quantity, parse_quantity
from apiserver.registry import now_rfc3339
from apiserver.rest import proxyrelay, tables
from apiserver.rest.http1 import Request, Response, json_response
from apiserver.rest.status import http_error
from apiserver.resourcemetrics.scraper import Scraper
from apiserver.resourcemetrics.store import Usage
from apiserver.selectors import parse_field_selector

GROUP, VERSION = "metrics.k8s.io", "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
PREFIX = f"/apis/{GROUP}/"
# the most a kubelet's /metrics/resource may be (about 400 bytes a container)
MAX_BODY = 16 << 20
# the field labels metrics-server's scheme converts (apimachinery's DefaultMetaV1FieldSelectorConversion)
FIELDS = ("metadata.name", "metadata.namespace")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_BINARY = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]


def cpu_quantity(nanocores: int) -> str:
    """Nanocores as metrics-server writes them: a DecimalSI quantity of scale -9, canonical
    ("123456789n", "250m", "2")."""
    return format_quantity(Fraction(nanocores, 1_000_000_000))


def memory_quantity(n: int) -> str:
    """Bytes as a BinarySI quantity prints: the largest power of 1024 that divides it
    ("12345Ki"), else the number; under 1024 written in decimal SI, as Kubernetes does."""
    if -1024 < n < 1024:
        return format_quantity(n)
    i = 0
    while i < len(_BINARY) - 1 and n % 1024 == 0:
        n //= 1024
        i += 1
    return f"{n}{_BINARY[i]}"


def go_duration(ns: int) -> str:
    """A duration as Go's time.Duration.String writes it ("15.012s", "1m0.5s", "500ms")."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)

    def frac(n: int, unit: int) -> str:
        whole, part = divmod(n, unit)
        digits = str(part).rjust(len(str(unit)) - 1, "0").rstrip("0")
        return f"{whole}.{digits}" if digits else str(whole)

    if ns < 1_000_000_000:
        for suffix, unit in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= unit:
                return sign + frac(ns, unit) + suffix
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    head = f"{hours}h{minutes}m" if hours else (f"{minutes}m" if minutes else "")
    return f"{sign}{head}{frac(rest, 1_000_000_000)}s"


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _usage(u: Usage) -> dict:
    return {"cpu": cpu_quantity(u.cpu_nanocores), "memory": memory_quantity(u.memory)}


def _meta(obj, namespaced: bool) -> dict:
    meta = {"name": obj.metadata.name}
    if namespaced:
        meta["namespace"] = obj.metadata.namespace
    meta["creationTimestamp"] = now_rfc3339()  # metrics-server's: the time of the answer
    if obj.metadata.labels:
        meta["labels"] = dict(obj.metadata.labels)
    return meta


def node_metrics(node, u: Usage) -> dict:
    return {"metadata": _meta(node, False), "timestamp": _time(u.time_ns), "window": go_duration(u.window_ns),
            "usage": _usage(u)}


def pod_metrics(pod, containers: list[tuple[str, Usage]]) -> dict:
    # the pod's time and window: its earliest container's, as metrics-server's
    first = min((u for _, u in containers), key=lambda u: u.time_ns, default=None)
    return {"metadata": _meta(pod, True),
            "timestamp": _time(first.time_ns) if first else "0001-01-01T00:00:00Z",
            "window": go_duration(first.window_ns) if first else "0s",
            "containers": [{"name": name, "usage": _usage(u)} for name, u in containers]}


def _table(items: list[dict], pods: bool, content_type: str, include: str) -> Response:
    """metrics-server's Table: Name, cpu, memory (a pod's: its containers' sum), Window."""
    columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name of the resource",
                "priority": 0}]
    columns += [{"name": n, "type": "string", "format": f, "description": "", "priority": 0}
                for n, f in (("cpu", "quantity"), ("memory", "quantity"), ("Window", "duration"))]
    rows = []
    for item in items:
        if pods:
            cpu = sum((parse_quantity(c["usage"]["cpu"]) for c in item["containers"]), Fraction(0))
            mem = sum((parse_quantity(c["usage"]["memory"]) for c in item["containers"]), Fraction(0))
            cells = [item["metadata"]["name"], format_quantity(cpu), memory_quantity(int(mem)), item["window"]]
        else:
            cells = [item["metadata"]["name"], item["usage"]["cpu"], item["usage"]["memory"], item["window"]]
        row = {"cells": cells}
        kind = "PodMetrics" if pods else "NodeMetrics"
        if include == "Object":
            row["object"] = {"kind": kind, "apiVersion": API_VERSION, **item}
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": item["metadata"]}
        rows.append(row)
    api_version = content_type.split("v=")[1].split(";")[0]
    return json_response({"kind": "Table", "apiVersion": f"meta.k8s.io/{api_version}", "metadata": {},
                          "columnDefinitions": columns, "rows": rows}, content_type=content_type)


class MetricsApi:
    """``kubelets`` None: no kubelet is scraped, so nothing has metrics."""

    def __init__(self, registry, kubelets: KubeletClients | None, scraper: Scraper | None = None) -> None:
        self.registry = registry
        self.kubelets = kubelets
        self.scraper = scraper or Scraper(self.fetch)
        self._nodes = resources.lookup("nodes")
        self._pods = resources.lookup("pods")

    async def fetch(self, node: str, port: int) -> str:
        """A kubelet's /metrics/resource, as the apiserver's kubelet client (its certificate)."""
        host = self.kubelets.kubelet_host
        reader, writer = await self.kubelets.open_http(host, port)
        try:
            writer.write(f"GET /metrics/resource HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/plain\r\n"
                         f"User-Agent: kube-apiserver (resource metrics)\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            status, headers = await proxyrelay.read_response_head(reader)
            if status != 200:
                raise ValueError(f"the kubelet answered {status}")
            body = bytearray()
            async for piece in proxyrelay.body_pieces(reader, headers):
                body += piece
                if len(body) > MAX_BODY:
                    raise ValueError(f"an answer over {MAX_BODY} bytes")
            return body.decode("utf-8", "replace")
        finally:
            writer.close()

    async def handle(self, req: Request, path: str) -> Response | None:
        """The answer to a request under PREFIX; None for discovery's paths (the group, the version)."""
        parts = [p for p in path.split("/") if p]
        if len(parts) <= 3:
            return None
        rest = parts[3:]
        namespace = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        if parts[2] != VERSION or rest[0] not in ("nodes", "pods") or len(rest) > 2 \
                or (rest[0] == "nodes" and namespace) or (rest[0] == "pods" and len(rest) == 2 and not namespace):
            return http_error(404, "the server could not find the requested resource")
        resource, name = rest[0], rest[1] if len(rest) == 2 else ""
        if req.method not in ("GET", "HEAD"):
            return http_error(405, "the server does not allow this method on the requested resource")
        if not name and req.param("watch") in _TRUE:
            raise ApiError("MethodNotAllowed",
                           f'watch is not supported on resources of kind "{resource}.{GROUP}"',
                           kind=f"{resource}.{GROUP}")
        if resource == "nodes":
            items = await self._node_metrics(req, name)
        else:
            items = await self._pod_metrics(req, namespace, name)
        pods = resource == "pods"
        table = tables.wants_table(req.headers.get("accept", ""))
        if table:
            return _table(items, pods, table, req.param("includeObject"))
        kind = "PodMetrics" if pods else "NodeMetrics"
        if name:
            return json_response({"kind": kind, "apiVersion": API_VERSION, **items[0]})
        return json_response({"kind": f"{kind}List", "apiVersion": API_VERSION, "metadata": {}, "items": items})

    async def _store(self):
        targets = {}
        if self.kubelets is not None:
            for node in (await self.registry.list(self._nodes)).items:
                if kubelet_port(node) > 0:
                    targets[node.metadata.name] = kubelet_port(node)
        return await self.scraper.fresh(targets)

    def _field_selector(self, req: Request, res) -> str:
        text = req.param("fieldSelector")
        for r in parse_field_selector(text, res).requirements:
            if r.field not in FIELDS:
                raise errors.bad_request(f"field label not supported: {r.field}")
        return text

    async def _node_metrics(self, req: Request, name: str) -> list[dict]:
        if name:
            try:
                nodes = [await self.registry.get(self._nodes, "", name)]
            except ApiError as e:
                if e.reason == "NotFound":  # what metrics-server's node lister answers
                    raise ApiError("NotFound", f'node "{name}" not found', kind="node", name=name) from None
                raise
        else:
            nodes = (await self.registry.list(self._nodes, label_selector=req.param("labelSelector"),
                                              field_selector=self._field_selector(req, self._nodes))).items
        store = await self._store()
        items = [node_metrics(n, u) for n in nodes if (u := store.node(n.metadata.name)) is not None]
        items.sort(key=lambda i: i["metadata"]["name"])
        if name and not items:
            raise ApiError("NotFound", f'nodemetrics.{GROUP} "{name}" not found', kind=f"nodemetrics.{GROUP}",
                           name=name)
        return items

    async def _pod_metrics(self, req: Request, namespace: str, name: str) -> list[dict]:
        if name:
            pods = [await self.registry.get(self._pods, namespace, name)]
        else:
            pods = (await self.registry.list(self._pods, namespace, label_selector=req.param("labelSelector"),
                                             field_selector=self._field_selector(req, self._pods))).items
        store = await self._store()
        items = [pod_metrics(p, c) for p in pods
                 if (c := store.pod(p.metadata.namespace, p.metadata.name)) is not None]
        items.sort(key=lambda i: (i["metadata"]["namespace"], i["metadata"]["name"]))
        if name and not items:
            qualified = f"{namespace}/{name}"
            raise ApiError("NotFound", f'podmetrics.{GROUP} "{qualified}" not found', kind=f"podmetrics.{GROUP}",
                           name=qualified)
        return items
