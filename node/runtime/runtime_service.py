"""runtime.v1.RuntimeService on grpclite: CRI messages in, Sandboxes/Containers calls out.

Handlers run in the server's event loop; every call that touches processes, mounts or files
runs on a worker thread, so one slow StopContainer (a grace period) never holds the others.
Errors reach the kubelet as gRPC codes with containerd-like texts; what this runtime does not
do (checkpoints, events, metrics) answers UNIMPLEMENTED. Exec, Attach and PortForward answer a
URL of the runtime's streaming server (node.runtime.streaming), started by ``start_streaming``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import json_format

from node.pb import cri_pb2, cri_pb2_grpc
from node.runtime import oci, stats
from node.runtime.cleanup import record_root
from node.runtime.containers import EXITED, ContainerError, Containers
from node.runtime.sandbox import NOTREADY, READY, PodNetwork, SandboxError, Sandboxes
from node.runtime.store import NameReserved, read_json, write_json
from node.runtime.streaming import StreamError, StreamServer

log = logging.getLogger("node.runtime")

RUNTIME_NAME = "etcdlite-plane-runc"
RUNTIME_VERSION = "0.1.0"
RUNTIME_API_VERSION = "v1"
RUNTIME_HANDLERS = ("", "runc")  # a RuntimeClass handler other than these is refused, as containerd does


class RuntimeService(cri_pb2_grpc.RuntimeServiceServicer):
    """The node's CRI runtime. `root`: state, bundles, rootfs mounts, IPAM; `prefix`: the node's
    name prefix (netns, cgroups, /run/<prefix> for runc); `node_netns`: the namespace the pod
    bridge lives in; `images`: the image store; `pids_limit`: processes a container may have
    (0: no limit)."""

    def __init__(self, root: str, prefix: str, node_netns: str, images, workers: int = 32,
                 pids_limit: int = 0):
        self.root = os.path.abspath(root)
        self.prefix = prefix
        os.makedirs(self.root, exist_ok=True)
        self.network = PodNetwork(node_netns, os.path.join(self.root, "ipam"))
        self.sandboxes = Sandboxes(self.root, prefix, node_netns, self.network)
        self.containers = Containers(self.root, prefix, f"/run/{prefix}", images, self.sandboxes, pids_limit)
        record_root(prefix, self.root)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cri")
        self.cpu_rates = stats.CpuRates()
        self._sandbox_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._config_path = os.path.join(self.root, "runtime.json")
        self.pod_cidr = (read_json(self._config_path) or {}).get("pod_cidr", "")
        self.streams = StreamServer()

    async def start_streaming(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start the streaming server in the running loop; its port."""
        self.streams.host, self.streams.port = host, port
        return await self.streams.start()

    def load(self) -> None:
        """Adopt the sandboxes and containers a previous runtime left (blocking)."""
        self.sandboxes.load()
        self.containers.load()

    async def _run(self, context, fn, *args):
        """fn(*args) on a worker thread; its failures become the call's gRPC status."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, fn, *args)
        except ContainerError as e:
            await context.abort(getattr(grpc.StatusCode, e.code), str(e))
        except NameReserved as e:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(e))
        except SandboxError as e:
            await context.abort(grpc.StatusCode.UNKNOWN, str(e))
        except oci.SpecError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # noqa: BLE001 (the kubelet gets the text, the log the trace)
            log.exception("%s failed", getattr(fn, "__name__", fn))
            await context.abort(grpc.StatusCode.UNKNOWN, f"{type(e).__name__}: {e}")

    # ---- runtime ----

    async def Version(self, request, context):
        return cri_pb2.VersionResponse(version="0.1.0", runtime_name=RUNTIME_NAME,
                                       runtime_version=RUNTIME_VERSION,
                                       runtime_api_version=RUNTIME_API_VERSION)

    async def Status(self, request, context):
        conds = [cri_pb2.RuntimeCondition(type="RuntimeReady", status=True)]
        if self.pod_cidr:
            conds.append(cri_pb2.RuntimeCondition(type="NetworkReady", status=True))
        else:
            conds.append(cri_pb2.RuntimeCondition(
                type="NetworkReady", status=False, reason="NetworkPluginNotReady",
                message="no podCIDR yet: the kubelet sends it with UpdateRuntimeConfig"))
        info = {}
        if request.verbose:
            info["config"] = json.dumps({"root": self.root, "prefix": self.prefix, "podCIDR": self.pod_cidr})
        return cri_pb2.StatusResponse(
            status=cri_pb2.RuntimeStatus(conditions=conds), info=info,
            runtime_handlers=[cri_pb2.RuntimeHandler(name="")])

    async def UpdateRuntimeConfig(self, request, context):
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            try:
                ipaddress.IPv4Network(cidr, strict=False)
            except ValueError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"pod CIDR {cidr!r}: {e}")
        if cidr and cidr != self.pod_cidr:
            self.pod_cidr = cidr
            await self._run(context, write_json, self._config_path, {"pod_cidr": cidr})
        return cri_pb2.UpdateRuntimeConfigResponse()

    # ---- sandboxes ----

    async def RunPodSandbox(self, request, context):
        if not request.HasField("config") or not request.config.HasField("metadata"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "RunPodSandbox needs a config with metadata")
        if request.runtime_handler not in RUNTIME_HANDLERS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"no runtime for {request.runtime_handler!r} is configured (this runtime has "
                                f"only runc, as the default handler \"\")")
        sid = await self._run(context, self.sandboxes.run, request.config, request.runtime_handler,
                              self.pod_cidr)
        return cri_pb2.RunPodSandboxResponse(pod_sandbox_id=sid)

    def _sandbox_lock(self, sid: str) -> threading.Lock:
        """Held while a sandbox's containers are created, and while it stops or goes: no
        container is made in a sandbox being taken down."""
        with self._locks_lock:
            return self._sandbox_locks.setdefault(sid, threading.Lock())

    def _stop_sandbox(self, sid: str) -> None:
        rec = self.sandboxes.get(sid)
        if rec is None:
            raise ContainerError("NOT_FOUND", f"sandbox {sid!r} not found")
        with self._sandbox_lock(rec["id"]):
            for c in self.containers.of_sandbox(rec["id"]):
                if c["state"] != EXITED:
                    self.containers.stop(c["id"], 0)
            self.sandboxes.stop(rec["id"])

    def _remove_sandbox(self, sid: str) -> None:
        rec = self.sandboxes.get(sid)
        if rec is None:
            return
        with self._sandbox_lock(rec["id"]):
            for c in self.containers.of_sandbox(rec["id"]):
                self.containers.remove(c["id"])
            self.sandboxes.remove(rec["id"])
        with self._locks_lock:
            self._sandbox_locks.pop(rec["id"], None)

    def _create_container(self, sid: str, config, sandbox_config) -> str:
        rec = self.sandboxes.get(sid)
        if rec is None:
            raise ContainerError("NOT_FOUND", f"sandbox {sid!r} not found")
        with self._sandbox_lock(rec["id"]):
            return self.containers.create(rec["id"], config, sandbox_config)

    async def StopPodSandbox(self, request, context):
        await self._run(context, self._stop_sandbox, request.pod_sandbox_id)
        return cri_pb2.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request, context):
        await self._run(context, self._remove_sandbox, request.pod_sandbox_id)
        return cri_pb2.RemovePodSandboxResponse()

    def _sandbox_status(self, rec: dict) -> cri_pb2.PodSandboxStatus:
        cfg = self.sandboxes.config(rec)
        st = cri_pb2.PodSandboxStatus(
            id=rec["id"], metadata=cfg.metadata, state=rec["state"], created_at=rec["created_at"],
            labels=cfg.labels, annotations=cfg.annotations, runtime_handler=rec.get("runtime_handler", ""))
        if rec["state"] == READY and rec.get("ip"):
            st.network.ip = rec["ip"]
        opts = st.linux.namespaces.options
        opts.network = cri_pb2.NODE if rec.get("host_network") else cri_pb2.POD
        opts.pid = cri_pb2.CONTAINER
        opts.ipc = cri_pb2.POD
        return st

    async def PodSandboxStatus(self, request, context):
        rec = self.sandboxes.get(request.pod_sandbox_id)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"sandbox {request.pod_sandbox_id!r} not found")
        info = {}
        if request.verbose:
            info["info"] = json.dumps({"netns": f"/run/netns/{rec['netns']}", "gateway": rec.get("gateway", "")})
        return cri_pb2.PodSandboxStatusResponse(status=self._sandbox_status(rec), info=info,
                                                timestamp=time.time_ns())

    def _list_sandboxes(self, f) -> list[cri_pb2.PodSandbox]:
        items = []
        for rec in self.sandboxes.all():
            if f is not None:
                if f.id and not rec["id"].startswith(f.id):
                    continue
                if f.HasField("state") and rec["state"] != f.state.state:
                    continue
            cfg = self.sandboxes.config(rec)
            if f is not None and any(cfg.labels.get(k) != v for k, v in f.label_selector.items()):
                continue
            items.append(cri_pb2.PodSandbox(
                id=rec["id"], metadata=cfg.metadata, state=rec["state"], created_at=rec["created_at"],
                labels=cfg.labels, annotations=cfg.annotations,
                runtime_handler=rec.get("runtime_handler", "")))
        return items

    async def ListPodSandbox(self, request, context):
        f = request.filter if request.HasField("filter") else None
        return cri_pb2.ListPodSandboxResponse(items=await self._run(context, self._list_sandboxes, f))

    # ---- containers ----

    async def CreateContainer(self, request, context):
        if not request.HasField("config") or not request.config.HasField("metadata"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "CreateContainer needs a config with metadata")
        cid = await self._run(context, self._create_container, request.pod_sandbox_id, request.config,
                              request.sandbox_config)
        return cri_pb2.CreateContainerResponse(container_id=cid)

    async def StartContainer(self, request, context):
        await self._run(context, self.containers.start, request.container_id)
        return cri_pb2.StartContainerResponse()

    async def StopContainer(self, request, context):
        await self._run(context, self.containers.stop, request.container_id, request.timeout)
        return cri_pb2.StopContainerResponse()

    async def RemoveContainer(self, request, context):
        await self._run(context, self.containers.remove, request.container_id)
        return cri_pb2.RemoveContainerResponse()

    def _container(self, rec: dict, cfg=None) -> cri_pb2.Container:
        cfg = cfg or self.containers.config(rec)
        return cri_pb2.Container(
            id=rec["id"], pod_sandbox_id=rec["sandbox_id"], metadata=cfg.metadata,
            image=cri_pb2.ImageSpec(image=rec["image_name"]), image_ref=rec["image_ref"],
            image_id=rec["image_ref"], state=rec["state"], created_at=rec["created_at"],
            labels=cfg.labels, annotations=cfg.annotations)

    def _list_containers(self, f) -> list[cri_pb2.Container]:
        def match(rec: dict) -> bool:  # on what a refresh never changes
            if f.id and not rec["id"].startswith(f.id):
                return False
            if f.pod_sandbox_id and not rec["sandbox_id"].startswith(f.pod_sandbox_id):
                return False
            labels = rec["config"].get("labels", {})
            return all(labels.get(k) == v for k, v in f.label_selector.items())

        out = []
        for rec in self.containers.all(match if f is not None else None):
            if f is not None and f.HasField("state") and rec["state"] != f.state.state:
                continue
            out.append(self._container(rec))
        return out

    async def ListContainers(self, request, context):
        f = request.filter if request.HasField("filter") else None
        return cri_pb2.ListContainersResponse(containers=await self._run(context, self._list_containers, f))

    def _container_status(self, rec: dict) -> cri_pb2.ContainerStatus:
        cfg = self.containers.config(rec)
        st = cri_pb2.ContainerStatus(
            id=rec["id"], metadata=cfg.metadata, state=rec["state"], created_at=rec["created_at"],
            started_at=rec["started_at"], finished_at=rec["finished_at"],
            exit_code=rec["exit_code"] if rec["state"] == EXITED else 0,
            image=cri_pb2.ImageSpec(image=rec["image_name"]), image_ref=rec["image_ref"],
            image_id=rec["image_ref"], reason=rec["reason"], message=rec["message"],
            labels=cfg.labels, annotations=cfg.annotations, mounts=cfg.mounts, log_path=rec["log_path"])
        if cfg.HasField("linux") and cfg.linux.HasField("resources"):
            st.resources.linux.CopyFrom(cfg.linux.resources)
        user = rec.get("user") or {}
        st.user.linux.uid = user.get("uid", 0)
        st.user.linux.gid = user.get("gid", 0)
        st.user.linux.supplemental_groups.extend(user.get("additionalGids", []))
        sig = rec.get("stop_signal", "")
        if sig in oci.CRI_SIGNALS:
            st.stop_signal = oci.CRI_SIGNALS.index(sig)
        return st

    async def ContainerStatus(self, request, context):
        rec = await self._run(context, self.containers.require, request.container_id)
        info = {}
        if request.verbose:
            info["info"] = json_format.MessageToJson(self.containers.config(rec), indent=None)
            info["pid"] = str(rec.get("pid", 0))
        return cri_pb2.ContainerStatusResponse(status=self._container_status(rec), info=info)

    async def UpdateContainerResources(self, request, context):
        await self._run(context, self.containers.update_resources, request.container_id, request.linux)
        return cri_pb2.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(self, request, context):
        await self._run(context, self.containers.reopen_log, request.container_id)
        return cri_pb2.ReopenContainerLogResponse()

    async def ExecSync(self, request, context):
        res = await self._run(context, self.containers.exec_sync, request.container_id,
                              list(request.cmd), request.timeout)
        return cri_pb2.ExecSyncResponse(stdout=res.stdout, stderr=res.stderr, exit_code=res.exit_code)

    # ---- streaming: a URL of the streaming server, which does the work ----

    def _running(self, cid: str) -> dict:
        rec = self.containers.require(cid)
        if rec["state"] != cri_pb2.CONTAINER_RUNNING:
            state = cri_pb2.ContainerState.Name(rec["state"])
            raise ContainerError("FAILED_PRECONDITION", f"container is in {state} state")
        return rec

    @staticmethod
    def _check_streams(request) -> None:
        """The checks of the kubelet's streaming server (and containerd's), in their words."""
        if not (request.stdin or request.stdout or request.stderr):
            raise ValueError("one of stdin, stdout, or stderr must be set")
        if request.tty and request.stderr:
            raise ValueError("tty and stderr cannot both be true")

    async def _url(self, context, kind: str, request, target) -> str:
        try:
            return self.streams.url(kind, request, target)
        except StreamError as e:
            await context.abort(getattr(grpc.StatusCode, e.code), str(e))

    async def Exec(self, request, context):
        if not request.cmd:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "cmd must not be empty")
        try:
            self._check_streams(request)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        rec = await self._run(context, self._running, request.container_id)
        url = await self._url(context, "exec", request,
                              (self.containers.runc, rec["id"], self.containers.path(rec["id"])))
        return cri_pb2.ExecResponse(url=url)

    async def Attach(self, request, context):
        try:
            self._check_streams(request)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        rec = await self._run(context, self._running, request.container_id)
        url = await self._url(context, "attach", request, self.containers.path(rec["id"]))
        return cri_pb2.AttachResponse(url=url)

    async def PortForward(self, request, context):
        rec = self.sandboxes.get(request.pod_sandbox_id)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"sandbox {request.pod_sandbox_id!r} not found")
        if rec["state"] != READY:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"pod sandbox {rec['id']} is not running")
        for port in request.port:
            if not 0 < port < 65536:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid port {port}")
        url = await self._url(context, "portforward", request, os.path.join("/run/netns", rec["netns"]))
        return cri_pb2.PortForwardResponse(url=url)

    # ---- stats (from the cgroups; pod network usage is not collected) ----

    def _container_stats(self, rec: dict) -> cri_pb2.ContainerStats:
        cfg = self.containers.config(rec)
        cg = rec["cgroups_path"]
        return cri_pb2.ContainerStats(
            attributes=cri_pb2.ContainerAttributes(id=rec["id"], metadata=cfg.metadata, labels=cfg.labels,
                                                   annotations=cfg.annotations),
            cpu=stats.cpu_usage(cg, self.cpu_rates), memory=stats.memory_usage(cg),
            writable_layer=stats.dir_usage(self.containers.path(rec["id"], "upper"), self.root))

    def _list_container_stats(self, f) -> list[cri_pb2.ContainerStats]:
        out = []
        for rec in self.containers.all():
            if rec["state"] == EXITED:
                continue
            if f is not None:
                if f.id and not rec["id"].startswith(f.id):
                    continue
                if f.pod_sandbox_id and not rec["sandbox_id"].startswith(f.pod_sandbox_id):
                    continue
                labels = rec["config"].get("labels", {})
                if any(labels.get(k) != v for k, v in f.label_selector.items()):
                    continue
            out.append(self._container_stats(rec))
        return out

    def _sandbox_stats(self, rec: dict) -> cri_pb2.PodSandboxStats:
        cfg = self.sandboxes.config(rec)
        cg = self.sandboxes.cgroup(rec["id"])
        linux = cri_pb2.LinuxPodSandboxStats(
            cpu=stats.cpu_usage(cg, self.cpu_rates), memory=stats.memory_usage(cg),
            process=stats.process_count(cg),
            containers=[self._container_stats(c) for c in self.containers.of_sandbox(rec["id"])
                        if c["state"] != EXITED])
        return cri_pb2.PodSandboxStats(
            attributes=cri_pb2.PodSandboxAttributes(id=rec["id"], metadata=cfg.metadata, labels=cfg.labels,
                                                    annotations=cfg.annotations),
            linux=linux)

    def _one_container_stats(self, cid: str) -> cri_pb2.ContainerStats:
        return self._container_stats(self.containers.require(cid))

    def _one_sandbox_stats(self, sid: str) -> cri_pb2.PodSandboxStats:
        rec = self.sandboxes.get(sid)
        if rec is None:
            raise ContainerError("NOT_FOUND", f"sandbox {sid!r} not found")
        return self._sandbox_stats(rec)

    def _list_sandbox_stats(self, f) -> list[cri_pb2.PodSandboxStats]:
        out = []
        for rec in self.sandboxes.all():
            if rec["state"] != READY:
                continue
            if f is not None:
                if f.id and not rec["id"].startswith(f.id):
                    continue
                labels = rec["config"].get("labels", {})
                if any(labels.get(k) != v for k, v in f.label_selector.items()):
                    continue
            out.append(self._sandbox_stats(rec))
        return out

    async def ContainerStats(self, request, context):
        st = await self._run(context, self._one_container_stats, request.container_id)
        return cri_pb2.ContainerStatsResponse(stats=st)

    async def ListContainerStats(self, request, context):
        f = request.filter if request.HasField("filter") else None
        return cri_pb2.ListContainerStatsResponse(stats=await self._run(context, self._list_container_stats, f))

    async def PodSandboxStats(self, request, context):
        st = await self._run(context, self._one_sandbox_stats, request.pod_sandbox_id)
        return cri_pb2.PodSandboxStatsResponse(stats=st)

    async def ListPodSandboxStats(self, request, context):
        f = request.filter if request.HasField("filter") else None
        return cri_pb2.ListPodSandboxStatsResponse(stats=await self._run(context, self._list_sandbox_stats, f))

    async def stop_streaming(self) -> None:
        await self.streams.stop()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["RuntimeService", "RUNTIME_NAME", "NOTREADY", "READY"]
