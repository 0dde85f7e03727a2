"""The route controller: the cloud's route table follows the Nodes' podCIDRs. See cloud.ccm."""

from __future__ import annotations

from apiserver.errors import ApiError
from cloud.ccm.common import log
from cloud.client import CloudApiError, CloudClient
from cloud.provider import instance_id_of
from controllers.base import Controller
from controllers.informer import deep_copy
from controllers.podutil import get_condition, now_rfc3339


class RouteController(Controller):
    name = "route"

    def __init__(self, client, cloud: CloudClient, informers, period: float) -> None:
        self.client, self.cloud, self.period = client, cloud, period
        self.nodes = informers.informer("nodes")
        super().__init__([self.nodes], 1)
        self.nodes.add_handler(lambda n: self.queue.add("routes"), lambda o, n: self._updated(o, n),
                               lambda n: self.queue.add("routes"))

    def _updated(self, old, new) -> None:
        if (old.spec.pod_cidr, old.spec.provider_id) != (new.spec.pod_cidr, new.spec.provider_id):
            self.queue.add("routes")

    def _start_threads(self) -> None:
        super()._start_threads()
        self.every(self.period, lambda: self.queue.add("routes"))
        self.queue.add("routes")

    def sync(self, _key) -> None:
        routes = {r["name"]: r for r in self.cloud.routes()}
        wanted = {}
        for node in self.nodes.store.list():
            inst = instance_id_of(node.spec.provider_id)
            if node.spec.pod_cidr and inst:
                wanted[node.metadata.name] = (node.spec.pod_cidr, inst)
        for name, route in list(routes.items()):
            if name not in wanted or (route["cidr"], route["instance"]) != wanted[name]:
                self.cloud.delete_route(name)
                del routes[name]
        current = {n: (r["cidr"], r["instance"]) for n, r in routes.items()}
        for name, (cidr, inst) in wanted.items():
            if current.get(name) != (cidr, inst):
                try:
                    self.cloud.create_route(name, cidr, inst)
                except CloudApiError as e:
                    if e.not_found:
                        continue  # the instance is gone; the lifecycle controller deletes the node
                    raise
                log.info("route %s: %s -> %s", name, cidr, inst)
            self._network_available(name)

    def _network_available(self, name: str) -> None:
        node = self.nodes.store.get(name)
        cond = get_condition(node.status.conditions, "NetworkUnavailable") if node is not None else None
        if node is None or (cond is not None and cond.status == "False"):
            return
        try:
            fresh = deep_copy(self.client.get("nodes", name, ""))
            cond = get_condition(fresh.status.conditions, "NetworkUnavailable")
            if cond is None:
                cond = fresh.status.conditions.add(type="NetworkUnavailable")
            now = now_rfc3339()
            cond.status, cond.reason, cond.message = "False", "RouteCreated", "RouteController created a route"
            cond.last_transition_time = cond.last_heartbeat_time = now
            self.client.update_status(fresh)
        except ApiError as e:
            if e.reason not in ("NotFound", "Conflict"):
                raise


