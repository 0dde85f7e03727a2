"""The cloud's API: HTTP/1.1 with JSON bodies on 127.0.0.1, one thread per request.

    GET    /v1/metadata                              provider, region, zones, instance types
    GET    /v1/instances                             {"items": [instance, ...]}
    POST   /v1/instances {"type", "zone"?}           a new instance (outside any group)
    GET    /v1/instances/<id>                        404 once terminated
    DELETE /v1/instances/<id>
    POST   /v1/instances/<id>/stop | /start
    GET    /v1/nodegroups
    POST   /v1/nodegroups {"name", "min", "max", "type"}
    GET    /v1/nodegroups/<name>                     with "instances": [id, ...]
    POST   /v1/nodegroups/<name>/increase {"delta"}
    POST   /v1/nodegroups/<name>/delete-instances {"ids": [...]}
    GET    /v1/loadbalancers
    GET    /v1/loadbalancers/<name>
    PUT    /v1/loadbalancers/<name> {"ports": [{"protocol", "port", "nodePort"}], "nodes": [ip]}
    DELETE /v1/loadbalancers/<name>
    GET    /v1/routes
    PUT    /v1/routes/<name> {"cidr", "instance"}
    DELETE /v1/routes/<name>

Errors answer {"error": text} with 400 (bad request), 404 (no such thing), 409 (conflict).
"""

from __future__ import annotations

import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloud.loadbalancer import LoadBalancerError
from cloud.provider import Cloud, CloudError

log = logging.getLogger("cloud.server")


def make_server(cloud: Cloud, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"cloud": cloud})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


class _Handler(BaseHTTPRequestHandler):
    cloud: Cloud
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                raise CloudError(400, "the body is not JSON") from None
            if not isinstance(body, dict):
                raise CloudError(400, "the body must be a JSON object")
            status, answer = route(self.cloud, method, self.path.split("?", 1)[0], body)
        except (CloudError, LoadBalancerError) as e:
            status, answer = e.status, {"error": str(e)}
        except Exception as e:  # a bug or a failing ip/nft command: say what, keep serving
            log.exception("%s %s", method, self.path)
            status, answer = 500, {"error": f"{type(e).__name__}: {e}"}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _need(body: dict, key: str, kind=str):
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise CloudError(400, f"the body needs {key!r} ({kind.__name__})")
    return value


def route(cloud: Cloud, method: str, path: str, body: dict) -> tuple[int, object]:
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] != "v1":
        raise CloudError(404, f"no such path {path}; the API is under /v1")
    parts = parts[1:]
    what = parts[0] if parts else ""
    rest = parts[1:]
    if what == "metadata" and method == "GET" and not rest:
        return 200, cloud.metadata()
    if what == "instances":
        if not rest:
            if method == "GET":
                return 200, {"items": [i.view() for i in cloud.list_instances()]}
            if method == "POST":
                inst = cloud.create_instance(_need(body, "type"), body.get("zone", ""))
                return 201, inst.view()
        elif len(rest) == 1:
            if method == "GET":
                return 200, cloud.get_instance(rest[0]).view()
            if method == "DELETE":
                cloud.delete_instance(rest[0])
                return 200, {}
        elif len(rest) == 2 and method == "POST" and rest[1] in ("stop", "start"):
            (cloud.stop_instance if rest[1] == "stop" else cloud.start_instance)(rest[0])
            return 200, cloud.get_instance(rest[0]).view()
    if what == "nodegroups":
        if not rest:
            if method == "GET":
                return 200, {"items": [_group_view(cloud, g) for g in list(cloud.groups.values())]}
            if method == "POST":
                name = _need(body, "name")
                if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?", name):
                    raise CloudError(400, f"bad node group name {name!r}: lowercase letters, digits, '-'")
                lo, hi, type_ = _need(body, "min", int), _need(body, "max", int), _need(body, "type")
                g = cloud.create_group(name, lo, hi, type_)
                return 201, _group_view(cloud, g)
        elif len(rest) == 1 and method == "GET":
            return 200, _group_view(cloud, cloud.get_group(rest[0]))
        elif len(rest) == 2 and method == "POST" and rest[1] == "increase":
            return 200, _group_view(cloud, cloud.increase_size(rest[0], _need(body, "delta", int)))
        elif len(rest) == 2 and method == "POST" and rest[1] == "delete-instances":
            ids = _need(body, "ids", list)
            return 200, _group_view(cloud, cloud.delete_group_instances(rest[0], [str(i) for i in ids]))
    if what == "loadbalancers":
        if not rest and method == "GET":
            return 200, {"items": [lb.view() for lb in cloud.list_lbs()]}
        if len(rest) == 1:
            if method == "GET":
                return 200, cloud.get_lb(rest[0]).view()
            if method == "PUT":
                return 200, cloud.ensure_lb(rest[0], _need(body, "ports", list), _need(body, "nodes", list)).view()
            if method == "DELETE":
                cloud.delete_lb(rest[0])
                return 200, {}
    if what == "routes":
        if not rest and method == "GET":
            return 200, {"items": cloud.list_routes()}
        if len(rest) == 1:
            if method == "PUT":
                return 200, cloud.create_route(rest[0], _need(body, "cidr"), _need(body, "instance"))
            if method == "DELETE":
                cloud.delete_route(rest[0])
                return 200, {}
    raise CloudError(404 if method == "GET" else 405, f"no {method} {path}")


def _group_view(cloud: Cloud, group) -> dict:
    view = group.view()
    view["instances"] = [i.id for i in cloud.group_members(group.name)]
    return view
