"""Debian's containerd (1.6, with its CRI plugin) as the reference CRI runtime, the way the
apiserver tests run a real etcd: our kubelet is a CRI client, and must work on it as on ours.

Everything containerd makes lives under the directory it is given (root, state, sockets, the
snapshotter's mounts, runc's state, CNI config and IPAM files, pod network namespaces), except
what containerd 1.6 cannot be told to put elsewhere: its shims' sockets under
``/run/containerd/s/``. ``cleanup`` removes all of it, shims and containers included, whatever
state a test left it in.

A node on containerd: ``Containerd(dir, node=...)`` runs containerd inside the node's network
namespace (entered with ``nsenter --net``, so that nothing else of the process changes: ``ip netns
exec`` would remount /sys and hide the cgroup hierarchies), so that CNI's bridge plugin, which
containerd runs in its own namespace, plugs pods into the node's bridge ``kpbr0``. Pod addresses
come from the podCIDR the kubelet sends (UpdateRuntimeConfig fills the CNI config template), as
on a Kubernetes node. Its sandbox ("pause") image is busybox sleeping, imported with ``ctr``
from our image store; image pulls go to 127.0.0.1:1 only, so a missing image fails at once
without any traffic leaving loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from harness.procs import DEFAULT_READY_TIMEOUT, Registry, ServerProcess
from node.runtime.cleanup import pids_where

CONTAINERD = shutil.which("containerd")
CTR = shutil.which("ctr")
NSENTER = shutil.which("nsenter")
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
CNI_PLUGINS = ("bridge", "host-local", "loopback")
SHIM_SOCKET_DIR = "/run/containerd/s"  # fixed in containerd 1.6: not under its state dir
NAMESPACE = "k8s.io"  # the containerd namespace its CRI plugin uses
PAUSE_IMAGE = "localhost/kp-pause:busybox"
POD_BRIDGE = "kpbr0"
NO_REGISTRY = "http://127.0.0.1:1"  # nothing listens there: a pull fails at once, on loopback

# plugins that would reach outside the given directories, or that this machine lacks
DISABLED_PLUGINS = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]


def missing() -> str | None:
    """Why containerd cannot run a node here (None when it can)."""
    if not (CONTAINERD and CTR):
        return "containerd is not installed (apt-get install containerd, or make node-deps)"
    if os.geteuid() != 0:
        return "containerd needs root"
    absent = [p for p in CNI_PLUGINS if not os.access(os.path.join(CNI_BIN_DIR, p), os.X_OK)]
    if absent:
        return (f"CNI plugins {', '.join(absent)} are not in {CNI_BIN_DIR} "
                "(apt-get install containernetworking-plugins, or make node-deps)")
    if not NSENTER:
        return "nsenter is not installed (util-linux)"
    return None


def _toml(value) -> str:
    return json.dumps(value)  # strings and lists of strings: TOML's basic forms are JSON's


class Containerd(ServerProcess):
    """containerd on its own socket with every directory under ``dir``. With ``netns`` it runs in
    that network namespace with a CNI config for a node: pods on ``kpbr0``, addresses from the
    podCIDR the kubelet gives (until then the runtime's NetworkReady is false)."""

    kind = "containerd"

    def __init__(self, dir, registry: Registry | None = None, *, netns: str | None = None,
                 ready_timeout: float = DEFAULT_READY_TIMEOUT, log_level: str = "info") -> None:
        super().__init__("containerd", dir, registry, ready_timeout)
        self.dir = self.tmp_path.resolve()
        self.netns = netns
        self.socket = str(self.dir / "containerd.sock")
        self.config = self.dir / "config.toml"
        self.cni_conf_dir = self.dir / "cni" / "conf"
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        self.runc_root = self.dir / "runc"
        certs = self.dir / "certs.d" / "_default"
        certs.mkdir(parents=True, exist_ok=True)
        (certs / "hosts.toml").write_text(f'server = "{NO_REGISTRY}"\n\n[host."{NO_REGISTRY}"]\n'
                                          f'  capabilities = ["pull", "resolve"]\n')
        lines = [
            "version = 2",
            f"root = {_toml(str(self.dir / 'root'))}",
            f"state = {_toml(str(self.dir / 'state'))}",
            f"disabled_plugins = {_toml(DISABLED_PLUGINS)}",
            "[grpc]",
            f"  address = {_toml(self.socket)}",
            "[ttrpc]",
            f"  address = {_toml(self.socket + '.ttrpc')}",
            "[debug]",
            f"  level = {_toml(log_level)}",
            '[plugins."io.containerd.grpc.v1.cri"]',
            f"  sandbox_image = {_toml(PAUSE_IMAGE)}",
            "  restrict_oom_score_adj = true",  # negative oom_score_adj is refused on this machine
            "  netns_mounts_under_state_dir = true",  # pod netns under state/, not /var/run/netns
            '  stream_server_address = "127.0.0.1"',
            '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
            '  runtime_type = "io.containerd.runc.v2"',
            '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]',
            f"  Root = {_toml(str(self.runc_root))}",
            "  SystemdCgroup = false",
            '[plugins."io.containerd.grpc.v1.cri".cni]',
            f"  bin_dir = {_toml(CNI_BIN_DIR if netns else str(self.dir / 'cni' / 'bin'))}",
            f"  conf_dir = {_toml(str(self.cni_conf_dir))}",
        ]
        if netns:
            template = self.dir / "cni" / "template.conflist"
            template.write_text(self.cni_template())
            lines.append(f"  conf_template = {_toml(str(template))}")
        lines += ['[plugins."io.containerd.grpc.v1.cri".registry]',
                  f"  config_path = {_toml(str(self.dir / 'certs.d'))}"]
        self.config.write_text("\n".join(lines) + "\n")

    def cni_template(self) -> str:
        """The bridge plugin on the node's pod bridge (its address the podCIDR's first, as the
        fabric set it), host-local IPAM with its files under our directory; no masquerade (the
        fabric routes pod CIDRs) so no netfilter rule is made anywhere."""
        conf = {
            "cniVersion": "0.4.0", "name": "kp-pods",
            "plugins": [{
                "type": "bridge", "bridge": POD_BRIDGE, "isGateway": True, "ipMasq": False,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "{{.PodCIDR}}"}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.dir / "cni" / "ipam")},
            }],
        }
        return json.dumps(conf, indent=2) + "\n"

    def argv(self) -> list[str]:
        cmd = [CONTAINERD, "--config", str(self.config)]
        if self.netns:
            return [NSENTER, f"--net=/run/netns/{self.netns}", *cmd]
        return cmd

    @property
    def endpoint(self) -> str:
        return "unix://" + self.socket

    def ready_probe(self, rpc_timeout: float) -> str | None:
        from node.cri.client import CriClient, CriError

        if not os.path.exists(self.socket):
            return "no socket yet"
        with CriClient(self.endpoint, timeout=rpc_timeout) as cri:
            try:
                cri.version()
            except CriError as e:
                return str(e)
        return None

    def ctr(self, *args: str, timeout: float = 60) -> str:
        """``ctr -n k8s.io ARGS`` on this containerd; its stdout."""
        done = subprocess.run([CTR, "--address", self.socket, "--namespace", NAMESPACE, *args],
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def import_images(self, store, refs: list[str]) -> None:
        """``ctr images import`` of `refs` exported from our image store (an OCI layout tar)."""
        archive = self.dir / "import.tar"
        store.export(refs, str(archive))
        try:
            self.ctr("images", "import", str(archive))
        finally:
            archive.unlink(missing_ok=True)

    def tasks(self) -> dict[str, int]:
        """containerd's running tasks (sandboxes and containers): id -> pid of its init process."""
        found = {}
        for line in self.ctr("tasks", "ls").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[1].isdigit():
                found[fields[0]] = int(fields[1])
        return found

    def cleanup(self) -> list[str]:
        return cleanup(self.dir, self.socket, self)


# ---- images ----

def build_pause(store, busybox_image) -> None:
    """The sandbox image: busybox's layer with ``sleep`` forever as its entrypoint, named
    PAUSE_IMAGE (what the sandbox's process does matters little: it holds the pod's namespaces)."""
    from node.runtime.images import MEDIA_OCI_CONFIG

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()

    config = json.loads(Path(store.blob_path(busybox_image.id)).read_bytes())
    config["config"] = {**config.get("config", {}), "Entrypoint": ["sleep", "2147483647"], "Cmd": None,
                        "StopSignal": "SIGKILL"}
    config["history"] = [*config.get("history", []),
                         {"created": config.get("created", ""), "created_by": "harness.containerd: the sandbox "
                          "image (busybox sleeping), for containerd's sandbox_image", "empty_layer": True}]
    config_digest, config_size = store.put_blob(_dumps(config))
    manifest = json.loads(Path(store.blob_path(busybox_image.manifest)).read_bytes())
    manifest["config"] = {"mediaType": MEDIA_OCI_CONFIG, "digest": config_digest, "size": config_size}
    store.add_image(_dumps(manifest), [PAUSE_IMAGE])


# ---- cleanup ----

def shim_pids(socket: str) -> list[int]:
    """containerd-shim-runc-v2 processes serving the containerd at `socket` (their command line
    names its address)."""
    return pids_where(lambda argv: os.path.basename(argv[0]).startswith(b"containerd-shim")
                      and socket.encode() in argv)


def shim_socket(socket: str, task_id: str) -> str:
    """Where containerd 1.6 puts the shim socket of task `task_id` (a sandbox's: its containers
    share their sandbox's shim): /run/containerd/s/sha256(<address>/<namespace>/<id>)."""
    return os.path.join(SHIM_SOCKET_DIR, hashlib.sha256(os.path.join(socket, NAMESPACE, task_id).encode()).hexdigest())


def _task_ids(state: Path) -> list[str]:
    base = state / "io.containerd.runtime.v2.task" / NAMESPACE
    try:
        return os.listdir(base)
    except OSError:
        return []


def cleanup(dir, socket: str | None = None, proc: ServerProcess | None = None,
            cgroup_root: str | None = None) -> list[str]:
    """Remove everything the containerd of `dir` made, whatever state it is in: the containers
    (the cgroup tree `cgroup_root`, where the kubelet put the pods, frozen and SIGKILLed: a shim's
    death does not end its containers), the shims (found by the address on their command line),
    the containerd process `proc`, every mount under `dir` (rootfs overlays, sandbox shm, pod
    network namespaces), the shims' sockets under /run/containerd/s, the cgroups. Idempotent;
    returns what could not be removed ([] when all went)."""
    from node import mounts
    from node.runtime import cgroups

    dir = Path(dir).resolve()
    socket = socket or str(dir / "containerd.sock")
    problems: list[str] = []
    ids = _task_ids(dir / "state")
    if cgroup_root and not cgroups.kill_tree(cgroup_root):
        problems.append(f"processes still in cgroup {cgroup_root}")
    for pid in shim_pids(socket):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc is not None:
        proc.kill()
    deadline = time.monotonic() + 10
    while shim_pids(socket) and time.monotonic() < deadline:
        time.sleep(0.05)
    if shim_pids(socket):
        problems.append(f"shims still running: {shim_pids(socket)}")
    try:
        mounts.unmount_all_under(str(dir))
    except OSError as e:
        problems.append(str(e))
    for task_id in ids:
        try:
            os.unlink(shim_socket(socket, task_id))
        except FileNotFoundError:
            pass
    for d in (SHIM_SOCKET_DIR, os.path.dirname(SHIM_SOCKET_DIR)):
        try:
            os.rmdir(d)  # only when empty: another containerd may use it
        except OSError:
            pass
    if cgroup_root:
        problems += [f"cgroup {d} is busy" for d in cgroups.remove_tree(cgroup_root)]
    return problems
