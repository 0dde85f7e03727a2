"""What one sync of a pod must do, from its spec and what the runtime reports.

Kubernetes' computePodActions (pkg/kubelet/kuberuntime/kuberuntime_manager.go)
split out as pure functions: no runtime calls, no clock, so every rule is a
table test. The caller (the real kubelet) then acts in Kubernetes' order: kill
the pod (or the containers to kill), create the sandbox, start the next init
container, start the containers, each start gated by its back-off.

Restartable ("sidecar") init containers and ephemeral containers are not
modelled: our API has neither.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from apiserver.pb import core_pb2
from node.kubelet import labels
from node.kubelet.probes import FAILURE, LIVENESS, STARTUP
from node.kubelet.runtime_status import (CONTAINER_CREATED, CONTAINER_EXITED, CONTAINER_RUNNING,
                                         CONTAINER_UNKNOWN, SANDBOX_READY, ContainerStatus,
                                         PodRuntimeStatus)

# why a container is killed (Kubernetes' containerKillReason)
REASON_LIVENESS = "LivenessProbe"
REASON_STARTUP = "StartupProbe"
REASON_UNKNOWN = "Unknown"
REASON_SPEC_CHANGED = ""  # Kubernetes gives none; the message says it

MIN_GRACE_PERIOD = 2  # seconds: Kubernetes' minimumGracePeriodInSeconds


@dataclass
class KillInfo:
    container_id: str
    name: str
    message: str
    reason: str = ""


@dataclass
class PodActions:
    """One sync's plan (Kubernetes' podActions)."""

    kill_pod: bool = False          # stop every container and the sandbox first
    create_sandbox: bool = False
    sandbox_id: str = ""            # the current sandbox (to reuse, or the one being replaced)
    attempt: int = 0                # the sandbox attempt to create with
    next_init_container: str | None = None
    containers_to_start: list[str] = field(default_factory=list)  # spec order
    containers_to_kill: dict[str, KillInfo] = field(default_factory=dict)  # by container id


class _NoResults:
    def get(self, kind: str, container_id: str):
        return None


def should_restart_on_failure(pod: core_pb2.Pod) -> bool:
    return pod.spec.restart_policy != "Never"


def sandbox_changed(pod: core_pb2.Pod, status: PodRuntimeStatus) -> tuple[bool, int, str]:
    """(a new sandbox is needed, the attempt to create it with, the current sandbox id),
    as Kubernetes' PodSandboxChanged: none yet; more than one ready; the newest
    not ready; or a pod-network sandbox without an IP."""
    if not status.sandboxes:
        return True, 0, ""
    newest = status.sandboxes[0]
    ready = sum(1 for s in status.sandboxes if s.state == SANDBOX_READY)
    if ready > 1 or newest.state != SANDBOX_READY:
        return True, newest.attempt + 1, newest.id
    if not pod.spec.host_network and not newest.ip:
        return True, newest.attempt + 1, newest.id
    return False, newest.attempt, newest.id


def should_container_be_restarted(container: core_pb2.Container, pod: core_pb2.Pod,
                                  status: PodRuntimeStatus) -> bool:
    """Kubernetes' ShouldContainerBeRestarted: never once the pod is being
    deleted; always when it never ran or its state is unknown; else by the
    pod's restartPolicy and the last exit code."""
    if pod.metadata.deletion_timestamp:
        return False
    cs = status.find(container.name)
    if cs is None:
        return True
    if cs.state == CONTAINER_RUNNING:
        return False
    if cs.state in (CONTAINER_UNKNOWN, CONTAINER_CREATED):
        return True
    if pod.spec.restart_policy == "Never":
        return False
    if pod.spec.restart_policy == "OnFailure" and cs.exit_code == 0:
        return False
    return True


def container_succeeded(container: core_pb2.Container, status: PodRuntimeStatus) -> bool:
    cs = status.find(container.name)
    return cs is not None and cs.state == CONTAINER_EXITED and cs.exit_code == 0


def is_init_container_failed(cs: ContainerStatus) -> bool:
    if cs.state == CONTAINER_EXITED and cs.exit_code != 0:
        return True
    return cs.state == CONTAINER_UNKNOWN


def find_next_init_container(pod: core_pb2.Pod, status: PodRuntimeStatus
                             ) -> tuple[ContainerStatus | None, core_pb2.Container | None, bool]:
    """(the status of the last failed init container, the init container to
    run next, initialization done) — Kubernetes' findNextInitContainerToRun.
    A running regular container means initialization was done before."""
    inits = list(pod.spec.init_containers)
    if not inits:
        return None, None, True
    for c in pod.spec.containers:
        cs = status.find(c.name)
        if cs is not None and cs.state == CONTAINER_RUNNING:
            return None, None, True
    for c in reversed(inits):
        cs = status.find(c.name)
        if cs is not None and is_init_container_failed(cs):
            return cs, c, False
    for i in range(len(inits) - 1, -1, -1):
        cs = status.find(inits[i].name)
        if cs is None:
            continue
        if cs.state == CONTAINER_RUNNING:
            return None, None, False  # still running: wait
        if cs.state == CONTAINER_EXITED:  # it succeeded (failures were caught above)
            if i == len(inits) - 1:
                return None, None, True
            return None, inits[i + 1], False
    return None, inits[0], False


