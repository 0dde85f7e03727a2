"""One pod's sync through CRI: read the runtime, plan, act.

Kubernetes' SyncPod and killPod (kuberuntime_manager.go) in its order: kill
the pod or the containers to kill; create the sandbox (a new one purges the
old init containers so initialization runs again); prune exited containers;
start the next init container, or the containers to start. Each start passes
the back-off gate, the image pull, the config (env sources) and the CRI
create and start calls; the first that fails is remembered in the
ReasonCache as the container's waiting reason (CrashLoopBackOff,
ErrImagePull, ImagePullBackOff, CreateContainerConfigError,
CreateContainerError, RunContainerError), and a success clears it. A
container's postStart hook runs after its start (a failure kills it:
PostStartHookError); its preStop hook runs before every stop, within the
grace period.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from apiserver.pb import core_pb2
from node.cri.client import CriError
from node.kubelet import actions as act
from node.kubelet import podconfig
from node.kubelet.backoff import Backoff, back_off_left, container_back_off
from node.kubelet.cri_status import read_pod
from node.kubelet.hooks import HookRunner
from node.kubelet.images import ImagePuller
from node.kubelet.env import ContainerConfigError, Getter, environment
from node.kubelet.volumes import Mount, VolumeError, Volumes
from node.kubelet.runtime_status import (CONTAINER_RUNNING, CONTAINER_UNKNOWN, SANDBOX_READY,
                                         PodRuntimeStatus)
from node.kubelet.status import (CRASH_LOOP_BACK_OFF, CREATE_CONTAINER_CONFIG_ERROR,
                                 CREATE_CONTAINER_ERROR, IMAGE_PULL_BACK_OFF, RUN_CONTAINER_ERROR,
                                 ReasonCache)
from node.pb import cri_pb2

POST_START_HOOK_ERROR = "PostStartHookError"


def cri_mount(m: Mount) -> cri_pb2.Mount:
    return cri_pb2.Mount(container_path=m.container_path, host_path=m.host_path, readonly=m.readonly,
                         propagation=cri_pb2.MountPropagation.Value(m.propagation))

log = logging.getLogger("node.kubelet.podsync")


@dataclass
class SyncResult:
    actions: act.PodActions
    started: list[str]          # containers (and init containers) started this sync
    failed: dict[str, str]      # container -> waiting reason of a start that failed
    sandbox_error: str = ""     # why the sandbox could not be made
    volume_error: str = ""      # why a volume could not be set up (FailedMount)
    retry_after: float = 0.0    # when every failure is a back-off: seconds until the first ends
    # the runtime's view this sync began with, while the sync changed nothing in the runtime
    # (the status needs no second read then); None once it stopped, removed or started anything
    unchanged: PodRuntimeStatus | None = None


class PodSyncer:
    """``runtime``: node.cri.client.RuntimeService; ``images``: an ImagePuller;
    ``get(kind, namespace, name) -> message | None`` reads ConfigMaps and Secrets."""

    def __init__(self, runtime, images: ImagePuller, *, log_root: str, backoff: Backoff | None = None,
                 reasons: ReasonCache | None = None, probe_results=None, get: Getter | None = None,
                 memory_capacity: int = 0, host_ip: str = "", hooks: HookRunner | None = None,
                 recorder=None, volumes: Volumes | None = None,
                 node_allocatable: dict[str, str] | None = None, cgroup_root: str = "",
                 dns=None) -> None:
        """``cgroup_root``: where the pods' cgroups go (the sandbox's cgroup_parent; "" leaves
        it to the runtime). ``recorder``: an EventRecorder for the pod's events (Created, Started,
        Killing, BackOff, Failed, FailedCreatePodSandBox), as the kubelet's. ``dns``: a
        node.kubelet.dns.DnsConfigurer giving each sandbox its resolv.conf (None: the runtime's)."""
        self.runtime, self.images, self.log_root = runtime, images, log_root
        self.backoff = backoff if backoff is not None else Backoff()
        self.reasons = reasons if reasons is not None else ReasonCache()
        self.probe_results = probe_results
        self.get = get
        self.node_allocatable = dict(node_allocatable or {})  # fills missing limits for resourceFieldRef
        self.memory_capacity, self.host_ip = memory_capacity, host_ip
        self.hooks = hooks if hooks is not None else HookRunner()
        self.recorder = recorder
        self.volumes = volumes
        self.cgroup_root = cgroup_root
        self.dns = dns
        self._stoppers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kill")

    def _event(self, pod, type_: str, reason: str, message: str) -> None:
        if self.recorder is not None and pod is not None:
            self.recorder.event(pod, type_, reason, message)

    def close(self) -> None:
        self._stoppers.shutdown(wait=True)

    def read(self, pod: core_pb2.Pod) -> PodRuntimeStatus:
        return read_pod(self.runtime, pod.metadata.uid, pod.metadata.name, pod.metadata.namespace)

    # ---- sync ----

    def sync(self, pod: core_pb2.Pod, status: PodRuntimeStatus | None = None) -> SyncResult:
        status = status if status is not None else self.read(pod)
        plan = act.compute_pod_actions(pod, status, self.probe_results)
        result = SyncResult(plan, [], {})
        removals = [] if plan.create_sandbox else act.containers_to_remove(status)
        if not (plan.kill_pod or plan.containers_to_kill or plan.create_sandbox or removals
                or plan.next_init_container or plan.containers_to_start):
            result.unchanged = status
        if plan.kill_pod:
            self.kill_pod(pod, status)
        else:
            for info in plan.containers_to_kill.values():
                log.info("pod %s: killing %s: %s", pod.metadata.name, info.name, info.message)
                self._event(pod, "Normal", "Killing", info.message)
                self._kill_container(pod, info.container_id, info.name, status,
                                     act.kill_grace_period(pod))
        if plan.create_sandbox:
            for cs in status.containers:  # initialization starts over in the new sandbox
                if any(c.name == cs.name for c in pod.spec.init_containers):
                    self._remove_container(cs.id)
        else:  # exited containers beyond the newest of each name go (it stays for lastState and logs)
            for cid in removals:
                self._remove_container(cid)
        if self.volumes is not None and (not plan.kill_pod or plan.create_sandbox):
            # every sync: a changed ConfigMap or Secret reaches the running containers
            try:
                self.volumes.setup(pod)
            except VolumeError as e:
                result.volume_error = e.event_message
                self._event(pod, "Warning", "FailedMount", result.volume_error)
                return result
        if not (plan.create_sandbox or plan.next_init_container or plan.containers_to_start):
            return result

        sandbox_cfg = podconfig.sandbox_config(
            pod, plan.attempt, self.log_root, self.cgroup_root,
            dns_config=self.dns.pod_dns(pod) if self.dns is not None else None)
        sandbox_id, pod_ip = plan.sandbox_id, (status.ips[0] if status.ips else "")
        if plan.create_sandbox:
            try:
                sandbox_id = self.runtime.run_pod_sandbox(sandbox_cfg)
                pod_ip = self.runtime.pod_sandbox_status(sandbox_id).status.network.ip
            except CriError as e:
                result.sandbox_error = f"Failed to create pod sandbox: {e.details or e}"
                log.warning("pod %s: %s", pod.metadata.name, result.sandbox_error)
                self._event(pod, "Warning", "FailedCreatePodSandBox", result.sandbox_error)
                return result
            status = self.read(pod)  # old containers stay for restart counts and lastState

        specs = {c.name: c for c in (*pod.spec.init_containers, *pod.spec.containers)}
        names = [plan.next_init_container] if plan.next_init_container else plan.containers_to_start
        for name in names:
            reason = self._start(pod, specs[name], sandbox_id, sandbox_cfg, status, pod_ip)
            if reason:
                result.failed[name] = reason
                if reason == CRASH_LOOP_BACK_OFF:
                    left = back_off_left(self.backoff, pod, specs[name], status)
                    result.retry_after = left if not result.retry_after else min(result.retry_after, left)
            else:
                result.started.append(name)
        return result

    def _start(self, pod: core_pb2.Pod, container: core_pb2.Container, sandbox_id: str,
               sandbox_cfg, status: PodRuntimeStatus, pod_ip: str) -> str:
        """Starts one container; "" on success, else the waiting reason recorded."""
        uid, name = pod.metadata.uid, container.name

        def fail(reason: str, message: str) -> str:
            self.reasons.update(uid, name, reason, message)
            log.info("pod %s: container %s: %s: %s", pod.metadata.name, name, reason, message)
            return reason

        message = container_back_off(self.backoff, pod, container, status)
        if message:
            self._event(pod, "Warning", "BackOff", f"Back-off restarting failed container {name} in pod "
                        f"{pod.metadata.name}_{pod.metadata.namespace}({uid})")
            return fail(CRASH_LOOP_BACK_OFF, message)
        image = self.images.ensure(pod, container)
        if image.reason:
            if image.reason == IMAGE_PULL_BACK_OFF:
                self._event(pod, "Normal", "BackOff", image.message)
            else:
                self._event(pod, "Warning", "Failed", image.message)
            return fail(image.reason, image.message)
        try:
            env = environment(pod, container, self.get, pod_ips=[pod_ip] if pod_ip else [],
                              host_ips=[self.host_ip] if self.host_ip else [],
                              node_allocatable=self.node_allocatable)
            mounts = [cri_mount(m) for m in self.volumes.mounts_for(pod, container)] \
                if self.volumes is not None else []
        except ContainerConfigError as e:
            self._event(pod, "Warning", "Failed", f"Error: {e}")
            return fail(CREATE_CONTAINER_CONFIG_ERROR, str(e))
        for ev in env.events:  # InvalidEnvironmentVariableNames
            self._event(pod, ev.type, ev.reason, ev.message)
        restart_count = act.next_restart_count(name, status)
        cfg = podconfig.container_config(pod, container, restart_count=restart_count,
                                         image_ref=image.image_ref, env=env, mounts=mounts,
                                         memory_capacity=self.memory_capacity)
        try:
            cid = self.runtime.create_container(sandbox_id, cfg, sandbox_cfg)
        except CriError as e:
            self._event(pod, "Warning", "Failed", f"Error: {e.details or e}")
            return fail(CREATE_CONTAINER_ERROR, e.details or str(e))
        self._event(pod, "Normal", "Created", f"Created container {name}")
        try:
            self.runtime.start_container(cid)
        except CriError as e:
            self._event(pod, "Warning", "Failed", f"Error: {e.details or e}")
            return fail(RUN_CONTAINER_ERROR, e.details or str(e))
        self._event(pod, "Normal", "Started", f"Started container {name}")
        if container.HasField("lifecycle") and container.lifecycle.HasField("post_start"):
            message = self.hooks.run(container.lifecycle.post_start, pod, container, cid, pod_ip,
                                     act.kill_grace_period(pod))
            if message:
                self._event(pod, "Warning", "FailedPostStartHook", message)
                self._kill_container(pod, cid, name, status, act.kill_grace_period(pod), pod_ip=pod_ip)
                return fail(POST_START_HOOK_ERROR, message)
        self.reasons.remove(uid, name)
        return ""

    # ---- stopping ----

    def _kill_container(self, pod: core_pb2.Pod | None, container_id: str, name: str,
                        status: PodRuntimeStatus, grace: int, pod_ip: str | None = None) -> None:
        """preStop (when the spec has one), then stop: SIGTERM, SIGKILL after what is left of the grace."""
        spec = None
        if pod is not None:
            spec = next((c for c in (*pod.spec.init_containers, *pod.spec.containers) if c.name == name), None)
        ip = pod_ip if pod_ip is not None else (status.ips[0] if status.ips else "")
        grace, message = self.hooks.pre_stop(pod, spec, container_id, ip, grace, act.MIN_GRACE_PERIOD)
        if message:
            log.warning("%s", message)
            self._event(pod, "Warning", "FailedPreStopHook", message)
        self._stop_container(container_id, grace)

    def _stop_container(self, container_id: str, grace: int) -> None:
        try:
            self.runtime.stop_container(container_id, grace)
        except CriError as e:
            if not e.not_found:
                raise

    def _remove_container(self, container_id: str) -> None:
        try:
            self.runtime.remove_container(container_id)
        except CriError as e:
            if not e.not_found:
                log.warning("removing container %s: %s", container_id, e)

    def kill_pod(self, pod: core_pb2.Pod | None, status: PodRuntimeStatus, grace: int | None = None) -> None:
        """Stops every running container of the pod at once (each with the grace
        period), then its sandboxes. ``pod`` None: an orphan (grace 2 s)."""
        if grace is None:
            grace = act.kill_grace_period(pod) if pod is not None else act.MIN_GRACE_PERIOD
        live = [c for c in status.containers if c.state in (CONTAINER_RUNNING, CONTAINER_UNKNOWN)]
        for f in [self._stoppers.submit(self._kill_container, pod, c.id, c.name, status, grace) for c in live]:
            f.result()
        for s in status.sandboxes:
            if s.state == SANDBOX_READY:
                try:
                    self.runtime.stop_pod_sandbox(s.id)
                except CriError as e:
                    if not e.not_found:
                        raise

    def remove_pod(self, status: PodRuntimeStatus) -> None:
        """Removes a stopped pod's containers and sandboxes from the runtime."""
        for c in status.containers:
            self._remove_container(c.id)
        for s in status.sandboxes:
            try:
                self.runtime.remove_pod_sandbox(s.id)
            except CriError as e:
                if not e.not_found:
                    log.warning("removing sandbox %s: %s", s.id, e)
