"""Containers: a bundle (config.json + overlay rootfs) under ``<root>/containers/<id>/``, a runc
container under conmon, and a record of what the kubelet must see (state, times, exit code,
reason).

Lifecycle as CRI-O's: CreateContainer = conmon + ``runc create`` (process set up, not running),
StartContainer = ``runc start`` (its exec-fifo handshake done in-process: Runc.start), the exit
noticed from conmon's exit file whenever a caller looks (the kubelet relists every second),
StopContainer = stop signal, wait, SIGKILL, RemoveContainer = ``runc delete`` + unmount + files.
A runtime restart loses nothing: conmon keeps running, the record and conmon's files are on disk.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import threading
import time

from google.protobuf import json_format

from node.pb import cri_pb2
from node import mounts
from node.runtime import cgroups, oci, runc
from node.runtime.store import RecordStore

CREATED, RUNNING, EXITED = cri_pb2.CONTAINER_CREATED, cri_pb2.CONTAINER_RUNNING, cri_pb2.CONTAINER_EXITED
MAX_EXEC_OUTPUT = 16 << 20  # the kubelet's cap on ExecSync output (bytes per stream)
KILL_WAIT = 30.0            # how long a SIGKILLed container may take to be reported gone


class ContainerError(Exception):
    """A container call failed for a reason the kubelet should show (``code`` a grpc code name)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _pidfd(pid: int) -> int:
    """A pidfd of the container's process (readable once it exits), or -2 when there is none
    to watch (gone already, no pid, a kernel without pidfd_open)."""
    if pid <= 0 or not hasattr(os, "pidfd_open"):
        return -2
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -2


def reserved_name(config, sandbox_config: dict) -> str:
    meta = sandbox_config.get("metadata", {})
    return (f"{config.metadata.name}_{meta.get('name', '')}_{meta.get('namespace', '')}_"
            f"{meta.get('uid', '')}_{config.metadata.attempt}")


def reason_for(exit_code: int, oom: bool) -> str:
    """Kubernetes' termination reasons, as containerd gives them."""
    if oom:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


