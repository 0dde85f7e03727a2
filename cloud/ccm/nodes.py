"""The node controllers: initializing Nodes from their instances (``CloudNodeController``) and
following instances that stop or go away (``CloudNodeLifecycleController``). See cloud.ccm."""

from __future__ import annotations

from apiserver.errors import ApiError
from cloud.ccm.common import (INSTANCE_TYPE_LABEL, REGION_LABEL, SHUTDOWN_TAINT, UNINITIALIZED_TAINT, ZONE_LABEL,
                              find_instance, has_taint, log, ready_status)
from cloud.client import CloudClient
from controllers.base import Controller
from controllers.events import WARNING
from controllers.informer import deep_copy


class CloudNodeController(Controller):
    name = "cloud-node"

    def __init__(self, client, cloud: CloudClient, informers, recorder) -> None:
        self.client, self.cloud, self.recorder = client, cloud, recorder
        self.nodes = informers.informer("nodes")
        super().__init__([self.nodes], 1)
        self.nodes.add_handler(self._changed, lambda old, new: self._changed(new))

    def _changed(self, node) -> None:
        if has_taint(node, UNINITIALIZED_TAINT):
            self.queue.add(node.metadata.name)

    def sync(self, name: str) -> None:
        node = self.nodes.store.get(name)
        if node is None or not has_taint(node, UNINITIALIZED_TAINT):
            return
        inst = find_instance(self.cloud.instances(), node)
        if inst is None:
            self.recorder.event(node, WARNING, "InstanceNotFound",
                                f"no instance of the cloud is named {name}; the node stays uninitialized")
            raise RuntimeError(f"node {name}: no instance in the cloud (will retry)")
        fresh = self.client.get("nodes", name, "")
        status = deep_copy(fresh)
        del status.status.addresses[:]
        status.status.addresses.add(type="InternalIP", address=inst["internalIP"])
        status.status.addresses.add(type="Hostname", address=inst["name"])
        if list(status.status.addresses) != list(fresh.status.addresses):
            fresh = self.client.update_status(status)
        updated = deep_copy(fresh)
        if not updated.spec.provider_id:
            updated.spec.provider_id = inst["providerID"]
        updated.metadata.labels.update({ZONE_LABEL: inst["zone"], REGION_LABEL: inst["region"],
                                        INSTANCE_TYPE_LABEL: inst["type"]})
        kept = [t for t in updated.spec.taints if t.key != UNINITIALIZED_TAINT]
        del updated.spec.taints[:]
        updated.spec.taints.extend(kept)
        self.client.update(updated)
        log.info("node %s initialized: %s %s %s", name, inst["providerID"], inst["zone"], inst["type"])


class CloudNodeLifecycleController(Controller):
    """No work queue: a monitor every ``period`` looks at every node."""

    name = "cloud-node-lifecycle"

    def __init__(self, client, cloud: CloudClient, informers, recorder, period: float) -> None:
        self.client, self.cloud, self.recorder, self.period = client, cloud, recorder, period
        self.nodes = informers.informer("nodes")
        super().__init__([self.nodes], 1)

    def _start_threads(self) -> None:
        self.every(self.period, self.monitor)

    def monitor(self) -> None:
        not_ready, tainted_ready = [], []
        for node in self.nodes.store.list():
            if ready_status(node) == "True":
                if has_taint(node, SHUTDOWN_TAINT):
                    tainted_ready.append(node)
            else:
                not_ready.append(node)
        for node in tainted_ready:
            self._set_shutdown_taint(node.metadata.name, False)
        if not not_ready:
            return
        instances = self.cloud.instances()
        for node in not_ready:
            inst = find_instance(instances, node)
            if inst is None:
                log.info("node %s: its instance is gone; deleting the Node", node.metadata.name)
                self.recorder.event(node, "Normal", "DeletingNode",
                                    f"Deleting node {node.metadata.name} because it does not exist in the cloud provider")
                try:
                    self.client.delete("nodes", node.metadata.name, "", uid=node.metadata.uid)
                except ApiError as e:
                    if e.reason not in ("NotFound", "Conflict"):
                        raise
            elif inst["state"] == "stopped" and not has_taint(node, SHUTDOWN_TAINT):
                self._set_shutdown_taint(node.metadata.name, True)

    def _set_shutdown_taint(self, name: str, on: bool) -> None:
        try:
            node = deep_copy(self.client.get("nodes", name, ""))
        except ApiError as e:
            if e.reason == "NotFound":
                return
            raise
        kept = [t for t in node.spec.taints if t.key != SHUTDOWN_TAINT]
        del node.spec.taints[:]
        node.spec.taints.extend(kept)
        if on:
            node.spec.taints.add(key=SHUTDOWN_TAINT, effect="NoSchedule")
        self.client.update(node)
        log.info("node %s: shutdown taint %s", name, "added" if on else "removed")