def container_changed(container: core_pb2.Container, cs: ContainerStatus) -> bool:
    return cs.hash != labels.container_hash(container)


def compute_pod_actions(pod: core_pb2.Pod, status: PodRuntimeStatus, probe_results=None) -> PodActions:
    """The plan for one sync. ``probe_results``: anything with
    ``get(kind, container_id) -> "Success" | "Failure" | "Unknown" | None``
    (probes.ProbeResults); liveness and startup failures kill a container."""
    results = probe_results if probe_results is not None else _NoResults()
    create, attempt, sandbox_id = sandbox_changed(pod, status)
    if pod.metadata.deletion_timestamp:
        # a pod being deleted is only stopped (with its grace period), never (re)started
        return PodActions(kill_pod=True, sandbox_id=sandbox_id, attempt=attempt)
    actions = PodActions(kill_pod=create, create_sandbox=create, sandbox_id=sandbox_id, attempt=attempt)

    if create:
        if not should_restart_on_failure(pod) and attempt != 0 and status.containers:
            # restartPolicy Never and its containers ran once: no new sandbox, only the kill
            actions.create_sandbox = False
            return actions
        to_start = [c.name for c in pod.spec.containers
                    if not (pod.spec.restart_policy == "OnFailure" and container_succeeded(c, status))]
        if not to_start and find_next_init_container(pod, status)[2]:
            actions.create_sandbox = False  # everything is done: kill, create nothing
            return actions
        if pod.spec.init_containers:
            actions.next_init_container = pod.spec.init_containers[0].name
            return actions
        actions.containers_to_start = to_start
        return actions

    last_failed, next_init, done = find_next_init_container(pod, status)
    if not done:
        if next_init is not None:
            if last_failed is not None and is_init_container_failed(last_failed) \
                    and not should_restart_on_failure(pod):
                actions.kill_pod = True
            else:
                if last_failed is not None and last_failed.state == CONTAINER_UNKNOWN:
                    actions.containers_to_kill[last_failed.id] = KillInfo(
                        last_failed.id, next_init.name,
                        f'Init container is in "{last_failed.state}" state, try killing it before restart',
                        REASON_UNKNOWN)
                actions.next_init_container = next_init.name
        return actions  # initializing, or failed: regular containers wait

    keep = 0
    for c in pod.spec.containers:
        cs = status.find(c.name)
        if cs is None or cs.state != CONTAINER_RUNNING:
            if should_container_be_restarted(c, pod, status):
                actions.containers_to_start.append(c.name)
                if cs is not None and cs.state == CONTAINER_UNKNOWN:
                    actions.containers_to_kill[cs.id] = KillInfo(
                        cs.id, c.name, f'Container is in "{cs.state}" state, try killing it before restart',
                        REASON_UNKNOWN)
            continue
        restart = should_restart_on_failure(pod)
        if container_changed(c, cs):
            message, reason, restart = f"Container {c.name} definition changed", REASON_SPEC_CHANGED, True
        elif results.get(LIVENESS, cs.id) == FAILURE:
            message, reason = f"Container {c.name} failed liveness probe", REASON_LIVENESS
        elif results.get(STARTUP, cs.id) == FAILURE:
            message, reason = f"Container {c.name} failed startup probe", REASON_STARTUP
        else:
            keep += 1
            continue
        if restart:
            message += ", will be restarted"
            actions.containers_to_start.append(c.name)
        actions.containers_to_kill[cs.id] = KillInfo(cs.id, c.name, message, reason)

    if keep == 0 and not actions.containers_to_start:
        actions.kill_pod = True
    return actions


def next_restart_count(name: str, status: PodRuntimeStatus) -> int:
    """The restartCount (and CRI metadata attempt) of the next container of that name."""
    cs = status.find(name)
    return 0 if cs is None else cs.restart_count + 1


def kill_grace_period(pod: core_pb2.Pod) -> int:
    """Seconds between SIGTERM and SIGKILL: the pod's deletion grace period when
    it is being deleted, else its terminationGracePeriodSeconds; at least
    MIN_GRACE_PERIOD (Kubernetes' setTerminationGracePeriod)."""
    if pod.metadata.HasField("deletion_grace_period_seconds"):
        grace = pod.metadata.deletion_grace_period_seconds
    elif pod.spec.HasField("termination_grace_period_seconds"):
        grace = pod.spec.termination_grace_period_seconds
    else:
        grace = MIN_GRACE_PERIOD
    return max(int(grace), MIN_GRACE_PERIOD)


def containers_to_remove(status: PodRuntimeStatus, keep_per_name: int = 1,
                         names: Iterable[str] | None = None) -> list[str]:
    """Ids of exited containers beyond the newest ``keep_per_name`` of each name
    (the newest exited one stays for lastState and ``logs --previous``)."""
    seen: dict[str, int] = {}
    out = []
    wanted = set(names) if names is not None else None
    for cs in status.containers:  # newest first
        if cs.state != CONTAINER_EXITED or (wanted is not None and cs.name not in wanted):
            continue
        seen[cs.name] = seen.get(cs.name, 0) + 1
        if seen[cs.name] > keep_per_name:
            out.append(cs.id)
    return out