class Containers:
    """The node's containers; `images` is the image store (resolve/config/rootfs)."""

    def __init__(self, root: str, prefix: str, runc_root: str, images, sandboxes, pids_limit: int = 0):
        self.prefix = prefix
        self.pids_limit = pids_limit
        self.images = images
        self.sandboxes = sandboxes
        self.runc = runc.Runc(runc_root)
        self.store = RecordStore(os.path.join(root, "containers"), "container.json")
        self.exit_dir = os.path.join(root, "exits")
        os.makedirs(self.exit_dir, exist_ok=True)
        self.conmons: dict[str, runc.Conmon] = {}
        self._configs: dict[str, tuple[dict, cri_pb2.ContainerConfig]] = {}
        self._op_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    # ---- bookkeeping ----

    def load(self) -> None:
        """Adopt what a previous runtime left: records, their conmons (still running or not)."""
        for rec in self.store.load():
            if rec.get("partial"):  # a CreateContainer cut short: its runc container may exist
                self._remove_runtime_state(rec["id"], None)
                self._remove_files(rec["id"], None)
                continue
            if rec.get("conmon_pid"):
                self.conmons[rec["id"]] = runc.Conmon(rec["conmon_pid"])
            self.refresh(rec["id"])

    def _lock(self, cid: str) -> threading.Lock:
        with self._locks_lock:
            return self._op_locks.setdefault(cid, threading.Lock())

    def path(self, cid: str, *parts: str) -> str:
        return self.store.path(cid, *parts)

    def get(self, cid: str) -> dict | None:
        rec = self.store.find(cid)
        return self.refresh(rec["id"]) if rec is not None else None

    def require(self, cid: str) -> dict:
        rec = self.get(cid)
        if rec is None:
            raise ContainerError("NOT_FOUND", f"container {cid!r} not found")
        return rec

    def all(self, match=None) -> list[dict]:
        """Every container (those whose record ``match(rec)`` accepts: a filter on what never
        changes, its id, sandbox and labels), exits taken in (one removed meanwhile is left
        out). Only the matching ones are refreshed: a pod's read costs the same beside 1 or
        100 other containers."""
        return [r for r in (self.refresh(r["id"]) for r in self.store.all() if match is None or match(r))
                if r is not None]

    def of_sandbox(self, sid: str) -> list[dict]:
        return [r for r in self.all() if r["sandbox_id"] == sid]

    def reap_conmons(self) -> None:
        """Collect the conmons that have exited (they are this process's children), so none
        lingers as a zombie until its container is removed."""
        for cid, mon in list(self.conmons.items()):
            if mon.proc is not None and mon.reap():
                mon.proc = None

    def _conmon_alive(self, rec: dict) -> bool:
        mon = self.conmons.get(rec["id"])
        if mon is None:
            return False
        return not mon.reap()

    def refresh(self, cid: str) -> dict | None:
        """The record with the container's exit taken in, if conmon recorded one since."""
        with self.store.lock:
            rec = self.store.get(cid)
            if rec is None or rec["state"] == EXITED:
                return rec
            ex = runc.read_exit(self.path(cid, "persist"), rec["cgroups_path"])
            if ex is None and not self._conmon_alive(rec):
                st = self.runc.state(cid)
                if st is None or st.get("status") == "stopped":
                    ex = runc.read_exit(self.path(cid, "persist"), rec["cgroups_path"]) or \
                        runc.ContainerExit(255, runc.oom_kills(rec["cgroups_path"]) > 0, time.time_ns())
                    if not os.path.exists(self.path(cid, "persist", "exit")):
                        rec = dict(rec, message="conmon exited without recording the container's "
                                                "exit; its exit code is unknown")
            if ex is None:
                return rec
            rec = dict(rec, state=EXITED, exit_code=ex.exit_code, finished_at=ex.finished_at,
                       reason=reason_for(ex.exit_code, ex.oom_killed))
            self.store.save(rec)
            return rec

    # ---- create / start ----

    def create(self, sandbox_id: str, config, sandbox_config) -> str:
        sb = self.sandboxes.get(sandbox_id)
        if sb is None:
            raise ContainerError("NOT_FOUND", f"sandbox {sandbox_id!r} not found")
        sandbox_id = sb["id"]
        if sb["state"] != cri_pb2.SANDBOX_READY:
            raise ContainerError("FAILED_PRECONDITION", f"sandbox {sandbox_id} is not ready")
        if not config.metadata.name:
            raise ContainerError("INVALID_ARGUMENT", "container metadata needs a name")
        image = self.images.resolve(config.image.image)
        if image is None:
            raise ContainerError("NOT_FOUND", f"image {config.image.image!r} not found: pull it first")
        cid = secrets.token_hex(32)
        name = reserved_name(config, sb["config"])
        try:
            self.store.reserve(name, cid)
        except Exception as e:
            raise ContainerError("ALREADY_EXISTS", str(e)) from None
        d = self.path(cid)
        try:
            os.makedirs(d)
            rootfs = os.path.join(d, "rootfs")
            mounts.mount_overlay(self.images.rootfs(image), os.path.join(d, "upper"),
                                 os.path.join(d, "work"), rootfs)
            image_config = self.images.config(image) or {}
            for m in config.mounts:
                if m.host_path and not os.path.lexists(m.host_path):
                    os.makedirs(m.host_path, 0o755, exist_ok=True)  # as containerd does for a bind source
            cgroups_path = f"/{self.prefix}/{sandbox_id}/{cid}"
            files = self.sandboxes.files(sandbox_id)
            sandbox_files = oci.SandboxFiles(
                netns_path=os.path.join("/run/netns", sb["netns"]), hostname=sb["hostname"], **files)
            spec = oci.build_spec(config, sandbox_config, image_config, sandbox_files,
                                  oci.ContainerPaths(rootfs=rootfs, cgroups_path=cgroups_path,
                                                     pids_limit=self.pids_limit))
            self._namespace_modes(config, spec)
            cwd = os.path.join(rootfs, spec["process"]["cwd"].lstrip("/"))
            os.makedirs(cwd, exist_ok=True)
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(spec, f)
            log_path = self._log_path(sb, config, cid)
            rec = {
                "id": cid, "sandbox_id": sandbox_id, "reserved_name": name,
                "config": json_format.MessageToDict(config, preserving_proto_field_name=True),
                "image_ref": image_id(image), "image_name": image_name(image, config.image.image),
                "created_at": time.time_ns(), "started_at": 0, "finished_at": 0,
                "state": CREATED, "exit_code": 0, "reason": "", "message": "",
                "cgroups_path": cgroups_path, "log_path": log_path,
                "stop_signal": oci.stop_signal(config, image_config),
                "user": spec["process"]["user"], "pid": 0, "conmon_pid": 0,
            }
            pid, mon = runc.create(self.runc, cid, d, log_path, self.exit_dir,
                                   os.path.join(d, "persist"), name=config.metadata.name,
                                   terminal=spec["process"]["terminal"], stdin=config.stdin,
                                   stdin_once=config.stdin_once)
            self.conmons[cid] = mon
            rec.update(pid=pid, conmon_pid=mon.pid)
            self.store.save(rec)
            return cid
        except BaseException as e:
            self._remove_runtime_state(cid, None)
            self._remove_files(cid, name)
            if isinstance(e, oci.SpecError):
                raise ContainerError("INVALID_ARGUMENT", str(e)) from None
            if isinstance(e, (runc.RuncError, OSError)):
                raise ContainerError("UNKNOWN", f"failed to create container {config.metadata.name}: {e}") from None
            raise

    @staticmethod
    def _namespace_modes(config, spec: dict) -> None:
        """CRI namespace options beyond the defaults: the node's pid/ipc namespace (hostPID,
        hostIPC: this machine's). POD pid sharing (shareProcessNamespace) and TARGET need a
        process to hold the namespace, which this runtime's sandboxes have not: each container
        keeps its own pid namespace."""
        linux = config.linux if config.HasField("linux") else None
        if linux is None or not linux.HasField("security_context") or \
                not linux.security_context.HasField("namespace_options"):
            return
        opts = linux.security_context.namespace_options
        drop = set()
        if opts.pid == cri_pb2.NODE:
            drop.add("pid")
        if opts.ipc == cri_pb2.NODE:
            drop.add("ipc")
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] not in drop]

    def _log_path(self, sb: dict, config, cid: str) -> str:
        log_dir = sb["config"].get("log_directory", "")
        if config.log_path:
            return os.path.join(log_dir, config.log_path) if log_dir else \
                (config.log_path if os.path.isabs(config.log_path) else self.path(cid, config.log_path))
        return self.path(cid, "container.log")

    def start(self, cid: str) -> None:
        with self._lock(cid):
            rec = self.require(cid)
            if rec["state"] != CREATED:
                raise ContainerError("FAILED_PRECONDITION",
                                     f"container {rec['id']} is {cri_pb2.ContainerState.Name(rec['state'])}, "
                                     "not CONTAINER_CREATED")
            try:
                self.runc.start(rec["id"], rec.get("pid", 0))
            except runc.RuncError as e:
                rec = dict(self.refresh(rec["id"]), state=EXITED, exit_code=128, reason="StartError",
                           message=str(e), finished_at=time.time_ns())
                self.store.save(rec)
                raise ContainerError("UNKNOWN", f"failed to start container {rec['id']}: {e}") from None
            with self.store.lock:
                rec = self.store.get(rec["id"])
                if rec["state"] == CREATED:
                    rec = dict(rec, state=RUNNING, started_at=time.time_ns())
                else:  # already exited: the start happened, the exit came first
                    rec = dict(rec, started_at=time.time_ns())
                self.store.save(rec)

    # ---- stop / remove ----

    def _wait_exit(self, cid: str, timeout: float) -> dict | None:
        """The record once conmon recorded the exit, or as it is after `timeout` seconds.
        While the container's process lives this sleeps on a pidfd (it wakes at the exit) and
        looks at the record once a second; only from the exit to conmon's file does it poll
        every 20 ms. (A 20 ms poll through a whole grace period cost ~0.3 s of CPU per pod.)"""
        deadline = time.monotonic() + timeout
        pidfd = -1
        try:
            while True:
                rec = self.refresh(cid)
                if rec is None or rec["state"] == EXITED:
                    return rec
                left = deadline - time.monotonic()
                if left <= 0:
                    return rec
                if pidfd == -1:
                    pidfd = _pidfd(rec.get("pid", 0))
                if pidfd >= 0:
                    # readable once the process has exited; a second at most, so that a reused
                    # pid or an exit seen some other way costs no more than that
                    if select.select([pidfd], [], [], min(left, 1.0))[0]:
                        os.close(pidfd)
                        pidfd = -2  # exited: poll for conmon's file from now on
                else:
                    time.sleep(min(left, 0.02))
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def stop(self, cid: str, timeout: int) -> None:
        """The stop signal, then SIGKILL once `timeout` seconds have passed; returns once the
        container has exited. Stopping an exited container is a no-op."""
        rec = self.require(cid)
        cid = rec["id"]
        if rec["state"] == EXITED:
            return
        if timeout > 0 and rec["state"] == RUNNING:
            if self.runc.kill(cid, rec.get("stop_signal") or "SIGTERM"):
                rec = self._wait_exit(cid, timeout)
                if rec is None or rec["state"] == EXITED:
                    return
        self.runc.kill(cid, "SIGKILL")
        rec = self._wait_exit(cid, KILL_WAIT)
        if rec is not None and rec["state"] != EXITED:
            raise ContainerError("DEADLINE_EXCEEDED", f"container {cid} did not exit {KILL_WAIT:.0f}s after SIGKILL")

    def remove(self, cid: str) -> None:
        """Forcibly: a running container is killed first. Removing an unknown id is fine."""
        rec = self.store.find(cid)
        if rec is None:
            return
        cid = rec["id"]
        with self._lock(cid):
            rec = self.refresh(cid)
            if rec is None:
                return
            if rec["state"] != EXITED:
                self.stop(cid, 0)
            self._remove_runtime_state(cid, rec["cgroups_path"])
            self._remove_files(cid, rec.get("reserved_name"))
        with self._locks_lock:
            self._op_locks.pop(cid, None)

    def _remove_runtime_state(self, cid: str, cgroups_path: str | None) -> None:
        self.runc.delete(cid, force=True)
        mon = self.conmons.pop(cid, None)
        if mon is not None:
            deadline = time.monotonic() + 5
            while not mon.reap() and time.monotonic() < deadline:
                time.sleep(0.02)
        if cgroups_path:
            cgroups.remove_tree(cgroups_path, timeout=1)
        try:
            os.unlink(os.path.join(self.exit_dir, cid))
        except FileNotFoundError:
            pass

    def _remove_files(self, cid: str, name: str | None) -> None:
        d = self.path(cid)
        mounts.unmount_all_under(d)
        shutil.rmtree(d, ignore_errors=True)
        if name:
            self.store.release(name, cid)
        self.store.forget(cid)
        self._configs.pop(cid, None)

    # ---- exec, resources, logs ----

    def exec_sync(self, cid: str, cmd: list[str], timeout: int) -> runc.ExecResult:
        rec = self.require(cid)
        if rec["state"] != RUNNING:
            raise ContainerError("FAILED_PRECONDITION", f"container {rec['id']} is not running")
        if not cmd:
            raise ContainerError("INVALID_ARGUMENT", "exec needs a command")
        pid_file = self.path(rec["id"], f"exec-{secrets.token_hex(4)}.pid")
        res = self.runc.exec(rec["id"], list(cmd), timeout, pid_file)
        if res.timed_out:
            raise ContainerError("DEADLINE_EXCEEDED",
                                 f"command {' '.join(cmd)!r} timed out after {timeout}s")
        res.stdout = res.stdout[:MAX_EXEC_OUTPUT]
        res.stderr = res.stderr[:MAX_EXEC_OUTPUT]
        return res

    def update_resources(self, cid: str, linux) -> None:
        rec = self.require(cid)
        if rec["state"] == EXITED:
            raise ContainerError("FAILED_PRECONDITION", f"container {rec['id']} has exited")
        res = oci.resources(linux, self.pids_limit)
        res.pop("devices", None)
        try:
            self.runc.update(rec["id"], res)
        except runc.RuncError as e:
            raise ContainerError("UNKNOWN", str(e)) from None
        cfg = dict(rec["config"])
        cfg["linux"] = dict(cfg.get("linux", {}),
                            resources=json_format.MessageToDict(linux, preserving_proto_field_name=True))
        self.store.save(dict(rec, config=cfg))

    def reopen_log(self, cid: str) -> None:
        rec = self.require(cid)
        if rec["state"] != RUNNING or not runc.reopen_log(self.path(rec["id"])):
            raise ContainerError("FAILED_PRECONDITION", f"container {rec['id']} is not running")

    def config(self, rec: dict) -> cri_pb2.ContainerConfig:
        """The record's CRI config as a message, parsed once per config (the kubelet lists every
        container every second). Callers must not modify it."""
        cached = self._configs.get(rec["id"])
        if cached is not None and cached[0] is rec["config"]:
            return cached[1]
        msg = json_format.ParseDict(rec["config"], cri_pb2.ContainerConfig(), ignore_unknown_fields=True)
        self._configs[rec["id"]] = (rec["config"], msg)
        return msg


def image_id(image) -> str:
    """The image's id (the digest of its config) as the image store names it."""
    for attr in ("id", "image_id", "digest"):
        value = getattr(image, attr, None)
        if value:
            return str(value)
    return str(image)


def image_name(image, requested: str) -> str:
    """The image as ContainerStatus names it: its first normalized tag (as containerd), else
    what the kubelet asked for."""
    tags = getattr(image, "repo_tags", None) or ()
    return tags[0] if tags else requested
