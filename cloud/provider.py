"""The cloud on this machine: instances, node groups, load balancers and routes.

An instance is a real node as ``node.plane.RealNodes`` lays it out (namespace ``<prefix>-n<i>``,
address 10.250.0.<i+1>, podCIDR 10.244.<i>.0/24) with its runtime, kubelet and kube-proxy run as
processes of this service, the way a machine's init runs them: started when the instance starts,
restarted when one dies, stopped (and its containers gone, as at power-off) when the instance
stops or is deleted. States: running, stopped, shutting-down (deleted, its processes and
namespace going; still listed), then no longer listed. The kubelet runs with
``--cloud-provider=external`` and the instance type's capacity (``--cpu``/``--memory``/``--pods``), so the Node registers tainted uninitialized and the
cloud-controller-manager fills in what only the cloud knows.

Instances join the fabric without podCIDR routes: the cloud's route table holds those
(``create_route``), and the cloud writes it into every running instance's namespace; a new
instance gets the whole table at boot.

A node group keeps ``target`` instances of one type alive (between ``min`` and ``max``): an
instance deleted from outside the group is replaced, as a cloud's instance group does. Groups
spread their instances over the zones in turn.

Load balancers are ``cloud.loadbalancer``'s: virtual IPs in a router namespace on the fabric.
``<prefix>-inet`` (10.250.255.1) is a machine outside the cluster ("the internet") from which a
client may try them.

Not a cloud's guarantees: state lives in this process only (a restarted service starts empty
and its ``stop`` removes everything it made), no health checks of its own (the cluster tells it
which nodes are ready), at most 250 instances over the service's life.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from cloud.loadbalancer import LoadBalancer, Router
from node import network
from node.plane import RealNode, RealNodes

log = logging.getLogger("cloud.provider")

PROVIDER = "local"
REGION = "local-1"
ZONES = ("local-1a", "local-1b")
# What each type reports as the node's capacity (the runtime does not cap the node as a whole).
INSTANCE_TYPES = {
    "small": {"cpu": "1", "memory": "1Gi", "pods": "16"},
    "medium": {"cpu": "2", "memory": "2Gi", "pods": "32"},
    "large": {"cpu": "4", "memory": "4Gi", "pods": "64"},
}
INTERNET_IP = "10.250.255.1"
MAX_INDEX = 250  # node indexes 0..249; 10.250.25x.x belong to the cloud's own namespaces

RUNNING, STOPPED, SHUTTING_DOWN, TERMINATED = "running", "stopped", "shutting-down", "terminated"


class CloudError(Exception):
    """``status`` is the HTTP status the API answers with (400, 404, 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def provider_id(zone: str, instance_id: str) -> str:
    """The Node's spec.providerID for an instance: ``local:///<zone>/<id>``."""
    return f"{PROVIDER}:///{zone}/{instance_id}"


def instance_id_of(provider_id_: str) -> str:
    """The instance id in a providerID (the text after its last '/'), "" when not ours."""
    if not provider_id_.startswith(f"{PROVIDER}://"):
        return ""
    return provider_id_.rsplit("/", 1)[-1]


@dataclass
class Instance:
    id: str
    node: RealNode
    type: str
    zone: str
    group: str
    state: str = RUNNING
    launched: float = field(default_factory=time.time)
    procs: dict = field(default_factory=dict)  # name -> Popen

    def view(self) -> dict:
        return {"id": self.id, "providerID": provider_id(self.zone, self.id), "name": self.node.name,
                "type": self.type, "zone": self.zone, "region": REGION, "group": self.group,
                "state": self.state, "internalIP": self.node.ip, "podCIDR": self.node.pod_cidr,
                "netns": self.node.netns, "launchTime": self.launched}


@dataclass
class NodeGroup:
    name: str
    min: int
    max: int
    type: str
    target: int

    def view(self) -> dict:
        return {"name": self.name, "min": self.min, "max": self.max, "type": self.type,
                "targetSize": self.target}


class Cloud:
    def __init__(self, data_dir: str | os.PathLike, apiserver: str, *, prefix: str | None = None,
                 zones: tuple[str, ...] = ZONES, kubelet_args: tuple[str, ...] = (),
                 proxy_args: tuple[str, ...] = (), monitor_interval: float = 0.5) -> None:
        self.layout = RealNodes(data_dir, 0, prefix)
        self.prefix = self.layout.prefix
        self.apiserver = apiserver
        self.zones = tuple(zones)
        self.kubelet_args, self.proxy_args = tuple(kubelet_args), tuple(proxy_args)
        self.monitor_interval = monitor_interval
        self.router = Router(self.layout.fabric)
        self.internet = f"{self.prefix}-inet"
        self._lock = threading.RLock()
        self.instances: dict[str, Instance] = {}
        self.groups: dict[str, NodeGroup] = {}
        self.routes: dict[str, dict] = {}  # name -> {"name", "cidr", "instance"}
        self._next_index = 0
        self._zone_turn = 0
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    # ---- life ----

    def start(self) -> "Cloud":
        """The fabric, the busybox image, the router and the internet namespaces; then the
        monitor that keeps groups at their target and instances' processes running."""
        self.layout.fabric.create()
        # the control plane's host on the VPC (the apiserver's --bind-netns): the route table
        # reaches it too, so pods' connections to the `kubernetes` Service find their way back
        self.layout.fabric.add_control_plane()
        self.layout.prepare_images()
        self.router.create()
        self.layout.fabric.add_host("inet", INTERNET_IP)
        self._monitor = threading.Thread(target=self._run_monitor, name="cloud-monitor", daemon=True)
        self._monitor.start()
        return self

    def stop(self) -> list[str]:
        """Every instance deleted (processes, containers, namespaces), then every namespace of the
        prefix. Returns what could not be removed."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(10)
        with self._lock:
            doomed = list(self.instances.values())
            for inst in doomed:
                inst.state = TERMINATED
        problems: list[str] = []
        for inst in doomed:
            self._halt(inst)
        for inst in doomed:
            problems += self.layout.remove_node(inst.node)
        network.cleanup(self.prefix)
        return problems

    def metadata(self) -> dict:
        return {"provider": PROVIDER, "region": REGION, "zones": list(self.zones),
                "instanceTypes": INSTANCE_TYPES, "prefix": self.prefix, "router": self.router.netns,
                "internet": self.internet, "internetIP": INTERNET_IP}

    # ---- instances ----

    def create_instance(self, type_: str, zone: str = "", group: str = "") -> Instance:
        if type_ not in INSTANCE_TYPES:
            raise CloudError(400, f"unknown instance type {type_!r}; known: {', '.join(INSTANCE_TYPES)}")
        if zone and zone not in self.zones:
            raise CloudError(400, f"unknown zone {zone!r}; zones: {', '.join(self.zones)}")
        with self._lock:
            if self._stop.is_set():
                raise CloudError(409, "the cloud is stopping")
            if self._next_index >= MAX_INDEX:
                raise CloudError(409, f"this cloud has launched its {MAX_INDEX} instances; restart it")
            index = self._next_index
            self._next_index += 1
            if not zone:
                zone = self.zones[self._zone_turn % len(self.zones)]
                self._zone_turn += 1
            inst = Instance(id=f"i-{secrets.token_hex(4)}", node=self.layout.layout(index), type=type_,
                            zone=zone, group=group)
            self.instances[inst.id] = inst
            self.layout.add_node(inst.node, routes=False)
            self._apply_routes_to(inst)
            self._boot(inst)
        log.info("instance %s (%s, %s, %s) launched as %s", inst.id, type_, zone, group or "no group",
                 inst.node.name)
        return inst

    def get_instance(self, id_: str) -> Instance:
        """Listed until its processes and namespace are gone (state shutting-down meanwhile)."""
        with self._lock:
            inst = self.instances.get(id_)
            if inst is None or inst.state == TERMINATED:
                raise CloudError(404, f"instance {id_} not found")
            return inst

    def _live(self, id_: str) -> Instance:
        inst = self.get_instance(id_)
        if inst.state == SHUTTING_DOWN:
            raise CloudError(409, f"instance {id_} is shutting down")
        return inst

    def list_instances(self) -> list[Instance]:
        with self._lock:
            return [i for i in self.instances.values() if i.state != TERMINATED]

    def delete_instance(self, id_: str, wait: bool = False) -> None:
        """Shutting down at once (out of its group, routes to it dropped); its processes and
        namespace go in the background (``wait``: before returning), then it is no longer
        listed."""
        with self._lock:
            inst = self.get_instance(id_)
            if inst.state == SHUTTING_DOWN:
                return
            inst.state = SHUTTING_DOWN
            self._drop_routes_via(inst)
        log.info("instance %s (%s) terminating", inst.id, inst.node.name)
        t = threading.Thread(target=self._terminate, args=(inst,), name=f"terminate-{id_}", daemon=True)
        t.start()
        if wait:
            t.join()

    def stop_instance(self, id_: str) -> None:
        """Powered off: its processes and containers go, its namespace and disk stay."""
        with self._lock:
            inst = self._live(id_)
            if inst.state == STOPPED:
                return
            inst.state = STOPPED
        self._halt(inst)
        from node.runtime.cleanup import cleanup as runtime_cleanup

        runtime_cleanup(inst.node.prefix, str(inst.node.dir / "runtime"))

    def start_instance(self, id_: str) -> None:
        with self._lock:
            inst = self._live(id_)
            if inst.state == RUNNING:
                return
            inst.state = RUNNING
            self._boot(inst)

    def _commands(self, inst: Instance) -> dict[str, list[str]]:
        cap = INSTANCE_TYPES[inst.type]
        node = inst.node
        return {
            "runtime": self.layout.runtime_command(node),
            "kubelet": self.layout.kubelet_command(
                node, self.apiserver, "--cloud-provider", "external", "--cpu", cap["cpu"],
                "--memory", cap["memory"], "--pods", cap["pods"], *self.kubelet_args),
            "proxy": self.layout.proxy_command(node, self.apiserver, *self.proxy_args),
        }

    def _boot(self, inst: Instance) -> None:
        for name, argv in self._commands(inst).items():
            self._spawn(inst, name, argv)

    def _spawn(self, inst: Instance, name: str, argv: list[str]) -> None:
        with open(inst.node.dir / f"{name}.log", "ab") as out:
            # In this service's process group: whoever kills the group (a test harness's SIGKILL)
            # takes the instances' processes with it, none is left running unowned.
            inst.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def _halt(self, inst: Instance) -> None:
        """SIGTERM to the kubelet and the proxy, then the runtime; SIGKILL what lingers."""
        procs = dict(inst.procs)
        inst.procs.clear()
        for group in (("kubelet", "proxy"), ("runtime",)):
            running = [procs[n] for n in group if n in procs and procs[n].poll() is None]
            for p in running:
                _signal(p, signal.SIGTERM)
            deadline = time.monotonic() + 10
            for p in running:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal(p, signal.SIGKILL)
                    p.wait()

    def _terminate(self, inst: Instance) -> None:
        self._halt(inst)
        try:
            problems = self.layout.remove_node(inst.node)
            if problems:
                log.warning("instance %s left behind: %s", inst.id, problems)
        except Exception:
            log.exception("removing instance %s", inst.id)
        with self._lock:
            inst.state = TERMINATED
            self.instances.pop(inst.id, None)
        log.info("instance %s terminated", inst.id)

    # ---- node groups ----

    def create_group(self, name: str, min_: int, max_: int, type_: str) -> NodeGroup:
        if type_ not in INSTANCE_TYPES:
            raise CloudError(400, f"unknown instance type {type_!r}; known: {', '.join(INSTANCE_TYPES)}")
        if not 0 <= min_ <= max_:
            raise CloudError(400, f"node group {name}: need 0 <= min ({min_}) <= max ({max_})")
        with self._lock:
            if name in self.groups:
                raise CloudError(409, f"node group {name} exists")
            group = self.groups[name] = NodeGroup(name, min_, max_, type_, min_)
        self.reconcile_groups()
        return group

    def get_group(self, name: str) -> NodeGroup:
        with self._lock:
            group = self.groups.get(name)
            if group is None:
                raise CloudError(404, f"node group {name} not found")
            return group

    def increase_size(self, name: str, delta: int) -> NodeGroup:
        with self._lock:
            group = self.get_group(name)
            if delta <= 0:
                raise CloudError(400, f"size increase must be positive, not {delta}")
            if group.target + delta > group.max:
                raise CloudError(409, f"node group {name}: size {group.target}+{delta} is above max {group.max}")
            group.target += delta
        self.reconcile_groups()
        return group

    def delete_group_instances(self, name: str, ids: list[str]) -> NodeGroup:
        """Those instances deleted and the target lowered by as many (never below min)."""
        with self._lock:
            group = self.get_group(name)
            for id_ in ids:
                inst = self._live(id_)
                if inst.group != name:
                    raise CloudError(400, f"instance {id_} is not in node group {name}")
            if group.target - len(ids) < group.min:
                raise CloudError(409, f"node group {name}: size {group.target}-{len(ids)} is below min {group.min}")
            group.target -= len(ids)
            for id_ in ids:
                self.delete_instance(id_)
        return group

    def group_members(self, name: str) -> list[Instance]:
        with self._lock:
            return [i for i in self.instances.values() if i.group == name and i.state in (RUNNING, STOPPED)]

    def reconcile_groups(self) -> None:
        with self._lock:
            for group in self.groups.values():
                members = sorted(self.group_members(group.name), key=lambda i: i.launched)
                for _ in range(group.target - len(members)):
                    self.create_instance(group.type, group=group.name)
                for inst in members[group.target:][::-1] if len(members) > group.target else []:
                    self.delete_instance(inst.id)

    # ---- the monitor ----

    def _run_monitor(self) -> None:
        while not self._stop.wait(self.monitor_interval):
            try:
                self.reconcile_groups()
                self._restart_dead()
            except Exception:
                log.exception("cloud monitor")

    def _restart_dead(self) -> None:
        with self._lock:
            for inst in self.instances.values():
                if inst.state != RUNNING:
                    continue
                for name, argv in self._commands(inst).items():
                    proc = inst.procs.get(name)
                    if proc is not None and proc.poll() is not None:
                        log.warning("instance %s: %s exited with %s; restarting it", inst.id, name,
                                    proc.returncode)
                        self._spawn(inst, name, argv)

    # ---- routes ----

    def list_routes(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self.routes.values()]

    def create_route(self, name: str, cidr: str, instance: str) -> dict:
        with self._lock:
            target = self._live(instance)
            for other in self.routes.values():
                if other["cidr"] == cidr and other["name"] != name:
                    raise CloudError(409, f"route {other['name']} already sends {cidr} to {other['instance']}")
            old = self.routes.get(name)
            route = self.routes[name] = {"name": name, "cidr": cidr, "instance": instance}
            for inst in self._running():
                if old is not None and old["cidr"] != cidr:
                    self.layout.fabric.set_route(inst.node.netns, old["cidr"], None)
                if inst.id != instance:
                    self.layout.fabric.set_route(inst.node.netns, cidr, target.node.ip)
            if old is not None and old["cidr"] != cidr:
                self.layout.fabric.set_route(self.layout.fabric.control_plane_netns, old["cidr"], None)
            self.layout.fabric.set_route(self.layout.fabric.control_plane_netns, cidr, target.node.ip)
            return dict(route)

    def delete_route(self, name: str) -> None:
        with self._lock:
            route = self.routes.pop(name, None)
            if route is None:
                raise CloudError(404, f"route {name} not found")
            for inst in self._running():
                self.layout.fabric.set_route(inst.node.netns, route["cidr"], None)
            self.layout.fabric.set_route(self.layout.fabric.control_plane_netns, route["cidr"], None)

    def _running(self) -> list[Instance]:
        return [i for i in self.instances.values() if i.state in (RUNNING, STOPPED)]

    def _apply_routes_to(self, inst: Instance) -> None:
        for route in self.routes.values():
            target = self.instances.get(route["instance"])
            if target is not None and target.state in (RUNNING, STOPPED) and target.id != inst.id:
                self.layout.fabric.set_route(inst.node.netns, route["cidr"], target.node.ip)

    def _drop_routes_via(self, inst: Instance) -> None:
        """An instance gone: routes to it lead nowhere (they stay listed, as a cloud shows a
        blackhole route, until the route controller deletes them)."""
        for route in self.routes.values():
            if route["instance"] == inst.id:
                for other in self._running():
                    self.layout.fabric.set_route(other.node.netns, route["cidr"], None)
                self.layout.fabric.set_route(self.layout.fabric.control_plane_netns, route["cidr"], None)

    # ---- load balancers (cloud.loadbalancer.Router) ----

    def list_lbs(self) -> list[LoadBalancer]:
        return self.router.list()

    def get_lb(self, name: str) -> LoadBalancer:
        return self.router.get(name)

    def ensure_lb(self, name: str, ports: list[dict], nodes: list[str]) -> LoadBalancer:
        return self.router.ensure(name, ports, nodes)

    def delete_lb(self, name: str) -> None:
        self.router.delete(name)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass
