"""Pod sandboxes: what a pod's containers share. Here a sandbox is a named network namespace
(``/run/netns/<node prefix>-<first 10 hex of its id>``) on the node's pod bridge, IPC and UTS
namespaces (hostname set) bind-mounted in the sandbox's directory, a tmpfs for /dev/shm, and the
files naming the pod to itself (hostname, /etc/hosts, resolv.conf). No pause process: a
bind-mounted namespace lives without one, and each container joins them by path.

The network calls go to node.network.pod (attach/detach/status, create_netns/delete_netns), all
from this module's ``PodNetwork``, the one place that knows that interface.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time

from google.protobuf import json_format

from node.network import pod
from node.pb import cri_pb2
from node import mounts, namespaces
from node.runtime import cgroups
from node.runtime.store import RecordStore

READY, NOTREADY = cri_pb2.SANDBOX_READY, cri_pb2.SANDBOX_NOTREADY
NETNS_DIR = "/run/netns"
SHM_SIZE = 64 << 20  # a pod's /dev/shm, as containerd's default


def make_ipc_uts(directory: str, hostname: str) -> None:
    """IPC and UTS namespaces kept alive by bind mounts on ``<directory>/ipc`` and ``uts``,
    the UTS one named `hostname`; plus the pod's /dev/shm tmpfs on ``<directory>/shm``. Made
    in-process (node.namespaces), as ``unshare --ipc=F --uts=F hostname NAME`` would."""
    ipc, uts, shm = (os.path.join(directory, n) for n in ("ipc", "uts", "shm"))
    for f in (ipc, uts):
        open(f, "a").close()
    try:
        namespaces.new_pinned({"ipc": ipc, "uts": uts}, hostname)
    except (OSError, ValueError) as e:
        raise SandboxError(f"cannot create the pod's IPC/UTS namespaces: {e}") from e
    os.makedirs(shm, exist_ok=True)
    mounts.mount_tmpfs(shm, size=SHM_SIZE, mode=0o1777, noexec=True)


class SandboxError(Exception):
    """RunPodSandbox could not finish (the message says which step and why)."""


class PodNetwork:
    """The node's pod network as the runtime sees it: node.network.pod, with the node's
    namespace and the IPAM directory filled in."""

    def __init__(self, node_netns: str, state_dir: str):
        self.node_netns = node_netns
        self.state_dir = state_dir

    def create_netns(self, name: str) -> None:
        pod.create_netns(name)

    def delete_netns(self, name: str) -> None:
        pod.delete_netns(name)

    def attach(self, pod_netns: str, pod_cidr: str, sandbox_id: str) -> pod.PodIP:
        return pod.attach(pod_netns, self.node_netns, pod_cidr, self.state_dir, sandbox_id)

    def detach(self, pod_netns: str, sandbox_id: str) -> None:
        pod.detach(pod_netns, self.node_netns, self.state_dir, sandbox_id)


def reserved_name(meta) -> str:
    return f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


def host_network(config) -> bool:
    """hostNetwork pods share the node's namespace (here: the node's netns, not the machine's)."""
    linux = config.linux if config.HasField("linux") else None
    return bool(linux and linux.HasField("security_context") and
                linux.security_context.HasField("namespace_options") and
                linux.security_context.namespace_options.network == cri_pb2.NODE)


def hosts_file(hostname: str, ip: str | None) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             "fe00::0\tip6-localnet", "fe00::0\tip6-mcastprefix", "fe00::1\tip6-allnodes",
             "fe00::2\tip6-allrouters"]
    if ip:
        lines.append(f"{ip}\t{hostname}")
    return "\n".join(lines) + "\n"


def resolv_conf(dns) -> str:
    """The pod's resolv.conf from the kubelet's DNSConfig; without one, the machine's (as
    containerd does)."""
    if dns is None or not (dns.servers or dns.searches or dns.options):
        try:
            with open("/etc/resolv.conf") as f:
                return f.read()
        except OSError:
            return ""
    lines = [f"nameserver {s}" for s in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


class Sandboxes:
    """The node's sandboxes: records under ``<root>/sandboxes/<id>/``."""

    def __init__(self, root: str, prefix: str, node_netns: str, network: PodNetwork):
        self.prefix = prefix
        self.node_netns = node_netns
        self.network = network
        self.store = RecordStore(os.path.join(root, "sandboxes"), "sandbox.json")
        self._configs: dict[str, tuple[dict, cri_pb2.PodSandboxConfig]] = {}

    def load(self) -> None:
        """Adopt the records a previous runtime left; a sandbox whose namespaces are gone
        (removed from outside, or the machine restarted) is no longer ready."""
        for rec in self.store.load():
            if rec.get("partial"):  # a RunPodSandbox cut short: undo whatever it got to
                self._teardown_network(rec["id"], self.netns_name(rec["id"]), False)
                self._discard(rec["id"], None)
                continue
            if rec["state"] == READY and not self._intact(rec):
                self.store.save(dict(rec, state=NOTREADY))

    def _intact(self, rec: dict) -> bool:
        d = self.store.path(rec["id"])
        netns_ok = rec.get("host_network") or os.path.exists(os.path.join(NETNS_DIR, rec["netns"]))
        return bool(netns_ok) and (mounts.fs_type(os.path.join(d, "ipc")) is not None) and \
            (mounts.fs_type(os.path.join(d, "uts")) is not None)

    def netns_name(self, sandbox_id: str) -> str:
        return f"{self.prefix}-{sandbox_id[:10]}"

    def cgroup(self, sandbox_id: str) -> str:
        return f"/{self.prefix}/{sandbox_id}"

    def run(self, config, runtime_handler: str, pod_cidr: str | None) -> str:
        """Create and network a sandbox; on any failure nothing of it is left."""
        meta = config.metadata
        if not meta.name or not meta.uid or not meta.namespace:
            raise ValueError("sandbox metadata needs name, namespace and uid")
        sid = secrets.token_hex(32)
        name = reserved_name(meta)
        self.store.reserve(name, sid)
        hostnet = host_network(config)
        netns = self.node_netns if hostnet else self.netns_name(sid)
        if not hostnet and not pod_cidr:
            self.store.release(name, sid)
            raise SandboxError("the network is not ready: no podCIDR yet (the kubelet sends it "
                               "with UpdateRuntimeConfig once the node has one)")
        d = self.store.path(sid)
        attached = False
        try:
            os.makedirs(d)
            rec = {
                "id": sid, "reserved_name": name,
                "config": json_format.MessageToDict(config, preserving_proto_field_name=True),
                "runtime_handler": runtime_handler, "created_at": time.time_ns(),
                "state": READY, "netns": netns, "host_network": hostnet,
                "ip": "", "prefixlen": 0, "gateway": "",
            }
            if not hostnet:
                self.network.create_netns(netns)
                pod_ip = self.network.attach(netns, pod_cidr, sid)
                attached = True
                rec.update(ip=pod_ip.ip, prefixlen=pod_ip.prefixlen, gateway=pod_ip.gateway)
            hostname = config.hostname or meta.name
            rec["hostname"] = hostname
            make_ipc_uts(d, hostname)
            for fname, text in (("hostname", hostname + "\n"),
                                ("hosts", hosts_file(hostname, rec["ip"] or None)),
                                ("resolv.conf", resolv_conf(config.dns_config if config.HasField("dns_config") else None))):
                with open(os.path.join(d, fname), "w") as f:
                    f.write(text)
            self.store.save(rec)
            return sid
        except BaseException as e:
            self._teardown_network(sid, netns, hostnet, attached)
            self._discard(sid, name)
            if isinstance(e, (SandboxError, ValueError)):
                raise
            raise SandboxError(f"failed to set up sandbox {meta.namespace}/{meta.name}: {e}") from e

    def _teardown_network(self, sid: str, netns: str, hostnet: bool, attached: bool = True) -> None:
        if hostnet:
            return
        if attached or os.path.exists(os.path.join(NETNS_DIR, netns)):
            self.network.detach(netns, sid)
        self.network.delete_netns(netns)

    def _discard(self, sid: str, name: str | None) -> None:
        mounts.unmount_all_under(self.store.path(sid))
        shutil.rmtree(self.store.path(sid), ignore_errors=True)
        if name:
            self.store.release(name, sid)
        self.store.forget(sid)
        self._configs.pop(sid, None)

    def stop(self, sid: str) -> None:
        """Take the sandbox off the network (its containers are stopped by the caller first):
        veth and address released, namespace deleted, as containerd does at StopPodSandbox.
        Idempotent."""
        rec = self.store.get(sid)
        if rec is None:
            return
        self._teardown_network(sid, rec["netns"], rec.get("host_network", False))
        if rec["state"] != NOTREADY:
            rec = dict(rec, state=NOTREADY)
            self.store.save(rec)

    def remove(self, sid: str) -> None:
        """Forget a stopped sandbox (containers removed by the caller first) and remove its
        cgroup level and files."""
        rec = self.store.get(sid)
        if rec is None:
            return
        self.stop(sid)
        cgroups.kill_tree(self.cgroup(sid))
        cgroups.remove_tree(self.cgroup(sid))
        self._discard(sid, rec.get("reserved_name"))

    def files(self, sid: str) -> dict:
        """The oci.SandboxFiles fields this sandbox gives its containers (besides its netns)."""
        d = self.store.path(sid)
        return {"hosts": os.path.join(d, "hosts"), "resolv_conf": os.path.join(d, "resolv.conf"),
                "hostname_file": os.path.join(d, "hostname"), "ipc_ns_path": os.path.join(d, "ipc"),
                "uts_ns_path": os.path.join(d, "uts"), "shm": os.path.join(d, "shm")}

    def config(self, rec: dict) -> cri_pb2.PodSandboxConfig:
        """The record's CRI config as a message, parsed once; callers must not modify it."""
        cached = self._configs.get(rec["id"])
        if cached is not None and cached[0] is rec["config"]:
            return cached[1]
        msg = json_format.ParseDict(rec["config"], cri_pb2.PodSandboxConfig(), ignore_unknown_fields=True)
        self._configs[rec["id"]] = (rec["config"], msg)
        return msg

    def get(self, sid: str) -> dict | None:
        return self.store.find(sid)

    def all(self) -> list[dict]:
        return self.store.all()
