"""The cloud's API as the cluster's components call it (k8s.io/cloud-provider's interfaces, in
the few calls this cloud has): instances by id, node groups, load balancers, routes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


class CloudApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"cloud API: {status} {message}")
        self.status = status
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404


class CloudClient:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self.timeout = timeout

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + "/v1" + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", "")
            except ValueError:
                message = e.reason
            raise CloudApiError(e.code, message) from None
        except urllib.error.URLError as e:
            raise CloudApiError(0, f"{self.url} does not answer ({e.reason}): is `python -m cloud` running?") from None

    def metadata(self) -> dict:
        return self._call("GET", "/metadata")

    # instances
    def instances(self) -> list[dict]:
        return self._call("GET", "/instances")["items"]

    def instance(self, id_: str) -> dict:
        return self._call("GET", f"/instances/{id_}")

    def create_instance(self, type_: str, zone: str = "") -> dict:
        return self._call("POST", "/instances", {"type": type_, "zone": zone})

    def delete_instance(self, id_: str) -> None:
        self._call("DELETE", f"/instances/{id_}")

    def stop_instance(self, id_: str) -> dict:
        return self._call("POST", f"/instances/{id_}/stop", {})

    def start_instance(self, id_: str) -> dict:
        return self._call("POST", f"/instances/{id_}/start", {})

    # node groups
    def node_groups(self) -> list[dict]:
        return self._call("GET", "/nodegroups")["items"]

    def node_group(self, name: str) -> dict:
        return self._call("GET", f"/nodegroups/{name}")

    def create_node_group(self, name: str, min_: int, max_: int, type_: str) -> dict:
        return self._call("POST", "/nodegroups", {"name": name, "min": min_, "max": max_, "type": type_})

    def increase_size(self, name: str, delta: int) -> dict:
        return self._call("POST", f"/nodegroups/{name}/increase", {"delta": delta})

    def delete_group_instances(self, name: str, ids: list[str]) -> dict:
        return self._call("POST", f"/nodegroups/{name}/delete-instances", {"ids": list(ids)})

    # load balancers
    def load_balancers(self) -> list[dict]:
        return self._call("GET", "/loadbalancers")["items"]

    def load_balancer(self, name: str) -> dict:
        return self._call("GET", f"/loadbalancers/{name}")

    def ensure_load_balancer(self, name: str, ports: list[dict], nodes: list[str]) -> dict:
        return self._call("PUT", f"/loadbalancers/{name}", {"ports": ports, "nodes": nodes})

    def delete_load_balancer(self, name: str) -> None:
        self._call("DELETE", f"/loadbalancers/{name}")

    # routes
    def routes(self) -> list[dict]:
        return self._call("GET", "/routes")["items"]

    def create_route(self, name: str, cidr: str, instance: str) -> dict:
        return self._call("PUT", f"/routes/{name}", {"cidr": cidr, "instance": instance})

    def delete_route(self, name: str) -> None:
        self._call("DELETE", f"/routes/{name}")
